//! `distill-head`: grafts a frozen teacher and a knowledge-distillation loss
//! onto the student, so the result is a training-ready ONNX graph whose first
//! output is the loss.
//!
//! ```text
//! before:  x ─ student ─ s
//! after:   x ─┬─ student ─────────── s ──────────┬─▶ s (unchanged output)
//!             └─ teacher/… (prefixed, frozen) ─ t ┴─ loss head ─▶ loss, kd_loss, ce_loss, feature_loss_i
//!    labels ─────────────────────────────────────┘   (only with `labels:`)
//! ```
//!
//! **Teacher.** `teacher:` is a path to an ONNX model (a relative path is taken
//! from the pipeline file's folder, like `validate.data`; library callers set
//! `PassContext::pipeline_dir`, else the working directory) or `input`: the
//! model as it entered the pipeline, before the passes ahead of this one
//! (`prune → distill-head: { teacher: input }` needs no second file). The pass
//! manager keeps that model only when a pass asks for it, as a clone of the
//! IR whose tensors share the input file's bytes.
//!
//! **Merging.** Only the teacher nodes the loss reads are grafted. Every
//! teacher name gets `teacher_prefix` (default `teacher/`): node names, values,
//! initializers, sparse initializers, value_info, quantization annotations,
//! subgraphs (their own names and the outer values they capture). The
//! teacher's run-time inputs read the student's inputs of the same name, or
//! the ones `inputs:` maps them to (types must agree). A name that, prefixed,
//! already exists in the student is an error. Opset imports: equal versions
//! are kept; a default-domain version is raised to the higher one unless an
//! op of the lower side changed meaning in between (Softmax at 13, ReduceSum
//! and Squeeze at 13, ReduceMean at 18, ...: the error names the op and both
//! opsets); custom domains are added, and must agree where both import them.
//! Model-local functions are carried (an identical one is shared). Teacher
//! tensors keep their bytes: no weight is copied (external data is mapped).
//!
//! **Loss** (core ops; log-probabilities by LogSoftmax, never Log(Softmax)).
//! For a pair of student logits `s` and teacher logits `t`, class axis `c`
//! (default: last), temperature `T`:
//!
//! ```text
//! kd  = T² · (1/P) · Σ_positions Σ_c softmax(t/T)_c · (log_softmax(t/T)_c − log_softmax(s/T)_c)
//! ce  = (1/P) · Σ_positions −log_softmax(s)[label]                      (T = 1)
//! loss = α · kd + (1 − α) · ce + Σ_i weight_i · feature_i
//! ```
//!
//! `P` is the number of positions: every element of the logits' shape except
//! the class axis. For rank-2 logits `[N, C]`, `P = N`, and `kd` equals
//! PyTorch's `KLDivLoss(reduction="batchmean")(log_softmax(s/T), softmax(t/T))·T²`
//! and `ce` equals `CrossEntropyLoss()(s, labels)`. For rank-3 logits `[N, L, C]`
//! (class axis last), `P = N·L`: the mean over all positions, as if the logits
//! were flattened to `[N·L, C]` first (PyTorch's batchmean on the unflattened
//! tensor divides by `N` only). The T² factor keeps the soft-target gradients'
//! magnitude independent of `T` (Hinton et al. 2015). With several `pairs`,
//! `kd` is their sum and `ce` uses the first pair's student output. Without
//! `labels` there is no `ce` term and `alpha` must be 1.
//!
//! Feature terms (`features:`) compare a student tensor `p` (optionally
//! projected on its last axis by a trainable `x @ W + b`) with a teacher
//! tensor `t`: `mse = mean((p − t)²)` over all elements, or
//! `cosine = 1 − mean over positions of cos(p, t)` along the last axis.
//! `projection: linear` initialises `W, b` by least squares
//! (`min ‖[X 1]·[W; b] − Y‖²`, normal equations with a 1e-6 relative ridge,
//! solved by `linalg::solve_spd`) from the calibration samples when
//! `whittle run --data` is given, else to identity and zero where the widths
//! agree (an error where they do not).
//!
//! `soft_targets: input` embeds no teacher: each teacher value the loss reads
//! becomes a graph input `<teacher_prefix><name>` for precomputed teacher
//! outputs (raw logits, before the temperature), typed like the teacher's
//! output (or the student's, without a teacher).
//!
//! **Outputs.** `loss` (a scalar) first, then `kd_loss`, `ce_loss` (with
//! labels), `feature_loss_0`, … (unweighted), then the student's outputs,
//! unchanged and computed by the same nodes (bit-identical). With `labels`,
//! a new input of that name and integer type, shaped like the logits without
//! the class axis.
//!
//! **Parameters.** `whittle.requires_grad` and `whittle.frozen_params` in the
//! model's metadata_props (and in the run report): JSON arrays of initializer
//! names, the two lists onnxruntime's `generate_artifacts(requires_grad=…,
//! frozen_params=…)` takes. Trainable: the student's float initializers
//! (except BatchNormalization running mean and variance, Clip bounds and
//! Resize/Upsample scales, which have no gradient), filtered by `trainable:`
//! include/exclude (names or `{ regex: … }`), plus the projections. Frozen:
//! every other float initializer (all of the teacher's). The head's own
//! constants are Constant nodes, not parameters.
//!
//! Exactness: the student's computation is untouched; the loss values are
//! those of the formula in float32 arithmetic.

