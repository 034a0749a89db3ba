//! `low-rank`: splits a MatMul, Gemm or Conv with a constant weight into two
//! thin layers through a truncated SVD, so parameters and MACs fall.
//!
//! ```text
//! MatMul   before:  x ─ MatMul(W: K×N) ─ y
//!          after:   x ─ MatMul(A: K×r) ─ t ─ MatMul(B: r×N) ─ y
//! Gemm     before:  x ─ Gemm(B, C; transA, transB, α, β) ─ y
//!          after:   x ─ Gemm(A: K×r; transA, α) ─ t ─ Gemm(B: r×N, β·C) ─ y
//! Conv     before:  x ─ Conv(W: O×C×kh×kw, b) ─ y
//! channel  after:   x ─ Conv(r×C×kh×kw; strides, pads, dilations) ─ t ─ Conv(O×r×1×1, b) ─ y
//! spatial  after:   x ─ Conv(r×C×kh×1) ─ t ─ Conv(O×r×1×kw, b) ─ y
//! ```
//!
//! (A constant `C` takes `β` into its values, rounded once to f32, and the
//! second Gemm has `β = 1`: onnxruntime's integer Gemm needs that; a `C`
//! computed at run time keeps `β`.)
//!
//! **Math.** Every split layer is written as `y = x · W` with `W` a `K × N`
//! matrix: the weight itself for MatMul, `op(B)` for Gemm, and for a Conv
//! the im2col form `W[(c,i,j), o] = w[o,c,i,j]` (`K = C·kh·kw`, `N = O`:
//! one input patch per output position). With the SVD `W = U Σ Vᵀ` kept to
//! rank `r`, `A = U_r √Σ_r` and `B = √Σ_r V_rᵀ` (the singular values split
//! evenly, so both factors have the same scale: this keeps their int8
//! ranges alike when `quantize` follows). By Eckart–Young no rank-`r`
//! matrix is closer to `W` in the Frobenius norm; dropping `σᵢ` costs `σᵢ²`.
//!
//! The channel split is `A` as `r` Convs over the same patches (same
//! kernel, strides, pads, dilations, auto_pad), then `B` as a 1×1 Conv with
//! the bias: exact in real arithmetic at full rank. The spatial split
//! (Jaderberg, Vedaldi and Zisserman 2014) factors the other reshaping,
//! `M[(c,i), (j,o)] = w[o,c,i,j]` (`C·kh × kw·O`): then
//! `w[o,c,i,j] ≈ Σₖ A[(c,i),k] · B[k,(j,o)]`, so the first Conv is `kh × 1`
//! with weight `v[k,c,i,0] = A[(c,i),k]`, stride, dilation and pads of the
//! height only, and the second is `1 × kw` with `h[o,k,0,j] = B[k,(j,o)]`,
//! stride, dilation and pads of the width, and the bias. Padding the width
//! of `t` instead of `x` is exact because the first Conv has no bias (a
//! zero column of `x` gives a zero column of `t`). A spatial split needs a
//! 2-D kernel with `kh, kw > 1` and explicit pads (or `VALID`).
//!
//! **When to split.** A split at rank `r` stores `r·(K + N)` weights
//! instead of `K·N` (spatial: `r·(C·kh + O·kw)` instead of `O·C·kh·kw`) and
//! costs as many MACs per output position (the spatial split's first Conv
//! runs on the unstrided width). A layer is split only when both fall:
//! `r < K·N / (K + N)` for dense layers, the real counts of the two Convs
//! for Conv (MACs from the shapes, when they are known). With `min_saving:
//! s` a split must keep at most `1 − s` of the layer's weights and MACs (a
//! split adds one kernel call: on onnxruntime a small saving costs more
//! time than it saves). Layers that would not save are left alone and the
//! report gives the reason; the global target allocates among the others.
//!
//! **Ranks.** `rank` (fixed), `energy` (the smallest `r` keeping that
//! fraction of `Σσ²`), `ratio` (the largest `r` whose split keeps at most
//! that fraction of the layer's weights), or a global `target` (see below);
//! `round_to` rounds up to a multiple, `overrides` set any of these per node.
//!
//! **Data-aware** (`data_aware`, default when `--data` is given; SVD-LLM,
//! Wang et al. 2024). What matters is the layer's output on real inputs,
//! `E‖x(W − Ŵ)‖² = tr((W − Ŵ)ᵀ H (W − Ŵ))` with `H = E[x xᵀ]` the second
//! moment of the layer's input rows (im2col patches for Conv, gathered by
//! the shared `passes/calib/` moments, the ones GPTQ uses). With `H = L Lᵀ` (Cholesky,
//! after damping `H + λI`, `λ = damping · mean diag H`, raised tenfold
//! until the factorization succeeds: rank-deficient moments), this is
//! `‖Lᵀ W − Lᵀ Ŵ‖²_F`: the SVD of the *whitened* `Lᵀ W = U Σ Vᵀ`, truncated,
//! is the optimal rank-`r` layer for the data, and dropping `σᵢ` costs exactly
//! `σᵢ²` of output error. The factors are `A = L⁻ᵀ U_r √Σ_r`, `B = √Σ_r V_rᵀ`.
//! The report gives per layer the predicted output SQNR
//! (`Σσ² / Σ_dropped σ²`, from the damped spectrum) beside `calib_sqnr_db`:
//! the layer's own output SQNR on the calibration inputs, computed (not run)
//! from their undamped second moments with the written f32 factors,
//! `tr(Wᵀ H W) / tr(ΔWᵀ H ΔW)`; the layer alone, its inputs those of the
//! unsplit model, its bias left out (the model's output SQNR is `validate`'s).
//! The spatial split and Gemms with `transA` stay data-free (their moments are not the
//! im2col rows this whitening needs), and so do layers with `K` > 4096 (the
//! moments take `K²` f64; up to 4096 positions per sample enter them).
//!
//! **Global target** (`target: { params: f }` or `{ macs: f }`): the
//! weights (or MACs) of all candidate layers together fall to the fraction
//! `f`, layers that cannot be split counting unchanged. Ranks are allocated
//! greedily over the (whitened) spectra of all layers: each step drops the
//! singular value that costs the least relative output error
//! (`σᵢ² / Σσ²` of its layer) per parameter (MAC) saved; a layer's first
//! step jumps from unsplit to the largest rank that saves. When `f` cannot be
//! reached, the run says how close it got.
//!
//! **Measured sensitivities** (`sensitivity`, default when `--data` is
//! given). A layer's relative error is not the model's: some layers' errors
//! reach the output amplified (PP-OCR rec's early Convs, its 6625-way
//! head), others damped. Each target layer is truncated alone at a probe
//! rank (the largest saving rank with ≥ 1% predicted error) and run in
//! tract on the first 8 calibration samples (`passes/measure.rs`): its
//! gain is the model's output noise `10^(−SQNR/10)` (worst output) over
//! the predicted error. The greedy steps then cost `gain^a · σᵢ²/Σσ²`;
//! the allocations for `a` = 0, 0.5, 1 and the uniform per-layer ratio `f`
//! (when it fits the budget) are split and run in tract on the same samples,
//! and the best measured wins (noise adds up only to first order: a model
//! whose output saturates favours a weaker weighting). Cost: one reference
//! run, one run per layer, at most four candidate runs (counted in
//! `sensitivity_runs`, `candidate_runs`); each run is the same on any
//! thread count. Without data the allocation uses the spectra alone.
//! With `target.holdout: h` (default 0.25) the last `h` of the calibration samples are
//! kept out of the second moments while the allocation is chosen: the
//! probes and the candidates run on them, so an allocation that cuts where
//! the whitening merely fits the calibration data is not rewarded for it;
//! the chosen ranks are then factored with the moments of all samples.
//!
//! `target: { min_sqnr_db }` searches the params fraction by bisection
//! (the greedy weighted by the measured gains, when measured), each
//! candidate checked in tract on the data (or synthetic inputs) against the
//! original outputs.
//!
//! Preconditions: f32 weights that are initializers (or Constant nodes,
//! hoisted first) and not graph inputs; MatMul with a 2-D weight as its
//! second input; Conv with `group = 1` and a 1-D or 2-D kernel. Exactness:
//! at full rank the rewrite is the same function up to f32 rounding (≥ 80 dB
//! SQNR in the tests); below full rank it is the approximation above.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::linalg;
use super::measure;
use super::select::NodeMatch;
use super::{
    parse_config, Config, ConfigError, Pass, PassContext, PassError, PassInfo, PassReport,
};
use crate::ir::{AttrValue, Attribute, DataType, Graph, Model, Node, NodeId, Tensor};

