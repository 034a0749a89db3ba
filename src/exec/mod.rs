//! Execution with tract: load a model from the bytes whittle encodes, pin its
//! input shapes, run samples, and return outputs by name.
//!
//! - Models are handed to tract as bytes (`whittle::onnx::encode`), so every
//!   execution also exercises the encoder. External data is resolved by tract
//!   relative to the model's folder, which the caller gives.
//! - tract is told to ignore the graph's `value_info` and output-shape
//!   annotations: exporters write symbolic expressions there (`(height+1)/2`)
//!   that tract keeps as facts and then cannot unify with pinned input dims,
//!   so typing fails although every op is supported. Shapes come from the
//!   inputs instead: each distinct set of input shapes gets its own plan,
//!   typed and optimised for exactly those shapes.
//! - Where tract cannot run a model, the error names the model, the node and
//!   the op: ops tract lacks are found before typing, and typing errors keep
//!   tract's own chain (which names the node). A model is never reported as
//!   validated when tract could not run it.
//!
//! The rest of whittle never sees a tract type: inputs and outputs are
//! [`crate::data::Array`]s.

pub mod metrics;
pub mod validate;

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tract_onnx::prelude::{
    DatumType, Framework, InferenceFact, InferenceModel, InferenceModelExt, IntoRunnable,
    IntoTValue, TValue, TVec, Tensor as TractTensor, TypedModel, TypedRunnableModel,
};

use crate::data::{Array, InputSpec, Sample};
use crate::ir::{DataType, Graph, Model};

/// Errors executing a model with tract.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// tract cannot run the model; `node` and `op` say where when known.
    #[error("{model}: tract cannot run this model: {}{reason}{}", where_(node, op), hint.as_deref().map(|h| format!(" ({h})")).unwrap_or_default())]
    Unsupported {
        /// The model (its path or role).
        model: String,
        /// The node tract stopped at, when known.
        node: Option<String>,
        /// Its op type, when known.
        op: Option<String>,
        /// tract's reason.
        reason: String,
        /// What the user can do about it, when whittle knows.
        hint: Option<String>,
    },
    /// A sample does not fit the model.
    #[error("{model}: sample {sample}: {reason}")]
    Input {
        /// The model.
        model: String,
        /// Which sample.
        sample: usize,
        /// What does not fit.
        reason: String,
    },
    /// tract failed while running a sample.
    #[error("{model}: sample {sample}: tract failed while running: {reason}")]
    Run {
        /// The model.
        model: String,
        /// Which sample.
        sample: usize,
        /// tract's reason.
        reason: String,
    },
    /// The model cannot be described to tract (no typed inputs, ...).
    #[error("{model}: {reason}")]
    Model {
        /// The model.
        model: String,
        /// What is wrong.
        reason: String,
    },
}

fn where_(node: &Option<String>, op: &Option<String>) -> String {
    match (node, op) {
        (Some(n), Some(o)) => format!("node {n:?} (op {o}): "),
        (Some(n), None) => format!("node {n:?}: "),
        (None, Some(o)) => format!("op {o}: "),
        (None, None) => String::new(),
    }
}

/// tract's error chain on one line.
fn chain(e: &tract_onnx::prelude::TractError) -> String {
    let mut parts: Vec<String> = Vec::new();
    for c in e.chain() {
        let s = c.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
    }
    parts.join(": ")
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "tract panicked".into())
}

/// Shapes of one sample's inputs: the key of a plan.
type ShapeKey = Vec<Vec<usize>>;

struct Plans {
    inference: InferenceModel,
    plans: BTreeMap<ShapeKey, Arc<TypedRunnableModel>>,
}

