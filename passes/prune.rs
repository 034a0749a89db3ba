//! `prune`: removes weights, at one of three granularities.
//!
//! - `granularity: channel` (the default) removes whole channels — Conv
//!   filters, Gemm/MatMul columns, FFN hidden units, attention heads —
//!   together with every tensor slice coupled to them, so that weights,
//!   MACs and latency really shrink (`prune/channel.rs`).
//! - `granularity: unstructured` zeros the least important `sparsity`
//!   fraction of each selected weight (`scope: local`) or of all selected
//!   weights together (`scope: global`); `granularity: n:m` zeros weights so
//!   that every group of M consecutive elements along the reduction axis
//!   keeps at most N non-zeros (`pattern: "2:4"`, what NVIDIA's sparse
//!   tensor cores run). Tensors stay dense: the model is exactly as large
//!   and as fast on a dense runtime, but compresses better (the report gives
//!   the deflate size of the weights before and after), runs 2:4 on
//!   TensorRT's sparse kernels, and keeps its zeros through a following
//!   `quantize` (symmetric int8 maps 0.0 to level 0). See `prune/sparse.rs`.
//!
//! ```text
//! unstructured / n:m:
//! before:  x ─ Conv(W, b) ─ y          W dense
//! after:   x ─ Conv(W', b') ─ y        W' = W with zeros (2:4: ≤ 2 non-zeros in every 4
//!                                      consecutive input channels); b' = b + (W − W')·E[x]
//!                                      with --data (bias correction), else b
//! ```
//!
//! Methods (`unstructured`, `n:m`): `magnitude` scores `|W_ij|`; `wanda`
//! scores `|W_ij|·‖X_j‖` (the norm of input feature `j` over the calibration
//! data) and compares over the whole layer (`comparison: layer`, the default,
//! measured better on the trained fixtures) or within each output row
//! (`comparison: output`, the paper's choice for LLMs); `sparsegpt` prunes column by
//! column and updates the remaining weights of each row through the inverse
//! Hessian of the layer input (OBS). wanda and sparsegpt need `--data`.
//!
//! With `--data`, the mean output shift of the zeroed weights (`ΔW·E[x]`)
//! goes into each layer's bias (`bias_correction`, default on with data),
//! and Wanda and SparseGPT score the error that remains.
//!
//! Selection: `ops` (Conv, ConvTranspose, Gemm, MatMul with a constant
//! weight), `include_nodes`, `exclude_nodes`, `overrides` (per node: its own
//! `ratio` / `sparsity`, or `skip`). Weights read by several nodes,
//! non-float32 weights and layouts a method cannot handle are left alone and
//! the report says why, per node.
//!
//! Options of one granularity given with another are a config error naming
//! the option; every range error names its YAML path.
//!
//! Exactness: not exact; the report measures what changed (per layer
//! sparsity, and for wanda/sparsegpt the layer's output SQNR on the
//! calibration inputs' second moments).
//!
//! ## `granularity: channel`
//!
//! Channels are removed together with every tensor slice coupled to them, so
//! that weights, MACs and latency really shrink:
//!
//! ```text
//! before:  x ─ Conv(W1[64,C,3,3], b1[64]) ─ BN(γ,β,μ,σ²[64]) ─ Relu ─ Conv(W2[128,64,3,3]) ─ y
//! after:   x ─ Conv(W1[48,C,3,3], b1[48]) ─ BN(γ,β,μ,σ²[48]) ─ Relu ─ Conv(W2[128,48,3,3]) ─ y
//! ```
//!
//! A dependency analysis (DepGraph, Fang et al., CVPR 2023; `prune/groups.rs`)
//! follows each channel index through the graph: from the output channel of
//! a Conv/ConvTranspose/Gemm/MatMul with a constant weight, through
//! BatchNormalization, element-wise ops (constants with one value per channel
//! are sliced; two activations of one group — residual Add, SiLU,
//! squeeze-excitation — join one group), Concat/Split offsets, depthwise Conv,
//! grouped Conv (1 < `group` < C_in: the same position of every group goes
//! together — producer channels p, p + C_in/g, … on the input side, filters
//! p, p + C_out/g, … on the output side — so each group loses as many and
//! `group` stays; the report gives the per-group widths),
//! pooling, Pad, Resize, Transpose, Flatten/Reshape (blocks of the spatial
//! size, whole attention heads; a Reshape shape may be computed, as exporters
//! do for a dynamic batch — `Shape` → `Gather` → `Concat` — when the entry of
//! the shrinking axis is a constant piece, which is rewritten; `Shape` is
//! fine where nothing reads the pruned axis's size), to the input side of
//! every consumer. The
//! indices that must go together form a *channel*; channels touching the same
//! tensors form a *group*. A group that reaches a graph input or output, an op
//! the analysis does not know, or a shape it could not rewrite, is left whole
//! and the report names the node and the reason — never guessed.
//!
//! Importance of a channel: the `l2` (default) or `l1` norm of its slices of
//! every compute weight in the group (the producers' output rows and the
//! consumers' input columns), summed over the group's members; or
//! `activation` (needs `--data`): Wanda's `|W|·‖X‖` at channel granularity,
//! `√(Σ_j ‖W[:, j]‖²·E[x_j²])` over each consumer's input features `j` of the
//! channel (im2col taps for a Conv), summed over the group's consumers, from
//! the calibration moments the reconstruction uses too. How much: `ratio` (each
//! group), or a global `target: { macs | params }` (channels ranked across
//! groups by importance over the group's mean, the least important removed
//! until the model's MACs — `inspect::node_macs` per Conv/ConvTranspose/Gemm/MatMul on the
//! shapes tract proves, activation×activation MatMuls included — or its
//! float weights fall to the fraction), or `target: { min_sqnr_db }`
//! (per-group amounts — 0, ¼, ½ or ¾ of each group's channels — chosen by
//! measured sensitivity in tract through the shared target search, as
//! quantize's target does; `target.samples` samples, default 32, from
//! `--data` or synthetic; the summary's last line states the samples and
//! the SQNR `whittle validate` prints on them; `prune/target.rs`).
//! `min_channels` and `round_to` bound what each group keeps.
//!
//! The rewrite slices every member initializer, rewrites depthwise `group`,
//! Split sizes and Reshape shape constants, and updates declared shapes of the
//! intermediate tensors. Graph inputs and outputs keep their shapes.
//!
//! Exactness: removing channels changes the function (by design). The
//! pruned model computes exactly what the original computes with those
//! channels' weights set to zero where the removed channels contribute only
//! through linear consumers (up to float summation order); through a bias
//! or BatchNormalization shift of a removed channel the constant it added
//! downstream is lost too.
//!
//! Reconstruction (`reconstruct: true`; by default on when `--data` is
//! given; `prune/reconstruct.rs`): every Conv/Gemm/MatMul that reads removed
//! channels gets its remaining weights re-fitted by least squares so that
//! its output matches the unpruned model's on the calibration data,
//! `W' = W·Σ[:,K]·(Σ[K,K] + λI)⁻¹` from the first and second moments of
//! its unpruned input (im2col patches for a Conv; one streamed run of the
//! model), the removed channels' mean going into the bias (added when the
//! Conv/Gemm has none), `λ = 1e-4 · mean diag`. Exact when the removed
//! channels are linear combinations of kept ones; the report gives each
//! consumer's layer SQNR before and after the fit. Measured on the trained
//! fixtures at 30% of MACs removed it raises the output SQNR by 10-21 dB
//! (BENCHMARKS.md).