mod sensitivity;
mod whiten;

/// `target.holdout` when not given.
const DEFAULT_HOLDOUT: f64 = 0.25;

/// Registry entry.
pub const INFO: PassInfo = PassInfo {
    name: "low-rank",
    summary: "split MatMul, Gemm and Conv weights into two thin factors by (data-whitened) SVD",
    doc: include_str!("low_rank.rs"),
    schema: super::schema_of::<LowRank>,
    build: |o| Ok(Box::new(parse_config::<LowRank>(o)?)),
};

/// Options of `low-rank`. At most one of `rank`, `energy`, `ratio` and
/// `target` (none: `energy: 0.99`).
#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LowRank {
    /// Rank of every split layer.
    pub rank: Option<usize>,
    /// Keep the smallest rank whose singular values carry this fraction of
    /// `Σσ²` (of the whitened weight when data-aware), in (0, 1].
    pub energy: Option<f64>,
    /// Per-layer budget: the largest rank whose split keeps at most this
    /// fraction of the layer's weights, in (0, 1).
    pub ratio: Option<f64>,
    /// A global target over all candidate layers (ranks allocated by least
    /// predicted output error per parameter or MAC saved; with data, the
    /// model's output error, measured: see `sensitivity`).
    pub target: Option<Target>,
    /// Round ranks up to a multiple of this (8 suits vector units); 1: exact.
    pub round_to: usize,
    /// Layers with fewer weights than this are left alone.
    pub min_params: usize,
    /// Split a layer only when the split saves at least this fraction of
    /// its weights and (when its shapes are known) of its MACs, in [0, 1);
    /// 0: any saving. A split adds a kernel call per layer: on small layers
    /// that costs more latency than the MACs it saves (BENCHMARKS.md).
    pub min_saving: f64,
    /// Op types to split (any of Conv, Gemm, MatMul).
    pub ops: Vec<String>,
    /// How Convs are split: `channel` (k×k with r filters, then 1×1) or
    /// `spatial` (kh×1, then 1×kw).
    pub mode: ConvMode,
    /// Split only these nodes (by name or `{ regex: ... }`); empty: all.
    pub include_nodes: Vec<NodeMatch>,
    /// Never split these nodes.
    pub exclude_nodes: Vec<NodeMatch>,
    /// Per-node settings by node name (rank, energy, ratio, mode, skip).
    pub overrides: BTreeMap<String, LayerOverride>,
    /// Whiten by the layer inputs' second moments (SVD-LLM). Default: true
    /// when `--data` is given, false otherwise.
    pub data_aware: Option<bool>,
    /// Damping of the second moments, relative to their mean diagonal
    /// (raised tenfold while the Cholesky factorization fails). Small, as
    /// SVD-LLM's: every bit of damping moves the truncation off the data's
    /// optimum (1e-4 cost 0.002 dB against SVD-LLM on PP-OCR rec).
    pub damping: f64,
    /// Calibration samples used for the second moments and the
    /// `min_sqnr_db` search (at most).
    pub samples: usize,
    /// SVD method: `auto` (randomized when a fixed rank is far below
    /// min(K, N)), `exact` (thin SVD) or `randomized`.
    pub svd: SvdMethod,
    /// Weight the global target's allocation by each layer's measured
    /// effect on the model output (one tract run per layer, that layer
    /// alone truncated, on the first 8 calibration samples), and choose
    /// among the weighted, unweighted and uniform allocations by a tract
    /// run of each. Default: true when `--data` is given; without it the
    /// allocation uses the spectra alone.
    pub sensitivity: Option<bool>,
}

impl Default for LowRank {
    fn default() -> Self {
        LowRank {
            rank: None,
            energy: None,
            ratio: None,
            target: None,
            round_to: 1,
            min_params: 0,
            min_saving: 0.0,
            ops: vec!["Conv".into(), "Gemm".into(), "MatMul".into()],
            mode: ConvMode::Channel,
            include_nodes: Vec::new(),
            exclude_nodes: Vec::new(),
            overrides: BTreeMap::new(),
            data_aware: None,
            damping: 1e-6,
            samples: 64,
            svd: SvdMethod::Auto,
            sensitivity: None,
        }
    }
}

/// How a Conv is split.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ConvMode {
    /// A k×k Conv with r output channels, then a 1×1 Conv.
    #[default]
    Channel,
    /// A kh×1 Conv, then a 1×kw Conv (Jaderberg et al.).
    Spatial,
}

/// The SVD algorithm.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum SvdMethod {
    /// Randomized for a fixed rank r with 4·(r + 10) ≤ min(K, N), else exact.
    #[default]
    Auto,
    /// The thin SVD.
    Exact,
    /// Randomized subspace iteration (fixed seed, 2 power iterations) when
    /// the rank is fixed before the SVD.
    Randomized,
}

/// A global target (exactly one field).
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// Fraction of the candidate layers' weights to keep, in (0, 1).
    #[serde(default)]
    pub params: Option<f64>,
    /// Fraction of the candidate layers' MACs to keep, in (0, 1).
    #[serde(default)]
    pub macs: Option<f64>,
    /// The smallest params fraction whose model keeps every output's SQNR
    /// at least this (dB), checked in tract.
    #[serde(default)]
    pub min_sqnr_db: Option<f64>,
    /// (`params`, `macs`, with measured sensitivities and whitening) The
    /// last fraction of the calibration samples, in [0, 1), is kept out of
    /// the second moments while the allocation is chosen: the sensitivity
    /// probes and the candidate allocations run on those samples, so that
    /// the choice is made on data the whitening did not fit. The chosen
    /// ranks are then factored with the moments of all samples. 0: every
    /// run is on the first calibration samples, which the moments include.
    /// Default 0.25: the only setting measured with which the target beats
    /// the uniform ratio on every bench model held out (BENCHMARKS.md).
    #[serde(default)]
    pub holdout: Option<f64>,
}

/// Per-node settings.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LayerOverride {
    /// Rank of this node.
    #[serde(default)]
    pub rank: Option<usize>,
    /// Energy fraction kept for this node.
    #[serde(default)]
    pub energy: Option<f64>,
    /// Parameter budget of this node.
    #[serde(default)]
    pub ratio: Option<f64>,
    /// Conv split of this node.
    #[serde(default)]
    pub mode: Option<ConvMode>,
    /// Leave this node alone.
    #[serde(default)]
    pub skip: bool,
}

