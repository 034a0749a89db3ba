//! `specialize`: pins what the deployment fixes (input values, input shapes)
//! and folds the control flow that then becomes constant.
//!
//! ```text
//! before:  sr ─ Equal(16000) ─ If ─┬ then: 16 kHz network ─┐
//!                                  └ else:  8 kHz network ─┴─ out
//!          x ─ Conv ─ Shape ─ Gather(-1) ─ Equal(1) ─ If ─┬ then: Squeeze(x) ─┐
//!                                                         └ else: Identity(x) ┴─ y
//! after:   (sr pinned to 16000, x's shape known)
//!          x ─ 16 kHz network ─ out          x ─ Conv ─ Squeeze ─ y
//! ```
//!
//! Exporters keep both sample-rate networks, and branch on shapes, with `If`
//! nodes. tract types both branches of an If even when its condition is
//! knowable, so such models cannot be run, calibrated or quantized in tract.
//! This pass makes them plain graphs:
//!
//! 1. **Pins inputs** (`inputs`): each named graph input becomes an
//!    initializer holding the given value (the input's declared element type
//!    decides the type; the value's nesting must fit its declared shape) and
//!    leaves the graph's inputs.
//! 2. **Knows input shapes**: fixed dims come from the model, symbolic ones
//!    from `whittle run --dim NAME=VALUE`, and any dim (unnamed ones too, and
//!    the negative `dim_value` Paddle2ONNX writes for a dynamic batch) from
//!    the `shapes` option.
//! 3. **Folds constants** that conditions are made of: Constant, Identity,
//!    Shape and Size (when the input's shape is proven), Gather, Equal,
//!    Less/Greater, Not/And/Or/Xor, Cast, Squeeze/Unsqueeze, Reshape,
//!    Concat, Slice, ConstantOfShape, integer Add/Sub/Mul/Div. A folded
//!    node becomes a Constant node with the same output. Only tensors of at
//!    most 4096 elements are folded; weights are never copied.
//! 4. **Learns shapes from tract**: when a condition needs the shape of an
//!    intermediate tensor (the input of a `Shape`), the pass types a copy of
//!    the model truncated to the tensors it needs in tract, with the input
//!    shapes of step 2, and takes the shapes tract proves. Tensors behind an
//!    unresolved If or a Loop are asked for only once those are gone; when
//!    tract cannot type the copy, the Ifs that wait stay, with a warning.
//!    Shapes are learned for the main graph only: an If in a Loop body
//!    folds when its condition is made of constants.
//! 5. **Inlines Ifs** whose condition is a constant: the taken branch's
//!    nodes, initializers and value_info move into the enclosing graph
//!    (renamed where a name is taken), values it captures keep resolving, and
//!    its outputs become the If's outputs. Steps 3-5 repeat until nothing
//!    changes, so nested Ifs (inside an inlined branch, a Loop or Scan body)
//!    go too.
//! 6. **Removes dead nodes** (`eliminate-dead`'s function).
//!
//! An If whose condition depends on data stays and is counted in `ifs_left`
//! with a warning. An If whose condition depends on an input dim nobody gave
//! is an error naming the If, the input and the dim. When shapes took part
//! in a decision, the input shapes used are written into the model's input
//! types: the result is only valid for them (the `shapes` option is always
//! written).
//!
//! Exact for the pinned values and shapes: the inlined branch is the one the
//! original computes. Calibration data that still holds an array for a
//! pinned input is refused with a message saying so; drop that array.

use std::collections::{BTreeMap, BTreeSet};

use schemars::JsonSchema;
use serde::Deserialize;

use super::{
    parse_config, Config, ConfigError, Pass, PassContext, PassError, PassInfo, PassReport,
};
use crate::ir::{
    AttrValue, Attribute, DataType, Dim, DimValue, Graph, Model, Node, NodeId, Tensor, TypeInfo,
    TypeKind, ValueInfo,
};

/// Registry entry.
pub const INFO: PassInfo = PassInfo {
    name: "specialize",
    summary: "pin inputs to constants and input shapes, fold the If nodes that become constant",
    doc: include_str!("specialize.rs"),
    schema: super::schema_of::<Specialize>,
    build: |o| Ok(Box::new(parse_config::<Specialize>(o)?)),
};

/// Options of `specialize`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Specialize {
    /// Graph inputs to pin, by name, to a value: a number or boolean for a
    /// scalar input, nested lists for a tensor (`sr: 16000`). The input's
    /// declared element type decides the type; the pinned input becomes an
    /// initializer and leaves the graph's inputs.
    pub inputs: BTreeMap<String, serde_json::Value>,
    /// Input shapes to fix, by input name (`input: [1, 576]`): gives dims the
    /// model leaves unnamed or symbolic (`--dim` gives symbolic ones too).
    /// Must agree with the model's fixed dims. Written into the model.
    pub shapes: BTreeMap<String, Vec<u64>>,
}

impl Config for Specialize {
    fn check(&self) -> Result<(), ConfigError> {
        for (name, v) in &self.inputs {
            flatten_value(v).map_err(|message| ConfigError {
                field: format!("inputs.{name}"),
                message,
            })?;
        }
        Ok(())
    }
}

const COUNTERS: &[&str] = &["inputs_pinned", "ifs_inlined", "nodes_folded", "ifs_left"];

/// Tensors larger than this are not folded (nor read to fold).
const MAX_FOLD_ELEMENTS: u64 = 4096;

/// Rounds of fold / learn shapes / inline before giving up.
const MAX_ROUNDS: usize = 64;

impl Pass for Specialize {
    fn run(&self, model: &mut Model, ctx: &PassContext) -> Result<PassReport, PassError> {
        let mut report = PassReport::with_counters(COUNTERS);
        let opset = model.opset_version("").unwrap_or(1);
        self.pin_inputs(&mut model.graph, &mut report)?;
        let input_shapes = self.input_shapes(&model.graph, ctx)?;
        let mut shapes: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        for (name, s) in &input_shapes {
            if let Some(s) = s {
                shapes.insert(name.clone(), s.clone());
            }
        }
        let mut shape_used = false;
        for _ in 0..MAX_ROUNDS {
            let env = Env {
                consts: BTreeMap::new(),
                shapes: shapes.clone(),
                opset,
            };
            let mut used = false;
            let changed = fold_graph(&mut model.graph, &env, &mut report, &mut used)?;
            shape_used |= used;
            crate::passes::eliminate_dead::remove_dead_nodes(&mut model.graph);
            if changed {
                continue;
            }
            let learned = learn_shapes(model, &input_shapes, &mut shapes, ctx, &mut report)?;
            if !learned {
                break;
            }
            shape_used = true;
        }
        if shape_used || !self.shapes.is_empty() {
            write_input_shapes(&mut model.graph, &input_shapes, shape_used, &self.shapes);
        }
        // A pinned input nothing reads any more (its If is gone) goes too.
        let g = &mut model.graph;
        let mut read: BTreeSet<String> = g.outputs.iter().map(|o| o.name().to_string()).collect();
        for (_, n) in g.nodes() {
            read.extend(n.inputs.iter().cloned());
            for a in &n.attributes {
                for sub in a.graphs() {
                    read.extend(sub.outer_references());
                }
            }
        }
        for name in self.inputs.keys() {
            if !read.contains(name) && g.uses(name).is_empty() {
                g.remove_initializer(name);
            }
        }
        let mut left = Vec::new();
        remaining_ifs(&model.graph, &mut left);
        for label in &left {
            report.warnings.push(format!(
                "{label}: its condition is not a constant for the pinned inputs and shapes; the If stays"
            ));
        }
        report.count("ifs_left", left.len() as i64);
        Ok(report)
    }
}

impl Specialize {
    /// Turns each pinned input into an initializer.
    fn pin_inputs(&self, g: &mut Graph, report: &mut PassReport) -> Result<(), PassError> {
        for (name, value) in &self.inputs {
            let Some(pos) = g.inputs.iter().position(|i| i.name() == name) else {
                let names: Vec<&str> = g.inputs.iter().map(ValueInfo::name).collect();
                let hint = super::closest(name, &names)
                    .map(|c| format!("; did you mean `{c}`?"))
                    .unwrap_or_default();
                return Err(PassError::Model(format!(
                    "inputs.{name}: the model has no input {name:?} (inputs: {}){hint}",
                    names.join(", ")
                )));
            };
            let info = &g.inputs[pos];
            let ty = info.ty.as_ref().and_then(|t| match &t.kind {
                TypeKind::Tensor { elem, shape } => Some((*elem, shape.clone())),
                _ => None,
            });
            let Some((Some(dtype), declared)) = ty else {
                return Err(PassError::Model(format!(
                    "inputs.{name}: input {name:?} is not a tensor of a known element type"
                )));
            };
            let bad = |m: String| PassError::Model(format!("inputs.{name}: {m}"));
            let (dims, values) = flatten_value(value).map_err(bad)?;
            if let Some(declared) = &declared {
                let fits = declared.len() == dims.len()
                    && declared
                        .iter()
                        .zip(&dims)
                        .all(|(d, &n)| fixed(d).is_none_or(|k| k == n));
                if !fits {
                    return Err(bad(format!(
                        "a value of shape {dims:?} does not fit input {name:?} of type {}",
                        TypeInfo::tensor(dtype, declared.clone())
                    )));
                }
            }
            let tensor = tensor_from_numbers(name, dtype, dims, &values).map_err(bad)?;
            if g.initializer(name).is_some() {
                g.replace_initializer(tensor);
            } else {
                g.add_initializer(tensor);
            }
            g.inputs.remove(pos);
            report.count("inputs_pinned", 1);
        }
        Ok(())
    }

