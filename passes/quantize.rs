//! `quantize`: int8 quantization in QDQ form, with calibration.
//!
//! ```text
//! before:  x ─ Conv(W, b) ─ y ─ Relu ─ r ─ MaxPool ─ m ─ Gemm(V, c) ─ logits
//!
//! after:   x ─ Q ─ DQ ─ Conv(DQ(W_i8), DQ(b_i32)) ─ r ─ Q ─ DQ ─ MaxPool ─ m ─ Q ─ DQ ─ Gemm(DQ(V_i8), DQ(c_i32)) ─ Q ─ DQ ─ logits
//!          (Relu folded into r's range; m shares r's scale and zero point)
//! ```
//!
//! What it does, in one streamed pass over the calibration data:
//! 0. **Fold** every BatchNormalization into the Conv/ConvTranspose/Gemm
//!    before it (`fold_batchnorm`, default on; as the `fold-batchnorm` pass),
//!    then **equalize** the channels of compute-op inputs from one pass over
//!    the data (`equalize`, default on; exact in float; see `equalize.rs`).
//! 1. **Plan** from the graph alone: Conv, ConvTranspose, Gemm and MatMul get
//!    their activation inputs and output quantized; data-movement ops
//!    (Reshape, Transpose, Squeeze, Unsqueeze, Flatten, Slice, MaxPool, ...)
//!    whose input is quantized pass its scale on; a Relu or Clip(0, m) that
//!    alone reads a compute op's output folds into that output's range when
//!    the grid maps 0 to its lowest integer (asymmetric activations), which is
//!    exact; element-wise ops (Add, Mul, Concat, ...) are quantized when listed
//!    in `ops`.
//! 2. **Calibrate**: tract runs the model once per sample with every planned
//!    tensor as an extra output, on all threads; each tensor keeps streaming
//!    statistics (min/max and, for the histogram methods, a histogram of
//!    `|x|`), never the activations. Without `--data`, seeded synthetic
//!    inputs are used and the report warns.
//! 3. **Ranges**: `mse` (default), `minmax`, `percentile` or `entropy` (KL)
//!    picks each tensor's range; overrides replace it. Scale and zero point follow
//!    QuantizeLinear: asymmetric `s = (hi − lo)/(qmax − qmin)`,
//!    `zp = round(qmin − lo/s)`; symmetric `s = 2·max(|lo|, |hi|)/(qmax − qmin)`.
//! 4. **Rewrite**: weights become int8 initializers behind a DequantizeLinear
//!    (per channel on the output-channel axis: Conv 0, ConvTranspose 1, Gemm
//!    0 or 1 per `transB`, MatMul the last; symmetric, zero point 0); biases
//!    of Conv/ConvTranspose/Gemm become int32 with scale `s_x · s_w[c]`;
//!    every planned activation gets one QuantizeLinear/DequantizeLinear pair
//!    shared by its consumers (or one per consumer with `dedicated_pairs`).
//!    Options: `weights.range: mse` clips each weight channel where that
//!    lowers its squared error; `bias_correction` removes the mean output
//!    shift weight rounding causes (see `correction.rs`).
//!
//! With `activations.scaling: dynamic` (or the nodes `activations.dynamic_nodes`
//! names), a Conv, MatMul or Gemm (no transA, alpha = beta = 1) with a
//! constant weight takes its input's scale from each run instead: `x ─
//! DynamicQuantizeLinear ─ ConvInteger(x_u8, W_i8) ─ Cast ─ × s_x·s_w[c] ─ + b
//! ─ y`, output and bias float; a MatMul of two activations (attention's
//! scores and context) gets both inputs scaled per run, so a transformer is
//! int8 in every MatMul with no static pair (see `dynamic.rs`).
//! For inputs whose level varies from run to run, where one calibrated scale
//! rounds quiet runs to a few levels.
//!
//! Graph inputs and outputs keep their float types: an output produced by a
//! quantized op is produced by its DequantizeLinear. The default-domain
//! opset is raised to what the emitted ops need (13 for per-channel scales,
//! 11 for DynamicQuantizeLinear, 10 otherwise) when no op of the model
//! changed meaning in between; else the pass stops and names the op. Subgraphs (If/Loop bodies) are left float.
//!
//! Before planning, Constant nodes holding tensors become initializers (so
//! weights exported that way are quantized as weights), and after
//! calibration an opset below 13 is raised where that is exact (an
//! `axes`/`split` attribute becomes an input; a last-axis Softmax is unchanged).
//!
//! With `target` (or `sensitivity: true`), every quantized compute node is
//! measured against the float model with variant models in tract (only it
//! quantized; everything but it quantized), ranked, and the fewest
//! top-ranked nodes stay float until the target holds on the calibration
//! data (see `sensitivity.rs`); the report gives the int8 share of MACs.
//! The written model (after bias correction, equalization, folding) is then
//! run on every calibration sample as `whittle validate` runs it, against
//! the pass's input model; if it misses, more ranked nodes stay float until
//! it holds, and the target line gives that figure and names the samples.
//! `target.folds` (default 4) cross-validates the search itself: each fold
//! is scored by the choice a search made without it, and that estimate must
//! meet the target too (see `measure::validated_search`); `target.refit`
//! also calibrates the choice again without each fold (`crossval.rs`).
//! `target.holdout` keeps the last samples out of calibration and the search
//! and requires the target on them too.
//!
//! Profiles: `onnxruntime` (the defaults: uint8 asymmetric activations, int8
//! symmetric per-channel weights, int32 biases, shared pairs) and `tensorrt`
//! (int8 symmetric everywhere so every zero point is 0, a pair per consumer,
//! biases left float).
//!
//! Exactness: not exact by nature; every value is rounded to its grid. The
//! report lists each tensor's range, scale and zero point, every node's
//! outcome, and the initializer bytes before and after.

mod correction;
mod crossval;
mod dynamic;
mod equalize;
mod gptq;
mod plan;
mod qdq;
mod ranges;
mod sensitivity;

use std::collections::{BTreeMap, BTreeSet};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::measure;
use super::select::{self, Matchers, NodeMatch, Selection};
use super::{
    calib, parse_config, Config, ConfigError, Pass, PassContext, PassError, PassInfo, PassReport,
};
use crate::ir::{DataType, Graph, Model};
use plan::{Plan, RangeSource, Role};
use qdq::TensorParams;
use ranges::{Grid, RangeMethod, Ranges};

/// Registry entry.
pub const INFO: PassInfo = PassInfo {
    name: "quantize",
    summary:
        "int8 quantization: QDQ pairs with calibrated ranges (or per-run input scales), int8 weights, int32 biases",
    doc: include_str!("quantize.rs"),
    schema: super::schema_of::<Quantize>,
    build: |o| Ok(Box::new(parse_config::<Quantize>(o)?)),
};

/// Options of `quantize`.
#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Quantize {
    /// Preset defaults: `onnxruntime` (uint8 asymmetric activations, int8
    /// symmetric per-channel weights, int32 biases, one pair per tensor) or
    /// `tensorrt` (int8 symmetric activations and weights, every zero point 0,
    /// one pair per consumer, float biases). Options set explicitly win.
    pub profile: Profile,
    /// How activation ranges are measured.
    pub calibration: Calibration,
    /// How constant weights are stored.
    pub weights: Weights,
    /// How activations are quantized.
    pub activations: Activations,
    /// Store Conv/ConvTranspose/Gemm biases as int32 with scale = input scale
    /// × weight scale (default: true; false under `profile: tensorrt`).
    pub int32_bias: Option<bool>,
    /// Op types to quantize. Conv, ConvTranspose, Gemm and MatMul are the
    /// compute ops; data-movement ops follow a quantized input; Relu/Clip fold
    /// into the op before them; Add, Mul, Concat, pooling etc. may be added.
    pub ops: Vec<String>,
    /// Quantize only these nodes (compute and element-wise ops; data-movement
    /// ops still follow their input): exact names or `{ regex: "..." }`.
    pub include_nodes: Vec<NodeMatch>,
    /// Never quantize these nodes: exact names or `{ regex: "..." }`.
    pub exclude_nodes: Vec<NodeMatch>,
    /// One QuantizeLinear/DequantizeLinear pair per consumer instead of one
    /// per tensor (default: false; true under `profile: tensorrt`).
    pub dedicated_pairs: Option<bool>,
    /// Fold a Relu or Clip(0, m) into the range of the op before it, where
    /// that is exact (asymmetric activation grid).
    pub fold_activations: bool,
    /// Where pairs go: `all` (every quantized op's inputs and output, what
    /// onnxruntime needs to fuse a Conv into QLinearConv) or `inputs` (only
    /// the inputs of quantized ops and what data-movement ops between them
    /// need; a compute op's output stays float unless a quantized op reads
    /// it: less rounding, but onnxruntime runs such a Conv in float, while a
    /// MatMul still gets MatMulIntegerToFloat).
    pub placement: Placement,
    /// Quantize graph outputs produced by a quantized op (the output stays
    /// float, produced by a DequantizeLinear), so runtimes can fuse the last
    /// op into an integer kernel. false keeps those outputs unquantized.
    pub quantize_graph_outputs: bool,
    /// Per-tensor overrides, by activation tensor name: `dtype`, `symmetric`,
    /// a fixed `range: [lo, hi]`, or an exact `scale` (and `zero_point`).
    pub overrides: BTreeMap<String, TensorOverride>,
    /// Accuracy target: measure every quantized node's sensitivity, then keep
    /// the fewest, most sensitive nodes in float until the target is met on
    /// the calibration data.
    pub target: Option<Target>,
    /// Measure and report every node's sensitivity (implied by `target`).
    pub sensitivity: bool,
    /// Fold BatchNormalization into the Conv/ConvTranspose/Gemm before it
    /// first (what the `fold-batchnorm` pass does): an unfolded one stays
    /// float between two quantized tensors, and the per-tensor range of the
    /// Conv output before it crushes the channels it scales up.
    pub fold_batchnorm: bool,
    /// Bias correction: shift each Conv/Gemm bias by the mean output error
    /// its weight quantization causes, `Σ_i E[x_i] · Σ_k (W_q − W)[o, i, k]`,
    /// with the input channel means `E[x_i]` measured during calibration.
    pub bias_correction: bool,
    /// Channel equalization before calibration: divide each channel of a
    /// Conv/MatMul/Gemm activation input by `s_i = a_i^α / w_i^(1−α)` and
    /// multiply the weights reading it by `s_i`, absorbing `1/s_i` upstream
    /// (a Mul/Add constant, a Conv/MatMul/Gemm's output channel, through
    /// Relu and pooling): SmoothQuant, and cross-layer equalization for
    /// Conv chains. Exact in real numbers.
    pub equalize: bool,
    /// The α of `equalize` (0..1): how much of each channel's range moves
    /// into the weights.
    pub equalize_alpha: f64,
}