fn bad(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        message: message.into(),
    }
}

fn check_fraction(field: &str, v: Option<f64>, closed: bool) -> Result<(), ConfigError> {
    if let Some(v) = v {
        let ok = v > 0.0 && (v < 1.0 || (closed && v == 1.0));
        if !ok || !v.is_finite() {
            let range = if closed { "(0, 1]" } else { "(0, 1)" };
            return Err(bad(field, format!("{v} is outside {range}")));
        }
    }
    Ok(())
}

impl Config for LowRank {
    fn check(&self) -> Result<(), ConfigError> {
        let chosen = [
            self.rank.is_some(),
            self.energy.is_some(),
            self.ratio.is_some(),
            self.target.is_some(),
        ];
        if chosen.iter().filter(|c| **c).count() > 1 {
            return Err(bad("", "set at most one of rank, energy, ratio and target"));
        }
        if self.rank == Some(0) {
            return Err(bad("rank", "must be at least 1"));
        }
        check_fraction("energy", self.energy, true)?;
        check_fraction("ratio", self.ratio, false)?;
        if let Some(t) = &self.target {
            let n = [
                t.params.is_some(),
                t.macs.is_some(),
                t.min_sqnr_db.is_some(),
            ]
            .iter()
            .filter(|c| **c)
            .count();
            if n != 1 {
                return Err(bad(
                    "target",
                    "set exactly one of params, macs and min_sqnr_db",
                ));
            }
            check_fraction("target.params", t.params, false)?;
            check_fraction("target.macs", t.macs, false)?;
            if let Some(h) = t.holdout {
                if !(0.0..1.0).contains(&h) {
                    return Err(bad("target.holdout", format!("{h} is outside [0, 1)")));
                }
                if t.min_sqnr_db.is_some() {
                    return Err(bad(
                        "target.holdout",
                        "applies to target.params and target.macs (min_sqnr_db checks every sample)",
                    ));
                }
            }
            if t.min_sqnr_db.is_some_and(|d| !d.is_finite()) {
                return Err(bad("target.min_sqnr_db", "must be a finite number"));
            }
        }
        if self.round_to == 0 {
            return Err(bad("round_to", "must be at least 1"));
        }
        if !(0.0..1.0).contains(&self.min_saving) {
            return Err(bad(
                "min_saving",
                format!("{} is outside [0, 1)", self.min_saving),
            ));
        }
        if self.samples == 0 {
            return Err(bad("samples", "must be at least 1"));
        }
        if !(self.damping >= 0.0 && self.damping.is_finite()) {
            return Err(bad("damping", "must be a finite number ≥ 0"));
        }
        for (i, op) in self.ops.iter().enumerate() {
            if !matches!(op.as_str(), "Conv" | "Gemm" | "MatMul") {
                return Err(bad(
                    format!("ops[{i}]"),
                    format!("cannot split {op:?}; choose among Conv, Gemm, MatMul"),
                ));
            }
        }
        super::select::check_patterns(&self.include_nodes, "include_nodes")?;
        super::select::check_patterns(&self.exclude_nodes, "exclude_nodes")?;
        for (name, o) in &self.overrides {
            let chosen = [o.rank.is_some(), o.energy.is_some(), o.ratio.is_some()];
            if chosen.iter().filter(|c| **c).count() > 1 {
                return Err(bad(
                    format!("overrides.{name}"),
                    "set at most one of rank, energy and ratio",
                ));
            }
            if o.rank == Some(0) {
                return Err(bad(format!("overrides.{name}.rank"), "must be at least 1"));
            }
            check_fraction(&format!("overrides.{name}.energy"), o.energy, true)?;
            check_fraction(&format!("overrides.{name}.ratio"), o.ratio, false)?;
        }
        Ok(())
    }
}

/// How a rank is chosen for one layer.
#[derive(Debug, Clone, Copy, PartialEq)]
enum RankRule {
    Rank(usize),
    Energy(f64),
    Ratio(f64),
    /// Set by the global allocation.
    Global,
}

/// The op a layer is and how its factors are written back.
#[derive(Debug, Clone, PartialEq)]
enum Kind {
    MatMul,
    Gemm {
        trans_a: bool,
        alpha: f32,
    },
    /// Conv, channel split. `dims` is the weight shape `[O, C, k…]`.
    Channel {
        dims: Vec<usize>,
    },
    /// Conv, spatial split of a `[O, C, kh, kw]` weight.
    Spatial {
        dims: [usize; 4],
    },
}

/// A layer that may be split.
#[derive(Debug, Clone)]
pub(crate) struct Layer {
    node: NodeId,
    label: String,
    kind: Kind,
    /// The weight initializer.
    weight: String,
    /// `K × N`, row-major (the reshaping the split factors).
    k: usize,
    n: usize,
    w: Vec<f64>,
    rule: RankRule,
    /// Output positions per sample (MatMul rows, Conv output pixels), and
    /// for a spatial split the positions of the first Conv.
    positions: Option<(u64, u64)>,
    /// The least fraction of its weights (and MACs) a split must save
    /// (`min_saving`).
    min_saving: f64,
}

impl Layer {
    fn params_before(&self) -> u64 {
        (self.k * self.n) as u64
    }

    /// Weights of the split at rank `r` (the two factors).
    fn params_after(&self, r: usize) -> u64 {
        (r * (self.k + self.n)) as u64
    }

    fn macs_before(&self) -> Option<u64> {
        self.positions.map(|(p, _)| p * self.params_before())
    }

    fn macs_after(&self, r: usize) -> Option<u64> {
        let (p, first) = self.positions?;
        Some(match self.kind {
            Kind::Spatial { .. } => first * (r * self.k) as u64 + p * (r * self.n) as u64,
            _ => p * self.params_after(r),
        })
    }

    /// Whether a split at rank `r` saves both weights and (when known)
    /// MACs, each by at least `min_saving` of the layer's.
    fn saves(&self, r: usize) -> bool {
        let enough = |after: u64, before: u64| {
            after < before && after as f64 <= (1.0 - self.min_saving) * before as f64
        };
        enough(self.params_after(r), self.params_before())
            && match (self.macs_before(), self.macs_after(r)) {
                (Some(b), Some(a)) => enough(a, b),
                _ => true,
            }
    }

    /// The largest rank that still saves, if any.
    fn max_saving_rank(&self) -> Option<usize> {
        (1..=self.k.min(self.n)).rev().find(|&r| self.saves(r))
    }
}

/// One layer's factorization, before the rank is fixed.
pub(crate) struct Spectrum {
    /// The SVD of the (whitened) weight; possibly truncated.
    svd: linalg::Svd,
    /// `Σσ²` of the full spectrum (`‖W‖²_F`, whitened when data-aware).
    total: f64,
    /// Data-aware: the inverse transposed Cholesky factor and what damping took.
    whitening: Option<whiten::Whitening>,
}

impl Spectrum {
    /// Relative error of keeping rank `r` (the dropped fraction of `Σσ²`).
    fn dropped(&self, r: usize) -> f64 {
        if self.total <= 0.0 {
            return 0.0;
        }
        let kept: f64 = self.svd.s.iter().take(r).map(|s| s * s).sum();
        ((self.total - kept) / self.total).max(0.0)
    }
}

