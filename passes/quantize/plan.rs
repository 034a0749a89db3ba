//! Which nodes get quantized and which tensors get a QuantizeLinear /
//! DequantizeLinear pair, decided from the graph alone (before calibration,
//! which then observes exactly the tensors the plan needs).
//!
//! Nodes are visited in topological order and fall in four roles:
//! - compute (Conv, ConvTranspose, Gemm, MatMul): activation inputs and the
//!   output are quantized, constant weights become int8 initializers, biases
//!   int32; a Relu or Clip(0, m) that alone reads the output folds into the
//!   output's range when that is exact (asymmetric grid, zero point = qmin);
//! - data movement (Reshape, Transpose, MaxPool, ...): when the input is
//!   quantized, the outputs are too, with the input's scale and zero point;
//! - activations (Relu, Clip) that did not fold: when the input is quantized,
//!   the output is too, with its own range;
//! - element-wise and pooling ops the user opted into (Add, Concat, ...):
//!   every activation input and output is quantized with its own range.

use std::collections::{BTreeMap, BTreeSet};

use crate::ir::{DataType, Graph, NodeId};

use super::{NodeFilter, Settings};

/// What a node does to quantization.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Conv, ConvTranspose, Gemm, MatMul.
    Compute,
    /// Ops that move values without changing their range.
    Move,
    /// Relu, Clip.
    Activation,
    /// Element-wise and pooling ops with their own output range.
    Generic,
}

/// Every op the pass knows, with its role.
pub const OPS: &[(&str, Role)] = &[
    ("Add", Role::Generic),
    ("AveragePool", Role::Generic),
    ("Clip", Role::Activation),
    ("Concat", Role::Generic),
    ("Conv", Role::Compute),
    ("ConvTranspose", Role::Compute),
    ("DepthToSpace", Role::Move),
    ("Flatten", Role::Move),
    ("Gather", Role::Move),
    ("Gemm", Role::Compute),
    ("GlobalAveragePool", Role::Generic),
    ("HardSigmoid", Role::Generic),
    ("HardSwish", Role::Generic),
    ("Identity", Role::Move),
    ("LeakyRelu", Role::Generic),
    ("MatMul", Role::Compute),
    ("MaxPool", Role::Move),
    ("Mul", Role::Generic),
    ("Relu", Role::Activation),
    ("Reshape", Role::Move),
    ("Resize", Role::Generic),
    ("Sigmoid", Role::Generic),
    ("Slice", Role::Move),
    ("Softmax", Role::Generic),
    ("SpaceToDepth", Role::Move),
    ("Split", Role::Move),
    ("Squeeze", Role::Move),
    ("Sub", Role::Generic),
    ("Tanh", Role::Generic),
    ("Transpose", Role::Move),
    ("Unsqueeze", Role::Move),
];

/// The role of an op type, if the pass knows it.
pub fn role(op: &str) -> Option<Role> {
    OPS.iter().find(|(o, _)| *o == op).map(|&(_, r)| r)
}

/// Where a quantized tensor's range comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum RangeSource {
    /// Its own calibration statistics.
    Calibrated,
    /// The same scale and zero point as another planned tensor (data movement).
    SameAs(String),
}

/// Which consumers read the dequantized value.
#[derive(Debug, Clone, PartialEq)]
pub enum Readers {
    /// Every consumer (the producer is quantized: runtimes fuse
    /// `DQ → op → Q` only when the op's output feeds nothing but Q).
    All,
    /// Only these quantized consumers (node, input slot); float consumers
    /// keep reading the float value.
    Nodes(Vec<(NodeId, usize)>),
}

/// An activation tensor to quantize.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedTensor {
    /// The value name.
    pub name: String,
    /// Where its range comes from.
    pub range: RangeSource,
    /// Who reads the dequantized value.
    pub readers: Readers,
    /// A Relu/Clip folded into this tensor's range (its node label).
    pub folded: Option<String>,
}

/// A constant weight to store as int8 (or uint8).
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedWeight {
    /// The node reading it.
    pub node: NodeId,
    /// The input slot.
    pub slot: usize,
    /// The initializer.
    pub name: String,
    /// Per-channel axis, or `None` for one scale.
    pub axis: Option<usize>,
}