/// An accuracy target for the quantized model against the float one; every
/// given gate must hold for every output.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Target {
    /// Least signal-to-quantization-noise ratio, in dB.
    pub min_sqnr_db: Option<f64>,
    /// Least cosine similarity.
    pub min_cosine: Option<f64>,
    /// Least share of rows whose argmax agrees (class-score outputs), 0..1.
    pub min_top1: Option<f64>,
    /// Samples (the first ones of the data) each node's sensitivity is
    /// measured on; whether the target holds is checked on all the data.
    pub samples: usize,
    /// Fraction of the samples (the last ones, rounded; 0..1) kept out of
    /// calibration and the search, on which the written model must meet the
    /// target too: the report gives both figures. 0 (the default, chosen on
    /// the bench: holding out cost held-out SQNR and changed no verdict)
    /// calibrates and searches on every sample.
    pub holdout: f64,
    /// Folds of the cross-validated check (0 turns it off): the search runs
    /// again on each fold's complement and its choice is scored on the fold
    /// it did not see; those scores, pooled as `whittle validate` pools,
    /// less the margin the 95% lower bound took on all samples, must meet the
    /// target, else the SQNR asked of the samples is raised by the shortfall
    /// and the search runs again (at most 4 searches). The written model is
    /// still calibrated on every sample. Default 4, chosen on the bench.
    pub folds: usize,
    /// With `folds`, also calibrate the chosen configuration (float set,
    /// scaling, range methods, equalization, GPTQ) again on all folds but
    /// one and score it on the one left out, each fold in turn; pooled, that
    /// must meet the target too, else more nodes stay float. Off by default
    /// (on the bench it caught no miss and kept 29% of resnet_bench's MACs
    /// float for a model that met the target on unseen inputs by 5 dB).
    pub refit: bool,
}

impl Target {
    /// The accuracy thresholds.
    pub fn thresholds(&self) -> super::measure::Thresholds {
        super::measure::Thresholds {
            min_sqnr_db: self.min_sqnr_db,
            min_cosine: self.min_cosine,
            min_top1: self.min_top1,
        }
    }
}

impl Default for Target {
    fn default() -> Self {
        Target {
            min_sqnr_db: None,
            min_cosine: None,
            min_top1: None,
            samples: 8,
            holdout: 0.0,
            folds: crossval::DEFAULT_FOLDS,
            refit: false,
        }
    }
}

impl Default for Quantize {
    fn default() -> Self {
        Quantize {
            profile: Profile::Onnxruntime,
            calibration: Calibration::default(),
            weights: Weights::default(),
            activations: Activations::default(),
            int32_bias: None,
            ops: DEFAULT_OPS.iter().map(|s| s.to_string()).collect(),
            include_nodes: Vec::new(),
            exclude_nodes: Vec::new(),
            dedicated_pairs: None,
            fold_activations: true,
            placement: Placement::All,
            quantize_graph_outputs: true,
            overrides: BTreeMap::new(),
            target: None,
            sensitivity: false,
            fold_batchnorm: true,
            bias_correction: false,
            equalize: true,
            equalize_alpha: 0.5,
        }
    }
}

/// The default `ops`: compute ops and the data-movement and activation ops
/// around them.
const DEFAULT_OPS: &[&str] = &[
    "Conv",
    "ConvTranspose",
    "Gemm",
    "MatMul",
    "Relu",
    "Clip",
    "MaxPool",
    "Reshape",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
    "Flatten",
    "Slice",
];

/// Where QuantizeLinear/DequantizeLinear pairs go.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    /// Inputs and outputs of every quantized op.
    All,
    /// Inputs of quantized ops only.
    Inputs,
}

/// A preset of defaults.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// What onnxruntime's CPU integer kernels want.
    Onnxruntime,
    /// What TensorRT wants: symmetric int8, zero points 0, a pair per consumer.
    Tensorrt,
}

/// Calibration options.
#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Calibration {
    /// `minmax` (observed range), `percentile` (clip at `percentile` of |x|),
    /// `entropy` (KL-divergence threshold search) or `mse` (least squared
    /// quantization error).
    pub method: Method,
    /// The percentile of |x| kept by `method: percentile` (0 < p ≤ 100).
    pub percentile: f64,
    /// Use at most this many samples of the data (default: all).
    pub samples: Option<usize>,
    /// Histogram bins for percentile/entropy/mse (256 to 65536, even).
    pub bins: usize,
}

impl Default for Calibration {
    fn default() -> Self {
        Calibration {
            method: Method::Mse,
            percentile: 99.999,
            samples: None,
            bins: 2048,
        }
    }
}

/// A range method.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Observed min and max.
    Minmax,
    /// Percentile of |x|.
    Percentile,
    /// KL-divergence threshold.
    Entropy,
    /// Least expected squared error.
    Mse,
    /// Per tensor, whichever of the four gives the best output SQNR with
    /// every other tensor quantized by `mse` (measured on the first
    /// `target.samples` samples, default 8, in tract, one model per tensor
    /// and distinct range; ties go to the earlier of minmax, percentile,
    /// entropy, mse).
    Auto,
}

/// Weight options.
#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Weights {
    /// Integer type of constant weights.
    pub dtype: Dtype,
    /// One scale per output channel (else one per tensor).
    pub per_channel: bool,
    /// Symmetric range (zero point 0 for int8).
    pub symmetric: bool,
    /// Each channel's range: `minmax` (observed) or `mse` (the observed
    /// range shrunk by the factor in 1.00..0.50 with the least squared
    /// rounding-plus-clipping error).
    pub range: WeightRange,
    /// How weights are rounded to their levels: `nearest`, or `gptq` (each
    /// Conv/MatMul/Gemm row rounded in order, every rounding error pushed
    /// onto the row's weights not rounded yet, so that the error of the
    /// layer's output on the calibration inputs is least; one extra pass
    /// over the calibration samples gathers their second moments).
    pub rounding: WeightRounding,
    /// 7-bit weight levels (int8 −64..64, uint8 0..127), as onnxruntime's
    /// `reduce_range`. onnxruntime's U8S8 kernels on x86 CPUs without VNNI
    /// (AVX2, AVX-512F without VNNI) add each pair of uint8 × int8 products
    /// in 16 bits, which saturates with full-range weights and large
    /// activations; 7-bit weights cannot reach it. Costs about 6 dB of
    /// weight SQNR: use it when the deployment CPU lacks VNNI.
    pub reduce_range: bool,
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            dtype: Dtype::Int8,
            per_channel: true,
            symmetric: true,
            range: WeightRange::Minmax,
            rounding: WeightRounding::Nearest,
            reduce_range: false,
        }
    }
}

/// How a weight channel's range is chosen.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum WeightRange {
    /// The observed range.
    Minmax,
    /// The least squared error.
    Mse,
}

/// How weights are rounded.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum WeightRounding {
    /// Each weight to its nearest level.
    Nearest,
    /// Least output error on the calibration inputs (GPTQ).
    Gptq,
}

/// Activation options.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Activations {
    /// Integer type of activations (default: uint8; int8 under `profile: tensorrt`).
    #[schemars(extend("default" = null))]
    pub dtype: Option<Dtype>,
    /// Symmetric range, zero point in the middle of the grid (default: false;
    /// true under `profile: tensorrt`).
    pub symmetric: Option<bool>,
    /// `static` (scale and zero point fixed from calibration) or `dynamic`:
    /// every Conv and MatMul with a constant weight gets its input's scale
    /// from each run's own range (DynamicQuantizeLinear, uint8) and runs as
    /// ConvInteger/MatMulInteger with a float bias added after; its output
    /// stays float. For inputs whose level changes from run to run (audio,
    /// quiet and loud) a fixed scale cannot serve. A Gemm without transA,
    /// alpha or beta runs as MatMulInteger too; a MatMul of two activations
    /// gets both inputs scaled per run (MatMulInteger of two uint8);
    /// ConvTranspose has no such kernel and stays static. `auto` measures
    /// both per node and keeps the better one. Needs symmetric weights.
    /// Default: `static`, except for a `target` search on a MatMul-heavy
    /// model (at least half of the Conv/MatMul/Gemm MACs in MatMul and
    /// Gemm), which starts from `dynamic` (measured on the bench's trained
    /// transformers: more accurate and faster on onnxruntime there).
    #[schemars(extend("default" = null))]
    pub scaling: Option<Scaling>,
    /// Compute nodes scaled dynamically even when `scaling` is static:
    /// exact names or `{ regex: "..." }`.
    pub dynamic_nodes: Vec<NodeMatch>,
}