mod loss;
mod merge;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::select::{check_patterns, Matchers, NodeMatch};
use super::{
    parse_config, Config, ConfigError, Pass, PassContext, PassError, PassInfo, PassReport,
};
use crate::ir::{DataType, Dim, KeyValue, Model, Tensor, TypeInfo, ValueInfo};

use loss::Head;

/// Registry entry.
pub const INFO: PassInfo = PassInfo {
    name: "distill-head",
    summary: "graft a frozen teacher and a knowledge-distillation loss onto the student (training-ready graph)",
    doc: include_str!("distill_head.rs"),
    schema: super::schema_of::<DistillHead>,
    build: |o| Ok(Box::new(parse_config::<DistillHead>(o)?)),
};

/// Options of `distill-head`.
#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DistillHead {
    /// The teacher: a path to an ONNX model (relative to the pipeline file's
    /// folder), or `input` (the model as it entered the pipeline). Required
    /// unless `soft_targets: input`.
    pub teacher: Option<String>,
    /// Prefix of every teacher name in the merged graph.
    pub teacher_prefix: String,
    /// Teacher input -> student input it reads (default: the student input of
    /// the same name).
    pub inputs: BTreeMap<String, String>,
    /// Softmax temperature `T` of the distillation term (> 0).
    pub temperature: f64,
    /// Weight `α` of the distillation term; `1 − α` weighs cross-entropy
    /// (default: 0.5 with `labels`, else 1, the only value allowed without).
    pub alpha: Option<f64>,
    /// Student output ↔ teacher output pairs (default: outputs paired by
    /// position where their shapes agree).
    pub pairs: Vec<OutputPair>,
    /// The class axis of the logits (negative counts from the end).
    pub axis: i64,
    /// Adds the cross-entropy term with a new input of class labels.
    pub labels: Option<Labels>,
    /// Feature-matching terms between intermediate tensors.
    pub features: Vec<Feature>,
    /// `embed` grafts the teacher; `input` adds graph inputs for precomputed
    /// teacher outputs instead.
    pub soft_targets: SoftTargets,
    /// Which student initializers are trainable.
    pub trainable: Trainable,
}

impl Default for DistillHead {
    fn default() -> Self {
        DistillHead {
            teacher: None,
            teacher_prefix: "teacher/".into(),
            inputs: BTreeMap::new(),
            temperature: 1.0,
            alpha: None,
            pairs: Vec::new(),
            axis: -1,
            labels: None,
            features: Vec::new(),
            soft_targets: SoftTargets::Embed,
            trainable: Trainable::default(),
        }
    }
}

/// One student output and the teacher output it learns from.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OutputPair {
    /// The student's output (logits).
    pub student: String,
    /// The teacher's output (logits).
    pub teacher: String,
}

/// The labels input of the cross-entropy term.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Labels {
    /// Name of the new graph input.
    #[serde(default = "labels")]
    pub name: String,
    /// Its element type: `int64` or `int32` (class indices).
    #[serde(default = "int64")]
    pub dtype: String,
}

fn labels() -> String {
    "labels".into()
}

fn int64() -> String {
    "int64".into()
}

/// A feature-matching term.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Feature {
    /// The student tensor.
    pub student: String,
    /// The teacher tensor (its name in the teacher model).
    pub teacher: String,
    /// `mse` or `cosine`.
    #[serde(default)]
    pub loss: FeatureLoss,
    /// Weight of the term in `loss`.
    #[serde(default = "one")]
    pub weight: f64,
    /// `none`, or `linear`: a trainable `x @ W + b` on the student's last axis.
    #[serde(default)]
    pub projection: Projection,
}

fn one() -> f64 {
    1.0
}

/// How a feature pair is compared.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum FeatureLoss {
    /// Mean squared error over all elements.
    #[default]
    Mse,
    /// One minus the mean cosine similarity along the last axis.
    Cosine,
}