/// A bias to store as int32 with scale = input scale × weight scale.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedBias {
    /// The node reading it.
    pub node: NodeId,
    /// The input slot.
    pub slot: usize,
    /// The initializer.
    pub name: String,
    /// The activation input whose scale multiplies the weight's.
    pub input: String,
    /// Index of the node's weight in [`Plan::weights`]. A ConvTranspose
    /// with groups has `group` times more bias channels than weight scales;
    /// bias channel `c` takes scale `c % scales`.
    pub weight: usize,
}

/// A Relu or Clip removed because the quantized range does its work.
#[derive(Debug, Clone, PartialEq)]
pub struct Fold {
    /// The activation node.
    pub node: NodeId,
    /// The compute node's output it reads.
    pub from: String,
    /// Its output, which the compute node produces instead.
    pub to: String,
}

/// What happens to one node.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeStatus {
    /// The node.
    pub node: NodeId,
    /// Its label (`Conv "conv1"`).
    pub label: String,
    /// Its role, when the pass knows the op.
    pub role: Option<Role>,
    /// Quantized, or why not.
    pub outcome: Result<String, String>,
}

/// The whole decision, in graph order.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Activation tensors.
    pub tensors: Vec<PlannedTensor>,
    /// Constant weights.
    pub weights: Vec<PlannedWeight>,
    /// Biases.
    pub biases: Vec<PlannedBias>,
    /// Folded activations.
    pub folds: Vec<Fold>,
    /// Every node of the main graph.
    pub nodes: Vec<NodeStatus>,
    /// Compute nodes whose input is scaled per run (their weight is in
    /// `weights`; input, output and bias stay float in the plan).
    pub dynamic: BTreeSet<NodeId>,
}

impl Plan {
    /// Index of a planned tensor by name.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.tensors.iter().position(|t| t.name == name)
    }

    /// Tensors whose range calibration must observe.
    pub fn calibrated(&self) -> Vec<String> {
        self.tensors
            .iter()
            .filter(|t| t.range == RangeSource::Calibrated)
            .map(|t| t.name.clone())
            .collect()
    }

    /// Follows `SameAs` links to the tensor whose range is used.
    pub fn root<'a>(&'a self, name: &'a str) -> &'a str {
        let mut cur = name;
        for _ in 0..self.tensors.len() + 1 {
            match self.index(cur).map(|i| &self.tensors[i].range) {
                Some(RangeSource::SameAs(next)) => cur = next,
                _ => break,
            }
        }
        cur
    }

    fn mark(&mut self, name: &str, range: RangeSource, readers: Readers) {
        match self.index(name) {
            Some(i) => {
                if let (Readers::Nodes(have), Readers::Nodes(more)) =
                    (&mut self.tensors[i].readers, readers)
                {
                    have.extend(more);
                }
            }
            None => self.tensors.push(PlannedTensor {
                name: name.to_string(),
                range,
                readers,
                folded: None,
            }),
        }
    }

    fn read(&mut self, name: &str, node: NodeId, slot: usize) {
        self.mark(
            name,
            RangeSource::Calibrated,
            Readers::Nodes(vec![(node, slot)]),
        );
    }
}

/// The declared element type of a value, when the graph says.
fn dtype_of(g: &Graph, value: &str) -> Option<DataType> {
    g.value_type(value).and_then(|t| t.tensor_elem())
}

/// True unless the graph declares a non-float32 type for `value`.
fn maybe_float(g: &Graph, value: &str) -> bool {
    dtype_of(g, value).is_none_or(|d| d == DataType::Float)
}

/// The value of a scalar float initializer.
fn scalar(g: &Graph, name: &str) -> Option<f32> {
    let t = g.initializer(name)?;
    match t.to_f32().ok()?.as_slice() {
        [v] => Some(*v),
        _ => None,
    }
}

/// `Clip`'s bounds, from inputs (opset 11+) or attributes; `None` when not constant.
fn clip_bounds(g: &Graph, n: &crate::ir::Node) -> Option<(f32, f32)> {
    let bound = |slot: usize, attr: &str, default: f32| -> Option<f32> {
        match n.inputs.get(slot).map(String::as_str) {
            Some("") | None => Some(n.attr_float(attr).unwrap_or(default)),
            Some(name) => scalar(g, name),
        }
    };
    Some((
        bound(1, "min", f32::NEG_INFINITY)?,
        bound(2, "max", f32::INFINITY)?,
    ))
}