/// How an activation input gets its scale.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Scaling {
    /// From calibration, fixed in the model.
    #[default]
    Static,
    /// From each run's values.
    Dynamic,
    /// Per node, whichever of the two gives the better output SQNR with only
    /// that node quantized (measured in tract on the first `target.samples`
    /// samples; ties go to static).
    Auto,
}

/// An 8-bit integer type.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    /// 0..255.
    Uint8,
    /// -128..127.
    Int8,
}

/// An override of one activation tensor's quantization.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TensorOverride {
    /// Integer type for this tensor.
    #[serde(default)]
    pub dtype: Option<Dtype>,
    /// Symmetric range for this tensor.
    #[serde(default)]
    pub symmetric: Option<bool>,
    /// Use this range instead of the calibrated one.
    #[serde(default)]
    pub range: Option<[f64; 2]>,
    /// Use exactly this scale (with `zero_point`, default the grid's middle
    /// for symmetric tensors, else its lowest value).
    #[serde(default)]
    pub scale: Option<f64>,
    /// Zero point with `scale`.
    #[serde(default)]
    pub zero_point: Option<i64>,
}

fn config_error(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        message: message.into(),
    }
}

impl Config for Quantize {
    fn check(&self) -> Result<(), ConfigError> {
        if !(0.0..=1.0).contains(&self.equalize_alpha) {
            return Err(config_error(
                "equalize_alpha",
                format!("{} is outside 0..1", self.equalize_alpha),
            ));
        }
        let known: Vec<&str> = plan::OPS.iter().map(|(o, _)| *o).collect();
        select::check_ops(&self.ops, &known, "ops", "quantize")?;
        if !self
            .ops
            .iter()
            .any(|o| plan::role(o) == Some(Role::Compute))
            && !self
                .ops
                .iter()
                .any(|o| plan::role(o) == Some(Role::Generic))
        {
            return Err(config_error(
                "ops",
                "lists no op that starts quantization (Conv, ConvTranspose, Gemm, MatMul, or an element-wise op)",
            ));
        }
        let c = &self.calibration;
        if !(c.percentile > 0.0 && c.percentile <= 100.0) {
            return Err(config_error(
                "calibration.percentile",
                format!("{} is not in (0, 100]", c.percentile),
            ));
        }
        if !(256..=65536).contains(&c.bins) || c.bins % 2 != 0 {
            return Err(config_error(
                "calibration.bins",
                format!("{} is not an even number from 256 to 65536", c.bins),
            ));
        }
        if c.samples == Some(0) {
            return Err(config_error("calibration.samples", "must be at least 1"));
        }
        for (list, field) in self.node_lists() {
            select::check_patterns(list, field)?;
        }
        for (name, o) in &self.overrides {
            let field = |f: &str| format!("overrides.{name}.{f}");
            if o.range.is_some() && o.scale.is_some() {
                return Err(config_error(
                    field("range"),
                    "give either `range` or `scale`, not both",
                ));
            }
            if let Some([lo, hi]) = o.range {
                if !(lo.is_finite() && hi.is_finite() && lo <= hi) {
                    return Err(config_error(
                        field("range"),
                        format!("[{lo}, {hi}] is not a range"),
                    ));
                }
            }
            if let Some(s) = o.scale {
                if !(s.is_finite() && s > 0.0) {
                    return Err(config_error(
                        field("scale"),
                        format!("{s} is not a positive scale"),
                    ));
                }
            }
            if o.zero_point.is_some() && o.scale.is_none() {
                return Err(config_error(
                    field("zero_point"),
                    "a zero point needs a `scale`",
                ));
            }
        }
        if let Some(t) = &self.target {
            t.thresholds().check("target")?;
            if t.samples == 0 {
                return Err(config_error("target.samples", "must be at least 1"));
            }
            if !(0.0..1.0).contains(&t.holdout) {
                return Err(config_error(
                    "target.holdout",
                    format!("{} is not a fraction in [0, 1)", t.holdout),
                ));
            }
            if t.refit && t.folds < 2 {
                return Err(config_error(
                    "target.refit",
                    "needs `folds` of at least 2 (the samples are calibrated on all folds but one)",
                ));
            }
            if t.folds == 1 {
                return Err(config_error(
                    "target.folds",
                    "1 fold leaves nothing to calibrate on: give 0 (off) or at least 2",
                ));
            }
        }
        let s = self.settings();
        let dynamic = self
            .activations
            .scaling
            .is_some_and(|v| v != Scaling::Static)
            || !self.activations.dynamic_nodes.is_empty();
        if dynamic && !s.w_symmetric {
            return Err(config_error(
                "weights.symmetric",
                "dynamic activation scaling needs symmetric weights (ConvInteger and MatMulInteger take one weight zero point)",
            ));
        }
        if dynamic && self.profile == Profile::Tensorrt {
            return Err(config_error(
                "activations.scaling",
                "profile tensorrt has no dynamic scaling (TensorRT wants static Q/DQ pairs)",
            ));
        }
        if self.profile == Profile::Tensorrt {
            if s.act != QType::Int8 || !s.act_symmetric {
                return Err(config_error(
                    "activations",
                    "profile tensorrt needs symmetric int8 activations (every zero point 0)",
                ));
            }
            if s.weights != QType::Int8 || !s.w_symmetric {
                return Err(config_error(
                    "weights",
                    "profile tensorrt needs symmetric int8 weights",
                ));
            }
        }
        Ok(())
    }
}

/// An integer type the pass emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QType {
    /// uint8.
    Uint8,
    /// int8.
    Int8,
    /// int32 (biases).
    Int32,
}

impl From<Dtype> for QType {
    fn from(d: Dtype) -> QType {
        match d {
            Dtype::Uint8 => QType::Uint8,
            Dtype::Int8 => QType::Int8,
        }
    }
}

impl QType {
    /// The ONNX element type.
    pub fn data_type(self) -> DataType {
        match self {
            QType::Uint8 => DataType::Uint8,
            QType::Int8 => DataType::Int8,
            QType::Int32 => DataType::Int32,
        }
    }

    /// The type's own limits.
    pub fn limits(self) -> (i64, i64) {
        match self {
            QType::Uint8 => (0, 255),
            QType::Int8 => (-128, 127),
            QType::Int32 => (i64::from(i32::MIN), i64::from(i32::MAX)),
        }
    }

    /// Little-endian bytes of `v` (already in range).
    pub fn bytes(self, v: i64) -> Vec<u8> {
        match self {
            QType::Uint8 => vec![v as u8],
            QType::Int8 => vec![v as i8 as u8],
            QType::Int32 => (v as i32).to_le_bytes().to_vec(),
        }
    }

    /// The one byte of an 8-bit value.
    pub fn byte(self, v: i64) -> u8 {
        self.bytes(v)[0]
    }

    /// The value of the one byte of an 8-bit value.
    pub fn value(self, b: u8) -> i64 {
        match self {
            QType::Int8 => i64::from(b as i8),
            _ => i64::from(b),
        }
    }

    /// The grid values are mapped to: symmetric grids are narrow (int8
    /// −127..127, as onnxruntime and TensorRT use) so that zero sits in the middle.
    pub fn grid(self, symmetric: bool) -> Grid {
        let (qmin, qmax) = match (self, symmetric) {
            (QType::Int8, true) => (-127, 127),
            (t, _) => t.limits(),
        };
        Grid {
            qmin,
            qmax,
            symmetric,
        }
    }

    /// The grid of constant weights: [`QType::grid`], or with
    /// `reduce_range` the 7-bit levels onnxruntime's `reduce_range` uses
    /// (int8 −64..64, uint8 0..127).
    pub fn weight_grid(self, symmetric: bool, reduce_range: bool) -> Grid {
        if !reduce_range {
            return self.grid(symmetric);
        }
        let (qmin, qmax) = match self {
            QType::Uint8 => (0, 127),
            _ => (-64, 64),
        };
        Grid {
            qmin,
            qmax,
            symmetric,
        }
    }

    fn name(self) -> &'static str {
        match self {
            QType::Uint8 => "uint8",
            QType::Int8 => "int8",
            QType::Int32 => "int32",
        }
    }
}