/// The projection of a student feature.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum Projection {
    /// Compare as is (widths must agree).
    #[default]
    None,
    /// A trainable MatMul + bias, initialised by least squares.
    Linear,
}

/// Where the teacher's outputs come from.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum SoftTargets {
    /// Graft the teacher into the graph.
    #[default]
    Embed,
    /// Graph inputs for precomputed teacher outputs.
    Input,
}

/// Include/exclude filters over the student's initializer names.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Trainable {
    /// Only these are trainable (default: every student float weight):
    /// exact names or `{ regex: "..." }`.
    pub include: Vec<NodeMatch>,
    /// Never trainable (frozen): exact names or `{ regex: "..." }`.
    pub exclude: Vec<NodeMatch>,
}

fn err(field: &str, message: String) -> ConfigError {
    ConfigError {
        field: field.into(),
        message,
    }
}

impl DistillHead {
    fn alpha(&self) -> f64 {
        self.alpha
            .unwrap_or(if self.labels.is_some() { 0.5 } else { 1.0 })
    }
}

impl Config for DistillHead {
    fn check(&self) -> Result<(), ConfigError> {
        if self.teacher.is_none() && self.soft_targets == SoftTargets::Embed {
            return Err(err(
                "teacher",
                "a teacher is required: a path to an ONNX model, or `input` (the pipeline's input model); or set `soft_targets: input`".into(),
            ));
        }
        if self.teacher_prefix.is_empty() {
            return Err(err("teacher_prefix", "the prefix must not be empty".into()));
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(err(
                "temperature",
                format!("{} is not a positive temperature", self.temperature),
            ));
        }
        let alpha = self.alpha();
        if !(0.0..=1.0).contains(&alpha) {
            return Err(err("alpha", format!("{alpha} is outside [0, 1]")));
        }
        if alpha < 1.0 && self.labels.is_none() {
            return Err(err(
                "alpha",
                format!("alpha {alpha} < 1 weighs a cross-entropy term, which needs labels: add `labels: {{ name: labels, dtype: int64 }}` or set `alpha: 1`"),
            ));
        }
        if let Some(l) = &self.labels {
            if l.name.is_empty() {
                return Err(err("labels.name", "the labels input needs a name".into()));
            }
            if !matches!(l.dtype.as_str(), "int64" | "int32") {
                return Err(err(
                    "labels.dtype",
                    format!(
                        "{:?} is not an integer type; class labels are `int64` or `int32` indices",
                        l.dtype
                    ),
                ));
            }
        }
        for (i, f) in self.features.iter().enumerate() {
            if !(f.weight.is_finite() && f.weight >= 0.0) {
                return Err(err(
                    &format!("features[{i}].weight"),
                    format!("{} is not a non-negative weight", f.weight),
                ));
            }
        }
        check_patterns(&self.trainable.include, "trainable.include")?;
        check_patterns(&self.trainable.exclude, "trainable.exclude")?;
        Ok(())
    }
}

fn matches(list: &[NodeMatch], name: &str) -> bool {
    Matchers::new(list).any(name)
}

/// The teacher model, loaded or taken from the pipeline's input.
fn load_teacher(spec: &str, ctx: &PassContext) -> Result<Arc<Model>, PassError> {
    if spec == "input" {
        return ctx.pipeline_input.clone().ok_or_else(|| {
            PassError::Model(
                "teacher: input needs the pipeline's input model, which the pass manager keeps for this pass; run it through the pass manager (whittle run)".into(),
            )
        });
    }
    let path = PathBuf::from(spec);
    let path = match &ctx.pipeline_dir {
        Some(dir) if path.is_relative() => dir.join(path),
        _ => path,
    };
    if !path.is_file() {
        return Err(PassError::Model(format!(
            "teacher: {} does not exist (a relative path is taken from the pipeline file's folder)",
            path.display()
        )));
    }
    let model = crate::onnx::load(&path)
        .map_err(|e| PassError::Model(format!("teacher {}: {e}", path.display())))?;
    crate::ir::verify(&model).map_err(|e| {
        PassError::Model(format!(
            "teacher {}: invalid model: {}",
            path.display(),
            e.problems.join("; ")
        ))
    })?;
    Ok(Arc::new(model))
}

fn shape_text(t: &Option<TypeInfo>) -> String {
    t.as_ref().map_or("untyped".into(), |t| t.to_string())
}

/// A resolved loss pair: student value, teacher value (teacher's name), types.
struct Pair {
    student: String,
    teacher: String,
    ty: Option<TypeInfo>,
}