/// Decides everything from the graph. `grid_folds(tensor)` says whether a
/// tensor's grid maps 0 to qmin (so a Relu/Clip(0, m) folds exactly).
pub fn plan(
    g: &Graph,
    s: &Settings,
    filter: &NodeFilter,
    grid_folds: &dyn Fn(&str) -> bool,
) -> Result<Plan, crate::ir::IrError> {
    let mut p = Plan::default();
    let order = g.topological_order()?;
    // Activation nodes already folded (their status is set when folding).
    let mut folded: BTreeMap<NodeId, String> = BTreeMap::new();
    for id in order {
        let n = g.node(id);
        let label = n.label();
        let status = |outcome: Result<String, String>| NodeStatus {
            node: id,
            label: label.clone(),
            role: role(n.op_type()),
            outcome,
        };
        if let Some(into) = folded.get(&id) {
            p.nodes.push(status(Ok(format!("folded into {into}"))));
            continue;
        }
        let op = n.op_type();
        let Some(role) = role(op).filter(|_| n.domain().is_empty() || n.domain() == "ai.onnx")
        else {
            p.nodes
                .push(status(Err(format!("whittle does not quantize {op}"))));
            continue;
        };
        if !s.ops.contains(op) {
            p.nodes.push(status(Err(format!("{op} is not in `ops`"))));
            continue;
        }
        if let Some(why) = filter.rejects(id, n.name(), role) {
            p.nodes.push(status(Err(why)));
            continue;
        }
        let outcome = match role {
            Role::Compute => {
                let dynamic = match &s.dynamic_choice {
                    Some(chosen) => chosen.contains(&id),
                    None => filter.dynamic(n.name()),
                };
                compute(g, s, &mut p, id, dynamic, grid_folds, &mut folded)
            }
            Role::Move | Role::Activation => {
                let x = n.inputs.first().map(String::as_str).unwrap_or("");
                if p.index(x).is_none() {
                    Err(format!("its input {x:?} is not quantized"))
                } else {
                    p.read(x, id, 0);
                    let outputs: &[String] = if op == "MaxPool" {
                        &n.outputs[..1]
                    } else {
                        &n.outputs
                    };
                    for y in outputs.iter().filter(|y| !y.is_empty()) {
                        if g.is_output(y) && !s.quantize_graph_outputs {
                            continue;
                        }
                        let range = if role == Role::Move {
                            RangeSource::SameAs(x.to_string())
                        } else {
                            RangeSource::Calibrated
                        };
                        p.mark(y, range, Readers::All);
                    }
                    Ok(if role == Role::Move {
                        format!("output shares the scale of {x:?}")
                    } else {
                        "output quantized".to_string()
                    })
                }
            }
            Role::Generic => {
                let mut any = false;
                for (slot, x) in n.inputs.iter().enumerate() {
                    if x.is_empty() || g.initializer(x).is_some() || !maybe_float(g, x) {
                        continue;
                    }
                    p.read(x, id, slot);
                    any = true;
                }
                for y in n.outputs.iter().filter(|y| !y.is_empty()) {
                    if g.is_output(y) && !s.quantize_graph_outputs {
                        continue;
                    }
                    p.mark(y, RangeSource::Calibrated, Readers::All);
                    any = true;
                }
                if any {
                    Ok("inputs and output quantized".to_string())
                } else {
                    Err("no float activation to quantize".to_string())
                }
            }
        };
        p.nodes.push(status(outcome));
    }
    prune(g, &mut p);
    Ok(p)
}