/// A model loaded into tract, ready to run samples of any input shape it accepts.
pub struct Runner {
    label: String,
    inputs: Vec<InputSpec>,
    outputs: Vec<String>,
    if_nodes: Vec<String>,
    /// Node name (as tract names nodes) -> ONNX op type, to name ops in
    /// tract's messages, which use its own op names (`Reduce13`).
    ops: BTreeMap<String, String>,
    /// Optimise plans for speed (tract's declutter and codegen). Off for
    /// models run once on a few samples, where optimising costs more than it saves.
    optimize: bool,
    state: Mutex<Plans>,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("label", &self.label)
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
            .finish()
    }
}

/// The tract ONNX loader as whittle configures it for execution.
fn loader() -> tract_onnx::Onnx {
    tract_onnx::onnx()
        .with_ignore_output_shapes(true)
        .with_ignore_value_info(true)
}

/// A node's name as tract names it: its own, else its first output's.
fn node_name(n: &crate::ir::Node) -> String {
    match n.name() {
        "" => n.outputs.first().cloned().unwrap_or_default(),
        name => name.to_string(),
    }
}

/// Every node of a graph and its subgraphs, depth first.
fn walk<'a>(g: &'a Graph, out: &mut Vec<&'a crate::ir::Node>) {
    for (_, n) in g.nodes() {
        out.push(n);
        for a in &n.attributes {
            for sub in a.graphs() {
                walk(sub, out);
            }
        }
    }
}

impl Runner {
    /// Loads `model` into tract from the bytes whittle encodes for it.
    /// `dir` is the folder external data is relative to (the folder of the
    /// file the model was read from); `label` names the model in errors.
    pub fn from_model(label: &str, model: &Model, dir: Option<&Path>) -> Result<Runner, ExecError> {
        let bytes = crate::onnx::encode(model);
        Runner::from_bytes(label, model, &bytes, dir)
    }