/// The options with the profile's defaults filled in.
#[derive(Debug, Clone)]
pub struct Settings {
    method: RangeMethod,
    method_name: &'static str,
    /// `method: auto`: choose per tensor (into `per_tensor`).
    auto: bool,
    /// Range methods chosen per tensor; the rest use `method`.
    per_tensor: BTreeMap<String, (RangeMethod, &'static str)>,
    bins: usize,
    act: QType,
    act_symmetric: bool,
    weights: QType,
    w_symmetric: bool,
    /// `weights.reduce_range`: 7-bit weight levels.
    w_reduced: bool,
    w_mse: bool,
    w_gptq: bool,
    per_channel: bool,
    int32_bias: bool,
    ops: BTreeSet<String>,
    dedicated: bool,
    fold_activations: bool,
    inputs_only: bool,
    quantize_graph_outputs: bool,
    /// `scaling: auto`: the compute nodes chosen dynamic (replaces the
    /// config's choice once measured).
    dynamic_choice: Option<BTreeSet<crate::ir::NodeId>>,
}

impl Settings {
    /// The grid of constant weights (type, symmetry, `reduce_range`).
    fn weight_grid(&self) -> Grid {
        self.weights.weight_grid(self.w_symmetric, self.w_reduced)
    }
}

impl Quantize {
    fn settings(&self) -> Settings {
        let trt = self.profile == Profile::Tensorrt;
        let (method, method_name) = match self.calibration.method {
            Method::Minmax => (RangeMethod::MinMax, "minmax"),
            Method::Percentile => (
                RangeMethod::Percentile(self.calibration.percentile),
                "percentile",
            ),
            Method::Entropy => (RangeMethod::Entropy, "entropy"),
            Method::Mse | Method::Auto => (RangeMethod::Mse, "mse"),
        };
        let needs_histogram = method != RangeMethod::MinMax;
        Settings {
            method,
            method_name,
            auto: self.calibration.method == Method::Auto,
            per_tensor: BTreeMap::new(),
            bins: if needs_histogram {
                self.calibration.bins
            } else {
                0
            },
            act: self.activations.dtype.map(QType::from).unwrap_or(if trt {
                QType::Int8
            } else {
                QType::Uint8
            }),
            act_symmetric: self.activations.symmetric.unwrap_or(trt),
            weights: self.weights.dtype.into(),
            w_symmetric: self.weights.symmetric,
            w_reduced: self.weights.reduce_range,
            w_mse: self.weights.range == WeightRange::Mse,
            w_gptq: self.weights.rounding == WeightRounding::Gptq,
            per_channel: self.weights.per_channel,
            int32_bias: self.int32_bias.unwrap_or(!trt),
            ops: self.ops.iter().cloned().collect(),
            dedicated: self.dedicated_pairs.unwrap_or(trt),
            fold_activations: self.fold_activations,
            inputs_only: self.placement == Placement::Inputs,
            quantize_graph_outputs: self.quantize_graph_outputs,
            dynamic_choice: None,
        }
    }

    /// The grid and type of activation `name`, overrides applied.
    fn grid_of(&self, s: &Settings, name: &str) -> (QType, Grid) {
        let o = self.overrides.get(name);
        let dtype = o.and_then(|o| o.dtype).map(QType::from).unwrap_or(s.act);
        let symmetric = o.and_then(|o| o.symmetric).unwrap_or(s.act_symmetric);
        (dtype, dtype.grid(symmetric))
    }
}

/// Compiled `include_nodes` / `exclude_nodes` / `activations.dynamic_nodes`.
pub struct NodeFilter {
    select: Selection,
    keep_float: BTreeSet<crate::ir::NodeId>,
    all_dynamic: bool,
    dynamic: Matchers,
}

impl NodeFilter {
    fn new(q: &Quantize, keep_float: BTreeSet<crate::ir::NodeId>) -> NodeFilter {
        NodeFilter {
            select: Selection::new(&q.include_nodes, &q.exclude_nodes),
            keep_float,
            all_dynamic: q.activations.scaling == Some(Scaling::Dynamic),
            dynamic: Matchers::new(&q.activations.dynamic_nodes),
        }
    }

    /// Whether compute node `name`'s input is scaled per run.
    pub fn dynamic(&self, name: &str) -> bool {
        self.all_dynamic || self.dynamic.any(name)
    }