/// Leaves float the tensors a float Softmax reads. A `DQ → Softmax → Q`
/// chain is where runtimes substitute an approximate integer softmax
/// (onnxruntime's QLinearSoftmax, tract's quantized softmax), which drifts
/// from the float reference by several steps and from runtime to runtime. The
/// producer keeps an integer kernel without the output Q (MatMulIntegerToFloat,
/// QGemm with float output); the Softmax output is quantized as usual where a
/// quantized op reads it.
fn prune(g: &Graph, p: &mut Plan) {
    let quantized: BTreeSet<NodeId> = p
        .nodes
        .iter()
        .filter(|st| st.outcome.is_ok())
        .map(|st| st.node)
        .collect();
    let float_softmax = |id: &NodeId| {
        matches!(g.node(*id).op_type(), "Softmax" | "LogSoftmax" | "Hardmax")
            && !quantized.contains(id)
    };
    let dropped: Vec<String> = p
        .tensors
        .iter()
        .filter(|t| t.folded.is_none() && matches!(t.readers, Readers::All))
        .filter(|t| g.uses(&t.name).iter().any(|u| float_softmax(&u.node)))
        .map(|t| t.name.clone())
        .collect();
    p.tensors.retain(|t| !dropped.contains(&t.name));
    for st in &mut p.nodes {
        let Ok(what) = &st.outcome else { continue };
        let n = g.node(st.node);
        if !n.outputs.iter().any(|o| dropped.contains(o)) {
            continue;
        }
        st.outcome = match st.role {
            Some(Role::Compute) => Ok(format!(
                "{}, output kept float (a float Softmax reads it)",
                what.trim_end_matches(", output")
            )),
            _ => Err("a float Softmax reads its output".into()),
        };
    }
}

/// A Gemm that is `X·op(B) + C`: no transA, alpha and beta 1 (what
/// MatMulInteger plus a float Add computes).
fn plain_gemm(n: &crate::ir::Node) -> bool {
    let one = |name: &str| n.attr_float(name).is_none_or(|v| v == 1.0);
    n.attr_int("transA").unwrap_or(0) == 0 && one("alpha") && one("beta")
}