mod channel;
mod groups;
mod rank;
mod reconstruct;
mod sparse;
mod target;

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::select::NodeMatch;
use super::{
    parse_config, Config, ConfigError, Pass, PassContext, PassError, PassInfo, PassReport,
};
use crate::ir::Model;

/// Registry entry.
pub const INFO: PassInfo = PassInfo {
    name: "prune",
    summary: "pruning: structured channels that shrink the model, or unstructured / N:M sparsity (magnitude, Wanda, SparseGPT)",
    doc: include_str!("prune.rs"),
    schema: super::schema_of::<Prune>,
    build: |o| Ok(Box::new(parse_config::<Prune>(o)?)),
};

/// Options of `prune`.
#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Prune {
    /// What is removed: `channel` (whole channels, the model shrinks),
    /// `unstructured` (single weights become zero) or `n:m` (at most N
    /// non-zeros in every M consecutive weights along the reduction axis).
    pub granularity: Granularity,
    /// Op types whose constant weight is pruned.
    pub ops: Vec<String>,
    /// Prune only these nodes: exact names or `{ regex: "..." }`.
    pub include_nodes: Vec<NodeMatch>,
    /// Never prune these nodes: exact names or `{ regex: "..." }`.
    pub exclude_nodes: Vec<NodeMatch>,
    /// Per-node settings, by node name: `ratio` (channel), `sparsity`
    /// (unstructured), or `skip: true`.
    pub overrides: BTreeMap<String, NodeOverride>,

    /// (channel) How a channel's importance is scored: `l2` (the default)
    /// or `l1` of its weights, or `activation` (weight norm × input
    /// activation norm from calibration data; needs `--data`).
    pub importance: Importance,
    /// (channel) Fraction of each group's channels removed, in [0, 1).
    pub ratio: Option<f64>,
    /// (channel) A model-wide target instead of `ratio`: one of `macs`,
    /// `params` (fractions of the original kept) or `min_sqnr_db`.
    pub target: Option<Target>,
    /// (channel) Never fewer channels than this left in a group.
    pub min_channels: usize,
    /// (channel) Channels kept are a multiple of this (8 for SIMD).
    pub round_to: usize,
    /// (channel) Re-fit each consumer's remaining weights by least squares
    /// on calibration activations (needs `--data`); default: on when
    /// `--data` is given, off without.
    pub reconstruct: Option<bool>,

    /// (unstructured, n:m) How weights are chosen: `magnitude` (|W|, the
    /// default; needs no data), `wanda` (|W|·‖X‖, see `comparison`) or
    /// `sparsegpt` (OBS updates through the inverse input Hessian); the
    /// last two need `--data`.
    pub method: Method,
    /// (unstructured) Fraction of each weight's elements set to zero, in
    /// [0, 1) (default 0.5); with `scope: global`, of all selected weights.
    pub sparsity: Option<f64>,
    /// (n:m) `"N:M"`: at most N non-zeros in every group of M consecutive
    /// weights along the reduction axis, 1 ≤ N < M ≤ 64 (default "2:4").
    pub pattern: Option<String>,
    /// (unstructured, wanda) Which weights Wanda's scores are compared
    /// among: `layer` (the whole weight, the default: measured better on
    /// the trained CNN and transformer, BENCHMARKS.md) or `output` (each
    /// output row loses its share, the paper's choice for LLMs).
    pub comparison: Option<Comparison>,
    /// (unstructured, n:m) Bias correction: add the mean output shift of
    /// the zeroed weights, `ΔW·E[x]` from calibration, to each layer's bias
    /// (a Conv or Gemm without one gets one), and score Wanda and SparseGPT
    /// on the centred input moments, the error that remains. Default: on
    /// when `--data` is given (better for magnitude and Wanda on every
    /// model and setting of the bench, for SparseGPT on 6 of 8;
    /// BENCHMARKS.md), off without.
    pub bias_correction: Option<bool>,
    /// (unstructured) `local`: every layer gets `sparsity`; `global`: one
    /// ranking over all selected layers, scores normalized per layer by the
    /// layer's total score energy, so layers get different sparsities that
    /// add up to `sparsity` overall.
    pub scope: Scope,
}