    /// Why a node is filtered out, if it is (data-movement and activation
    /// ops are not held to `include_nodes`: they follow their input).
    pub fn rejects(&self, id: crate::ir::NodeId, name: &str, role: Role) -> Option<String> {
        if self.keep_float.contains(&id) {
            return Some("kept float to meet the accuracy target".into());
        }
        if let Some(why) = self.select.excluded(name) {
            return Some(why);
        }
        let starts = matches!(role, Role::Compute | Role::Generic);
        starts
            .then(|| self.select.excluded_by_include(name))
            .flatten()
    }
}

impl Pass for Quantize {
    fn run(&self, model: &mut Model, ctx: &PassContext) -> Result<PassReport, PassError> {
        let mut s = self.settings();
        let mut report = PassReport::with_counters(&[
            "nodes_quantized",
            "activations_quantized",
            "activations_folded",
            "weights_quantized",
            "biases_quantized",
            "q_nodes_added",
            "dq_nodes_added",
            "initializer_bytes_before",
            "initializer_bytes_after",
            "calibration_samples",
        ]);
        check_model(model)?;
        // The model as given: what `whittle validate` compares the output
        // with, so what variants and the written model are scored against.
        let original = model.clone();
        report.count(
            "constants_hoisted",
            super::hoist_constants(&mut model.graph) as i64,
        );
        self.check_node_names(&model.graph, &mut report)?;
        if self.fold_batchnorm {
            let mut folded = PassReport::default();
            super::fold_batchnorm::fold_all(&mut model.graph, &mut folded)?;
            report.count(
                "batchnorms_folded",
                folded.counters.get("folded").copied().unwrap_or(0),
            );
            report.warnings.extend(folded.warnings);
        }
        warn_unfolded_batchnorm(&model.graph, &mut report);
        let bytes_before = initializer_bytes(&model.graph);
        report.count("initializer_bytes_before", bytes_before);

        let mut plan = self.plan_for(&model.graph, &s, &BTreeSet::new())?;
        self.check_overrides(&plan)?;
        if plan.tensors.is_empty() && plan.weights.is_empty() {
            report.warnings.push(
                "nothing to quantize: no node of the selected op types has a float input".into(),
            );
            report_nodes(&plan, &mut report);
            report.count("initializer_bytes_after", bytes_before);
            return Ok(report);
        }
        let needed = if plan.weights.iter().any(|w| w.axis.is_some()) {
            13
        } else if !plan.dynamic.is_empty() {
            11
        } else {
            10
        };

        // Calibrate: the planned tensors, plus every compute node's input and
        // output (their shapes give the MACs).
        let mut samples = calib::load_samples(model, ctx, self.calibration.samples, &mut report)?;
        let held = self.hold_out(&mut samples, &mut report);
        let threads = ctx.threads.unwrap_or_else(crate::exec::default_threads);
        // The cross-validated check calibrates again from here, equalization
        // included (a copy only when it needs one).
        let folds = self
            .target
            .as_ref()
            .filter(|t| t.refit)
            .map_or(0, |t| t.folds);
        let before_equalize = (folds > 1 && self.equalize).then(|| model.clone());
        if self.equalize {
            let n = self.equalize(model, &samples, ctx, threads, &mut report)?;
            report.count("tensors_equalized", n as i64);
            if n > 0 {
                plan = self.plan_for(&model.graph, &s, &BTreeSet::new())?;
            }
        }
        let mut observed_names = plan.calibrated();
        for (_, n) in model.graph.nodes() {
            let shape_only = matches!(n.op_type(), "Softmax" | "LogSoftmax" | "Hardmax");
            if plan::role(n.op_type()) == Some(Role::Compute) || shape_only {
                let output = n.outputs.first().filter(|_| !shape_only);
                for v in n.inputs.first().into_iter().chain(output) {
                    if !v.is_empty() && !observed_names.contains(v) {
                        observed_names.push(v.clone());
                    }
                }
            }
        }
        let channel_axes = if self.bias_correction {
            correction::bias_inputs(&model.graph, &plan)
        } else {
            BTreeMap::new()
        };
        for v in channel_axes.keys() {
            if !observed_names.contains(v) {
                observed_names.push(v.clone());
            }
        }
        let observed = calib::observe(
            model,
            &observed_names,
            &channel_axes,
            &samples,
            ctx.model_dir.as_deref(),
            threads,
            s.bins,
            ctx.progress,
        )?;
        report.count("calibration_samples", samples.len() as i64);
        let mut cal = Measured {
            stats: BTreeMap::new(),
            not_float: BTreeMap::new(),
            shapes: BTreeMap::new(),
            rounded: BTreeMap::new(),
        };
        for ((name, st), shape) in observed_names
            .iter()
            .zip(observed.stats)
            .zip(observed.shapes)
        {
            if let Some(shape) = shape {
                cal.shapes.insert(name.clone(), shape);
            }
            match st {
                Ok(st) => {
                    if st.non_finite > 0 {
                        report.warnings.push(format!(
                            "tensor {name:?} had {} NaN or infinite values during calibration; they were ignored",
                            st.non_finite
                        ));
                    }
                    cal.stats.insert(name.clone(), st);
                }
                Err(dt) => {
                    cal.not_float.insert(name.clone(), dt);
                }
            }
        }
        drop_non_float(&mut plan, &cal.not_float);
        report.count(
            "ops_upgraded",
            raise_opset(model, needed, &cal.shapes)? as i64,
        );

        if s.w_gptq {
            cal.rounded = self.round_weights(model, &s, &plan, &samples, ctx, threads)?;
            report.count("weights_rounded_gptq", cal.rounded.len() as i64);
        }

        // Range choice, scaling choice, sensitivity and the accuracy target
        // measure variant models against one float run. The sensitivity
        // analysis checks the target on all the samples; the choices use the
        // first `target.samples`.
        let measures = self.sensitivity || self.target.is_some();
        let choices = s.auto || self.activations.scaling == Some(Scaling::Auto);
        let macs = measure::node_macs(&model.graph, &cal.shapes);
        let dynamic_default = self.target.is_some()
            && self.activations.scaling.is_none()
            && self.profile != Profile::Tensorrt
            && s.w_symmetric;
        if dynamic_default {
            let share = matmul_share(&model.graph, &macs);
            if share >= MATMUL_HEAVY {
                s.dynamic_choice = Some(model.graph.node_ids().into_iter().collect());
                plan = self.plan_for(&model.graph, &s, &BTreeSet::new())?;
                drop_non_float(&mut plan, &cal.not_float);
                report.count("scaling_default_dynamic", 1);
                report.summary.push(format!(
                    "activations scaled per run (dynamic): {:.1}% of the MACs are in MatMul/Gemm, where the target search starts from dynamic scaling by default (`activations.scaling: static` keeps calibrated scales)",
                    100.0 * share
                ));
            }
        }
        let mut keep_float = BTreeSet::new();
        let mut outcome = None;
        let mut reference = Vec::new();
        let dir = ctx.model_dir.as_deref();
        if measures || choices {
            let probed = if measures {
                &samples[..]
            } else {
                &samples[..samples.len().min(self.target_samples())]
            };
            reference = measure::run("float model", &original, probed, dir, threads, true)?;
            let probe =
                sensitivity::Probe::new(self, model, &cal, probed, &reference, ctx, threads)?;
            if s.auto {
                s.per_tensor = sensitivity::choose_methods(&probe, &s, &plan, &mut report)?;
            }
            if self.activations.scaling == Some(Scaling::Auto) {
                let chosen = sensitivity::choose_scaling(&probe, &s, &mut report)?;
                s.dynamic_choice = Some(chosen);
                plan = self.plan_for(&model.graph, &s, &BTreeSet::new())?;
                drop_non_float(&mut plan, &cal.not_float);
            }
            // Which compute nodes stay float.
            if measures {
                let found = sensitivity::analyse(&probe, &s, &plan, &macs)?;
                keep_float = found.keep_float.clone();
                if !keep_float.is_empty() {
                    plan = self.plan_for(&model.graph, &s, &keep_float)?;
                    drop_non_float(&mut plan, &cal.not_float);
                }
                outcome = Some(found);
            }
        }
        let params = self.params_for(&s, &plan, &cal.stats);
        let before_edits = self.target.as_ref().map(|_| model.clone());
        let mut applied = PassReport::default();
        self.apply(model, &s, &plan, &params, &cal, &mut applied)?;
        if let (Some(t), Some(found), Some(before)) = (&self.target, outcome.as_mut(), before_edits)
        {
            // The acceptance: the model exactly as written, on every sample
            // the search used (and the held-out ones), as `validate` runs it.
            let th = t.thresholds();
            let held_reference = match held.is_empty() {
                true => None,
                false => Some(measure::run(
                    "float model",
                    &original,
                    &held,
                    dir,
                    threads,
                    true,
                )?),
            };
            let (mut retries, mut step) = (0, 1);
            let mut cv_retries = 0;
            loop {
                let got = measure::run("quantized model", model, &samples, dir, threads, true)?;
                let on_search = measure::score(&reference, &got);
                let on_held = match &held_reference {
                    Some(r) => {
                        let got =
                            measure::run("quantized model", model, &held, dir, threads, true)?;
                        Some(measure::score(r, &got))
                    }
                    None => None,
                };
                let written_ok =
                    on_search.meets_pooled(&th) && on_held.is_none_or(|h| h.meets_pooled(&th));
                // Only a choice the written model meets is calibrated again.
                let cross = match written_ok && folds > 1 {
                    true => {
                        let base = crossval::Base {
                            model: before_equalize.as_ref().unwrap_or(&before),
                            needed,
                            cal: &cal,
                        };
                        let keep = &keep_float;
                        self.cross_validate(
                            &base, &s, keep, &samples, &reference, folds, ctx, threads,
                        )?
                    }
                    false => None,
                };
                let cross_ok = cross.is_none_or(|c| c.score.meets_pooled(&th));
                let ok = written_ok && cross_ok;
                found.accepted = Some(sensitivity::Acceptance {
                    search: on_search,
                    source: if ctx.data.is_some() {
                        "calibration"
                    } else {
                        "synthetic"
                    },
                    holdout: on_held,
                    cross_validated: cross,
                    retries,
                    cv_retries,
                });
                let kept: BTreeSet<usize> = (0..found.rows.len())
                    .filter(|&i| keep_float.contains(&found.rows[i].node))
                    .collect();
                if ok || kept.len() == found.rows.len() {
                    found.met = found.met && ok;
                    break;
                }
                // Missed as written, or recalibrated on the folds: keep the next ranked
                // nodes float too.
                let wider = measure::widen(found.rows.len(), &kept, step);
                step *= 2;
                retries += 1;
                cv_retries += usize::from(!cross_ok);
                keep_float = wider.iter().map(|&i| found.rows[i].node).collect();
                *model = before.clone();
                plan = self.plan_for(&model.graph, &s, &keep_float)?;
                drop_non_float(&mut plan, &cal.not_float);
                let params = self.params_for(&s, &plan, &cal.stats);
                applied = PassReport::default();
                self.apply(model, &s, &plan, &params, &cal, &mut applied)?;
            }
            found.keep_float = keep_float.clone();
        }
        drop(samples);
        if let Some(found) = &outcome {
            let mut options = Vec::new();
            if !s.w_gptq {
                options.push("`weights.rounding: gptq`");
            }
            if s.dynamic_choice.is_none()
                && self
                    .activations
                    .scaling
                    .is_none_or(|v| v == Scaling::Static)
            {
                options.push("`activations.scaling: dynamic` or `auto`");
            }
            found.report(
                &mut report,
                self.target.as_ref(),
                macs.values().sum(),
                &options,
            );
        }
        report.merge(applied);
        let int8: u64 = plan
            .nodes
            .iter()
            .filter(|st| st.outcome.is_ok() && st.role == Some(Role::Compute))
            .filter_map(|st| macs.get(&st.node))
            .sum();
        let total: u64 = macs.values().sum();
        report.count("macs_total", total as i64);
        report.count("macs_int8", int8 as i64);
        report.count("nodes_kept_float", keep_float.len() as i64);
        report_nodes(&plan, &mut report);
        report.count("initializer_bytes_after", initializer_bytes(&model.graph));
        Ok(report)
    }
}

/// A model is MatMul-heavy (a target search starts from dynamic scaling)
/// when at least this share of its Conv/MatMul/Gemm MACs is in MatMul/Gemm.
const MATMUL_HEAVY: f64 = 0.5;

/// The share of the counted MACs that MatMul and Gemm nodes hold (0 when
/// none are counted).
fn matmul_share(g: &Graph, macs: &BTreeMap<crate::ir::NodeId, u64>) -> f64 {
    let total: u64 = macs.values().sum();
    let matmul: u64 = macs
        .iter()
        .filter(|(id, _)| matches!(g.node(**id).op_type(), "MatMul" | "Gemm"))
        .map(|(_, m)| m)
        .sum();
    if total == 0 {
        0.0
    } else {
        matmul as f64 / total as f64
    }
}

/// What calibration measured.
pub struct Measured {
    /// Statistics of every observed float tensor.
    pub stats: BTreeMap<String, calib::stats::TensorStats>,
    /// Observed tensors that turned out not to be float32.
    pub not_float: BTreeMap<String, DataType>,
    /// Shapes of the observed tensors in the first sample.
    pub shapes: BTreeMap<String, Vec<usize>>,
    /// Weights rounded by GPTQ, by name and axis (`weights.rounding: gptq`).
    pub rounded: BTreeMap<(String, Option<usize>), qdq::QuantWeight>,
}

impl Quantize {
    /// Equalizes the channels of every tensor that allows it, from their
    /// per-channel ranges over `samples`; returns how many.
    fn equalize(
        &self,
        model: &mut Model,
        samples: &[crate::data::Sample],
        ctx: &PassContext,
        threads: usize,
        report: &mut PassReport,
    ) -> Result<usize, PassError> {
        let cands = equalize::candidates(&model.graph);
        if cands.is_empty() {
            return Ok(0);
        }
        let axes: BTreeMap<String, i64> =
            cands.iter().map(|c| (c.tensor.clone(), c.axis)).collect();
        let names: Vec<String> = axes.keys().cloned().collect();
        let seen = calib::observe(
            model,
            &names,
            &axes,
            samples,
            ctx.model_dir.as_deref(),
            threads,
            0,
            ctx.progress,
        )?;
        let (mut absmax, mut rank) = (BTreeMap::new(), BTreeMap::new());
        for ((name, st), shape) in names.iter().zip(seen.stats).zip(seen.shapes) {
            if let (Ok(st), Some(shape)) = (st, shape) {
                if let Some(ch) = &st.channels {
                    absmax.insert(name.clone(), ch.absmax().to_vec());
                    rank.insert(name.clone(), shape.len());
                }
            }
        }
        equalize::apply(
            &mut model.graph,
            &cands,
            &absmax,
            &rank,
            self.equalize_alpha,
            report,
        )
    }

