//! Validation: run an original and a rewritten model on the same inputs and
//! report, per output, how far the rewritten one drifted; gates turn the
//! report into a pass/fail verdict.
//!
//! Used by `whittle validate A B` and by `whittle run` when the pipeline has
//! a `validate:` section. Inputs come from `.npz` data or, without data, from
//! seeded synthetic values (the report says which). A model tract cannot run
//! gives the verdict "not validated", never "passed".

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::metrics::{compare, ser_f64, ser_opt_f64, Stats};
use super::{default_threads, parallel_map, ExecError, Runner};
use crate::data::{self, DataError, DataSource, InputSpec, SyntheticSpec};
use crate::ir::{DimValue, Graph, Model};

/// Synthetic samples drawn when no data and no sample count are given.
pub const DEFAULT_SYNTHETIC_SAMPLES: usize = 8;

/// Thresholds that make validation a gate. Every gate applies to every output.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Gates {
    /// Fail when an output's SQNR (dB) is below this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_sqnr_db: Option<f64>,
    /// Fail when an output's cosine similarity is below this (-1..1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_cosine: Option<f64>,
    /// Fail when an output's largest absolute error is above this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_abs_error: Option<f64>,
    /// Fail when, for class-score outputs, the share of rows whose argmax
    /// agrees is below this (0..1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_top1: Option<f64>,
}

impl Gates {
    /// True when no threshold is set.
    pub fn is_empty(&self) -> bool {
        *self == Gates::default()
    }

    /// Checks the ranges; errors are (field, message).
    pub fn check(&self) -> Result<(), (String, String)> {
        let finite = |name: &str, v: Option<f64>| match v {
            Some(x) if !x.is_finite() => Err((name.to_string(), format!("{x} is not a number"))),
            _ => Ok(()),
        };
        finite("min_sqnr_db", self.min_sqnr_db)?;
        finite("max_abs_error", self.max_abs_error)?;
        if let Some(c) = self.min_cosine {
            if !(-1.0..=1.0).contains(&c) {
                return Err(("min_cosine".into(), format!("{c} is outside -1..1")));
            }
        }
        if let Some(t) = self.min_top1 {
            if !(0.0..=1.0).contains(&t) {
                return Err(("min_top1".into(), format!("{t} is outside 0..1")));
            }
        }
        if let Some(m) = self.max_abs_error {
            if m < 0.0 {
                return Err(("max_abs_error".into(), format!("{m} is negative")));
            }
        }
        Ok(())
    }

    fn describe(&self) -> String {
        let mut v = Vec::new();
        if let Some(x) = self.min_sqnr_db {
            v.push(format!("SQNR >= {x} dB"));
        }
        if let Some(x) = self.min_cosine {
            v.push(format!("cosine >= {x}"));
        }
        if let Some(x) = self.max_abs_error {
            v.push(format!("max abs <= {x}"));
        }
        if let Some(x) = self.min_top1 {
            v.push(format!("top-1 >= {x}"));
        }
        v.join(", ")
    }
}

/// The pipeline's `validate:` section: `whittle run` validates its output
/// against its input before writing it, and writes nothing when a gate fails.
///
/// ```yaml
/// validate:
///   data: calib.npz          # optional; relative to the pipeline file
///   samples: 16
///   dims: { batch: 1, height: 224, width: 224 }
///   gates: { min_sqnr_db: 30, min_cosine: 0.999 }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ValidateConfig {
    /// An `.npz` file (one array per input, first axis = samples) or a folder
    /// of `.npz` files (one sample each); relative paths are relative to the
    /// pipeline file's folder. Without it, seeded synthetic inputs are used.
    #[serde(default)]
    pub data: Option<PathBuf>,
    /// Use at most this many samples (synthetic data: exactly this many,
    /// default 8).
    #[serde(default)]
    pub samples: Option<usize>,
    /// Values for symbolic input dims (`batch`, `sequence`, `height`...).
    #[serde(default)]
    pub dims: BTreeMap<String, usize>,
    /// Thresholds every output must meet.
    #[serde(default)]
    pub gates: Gates,
    /// How synthetic inputs are drawn when there is no data.
    #[serde(default)]
    pub synthetic: SyntheticSpec,
    /// Threads running samples (default: the machine's cores).
    #[serde(default)]
    pub threads: Option<usize>,
}