impl Pass for LowRank {
    fn run(&self, model: &mut Model, ctx: &PassContext) -> Result<PassReport, PassError> {
        let mut report = PassReport::with_counters(&[
            "layers_split",
            "layers_kept",
            "nodes_added",
            "params_before",
            "params_after",
        ]);
        report.count(
            "constants_hoisted",
            super::hoist_constants(&mut model.graph) as i64,
        );
        let data_aware = self.data_aware.unwrap_or(ctx.data.is_some());
        let shapes = crate::inspect::value_shapes(&model.graph);
        let mut layers = self.candidates(
            &model.graph,
            &shapes,
            self.weights_later(data_aware),
            &mut report,
        );
        let mut samples = None;
        if data_aware
            || self.measures_sensitivity(ctx)
            || self
                .target
                .as_ref()
                .is_some_and(|t| t.min_sqnr_db.is_some())
        {
            samples = Some(whiten::load_samples(model, ctx, self.samples, &mut report)?);
        }
        // With a holdout, the allocation is chosen on spectra whitened by
        // the first samples' moments and measured on the rest; the moments of
        // all samples (the two parts merged) then factor the chosen ranks.
        let fit = match (&samples, data_aware) {
            (Some(s), true) if self.measures_sensitivity(ctx) => self.fit_samples(s.len()),
            _ => None,
        };
        let (grams, ranks, gains) = match (&samples, fit) {
            (Some(s), Some(n)) => {
                let first = whiten::grams(model, &layers, &s[..n], ctx)?;
                let spectra =
                    self.spectra(model, &shapes, &mut layers, &first, true, &mut report)?;
                report.count("moments_samples_for_the_choice", n as i64);
                report.count("samples_held_out", (s.len() - n) as i64);
                report.summary.push(format!(
                    "target.holdout: the allocation is chosen on the last {} calibration samples, whitened by the moments of the first {n}; the chosen ranks are factored with the moments of all {}",
                    s.len() - n,
                    s.len()
                ));
                let (ranks, gains) =
                    self.choose_ranks(model, ctx, &layers, &spectra, Some(&s[n..]), &mut report)?;
                drop(spectra);
                let rest = whiten::grams(model, &layers, &s[n..], ctx)?;
                (whiten::merge(first, rest), Some(ranks), gains)
            }
            (Some(s), None) if data_aware => (whiten::grams(model, &layers, s, ctx)?, None, None),
            _ => (BTreeMap::new(), None, None),
        };
        let spectra = self.spectra(model, &shapes, &mut layers, &grams, data_aware, &mut report)?;
        let (ranks, gains) = match ranks {
            Some(r) => (r, gains),
            None => self.choose_ranks(
                model,
                ctx,
                &layers,
                &spectra,
                samples.as_deref(),
                &mut report,
            )?,
        };
        apply_all(model, &layers, &spectra, &ranks, &grams, &mut report)?;
        // A holdout computes the spectra twice: say each warning once.
        let mut seen = std::collections::HashSet::new();
        report.warnings.retain(|w| seen.insert(w.clone()));
        if let Some((which, gains)) = gains {
            sensitivity::annotate(&mut report, &layers, &which, &gains);
        }
        Ok(report)
    }
}

impl LowRank {
    /// The spectrum of every layer (whitened by `grams` when data-aware),
    /// each weight (re)loaded for it and dropped after it unless a later
    /// step needs the weights.
    fn spectra(
        &self,
        model: &Model,
        shapes: &std::collections::HashMap<String, Vec<i64>>,
        layers: &mut [Layer],
        grams: &BTreeMap<NodeId, whiten::LayerGram>,
        data_aware: bool,
        report: &mut PassReport,
    ) -> Result<Vec<Spectrum>, PassError> {
        let weights_later = self.weights_later(data_aware);
        let mut spectra = Vec::with_capacity(layers.len());
        for layer in layers.iter_mut() {
            if !weights_later {
                layer.w = self
                    .layer(&model.graph, layer.node, shapes)
                    .map_err(|message| PassError::Node {
                        node: layer.label.clone(),
                        message,
                    })?
                    .w;
            }
            let gram = grams.get(&layer.node);
            spectra.push(self.spectrum(layer, gram, data_aware, report)?);
            if !weights_later {
                layer.w = Vec::new();
            }
        }
        Ok(spectra)
    }

    /// Memory: without data or an SQNR target nothing after the spectra
    /// reads a layer's weight, so each is (re)loaded for its spectrum and
    /// dropped after it: one layer's weight in memory at a time, not all.
    fn weights_later(&self, data_aware: bool) -> bool {
        data_aware
            || self
                .target
                .as_ref()
                .is_some_and(|t| t.min_sqnr_db.is_some())
    }

    /// With `target.holdout`, how many of `n` samples the moments of the
    /// allocation's choice are gathered on (the rest are measured on):
    /// `None` without a holdout, or when either part would be empty.
    fn fit_samples(&self, n: usize) -> Option<usize> {
        let h = self.target.as_ref()?.holdout.unwrap_or(DEFAULT_HOLDOUT);
        if h <= 0.0 {
            return None;
        }
        let held = ((n as f64) * h).round() as usize;
        (held > 0 && held < n).then_some(n - held)
    }

    /// Whether the global target's allocation is weighted by measured
    /// sensitivities (a target and, by default, calibration data).
    fn measures_sensitivity(&self, ctx: &PassContext) -> bool {
        self.target.is_some() && self.sensitivity.unwrap_or(ctx.data.is_some())
    }

    fn rule_for(&self, name: &str) -> RankRule {
        let o = self.overrides.get(name);
        if let Some(r) = o.and_then(|o| o.rank).or(self.rank) {
            return RankRule::Rank(r);
        }
        if let Some(e) = o.and_then(|o| o.energy) {
            return RankRule::Energy(e);
        }
        if let Some(r) = o.and_then(|o| o.ratio) {
            return RankRule::Ratio(r);
        }
        if self.target.is_some() {
            return RankRule::Global;
        }
        match (self.energy, self.ratio) {
            (_, Some(r)) => RankRule::Ratio(r),
            (Some(e), _) => RankRule::Energy(e),
            _ => RankRule::Energy(0.99),
        }
    }

    /// The layers that could be split, in graph order; the others are
    /// reported (when the reason is worth a line).
    /// Without `keep_weights` each layer's weight is dropped once its layout
    /// is known (`layer` reloads it when its spectrum is computed).
    fn candidates(
        &self,
        g: &Graph,
        shapes: &std::collections::HashMap<String, Vec<i64>>,
        keep_weights: bool,
        report: &mut PassReport,
    ) -> Vec<Layer> {
        let mut out = Vec::new();
        let order = g.topological_order().unwrap_or_else(|_| g.node_ids());
        for id in order {
            let n = g.node(id);
            if !n.domain().is_empty() || !self.ops.iter().any(|o| o == n.op_type()) {
                continue;
            }
            let name = n.name().to_string();
            let why = if let Some(i) = self.exclude_nodes.iter().position(|m| m.matches(&name)) {
                Some(format!("excluded by exclude_nodes[{i}]"))
            } else if !self.include_nodes.is_empty()
                && !self.include_nodes.iter().any(|m| m.matches(&name))
            {
                Some("not in include_nodes".to_string())
            } else if self.overrides.get(&name).is_some_and(|o| o.skip) {
                Some(format!("overrides.{name}.skip"))
            } else {
                None
            };
            if let Some(why) = why {
                keep(report, &n.label(), &why, None);
                continue;
            }
            match self.layer(g, id, shapes) {
                Ok(l) if (l.k * l.n) < self.min_params => keep(
                    report,
                    &l.label,
                    &format!("{} weights < min_params {}", l.k * l.n, self.min_params),
                    Some(l.params_before()),
                ),
                Ok(mut l) => {
                    if !keep_weights {
                        l.w = Vec::new();
                    }
                    out.push(l)
                }
                Err(why) => keep(report, &n.label(), &why, None),
            }
        }
        out
    }