    /// `target.holdout`: splits the last samples off (at least one stays).
    fn hold_out(
        &self,
        samples: &mut Vec<crate::data::Sample>,
        report: &mut PassReport,
    ) -> Vec<crate::data::Sample> {
        let Some(t) = self.target.as_ref().filter(|t| t.holdout > 0.0) else {
            return Vec::new();
        };
        let n = samples.len();
        let k = ((n as f64 * t.holdout).round() as usize).min(n.saturating_sub(1));
        if k == 0 {
            report.warnings.push(format!(
                "target.holdout {}: {n} samples are too few to hold any out",
                t.holdout
            ));
        }
        report.count("samples_held_out", k as i64);
        samples.split_off(n - k)
    }

    /// Samples the sensitivity analysis and the target check run on.
    fn target_samples(&self) -> usize {
        self.target.as_ref().map_or(8, |t| t.samples)
    }

    /// The plan, with the nodes in `keep_float` left float as well.
    fn plan_for(
        &self,
        g: &Graph,
        s: &Settings,
        keep_float: &BTreeSet<crate::ir::NodeId>,
    ) -> Result<Plan, PassError> {
        let filter = NodeFilter::new(self, keep_float.clone());
        let folds = |t: &str| {
            let o = self.overrides.get(t);
            !self.grid_of(s, t).1.symmetric
                && o.is_none_or(|o| o.scale.is_none() && o.range.is_none())
        };
        Ok(plan::plan(g, s, &filter, &folds)?)
    }

    /// Scale and zero point of every planned tensor, in plan order (sources
    /// before the data-movement outputs that share them).
    fn params_for(
        &self,
        s: &Settings,
        plan: &Plan,
        stats: &BTreeMap<String, calib::stats::TensorStats>,
    ) -> BTreeMap<String, TensorParams> {
        let mut params: BTreeMap<String, TensorParams> = BTreeMap::new();
        for t in &plan.tensors {
            let p = match &t.range {
                RangeSource::SameAs(src) if !self.overrides.contains_key(&t.name) => {
                    let root = plan.root(src);
                    let Some(mut p) = params.get(root).cloned() else {
                        continue;
                    };
                    p.source = format!("same as {root:?}");
                    p
                }
                _ => {
                    let Some(p) = self.params_of(s, &t.name, stats.get(&t.name)) else {
                        continue;
                    };
                    p
                }
            };
            params.insert(t.name.clone(), p);
        }
        params
    }

    /// The graph edits, counted in `report`.
    fn apply(
        &self,
        model: &mut Model,
        s: &Settings,
        plan: &Plan,
        params: &BTreeMap<String, TensorParams>,
        cal: &Measured,
        report: &mut PassReport,
    ) -> Result<(), PassError> {
        let stats = &cal.stats;
        let mut ed = qdq::Editor::new(&mut model.graph, s.dedicated);
        ed.apply_folds(plan);
        report.count("activations_folded", plan.folds.len() as i64);
        let wgrid = s.weight_grid();
        let mut cache = BTreeMap::new();
        let mut weight_scales: Vec<Vec<f32>> = Vec::with_capacity(plan.weights.len());
        // Bias correction: the shift of each node's bias, by node.
        let mut corrections: BTreeMap<crate::ir::NodeId, Vec<f64>> = BTreeMap::new();
        let mut seen_weights = BTreeSet::new();
        // Dynamic nodes: their inputs' DynamicQuantizeLinear outputs, and their biases.
        let mut shared = dynamic::Shared::new();
        let mut dynamic_biases = Vec::new();
        for w in &plan.weights {
            let t =
                ed.g.initializer(&w.name)
                    .ok_or_else(|| PassError::Model(format!("weight {:?} vanished", w.name)))?;
            let dims = t.dims.clone();
            let values = t.to_f32()?;
            t.release_pages(); // read once: a mapped weight leaves the resident set
            let q = match cal.rounded.get(&(w.name.clone(), w.axis)) {
                Some(q) => q.clone(),
                None => qdq::quantize_weight(&values, &dims, w.axis, s.weights, &wgrid, s.w_mse),
            };
            if self.bias_correction {
                let node = ed.g.node(w.node);
                let input = node.inputs.first().cloned().unwrap_or_default();
                let means = stats
                    .get(&input)
                    .and_then(|st| st.channels.as_ref())
                    .and_then(|c| c.means());
                if let Some(means) = means {
                    let inner = w
                        .axis
                        .map_or(1, |a| dims[a + 1..].iter().product::<i64>().max(1) as usize);
                    let error: Vec<f32> = q
                        .dequantized(s.weights, inner)
                        .iter()
                        .zip(&values)
                        .map(|(d, v)| d - v)
                        .collect();
                    if let Some(c) = correction::bias_shift(node, &dims, &error, &means) {
                        corrections.insert(w.node, c);
                    }
                }
            }
            if seen_weights.insert((w.name.clone(), w.axis)) {
                report.count("weights_quantized", 1);
                report
                    .details
                    .push(weight_detail(&w.name, w.axis, &q, s.weights, &dims));
            }
            if plan.dynamic.contains(&w.node) {
                let node = ed.g.node(w.node);
                let bias = match node.inputs.get(2).filter(|b| !b.is_empty()) {
                    Some(b) => {
                        let b = b.clone();
                        let mut values = ed.g.initializer(&b).map_or(Ok(vec![]), |t| t.to_f32())?;
                        if let Some(c) =
                            corrections.get(&w.node).filter(|c| c.len() == values.len())
                        {
                            for (v, d) in values.iter_mut().zip(c) {
                                *v = (f64::from(*v) - d) as f32;
                            }
                            report.count("biases_corrected", 1);
                        }
                        dynamic_biases.push(b);
                        Some(values)
                    }
                    None => None,
                };
                dynamic::emit(
                    &mut ed,
                    w.node,
                    &q,
                    s.weights,
                    &dims,
                    bias.as_deref(),
                    &mut shared,
                )
                .map_err(PassError::Model)?;
                report.count("inputs_dynamic", 1);
            } else {
                ed.weight(
                    w.node, w.slot, &w.name, w.axis, &q, s.weights, &dims, &mut cache,
                );
            }
            // A float weight nothing reads any more goes now, not after the
            // loop: an equalized one is a copy in memory (big models).
            if g_unused(ed.g, &w.name) {
                ed.g.remove_initializer(&w.name);
            }
            weight_scales.push(q.scales);
        }
        // Dynamic MatMuls of two activations: both inputs scaled per run.
        let weighted: BTreeSet<_> = plan.weights.iter().map(|w| w.node).collect();
        for &id in plan.dynamic.iter().filter(|id| !weighted.contains(id)) {
            dynamic::emit_pair(&mut ed, id, &mut shared);
            report.count("inputs_dynamic", 1);
            report.count("matmuls_dynamic_both_inputs", 1);
        }
        for b in &plan.biases {
            let Some(x) = params.get(&b.input) else {
                continue;
            };
            let t =
                ed.g.initializer(&b.name)
                    .ok_or_else(|| PassError::Model(format!("bias {:?} vanished", b.name)))?;
            let mut values = t.to_f32()?;
            if let Some(c) = corrections.get(&b.node).filter(|c| c.len() == values.len()) {
                for (v, d) in values.iter_mut().zip(c) {
                    *v = (f64::from(*v) - d) as f32;
                }
                report.count("biases_corrected", 1);
            }
            let ws = &weight_scales[b.weight];
            let scales: Vec<f32> = if ws.len() == 1 {
                vec![x.scale * ws[0]]
            } else {
                (0..values.len())
                    .map(|c| x.scale * ws[c % ws.len()])
                    .collect()
            };
            let (q, saturated) = qdq::quantize_bias(&values, &scales);
            if saturated > 0 {
                report.warnings.push(format!(
                    "bias {:?}: {saturated} values saturated int32 (input scale × weight scale is tiny)",
                    b.name
                ));
            }
            report.count("biases_quantized", 1);
            report.details.push(json!({
                "kind": "bias", "tensor": b.name, "dtype": "int32",
                "channels": values.len(), "saturated": saturated,
            }));
            ed.bias(b.node, b.slot, &b.name, &q, &scales);
        }
        for t in &plan.tensors {
            let Some(p) = params.get(&t.name) else {
                continue;
            };
            ed.activation(&t.name, &t.readers, p);
            report.count("activations_quantized", 1);
            report.details.push(json!({
                "kind": "activation", "tensor": t.name, "dtype": p.dtype.name(),
                "range": [p.range.0, p.range.1], "scale": p.scale, "zero_point": p.zero_point,
                "source": p.source, "folded": t.folded,
            }));
        }
        report.count("q_nodes_added", ed.q_nodes as i64);
        report.count("dq_nodes_added", ed.dq_nodes as i64);
        // Float biases nothing reads any more (the weights went in their loop).
        let replaced: BTreeSet<&str> = plan
            .biases
            .iter()
            .map(|b| b.name.as_str())
            .chain(dynamic_biases.iter().map(String::as_str))
            .collect();
        for name in replaced {
            if g_unused(ed.g, name) {
                ed.g.remove_initializer(name);
            }
        }
        Ok(())
    }