impl Default for Prune {
    fn default() -> Self {
        Prune {
            granularity: Granularity::Channel,
            ops: ["Conv", "ConvTranspose", "Gemm", "MatMul"]
                .map(String::from)
                .to_vec(),
            include_nodes: Vec::new(),
            exclude_nodes: Vec::new(),
            overrides: BTreeMap::new(),
            importance: Importance::default(),
            ratio: None,
            target: None,
            min_channels: 1,
            round_to: 1,
            reconstruct: None,
            method: Method::Magnitude,
            sparsity: None,
            pattern: None,
            comparison: None,
            bias_correction: None,
            scope: Scope::Local,
        }
    }
}

/// What is removed.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum Granularity {
    /// Whole channels (the tensors shrink).
    #[default]
    #[serde(rename = "channel")]
    Channel,
    /// Single weights set to zero.
    #[serde(rename = "unstructured")]
    Unstructured,
    /// N:M semi-structured zeros along the reduction axis.
    #[serde(rename = "n:m")]
    Nm,
}

/// How channels are scored (granularity: channel).
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Importance {
    /// Sum of absolute weights.
    L1,
    /// Euclidean norm of the weights (the default: measured best or within
    /// 0.5 dB of the best on the trained fixtures, and needs no data).
    #[default]
    L2,
    /// Weight norm × input activation norm (needs `--data`).
    Activation,
}

/// How single weights are chosen (granularity: unstructured, n:m).
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Smallest |W| first.
    #[default]
    Magnitude,
    /// Smallest |W_ij|·‖X_j‖ first (Sun et al. 2023), compared over the
    /// layer or within each output row (`comparison`).
    Wanda,
    /// Column by column, with the OBS update of the remaining weights
    /// (Frantar & Alistarh 2023).
    Sparsegpt,
}