    /// Loads `bytes` (the encoding of `model`, or the file it was read from)
    /// into tract. `model` describes the inputs and outputs and lets whittle
    /// name unsupported ops before tract's typing does.
    pub fn from_bytes(
        label: &str,
        model: &Model,
        bytes: &[u8],
        dir: Option<&Path>,
    ) -> Result<Runner, ExecError> {
        let g = &model.graph;
        let inputs = InputSpec::of_graph(g).map_err(|reason| ExecError::Model {
            model: label.into(),
            reason,
        })?;
        let outputs: Vec<String> = g.outputs.iter().map(|o| o.name().to_string()).collect();
        let onnx = loader();

        // Ops tract has no implementation for would load as placeholders and
        // fail at typing with a less direct message: name them here.
        let mut nodes = Vec::new();
        walk(g, &mut nodes);
        let functions: Vec<(&str, &str)> = model
            .functions
            .iter()
            .map(|f| {
                (
                    f.domain.as_deref().unwrap_or(""),
                    f.name.as_deref().unwrap_or(""),
                )
            })
            .collect();
        for n in &nodes {
            let custom = !matches!(n.domain(), "" | "ai.onnx" | "ai.onnx.ml");
            let is_function = functions
                .iter()
                .any(|&(d, name)| d == n.domain() && name == n.op_type());
            if is_function || custom || !onnx.op_register.0.contains_key(n.op_type()) {
                let reason = if is_function {
                    "it calls a model-local function, which tract does not expand".to_string()
                } else if custom {
                    format!(
                        "tract has no implementation of ops in domain {:?}",
                        n.domain()
                    )
                } else {
                    format!("tract-onnx 0.23.9 has no implementation of {}", n.op_type())
                };
                return Err(ExecError::Unsupported {
                    model: label.into(),
                    node: Some(node_name(n)),
                    op: Some(n.op_type().to_string()),
                    reason,
                    hint: None,
                });
            }
        }
        // tract-onnx reads no sparse_initializer: their users would see an
        // undefined value.
        if let Some(sparse) = g.sparse_initializers.first() {
            let user = nodes
                .iter()
                .find(|n| n.inputs.iter().any(|i| i == sparse.name()));
            return Err(ExecError::Unsupported {
                model: label.into(),
                node: user.map(|n| node_name(n)),
                op: user.map(|n| n.op_type().to_string()),
                reason: format!(
                    "tract-onnx does not read sparse initializers ({:?})",
                    sparse.name()
                ),
                hint: None,
            });
        }
        if let Some(i) = inputs.iter().find(|i| datum_type(i.dtype).is_none()) {
            return Err(ExecError::Unsupported {
                model: label.into(),
                node: None,
                op: None,
                reason: format!("input {i} has an element type tract has no equivalent for"),
                hint: None,
            });
        }
        let if_nodes = nodes
            .iter()
            .filter(|n| n.op_type() == "If")
            .map(|n| node_name(n))
            .collect();

        let unsupported = |reason: String| ExecError::Unsupported {
            model: label.into(),
            node: None,
            op: None,
            reason,
            hint: None,
        };
        let dir_text = dir.map(|d| d.to_string_lossy().into_owned());
        let parsed = catch_unwind(AssertUnwindSafe(|| {
            let proto = onnx.proto_model_for_read(&mut &bytes[..])?;
            onnx.parse(&proto, dir_text.as_deref())
        }))
        .map_err(|p| {
            unsupported(format!(
                "tract panicked while loading: {}",
                panic_message(p)
            ))
        })?
        .map_err(|e| {
            let reason = chain(&e);
            let (node, op) = node_of(&reason);
            ExecError::Unsupported {
                model: label.into(),
                node,
                op,
                reason,
                hint: None,
            }
        })?;
        if !parsed.unresolved_inputs.is_empty() {
            return Err(ExecError::Model {
                model: label.into(),
                reason: format!(
                    "values used but never defined: {}",
                    parsed.unresolved_inputs.join(", ")
                ),
            });
        }
        let inference = parsed.model;
        let n_inputs = inference.input_outlets().map(|o| o.len()).unwrap_or(0);
        if n_inputs != inputs.len() {
            return Err(ExecError::Model {
                model: label.into(),
                reason: format!(
                    "tract sees {n_inputs} run-time inputs, whittle {} ({})",
                    inputs.len(),
                    inputs
                        .iter()
                        .map(|i| i.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        let ops = nodes
            .iter()
            .map(|n| (node_name(n), n.op_type().to_string()))
            .collect();
        Ok(Runner {
            label: label.into(),
            inputs,
            outputs,
            if_nodes,
            ops,
            optimize: true,
            state: Mutex::new(Plans {
                inference,
                plans: BTreeMap::new(),
            }),
        })
    }

    /// Runs the typed model as it is, without tract's optimisation: for
    /// models run once on a few samples (sensitivity analysis variants),
    /// where optimising costs more time than it saves.
    pub fn without_optimization(mut self) -> Runner {
        self.optimize = false;
        self
    }

    /// The model's name in messages.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The run-time inputs, in order.
    pub fn inputs(&self) -> &[InputSpec] {
        &self.inputs
    }

    /// The output names, in order.
    pub fn outputs(&self) -> &[String] {
        &self.outputs
    }

    /// The plan for one set of input shapes, typed and optimised on first use.
    pub fn prepare(&self, sample: &[Array]) -> Result<(), ExecError> {
        self.plan(sample).map(|_| ())
    }

    fn plan(&self, sample: &[Array]) -> Result<Arc<TypedRunnableModel>, ExecError> {
        let key: ShapeKey = sample.iter().map(|a| a.shape.clone()).collect();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = state.plans.get(&key) {
            return Ok(p.clone());
        }
        let mut model = state.inference.clone();
        for (ix, a) in sample.iter().enumerate() {
            let dt = datum_type(a.dtype).ok_or_else(|| ExecError::Model {
                model: self.label.clone(),
                reason: format!(
                    "input {:?}: tract has no {} element type",
                    self.inputs.get(ix).map_or("?", |i| i.name.as_str()),
                    a.dtype
                ),
            })?;
            model
                .set_input_fact(ix, InferenceFact::dt_shape(dt, a.shape.clone()))
                .map_err(|e| self.typing_error(&e))?;
        }
        let built = catch_unwind(AssertUnwindSafe(|| -> Result<_, ExecError> {
            let typed: TypedModel = model.into_typed().map_err(|e| self.typing_error(&e))?;
            // Optimisation only rewrites for speed; when it trips, run the
            // typed model as it is.
            let optimized = if self.optimize {
                typed.clone().into_optimized().ok()
            } else {
                None
            };
            let runnable = match optimized {
                Some(optimized) => optimized.into_runnable(),
                None => typed.into_runnable(),
            };
            runnable.map_err(|e| self.typing_error(&e))
        }))
        .map_err(|p| self.typing_panic(p))??;
        state.plans.insert(key, built.clone());
        Ok(built)
    }

    /// The error for a panic tract raised while typing the model.
    fn typing_panic(&self, p: Box<dyn std::any::Any + Send>) -> ExecError {
        ExecError::Unsupported {
            model: self.label.clone(),
            node: None,
            op: None,
            reason: format!(
                "tract panicked while typing the model: {}",
                panic_message(p)
            ),
            hint: None,
        }
    }

    fn typing_error(&self, e: &tract_onnx::prelude::TractError) -> ExecError {
        let reason = chain(e);
        let (node, op) = node_of(&reason);
        let op = node.as_ref().and_then(|n| self.ops.get(n).cloned()).or(op);
        let hint = (!self.if_nodes.is_empty()).then(|| {
            format!(
                "the model has If nodes ({}); tract types both branches of an If even when the condition is known, so a model whose If depends on an input cannot be typed",
                self.if_nodes.join(", ")
            )
        });
        ExecError::Unsupported {
            model: self.label.clone(),
            node,
            op,
            reason,
            hint,
        }
    }

    /// The shapes tract's typing proves for the outputs when the inputs have
    /// these shapes (in input order), without running anything: `None` for
    /// an output whose shape is not a fixed size (data-dependent).
    pub fn output_shapes(
        &self,
        shapes: &[Vec<usize>],
    ) -> Result<Vec<Option<Vec<usize>>>, ExecError> {
        if shapes.len() != self.inputs.len() {
            return Err(ExecError::Model {
                model: self.label.clone(),
                reason: format!("{} shapes for {} inputs", shapes.len(), self.inputs.len()),
            });
        }
        let mut model = {
            let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            state.inference.clone()
        };
        for (ix, (shape, spec)) in shapes.iter().zip(&self.inputs).enumerate() {
            let dt = datum_type(spec.dtype).ok_or_else(|| ExecError::Model {
                model: self.label.clone(),
                reason: format!(
                    "input {:?}: tract has no {} element type",
                    spec.name, spec.dtype
                ),
            })?;
            model
                .set_input_fact(ix, InferenceFact::dt_shape(dt, shape.clone()))
                .map_err(|e| self.typing_error(&e))?;
        }
        let typed = catch_unwind(AssertUnwindSafe(|| model.into_typed()))
            .map_err(|p| self.typing_panic(p))?
            .map_err(|e| self.typing_error(&e))?;
        let outlets = typed
            .output_outlets()
            .map_err(|e| self.typing_error(&e))?
            .to_vec();
        outlets
            .iter()
            .map(|&o| {
                typed
                    .outlet_fact(o)
                    .map(|f| f.shape.as_concrete().map(|s| s.to_vec()))
                    .map_err(|e| self.typing_error(&e))
            })
            .collect()
    }

    /// Runs one sample (`index` names it in errors) and returns the outputs
    /// in the model's output order.
    pub fn run(&self, index: usize, sample: &[Array]) -> Result<Vec<Array>, ExecError> {
        if sample.len() != self.inputs.len() {
            return Err(ExecError::Input {
                model: self.label.clone(),
                sample: index,
                reason: format!("{} arrays for {} inputs", sample.len(), self.inputs.len()),
            });
        }
        let plan = self.plan(sample)?;
        let run_error = |reason: String| ExecError::Run {
            model: self.label.clone(),
            sample: index,
            reason,
        };
        let mut inputs: TVec<TValue> = TVec::new();
        for (a, spec) in sample.iter().zip(&self.inputs) {
            let t = to_tract(a).map_err(|reason| ExecError::Input {
                model: self.label.clone(),
                sample: index,
                reason: format!("input {:?}: {reason}", spec.name),
            })?;
            inputs.push(t.into_tvalue());
        }
        let outputs = catch_unwind(AssertUnwindSafe(|| plan.run(inputs)))
            .map_err(|p| run_error(format!("tract panicked: {}", panic_message(p))))?
            .map_err(|e| run_error(chain(&e)))?;
        outputs
            .iter()
            .zip(&self.outputs)
            .map(|(t, name)| from_tract(t).map_err(|r| run_error(format!("output {name:?}: {r}"))))
            .collect()
    }
}

/// Pulls the node name and op out of tract's messages: `... node #3 "conv1"
/// Conv ...` (analysis) or `Building node conv1 (Conv): ...` (loading).
fn node_of(reason: &str) -> (Option<String>, Option<String>) {
    if let Some(at) = reason.find("Building node ") {
        let rest = &reason[at + "Building node ".len()..];
        if let (Some(open), Some(close)) = (rest.find(" ("), rest.find("):")) {
            if open < close {
                let name = rest[..open].trim();
                let op = &rest[open + 2..close];
                return (
                    (!name.is_empty()).then(|| name.to_string()),
                    Some(op.to_string()),
                );
            }
        }
    }
    let Some(at) = reason.find("node #") else {
        return (None, None);
    };
    let rest = &reason[at..];
    let Some(q1) = rest.find('"') else {
        return (None, None);
    };
    let Some(len) = rest[q1 + 1..].find('"') else {
        return (None, None);
    };
    let name = rest[q1 + 1..q1 + 1 + len].to_string();
    let op = rest[q1 + 2 + len..]
        .split(|c: char| c.is_whitespace() || c == ':' || c == ',')
        .find(|w| !w.is_empty())
        .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric()).to_string())
        .filter(|w| !w.is_empty());
    (Some(name), op)
}

/// tract's element type for a whittle one.
fn datum_type(dt: DataType) -> Option<DatumType> {
    Some(match dt {
        DataType::Bool => DatumType::Bool,
        DataType::Uint8 => DatumType::U8,
        DataType::Uint16 => DatumType::U16,
        DataType::Uint32 => DatumType::U32,
        DataType::Uint64 => DatumType::U64,
        DataType::Int8 => DatumType::I8,
        DataType::Int16 => DatumType::I16,
        DataType::Int32 => DatumType::I32,
        DataType::Int64 => DatumType::I64,
        DataType::Float16 => DatumType::F16,
        DataType::Float => DatumType::F32,
        DataType::Double => DatumType::F64,
        _ => return None,
    })
}

fn to_tract(a: &Array) -> Result<TractTensor, String> {
    let dt = datum_type(a.dtype).ok_or_else(|| format!("tract has no {} element type", a.dtype))?;
    // SAFETY: `Array::new` checked that `data` holds exactly
    // `shape.product()` elements of `dtype`, and bools are stored as 0 or 1,
    // the only byte values tract's bool may hold.
    unsafe { TractTensor::from_raw_dt(dt, &a.shape, &a.data) }.map_err(|e| chain(&e))
}

fn from_tract(t: &TractTensor) -> Result<Array, String> {
    let shape = t.shape().to_vec();
    let dt = match t.datum_type() {
        DatumType::Bool => DataType::Bool,
        DatumType::U8 | DatumType::QU8(_) => DataType::Uint8,
        DatumType::U16 => DataType::Uint16,
        DatumType::U32 => DataType::Uint32,
        DatumType::U64 => DataType::Uint64,
        DatumType::I8 | DatumType::QI8(_) => DataType::Int8,
        DatumType::I16 => DataType::Int16,
        DatumType::I32 | DatumType::QI32(_) => DataType::Int32,
        DatumType::I64 => DataType::Int64,
        DatumType::F16 => DataType::Float16,
        DatumType::F32 => DataType::Float,
        DatumType::F64 => DataType::Double,
        DatumType::TDim => {
            let t = t.cast_to::<i64>().map_err(|e| chain(&e))?;
            return from_tract(&t);
        }
        other => {
            return Err(format!(
                "tract produced {other:?} values, which whittle cannot compare"
            ))
        }
    };
    let t = if t.is_plain() {
        std::borrow::Cow::Borrowed(t)
    } else {
        return Err("tract produced a non-plain tensor".into());
    };
    Array::new(dt, shape, t.as_bytes().to_vec())
}

/// Runs `f` on every item with up to `threads` threads and returns the
/// results in item order (the order never depends on the thread count).
pub fn parallel_map<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    f: impl Fn(usize, &T) -> R + Sync,
) -> Vec<R> {
    let threads = threads.clamp(1, items.len().max(1));
    if threads == 1 {
        return items.iter().enumerate().map(|(i, t)| f(i, t)).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut done: Vec<(usize, R)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(item) = items.get(i) else { break };
                        out.push((i, f(i, item)));
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, r)| r).collect()
}

/// Threads to use by default: the machine's cores.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Runs every sample through `runner` on `threads` threads; outputs are in
/// sample order. Plans are built before the threads start.
pub fn run_samples(
    runner: &Runner,
    samples: &[Sample],
    threads: usize,
) -> Result<Vec<Vec<Array>>, ExecError> {
    for s in samples {
        runner.prepare(s)?;
    }
    parallel_map(samples, threads, |i, s| runner.run(i, s))
        .into_iter()
        .collect()
}

/// The folder of a file (`.` for a bare file name): where a model's external
/// data, or a pipeline's relative data path, is resolved.
pub fn folder_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Dim, Node, Tensor, TypeInfo, ValueInfo};

    /// y = x * w + 1 over a symbolic batch.
    fn scale_model() -> Model {
        let mut g = Graph::new("g");
        g.inputs.push(ValueInfo::new(
            "x",
            TypeInfo::tensor(DataType::Float, vec![Dim::symbol("batch"), Dim::known(3)]),
        ));
        // An output annotation tract could not unify: ignored on purpose.
        g.outputs.push(ValueInfo::new(
            "y",
            TypeInfo::tensor(
                DataType::Float,
                vec![Dim::symbol("(batch+1)/2"), Dim::known(3)],
            ),
        ));
        g.add_initializer(Tensor::from_f32("w", vec![3], &[1.0, 2.0, 3.0]));
        g.add_initializer(Tensor::from_f32("one", vec![], &[1.0]));
        g.add_node(Node::new(
            "Mul",
            "mul",
            vec!["x".into(), "w".into()],
            vec!["t".into()],
        ));
        g.add_node(Node::new(
            "Add",
            "add",
            vec!["t".into(), "one".into()],
            vec!["y".into()],
        ));
        Model::new(g, 17)
    }

    #[test]
    fn runs_encoded_bytes_for_each_input_shape() {
        let r = Runner::from_model("m", &scale_model(), None).unwrap();
        let out = r
            .run(0, &[Array::from_f32(vec![1, 3], &[1.0, 1.0, 1.0])])
            .unwrap();
        assert_eq!(out[0].to_f64(), vec![2.0, 3.0, 4.0]);
        let out = r
            .run(
                1,
                &[Array::from_f32(
                    vec![2, 3],
                    &[0.0, 1.0, 2.0, -1.0, 0.0, 0.5],
                )],
            )
            .unwrap();
        assert_eq!(out[0].shape, vec![2, 3]);
        assert_eq!(out[0].to_f64(), vec![1.0, 3.0, 7.0, 0.0, 1.0, 2.5]);
    }

    #[test]
    fn unknown_ops_are_named_with_their_node() {
        let mut m = scale_model();
        let id = m.graph.node_ids()[1];
        m.graph
            .update_node(id, |n| n.op_type = Some("FancyAdd".into()));
        let err = Runner::from_model("m.onnx", &m, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("m.onnx") && err.contains("\"add\"") && err.contains("FancyAdd"),
            "{err}"
        );
    }

    #[test]
    fn wrong_inputs_are_refused_with_the_sample_index() {
        let r = Runner::from_model("m", &scale_model(), None).unwrap();
        let err = r
            .run(4, &[Array::from_f32(vec![1, 4], &[0.0; 4])])
            .unwrap_err()
            .to_string();
        assert!(err.contains("sample 4"), "{err}");
    }

    /// An If on a bool input whose branches give different shapes.
    fn input_dependent_if() -> Model {
        use crate::ir::{AttrValue, Attribute};
        let mut g = Graph::new("g");
        g.inputs.push(ValueInfo::new(
            "cond",
            TypeInfo::tensor(DataType::Bool, vec![]),
        ));
        g.inputs.push(ValueInfo::new(
            "x",
            TypeInfo::tensor(DataType::Float, vec![Dim::known(2), Dim::known(4)]),
        ));
        g.outputs.push(ValueInfo::new(
            "y",
            TypeInfo::tensor(DataType::Float, vec![]),
        ));
        let branch = |name: &str, node: Node| {
            let mut b = Graph::new(name);
            b.outputs.push(ValueInfo::new(
                node.outputs[0].clone(),
                TypeInfo::tensor(DataType::Float, vec![]),
            ));
            b.add_node(node);
            Attribute::new(format!("{name}_branch"), AttrValue::Graph(Box::new(b)))
        };
        let then = branch(
            "then",
            Node::new("Identity", "same", vec!["x".into()], vec!["t".into()]),
        );
        let mut cat = Node::new(
            "Concat",
            "twice",
            vec!["x".into(), "x".into()],
            vec!["e".into()],
        );
        cat.attributes.push(crate::ir::Attribute::int("axis", 1));
        let otherwise = branch("else", cat);
        let mut n = Node::new("If", "pick", vec!["cond".into()], vec!["y".into()]);
        n.attributes = vec![then, otherwise];
        g.add_node(n);
        Model::new(g, 17)
    }

    #[test]
    fn input_dependent_if_is_reported_with_a_hint() {
        let r = Runner::from_model("if.onnx", &input_dependent_if(), None).unwrap();
        let cond = Array::new(DataType::Bool, vec![], vec![1]).unwrap();
        let x = Array::from_f32(vec![2, 4], &[0.0; 8]);
        // tract 0.23.9 types both branches and cannot unify [2,4] with [2,8].
        let e = r.run(0, &[cond, x]).unwrap_err().to_string();
        assert!(
            e.contains("if.onnx") && e.contains("If nodes (pick)"),
            "{e}"
        );
    }

    #[test]
    fn parallel_map_keeps_item_order() {
        let items: Vec<usize> = (0..50).collect();
        for threads in [1, 2, 7] {
            assert_eq!(
                parallel_map(&items, threads, |i, x| i * 100 + x),
                (0..50).map(|i| i * 101).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn node_names_are_pulled_from_tract_messages() {
        let (n, o) = node_of("Failed analyse for node #3 \"conv1\" Conv: shape mismatch");
        assert_eq!((n.as_deref(), o.as_deref()), (Some("conv1"), Some("Conv")));
        assert_eq!(node_of("no node here"), (None, None));
        let (n, o) = node_of("Building node dq (DequantizeLinear): blocked quantization");
        assert_eq!(
            (n.as_deref(), o.as_deref()),
            (Some("dq"), Some("DequantizeLinear"))
        );
        let (n, o) = node_of("Building node  (Attention): softcap is not supported");
        assert_eq!((n, o.as_deref()), (None, Some("Attention")));
    }
}