    fn layer(
        &self,
        g: &Graph,
        id: NodeId,
        shapes: &std::collections::HashMap<String, Vec<i64>>,
    ) -> Result<Layer, String> {
        let n = g.node(id);
        let wname = n.inputs.get(1).cloned().unwrap_or_default();
        let t = g
            .initializer(&wname)
            .filter(|_| !g.is_input(&wname))
            .ok_or("its weight is not a constant")?;
        if t.dtype() != DataType::Float {
            return Err(format!("its weight is {:?}, not f32", t.dtype()));
        }
        let dims: Vec<usize> = t
            .dims
            .iter()
            .map(|&d| usize::try_from(d).map_err(|_| "negative weight dim".to_string()))
            .collect::<Result<_, _>>()?;
        let v: Vec<f64> = t
            .to_f32()
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(f64::from)
            .collect();
        t.release_pages();
        let shape = |i: usize| -> Option<Vec<u64>> {
            let s = shapes.get(n.inputs.get(i).or(n.outputs.first())?)?;
            s.iter().map(|&d| u64::try_from(d).ok()).collect()
        };
        let out_shape = || -> Option<Vec<u64>> {
            shapes
                .get(n.outputs.first()?)?
                .iter()
                .map(|&d| u64::try_from(d).ok())
                .collect()
        };
        let rule = self.rule_for(n.name());
        let mut layer = Layer {
            node: id,
            label: n.label(),
            kind: Kind::MatMul,
            weight: wname.clone(),
            k: 0,
            n: 0,
            w: Vec::new(),
            rule,
            positions: None,
            min_saving: self.min_saving,
        };
        match n.op_type() {
            "MatMul" => {
                let [k, nn] = dims[..] else {
                    return Err(format!("its weight has rank {}, not 2", dims.len()));
                };
                (layer.k, layer.n, layer.w) = (k, nn, v);
                layer.positions = out_shape().map(|s| {
                    let p = s.iter().product::<u64>() / (nn as u64).max(1);
                    (p, p)
                });
            }
            "Gemm" => {
                let [r0, r1] = dims[..] else {
                    return Err(format!("its weight has rank {}, not 2", dims.len()));
                };
                let trans_b = n.attr_int("transB").unwrap_or(0) == 1;
                let (k, nn) = if trans_b { (r1, r0) } else { (r0, r1) };
                let w = if trans_b { transpose(&v, r0, r1) } else { v };
                (layer.k, layer.n, layer.w) = (k, nn, w);
                layer.kind = Kind::Gemm {
                    trans_a: n.attr_int("transA").unwrap_or(0) == 1,
                    alpha: n.attr_float("alpha").unwrap_or(1.0),
                };
                layer.positions = out_shape().map(|s| {
                    let p = s.first().copied().unwrap_or(1);
                    (p, p)
                });
            }
            "Conv" => {
                if n.attr_int("group").unwrap_or(1) != 1 {
                    return Err("group ≠ 1".into());
                }
                if !(dims.len() == 3 || dims.len() == 4) {
                    return Err(format!("its weight has rank {}, not 3 or 4", dims.len()));
                }
                let o = dims[0];
                let per: usize = dims[1..].iter().product();
                let mode = self
                    .overrides
                    .get(n.name())
                    .and_then(|x| x.mode)
                    .unwrap_or(self.mode);
                let out = out_shape();
                let pix = out
                    .as_ref()
                    .map(|s| s.iter().skip(2).product::<u64>() * s[0]);
                match mode {
                    ConvMode::Channel => {
                        // W[(c,i,j), o] = w[o, c, i, j].
                        (layer.k, layer.n, layer.w) = (per, o, transpose(&v, o, per));
                        layer.kind = Kind::Channel { dims: dims.clone() };
                        layer.positions = pix.map(|p| (p, p));
                    }
                    ConvMode::Spatial => {
                        let [o, c, kh, kw] = dims[..] else {
                            return Err("a spatial split needs a 2-D kernel".into());
                        };
                        if kh < 2 || kw < 2 {
                            return Err(format!(
                                "a spatial split needs kh, kw > 1 (kernel {kh}×{kw})"
                            ));
                        }
                        let auto = match n.attr("auto_pad").map(|a| &a.value) {
                            Some(AttrValue::String(s)) => String::from_utf8_lossy(s).into_owned(),
                            _ => "NOTSET".into(),
                        };
                        if auto != "NOTSET" && auto != "VALID" {
                            return Err(format!(
                                "a spatial split needs explicit pads (auto_pad {auto})"
                            ));
                        }
                        // M[(c,i), (j,o)] = w[o, c, i, j].
                        let (rows, cols) = (c * kh, kw * o);
                        let mut m = vec![0f64; rows * cols];
                        for oo in 0..o {
                            for cc in 0..c {
                                for i in 0..kh {
                                    for j in 0..kw {
                                        m[(cc * kh + i) * cols + j * o + oo] =
                                            v[((oo * c + cc) * kh + i) * kw + j];
                                    }
                                }
                            }
                        }
                        (layer.k, layer.n, layer.w) = (rows, cols, m);
                        layer.kind = Kind::Spatial {
                            dims: [o, c, kh, kw],
                        };
                        // The first Conv's output: the height of y, the width of x.
                        let x = shape(0);
                        layer.positions = match (&out, x) {
                            (Some(y), Some(x)) if y.len() == 4 && x.len() == 4 => {
                                Some((y[0] * y[2] * y[3], y[0] * y[2] * x[3]))
                            }
                            _ => None,
                        };
                    }
                }
            }
            other => return Err(format!("{other} is not split")),
        }
        if layer.max_saving_rank().is_none() {
            return Err(if self.min_saving > 0.0 {
                format!(
                    "no rank saves min_saving {} of its weights or MACs ({}×{})",
                    self.min_saving, layer.k, layer.n
                )
            } else {
                format!(
                    "no rank saves anything ({}×{}: r·(K+N) ≥ K·N already at r = 1)",
                    layer.k, layer.n
                )
            });
        }
        Ok(layer)
    }

    /// The (whitened) SVD of one layer.
    fn spectrum(
        &self,
        layer: &Layer,
        gram: Option<&whiten::LayerGram>,
        data_aware: bool,
        report: &mut PassReport,
    ) -> Result<Spectrum, PassError> {
        let whitening = match gram {
            Some(h) => match whiten::whitening(h, layer.k, self.damping) {
                Some(w) => Some(w),
                None => {
                    report.warnings.push(format!(
                        "{}: its input second moments are not positive definite even after damping; split data-free",
                        layer.label
                    ));
                    None
                }
            },
            None => {
                if data_aware {
                    report.warnings.push(format!(
                        "{}: no input second moments ({}); split data-free",
                        layer.label,
                        match layer.kind {
                            Kind::Spatial { .. } => "spatial split".into(),
                            Kind::Gemm { trans_a: true, .. } => "Gemm with transA".into(),
                            _ if layer.k > whiten::MAX_ROW => format!(
                                "its input rows are {} long, above the {} the moments gather",
                                layer.k,
                                whiten::MAX_ROW
                            ),
                            _ => "input not observed".into(),
                        }
                    ));
                }
                None
            }
        };
        let m = match &whitening {
            Some(w) => w.whiten(&layer.w, layer.n),
            None => layer.w.clone(),
        };
        let total: f64 = m.iter().map(|v| v * v).sum();
        let fixed = match layer.rule {
            RankRule::Rank(r) => Some(self.rounded(r, layer)),
            RankRule::Ratio(f) => Some(ratio_rank(layer, f, self.round_to)),
            _ => None,
        };
        let small = layer.k.min(layer.n);
        let randomized = match (self.svd, fixed) {
            (SvdMethod::Exact, _) | (_, None) => None,
            (SvdMethod::Randomized, Some(r)) => Some(r),
            (SvdMethod::Auto, Some(r)) => (4 * (r + 10) <= small).then_some(r),
        };
        let svd = match randomized {
            Some(r) => linalg::truncated_svd(&m, layer.k, layer.n, r, 2),
            None => linalg::svd(&m, layer.k, layer.n),
        }
        .ok_or_else(|| PassError::Node {
            node: layer.label.clone(),
            message: "the SVD of its weight did not converge (non-finite values?)".into(),
        })?;
        Ok(Spectrum {
            svd,
            total,
            whitening,
        })
    }