impl ValidateConfig {
    /// The JSON Schema of the `validate:` section (for `whittle schema`).
    pub fn schema() -> serde_json::Value {
        schemars::schema_for!(ValidateConfig).to_value()
    }

    /// Checks values and cross-field rules; errors are (YAML path below
    /// `validate`, message).
    pub fn check(&self) -> Result<(), (String, String)> {
        if self.samples == Some(0) {
            return Err(("samples".into(), "must be at least 1".into()));
        }
        if self.threads == Some(0) {
            return Err(("threads".into(), "must be at least 1".into()));
        }
        if let Some((name, _)) = self.dims.iter().find(|(_, &v)| v == 0) {
            return Err((format!("dims.{name}"), "must be at least 1".into()));
        }
        self.gates
            .check()
            .map_err(|(f, m)| (format!("gates.{f}"), m))?;
        let [lo, hi] = self.synthetic.float_range;
        if !lo.is_finite() || !hi.is_finite() || lo >= hi {
            return Err((
                "synthetic.float_range".into(),
                format!("[{lo}, {hi}) is empty"),
            ));
        }
        let [lo, hi] = self.synthetic.int_range;
        if lo >= hi {
            return Err((
                "synthetic.int_range".into(),
                format!("[{lo}, {hi}) is empty"),
            ));
        }
        Ok(())
    }
}

/// Everything a validation needs besides the two models.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ValidateOptions {
    /// Data file or folder; synthetic inputs without it.
    pub data: Option<PathBuf>,
    /// Sample limit (synthetic: sample count).
    pub samples: Option<usize>,
    /// Pinned symbolic dims.
    pub dims: BTreeMap<String, usize>,
    /// Thresholds.
    pub gates: Gates,
    /// Synthetic input generator.
    pub synthetic: SyntheticSpec,
    /// Threads (`None`: the machine's cores).
    pub threads: Option<usize>,
}

impl ValidateOptions {
    /// Options from a pipeline's `validate:` section; a relative data path is
    /// taken relative to `base` (the pipeline file's folder).
    pub fn from_config(cfg: &ValidateConfig, base: &Path) -> ValidateOptions {
        ValidateOptions {
            data: cfg.data.as_ref().map(|d| {
                if d.is_relative() {
                    base.join(d)
                } else {
                    d.clone()
                }
            }),
            samples: cfg.samples,
            dims: cfg.dims.clone(),
            gates: cfg.gates.clone(),
            synthetic: cfg.synthetic.clone(),
            threads: cfg.threads,
        }
    }
}

/// One of the two models being compared.
#[derive(Clone, Copy, Debug)]
pub struct Subject<'a> {
    /// Its name in the report (a path or a role).
    pub label: &'a str,
    /// The model.
    pub model: &'a Model,
    /// Bytes to hand tract; `None`: whittle encodes `model`.
    pub bytes: Option<&'a [u8]>,
    /// The folder its external data is relative to.
    pub dir: Option<&'a Path>,
}

/// Errors that stop a validation before it can give a verdict.
#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    /// The two models do not read and write the same values.
    #[error("{a} and {b} have different signatures:\n  {}", differences.join("\n  "))]
    Signature {
        /// The original.
        a: String,
        /// The rewritten model.
        b: String,
        /// One line per difference.
        differences: Vec<String>,
    },
    /// The data cannot be used.
    #[error(transparent)]
    Data(#[from] DataError),
    /// A model's inputs cannot be described.
    #[error("{model}: {reason}")]
    Model {
        /// The model.
        model: String,
        /// What is wrong.
        reason: String,
    },
}

/// The outcome of a validation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Every gate held for every output.
    Passed,
    /// Some output fell short of a gate, or differs in shape, type or
    /// non-finite values.
    Failed,
    /// The models ran and were compared, but no gate was set.
    NoGates,
    /// tract could not run one of the models: nothing was proven.
    NotValidated,
}