/// Among which weights Wanda's scores are compared (granularity:
/// unstructured, method: wanda).
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Comparison {
    /// All weights of the layer (the default).
    #[default]
    Layer,
    /// Within each output row: every row loses the same share (Sun et al.
    /// 2023's choice for LLMs).
    Output,
}

/// Over which weights the sparsity is counted (granularity: unstructured).
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Every layer gets the sparsity.
    #[default]
    Local,
    /// All selected layers together.
    Global,
}

/// A model-wide channel-pruning target (granularity: channel); give one of
/// `macs`, `params`, `min_sqnr_db`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Target {
    /// Fraction of the original Conv/ConvTranspose/MatMul/Gemm MACs kept, in (0, 1].
    pub macs: Option<f64>,
    /// Fraction of the original float weights kept, in (0, 1].
    pub params: Option<f64>,
    /// Least output SQNR against the unpruned model, in dB.
    pub min_sqnr_db: Option<f64>,
    /// Samples the sensitivity is measured on.
    pub samples: Option<usize>,
}

/// Settings of one node.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NodeOverride {
    /// (channel) This node's ratio, in [0, 1).
    pub ratio: Option<f64>,
    /// (unstructured) This node's sparsity, in [0, 1); with `scope: global`
    /// the node keeps it and stays out of the global ranking.
    pub sparsity: Option<f64>,
    /// Leave this node unpruned.
    pub skip: bool,
}

/// Prunable op types.
pub const OPS: &[&str] = &["Conv", "ConvTranspose", "Gemm", "MatMul"];

fn error(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        message: message.into(),
    }
}

/// `"N:M"` as `(N, M)` with 1 ≤ N < M ≤ 64.
pub fn parse_pattern(p: &str) -> Result<(usize, usize), String> {
    let bad = || format!("{p:?} is not \"N:M\" with 1 ≤ N < M ≤ 64 (e.g. \"2:4\")");
    let (n, m) = p.split_once(':').ok_or_else(bad)?;
    let n: usize = n.trim().parse().map_err(|_| bad())?;
    let m: usize = m.trim().parse().map_err(|_| bad())?;
    if n == 0 || n >= m || m > 64 {
        return Err(bad());
    }
    Ok((n, m))
}

/// `v` in [0, 1).
fn fraction(field: String, v: f64) -> Result<(), ConfigError> {
    if (0.0..1.0).contains(&v) {
        Ok(())
    } else {
        Err(error(field, format!("must be in [0, 1), got {v}")))
    }
}

impl Prune {
    /// Wanda's comparison group (default `layer`).
    pub fn comparison(&self) -> Comparison {
        self.comparison.unwrap_or_default()
    }

    /// The sparsity of unstructured pruning (default 0.5).
    pub fn sparsity(&self) -> f64 {
        self.sparsity.unwrap_or(0.5)
    }

    /// The N:M pattern (default 2:4).
    pub fn pattern(&self) -> (usize, usize) {
        self.pattern
            .as_deref()
            .and_then(|p| parse_pattern(p).ok())
            .unwrap_or((2, 4))
    }

    /// Options set that belong to granularity channel, by name.
    fn channel_options(&self) -> Vec<String> {
        let d = Prune::default();
        let mut set = Vec::new();
        for (on, name) in [
            (self.importance != d.importance, "importance"),
            (self.ratio.is_some(), "ratio"),
            (self.target.is_some(), "target"),
            (self.min_channels != d.min_channels, "min_channels"),
            (self.round_to != d.round_to, "round_to"),
            (self.reconstruct.is_some(), "reconstruct"),
        ] {
            if on {
                set.push(name.to_string());
            }
        }
        for (node, o) in &self.overrides {
            if o.ratio.is_some() {
                set.push(format!("overrides.{node}.ratio"));
            }
        }
        set
    }

    /// Options set that belong to granularity unstructured / n:m, by name.
    fn sparse_options(&self) -> Vec<String> {
        let mut set = Vec::new();
        for (on, name) in [
            (self.method != Method::Magnitude, "method"),
            (self.sparsity.is_some(), "sparsity"),
            (self.pattern.is_some(), "pattern"),
            (self.scope != Scope::Local, "scope"),
            (self.comparison.is_some(), "comparison"),
            (self.bias_correction.is_some(), "bias_correction"),
        ] {
            if on {
                set.push(name.to_string());
            }
        }
        for (node, o) in &self.overrides {
            if o.sparsity.is_some() {
                set.push(format!("overrides.{node}.sparsity"));
            }
        }
        set
    }
}