    /// A copy of `original` quantized by `plan` with parameters from `cal`
    /// (for the sensitivity analysis).
    fn variant(
        &self,
        original: &Model,
        s: &Settings,
        keep_float: &BTreeSet<crate::ir::NodeId>,
        cal: &Measured,
    ) -> Result<Model, PassError> {
        let mut m = original.clone();
        let mut plan = self.plan_for(&m.graph, s, keep_float)?;
        drop_non_float(&mut plan, &cal.not_float);
        let params = self.params_for(s, &plan, &cal.stats);
        self.apply(&mut m, s, &plan, &params, cal, &mut PassReport::default())?;
        Ok(m)
    }

    /// `weights.rounding: gptq`: every planned Conv/MatMul/Gemm weight GPTQ
    /// can round, rounded against its inputs' second moments on `samples`
    /// (scales and zero points as nearest rounding gives them).
    fn round_weights(
        &self,
        model: &Model,
        s: &Settings,
        plan: &Plan,
        samples: &[crate::data::Sample],
        ctx: &PassContext,
        threads: usize,
    ) -> Result<BTreeMap<(String, Option<usize>), qdq::QuantWeight>, PassError> {
        let grams = gptq::grams(
            model,
            &plan.weights,
            samples,
            ctx.model_dir.as_deref(),
            threads,
        )?;
        let wgrid = s.weight_grid();
        let jobs: Vec<(&(String, Option<usize>), &calib::Moments)> = grams.iter().collect();
        let rounded = crate::exec::parallel_map(&jobs, threads, |_, ((name, axis), gram)| {
            let t = model.graph.initializer(name)?;
            let values = t.to_f32().ok()?;
            let nearest = qdq::quantize_weight(&values, &t.dims, *axis, s.weights, &wgrid, s.w_mse);
            let (channels, inner) = match axis {
                Some(a) => (
                    t.dims[*a].max(1) as usize,
                    t.dims[a + 1..].iter().product::<i64>().max(1) as usize,
                ),
                None => (1, 1),
            };
            gptq::round(&values, &nearest, s.weights, gram, |i| {
                (i / inner) % channels
            })
        });
        Ok(jobs
            .into_iter()
            .zip(rounded)
            .filter_map(|((key, _), q)| q.map(|q| (key.clone(), q)))
            .collect())
    }
}

fn g_unused(g: &Graph, name: &str) -> bool {
    g.uses(name).is_empty() && !g.is_output(name) && !g.is_input(name)
}

impl Quantize {
    /// Scale and zero point of a calibrated (or overridden) tensor.
    fn params_of(
        &self,
        s: &Settings,
        name: &str,
        st: Option<&calib::stats::TensorStats>,
    ) -> Option<TensorParams> {
        let (dtype, grid) = self.grid_of(s, name);
        let o = self.overrides.get(name);
        if let Some(scale) = o.and_then(|o| o.scale) {
            let zp = o.and_then(|o| o.zero_point).unwrap_or(if grid.symmetric {
                (grid.qmin + grid.qmax + 1).div_euclid(2)
            } else {
                grid.qmin
            });
            let zp = zp.clamp(dtype.limits().0, dtype.limits().1);
            return Some(TensorParams {
                dtype,
                scale: scale as f32,
                zero_point: zp,
                range: (
                    (grid.qmin - zp) as f64 * scale,
                    (grid.qmax - zp) as f64 * scale,
                ),
                source: "override (scale)".into(),
            });
        }
        let (range, source) = match o.and_then(|o| o.range) {
            Some([lo, hi]) => ((lo, hi), "override (range)".to_string()),
            None => {
                let (m, m_name) = s
                    .per_tensor
                    .get(name)
                    .copied()
                    .unwrap_or((s.method, s.method_name));
                (st?.range(m, &grid), m_name.to_string())
            }
        };
        let (scale, zero_point) = grid.params(range.0, range.1);
        Some(TensorParams {
            dtype,
            scale,
            zero_point,
            range,
            source,
        })
    }