impl Verdict {
    /// True for verdicts a gate may treat as success.
    pub fn ok(self) -> bool {
        matches!(self, Verdict::Passed | Verdict::NoGates)
    }
}

/// How one output compares.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OutputReport {
    /// The output's name.
    pub name: String,
    /// Its shape in the first sample.
    pub shape: Vec<usize>,
    /// Elements compared (finite in both models), over all samples.
    pub compared: u64,
    /// Largest absolute difference.
    #[serde(serialize_with = "ser_f64")]
    pub max_abs_error: f64,
    /// Mean absolute difference.
    #[serde(serialize_with = "ser_f64")]
    pub mean_abs_error: f64,
    /// Signal-to-quantization-noise ratio in dB ("inf" when identical).
    #[serde(serialize_with = "ser_f64")]
    pub sqnr_db: f64,
    /// Cosine similarity.
    #[serde(serialize_with = "ser_f64")]
    pub cosine: f64,
    /// Top-1 agreement over the last axis, for class-score outputs.
    #[serde(serialize_with = "ser_opt_f64")]
    pub top1: Option<f64>,
    /// NaN/Inf elements in the original's output.
    pub nonfinite_original: u64,
    /// NaN/Inf elements in the rewritten model's output.
    pub nonfinite_rewritten: u64,
    /// Positions where the two disagree about NaN/Inf.
    pub nonfinite_mismatch: u64,
    /// Gates this output failed, in words; empty when it passed.
    pub failures: Vec<String>,
}

/// The full validation report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ValidationReport {
    /// The original model.
    pub original: String,
    /// The rewritten model.
    pub rewritten: String,
    /// The verdict.
    pub verdict: Verdict,
    /// Why the models were not validated, for [`Verdict::NotValidated`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Where the inputs came from.
    pub data: Option<DataSource>,
    /// Samples run.
    pub samples: usize,
    /// Pinned dims.
    pub dims: BTreeMap<String, usize>,
    /// Threads used.
    pub threads: usize,
    /// The gates applied.
    pub gates: Gates,
    /// One entry per output, in the original's output order.
    pub outputs: Vec<OutputReport>,
    /// Wall time of loading, typing and running both models.
    pub seconds: f64,
}

fn dims_text(dims: &Option<Vec<DimValue>>) -> String {
    match dims {
        None => "[..]".into(),
        Some(d) => format!(
            "[{}]",
            d.iter()
                .map(|d| match d {
                    DimValue::Known(n) => n.to_string(),
                    DimValue::Symbol(s) => s.clone(),
                    DimValue::Unknown => "?".into(),
                })
                .collect::<Vec<_>>()
                .join(",")
        ),
    }
}

fn dims_compatible(a: &Option<Vec<DimValue>>, b: &Option<Vec<DimValue>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => {
            a.len() == b.len()
                && a.iter().zip(b).all(|(x, y)| {
                    matches!((x, y), (DimValue::Unknown, _) | (_, DimValue::Unknown)) || x == y
                })
        }
        _ => true,
    }
}