    /// The fixed shape of every run-time input, where every dim is known
    /// (from the model, `--dim`, or `shapes`); `None` otherwise.
    fn input_shapes(
        &self,
        g: &Graph,
        ctx: &PassContext,
    ) -> Result<BTreeMap<String, Option<Vec<i64>>>, PassError> {
        let names: Vec<&str> = g.inputs.iter().map(ValueInfo::name).collect();
        for (name, dims) in &self.shapes {
            let Some(info) = g.inputs.iter().find(|i| i.name() == name) else {
                let hint = super::closest(name, &names)
                    .map(|c| format!("; did you mean `{c}`?"))
                    .unwrap_or_default();
                return Err(PassError::Model(format!(
                    "shapes.{name}: the model has no run-time input {name:?} (inputs: {}){hint}",
                    names.join(", ")
                )));
            };
            if let Some(declared) = info.ty.as_ref().and_then(TypeInfo::tensor_shape) {
                let fits = declared.len() == dims.len()
                    && declared
                        .iter()
                        .zip(dims)
                        .all(|(d, &n)| fixed(d).is_none_or(|k| k == n as i64));
                if !fits {
                    return Err(PassError::Model(format!(
                        "shapes.{name}: {dims:?} does not fit input {name:?} of type {}",
                        info.ty
                            .as_ref()
                            .map(ToString::to_string)
                            .unwrap_or_default()
                    )));
                }
            }
        }
        let mut out = BTreeMap::new();
        for i in &g.inputs {
            if g.initializer(i.name()).is_some() {
                continue;
            }
            let shape = match self.shapes.get(i.name()) {
                Some(dims) => Some(dims.iter().map(|&d| d as i64).collect()),
                None => {
                    i.ty.as_ref()
                        .and_then(TypeInfo::tensor_shape)
                        .and_then(|dims| {
                            dims.iter()
                                .map(|d| match &d.value {
                                    DimValue::Known(_) => fixed(d),
                                    DimValue::Symbol(s) => ctx.dims.get(s).map(|&n| n as i64),
                                    DimValue::Unknown => None,
                                })
                                .collect()
                        })
                }
            };
            out.insert(i.name().to_string(), shape);
        }
        Ok(out)
    }
}

/// A declared dim's fixed size. A negative `dim_value` is not one: it is
/// how Paddle2ONNX marks a dynamic dim (PP-OCR's `x` is `[-1, 3, ?, ?]`),
/// so it is treated like an unnamed dim.
fn fixed(d: &Dim) -> Option<i64> {
    d.as_known().filter(|&k| k >= 0)
}

/// Writes the input shapes used into the inputs' declared types: all
/// resolved shapes when shape facts took part in a fold, else only the ones
/// the `shapes` option gave.
fn write_input_shapes(
    g: &mut Graph,
    shapes: &BTreeMap<String, Option<Vec<i64>>>,
    all: bool,
    explicit: &BTreeMap<String, Vec<u64>>,
) {
    for i in &mut g.inputs {
        let Some(Some(shape)) = shapes.get(i.name()) else {
            continue;
        };
        if !all && !explicit.contains_key(i.name()) {
            continue;
        }
        if let Some(TypeInfo {
            kind: TypeKind::Tensor { shape: s, .. },
            ..
        }) = &mut i.ty
        {
            let dims: Vec<Dim> = shape
                .iter()
                .zip(s.iter().flatten().map(Some).chain(std::iter::repeat(None)))
                .map(|(&n, old)| Dim {
                    value: DimValue::Known(n),
                    denotation: old.and_then(|d| d.denotation.clone()),
                })
                .collect();
            *s = Some(dims);
        }
    }
}

/// Labels of the If nodes left anywhere in the graph.
fn remaining_ifs(g: &Graph, out: &mut Vec<String>) {
    for (_, n) in g.nodes() {
        if n.op_type() == "If" && n.domain().is_empty() {
            out.push(n.label());
        }
        for a in &n.attributes {
            for sub in a.graphs() {
                remaining_ifs(sub, out);
            }
        }
    }
}

// ---------------------------------------------------------------- values

/// A constant tensor the pass can compute with.
#[derive(Clone, Debug, PartialEq)]
struct Val {
    dtype: DataType,
    dims: Vec<i64>,
    data: Data,
}

/// Elements: integers and booleans (0/1) as i64, floats as f64.
#[derive(Clone, Debug, PartialEq)]
enum Data {
    I(Vec<i64>),
    F(Vec<f64>),
}

impl Data {
    fn len(&self) -> usize {
        match self {
            Data::I(v) => v.len(),
            Data::F(v) => v.len(),
        }
    }

    fn as_f64(&self) -> Vec<f64> {
        match self {
            Data::I(v) => v.iter().map(|&x| x as f64).collect(),
            Data::F(v) => v.clone(),
        }
    }

    /// The elements at `idx`, in order.
    fn pick(&self, idx: &[usize]) -> Data {
        match self {
            Data::I(v) => Data::I(idx.iter().map(|&i| v[i]).collect()),
            Data::F(v) => Data::F(idx.iter().map(|&i| v[i]).collect()),
        }
    }
}

fn is_int(dt: DataType) -> bool {
    matches!(
        dt,
        DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::Uint8
            | DataType::Uint16
            | DataType::Uint32
            | DataType::Uint64
            | DataType::Bool
    )
}

fn is_supported(dt: DataType) -> bool {
    is_int(dt) || matches!(dt, DataType::Float | DataType::Double)
}

impl Val {
    fn ints(dtype: DataType, dims: Vec<i64>, v: Vec<i64>) -> Val {
        Val {
            dtype,
            dims,
            data: Data::I(v),
        }
    }

    fn from_tensor(t: &Tensor) -> Option<Val> {
        let dt = t.dtype();
        if !is_supported(dt) || t.num_elements()? > MAX_FOLD_ELEMENTS {
            return None;
        }
        let n = t.num_elements()? as usize;
        let b = t.packed_bytes().ok()?;
        let w = (dt.bits()? / 8) as usize;
        if b.len() != n * w {
            return None;
        }
        let chunks = b.chunks_exact(w);
        let data = match dt {
            DataType::Float => Data::F(
                chunks
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
                    .collect(),
            ),
            DataType::Double => Data::F(
                chunks
                    .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                    .collect(),
            ),
            DataType::Int64 => Data::I(
                chunks
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                    .collect(),
            ),
            DataType::Uint64 => Data::I(
                chunks
                    .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as i64)
                    .collect(),
            ),
            DataType::Int32 => Data::I(
                chunks
                    .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                    .collect(),
            ),
            DataType::Uint32 => Data::I(
                chunks
                    .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                    .collect(),
            ),
            DataType::Int16 => Data::I(
                chunks
                    .map(|c| i16::from_le_bytes([c[0], c[1]]) as i64)
                    .collect(),
            ),
            DataType::Uint16 => Data::I(
                chunks
                    .map(|c| u16::from_le_bytes([c[0], c[1]]) as i64)
                    .collect(),
            ),
            DataType::Int8 => Data::I(chunks.map(|c| c[0] as i8 as i64).collect()),
            DataType::Uint8 => Data::I(chunks.map(|c| c[0] as i64).collect()),
            DataType::Bool => Data::I(chunks.map(|c| i64::from(c[0] != 0)).collect()),
            _ => return None,
        };
        Some(Val {
            dtype: dt,
            dims: t.dims.clone(),
            data,
        })
    }

    fn to_tensor(&self, name: &str) -> Tensor {
        let mut raw: Vec<u8> = Vec::new();
        let ints = match &self.data {
            Data::I(v) => v.clone(),
            Data::F(v) => v.iter().map(|&x| x as i64).collect(),
        };
        let floats = self.data.as_f64();
        match self.dtype {
            DataType::Float => raw.extend(floats.iter().flat_map(|&x| (x as f32).to_le_bytes())),
            DataType::Double => raw.extend(floats.iter().flat_map(|x| x.to_le_bytes())),
            DataType::Int64 | DataType::Uint64 => {
                raw.extend(ints.iter().flat_map(|x| x.to_le_bytes()))
            }
            DataType::Int32 | DataType::Uint32 => {
                raw.extend(ints.iter().flat_map(|&x| (x as i32).to_le_bytes()))
            }
            DataType::Int16 | DataType::Uint16 => {
                raw.extend(ints.iter().flat_map(|&x| (x as i16).to_le_bytes()))
            }
            _ => raw.extend(ints.iter().map(|&x| x as u8)),
        }
        Tensor::from_raw(name, self.dtype, self.dims.clone(), bytes::Bytes::from(raw))
    }

    fn int_list(&self) -> Option<Vec<i64>> {
        match &self.data {
            Data::I(v) => Some(v.clone()),
            Data::F(_) => None,
        }
    }
}