/// Plans a Conv, ConvTranspose, Gemm or MatMul.
fn compute(
    g: &Graph,
    s: &Settings,
    p: &mut Plan,
    id: NodeId,
    dynamic: bool,
    grid_folds: &dyn Fn(&str) -> bool,
    folded: &mut BTreeMap<NodeId, String>,
) -> Result<String, String> {
    let n = g.node(id);
    let op = n.op_type();
    let input = |i: usize| n.inputs.get(i).map(String::as_str).unwrap_or("");
    let (x, w) = (input(0), input(1));
    if x.is_empty() || w.is_empty() {
        return Err("an input is missing".into());
    }
    if g.initializer(x).is_some() {
        return Err(format!("its first input {x:?} is a constant"));
    }
    for v in [x, w] {
        if !maybe_float(g, v) {
            let dt = dtype_of(g, v).map(|d| d.name()).unwrap_or_default();
            return Err(format!("input {v:?} is {dt}, not float32"));
        }
    }
    let mut what = vec![format!("input {x:?}")];
    // The bias is added in float after the integer kernel: a constant, one
    // value per output channel.
    let float_bias = |channels: i64| {
        input(2).is_empty()
            || g.initializer(input(2)).is_some_and(|b| {
                b.dtype() == DataType::Float && b.dims == [channels] && !g.is_input(input(2))
            })
    };
    let integer_kernel = match (op, g.initializer(w)) {
        ("Conv", Some(t)) => t.dims.len() >= 3 && float_bias(t.dims[0]),
        ("MatMul", Some(t)) => t.dims.len() == 2,
        // Gemm as MatMulInteger: Y = X·B (+ C), B's rows the K axis after
        // transB is applied to the stored weight.
        ("Gemm", Some(t)) if t.dims.len() == 2 => {
            let channels = t.dims[usize::from(n.attr_int("transB") != Some(1))];
            plain_gemm(n) && float_bias(channels)
        }
        // Two activations: both scaled per run.
        ("MatMul", None) => true,
        _ => false,
    };
    if dynamic && integer_kernel {
        what[0] = format!("input {x:?} scaled per run (DynamicQuantizeLinear)");
        if g.initializer(w).is_none() {
            what[0] = format!("inputs {x:?} and {w:?} scaled per run (DynamicQuantizeLinear)");
        }
    } else if dynamic {
        what.push(format!(
            "static: {op} has no dynamic integer form here (Conv, MatMul and Gemm without transA, alpha or beta do)"
        ));
    }
    let dynamic = dynamic && integer_kernel;
    let weight = match g.initializer(w) {
        Some(t) if t.dtype() != DataType::Float => {
            return Err(format!("weight {w:?} is {}, not float32", t.dtype().name()))
        }
        Some(_) if g.is_input(w) => {
            return Err(format!(
                "weight {w:?} is also a graph input, so it may change at run time"
            ))
        }
        Some(t) => {
            let rank = t.dims.len();
            let axis = match op {
                "Conv" if rank >= 1 => Some(0),
                "ConvTranspose" if rank >= 2 => Some(1),
                "Gemm" if rank == 2 => Some(if n.attr_int("transB") == Some(1) {
                    0
                } else {
                    1
                }),
                "MatMul" if rank >= 2 => Some(rank - 1),
                _ => None,
            }
            .filter(|_| s.per_channel);
            p.weights.push(PlannedWeight {
                node: id,
                slot: 1,
                name: w.to_string(),
                axis,
            });
            what.push(match axis {
                Some(a) => format!("weight per-channel (axis {a})"),
                None => "weight per-tensor".into(),
            });
            Some((p.weights.len() - 1, t.dims.clone()))
        }
        None => {
            what.push(format!("input {w:?}"));
            None
        }
    };
    if dynamic {
        p.dynamic.insert(id);
        what.push(format!("{op}Integer"));
        if !input(2).is_empty() {
            what.push("bias float (added after)".into());
        }
        what.push("output float".into());
        return Ok(what.join(", "));
    }
    p.read(x, id, 0);
    if weight.is_none() {
        p.read(w, id, 1);
    }
    // Bias: Conv/ConvTranspose input 2, Gemm's C when it is one value per output.
    let b = input(2);
    if !b.is_empty() && op != "MatMul" {
        let channels = weight.as_ref().and_then(|(_, dims)| match op {
            "Conv" => dims.first().copied(),
            "ConvTranspose" => dims.get(1).map(|d| d * n.attr_int("group").unwrap_or(1)),
            _ => dims
                .get(if n.attr_int("transB") == Some(1) {
                    0
                } else {
                    1
                })
                .copied(),
        });
        let bias_ok = g.initializer(b).filter(|t| {
            t.dtype() == DataType::Float
                && t.dims.len() == 1
                && Some(t.dims[0]) == channels
                && !g.is_input(b)
        });
        match (bias_ok, &weight) {
            (Some(_), Some((wi, _))) if s.int32_bias => {
                p.biases.push(PlannedBias {
                    node: id,
                    slot: 2,
                    name: b.to_string(),
                    input: x.to_string(),
                    weight: *wi,
                });
                what.push("bias int32".into());
            }
            _ => what.push("bias kept float".into()),
        }
    }
    // Output, or the Relu/Clip that alone reads it.
    let y = n.outputs.first().map(String::as_str).unwrap_or("");
    if s.inputs_only {
        // Quantized only if a quantized reader needs it as its input.
        what.push("output left to its readers (placement: inputs)".into());
        return Ok(what.join(", "));
    }
    let uses = g.uses(y);
    let fold = match uses.as_slice() {
        [u] if s.fold_activations && !g.is_output(y) => {
            let a = g.node(u.node);
            let act = a.op_type();
            let r = a.outputs.first().map(String::as_str).unwrap_or("");
            let zero_low = match act {
                "Relu" => true,
                "Clip" => clip_bounds(g, a).is_some_and(|(lo, _)| lo == 0.0),
                _ => false,
            };
            (zero_low
                && u.slot == 0
                && s.ops.contains(act)
                && !r.is_empty()
                && !g.is_output(r)
                && grid_folds(r))
            .then(|| (u.node, a.label(), r.to_string()))
        }
        _ => None,
    };
    match fold {
        Some((act_id, act_label, r)) => {
            folded.insert(act_id, n.label());
            p.folds.push(Fold {
                node: act_id,
                from: y.to_string(),
                to: r.clone(),
            });
            p.mark(&r, RangeSource::Calibrated, Readers::All);
            if let Some(i) = p.index(&r) {
                p.tensors[i].folded = Some(act_label.clone());
            }
            what.push(format!("output with {act_label} folded in"));
        }
        None if g.is_output(y) && !s.quantize_graph_outputs => {
            what.push("output kept float (graph output)".into())
        }
        None => {
            p.mark(y, RangeSource::Calibrated, Readers::All);
            what.push("output".into());
        }
    }
    Ok(what.join(", "))
}