/// Differences between the run-time inputs and the outputs of two graphs
/// (names and order, element types, declared dims; an unknown dim matches
/// anything).
pub fn signature_differences(a: &Graph, b: &Graph) -> Result<Vec<String>, String> {
    let mut diffs = Vec::new();
    let ia = InputSpec::of_graph(a)?;
    let ib = InputSpec::of_graph(b)?;
    let names = |v: &[InputSpec]| v.iter().map(|i| i.name.clone()).collect::<Vec<_>>();
    if names(&ia) != names(&ib) {
        diffs.push(format!("inputs {:?} vs {:?}", names(&ia), names(&ib)));
    } else {
        for (x, y) in ia.iter().zip(&ib) {
            if x.dtype != y.dtype || !dims_compatible(&x.shape, &y.shape) {
                diffs.push(format!("input {x} vs {y}"));
            }
        }
    }
    let outs = |g: &Graph| {
        g.outputs
            .iter()
            .map(|o| o.name().to_string())
            .collect::<Vec<_>>()
    };
    if outs(a) != outs(b) {
        diffs.push(format!("outputs {:?} vs {:?}", outs(a), outs(b)));
    } else {
        for (x, y) in a.outputs.iter().zip(&b.outputs) {
            let (tx, ty) = (x.ty.as_ref(), y.ty.as_ref());
            let ex = tx.and_then(|t| t.tensor_elem());
            let ey = ty.and_then(|t| t.tensor_elem());
            let dx = tx
                .and_then(|t| t.tensor_shape())
                .map(|s| s.iter().map(|d| d.value.clone()).collect());
            let dy = ty
                .and_then(|t| t.tensor_shape())
                .map(|s| s.iter().map(|d| d.value.clone()).collect());
            let types_differ = matches!((ex, ey), (Some(p), Some(q)) if p != q);
            let ranks_differ =
                matches!((&dx, &dy), (Some(p), Some(q)) if Vec::len(p) != Vec::len(q));
            if types_differ || ranks_differ {
                let show = |e: Option<crate::ir::DataType>, d: &Option<Vec<DimValue>>| {
                    format!(
                        "{}{}",
                        e.map_or("?".into(), |e| e.to_string()),
                        dims_text(d)
                    )
                };
                diffs.push(format!(
                    "output {:?}: {} vs {}",
                    x.name(),
                    show(ex, &dx),
                    show(ey, &dy)
                ));
            }
        }
    }
    Ok(diffs)
}

fn load_runner(s: &Subject) -> Result<Runner, ExecError> {
    match s.bytes {
        Some(b) => Runner::from_bytes(s.label, s.model, b, s.dir),
        None => Runner::from_model(s.label, s.model, s.dir),
    }
}