impl Pass for DistillHead {
    fn needs_pipeline_input(&self) -> bool {
        self.teacher.as_deref() == Some("input")
    }

    fn run(&self, model: &mut Model, ctx: &PassContext) -> Result<PassReport, PassError> {
        let mut report = PassReport::with_counters(&[
            "teacher_nodes",
            "teacher_initializers",
            "loss_nodes",
            "pairs",
            "feature_terms",
            "trainable",
            "frozen",
        ]);
        if model.graph.is_output("loss") || model.graph.defines("loss") {
            return Err(PassError::Model(
                "the model already has a value named \"loss\" (was distill-head run twice?)".into(),
            ));
        }
        let teacher = match &self.teacher {
            Some(spec) => Some(load_teacher(spec, ctx)?),
            None => None,
        };
        let student_outputs = model.graph.outputs.clone();
        let student_floats: Vec<String> = model
            .graph
            .initializers()
            .iter()
            .filter(|t| t.dtype().is_float())
            .map(|t| t.name().to_string())
            .collect();

        // Pairs.
        let teacher_type = |name: &str| teacher.as_ref().and_then(|t| t.graph.value_type(name));
        let mut pairs = Vec::new();
        if self.pairs.is_empty() {
            if let Some(t) = &teacher {
                let mut tried = Vec::new();
                for (s, tv) in student_outputs.iter().zip(&t.graph.outputs) {
                    let ok = matches!((&s.ty, &tv.ty), (Some(a), Some(b)) if merge::compatible(a, b))
                        && s.ty.as_ref().and_then(TypeInfo::tensor_elem) == Some(DataType::Float);
                    if ok {
                        pairs.push(Pair {
                            student: s.name().into(),
                            teacher: tv.name().into(),
                            ty: s.ty.clone(),
                        });
                    } else {
                        tried.push(format!(
                            "{:?} {} vs {:?} {}",
                            s.name(),
                            shape_text(&s.ty),
                            tv.name(),
                            shape_text(&tv.ty)
                        ));
                    }
                }
                if pairs.is_empty() {
                    return Err(PassError::Model(format!(
                    "no student output pairs with a teacher output of the same float shape by position ({}); name the pairs with `pairs: [{{ student: ..., teacher: ... }}]`",
                    if tried.is_empty() { "no outputs".into() } else { tried.join("; ") }
                )));
                }
                for t in tried {
                    report
                        .warnings
                        .push(format!("outputs not paired (shapes differ): {t}"));
                }
            } else {
                // soft_targets: input without a teacher: one input per student output.
                for o in &student_outputs {
                    pairs.push(Pair {
                        student: o.name().into(),
                        teacher: o.name().into(),
                        ty: o.ty.clone(),
                    });
                }
            }
        } else {
            for (i, p) in self.pairs.iter().enumerate() {
                let Some(s) = student_outputs.iter().find(|o| o.name() == p.student) else {
                    return Err(PassError::Model(format!(
                        "pairs[{i}].student: the student has no output {:?}",
                        p.student
                    )));
                };
                let tty = teacher_type(&p.teacher);
                if let Some(t) = &teacher {
                    if !t.graph.defines(&p.teacher) && !t.graph.is_output(&p.teacher) {
                        return Err(PassError::Model(format!(
                            "pairs[{i}].teacher: the teacher has no tensor {:?}",
                            p.teacher
                        )));
                    }
                }
                if let (Some(a), Some(b)) = (&s.ty, &tty) {
                    if !merge::compatible(a, b) {
                        return Err(PassError::Model(format!(
                            "pairs[{i}]: student output {:?} is {a} but teacher output {:?} is {b}",
                            p.student, p.teacher
                        )));
                    }
                }
                pairs.push(Pair {
                    student: p.student.clone(),
                    teacher: p.teacher.clone(),
                    ty: s.ty.clone(),
                });
            }
        }
        self.finish(
            model,
            teacher.as_deref(),
            pairs,
            student_outputs,
            student_floats,
            ctx,
            report,
        )
    }
}