    /// `r` rounded up to `round_to`, at most min(K, N).
    fn rounded(&self, r: usize, layer: &Layer) -> usize {
        r.div_ceil(self.round_to)
            .saturating_mul(self.round_to)
            .min(layer.k.min(layer.n))
            .max(1)
    }

    /// The rank of every layer (`None`: kept), by its rule or the global
    /// target, and the measured sensitivities of the target's layers.
    fn choose_ranks(
        &self,
        model: &Model,
        ctx: &PassContext,
        layers: &[Layer],
        spectra: &[Spectrum],
        samples: Option<&[crate::data::Sample]>,
        report: &mut PassReport,
    ) -> Result<(Vec<Option<usize>>, Gains), PassError> {
        let mut ranks: Vec<Option<usize>> = layers
            .iter()
            .zip(spectra)
            .map(|(l, s)| match l.rule {
                RankRule::Rank(r) => Some(self.rounded(r, l)),
                RankRule::Ratio(f) => Some(ratio_rank(l, f, self.round_to)),
                RankRule::Energy(e) => Some(self.rounded(energy_rank(s, e), l)),
                RankRule::Global => None,
            })
            .collect();
        let global: Vec<usize> = (0..layers.len())
            .filter(|&i| layers[i].rule == RankRule::Global)
            .collect();
        let mut measured: Gains = None;
        if let (Some(t), false) = (&self.target, global.is_empty()) {
            let threads = ctx.threads.unwrap_or_else(crate::exec::default_threads);
            let dir = ctx.model_dir.as_deref();
            let samples = samples.unwrap_or_default();
            let measuring = self.measures_sensitivity(ctx);
            // The unchanged model's outputs: what the sensitivities (on the
            // first few samples) and the min_sqnr_db search measure against.
            let few = samples.len().min(sensitivity::SAMPLES);
            let reference = if t.min_sqnr_db.is_some() {
                measure::run("original model", model, samples, dir, threads, true)?
            } else if measuring {
                measure::run("original model", model, &samples[..few], dir, threads, true)?
            } else {
                Vec::new()
            };
            let probe = sensitivity::Probe {
                model,
                layers,
                spectra,
                which: &global,
                samples: &samples[..few],
                reference: &reference[..few.min(reference.len())],
                dir,
                threads,
            };
            let gains: Vec<f64> = if measuring {
                let g = probe.gains()?;
                report.count("sensitivity_runs", sensitivity::runs(&g) as i64);
                let v = g.iter().map(|g| g.gain).collect();
                measured = Some((global.clone(), g));
                v
            } else {
                vec![1.0; global.len()]
            };
            let alloc = |fraction: f64, by_macs: bool| {
                allocate(
                    layers,
                    spectra,
                    &global,
                    &gains,
                    fraction,
                    by_macs,
                    self.round_to,
                )
            };
            let by_fraction = |f: f64, by_macs: bool, report: &mut PassReport| {
                if !measuring {
                    let a = alloc(f, by_macs);
                    target_line(report, if by_macs { "macs" } else { "params" }, f, &a);
                    return Ok(a.ranks);
                }
                probe.best_allocation(&gains, f, by_macs, self.round_to, report)
            };
            let chosen = if let Some(f) = t.params {
                by_fraction(f, false, report)?
            } else if let Some(f) = t.macs {
                if let Some(l) = global
                    .iter()
                    .map(|&i| &layers[i])
                    .find(|l| l.positions.is_none())
                {
                    return Err(PassError::Node {
                        node: l.label.clone(),
                        message: "target.macs needs its output shape, which is not known; pin symbolic dims or use target.params".into(),
                    });
                }
                by_fraction(f, true, report)?
            } else {
                let min_db = t.min_sqnr_db.unwrap_or_default();
                whiten::search_sqnr(
                    model,
                    dir,
                    threads,
                    layers,
                    spectra,
                    samples,
                    &reference,
                    min_db,
                    &|f| alloc(f, false).ranks,
                    report,
                )?
            };
            for (&i, r) in global.iter().zip(chosen) {
                ranks[i] = r;
            }
        }
        Ok((ranks, measured))
    }
}

/// The global target's layers (indices into the candidates) and their
/// measured sensitivities, when measured.
type Gains = Option<(Vec<usize>, Vec<sensitivity::Gain>)>;

fn target_line(report: &mut PassReport, what: &str, f: f64, a: &Allocation) {
    let reached = a.after as f64 / a.before.max(1) as f64;
    report.summary.push(format!(
        "target {what} {:.1}%: reached {:.1}% ({} → {}){}",
        f * 100.0,
        reached * 100.0,
        a.before,
        a.after,
        if a.reached {
            String::new()
        } else {
            format!(
                "; not reachable: every layer at its smallest rank leaves {:.1}%",
                reached * 100.0
            )
        }
    ));
    if !a.reached {
        report.warnings.push(format!(
            "target.{what} {f} not reached: the smallest ranks keep {reached:.4} of the {what}"
        ));
    }
}

/// The smallest rank keeping `energy` of `Σσ²`.
fn energy_rank(s: &Spectrum, energy: f64) -> usize {
    let want = energy * s.total;
    let mut acc = 0.0;
    for (i, v) in s.svd.s.iter().enumerate() {
        acc += v * v;
        // A relative tolerance: f64 sums of f32 weights are not exact.
        if acc >= want * (1.0 - 1e-12) {
            return i + 1;
        }
    }
    s.svd.k()
}

/// The largest rank whose split keeps at most `f` of the layer's weights
/// (multiple of `round_to` when that still fits; at least 1).
fn ratio_rank(l: &Layer, f: f64, round_to: usize) -> usize {
    let budget = f * l.params_before() as f64;
    let per = (l.k + l.n) as f64;
    let r = ((budget / per).floor() as usize).max(1).min(l.k.min(l.n));
    let down = r / round_to * round_to;
    if down >= 1 {
        down
    } else {
        r
    }
}

/// The result of the global greedy allocation.
pub(crate) struct Allocation {
    ranks: Vec<Option<usize>>,
    before: u64,
    after: u64,
    reached: bool,
}

/// A layer's weights (or MACs) unsplit (`None`) or split at rank `r`.
fn cost(l: &Layer, r: Option<usize>, by_macs: bool) -> u64 {
    match (by_macs, r) {
        (false, None) => l.params_before(),
        (false, Some(r)) => l.params_after(r),
        (true, None) => l.macs_before().unwrap_or(0),
        (true, Some(r)) => l.macs_after(r).unwrap_or(0),
    }
}