/// Runs `original` and `rewritten` on the same inputs and compares every output.
pub fn validate(
    original: Subject,
    rewritten: Subject,
    options: &ValidateOptions,
) -> Result<ValidationReport, ValidateError> {
    let started = Instant::now();
    let differences = signature_differences(&original.model.graph, &rewritten.model.graph)
        .map_err(|reason| ValidateError::Model {
            model: original.label.into(),
            reason,
        })?;
    if !differences.is_empty() {
        return Err(ValidateError::Signature {
            a: original.label.into(),
            b: rewritten.label.into(),
            differences,
        });
    }
    let inputs =
        InputSpec::of_graph(&original.model.graph).map_err(|reason| ValidateError::Model {
            model: original.label.into(),
            reason,
        })?;
    let samples = match &options.data {
        Some(path) => data::load_samples(path, &inputs, &options.dims, options.samples)?,
        None => data::synthetic(
            &inputs,
            &options.dims,
            options.samples.unwrap_or(DEFAULT_SYNTHETIC_SAMPLES),
            &options.synthetic,
        )?,
    };
    let threads = options.threads.unwrap_or_else(default_threads).max(1);
    let mut report = ValidationReport {
        original: original.label.into(),
        rewritten: rewritten.label.into(),
        verdict: Verdict::NotValidated,
        reason: None,
        data: Some(samples.source.clone()),
        samples: samples.samples.len(),
        dims: options.dims.clone(),
        threads,
        gates: options.gates.clone(),
        outputs: Vec::new(),
        seconds: 0.0,
    };
    let not_validated = |mut report: ValidationReport, e: ExecError| {
        report.reason = Some(e.to_string());
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
    };
    let (ra, rb) = match (load_runner(&original), load_runner(&rewritten)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => return not_validated(report, e),
    };
    // Type both models for every input shape first (one thread each), then
    // run the samples on all threads.
    for s in &samples.samples {
        if let Err(e) = ra.prepare(s).and_then(|_| rb.prepare(s)) {
            return not_validated(report, e);
        }
    }
    let per_sample = parallel_map(&samples.samples, threads, |i, s| {
        let a = ra.run(i, s)?;
        let b = rb.run(i, s)?;
        Ok::<_, ExecError>((
            a.iter()
                .zip(&b)
                .map(|(x, y)| compare(x, y))
                .collect::<Vec<_>>(),
            a.iter().map(|x| x.shape.clone()).collect::<Vec<_>>(),
        ))
    });
    let names = ra.outputs().to_vec();
    let mut stats = vec![Stats::default(); names.len()];
    let mut shapes: Vec<Option<Vec<usize>>> = vec![None; names.len()];
    for r in per_sample {
        let (s, sh) = match r {
            Ok(v) => v,
            Err(e) => return not_validated(report, e),
        };
        for (k, st) in s.iter().enumerate() {
            stats[k].merge(st);
            if shapes[k].is_none() {
                shapes[k] = sh.get(k).cloned();
            }
        }
    }
    let gates = &options.gates;
    let mut any_failed = false;
    for ((name, st), shape) in names.into_iter().zip(&stats).zip(shapes) {
        let mut failures = Vec::new();
        if let Some(m) = &st.mismatch {
            failures.push(format!("outputs differ: {m}"));
        }
        if st.nonfinite_mismatch > 0 {
            failures.push(format!(
                "NaN/Inf differ at {} positions",
                st.nonfinite_mismatch
            ));
        }
        let (sqnr, cos, top1) = (st.sqnr_db(), st.cosine(), st.top1());
        if st.mismatch.is_none() {
            if let Some(g) = gates.min_sqnr_db {
                if sqnr.is_nan() || sqnr < g {
                    failures.push(format!("SQNR {sqnr:.2} dB < {g} dB"));
                }
            }
            if let Some(g) = gates.min_cosine {
                if cos.is_nan() || cos < g {
                    failures.push(format!("cosine {cos:.6} < {g}"));
                }
            }
            if let Some(g) = gates.max_abs_error {
                if st.max_abs.is_nan() || st.max_abs > g {
                    failures.push(format!("max abs {:.4e} > {g}", st.max_abs));
                }
            }
            if let (Some(g), Some(t)) = (gates.min_top1, top1) {
                if t < g {
                    failures.push(format!("top-1 {t:.4} < {g}"));
                }
            }
        }
        any_failed |= !failures.is_empty();
        report.outputs.push(OutputReport {
            name,
            shape: shape.unwrap_or_default(),
            compared: st.compared,
            max_abs_error: st.max_abs,
            mean_abs_error: st.mean_abs(),
            sqnr_db: sqnr,
            cosine: cos,
            top1,
            nonfinite_original: st.nonfinite_a,
            nonfinite_rewritten: st.nonfinite_b,
            nonfinite_mismatch: st.nonfinite_mismatch,
            failures,
        });
    }
    report.verdict = if any_failed {
        Verdict::Failed
    } else if gates.is_empty() {
        Verdict::NoGates
    } else {
        Verdict::Passed
    };
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Validates a rewritten model against the file it was made from, as
/// `whittle run` does before writing: the original runs from its file's bytes
/// exactly, the rewritten one from whittle's encoding, both with external
/// data resolved in the input's folder. `base` resolves a relative data path
/// (the pipeline file's folder).
pub fn validate_rewrite(
    input: &Path,
    rewritten: &Model,
    rewritten_label: &str,
    config: &ValidateConfig,
    base: &Path,
) -> Result<ValidationReport, ValidateError> {
    let model_error = |reason: String| ValidateError::Model {
        model: input.display().to_string(),
        reason,
    };
    let original = crate::onnx::load(input).map_err(|e| model_error(e.to_string()))?;
    let bytes = crate::ir::map_file(input).map_err(|e| model_error(e.to_string()))?;
    let dir = super::folder_of(input);
    let label = input.display().to_string();
    validate(
        Subject {
            label: &label,
            model: &original,
            bytes: Some(&bytes),
            dir: Some(&dir),
        },
        Subject {
            label: rewritten_label,
            model: rewritten,
            bytes: None,
            dir: Some(&dir),
        },
        &ValidateOptions::from_config(config, base),
    )
}

fn num(v: f64, precision: usize) -> String {
    if v.is_nan() {
        "nan".into()
    } else if v.is_infinite() {
        if v > 0.0 { "inf" } else { "-inf" }.into()
    } else {
        format!("{v:.precision$}")
    }
}

fn sci(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.3e}")
    } else {
        num(v, 0)
    }
}

