//! `prune`: removes weights — whole channels (`granularity: channel`, the
//! default), single weights (`unstructured`) or N of every M (`n:m`).
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
//! pooling, Pad, Resize, Transpose, Flatten/Reshape (blocks of the spatial
//! size, whole attention heads), to the input side of every consumer. The
//! indices that must go together form a *channel*; channels touching the same
//! tensors form a *group*. A group that reaches a graph input or output, an op
//! the analysis does not know, or a shape it could not rewrite, is left whole
//! and the report names the node and the reason — never guessed.
//!
//! Importance of a channel: the `l1` or `l2` norm of its slices of every
//! compute weight in the group (the producers' output rows and the consumers'
//! input columns), summed over the group's members. How much: `ratio` (each
//! group), or a global `target: { macs | params }` (channels ranked across
//! groups by importance over the group's mean, the least important removed
//! until the model's MACs — `inspect::node_macs` per Conv/ConvTranspose/Gemm/MatMul on the
//! shapes tract proves, activation×activation MatMuls included — or its
//! float weights fall to the fraction). `min_channels` and `round_to` bound
//! what each group keeps.
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

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;

use super::select::NodeMatch;
use super::{
    parse_config, Config, ConfigError, Pass, PassContext, PassError, PassInfo, PassReport,
};
use crate::ir::Model;

mod channel;
mod groups;

/// Registry entry.
pub const INFO: PassInfo = PassInfo {
    name: "prune",
    summary: "remove whole channels with every coupled slice (channel), or zero weights (unstructured, N:M)",
    doc: include_str!("prune.rs"),
    schema: super::schema_of::<Prune>,
    build: |o| Ok(Box::new(parse_config::<Prune>(o)?)),
};

/// What is removed.
#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema, PartialEq, Eq)]
pub enum Granularity {
    /// Whole channels with every coupled slice (tensors and MACs shrink).
    #[default]
    #[serde(rename = "channel")]
    Channel,
    /// Single weights set to zero.
    #[serde(rename = "unstructured")]
    Unstructured,
    /// N of every M consecutive weights along the reduction axis set to zero.
    #[serde(rename = "n:m")]
    NM,
}

/// How a channel's importance is scored.
#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Importance {
    /// Sum of absolute weights of the channel's slices.
    #[default]
    L1,
    /// Euclidean norm of the channel's slices.
    L2,
    /// Weight norm × the channel's input activation norm on the calibration
    /// data (Wanda's score at channel granularity; needs `--data`).
    Activation,
}

/// How unstructured / N:M weights are chosen (granularity unstructured, n:m).
#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Smallest magnitudes.
    #[default]
    Magnitude,
    /// `|W_ij|·‖X_j‖` (needs `--data`).
    Wanda,
    /// Column by column with the OBS update (needs `--data`).
    Sparsegpt,
}

/// Where sparsity is balanced (granularity unstructured, n:m).
#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Each layer gets the same sparsity.
    #[default]
    Local,
    /// One threshold over all layers.
    Global,
}

/// A global goal instead of a per-group `ratio` (exactly one of `macs`,
/// `params`, `min_sqnr_db`).
#[derive(Debug, Clone, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Target {
    /// Conv/ConvTranspose/MatMul/Gemm MACs left, as a fraction of the original, in (0, 1].
    pub macs: Option<f64>,
    /// Float weights left, as a fraction of the original, in (0, 1].
    pub params: Option<f64>,
    /// Lowest output SQNR (dB) on the calibration data.
    pub min_sqnr_db: Option<f64>,
    /// Calibration samples used to measure (`min_sqnr_db`).
    pub samples: Option<usize>,
}

/// Per-node options, by node name.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NodeOverride {
    /// Fraction of this node's group's channels removed (channel).
    pub ratio: Option<f64>,
    /// Fraction of this node's weights zeroed (unstructured).
    pub sparsity: Option<f64>,
    /// Leave this node's groups (channel) or weights (unstructured, n:m) whole.
    pub skip: bool,
}

/// Options of `prune`.
#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Prune {
    /// `channel` (default: remove whole channels), `unstructured` or `n:m`.
    pub granularity: Granularity,
    /// Op types whose weights are pruned (any of Conv, ConvTranspose, Gemm, MatMul).
    pub ops: Vec<String>,
    /// Prune only these nodes: exact names or `{ regex: "..." }` (channel: a
    /// group is pruned when one of its producers is included).
    pub include_nodes: Vec<NodeMatch>,
    /// Never prune these nodes (channel: the groups they produce or read stay whole).
    pub exclude_nodes: Vec<NodeMatch>,
    /// Per-node options by node name: `{ ratio?, sparsity?, skip? }`.
    pub overrides: BTreeMap<String, NodeOverride>,
    /// Channel importance: `l1` (default), `l2` or `activation` (channel).
    pub importance: Importance,
    /// Fraction of each group's channels removed, in [0, 1) (channel;
    /// exclusive with `target`; default 0.3 when neither is given).
    pub ratio: Option<f64>,
    /// A global goal: `{ macs: f }` or `{ params: f }` (channel).
    pub target: Option<Target>,
    /// Fewest channels a group keeps (channel; default 1).
    pub min_channels: usize,
    /// Channels kept are a multiple of this (channel; default 1; 8 suits SIMD).
    pub round_to: usize,
    /// Re-fit each consumer's kept weights by least squares on calibration
    /// data (channel; needs `--data`; default off).
    pub reconstruct: Option<bool>,
    /// `magnitude` (default), `wanda` or `sparsegpt` (unstructured, n:m).
    pub method: Method,
    /// Fraction of weights zeroed, in [0, 1) (unstructured; default 0.5).
    pub sparsity: Option<f64>,
    /// `"N:M"` (n:m; default "2:4"), N < M, M ≤ 64.
    pub pattern: Option<String>,
    /// `local` (default, per layer) or `global` (unstructured, n:m).
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
            importance: Importance::L1,
            ratio: None,
            target: None,
            min_channels: 1,
            round_to: 1,
            reconstruct: None,
            method: Method::Magnitude,
            sparsity: None,
            pattern: None,
            scope: Scope::Local,
        }
    }
}