/// Greedy allocation over the layers `which`: starting unsplit, repeatedly
/// take the step (first: unsplit → the largest saving rank; then: one
/// `round_to` block of singular values fewer) with the least predicted
/// model output error per parameter (or MAC) saved, until the candidates'
/// total falls to `fraction` of what it was. A step's error is the layer's
/// relative error it adds (the dropped `σ²` over `Σσ²`) times the layer's
/// `gains` entry (the same order as `which`; all 1: the layers' own errors).
/// Layers outside `which` count unchanged.
fn allocate(
    layers: &[Layer],
    spectra: &[Spectrum],
    which: &[usize],
    gains: &[f64],
    fraction: f64,
    by_macs: bool,
    round_to: usize,
) -> Allocation {
    let cost = |l: &Layer, r: Option<usize>| cost(l, r, by_macs);
    let before: u64 = layers.iter().map(|l| cost(l, None)).sum();
    let goal = (fraction * before as f64).floor() as u64;
    let mut ranks: Vec<Option<usize>> = vec![None; layers.len()];
    let mut total = before;
    // The next step of layer i: (new rank, error added, saving).
    let next = |i: usize, cur: Option<usize>| -> Option<(usize, f64, u64)> {
        let l = &layers[i];
        let s = &spectra[i];
        let new = match cur {
            None => {
                let r = l.max_saving_rank()?;
                // Stay on the round_to grid where possible.
                let g = r / round_to * round_to;
                if g >= 1 {
                    g
                } else {
                    r
                }
            }
            Some(r) if r > round_to => r - round_to,
            Some(r) if r > 1 && round_to == 1 => r - 1,
            _ => return None,
        };
        let err = s.dropped(new) - cur.map_or(0.0, |r| s.dropped(r));
        let saving = cost(l, cur).saturating_sub(cost(l, Some(new)));
        (saving > 0).then_some((new, err.max(0.0), saving))
    };
    while total > goal {
        let best = which
            .iter()
            .zip(gains)
            .filter_map(|(&i, &g)| next(i, ranks[i]).map(|(r, e, s)| (i, r, g * e / s as f64, s)))
            .min_by(|a, b| a.2.total_cmp(&b.2).then(a.0.cmp(&b.0)));
        let Some((i, r, _, saving)) = best else {
            break;
        };
        ranks[i] = Some(r);
        total -= saving;
    }
    Allocation {
        ranks: which.iter().map(|&i| ranks[i]).collect(),
        before,
        after: total,
        reached: total <= goal,
    }
}

/// A kept layer's report line.
fn keep(report: &mut PassReport, label: &str, why: &str, params: Option<u64>) {
    report.count("layers_kept", 1);
    report.details.push(serde_json::json!({
        "node": label,
        "split": false,
        "reason": why,
    }));
    if let Some(p) = params {
        report.count("params_before", p as i64);
        report.count("params_after", p as i64);
    }
}

fn transpose(v: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    let mut t = vec![0f64; v.len()];
    for i in 0..rows {
        for j in 0..cols {
            t[j * rows + i] = v[i * cols + j];
        }
    }
    t
}

/// The factors `A` (`K × r`) and `B` (`r × N`), f32, √σ on both sides (and
/// the inverse whitening folded into `A`).
fn factors(layer: &Layer, s: &Spectrum, r: usize) -> (Vec<f32>, Vec<f32>) {
    let (k, n, kk) = (layer.k, layer.n, s.svd.k());
    let root: Vec<f64> = s.svd.s.iter().take(r).map(|v| v.sqrt()).collect();
    let mut a = vec![0f64; k * r];
    for i in 0..k {
        for j in 0..r {
            a[i * r + j] = s.svd.u[i * kk + j] * root[j];
        }
    }
    if let Some(w) = &s.whitening {
        a = w.unwhiten(&a, r);
    }
    let mut b = vec![0f64; r * n];
    for i in 0..r {
        for j in 0..n {
            b[i * n + j] = s.svd.vt[i * n + j] * root[i];
        }
    }
    let f = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect();
    (f(a), f(b))
}

fn apply_all(
    model: &mut Model,
    layers: &[Layer],
    spectra: &[Spectrum],
    ranks: &[Option<usize>],
    grams: &BTreeMap<NodeId, whiten::LayerGram>,
    report: &mut PassReport,
) -> Result<(), PassError> {
    let mut rows: Vec<String> = Vec::new();
    let (mut pb, mut pa, mut mb, mut ma) = (0u64, 0u64, 0u64, 0u64);
    let mut macs_known = true;
    for ((layer, s), r) in layers.iter().zip(spectra).zip(ranks) {
        let before = layer.params_before();
        let macs0 = layer.macs_before();
        let split = r.filter(|&r| layer.saves(r));
        let Some(r) = split else {
            let why = match r {
                Some(r) if layer.min_saving > 0.0 => format!(
                    "rank {r} would not save min_saving {} (r·(K+N) = {} of K·N = {}, or of its MACs)",
                    layer.min_saving,
                    layer.params_after(*r),
                    before
                ),
                Some(r) => format!(
                    "rank {r} would not save (r·(K+N) = {} ≥ K·N = {} or MACs grow; break-even r < {:.1})",
                    layer.params_after(*r),
                    before,
                    (layer.k * layer.n) as f64 / (layer.k + layer.n) as f64
                ),
                None => "the global target needs no cut here".into(),
            };
            keep(report, &layer.label, &why, Some(before));
            pb += before;
            pa += before;
            match macs0 {
                Some(m) => {
                    mb += m;
                    ma += m;
                }
                None => macs_known = false,
            }
            continue;
        };
        let (a, b) = factors(layer, s, r);
        let calib_db = grams
            .get(&layer.node)
            .filter(|_| s.whitening.is_some())
            .map(|h| whiten::calib_sqnr_db(h, layer, &a, &b, r));
        let predicted = -10.0 * s.dropped(r).max(1e-30).log10();
        let energy = 1.0 - s.dropped(r);
        rewrite(&mut model.graph, layer, r, &a, &b)?;
        let after = layer.params_after(r);
        let macs1 = layer.macs_after(r);
        report.count("layers_split", 1);
        report.count("nodes_added", 1);
        report.count("params_before", before as i64);
        report.count("params_after", after as i64);
        pb += before;
        pa += after;
        match (macs0, macs1) {
            (Some(x), Some(y)) => {
                mb += x;
                ma += y;
            }
            _ => macs_known = false,
        }
        let mut d = serde_json::json!({
            "node": layer.label,
            "split": true,
            "kind": match layer.kind {
                Kind::MatMul => "matmul",
                Kind::Gemm { .. } => "gemm",
                Kind::Channel { .. } => "conv-channel",
                Kind::Spatial { .. } => "conv-spatial",
            },
            "shape": format!("{}x{}", layer.k, layer.n),
            "rank": r,
            "energy_kept": crate::exec::metrics::Num(energy),
            "whitened": s.whitening.is_some(),
            "predicted_sqnr_db": crate::exec::metrics::Num(predicted),
            "params": [before, after],
            "macs": [macs0, macs1],
        });
        if let Some(w) = &s.whitening {
            d["damping"] = serde_json::json!(crate::exec::metrics::Num(w.damping));
        }
        if let Some(m) = calib_db {
            d["calib_sqnr_db"] = serde_json::json!(crate::exec::metrics::Num(m));
        }
        report.details.push(d);
        rows.push(format!(
            "{:<40} {:>9} {:>5} {:>8.4} {:>8.1} {:>8} {:>10} → {:<10} {}",
            truncate_label(&layer.label),
            format!("{}x{}", layer.k, layer.n),
            r,
            energy,
            predicted,
            calib_db.map_or("-".into(), |m| format!("{m:.1}")),
            before,
            after,
            match (macs0, macs1) {
                (Some(x), Some(y)) => format!("{x} → {y}"),
                _ => "? (shapes unknown)".into(),
            }
        ));
    }
    if !rows.is_empty() {
        let mut t = format!(
            "{:<40} {:>9} {:>5} {:>8} {:>8} {:>8} {:>23} macs\n",
            "layer", "KxN", "rank", "energy", "pred dB", "calib dB", "params"
        );
        for r in rows {
            t.push_str(&r);
            t.push('\n');
        }
        t.push_str(&format!(
            "total params {pb} → {pa} ({:.1}%), macs {}",
            100.0 * pa as f64 / pb.max(1) as f64,
            if macs_known {
                format!("{mb} → {ma} ({:.1}%)", 100.0 * ma as f64 / mb.max(1) as f64)
            } else {
                "unknown (some shapes unknown)".into()
            }
        ));
        report.summary.push(t);
    }
    Ok(())
}