    /// The node lists and their YAML names.
    fn node_lists(&self) -> [(&[NodeMatch], &'static str); 3] {
        [
            (&self.include_nodes, "include_nodes"),
            (&self.exclude_nodes, "exclude_nodes"),
            (&self.activations.dynamic_nodes, "activations.dynamic_nodes"),
        ]
    }

    /// Exact names in include/exclude must exist; a regex that matches
    /// nothing is only a warning (pipelines are shared between models).
    fn check_node_names(&self, g: &Graph, report: &mut PassReport) -> Result<(), PassError> {
        for (list, field) in self.node_lists() {
            select::check_names(g, list, field, &mut report.warnings)?;
        }
        Ok(())
    }

    /// Every override must name a tensor the plan quantizes.
    fn check_overrides(&self, plan: &Plan) -> Result<(), PassError> {
        let names: Vec<&str> = plan.tensors.iter().map(|t| t.name.as_str()).collect();
        select::check_keys(
            self.overrides.keys(),
            &names,
            "overrides",
            "activation tensors this pass quantizes",
        )
    }
}

/// Refuses models that cannot or should not be quantized.
fn check_model(model: &Model) -> Result<(), PassError> {
    let g = &model.graph;
    if let Some((_, n)) = g.nodes().find(|(_, n)| {
        matches!(
            n.op_type(),
            "QuantizeLinear"
                | "DequantizeLinear"
                | "QLinearConv"
                | "QLinearMatMul"
                | "DynamicQuantizeLinear"
        )
    }) {
        return Err(PassError::Node {
            node: n.label(),
            message: "the model is already quantized; quantize its float original".into(),
        });
    }
    let float_init = g
        .initializers()
        .iter()
        .any(|t| t.dtype() == DataType::Float);
    let float_value = g
        .inputs
        .iter()
        .chain(&g.value_info)
        .chain(&g.outputs)
        .any(|v| v.ty.as_ref().and_then(|t| t.tensor_elem()) == Some(DataType::Float));
    if !float_init && !float_value {
        return Err(PassError::Model(
            "the model has no float32 tensors (inputs, outputs, value_info or initializers): nothing to quantize"
                .into(),
        ));
    }
    Ok(())
}

/// A BatchNormalization after a Conv/Gemm stays float between two quantized
/// tensors, costing accuracy and speed: say so.
fn warn_unfolded_batchnorm(g: &Graph, report: &mut PassReport) {
    let unfolded = g
        .nodes()
        .filter(|(_, n)| n.op_type() == "BatchNormalization")
        .filter(|(_, n)| {
            n.inputs
                .first()
                .and_then(|x| g.producer(x))
                .is_some_and(|(p, _)| {
                    matches!(g.node(p).op_type(), "Conv" | "ConvTranspose" | "Gemm")
                })
        })
        .count();
    if unfolded > 0 {
        report.warnings.push(format!(
            "{unfolded} BatchNormalization nodes follow a Conv/Gemm and stay float (fold_batchnorm is off or could not fold them)"
        ));
    }
}

/// Drops tensors that turned out not to be float32 during calibration, and
/// the nodes that needed them.
fn drop_non_float(plan: &mut Plan, not_float: &BTreeMap<String, DataType>) {
    if not_float.is_empty() {
        return;
    }
    let bad: BTreeSet<String> = plan
        .tensors
        .iter()
        .filter(|t| not_float.contains_key(plan.root(&t.name)))
        .map(|t| t.name.clone())
        .collect();
    let mut bad_nodes = BTreeMap::new();
    for t in &plan.tensors {
        if let (true, plan::Readers::Nodes(rs)) = (bad.contains(&t.name), &t.readers) {
            for (id, _) in rs {
                let dt = not_float.get(plan.root(&t.name)).copied();
                bad_nodes.insert(*id, (t.name.clone(), dt));
            }
        }
    }
    plan.tensors.retain(|t| !bad.contains(&t.name));
    plan.weights.retain(|w| !bad_nodes.contains_key(&w.node));
    plan.biases.retain(|b| !bad_nodes.contains_key(&b.node));
    for st in &mut plan.nodes {
        if let Some((t, dt)) = bad_nodes.get(&st.node) {
            let dt = dt.map(|d| d.name()).unwrap_or_default();
            st.outcome = Err(format!("input {t:?} is {dt}, not float32"));
        }
    }
}

fn report_nodes(plan: &Plan, report: &mut PassReport) {
    for st in &plan.nodes {
        let (quantized, note) = match &st.outcome {
            Ok(what) => (true, what.clone()),
            Err(why) => (false, why.clone()),
        };
        if quantized {
            report.count("nodes_quantized", 1);
        }
        report.details.push(json!({
            "kind": "node", "node": st.label, "quantized": quantized,
            if quantized { "what" } else { "why_not" }: note,
        }));
    }
}

fn weight_detail(
    name: &str,
    axis: Option<usize>,
    q: &qdq::QuantWeight,
    dtype: QType,
    dims: &[i64],
) -> serde_json::Value {
    let lo = q.scales.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = q.scales.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    json!({
        "kind": "weight", "tensor": name, "dtype": dtype.name(), "shape": dims,
        "axis": axis, "channels": q.scales.len(), "scale_min": lo, "scale_max": hi,
        "zero_points": if q.zero_points.iter().all(|&z| z == 0) { json!(0) } else { json!(q.zero_points) },
    })
}

fn initializer_bytes(g: &Graph) -> i64 {
    g.initializers().iter().map(|t| t.byte_len() as i64).sum()
}

/// Ops whose meaning changed between opsets, so that raising the opset
/// would change (or invalidate) a model using them: (op, version of the change, what).
const BREAKING: &[(&str, i64, &str)] = &[
    ("Slice", 10, "starts/ends became inputs"),
    ("TopK", 10, "k became an input"),
    ("Upsample", 10, "deprecated"),
    ("Clip", 11, "min/max became inputs"),
    ("Pad", 11, "pads became an input"),
    ("Resize", 11, "coordinate transformation changed"),
    ("Scatter", 11, "deprecated"),
    ("Dropout", 12, "ratio became an input"),
    ("Squeeze", 13, "axes became an input"),
    ("Unsqueeze", 13, "axes became an input"),
    ("Split", 13, "split became an input"),
    ("ReduceSum", 13, "axes became an input"),
    (
        "Softmax",
        13,
        "the axis now names one axis, not a 2-D coercion",
    ),
    (
        "LogSoftmax",
        13,
        "the axis now names one axis, not a 2-D coercion",
    ),
    (
        "Hardmax",
        13,
        "the axis now names one axis, not a 2-D coercion",
    ),
];

/// What raising the opset does to one node.
enum Upgrade {
    /// Nothing changes.
    Same,
    /// Move the attribute `attr` (ints) into a new int64 input.
    AttrToInput(&'static str),
}

/// Raises the default-domain opset to `needed`. Ops whose meaning changed in
/// between are upgraded where that is exact (an `axes`/`split` attribute
/// becomes an input; a Softmax over the last axis, whose rank calibration
/// saw, is the same op); any other change stops the pass, naming the node.
fn raise_opset(
    model: &mut Model,
    needed: i64,
    shapes: &BTreeMap<String, Vec<usize>>,
) -> Result<usize, PassError> {
    let have = model.opset_version("").unwrap_or(1);
    if have >= needed {
        return Ok(0);
    }
    let mut upgrades = Vec::new();
    for (id, n) in model.graph.nodes() {
        if !n.domain().is_empty() && n.domain() != "ai.onnx" {
            continue;
        }
        let op = n.op_type();
        let Some((_, v, what)) = BREAKING
            .iter()
            .find(|(o, v, _)| *o == op && *v > have && *v <= needed)
        else {
            continue;
        };
        let upgrade = match op {
            "Squeeze" | "Unsqueeze" | "ReduceSum" if n.attr("axes").is_none() => {
                Some(Upgrade::Same)
            }
            "Squeeze" | "Unsqueeze" | "ReduceSum" => {
                n.attr_ints("axes").map(|_| Upgrade::AttrToInput("axes"))
            }
            "Split" if n.attr("split").is_none() => Some(Upgrade::Same),
            "Split" => n.attr_ints("split").map(|_| Upgrade::AttrToInput("split")),
            "Softmax" | "LogSoftmax" | "Hardmax" => {
                let axis = n.attr_int("axis").unwrap_or(1);
                let rank = n.inputs.first().and_then(|x| shapes.get(x)).map(Vec::len);
                let last = match rank {
                    Some(r) => axis == -1 || axis == r as i64 - 1,
                    None => axis == -1,
                };
                last.then_some(Upgrade::Same)
            }
            "Clip" if n.attr("min").is_none() && n.attr("max").is_none() => Some(Upgrade::Same),
            "Dropout" if n.attr("ratio").is_none() => Some(Upgrade::Same),
            _ => None,
        };
        match upgrade {
            Some(u) => upgrades.push((id, u)),
            None => {
                return Err(PassError::Node {
                    node: n.label(),
                    message: format!(
                        "the quantized model needs opset {needed} (the model imports {have}), but {op} changed at opset {v} ({what}) and whittle cannot upgrade this node exactly; convert the model to opset {needed} first (onnx.version_converter), or set weights.per_channel: false (opset 10)"
                    ),
                })
            }
        }
    }
    let mut changed = 0;
    for (id, u) in upgrades {
        if let Upgrade::AttrToInput(attr) = u {
            let g = &mut model.graph;
            let n = g.node(id);
            let values: Vec<i64> = n.attr_ints(attr).unwrap_or(&[]).to_vec();
            let base = if n.name().is_empty() {
                n.outputs[0].clone()
            } else {
                n.name().to_string()
            };
            let name = g.unique_name(&format!("{base}_{attr}"));
            let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            g.add_initializer(crate::ir::Tensor::from_raw(
                &name,
                DataType::Int64,
                vec![values.len() as i64],
                bytes::Bytes::from(raw),
            ));
            g.update_node(id, |n| {
                n.attributes.retain(|a| a.name() != attr);
                // The new input follows the data input (Squeeze, Unsqueeze,
                // ReduceSum, Split all take it second).
                n.inputs.truncate(1);
                n.inputs.push(name);
            });
            changed += 1;
        }
    }
    for o in &mut model.opset_import {
        if o.domain().is_empty() || o.domain() == "ai.onnx" {
            o.version = Some(needed);
        }
    }
    // Opset 13 needs IR version 7, opset 10 needs 5.
    let ir = if needed >= 13 { 7 } else { 5 };
    if model.ir_version.is_some_and(|v| v < ir) {
        model.ir_version = Some(ir);
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Attribute, Graph, Node};

    fn model_at(opset: i64, node: Node) -> Model {
        let mut g = Graph::new("g");
        g.add_node(node);
        let mut m = Model::new(g, opset);
        m.ir_version = Some(6);
        m
    }

    #[test]
    fn opset_is_raised_when_no_op_changed_meaning() {
        let mut m = model_at(11, Node::with_io("Conv", "c", &["x", "w"], &["y"]));
        raise_opset(&mut m, 13, &BTreeMap::new()).unwrap();
        assert_eq!(m.opset_version(""), Some(13));
        assert_eq!(m.ir_version, Some(7));
    }

    #[test]
    fn opset_raising_upgrades_what_it_can_and_names_what_it_cannot() {
        // Squeeze's axes attribute becomes an int64 input.
        let mut squeeze = Node::with_io("Squeeze", "sq", &["x"], &["y"]);
        squeeze.set_attr(Attribute::ints("axes", vec![0, 2]));
        let mut m = model_at(11, squeeze);
        assert_eq!(raise_opset(&mut m, 13, &BTreeMap::new()).unwrap(), 1);
        let (_, n) = m.graph.nodes().next().unwrap();
        assert!(n.attr("axes").is_none());
        let axes = m.graph.initializer(&n.inputs[1]).unwrap();
        assert_eq!(
            (axes.dtype(), axes.dims.clone()),
            (DataType::Int64, vec![2])
        );
        // A Softmax over the last axis of a rank-2 input is the same op.
        let mut m = model_at(11, Node::with_io("Softmax", "sm", &["x"], &["y"]));
        let shapes = BTreeMap::from([("x".to_string(), vec![1, 2])]);
        raise_opset(&mut m, 13, &shapes).unwrap();
        assert_eq!(m.opset_version(""), Some(13));
        // Over axis 1 of a rank-3 input it is not: nothing changes.
        let mut m = model_at(11, Node::with_io("Softmax", "sm", &["x"], &["y"]));
        let shapes = BTreeMap::from([("x".to_string(), vec![1, 2, 3])]);
        let e = raise_opset(&mut m, 13, &shapes).unwrap_err().to_string();
        assert!(
            e.contains("Softmax \"sm\"") && e.contains("changed at opset 13"),
            "{e}"
        );
        assert_eq!(m.opset_version(""), Some(11));
    }

    #[test]
    fn target_folds_default_to_four_and_bad_fold_options_name_their_path() {
        let t: Quantize =
            parse_config(&serde_json::json!({"target": {"min_sqnr_db": 25}})).unwrap();
        let t = t.target.unwrap();
        assert_eq!((t.folds, t.refit), (4, false));
        let bad = |v: serde_json::Value| parse_config::<Quantize>(&v).unwrap_err().field;
        assert_eq!(
            bad(serde_json::json!({"target": {"min_sqnr_db": 25, "folds": 1}})),
            "target.folds"
        );
        assert_eq!(
            bad(serde_json::json!({"target": {"min_sqnr_db": 25, "folds": 0, "refit": true}})),
            "target.refit"
        );
    }

    #[test]
    fn profiles_fill_in_defaults_and_explicit_options_win() {
        let trt: Quantize = parse_config(&serde_json::json!({"profile": "tensorrt"})).unwrap();
        let s = trt.settings();
        assert_eq!(
            (s.act, s.act_symmetric, s.dedicated, s.int32_bias),
            (QType::Int8, true, true, false)
        );
        let ort = Quantize::default().settings();
        assert_eq!(
            (ort.act, ort.act_symmetric, ort.dedicated, ort.int32_bias),
            (QType::Uint8, false, false, true)
        );
        let bad = parse_config::<Quantize>(
            &serde_json::json!({"profile": "tensorrt", "activations": {"dtype": "uint8"}}),
        );
        assert_eq!(bad.unwrap_err().field, "activations");
        let bad = parse_config::<Quantize>(&serde_json::json!({"ops": ["Conv", "Sofmax"]}));
        assert_eq!(bad.unwrap_err().field, "ops[1]");
    }
}