impl DistillHead {
    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        model: &mut Model,
        teacher: Option<&Model>,
        pairs: Vec<Pair>,
        student_outputs: Vec<ValueInfo>,
        student_floats: Vec<String>,
        ctx: &PassContext,
        mut report: PassReport,
    ) -> Result<PassReport, PassError> {
        for f in &self.features {
            if !model.graph.defines(&f.student) {
                return Err(PassError::Model(format!(
                    "features: the student has no tensor {:?}",
                    f.student
                )));
            }
        }
        // Teacher values the loss reads.
        let mut needed: Vec<String> = pairs.iter().map(|p| p.teacher.clone()).collect();
        needed.extend(self.features.iter().map(|f| f.teacher.clone()));
        let mut seen = BTreeSet::new();
        needed.retain(|v| seen.insert(v.clone()));

        let merged: BTreeMap<String, String> = match (self.soft_targets, teacher) {
            (SoftTargets::Embed, Some(t)) => {
                let (names, rec) =
                    merge::graft(model, t, &self.teacher_prefix, &self.inputs, &needed)?;
                report.count("teacher_nodes", rec.nodes as i64);
                report.count("teacher_initializers", rec.initializers.len() as i64);
                report.count("functions_carried", rec.functions as i64);
                for (d, a, b) in &rec.opsets_raised {
                    report
                        .details
                        .push(serde_json::json!({ "opset_raised": d, "from": a, "to": b }));
                }
                report
                    .details
                    .push(serde_json::json!({ "teacher_inputs": rec.wired }));
                needed.iter().cloned().zip(names).collect()
            }
            (SoftTargets::Embed, None) => {
                return Err(PassError::Model(
                    "a teacher is required with soft_targets: embed".into(),
                ))
            }
            (SoftTargets::Input, _) => {
                let mut map = BTreeMap::new();
                for v in &needed {
                    let name = format!("{}{v}", self.teacher_prefix);
                    if model.graph.defines(&name) || model.graph.is_output(&name) {
                        return Err(PassError::Model(format!(
                            "name clash after prefixing: the soft-target input {name:?} already exists in the student; choose another `teacher_prefix`"
                        )));
                    }
                    let ty = teacher
                        .and_then(|t| t.graph.value_type(v))
                        .or_else(|| pairs.iter().find(|p| &p.teacher == v).and_then(|p| p.ty.clone()))
                        .or_else(|| {
                            self.features
                                .iter()
                                .find(|f| &f.teacher == v && f.projection == Projection::None)
                                .and_then(|f| model.graph.value_type(&f.student))
                        })
                        .ok_or_else(|| {
                            PassError::Model(format!(
                                "soft_targets: input: the type of teacher tensor {v:?} is unknown (give a teacher model that declares it)"
                            ))
                        })?;
                    model.graph.inputs.push(ValueInfo::new(name.clone(), ty));
                    map.insert(v.clone(), name);
                    report.count("soft_target_inputs", 1);
                }
                map
            }
        };

        let opset = model.opset_version("").unwrap_or(1);
        let rank_of =
            |ty: &Option<TypeInfo>| ty.as_ref().and_then(|t| t.tensor_shape()).map(<[Dim]>::len);

        // Projections (trainable), before the head so the probe sees the merged graph only.
        let mut projections = Vec::new();
        let mut proj_names = Vec::new();
        for (i, f) in self.features.iter().enumerate() {
            if f.projection == Projection::Linear {
                let (w, b) = self.projection(model, f, &merged[&f.teacher], i, ctx, &mut report)?;
                proj_names.push(w.name().to_string());
                proj_names.push(b.name().to_string());
                projections.push(Some((w.name().to_string(), b.name().to_string())));
                model.graph.add_initializer(w);
                model.graph.add_initializer(b);
            } else {
                projections.push(None);
            }
        }

        let mut head = Head {
            g: &mut model.graph,
            opset,
            nodes: 0,
        };
        let mut kd_terms = Vec::new();
        let mut axis0 = None;
        for (i, p) in pairs.iter().enumerate() {
            let rank = rank_of(&p.ty).ok_or_else(|| {
                PassError::Model(format!(
                    "the rank of student output {:?} is unknown",
                    p.student
                ))
            })?;
            if rank < 2 {
                return Err(PassError::Model(format!(
                    "student output {:?} has rank {rank}; logits need a batch axis and a class axis",
                    p.student
                )));
            }
            let axis = if self.axis < 0 {
                self.axis + rank as i64
            } else {
                self.axis
            };
            if !(0..rank as i64).contains(&axis) {
                return Err(PassError::Model(format!(
                    "axis {} is out of range for student output {:?} of rank {rank}",
                    self.axis, p.student
                )));
            }
            if opset < 13 && axis != rank as i64 - 1 {
                return Err(PassError::Model(format!(
                    "opset {opset} LogSoftmax flattens the axes from `axis` on; the class axis must be the last one below opset 13"
                )));
            }
            axis0.get_or_insert(axis);
            let tag = if pairs.len() == 1 {
                "kd".to_string()
            } else {
                format!("kd{i}")
            };
            kd_terms.push(head.kd(
                &p.student,
                &merged[&p.teacher],
                self.temperature,
                axis,
                &tag,
            ));
            report.details.push(serde_json::json!({ "pair": { "student": p.student, "teacher": merged[&p.teacher] } }));
        }
        report.count("pairs", pairs.len() as i64);
        head.sum_named(&kd_terms, "kd_loss");
        let alpha = self.alpha();
        let mut terms = vec![head.scaled("kd_loss", alpha, "alpha_kd")];
        let mut new_outputs = vec![
            ValueInfo::new("loss", TypeInfo::tensor(DataType::Float, vec![])),
            ValueInfo::new("kd_loss", TypeInfo::tensor(DataType::Float, vec![])),
        ];
        let mut new_inputs = Vec::new();
        if let Some(l) = &self.labels {
            if opset < 11 {
                return Err(PassError::Model(format!(
                    "labels: the cross-entropy term uses GatherElements, which needs opset 11 (the model imports {opset})"
                )));
            }
            let p = &pairs[0];
            let axis = axis0.unwrap_or(0);
            let shape: Vec<Dim> =
                p.ty.as_ref()
                    .and_then(|t| t.tensor_shape())
                    .map(|s| {
                        s.iter()
                            .enumerate()
                            .filter(|(i, _)| *i as i64 != axis)
                            .map(|(_, d)| d.clone())
                            .collect()
                    })
                    .unwrap_or_default();
            let dt = if l.dtype == "int32" {
                DataType::Int32
            } else {
                DataType::Int64
            };
            if head.g.defines(&l.name) || head.g.is_output(&l.name) {
                return Err(PassError::Model(format!(
                    "labels.name: the student already has a value named {:?}",
                    l.name
                )));
            }
            new_inputs.push(ValueInfo::new(l.name.clone(), TypeInfo::tensor(dt, shape)));
            let ce = head.cross_entropy(&p.student, &l.name, dt == DataType::Int32, axis);
            head.op_named("Identity", &[&ce], "ce_loss");
            terms.push(head.scaled("ce_loss", 1.0 - alpha, "ce_weighted"));
            new_outputs.push(ValueInfo::new(
                "ce_loss",
                TypeInfo::tensor(DataType::Float, vec![]),
            ));
        }
        for (i, (f, proj)) in self.features.iter().zip(&projections).enumerate() {
            let tag = format!("feature{i}");
            let s = match proj {
                Some((w, b)) => head.linear(&f.student, w, b, &tag),
                None => f.student.clone(),
            };
            let t = &merged[&f.teacher];
            let v = match f.loss {
                FeatureLoss::Mse => head.mse(&s, t, &tag),
                FeatureLoss::Cosine => head.cosine(&s, t, &tag),
            };
            let out = format!("feature_loss_{i}");
            head.op_named("Identity", &[&v], &out);
            terms.push(head.scaled(&out, f.weight, &format!("{tag}_weighted")));
            new_outputs.push(ValueInfo::new(
                out,
                TypeInfo::tensor(DataType::Float, vec![]),
            ));
            report.count("feature_terms", 1);
        }
        head.sum_named(&terms, "loss");
        report.count("loss_nodes", head.nodes as i64);

        model.graph.inputs.extend(new_inputs);
        new_outputs.extend(student_outputs);
        model.graph.outputs = new_outputs;

        // Parameters.
        let no_grad = no_gradient_inputs(&model.graph);
        let mut requires_grad = Vec::new();
        let mut frozen = Vec::new();
        let student_set: BTreeSet<&String> = student_floats.iter().collect();
        for name in &student_floats {
            let chosen = !no_grad.contains(name)
                && (self.trainable.include.is_empty() || matches(&self.trainable.include, name))
                && !matches(&self.trainable.exclude, name);
            if chosen {
                requires_grad.push(name.clone());
            } else {
                frozen.push(name.clone());
            }
        }
        requires_grad.extend(proj_names.iter().cloned());
        for t in model.graph.initializers() {
            let n = t.name().to_string();
            if t.dtype().is_float() && !student_set.contains(&n) && !proj_names.contains(&n) {
                frozen.push(n);
            }
        }
        report.count("trainable", requires_grad.len() as i64);
        report.count("frozen", frozen.len() as i64);
        let json = |v: &Vec<String>| serde_json::to_string(v).unwrap_or_default();
        model.metadata_props.retain(|kv| {
            kv.key() != "whittle.requires_grad" && kv.key() != "whittle.frozen_params"
        });
        model
            .metadata_props
            .push(KeyValue::new("whittle.requires_grad", json(&requires_grad)));
        model
            .metadata_props
            .push(KeyValue::new("whittle.frozen_params", json(&frozen)));
        report.summary.push(format!(
            "loss = {alpha}·kd (T = {}){}{}; {} trainable, {} frozen initializers",
            self.temperature,
            if self.labels.is_some() {
                format!(" + {}·ce", 1.0 - alpha)
            } else {
                String::new()
            },
            self.features
                .iter()
                .enumerate()
                .map(|(i, f)| format!(" + {}·feature_loss_{i}", f.weight))
                .collect::<String>(),
            requires_grad.len(),
            frozen.len()
        ));
        report.details.push(serde_json::json!({
            "requires_grad": requires_grad,
            "frozen_params": frozen,
        }));
        Ok(report)
    }

    /// The trainable projection of feature `i`: `W [Ds, Dt]` and `b [Dt]`.
    fn projection(
        &self,
        model: &Model,
        f: &Feature,
        teacher_value: &str,
        i: usize,
        ctx: &PassContext,
        report: &mut PassReport,
    ) -> Result<(Tensor, Tensor), PassError> {
        let (wn, bn) = (
            model
                .graph
                .unique_name(&format!("distill/feature{i}/projection_weight")),
            model
                .graph
                .unique_name(&format!("distill/feature{i}/projection_bias")),
        );
        let width = |v: &str| {
            model.graph.value_type(v).and_then(|t| {
                t.tensor_shape()
                    .and_then(|s| s.last().and_then(Dim::as_known))
            })
        };
        let fit = match (&ctx.data, self.soft_targets) {
            (Some(data), SoftTargets::Embed) => {
                Some(fit_projection(model, &f.student, teacher_value, data, ctx)?)
            }
            _ => None,
        };
        let (w, b, ds, dt) = match fit {
            Some(fit) => {
                report.details.push(serde_json::json!({
                    "feature": i,
                    "projection": "least squares",
                    "samples": fit.rows,
                    "relative_residual": fit.relative_residual,
                }));
                (fit.w, fit.b, fit.ds, fit.dt)
            }
            None => {
                let (ds, dt) = match (width(&f.student), width(teacher_value)) {
                    (Some(a), Some(b)) => (a as usize, b as usize),
                    _ => {
                        return Err(PassError::Model(format!(
                            "features[{i}]: the widths of {:?} and {teacher_value:?} are not declared; give calibration data (--data) to fit the projection",
                            f.student
                        )))
                    }
                };
                if ds != dt {
                    return Err(PassError::Model(format!(
                        "features[{i}]: without calibration data (--data) the projection starts as identity, which needs equal widths; the student's {:?} has {ds}, the teacher's {teacher_value:?} has {dt}",
                        f.student
                    )));
                }
                let mut w = vec![0f32; ds * dt];
                for k in 0..ds {
                    w[k * dt + k] = 1.0;
                }
                report
                    .details
                    .push(serde_json::json!({ "feature": i, "projection": "identity" }));
                (w, vec![0f32; dt], ds, dt)
            }
        };
        Ok((
            Tensor::from_f32(wn, vec![ds as i64, dt as i64], &w),
            Tensor::from_f32(bn, vec![dt as i64], &b),
        ))
    }
}