fn truncate_label(s: &str) -> String {
    if s.chars().count() <= 40 {
        s.to_string()
    } else {
        let tail: String = s
            .chars()
            .rev()
            .take(39)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        format!("…{tail}")
    }
}

/// Writes the two factors: the node becomes the second factor (keeping its
/// name, output and place) and the first factor is inserted before it.
fn rewrite(g: &mut Graph, layer: &Layer, r: usize, a: &[f32], b: &[f32]) -> Result<(), PassError> {
    let node = g.node(layer.node).clone();
    let (k, n) = (layer.k, layer.n);
    let first_w = g.unique_name(&format!("{}.lr_a", layer.weight));
    let second_w = g.unique_name(&format!("{}.lr_b", layer.weight));
    let mid = g.unique_name(&format!(
        "{}.lr_t",
        node.outputs.first().map_or("", String::as_str)
    ));
    let first_name = format!("{}.lr_a", node.name());
    let mut first = Node::with_io(
        node.op_type(),
        &first_name,
        &[node.inputs[0].as_str(), &first_w],
        &[&mid],
    );
    let (wa, wb): (Tensor, Tensor);
    let mut second = node.clone();
    second.inputs[0] = mid.clone();
    second.inputs[1] = second_w.clone();
    match &layer.kind {
        Kind::MatMul => {
            wa = Tensor::from_f32(&first_w, vec![k as i64, r as i64], a);
            wb = Tensor::from_f32(&second_w, vec![r as i64, n as i64], b);
        }
        Kind::Gemm { trans_a, alpha } => {
            wa = Tensor::from_f32(&first_w, vec![k as i64, r as i64], a);
            wb = Tensor::from_f32(&second_w, vec![r as i64, n as i64], b);
            if *trans_a {
                first.set_attr(Attribute::int("transA", 1));
            }
            if *alpha != 1.0 {
                first.set_attr(Attribute::float("alpha", *alpha));
            }
            second
                .attributes
                .retain(|x| !matches!(x.name(), "transA" | "transB" | "alpha"));
            // β folds into a constant C (onnxruntime's integer Gemm wants β = 1).
            let beta = node.attr_float("beta").unwrap_or(1.0);
            let c = node.inputs.get(2).filter(|c| !c.is_empty());
            if let Some(ct) = c
                .and_then(|c| g.initializer(c))
                .filter(|t| t.dtype() == DataType::Float)
            {
                if beta != 1.0 && !g.is_input(ct.name()) {
                    let scaled: Vec<f32> = ct.to_f32()?.iter().map(|v| v * beta).collect();
                    let name = g.unique_name(&format!("{}.lr_beta", ct.name()));
                    let t = Tensor::from_f32(&name, ct.dims.clone(), &scaled);
                    g.add_initializer(t);
                    second.inputs[2] = name;
                    second.attributes.retain(|x| x.name() != "beta");
                }
            }
        }
        Kind::Channel { dims } => {
            // First: r filters over the same patches: [r, C, k…] = Aᵀ.
            let mut fd = dims.iter().map(|&d| d as i64).collect::<Vec<_>>();
            fd[0] = r as i64;
            wa = Tensor::from_f32(&first_w, fd, &transpose_f32(a, k, r));
            // Second: 1×1 with [O, r, 1…] = Bᵀ.
            let mut sd = vec![n as i64, r as i64];
            sd.extend(std::iter::repeat_n(1, dims.len() - 2));
            wb = Tensor::from_f32(&second_w, sd, &transpose_f32(b, r, n));
            first.attributes = node
                .attributes
                .iter()
                .filter(|x| x.name() != "group")
                .cloned()
                .collect();
            second.attributes = vec![Attribute::ints("kernel_shape", vec![1; dims.len() - 2])];
        }
        Kind::Spatial { dims } => {
            let [o, c, kh, kw] = *dims;
            // v[k, c, i, 0] = A[(c,i), k].
            wa = Tensor::from_f32(
                &first_w,
                vec![r as i64, c as i64, kh as i64, 1],
                &transpose_f32(a, c * kh, r),
            );
            // h[o, k, 0, j] = B[k, (j, o)].
            let mut hv = vec![0f32; o * r * kw];
            for kk in 0..r {
                for j in 0..kw {
                    for oo in 0..o {
                        hv[(oo * r + kk) * kw + j] = b[kk * (kw * o) + j * o + oo];
                    }
                }
            }
            wb = Tensor::from_f32(&second_w, vec![o as i64, r as i64, 1, kw as i64], &hv);
            let two = |name: &str, default: i64| -> [i64; 2] {
                match node.attr_ints(name) {
                    Some([a, b]) => [*a, *b],
                    _ => [default, default],
                }
            };
            let [sh, sw] = two("strides", 1);
            let [dh, dw] = two("dilations", 1);
            let [pt, pl, pbm, pr] = match node.attr_ints("pads") {
                Some([a, b, c, d]) => [*a, *b, *c, *d],
                _ => [0; 4],
            };
            first.attributes = vec![
                Attribute::ints("kernel_shape", vec![kh as i64, 1]),
                Attribute::ints("strides", vec![sh, 1]),
                Attribute::ints("dilations", vec![dh, 1]),
                Attribute::ints("pads", vec![pt, 0, pbm, 0]),
            ];
            second.attributes = vec![
                Attribute::ints("kernel_shape", vec![1, kw as i64]),
                Attribute::ints("strides", vec![1, sw]),
                Attribute::ints("dilations", vec![1, dw]),
                Attribute::ints("pads", vec![0, pl, 0, pr]),
            ];
        }
    }
    g.add_initializer(wa);
    g.add_initializer(wb);
    g.update_node(layer.node, |nd| *nd = second);
    g.insert_node_before(layer.node, first);
    if g.uses(&layer.weight).is_empty() && !g.is_output(&layer.weight) {
        g.remove_initializer(&layer.weight);
    }
    Ok(())
}

fn transpose_f32(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; v.len()];
    for i in 0..rows {
        for j in 0..cols {
            t[j * rows + i] = v[i * cols + j];
        }
    }
    t
}

#[cfg(test)]
mod tests;