impl ValidationReport {
    /// The human-readable table.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "validation: {} -> {}", self.original, self.rewritten);
        if let Some(d) = &self.data {
            let _ = writeln!(
                out,
                "inputs: {d}; {} samples run on {} threads",
                self.samples, self.threads
            );
        }
        if !self.dims.is_empty() {
            let dims: Vec<String> = self.dims.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = writeln!(out, "dims: {}", dims.join(" "));
        }
        if self.verdict == Verdict::NotValidated {
            let _ = writeln!(
                out,
                "result: NOT VALIDATED: {}",
                self.reason
                    .as_deref()
                    .unwrap_or("tract could not run the models")
            );
            return out;
        }
        let header = [
            "output",
            "shape",
            "max abs",
            "mean abs",
            "SQNR dB",
            "cosine",
            "top-1",
            "NaN/Inf a/b",
            "gate",
        ];
        let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
        for o in &self.outputs {
            rows.push(vec![
                o.name.clone(),
                format!("{:?}", o.shape).replace(' ', ""),
                sci(o.max_abs_error),
                sci(o.mean_abs_error),
                num(o.sqnr_db, 1),
                num(o.cosine, 6),
                o.top1.map_or("-".into(), |t| format!("{:.1}%", t * 100.0)),
                format!("{}/{}", o.nonfinite_original, o.nonfinite_rewritten),
                if o.failures.is_empty() {
                    if self.gates.is_empty() { "-" } else { "ok" }.to_string()
                } else {
                    format!("FAIL: {}", o.failures.join("; "))
                },
            ]);
        }
        let widths: Vec<usize> = (0..header.len())
            .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
            .collect();
        for r in &rows {
            let line: Vec<String> = r
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(c, (cell, w))| {
                    if c == r.len() - 1 {
                        cell.clone()
                    } else {
                        format!("{cell:<w$}")
                    }
                })
                .collect();
            let _ = writeln!(out, "{}", line.join("  ").trim_end());
        }
        let verdict = match self.verdict {
            Verdict::Passed => format!("PASSED ({})", self.gates.describe()),
            Verdict::Failed => {
                let failed: Vec<&str> = self
                    .outputs
                    .iter()
                    .filter(|o| !o.failures.is_empty())
                    .map(|o| o.name.as_str())
                    .collect();
                format!(
                    "FAILED: {} fell short{}",
                    failed.join(", "),
                    if self.gates.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", self.gates.describe())
                    }
                )
            }
            Verdict::NoGates => "compared; no gates set, so nothing was enforced".into(),
            Verdict::NotValidated => "NOT VALIDATED".into(),
        };
        let _ = writeln!(out, "result: {verdict} in {:.2}s", self.seconds);
        out
    }

    /// A one-line error message for a verdict that is not a success.
    pub fn failure_message(&self) -> Option<String> {
        match self.verdict {
            Verdict::Passed | Verdict::NoGates => None,
            Verdict::NotValidated => Some(format!(
                "not validated: {}",
                self.reason
                    .as_deref()
                    .unwrap_or("tract could not run the models")
            )),
            Verdict::Failed => Some(format!(
                "validation failed: {}",
                self.outputs
                    .iter()
                    .filter(|o| !o.failures.is_empty())
                    .map(|o| format!("output {:?}: {}", o.name, o.failures.join("; ")))
                    .collect::<Vec<_>>()
                    .join("; ")
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{DataType, Dim, Node, Tensor, TypeInfo, ValueInfo};

    fn linear(w: &[f32]) -> Model {
        let mut g = Graph::new("g");
        g.inputs.push(ValueInfo::new(
            "x",
            TypeInfo::tensor(DataType::Float, vec![Dim::symbol("batch"), Dim::known(4)]),
        ));
        g.outputs.push(ValueInfo::new(
            "scores",
            TypeInfo::tensor(DataType::Float, vec![Dim::symbol("batch"), Dim::known(2)]),
        ));
        g.add_initializer(Tensor::from_f32("w", vec![4, 2], w));
        g.add_node(Node::new(
            "MatMul",
            "mm",
            vec!["x".into(), "w".into()],
            vec!["scores".into()],
        ));
        Model::new(g, 17)
    }

    const W: [f32; 8] = [0.5, -1.0, 0.25, 2.0, -0.75, 0.5, 1.0, -0.25];

    fn subject<'a>(label: &'a str, m: &'a Model) -> Subject<'a> {
        Subject {
            label,
            model: m,
            bytes: None,
            dir: None,
        }
    }

    fn gated() -> ValidateOptions {
        ValidateOptions {
            gates: Gates {
                min_sqnr_db: Some(30.0),
                ..Gates::default()
            },
            dims: BTreeMap::from([("batch".into(), 3)]),
            threads: Some(2),
            ..ValidateOptions::default()
        }
    }

    #[test]
    fn identical_models_pass_and_synthetic_data_is_announced() {
        let a = linear(&W);
        let r = validate(subject("a", &a), subject("b", &a), &gated()).unwrap();
        assert_eq!(r.verdict, Verdict::Passed, "{}", r.render());
        assert_eq!(r.outputs[0].sqnr_db, f64::INFINITY);
        assert_eq!(r.outputs[0].shape, vec![3, 2]);
        assert_eq!(r.samples, DEFAULT_SYNTHETIC_SAMPLES);
        assert!(r.render().contains("SYNTHETIC"), "{}", r.render());
    }

    #[test]
    fn a_corrupted_weight_fails_the_gate_naming_the_output() {
        let a = linear(&W);
        let mut w = W;
        w[3] = 40.0;
        let b = linear(&w);
        let r = validate(subject("a", &a), subject("b", &b), &gated()).unwrap();
        assert_eq!(r.verdict, Verdict::Failed);
        let msg = r.failure_message().unwrap();
        assert!(msg.contains("\"scores\"") && msg.contains("SQNR"), "{msg}");
        assert!(r.render().contains("FAIL"), "{}", r.render());
        // The same comparison without gates enforces nothing.
        let free = ValidateOptions {
            gates: Gates::default(),
            ..gated()
        };
        let r = validate(subject("a", &a), subject("b", &b), &free).unwrap();
        assert_eq!(r.verdict, Verdict::NoGates);
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let a = linear(&W);
        let b = linear(&[0.5, -1.0, 0.25, 2.0, -0.75, 0.5, 1.0, -0.3]);
        let one = ValidateOptions {
            threads: Some(1),
            ..gated()
        };
        let mut r1 = validate(subject("a", &a), subject("b", &b), &one).unwrap();
        let mut r2 = validate(subject("a", &a), subject("b", &b), &gated()).unwrap();
        r1.seconds = 0.0;
        r2.seconds = 0.0;
        r2.threads = 1;
        assert_eq!(r1, r2);
    }

    #[test]
    fn different_signatures_are_refused() {
        let a = linear(&W);
        let mut b = linear(&W);
        b.graph.outputs[0].name = Some("logits".into());
        let err = validate(subject("a", &a), subject("b", &b), &gated())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("different signatures") && err.contains("logits"),
            "{err}"
        );
    }

    #[test]
    fn a_model_tract_cannot_run_is_not_validated() {
        let a = linear(&W);
        let mut b = linear(&W);
        let id = b.graph.node_ids()[0];
        b.graph
            .update_node(id, |n| n.op_type = Some("MatMulFancy".into()));
        let r = validate(subject("a", &a), subject("b", &b), &gated()).unwrap();
        assert_eq!(r.verdict, Verdict::NotValidated);
        assert!(!r.verdict.ok());
        let msg = r.failure_message().unwrap();
        assert!(
            msg.contains("\"mm\"") && msg.contains("MatMulFancy"),
            "{msg}"
        );
    }

    #[test]
    fn config_ranges_are_checked() {
        let mut c = ValidateConfig::default();
        assert!(c.check().is_ok());
        c.gates.min_cosine = Some(2.0);
        assert_eq!(c.check().unwrap_err().0, "gates.min_cosine");
        c.gates.min_cosine = None;
        c.dims.insert("batch".into(), 0);
        assert_eq!(c.check().unwrap_err().0, "dims.batch");
    }
}