/// Initializers read by inputs that have no gradient (BatchNormalization's
/// running statistics, Clip bounds, Resize/Upsample scales).
fn no_gradient_inputs(g: &crate::ir::Graph) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (_, n) in g.nodes() {
        let slots: &[usize] = match (n.domain(), n.op_type()) {
            ("", "BatchNormalization") => &[3, 4],
            ("", "Clip") => &[1, 2],
            ("", "Resize") => &[1, 2, 3],
            ("", "Upsample") => &[1],
            _ => &[],
        };
        for &s in slots {
            if let Some(v) = n.inputs.get(s).filter(|v| !v.is_empty()) {
                if g.initializer(v).is_some() {
                    out.insert(v.clone());
                }
            }
        }
    }
    out
}

struct Fit {
    w: Vec<f32>,
    b: Vec<f32>,
    ds: usize,
    dt: usize,
    rows: usize,
    relative_residual: f64,
}

/// Least squares `[X 1]·[W; b] ≈ Y` over the calibration samples, where the
/// rows of `X` and `Y` are the last-axis vectors of the student and teacher
/// features.
fn fit_projection(
    model: &Model,
    student: &str,
    teacher: &str,
    data: &std::path::Path,
    ctx: &PassContext,
) -> Result<Fit, PassError> {
    use crate::data::{load_samples, InputSpec};
    use crate::exec::{run_samples, Runner};
    let mut probe = model.clone();
    probe.graph.outputs = vec![
        ValueInfo {
            name: Some(student.into()),
            ..ValueInfo::default()
        },
        ValueInfo {
            name: Some(teacher.into()),
            ..ValueInfo::default()
        },
    ];
    let inputs = InputSpec::of_graph(&probe.graph).map_err(PassError::Model)?;
    let samples = load_samples(data, &inputs, &ctx.dims, None)
        .map_err(|e| PassError::Model(format!("projection: {e}")))?;
    let runner = Runner::from_model("projection probe", &probe, ctx.model_dir.as_deref())
        .map_err(|e| PassError::Model(format!("projection: {e}")))?;
    let threads = ctx.threads.unwrap_or_else(crate::exec::default_threads);
    let outs = run_samples(&runner, &samples.samples, threads)
        .map_err(|e| PassError::Model(format!("projection: {e}")))?;
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    let (mut ds, mut dt) = (0, 0);
    for o in &outs {
        let (x, y) = (&o[0], &o[1]);
        if x.dtype != DataType::Float || y.dtype != DataType::Float {
            return Err(PassError::Model(
                "projection: the features must be float32".into(),
            ));
        }
        ds = *x.shape.last().unwrap_or(&1);
        dt = *y.shape.last().unwrap_or(&1);
        if x.len() / ds.max(1) != y.len() / dt.max(1) {
            return Err(PassError::Model(format!(
                "projection: {student:?} {:?} and {teacher:?} {:?} differ in their leading axes",
                x.shape, y.shape
            )));
        }
        xs.extend(x.to_f64());
        ys.extend(y.to_f64());
    }
    let rows = xs.len() / ds.max(1);
    let n = ds + 1;
    // Normal equations of the augmented design [X 1].
    let mut a = vec![0f64; n * n];
    let mut rhs = vec![0f64; n * dt];
    for r in 0..rows {
        let x = &xs[r * ds..(r + 1) * ds];
        let y = &ys[r * dt..(r + 1) * dt];
        let xa = |k: usize| if k < ds { x[k] } else { 1.0 };
        for p in 0..n {
            let xp = xa(p);
            for q in 0..n {
                a[p * n + q] += xp * xa(q);
            }
            for (c, &yc) in y.iter().enumerate() {
                rhs[p * dt + c] += xp * yc;
            }
        }
    }
    let trace: f64 = (0..n).map(|k| a[k * n + k]).sum::<f64>() / n as f64;
    for k in 0..n {
        a[k * n + k] += 1e-6 * trace.max(1e-12);
    }
    let sol = super::linalg::solve_spd(&a, n, &rhs, dt).ok_or_else(|| {
        PassError::Model("projection: the least-squares system is singular".into())
    })?;
    let mut res = 0f64;
    let mut tot = 0f64;
    for r in 0..rows {
        for c in 0..dt {
            let mut pred = sol[ds * dt + c];
            for k in 0..ds {
                pred += xs[r * ds + k] * sol[k * dt + c];
            }
            res += (pred - ys[r * dt + c]).powi(2);
            tot += ys[r * dt + c].powi(2);
        }
    }
    Ok(Fit {
        w: sol[..ds * dt].iter().map(|&v| v as f32).collect(),
        b: sol[ds * dt..].iter().map(|&v| v as f32).collect(),
        ds,
        dt,
        rows,
        relative_residual: (res / tot.max(1e-300)).sqrt(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(y: &str) -> Result<DistillHead, ConfigError> {
        let v: serde_json::Value = serde_saphyr::from_str(y).unwrap();
        parse_config::<DistillHead>(&v)
    }

    #[test]
    fn options_are_checked_with_their_path() {
        assert!(parse("{ teacher: input }").is_ok());
        let e = parse("{ }").unwrap_err();
        assert_eq!(e.field, "teacher");
        let e = parse("{ teacher: input, alpha: 0.5 }").unwrap_err();
        assert_eq!(e.field, "alpha");
        assert!(e.message.contains("needs labels"), "{}", e.message);
        let e = parse("{ teacher: input, labels: { name: lbl, dtype: float } }").unwrap_err();
        assert_eq!(e.field, "labels.dtype");
        assert!(e.message.contains("not an integer type"), "{}", e.message);
        let e = parse("{ teacher: input, temperature: 0 }").unwrap_err();
        assert_eq!(e.field, "temperature");
        let e = parse("{ teacher: input, trainable: { exclude: [{ regex: '(' }] } }").unwrap_err();
        assert_eq!(e.field, "trainable.exclude[0].regex");
        assert_eq!(
            parse("{ teacher: input, labels: { name: lbl } }")
                .unwrap()
                .alpha(),
            0.5
        );
    }
}