fn err(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        message: message.into(),
    }
}

fn fraction_in(field: &str, v: f64, closed_low: bool) -> Result<(), ConfigError> {
    let ok = if closed_low {
        (0.0..1.0).contains(&v)
    } else {
        v > 0.0 && v <= 1.0
    };
    match ok {
        true => Ok(()),
        false if closed_low => Err(err(field, "must be in [0, 1)")),
        false => Err(err(field, "must be in (0, 1]")),
    }
}

impl Config for Prune {
    fn check(&self) -> Result<(), ConfigError> {
        for (i, op) in self.ops.iter().enumerate() {
            if !matches!(op.as_str(), "Conv" | "ConvTranspose" | "Gemm" | "MatMul") {
                return Err(err(
                    format!("ops[{i}]"),
                    format!("cannot prune {op:?}; choose among Conv, ConvTranspose, Gemm, MatMul"),
                ));
            }
        }
        for (list, field) in [
            (&self.include_nodes, "include_nodes"),
            (&self.exclude_nodes, "exclude_nodes"),
        ] {
            for (i, m) in list.iter().enumerate() {
                if let NodeMatch::Regex(r) = m {
                    if let Err(e) = regex::Regex::new(&r.regex) {
                        return Err(err(format!("{field}[{i}].regex"), e.to_string()));
                    }
                }
            }
        }
        let channel = self.granularity == Granularity::Channel;
        let (mine, theirs) = if channel {
            ("channel", "unstructured or n:m")
        } else {
            ("unstructured or n:m", "channel")
        };
        let foreign: Vec<(&str, bool)> = if channel {
            vec![
                ("method", self.method != Method::Magnitude),
                ("sparsity", self.sparsity.is_some()),
                ("pattern", self.pattern.is_some()),
                ("scope", self.scope != Scope::Local),
            ]
        } else {
            vec![
                ("importance", self.importance != Importance::L1),
                ("ratio", self.ratio.is_some()),
                ("target", self.target.is_some()),
                ("min_channels", self.min_channels != 1),
                ("round_to", self.round_to != 1),
                ("reconstruct", self.reconstruct.is_some()),
            ]
        };
        if let Some((f, _)) = foreign.iter().find(|(_, set)| *set) {
            return Err(err(
                *f,
                format!("`{f}` applies to granularity: {theirs}, not {mine}"),
            ));
        }
        if let Some(r) = self.ratio {
            fraction_in("ratio", r, true)?;
        }
        if self.ratio.is_some() && self.target.is_some() {
            return Err(err(
                "target",
                "`ratio` and `target` are exclusive; give one",
            ));
        }
        if let Some(t) = &self.target {
            let given = [
                t.macs.is_some(),
                t.params.is_some(),
                t.min_sqnr_db.is_some(),
            ];
            if given.iter().filter(|g| **g).count() != 1 {
                return Err(err(
                    "target",
                    "give exactly one of `macs`, `params`, `min_sqnr_db`",
                ));
            }
            if let Some(m) = t.macs {
                fraction_in("target.macs", m, false)?;
            }
            if let Some(p) = t.params {
                fraction_in("target.params", p, false)?;
            }
            if t.samples == Some(0) {
                return Err(err("target.samples", "must be at least 1"));
            }
        }
        if self.min_channels == 0 {
            return Err(err("min_channels", "must be at least 1"));
        }
        if self.round_to == 0 {
            return Err(err("round_to", "must be at least 1"));
        }
        for (name, o) in &self.overrides {
            let field = format!("overrides.{name}");
            if let Some(r) = o.ratio {
                if !channel {
                    return Err(err(
                        format!("{field}.ratio"),
                        "`ratio` applies to granularity: channel",
                    ));
                }
                fraction_in(&format!("{field}.ratio"), r, true)?;
            }
            if let Some(s) = o.sparsity {
                if channel {
                    return Err(err(
                        format!("{field}.sparsity"),
                        "`sparsity` applies to granularity: unstructured or n:m",
                    ));
                }
                fraction_in(&format!("{field}.sparsity"), s, true)?;
            }
        }
        Ok(())
    }
}

impl Pass for Prune {
    fn run(&self, model: &mut Model, ctx: &PassContext) -> Result<PassReport, PassError> {
        match self.granularity {
            Granularity::Channel => channel::run(self, model, ctx),
            Granularity::Unstructured => Err(PassError::Model(
                "granularity unstructured is not built on this branch".into(),
            )),
            Granularity::NM => Err(PassError::Model(
                "granularity n:m is not built on this branch".into(),
            )),
        }
    }
}