/// Wraps an integer into the range of an integer type (as a cast does).
fn wrap(dt: DataType, x: i64) -> i64 {
    match dt {
        DataType::Bool => i64::from(x != 0),
        DataType::Int8 => x as i8 as i64,
        DataType::Uint8 => x as u8 as i64,
        DataType::Int16 => x as i16 as i64,
        DataType::Uint16 => x as u16 as i64,
        DataType::Int32 => x as i32 as i64,
        DataType::Uint32 => x as u32 as i64,
        _ => x,
    }
}

/// A YAML value (number, boolean, nested lists) as dims and elements.
fn flatten_value(v: &serde_json::Value) -> Result<(Vec<i64>, Vec<serde_json::Value>), String> {
    match v {
        serde_json::Value::Array(items) => {
            let mut dims: Option<Vec<i64>> = None;
            let mut flat = Vec::new();
            for item in items {
                let (d, f) = flatten_value(item)?;
                match &dims {
                    None => dims = Some(d),
                    Some(prev) if *prev != d => {
                        return Err("nested lists of different lengths".into())
                    }
                    _ => {}
                }
                flat.extend(f);
            }
            let mut out = vec![items.len() as i64];
            out.extend(dims.unwrap_or_default());
            Ok((out, flat))
        }
        serde_json::Value::Number(_) | serde_json::Value::Bool(_) => Ok((vec![], vec![v.clone()])),
        other => Err(format!(
            "expected a number, a boolean or a list of them, found {other}"
        )),
    }
}