impl Config for Prune {
    fn check(&self) -> Result<(), ConfigError> {
        for (i, op) in self.ops.iter().enumerate() {
            if !OPS.contains(&op.as_str()) {
                let hint = super::closest(op, OPS)
                    .map(|c| format!("did you mean {c:?}? "))
                    .unwrap_or_default();
                return Err(error(
                    format!("ops[{i}]"),
                    format!(
                        "whittle cannot prune {op:?}; {hint}supported: {}",
                        OPS.join(", ")
                    ),
                ));
            }
        }
        for (list, field) in [
            (&self.include_nodes, "include_nodes"),
            (&self.exclude_nodes, "exclude_nodes"),
        ] {
            for (i, m) in list.iter().enumerate() {
                if let NodeMatch::Regex(r) = m {
                    regex::Regex::new(&r.regex).map_err(|e| {
                        let first = e.to_string().lines().next().unwrap_or("").to_string();
                        error(format!("{field}[{i}].regex"), first)
                    })?;
                }
            }
        }
        // Ranges first: a bad value is named even when the granularity is wrong too.
        if let Some(r) = self.ratio {
            fraction("ratio".into(), r)?;
        }
        if let Some(s) = self.sparsity {
            fraction("sparsity".into(), s)?;
        }
        for (node, o) in &self.overrides {
            if let Some(r) = o.ratio {
                fraction(format!("overrides.{node}.ratio"), r)?;
            }
            if let Some(s) = o.sparsity {
                fraction(format!("overrides.{node}.sparsity"), s)?;
            }
        }
        if let Some(p) = &self.pattern {
            parse_pattern(p).map_err(|m| error("pattern", m))?;
        }
        if let Some(t) = &self.target {
            for (v, name) in [(t.macs, "macs"), (t.params, "params")] {
                if let Some(v) = v {
                    if !(v > 0.0 && v <= 1.0) {
                        return Err(error(
                            format!("target.{name}"),
                            format!("must be in (0, 1] (the fraction kept), got {v}"),
                        ));
                    }
                }
            }
            if let Some(db) = t.min_sqnr_db {
                if !db.is_finite() {
                    return Err(error(
                        "target.min_sqnr_db",
                        format!("{db} is not a number of dB"),
                    ));
                }
            }
            if t.samples == Some(0) {
                return Err(error("target.samples", "must be at least 1"));
            }
            let given = [
                t.macs.is_some(),
                t.params.is_some(),
                t.min_sqnr_db.is_some(),
            ];
            if given.iter().filter(|&&g| g).count() != 1 {
                return Err(error(
                    "target",
                    "give exactly one of `macs`, `params`, `min_sqnr_db`",
                ));
            }
            if self.ratio.is_some() {
                return Err(error("target", "give either `ratio` or `target`, not both"));
            }
        }
        if self.min_channels == 0 {
            return Err(error("min_channels", "must be at least 1"));
        }
        if self.round_to == 0 {
            return Err(error("round_to", "must be at least 1"));
        }
        match self.granularity {
            Granularity::Channel => {
                if let Some(f) = self.sparse_options().first() {
                    return Err(error(
                        f.clone(),
                        format!("`{f}` applies to granularity: unstructured or n:m"),
                    ));
                }
            }
            Granularity::Unstructured | Granularity::Nm => {
                if let Some(f) = self.channel_options().first() {
                    return Err(error(
                        f.clone(),
                        format!("`{f}` applies to granularity: channel"),
                    ));
                }
                let nm = self.granularity == Granularity::Nm;
                if nm && self.sparsity.is_some() {
                    return Err(error(
                        "sparsity",
                        "`sparsity` applies to granularity: unstructured (n:m takes `pattern`)",
                    ));
                }
                if nm && self.scope == Scope::Global {
                    return Err(error(
                        "scope",
                        "`scope: global` applies to granularity: unstructured (the n:m pattern fixes every group's share)",
                    ));
                }
                if nm {
                    if let Some((node, _)) =
                        self.overrides.iter().find(|(_, o)| o.sparsity.is_some())
                    {
                        return Err(error(
                            format!("overrides.{node}.sparsity"),
                            "`sparsity` applies to granularity: unstructured",
                        ));
                    }
                }
                if !nm && self.pattern.is_some() {
                    return Err(error("pattern", "`pattern` applies to granularity: n:m"));
                }
                if self.comparison.is_some() && (nm || self.method != Method::Wanda) {
                    return Err(error(
                        "comparison",
                        "`comparison` applies to granularity: unstructured with method: wanda (n:m compares within each group of M)",
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Pass for Prune {
    fn run(&self, model: &mut Model, ctx: &PassContext) -> Result<PassReport, PassError> {
        // Weights written as Constant nodes become initializers first, for
        // both granularities.
        let hoisted = super::hoist_constants(&mut model.graph);
        let mut report = match self.granularity {
            Granularity::Channel => channel::run(self, model, ctx)?,
            Granularity::Unstructured | Granularity::Nm => sparse::run(self, model, ctx)?,
        };
        report.count("constants_hoisted", hoisted as i64);
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Prune, ConfigError> {
        let v: serde_json::Value = serde_saphyr::from_str(yaml).unwrap();
        parse_config::<Prune>(&v)
    }

    fn err(yaml: &str) -> ConfigError {
        parse(yaml).expect_err(yaml)
    }

    #[test]
    fn defaults_parse_and_patterns_are_checked() {
        let p = parse("{granularity: unstructured}").unwrap();
        assert_eq!(
            (p.sparsity(), p.method, p.scope),
            (0.5, Method::Magnitude, Scope::Local)
        );
        let p = parse("{granularity: \"n:m\", pattern: \"1:8\"}").unwrap();
        assert_eq!(p.pattern(), (1, 8));
        assert_eq!(parse_pattern("2:4"), Ok((2, 4)));
        for bad in ["5:4", "4:4", "0:4", "2:65", "2-4", "a:b"] {
            assert!(parse_pattern(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_options_name_their_path() {
        let e = err("{granularity: \"n:m\", pattern: \"5:4\"}");
        assert_eq!(e.field, "pattern");
        assert!(e.message.contains("N < M"), "{}", e.message);
        let e = err("{ratio: 1.0}");
        assert_eq!(
            (e.field.as_str(), e.message.as_str()),
            ("ratio", "must be in [0, 1), got 1")
        );
        let e = err("{granularity: unstructured, sparsity: 1.5}");
        assert_eq!(e.field, "sparsity");
        let e = err("{target: {macs: 0}}");
        assert_eq!(e.field, "target.macs");
        let e = err("{granularity: unstructured, method: wandaa}");
        assert_eq!(e.field, "method");
        assert!(e.message.contains("did you mean `wanda`"), "{}", e.message);
        let e = err("{importance: l3}");
        assert!(
            e.message.contains("did you mean `l2`") || e.message.contains("`l1`"),
            "{}",
            e.message
        );
        let e = err("{granularity: unstructured, overrides: {conv1: {sparsity: 2}}}");
        assert_eq!(e.field, "overrides.conv1.sparsity");
        let e = err("{ops: [Relu]}");
        assert_eq!(e.field, "ops[0]");
    }

    #[test]
    fn options_of_another_granularity_are_refused() {
        let e = err("{granularity: unstructured, ratio: 0.3}");
        assert_eq!(e.field, "ratio");
        assert_eq!(e.message, "`ratio` applies to granularity: channel");
        let e = err("{sparsity: 0.3}");
        assert_eq!(
            e.message,
            "`sparsity` applies to granularity: unstructured or n:m"
        );
        let e = err("{method: sparsegpt}");
        assert_eq!(e.field, "method");
        let e = err("{granularity: \"n:m\", sparsity: 0.3}");
        assert_eq!(e.field, "sparsity");
        let e = err("{granularity: \"n:m\", scope: global}");
        assert_eq!(e.field, "scope");
        let e = err("{granularity: unstructured, pattern: \"2:4\"}");
        assert_eq!(e.field, "pattern");
        let e = err("{ratio: 0.3, target: {macs: 0.5}}");
        assert_eq!(e.field, "target");
        for bad in [
            "{comparison: layer}",
            "{granularity: unstructured, comparison: output}",
            "{granularity: \"n:m\", method: wanda, comparison: output}",
        ] {
            assert_eq!(err(bad).field, "comparison", "{bad}");
        }
        let p = parse("{granularity: unstructured, method: wanda, comparison: output}").unwrap();
        assert_eq!(p.comparison(), Comparison::Output);
        let p = parse("{granularity: unstructured, method: wanda}").unwrap();
        assert_eq!(p.comparison(), Comparison::Layer);
        let e = err("{granularity: unstructured, method: wanda, comparison: row}");
        assert_eq!(e.field, "comparison");
    }
}