/// A tensor of element type `dtype` from YAML numbers, checking that each
/// fits the type.
fn tensor_from_numbers(
    name: &str,
    dtype: DataType,
    dims: Vec<i64>,
    values: &[serde_json::Value],
) -> Result<Tensor, String> {
    let data = if matches!(dtype, DataType::Float | DataType::Double) {
        let f = values
            .iter()
            .map(|v| {
                v.as_f64()
                    .ok_or_else(|| format!("{v} is not a number (the input is {dtype})"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Data::F(f)
    } else if is_int(dtype) {
        let i = values
            .iter()
            .map(|v| {
                let x = match v {
                    serde_json::Value::Bool(b) if dtype == DataType::Bool => Some(i64::from(*b)),
                    serde_json::Value::Number(n) => n
                        .as_i64()
                        .or_else(|| n.as_u64().and_then(|u| i64::try_from(u).ok())),
                    _ => None,
                }
                .ok_or_else(|| format!("{v} is not an integer (the input is {dtype})"))?;
                if wrap(dtype, x) != x || (dtype == DataType::Uint64 && x < 0) {
                    return Err(format!("{x} does not fit the input's element type {dtype}"));
                }
                Ok(x)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Data::I(i)
    } else {
        return Err(format!("inputs of element type {dtype} cannot be pinned"));
    };
    Ok(Val { dtype, dims, data }.to_tensor(name))
}

// ---------------------------------------------------------------- folding

/// What is known in a scope: constant values and proven shapes.
#[derive(Clone, Debug)]
struct Env {
    consts: BTreeMap<String, Val>,
    shapes: BTreeMap<String, Vec<i64>>,
    opset: i64,
}

/// The value a Constant node holds.
fn constant_value(n: &Node) -> Option<(Option<Val>, Vec<i64>)> {
    let a = n.attributes.first()?;
    match (a.name(), &a.value) {
        ("value", AttrValue::Tensor(t)) => {
            let dims = t.dims.clone();
            Some((Val::from_tensor(t), dims))
        }
        ("value_int", AttrValue::Int(v)) => {
            Some((Some(Val::ints(DataType::Int64, vec![], vec![*v])), vec![]))
        }
        ("value_ints", AttrValue::Ints(v)) => Some((
            Some(Val::ints(DataType::Int64, vec![v.len() as i64], v.clone())),
            vec![v.len() as i64],
        )),
        ("value_float", AttrValue::Float(v)) => Some((
            Some(Val {
                dtype: DataType::Float,
                dims: vec![],
                data: Data::F(vec![*v as f64]),
            }),
            vec![],
        )),
        ("value_floats", AttrValue::Floats(v)) => Some((
            Some(Val {
                dtype: DataType::Float,
                dims: vec![v.len() as i64],
                data: Data::F(v.iter().map(|&x| x as f64).collect()),
            }),
            vec![v.len() as i64],
        )),
        _ => None,
    }
}

/// Folds constants and inlines constant Ifs in `g` and its subgraphs.
/// Returns whether anything changed. `shape_used` is set when a Shape or
/// Size folded from a proven shape.
fn fold_graph(
    g: &mut Graph,
    outer: &Env,
    report: &mut PassReport,
    shape_used: &mut bool,
) -> Result<bool, PassError> {
    let mut env = outer.clone();
    // Names this graph defines shadow outer knowledge.
    for i in &g.inputs {
        env.consts.remove(i.name());
    }
    for t in g.initializers() {
        env.shapes.insert(t.name().to_string(), t.dims.clone());
        match Val::from_tensor(t) {
            Some(v) => env.consts.insert(t.name().to_string(), v),
            None => env.consts.remove(t.name()),
        };
    }
    let mut changed = false;
    for id in g.topological_order()? {
        let n = g.node(id);
        if !n.domain().is_empty() {
            continue;
        }
        if n.op_type() == "Constant" {
            if let (Some((v, dims)), Some(out)) = (constant_value(n), n.outputs.first()) {
                env.shapes.insert(out.clone(), dims);
                if let Some(v) = v {
                    env.consts.insert(out.clone(), v);
                }
            }
            continue;
        }
        if n.has_subgraphs() || n.outputs.len() != 1 || n.outputs[0].is_empty() {
            continue;
        }
        let Some(v) = eval(n, &env, shape_used) else {
            continue;
        };
        if v.dims.iter().any(|&d| d < 0)
            || v.data.len() as u64 > MAX_FOLD_ELEMENTS
            || v.data.len() as i64 != v.dims.iter().product::<i64>()
        {
            continue;
        }
        let out = n.outputs[0].clone();
        let name = n.name.clone();
        let t = v.to_tensor(&out);
        g.update_node(id, |node| {
            let mut c = Node::new(
                "Constant",
                name.unwrap_or_default(),
                vec![],
                vec![out.clone()],
            );
            c.attributes
                .push(Attribute::new("value", AttrValue::Tensor(Box::new(t))));
            *node = c;
        });
        env.shapes.insert(out.clone(), v.dims.clone());
        env.consts.insert(out, v);
        report.count("nodes_folded", 1);
        changed = true;
    }
    // Ifs with a constant condition.
    for id in g.node_ids() {
        if !g.contains(id) {
            continue;
        }
        let n = g.node(id);
        if n.op_type() != "If" || !n.domain().is_empty() {
            continue;
        }
        let Some(cond) = n.inputs.first().and_then(|c| env.consts.get(c)) else {
            continue;
        };
        let taken = match &cond.data {
            Data::I(v) if v.len() == 1 => v[0] != 0,
            Data::F(v) if v.len() == 1 => v[0] != 0.0,
            _ => continue,
        };
        inline_if(g, id, taken)?;
        report.count("ifs_inlined", 1);
        changed = true;
    }
    // Subgraphs that remain (Loop/Scan bodies, Ifs still undecided).
    for id in g.node_ids() {
        if !g.node(id).has_subgraphs() {
            continue;
        }
        let result = g.update_node(id, |n| -> Result<bool, PassError> {
            let mut any = false;
            for a in &mut n.attributes {
                for sub in a.graphs_mut() {
                    any |= fold_graph(sub, &env, report, shape_used)?;
                }
            }
            Ok(any)
        })?;
        changed |= result;
    }
    Ok(changed)
}

/// Normalises an axis against a rank.
fn axis(a: i64, rank: usize) -> Option<usize> {
    let r = rank as i64;
    let a = if a < 0 { a + r } else { a };
    (0..r).contains(&a).then_some(a as usize)
}

fn strides(dims: &[i64]) -> Vec<usize> {
    let mut s = vec![1usize; dims.len()];
    for i in (0..dims.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * dims[i + 1].max(0) as usize;
    }
    s
}

/// Numpy broadcasting of two shapes.
fn broadcast(a: &[i64], b: &[i64]) -> Option<Vec<i64>> {
    let r = a.len().max(b.len());
    (0..r)
        .map(|i| {
            let da = if i + a.len() >= r {
                a[i + a.len() - r]
            } else {
                1
            };
            let db = if i + b.len() >= r {
                b[i + b.len() - r]
            } else {
                1
            };
            match (da, db) {
                (x, y) if x == y => Some(x),
                (1, y) => Some(y),
                (x, 1) => Some(x),
                _ => None,
            }
        })
        .collect()
}

/// Flat index into a tensor of `dims` for each element of `out` dims (broadcast).
fn broadcast_index(dims: &[i64], out: &[i64]) -> Vec<usize> {
    let n: i64 = out.iter().product();
    let st = strides(dims);
    let ost = strides(out);
    let off = out.len() - dims.len();
    (0..n.max(0) as usize)
        .map(|flat| {
            let mut idx = 0;
            for (k, &s) in ost.iter().enumerate() {
                let c = (flat / s) % out[k].max(1) as usize;
                if k >= off && dims[k - off] != 1 {
                    idx += c * st[k - off];
                }
            }
            idx
        })
        .collect()
}

/// An op's integer list input (axes, shape) or its attribute in older opsets.
fn ints_input(n: &Node, env: &Env, slot: usize, attr: &str) -> Option<Option<Vec<i64>>> {
    match n.inputs.get(slot).filter(|s| !s.is_empty()) {
        Some(name) => Some(Some(env.consts.get(name)?.int_list()?)),
        None => Some(n.attr_ints(attr).map(<[i64]>::to_vec)),
    }
}

/// Computes a node's single output when its inputs are known.
fn eval(n: &Node, env: &Env, shape_used: &mut bool) -> Option<Val> {
    let input = |i: usize| n.inputs.get(i).and_then(|v| env.consts.get(v));
    match n.op_type() {
        "Identity" => input(0).cloned(),
        "Shape" => {
            let x = n.inputs.first()?;
            let dims = env.shapes.get(x)?;
            if !env.consts.contains_key(x) {
                *shape_used = true;
            }
            let r = dims.len() as i64;
            let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
            let start = clamp(n.attr_int("start").unwrap_or(0));
            let end = clamp(n.attr_int("end").unwrap_or(r));
            let v: Vec<i64> = dims.get(start..end.max(start))?.to_vec();
            Some(Val::ints(DataType::Int64, vec![v.len() as i64], v))
        }
        "Size" => {
            let x = n.inputs.first()?;
            let dims = env.shapes.get(x)?;
            if !env.consts.contains_key(x) {
                *shape_used = true;
            }
            Some(Val::ints(
                DataType::Int64,
                vec![],
                vec![dims.iter().product()],
            ))
        }
        "Cast" => {
            let x = input(0)?;
            let to = DataType::from_code(n.attr_int("to")? as i32);
            if !is_supported(to) {
                return None;
            }
            let data = match (&x.data, is_int(to)) {
                (Data::I(v), true) => Data::I(v.iter().map(|&e| wrap(to, e)).collect()),
                (Data::F(v), true) => Data::I(
                    v.iter()
                        .map(|&e| {
                            if to == DataType::Bool {
                                i64::from(e != 0.0)
                            } else {
                                wrap(to, e as i64)
                            }
                        })
                        .collect(),
                ),
                (d, false) => {
                    let f = d.as_f64();
                    Data::F(if to == DataType::Float {
                        f.iter().map(|&e| e as f32 as f64).collect()
                    } else {
                        f
                    })
                }
            };
            Some(Val {
                dtype: to,
                dims: x.dims.clone(),
                data,
            })
        }
        "Not" => {
            let x = input(0)?;
            let v = x.int_list()?;
            Some(Val::ints(
                DataType::Bool,
                x.dims.clone(),
                v.iter().map(|&e| i64::from(e == 0)).collect(),
            ))
        }
        "Equal" | "Less" | "Greater" | "LessOrEqual" | "GreaterOrEqual" | "And" | "Or" | "Xor"
        | "Add" | "Sub" | "Mul" | "Div" => {
            let (a, b) = (input(0)?, input(1)?);
            let out = broadcast(&a.dims, &b.dims)?;
            let (ia, ib) = (
                broadcast_index(&a.dims, &out),
                broadcast_index(&b.dims, &out),
            );
            let op = n.op_type();
            let logic = matches!(op, "And" | "Or" | "Xor");
            let arith = matches!(op, "Add" | "Sub" | "Mul" | "Div");
            if arith || logic {
                let (x, y) = (a.int_list()?, b.int_list()?);
                if a.dtype != b.dtype {
                    return None;
                }
                let v: Option<Vec<i64>> = ia
                    .iter()
                    .zip(&ib)
                    .map(|(&i, &j)| {
                        let (p, q) = (x[i], y[j]);
                        Some(match op {
                            "And" => i64::from(p != 0 && q != 0),
                            "Or" => i64::from(p != 0 || q != 0),
                            "Xor" => i64::from((p != 0) != (q != 0)),
                            "Add" => wrap(a.dtype, p.checked_add(q)?),
                            "Sub" => wrap(a.dtype, p.checked_sub(q)?),
                            "Mul" => wrap(a.dtype, p.checked_mul(q)?),
                            // ONNX integer Div truncates toward zero.
                            _ => wrap(a.dtype, p.checked_div(q)?),
                        })
                    })
                    .collect();
                let dt = if logic { DataType::Bool } else { a.dtype };
                return Some(Val::ints(dt, out, v?));
            }
            let cmp = |i: usize, j: usize| -> std::cmp::Ordering {
                match (&a.data, &b.data) {
                    (Data::I(x), Data::I(y)) => x[i].cmp(&y[j]),
                    (x, y) => x.as_f64()[i]
                        .partial_cmp(&y.as_f64()[j])
                        .unwrap_or(std::cmp::Ordering::Less),
                }
            };
            if is_int(a.dtype) != is_int(b.dtype) {
                return None;
            }
            let v = ia
                .iter()
                .zip(&ib)
                .map(|(&i, &j)| {
                    let o = cmp(i, j);
                    i64::from(match op {
                        "Equal" => o.is_eq(),
                        "Less" => o.is_lt(),
                        "Greater" => o.is_gt(),
                        "LessOrEqual" => o.is_le(),
                        _ => o.is_ge(),
                    })
                })
                .collect();
            Some(Val::ints(DataType::Bool, out, v))
        }
        "Gather" => {
            let (x, idx) = (input(0)?, input(1)?);
            let ax = axis(n.attr_int("axis").unwrap_or(0), x.dims.len())?;
            let ids = idx.int_list()?;
            let len = x.dims[ax];
            let ids: Option<Vec<i64>> = ids
                .iter()
                .map(|&i| {
                    let i = if i < 0 { i + len } else { i };
                    (0..len).contains(&i).then_some(i)
                })
                .collect();
            let ids = ids?;
            let outer: i64 = x.dims[..ax].iter().product();
            let inner: i64 = x.dims[ax + 1..].iter().product();
            let mut pick = Vec::new();
            for o in 0..outer {
                for &i in &ids {
                    for k in 0..inner {
                        pick.push(((o * len + i) * inner + k) as usize);
                    }
                }
            }
            let mut dims = x.dims[..ax].to_vec();
            dims.extend(&idx.dims);
            dims.extend(&x.dims[ax + 1..]);
            Some(Val {
                dtype: x.dtype,
                dims,
                data: x.data.pick(&pick),
            })
        }
        "Squeeze" | "Unsqueeze" => {
            let x = input(0)?;
            let axes = ints_input(n, env, 1, "axes")?;
            let mut dims = x.dims.clone();
            if n.op_type() == "Squeeze" {
                match axes {
                    None => dims.retain(|&d| d != 1),
                    Some(axes) => {
                        let mut ax: Vec<usize> = axes
                            .iter()
                            .map(|&a| axis(a, dims.len()))
                            .collect::<Option<_>>()?;
                        ax.sort_unstable();
                        for &a in ax.iter().rev() {
                            if dims[a] != 1 {
                                return None;
                            }
                            dims.remove(a);
                        }
                    }
                }
            } else {
                let axes = axes?;
                let r = dims.len() + axes.len();
                let mut ax: Vec<usize> = axes.iter().map(|&a| axis(a, r)).collect::<Option<_>>()?;
                ax.sort_unstable();
                for a in ax {
                    if a > dims.len() {
                        return None;
                    }
                    dims.insert(a, 1);
                }
            }
            Some(Val { dims, ..x.clone() })
        }
        "Reshape" => {
            let (x, s) = (input(0)?, input(1)?.int_list()?);
            let allowzero = n.attr_int("allowzero").unwrap_or(0) != 0;
            let mut dims: Vec<i64> = s
                .iter()
                .enumerate()
                .map(|(i, &d)| {
                    if d == 0 && !allowzero {
                        x.dims.get(i).copied().unwrap_or(0)
                    } else {
                        d
                    }
                })
                .collect();
            let total: i64 = x.dims.iter().product();
            if let Some(p) = dims.iter().position(|&d| d == -1) {
                let known: i64 = dims.iter().filter(|&&d| d != -1).product();
                if known == 0 || total % known != 0 {
                    return None;
                }
                dims[p] = total / known;
            }
            (dims.iter().all(|&d| d >= 0) && dims.iter().product::<i64>() == total)
                .then(|| Val { dims, ..x.clone() })
        }
        "Concat" => {
            let vals: Vec<&Val> = (0..n.inputs.len()).map(input).collect::<Option<_>>()?;
            let first = vals.first()?;
            let ax = axis(n.attr_int("axis")?, first.dims.len())?;
            let outer: i64 = first.dims[..ax].iter().product();
            let mut dims = first.dims.clone();
            dims[ax] = vals
                .iter()
                .map(|v| v.dims.get(ax).copied().unwrap_or(0))
                .sum();
            // Every input has the first's rank, type and dims off the axis.
            let same = |v: &&Val| {
                v.dtype == first.dtype
                    && v.dims.len() == first.dims.len()
                    && v.dims
                        .iter()
                        .zip(&first.dims)
                        .enumerate()
                        .all(|(i, (a, b))| i == ax || a == b)
                    && matches!(
                        (&v.data, &first.data),
                        (Data::I(_), Data::I(_)) | (Data::F(_), Data::F(_))
                    )
            };
            if !vals.iter().all(same) {
                return None;
            }
            let mut out = Vec::new();
            let lists: Vec<Vec<f64>> = vals.iter().map(|v| v.data.as_f64()).collect();
            let ilists: Vec<Vec<i64>> = vals.iter().filter_map(|v| v.int_list()).collect();
            let mut iout = Vec::new();
            for o in 0..outer {
                for (k, v) in vals.iter().enumerate() {
                    let block: i64 = v.dims[ax..].iter().product();
                    for e in 0..block {
                        let i = (o * block + e) as usize;
                        match ilists.get(k) {
                            Some(l) => iout.push(*l.get(i)?),
                            None => out.push(*lists[k].get(i)?),
                        }
                    }
                }
            }
            let out = match first.data {
                Data::I(_) => Data::I(iout),
                Data::F(_) => Data::F(out),
            };
            Some(Val {
                dtype: first.dtype,
                dims,
                data: out,
            })
        }
        "Slice" => {
            let x = input(0)?;
            let (starts, ends, axes, steps) = if env.opset < 10 {
                (
                    n.attr_ints("starts")?.to_vec(),
                    n.attr_ints("ends")?.to_vec(),
                    n.attr_ints("axes").map(<[i64]>::to_vec),
                    None,
                )
            } else {
                (
                    input(1)?.int_list()?,
                    input(2)?.int_list()?,
                    ints_input(n, env, 3, "")?,
                    ints_input(n, env, 4, "")?,
                )
            };
            let r = x.dims.len();
            let axes = axes.unwrap_or_else(|| (0..starts.len() as i64).collect());
            let steps = steps.unwrap_or_else(|| vec![1; starts.len()]);
            let mut ranges: Vec<Vec<i64>> = x.dims.iter().map(|&d| (0..d).collect()).collect();
            for (((&s, &e), &a), &st) in starts.iter().zip(&ends).zip(&axes).zip(&steps) {
                let a = axis(a, r)?;
                let d = x.dims[a];
                if st == 0 {
                    return None;
                }
                let norm = |v: i64| if v < 0 { v.saturating_add(d) } else { v };
                let (s, e) = (norm(s), norm(e));
                ranges[a] = if st > 0 {
                    let (s, e) = (s.clamp(0, d), e.clamp(0, d));
                    (s..e).step_by(st as usize).collect()
                } else {
                    let (s, e) = (s.clamp(-1, d - 1), e.clamp(-1, d - 1));
                    let mut v = Vec::new();
                    let mut i = s;
                    while i > e {
                        v.push(i);
                        i += st;
                    }
                    v
                };
            }
            let dims: Vec<i64> = ranges.iter().map(|r| r.len() as i64).collect();
            let st = strides(&x.dims);
            let mut idx = vec![0usize];
            for (rg, &sk) in ranges.iter().zip(&st) {
                idx = idx
                    .iter()
                    .flat_map(|&base| rg.iter().map(move |&i| base + i as usize * sk))
                    .collect();
            }
            Some(Val {
                dtype: x.dtype,
                dims,
                data: x.data.pick(&idx),
            })
        }
        "ConstantOfShape" => {
            let dims = input(0)?.int_list()?;
            let count: i64 = dims.iter().product();
            if count < 0 || count as u64 > MAX_FOLD_ELEMENTS {
                return None;
            }
            let fill = match n.attr("value").map(|a| &a.value) {
                Some(AttrValue::Tensor(t)) => Val::from_tensor(t)?,
                None => Val {
                    dtype: DataType::Float,
                    dims: vec![1],
                    data: Data::F(vec![0.0]),
                },
                _ => return None,
            };
            let data = fill.data.pick(&vec![0; count as usize]);
            Some(Val {
                dtype: fill.dtype,
                dims,
                data,
            })
        }
        _ => None,
    }
}

// ---------------------------------------------------------------- inlining

/// Every value name and node name used anywhere in `g` (subgraphs
/// included), except inside node `skip`.
fn names_in(
    g: &Graph,
    skip: Option<NodeId>,
    values: &mut BTreeSet<String>,
    nodes: &mut BTreeSet<String>,
) {
    for v in g.inputs.iter().chain(&g.outputs).chain(&g.value_info) {
        values.insert(v.name().to_string());
    }
    for t in g.initializers() {
        values.insert(t.name().to_string());
    }
    for s in &g.sparse_initializers {
        values.insert(s.name().to_string());
    }
    for (id, n) in g.nodes() {
        if Some(id) == skip {
            continue;
        }
        nodes.insert(n.name().to_string());
        values.extend(n.inputs.iter().chain(&n.outputs).cloned());
        for a in &n.attributes {
            for sub in a.graphs() {
                names_in(sub, None, values, nodes);
            }
        }
    }
}

fn fresh(base: &str, taken: &mut BTreeSet<String>) -> String {
    let name = if taken.contains(base) {
        (1..)
            .map(|i| format!("{base}_{i}"))
            .find(|n| !taken.contains(n))
            .unwrap_or_default()
    } else {
        base.to_string()
    };
    taken.insert(name.clone());
    name
}

/// Renames the values `g` captures from outer scopes (not the ones it
/// defines itself), in its subgraphs too.
fn rename_captures(g: &mut Graph, map: &BTreeMap<String, String>) {
    let map: BTreeMap<String, String> = map
        .iter()
        .filter(|(k, _)| !g.defines(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if map.is_empty() {
        return;
    }
    for id in g.node_ids() {
        g.update_node(id, |n| {
            for i in &mut n.inputs {
                if let Some(new) = map.get(i.as_str()) {
                    *i = new.clone();
                }
            }
            for a in &mut n.attributes {
                for sub in a.graphs_mut() {
                    rename_captures(sub, &map);
                }
            }
        });
    }
    for o in &mut g.outputs {
        if let Some(new) = map.get(o.name()) {
            o.name = Some(new.clone());
        }
    }
}

/// Replaces If node `id` by its `then_branch` (`taken`) or `else_branch`.
fn inline_if(g: &mut Graph, id: NodeId, taken: bool) -> Result<(), PassError> {
    let node = g.node(id).clone();
    let which = if taken { "then_branch" } else { "else_branch" };
    let Some(AttrValue::Graph(branch)) = node.attr(which).map(|a| &a.value) else {
        return Err(PassError::Node {
            node: node.label(),
            message: format!("has no {which} graph attribute"),
        });
    };
    let mut branch = (**branch).clone();
    if branch.outputs.len() != node.outputs.len() {
        return Err(PassError::Node {
            node: node.label(),
            message: format!(
                "{which} has {} outputs for the If's {}",
                branch.outputs.len(),
                node.outputs.len()
            ),
        });
    }
    let (mut values, mut node_names) = (BTreeSet::new(), BTreeSet::new());
    names_in(g, Some(id), &mut values, &mut node_names);
    for v in &node.outputs {
        values.remove(v);
    }
    values.extend(node.outputs.iter().cloned());

    // Values the branch defines, renamed where the enclosing graph uses the name.
    let produced: BTreeSet<String> = branch
        .nodes()
        .flat_map(|(_, n)| n.outputs.iter().filter(|o| !o.is_empty()).cloned())
        .collect();
    let mut map: BTreeMap<String, String> = BTreeMap::new();
    let mut tails: Vec<(String, String)> = Vec::new();
    let mut claimed = BTreeSet::new();
    for (o, y) in branch.outputs.iter().zip(&node.outputs) {
        let o = o.name().to_string();
        if y.is_empty() {
            continue;
        }
        if produced.contains(&o) && !map.contains_key(&o) && claimed.insert(o.clone()) {
            map.insert(o, y.clone());
        } else {
            tails.push((o, y.clone()));
        }
    }
    let defined = produced
        .iter()
        .cloned()
        .chain(branch.initializers().iter().map(|t| t.name().to_string()))
        .chain(
            branch
                .sparse_initializers
                .iter()
                .map(|s| s.name().to_string()),
        );
    for v in defined.collect::<Vec<_>>() {
        if map.contains_key(&v) {
            continue;
        }
        let new = fresh(&v, &mut values);
        if new != v {
            map.insert(v, new);
        }
    }
    let rename = |v: &str| map.get(v).cloned().unwrap_or_else(|| v.to_string());

    // Where the branch goes: the If's place in the list.
    let ids = g.node_ids();
    let pos = ids.iter().position(|&x| x == id).unwrap_or(ids.len());
    let anchor = ids.get(pos + 1).copied();
    g.remove_node(id);
    let order = branch.topological_order()?;
    let mut nodes: Vec<Node> = order.iter().map(|&i| branch.node(i).clone()).collect();
    for (o, y) in &tails {
        nodes.push(Node::with_io(
            "Identity",
            &format!("{y}_identity"),
            &[&rename(o)],
            &[y],
        ));
    }
    for mut n in nodes {
        for v in n.inputs.iter_mut().chain(n.outputs.iter_mut()) {
            if !v.is_empty() {
                *v = rename(v);
            }
        }
        for a in &mut n.attributes {
            for sub in a.graphs_mut() {
                rename_captures(sub, &map);
            }
        }
        let base = match n.name() {
            "" => n.outputs.first().cloned().unwrap_or_default(),
            s => s.to_string(),
        };
        n.name = Some(fresh(&base, &mut node_names));
        match anchor {
            Some(a) => g.insert_node_before(a, n),
            None => g.add_node(n),
        };
    }
    let inits: Vec<Tensor> = branch.initializers().to_vec();
    for mut t in inits {
        t.name = Some(rename(t.name()));
        g.add_initializer(t);
    }
    for mut s in std::mem::take(&mut branch.sparse_initializers) {
        if let Some(v) = s.values.as_mut() {
            let new = rename(v.name());
            v.name = Some(new);
        }
        g.sparse_initializers.push(s);
    }
    let known: BTreeSet<String> = g.value_info.iter().map(|v| v.name().to_string()).collect();
    for mut vi in std::mem::take(&mut branch.value_info) {
        vi.name = Some(rename(vi.name()));
        if !known.contains(vi.name()) {
            g.value_info.push(vi);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- shapes from tract

/// Nodes whose outputs `v` depends on (through inputs and captures), and
/// the graph inputs it reads.
fn ancestry(g: &Graph, roots: &[String]) -> (BTreeSet<NodeId>, BTreeSet<String>) {
    let (nodes, values) = g.upstream(roots.iter().cloned());
    let inputs = values
        .into_iter()
        .filter(|v| g.is_input(v) && g.initializer(v).is_none())
        .collect();
    (nodes, inputs)
}

/// Finds the tensors whose shapes the top-level Ifs' conditions wait for,
/// asks tract for them, and records them. Returns whether any was learned.
/// Fails when a condition waits on an input dim nobody gave.
fn learn_shapes(
    model: &Model,
    input_shapes: &BTreeMap<String, Option<Vec<i64>>>,
    shapes: &mut BTreeMap<String, Vec<i64>>,
    ctx: &PassContext,
    report: &mut PassReport,
) -> Result<bool, PassError> {
    let g = &model.graph;
    // Constants as the last fold left them, to stop the walk early.
    let mut consts: BTreeSet<String> = g
        .initializers()
        .iter()
        .map(|t| t.name().to_string())
        .collect();
    for (_, n) in g.nodes() {
        if n.op_type() == "Constant" {
            consts.extend(n.outputs.iter().cloned());
        }
    }
    // value whose shape is needed -> the If that waits for it.
    let mut needed: BTreeMap<String, String> = BTreeMap::new();
    for (_, n) in g.nodes() {
        if n.op_type() != "If" {
            continue;
        }
        let Some(cond) = n.inputs.first() else {
            continue;
        };
        let mut stack = vec![cond.clone()];
        let mut seen = BTreeSet::new();
        while let Some(v) = stack.pop() {
            if consts.contains(&v) || !seen.insert(v.clone()) {
                continue;
            }
            let Some((pid, _)) = g.producer(&v) else {
                continue;
            };
            let p = g.node(pid);
            if p.has_subgraphs() {
                continue;
            }
            match p.op_type() {
                "Shape" | "Size" => {
                    if let Some(x) = p.inputs.first() {
                        if !shapes.contains_key(x) {
                            needed.entry(x.clone()).or_insert_with(|| n.label());
                        }
                    }
                }
                _ => stack.extend(p.inputs.iter().filter(|i| !i.is_empty()).cloned()),
            }
        }
    }
    // Only tensors computed before any control flow can be typed by tract.
    let mut ask: Vec<String> = Vec::new();
    for (v, if_label) in &needed {
        let (nodes, inputs) = ancestry(g, std::slice::from_ref(v));
        if nodes.iter().any(|&id| g.node(id).has_subgraphs()) {
            continue;
        }
        for i in &inputs {
            if input_shapes.get(i).is_some_and(Option::is_none) {
                let info = g.inputs.iter().find(|x| x.name() == i);
                let dims: Vec<String> = info
                    .and_then(|x| x.ty.as_ref())
                    .and_then(TypeInfo::tensor_shape)
                    .map(|s| {
                        s.iter()
                            .enumerate()
                            .filter_map(|(k, d)| match &d.value {
                                DimValue::Known(_) if fixed(d).is_some() => None,
                                DimValue::Symbol(s)
                                    if !s.is_empty() && !ctx.dims.contains_key(s) =>
                                {
                                    Some(format!("dim {k} `{s}` (give it with --dim {s}=N)"))
                                }
                                DimValue::Symbol(s) if !s.is_empty() => None,
                                _ => Some(format!("dim {k} (unnamed)")),
                            })
                            .collect()
                    })
                    .unwrap_or_else(|| vec!["its rank".into()]);
                return Err(PassError::Model(format!(
                    "{if_label}: its condition depends on the shape of {v:?}, which depends on input {i:?}, whose {} is not known; fix the input's shape with the `shapes` option ({i}: [..])",
                    dims.join(", ")
                )));
            }
        }
        ask.push(v.clone());
    }
    if ask.is_empty() {
        return Ok(false);
    }
    let mut m = model.clone();
    m.graph.outputs = ask
        .iter()
        .map(|v| ValueInfo {
            name: Some(v.clone()),
            ..ValueInfo::default()
        })
        .collect();
    m.graph.value_info.clear();
    crate::passes::eliminate_dead::remove_dead_nodes(&mut m.graph);
    let (_, used) = ancestry(&m.graph, &ask);
    let keep_inputs: Vec<ValueInfo> = m
        .graph
        .inputs
        .iter()
        .filter(|i| used.contains(i.name()) || ask.iter().any(|a| a == i.name()))
        .cloned()
        .collect();
    m.graph.inputs = keep_inputs;
    // tract failing here only means these Ifs stay: say why and go on.
    let gave_up = |e: crate::exec::ExecError, report: &mut PassReport| {
        report.warnings.push(format!(
            "the shapes of {} could not be learned from tract, so the Ifs that wait for them stay: {e}",
            ask.join(", ")
        ));
        Ok(false)
    };
    let runner = match crate::exec::Runner::from_model(
        "specialize (shapes)",
        &m,
        ctx.model_dir.as_deref(),
    ) {
        Ok(r) => r,
        Err(e) => return gave_up(e, report),
    };
    let in_shapes: Vec<Vec<usize>> = runner
        .inputs()
        .iter()
        .map(|i| {
            input_shapes
                .get(&i.name)
                .cloned()
                .flatten()
                .unwrap_or_default()
                .iter()
                .map(|&d| d.max(0) as usize)
                .collect()
        })
        .collect();
    let out = match runner.output_shapes(&in_shapes) {
        Ok(out) => out,
        Err(e) => return gave_up(e, report),
    };
    let mut learned = false;
    for (v, s) in runner.outputs().iter().zip(out) {
        if let Some(s) = s {
            shapes.insert(v.clone(), s.iter().map(|&d| d as i64).collect());
            learned = true;
        }
    }
    Ok(learned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32_type(dims: Vec<Dim>) -> TypeInfo {
        TypeInfo::tensor(DataType::Float, dims)
    }

    fn int_tensor(name: &str, dims: Vec<i64>, v: &[i64]) -> Tensor {
        Val::ints(DataType::Int64, dims, v.to_vec()).to_tensor(name)
    }

    fn constant(name: &str, t: Tensor) -> Node {
        let mut n = Node::with_io("Constant", name, &[], &[t.name()]);
        n.attributes
            .push(Attribute::new("value", AttrValue::Tensor(Box::new(t))));
        n
    }

    fn if_node(name: &str, cond: &str, out: &str, then: Graph, els: Graph) -> Node {
        let mut n = Node::with_io("If", name, &[cond], &[out]);
        n.attributes.push(Attribute::new(
            "then_branch",
            AttrValue::Graph(Box::new(then)),
        ));
        n.attributes.push(Attribute::new(
            "else_branch",
            AttrValue::Graph(Box::new(els)),
        ));
        n
    }

    /// One node `op(x) -> out` as a branch, with an output named `out`.
    fn branch(name: &str, op: &str, inputs: &[&str], out: &str) -> Graph {
        let mut g = Graph::new(name);
        g.add_node(Node::with_io(op, &format!("{name}_{op}"), inputs, &[out]));
        g.outputs.push(ValueInfo {
            name: Some(out.into()),
            ..ValueInfo::default()
        });
        g
    }

    /// `sr` int64 scalar: If(Equal(sr, 16000)) picks Relu(x) or Neg(x); the
    /// then branch holds a nested If on `Not(Equal(sr, 16000))`.
    fn sample_rate_model() -> Model {
        let mut g = Graph::new("g");
        g.inputs.push(ValueInfo::new(
            "sr",
            TypeInfo::tensor(DataType::Int64, vec![]),
        ));
        g.inputs.push(ValueInfo::new(
            "x",
            f32_type(vec![Dim::symbol("N"), Dim::known(4)]),
        ));
        g.outputs.push(ValueInfo::new("y", f32_type(vec![])));
        g.add_node(constant("c16k", int_tensor("k16", vec![], &[16000])));
        g.add_node(Node::with_io("Equal", "eq", &["sr", "k16"], &["is16"]));
        let mut then = Graph::new("then");
        then.add_node(Node::with_io("Not", "not", &["is16"], &["not16"]));
        then.add_node(if_node(
            "inner",
            "not16",
            "t_out",
            branch("inner_then", "Neg", &["x"], "neg"),
            // The same value name as the outer else branch's: one gets renamed.
            branch("inner_else", "Relu", &["x"], "shared"),
        ));
        then.outputs.push(ValueInfo {
            name: Some("t_out".into()),
            ..ValueInfo::default()
        });
        g.add_node(if_node(
            "outer",
            "is16",
            "y",
            then,
            branch("outer_else", "Sigmoid", &["x"], "shared"),
        ));
        Model::new(g, 17)
    }

    fn pin(inputs: &[(&str, serde_json::Value)]) -> Specialize {
        Specialize {
            inputs: inputs
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            ..Specialize::default()
        }
    }

    fn ops(g: &Graph) -> Vec<&str> {
        g.nodes().map(|(_, n)| n.op_type()).collect()
    }

    #[test]
    fn pinned_condition_inlines_nested_ifs() {
        let mut m = sample_rate_model();
        let r = pin(&[("sr", 16000.into())])
            .run(&mut m, &PassContext::default())
            .unwrap();
        assert_eq!(r.counters["inputs_pinned"], 1);
        assert_eq!(r.counters["ifs_inlined"], 2);
        assert_eq!(r.counters["ifs_left"], 0);
        assert!(r.counters["nodes_folded"] >= 2, "{r:?}");
        assert_eq!(ops(&m.graph), ["Relu"]);
        let (relu, _) = m.graph.producer("y").unwrap();
        assert_eq!(m.graph.node(relu).inputs, ["x"]);
        assert!(!m.graph.is_input("sr"));
        // Nothing reads the pinned value any more.
        assert!(m.graph.initializer("sr").is_none());
        // No shape was used: N stays symbolic.
        assert_eq!(
            m.graph.inputs[0].ty.as_ref().unwrap().to_string(),
            "f32[N,4]"
        );
        crate::ir::verify(&m).unwrap();
    }

    #[test]
    fn the_else_branch_when_the_condition_is_false() {
        let mut m = sample_rate_model();
        let r = pin(&[("sr", 8000.into())])
            .run(&mut m, &PassContext::default())
            .unwrap();
        assert_eq!(r.counters["ifs_inlined"], 1);
        assert_eq!(ops(&m.graph), ["Sigmoid"]);
        crate::ir::verify(&m).unwrap();
    }

    #[test]
    fn branch_values_are_renamed_when_the_name_is_taken() {
        let mut g = Graph::new("g");
        g.inputs
            .push(ValueInfo::new("x", f32_type(vec![Dim::known(2)])));
        g.outputs.push(ValueInfo::new("y", f32_type(vec![])));
        g.outputs.push(ValueInfo::new("h", f32_type(vec![])));
        g.add_node(Node::with_io("Relu", "relu", &["x"], &["h"]));
        g.add_initializer(Val::ints(DataType::Bool, vec![], vec![1]).to_tensor("c"));
        let mut then = Graph::new("then");
        // `h` is taken outside; `relu` too, as a node name.
        then.add_node(Node::with_io("Neg", "relu", &["x"], &["h"]));
        then.add_node(Node::with_io("Add", "add", &["h", "h"], &["sum"]));
        then.outputs.push(ValueInfo {
            name: Some("sum".into()),
            ..ValueInfo::default()
        });
        g.add_node(if_node(
            "if",
            "c",
            "y",
            then,
            branch("e", "Identity", &["x"], "e_out"),
        ));
        let mut m = Model::new(g, 17);
        let r = Specialize::default()
            .run(&mut m, &PassContext::default())
            .unwrap();
        assert_eq!(r.counters["ifs_inlined"], 1);
        let (neg, _) = m.graph.producer("h_1").unwrap();
        assert_eq!(m.graph.node(neg).name(), "relu_1");
        let (add, _) = m.graph.producer("y").unwrap();
        assert_eq!(m.graph.node(add).inputs, ["h_1", "h_1"]);
        crate::ir::verify(&m).unwrap();
    }

    /// x: f32[N,4] → Shape → Gather(0) → Equal(1) → If(Squeeze(x, 0), Identity(x)).
    fn shape_model() -> Model {
        let mut g = Graph::new("g");
        g.inputs.push(ValueInfo::new(
            "x",
            f32_type(vec![Dim::symbol("N"), Dim::known(4)]),
        ));
        g.outputs.push(ValueInfo::new("y", f32_type(vec![])));
        g.add_node(Node::with_io("Shape", "shape", &["x"], &["s"]));
        g.add_node(constant("zero", int_tensor("i0", vec![], &[0])));
        g.add_node(Node::with_io("Gather", "gather", &["s", "i0"], &["n"]));
        g.add_node(constant("one", int_tensor("i1", vec![], &[1])));
        g.add_node(Node::with_io("Equal", "eq", &["n", "i1"], &["is1"]));
        let mut then = Graph::new("then");
        then.add_node(constant("axes", int_tensor("axes", vec![1], &[0])));
        then.add_node(Node::with_io("Squeeze", "squeeze", &["x", "axes"], &["sq"]));
        then.outputs.push(ValueInfo {
            name: Some("sq".into()),
            ..ValueInfo::default()
        });
        g.add_node(if_node(
            "if",
            "is1",
            "y",
            then,
            branch("e", "Identity", &["x"], "id"),
        ));
        Model::new(g, 17)
    }

    #[test]
    fn shape_conditions_fold_with_a_pinned_dim_and_fix_the_input() {
        let mut m = shape_model();
        let ctx = PassContext {
            dims: [("N".to_string(), 1)].into(),
            ..PassContext::default()
        };
        let r = Specialize::default().run(&mut m, &ctx).unwrap();
        assert_eq!(r.counters["ifs_inlined"], 1);
        assert_eq!(ops(&m.graph), ["Constant", "Squeeze"]);
        assert_eq!(
            m.graph.inputs[0].ty.as_ref().unwrap().to_string(),
            "f32[1,4]"
        );
        crate::ir::verify(&m).unwrap();

        let mut m = shape_model();
        let cfg = Specialize {
            shapes: [("x".to_string(), vec![3, 4])].into(),
            ..Specialize::default()
        };
        cfg.run(&mut m, &PassContext::default()).unwrap();
        assert_eq!(ops(&m.graph), ["Identity"]);
    }

    #[test]
    fn a_negative_dim_value_is_dynamic_and_the_shapes_option_pins_it() {
        // Paddle2ONNX (PP-OCR) declares a dynamic batch as `dim_value: -1`
        // next to unnamed spatial dims: x is [-1, 4, ?].
        let with_negative_batch = || {
            let mut m = shape_model();
            m.graph.inputs[0] = ValueInfo::new(
                "x",
                f32_type(vec![Dim::known(-1), Dim::known(4), Dim::symbol("?")]),
            );
            m
        };
        let mut m = with_negative_batch();
        let cfg = Specialize {
            shapes: [("x".to_string(), vec![1, 4, 5])].into(),
            ..Specialize::default()
        };
        let r = cfg.run(&mut m, &PassContext::default()).unwrap();
        assert_eq!(r.counters["ifs_inlined"], 1);
        assert_eq!(ops(&m.graph), ["Constant", "Squeeze"]);
        assert_eq!(
            m.graph.inputs[0].ty.as_ref().unwrap().to_string(),
            "f32[1,4,5]"
        );
        // The fixed dim is still checked.
        let cfg = Specialize {
            shapes: [("x".to_string(), vec![1, 3, 5])].into(),
            ..Specialize::default()
        };
        let err = cfg
            .run(&mut with_negative_batch(), &PassContext::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("shapes.x") && err.contains("does not fit"),
            "{err}"
        );
        // Without `shapes` the -1 is a dim nobody gave.
        let err = Specialize::default()
            .run(&mut with_negative_batch(), &PassContext::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("dim 0 (unnamed)"), "{err}");
    }

    #[test]
    fn unknown_dims_are_an_error_naming_the_if_and_the_dim() {
        let mut m = shape_model();
        let err = Specialize::default()
            .run(&mut m, &PassContext::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("If \"if\"") && err.contains("`N`") && err.contains("--dim N="),
            "{err}"
        );
    }

    #[test]
    fn intermediate_shapes_come_from_tract() {
        // The condition reads the shape of Relu(x), not of x.
        let mut m = shape_model();
        m.graph
            .add_node(Node::with_io("Relu", "relu", &["x"], &["r"]));
        let (shape, _) = m.graph.producer("s").unwrap();
        m.graph.set_input(shape, 0, "r");
        m.graph.sort().unwrap();
        let ctx = PassContext {
            dims: [("N".to_string(), 1)].into(),
            ..PassContext::default()
        };
        let r = Specialize::default().run(&mut m, &ctx).unwrap();
        assert_eq!(r.counters["ifs_inlined"], 1);
        assert!(m.graph.nodes().any(|(_, n)| n.op_type() == "Squeeze"));
    }

    #[test]
    fn shapes_tract_cannot_type_leave_the_if_with_a_warning() {
        let mut m = shape_model();
        let mut custom = Node::with_io("Mystery", "mystery", &["x"], &["r"]);
        custom.domain = Some("com.example".into());
        m.graph.add_node(custom);
        let (shape, _) = m.graph.producer("s").unwrap();
        m.graph.set_input(shape, 0, "r");
        m.graph.sort().unwrap();
        let ctx = PassContext {
            dims: [("N".to_string(), 1)].into(),
            ..PassContext::default()
        };
        let r = Specialize::default().run(&mut m, &ctx).unwrap();
        assert_eq!((r.counters["ifs_inlined"], r.counters["ifs_left"]), (0, 1));
        assert!(
            r.warnings
                .iter()
                .any(|w| w.contains("could not be learned from tract")),
            "{:?}",
            r.warnings
        );
    }

    #[test]
    fn data_dependent_conditions_stay_with_a_warning() {
        let mut g = Graph::new("g");
        g.inputs
            .push(ValueInfo::new("x", f32_type(vec![Dim::known(1)])));
        g.outputs.push(ValueInfo::new("y", f32_type(vec![])));
        g.add_node(Node::with_io("Cast", "cast", &["x"], &["c"]));
        g.update_node(g.producer("c").unwrap().0, |n| {
            n.set_attr(Attribute::int("to", DataType::Bool.code() as i64))
        });
        g.add_node(constant("axes", int_tensor("axes", vec![1], &[0])));
        g.add_node(Node::with_io("Squeeze", "sq", &["c", "axes"], &["cond"]));
        g.add_node(if_node(
            "if",
            "cond",
            "y",
            branch("t", "Neg", &["x"], "a"),
            branch("e", "Relu", &["x"], "b"),
        ));
        let mut m = Model::new(g, 17);
        let r = Specialize::default()
            .run(&mut m, &PassContext::default())
            .unwrap();
        assert_eq!(r.counters["ifs_left"], 1);
        assert_eq!(r.counters["ifs_inlined"], 0);
        assert!(r.warnings[0].contains("If \"if\""), "{:?}", r.warnings);
    }

    #[test]
    fn unknown_input_names_get_a_suggestion() {
        let mut m = sample_rate_model();
        let err = pin(&[("sample_rate", 16000.into())])
            .run(&mut m, &PassContext::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("no input \"sample_rate\""), "{err}");
        let mut m = sample_rate_model();
        let err = pin(&[("s", 1.into())])
            .run(&mut m, &PassContext::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("did you mean `sr`?"), "{err}");
    }

    #[test]
    fn values_must_fit_the_input() {
        for (v, want) in [
            (serde_json::json!(1.5), "not an integer"),
            (serde_json::json!([16000]), "does not fit input \"sr\""),
            (serde_json::json!("x"), "expected a number"),
        ] {
            let mut m = sample_rate_model();
            let err = pin(&[("sr", v)])
                .run(&mut m, &PassContext::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains("inputs.sr") && err.contains(want), "{err}");
        }
        let mut m = sample_rate_model();
        m.graph.inputs[0].ty = Some(TypeInfo::tensor(DataType::Int8, vec![]));
        let err = pin(&[("sr", 16000.into())])
            .run(&mut m, &PassContext::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("does not fit the input's element type i8"),
            "{err}"
        );
        assert!(
            parse_config::<Specialize>(&serde_json::json!({"inputs": {"sr": {"a": 1}}})).is_err()
        );
    }

    #[test]
    fn ifs_inside_loop_bodies_fold_on_captured_constants() {
        let mut g = Graph::new("g");
        let b = TypeInfo::tensor(DataType::Bool, vec![]);
        g.inputs.push(ValueInfo::new("flag", b.clone()));
        g.inputs
            .push(ValueInfo::new("x", f32_type(vec![Dim::known(2)])));
        g.outputs.push(ValueInfo::new("y", f32_type(vec![])));
        g.add_initializer(int_tensor("trips", vec![], &[3]));
        g.add_initializer(Val::ints(DataType::Bool, vec![], vec![1]).to_tensor("go"));
        let mut body = Graph::new("body");
        body.inputs.push(ValueInfo::new(
            "i",
            TypeInfo::tensor(DataType::Int64, vec![]),
        ));
        body.inputs.push(ValueInfo::new("c", b));
        body.inputs
            .push(ValueInfo::new("v", f32_type(vec![Dim::known(2)])));
        body.add_node(Node::with_io("Identity", "keep", &["c"], &["c_out"]));
        body.add_node(if_node(
            "inner",
            "flag",
            "v_out",
            branch("t", "Neg", &["v"], "neg"),
            branch("e", "Relu", &["v"], "relu"),
        ));
        for o in ["c_out", "v_out"] {
            body.outputs.push(ValueInfo {
                name: Some(o.into()),
                ..ValueInfo::default()
            });
        }
        let mut lp = Node::with_io("Loop", "loop", &["trips", "go", "x"], &["y"]);
        lp.attributes
            .push(Attribute::new("body", AttrValue::Graph(Box::new(body))));
        g.add_node(lp);
        let mut m = Model::new(g, 17);
        let r = pin(&[("flag", false.into())])
            .run(&mut m, &PassContext::default())
            .unwrap();
        assert_eq!((r.counters["ifs_inlined"], r.counters["ifs_left"]), (1, 0));
        let (lp, _) = m.graph.producer("y").unwrap();
        let AttrValue::Graph(body) = &m.graph.node(lp).attr("body").unwrap().value else {
            panic!("no body");
        };
        assert_eq!(ops(body), ["Identity", "Relu"]);
        assert_eq!(
            body.producer("v_out")
                .map(|(id, _)| body.node(id).op_type()),
            Some("Relu")
        );
        crate::ir::verify(&m).unwrap();
    }

    fn eval_op(node: Node, consts: &[(&str, Val)]) -> Option<Val> {
        let env = Env {
            consts: consts
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            shapes: BTreeMap::new(),
            opset: 17,
        };
        eval(&node, &env, &mut false)
    }

    fn ints(dims: Vec<i64>, v: &[i64]) -> Val {
        Val::ints(DataType::Int64, dims, v.to_vec())
    }

    #[test]
    fn folding_follows_onnx_semantics() {
        let x = ints(vec![2, 3], &[1, 2, 3, 4, 5, 6]);
        // Gather with a negative index on axis 1.
        let mut g = Node::with_io("Gather", "g", &["x", "i"], &["o"]);
        g.set_attr(Attribute::int("axis", 1));
        let v = eval_op(g, &[("x", x.clone()), ("i", ints(vec![], &[-1]))]).unwrap();
        assert_eq!((v.dims, v.data), (vec![2], Data::I(vec![3, 6])));
        // Slice backwards with a huge start.
        let s = Node::with_io("Slice", "s", &["x", "b", "e", "a", "st"], &["o"]);
        let v = eval_op(
            s,
            &[
                ("x", x.clone()),
                ("b", ints(vec![1], &[i64::MAX])),
                ("e", ints(vec![1], &[i64::MIN])),
                ("a", ints(vec![1], &[1])),
                ("st", ints(vec![1], &[-2])),
            ],
        )
        .unwrap();
        assert_eq!((v.dims, v.data), (vec![2, 2], Data::I(vec![3, 1, 6, 4])));
        // Concat on axis 0, Unsqueeze, broadcast Equal, integer Div.
        let mut c = Node::with_io("Concat", "c", &["x", "x"], &["o"]);
        c.set_attr(Attribute::int("axis", 0));
        assert_eq!(eval_op(c, &[("x", x.clone())]).unwrap().dims, vec![4, 3]);
        let u = Node::with_io("Unsqueeze", "u", &["x", "a"], &["o"]);
        let v = eval_op(u, &[("x", x.clone()), ("a", ints(vec![2], &[0, -1]))]).unwrap();
        assert_eq!(v.dims, vec![1, 2, 3, 1]);
        let e = Node::with_io("Equal", "e", &["x", "y"], &["o"]);
        let v = eval_op(e, &[("x", x.clone()), ("y", ints(vec![3], &[1, 5, 3]))]).unwrap();
        assert_eq!(v.data, Data::I(vec![1, 0, 1, 0, 1, 0]));
        let d = Node::with_io("Div", "d", &["x", "y"], &["o"]);
        let v = eval_op(d, &[("x", ints(vec![], &[-7])), ("y", ints(vec![], &[2]))]).unwrap();
        assert_eq!(v.data, Data::I(vec![-3]));
        // Division by zero is not folded.
        let d = Node::with_io("Div", "d", &["x", "y"], &["o"]);
        assert!(eval_op(d, &[("x", ints(vec![], &[1])), ("y", ints(vec![], &[0]))]).is_none());
    }
}
