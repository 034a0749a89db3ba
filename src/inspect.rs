//! `whittle inspect`: what a model is made of — interface, op histogram,
//! parameters, bytes by dtype, opsets and estimated multiply-accumulates.
//!
//! MACs are estimated from shapes: declared shapes where the model has them,
//! otherwise shapes propagated through common ops, with every symbolic
//! dimension taken as 1 (one sample). Ops whose shapes cannot be worked out
//! are counted in `macs_unknown_nodes` rather than guessed.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::ir::{AttrValue, DimValue, Graph, Model, TensorData};

/// A model summary.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Summary {
    /// File-format version.
    pub ir_version: Option<i64>,
    /// Imported opsets, `domain:version` ("ai.onnx" for the default domain).
    pub opsets: Vec<String>,
    /// Producer name and version.
    pub producer: String,
    /// Graph inputs that are not initializers: name and type.
    pub inputs: Vec<(String, String)>,
    /// Graph outputs: name and type.
    pub outputs: Vec<(String, String)>,
    /// Number of nodes in the main graph (subgraph nodes in `subgraph_nodes`).
    pub nodes: usize,
    /// Nodes inside subgraphs (If/Loop/Scan bodies).
    pub subgraph_nodes: usize,
    /// Op type (with domain when not the default) -> count, over all graphs.
    pub ops: BTreeMap<String, usize>,
    /// Elements in all initializers.
    pub parameters: u64,
    /// Initializer bytes by element type.
    pub bytes_by_dtype: BTreeMap<String, u64>,
    /// Initializer bytes stored in side files.
    pub external_bytes: u64,
    /// Estimated multiply-accumulates of Conv/ConvTranspose/Gemm/MatMul for one sample.
    pub macs: u64,
    /// Compute nodes whose MACs could not be estimated (shapes unknown).
    pub macs_unknown_nodes: usize,
    /// Number of model-local functions.
    pub functions: usize,
}

/// Summarises a model.
pub fn summarize(model: &Model) -> Summary {
    let g = &model.graph;
    let mut ops = BTreeMap::new();
    let mut subgraph_nodes = 0;
    count_ops(g, &mut ops, &mut subgraph_nodes, false);
    let mut parameters = 0;
    let mut bytes_by_dtype: BTreeMap<String, u64> = BTreeMap::new();
    let mut external_bytes = 0;
    for t in g.initializers() {
        parameters += t.num_elements().unwrap_or(0);
        *bytes_by_dtype.entry(t.dtype().name()).or_default() += t.byte_len();
        if let TensorData::External(e) = &t.data {
            external_bytes += e.length;
        }
    }
    let (macs, macs_unknown_nodes) = estimate_macs(g);
    Summary {
        ir_version: model.ir_version,
        opsets: model
            .opset_import
            .iter()
            .map(|o| {
                let d = if o.domain().is_empty() {
                    "ai.onnx"
                } else {
                    o.domain()
                };
                format!("{d}:{}", o.version.unwrap_or(0))
            })
            .collect(),
        producer: format!(
            "{} {}",
            model.producer_name.as_deref().unwrap_or(""),
            model.producer_version.as_deref().unwrap_or("")
        )
        .trim()
        .to_string(),
        inputs: g
            .inputs
            .iter()
            .filter(|i| g.initializer(i.name()).is_none())
            .map(|i| (i.name().to_string(), type_str(i.ty.as_ref())))
            .collect(),
        outputs: g
            .outputs
            .iter()
            .map(|o| (o.name().to_string(), type_str(o.ty.as_ref())))
            .collect(),
        nodes: g.node_count(),
        subgraph_nodes,
        ops,
        parameters,
        bytes_by_dtype,
        external_bytes,
        macs,
        macs_unknown_nodes,
        functions: model.functions.len(),
    }
}

fn type_str(t: Option<&crate::ir::TypeInfo>) -> String {
    t.map_or_else(|| "untyped".into(), |t| t.to_string())
}

fn count_ops(g: &Graph, ops: &mut BTreeMap<String, usize>, sub: &mut usize, nested: bool) {
    for (_, n) in g.nodes() {
        let key = if n.domain().is_empty() {
            n.op_type().to_string()
        } else {
            format!("{}:{}", n.domain(), n.op_type())
        };
        *ops.entry(key).or_default() += 1;
        if nested {
            *sub += 1;
        }
        for a in &n.attributes {
            for g in a.graphs() {
                count_ops(g, ops, sub, true);
            }
        }
    }
}

/// Propagates shapes through the main graph and sums the MACs of compute ops.
fn estimate_macs(g: &Graph) -> (u64, usize) {
    let (macs, unknown, _) = propagate(g);
    (macs, unknown)
}

/// The shape of every value of the main graph that is declared or that
/// propagates through common ops (symbolic dims taken as 1), as `inspect`
/// sees them: passes use it to count MACs.
pub fn value_shapes(g: &Graph) -> HashMap<String, Vec<i64>> {
    propagate(g).2
}

fn propagate(g: &Graph) -> (u64, usize, HashMap<String, Vec<i64>>) {
    let mut shapes: HashMap<String, Vec<i64>> = HashMap::new();
    for v in g.inputs.iter().chain(&g.value_info).chain(&g.outputs) {
        if let Some(dims) = v.ty.as_ref().and_then(|t| t.tensor_shape()) {
            let pinned: Vec<i64> = dims
                .iter()
                .map(|d| match d.value {
                    DimValue::Known(n) => n,
                    _ => 1,
                })
                .collect();
            shapes.insert(v.name().to_string(), pinned);
        }
    }
    for t in g.initializers() {
        shapes.insert(t.name().to_string(), t.dims.clone());
    }
    // Values of small integer tensors (shape arithmetic: `Shape` -> `Gather`
    // -> `Concat` -> `Reshape`, as exporters emit for dynamic dims).
    let mut values: HashMap<String, Vec<i64>> = HashMap::new();
    for t in g.initializers() {
        if let Some(v) = small_ints(t) {
            values.insert(t.name().to_string(), v);
        }
    }
    // Small float constants: Resize scales.
    let mut scales: HashMap<String, Vec<f32>> = HashMap::new();
    for t in g.initializers() {
        if t.dtype().is_float() && t.dims.iter().product::<i64>() <= 64 {
            if let Ok(v) = t.to_f32() {
                scales.insert(t.name().to_string(), v);
            }
        }
    }
    let (mut macs, mut unknown) = (0u64, 0usize);
    let Ok(order) = g.topological_order() else {
        return (0, 0, shapes);
    };
    for id in order {
        let n = g.node(id);
        if n.domain().is_empty() && n.op_type() == "Constant" {
            if let Some(crate::ir::AttrValue::Tensor(t)) = n.attr("value").map(|a| &a.value) {
                if t.dtype().is_float() && t.dims.iter().product::<i64>() <= 64 {
                    if let (Some(o), Ok(v)) = (n.outputs.first(), t.to_f32()) {
                        scales.insert(o.clone(), v);
                    }
                }
            }
        }
        if n.domain().is_empty() && n.op_type() == "Resize" {
            let s = n.inputs.first().and_then(|v| shapes.get(v)).cloned();
            let sizes = n.inputs.get(3).and_then(|v| values.get(v)).cloned();
            let sc = n.inputs.get(2).and_then(|v| scales.get(v)).cloned();
            let out = match (s, sizes, sc) {
                (Some(_), Some(z), _) => Some(z),
                (Some(s), None, Some(f)) if f.len() == s.len() => Some(
                    s.iter()
                        .zip(&f)
                        .map(|(&d, &k)| (d as f64 * f64::from(k)).floor() as i64)
                        .collect(),
                ),
                _ => None,
            };
            if let (Some(o), Some(out)) = (n.outputs.first(), out) {
                shapes.entry(o.clone()).or_insert(out);
            }
            continue;
        }
        if n.domain().is_empty() && n.op_type() == "Split" {
            for (o, s) in n
                .outputs
                .iter()
                .zip(split_shapes(n, &shapes, &values).unwrap_or_default())
            {
                shapes.entry(o.clone()).or_insert(s);
            }
            continue;
        }
        if n.domain().is_empty() {
            if let Some((shape, value)) = shape_arithmetic(n, &shapes, &values) {
                if let Some(o) = n.outputs.first() {
                    shapes.entry(o.clone()).or_insert(shape);
                    if let Some(v) = value {
                        values.insert(o.clone(), v);
                    }
                }
                continue;
            }
        }
        let const_ints = |name: &str| values.get(name).cloned();
        let input = |i: usize| n.inputs.get(i).and_then(|v| shapes.get(v)).cloned();
        let out: Option<Vec<i64>> = match n.op_type() {
            "Conv" | "ConvTranspose" | "ConvInteger" => conv_shape(n, input(0), input(1)),
            "Gemm" => match (input(0), input(1)) {
                (Some(a), Some(b)) if a.len() == 2 && b.len() == 2 => {
                    let m = if n.attr_int("transA") == Some(1) {
                        a[1]
                    } else {
                        a[0]
                    };
                    let nn = if n.attr_int("transB") == Some(1) {
                        b[0]
                    } else {
                        b[1]
                    };
                    Some(vec![m, nn])
                }
                _ => None,
            },
            "MatMul" | "MatMulInteger" => match (input(0), input(1)) {
                (Some(a), Some(b)) => matmul_shape(&a, &b),
                _ => None,
            },
            "Relu"
            | "LeakyRelu"
            | "Sigmoid"
            | "Tanh"
            | "Clip"
            | "BatchNormalization"
            | "Dropout"
            | "Identity"
            | "Cast"
            | "Softmax"
            | "LogSoftmax"
            | "Erf"
            | "Gelu"
            | "Sqrt"
            | "Neg"
            | "Exp"
            | "Log"
            | "Abs"
            | "HardSigmoid"
            | "HardSwish"
            | "QuantizeLinear"
            | "DequantizeLinear"
            | "DynamicQuantizeLinear"
            | "LayerNormalization"
            | "InstanceNormalization"
            | "Elu"
            | "Selu"
            | "PRelu"
            | "Softplus"
            | "Reciprocal" => input(0),
            "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Max" | "Min" | "Sum" | "Where" => {
                let shapes: Option<Vec<Vec<i64>>> = (0..n.inputs.len()).map(input).collect();
                shapes.and_then(|s| broadcast(&s))
            }
            "MaxPool" | "AveragePool" => pool_shape(n, input(0)),
            "GlobalAveragePool" | "GlobalMaxPool" => input(0).map(|s| {
                s.iter()
                    .enumerate()
                    .map(|(i, &d)| if i < 2 { d } else { 1 })
                    .collect()
            }),
            "Flatten" => input(0).map(|s| {
                let axis = n.attr_int("axis").unwrap_or(1);
                let axis = if axis < 0 {
                    axis + s.len() as i64
                } else {
                    axis
                } as usize;
                let axis = axis.min(s.len());
                vec![s[..axis].iter().product(), s[axis..].iter().product()]
            }),
            "Reshape" => match (input(0), n.inputs.get(1).and_then(|v| const_ints(v))) {
                (Some(s), Some(target)) => reshape(&s, &target),
                _ => None,
            },
            "Transpose" => input(0).map(|s| match n.attr_ints("perm") {
                Some(p) => p
                    .iter()
                    .filter_map(|&i| s.get(i as usize).copied())
                    .collect(),
                None => s.iter().rev().copied().collect(),
            }),
            "Concat" => {
                let shapes: Option<Vec<Vec<i64>>> = (0..n.inputs.len()).map(input).collect();
                shapes.and_then(|s| {
                    let first = s.first()?.clone();
                    let axis = n.attr_int("axis")?;
                    let axis = if axis < 0 {
                        axis + first.len() as i64
                    } else {
                        axis
                    } as usize;
                    let mut o = first;
                    *o.get_mut(axis)? = s.iter().map(|x| x.get(axis).copied().unwrap_or(0)).sum();
                    Some(o)
                })
            }
            _ => None,
        };
        // Declared shapes win over propagated ones.
        let out = n
            .outputs
            .first()
            .and_then(|o| shapes.get(o).cloned())
            .or(out);
        if matches!(
            n.op_type(),
            "Conv" | "ConvTranspose" | "Gemm" | "MatMul" | "ConvInteger" | "MatMulInteger"
        ) && n.domain().is_empty()
        {
            match node_macs(n, input(0), input(1), out.as_deref()) {
                Some(m) => macs = macs.saturating_add(m),
                None => unknown += 1,
            }
        }
        if let (Some(o), Some(s)) = (n.outputs.first(), out) {
            shapes.insert(o.clone(), s);
        }
        if n.op_type() == "DynamicQuantizeLinear" {
            // Scale and zero point: scalars.
            for o in n.outputs.iter().skip(1) {
                shapes.insert(o.clone(), Vec::new());
            }
        }
    }
    (macs, unknown, shapes)
}

/// Multiply-accumulates of one Conv, ConvTranspose, Gemm or MatMul (or
/// ConvInteger, MatMulInteger) from the
/// shapes of its input, weight and output (`None` for other ops or unknown shapes).
pub fn node_macs(
    n: &crate::ir::Node,
    x: Option<Vec<i64>>,
    w: Option<Vec<i64>>,
    out: Option<&[i64]>,
) -> Option<u64> {
    let prod = |s: &[i64]| {
        s.iter()
            .try_fold(1u64, |a, &d| a.checked_mul(u64::try_from(d).ok()?))
    };
    match n.op_type() {
        "Conv" | "ConvInteger" => {
            let w = w?;
            prod(out?)?.checked_mul(prod(&w[1..])?)
        }
        "ConvTranspose" => {
            let (x, w) = (x?, w?);
            // Every input element is multiplied into a (C_out/group x kernel) patch.
            prod(&x)?.checked_mul(prod(&w[1..])?)
        }
        "Gemm" => {
            let x = x?;
            let k = if n.attr_int("transA") == Some(1) {
                x[0]
            } else {
                *x.get(1)?
            };
            prod(out?)?.checked_mul(u64::try_from(k).ok()?)
        }
        "MatMul" | "MatMulInteger" => {
            let x = x?;
            let k = *x.last()?;
            prod(out?)?.checked_mul(u64::try_from(k).ok()?)
        }
        _ => None,
    }
}

fn spatial_attr(n: &crate::ir::Node, name: &str, rank: usize, default: i64) -> Vec<i64> {
    n.attr_ints(name)
        .map(<[i64]>::to_vec)
        .unwrap_or_else(|| vec![default; rank])
}

fn conv_shape(n: &crate::ir::Node, x: Option<Vec<i64>>, w: Option<Vec<i64>>) -> Option<Vec<i64>> {
    let (x, w) = (x?, w?);
    if x.len() < 3 || w.len() != x.len() {
        return None;
    }
    let rank = x.len() - 2;
    let kernel = &w[2..];
    let strides = spatial_attr(n, "strides", rank, 1);
    let dil = spatial_attr(n, "dilations", rank, 1);
    let pads = spatial_attr(n, "pads", 2 * rank, 0);
    let auto = n.attr("auto_pad").and_then(|a| match &a.value {
        AttrValue::String(s) => Some(String::from_utf8_lossy(s).into_owned()),
        _ => None,
    });
    let group = n.attr_int("group").unwrap_or(1);
    let mut out = vec![x[0]];
    if n.op_type() == "ConvTranspose" {
        out.push(w[1] * group);
        for i in 0..rank {
            let o = strides[i] * (x[i + 2] - 1) + (kernel[i] - 1) * dil[i] + 1
                - pads[i]
                - pads[i + rank];
            out.push(o);
        }
        return Some(out);
    }
    out.push(w[0]);
    for i in 0..rank {
        let o = match auto.as_deref() {
            Some("SAME_UPPER") | Some("SAME_LOWER") => (x[i + 2] + strides[i] - 1) / strides[i],
            Some("VALID") => (x[i + 2] - (kernel[i] - 1) * dil[i] - 1) / strides[i] + 1,
            _ => {
                (x[i + 2] + pads[i] + pads[i + rank] - (kernel[i] - 1) * dil[i] - 1) / strides[i]
                    + 1
            }
        };
        out.push(o);
    }
    Some(out)
}

fn pool_shape(n: &crate::ir::Node, x: Option<Vec<i64>>) -> Option<Vec<i64>> {
    let x = x?;
    let kernel = n.attr_ints("kernel_shape")?.to_vec();
    let rank = kernel.len();
    if x.len() != rank + 2 {
        return None;
    }
    let strides = spatial_attr(n, "strides", rank, 1);
    let pads = spatial_attr(n, "pads", 2 * rank, 0);
    let ceil = n.attr_int("ceil_mode") == Some(1);
    let mut out = x[..2].to_vec();
    for i in 0..rank {
        let span = x[i + 2] + pads[i] + pads[i + rank] - kernel[i];
        let o = if ceil {
            span.div_euclid(strides[i]) + i64::from(span.rem_euclid(strides[i]) != 0)
        } else {
            span.div_euclid(strides[i])
        } + 1;
        out.push(o);
    }
    Some(out)
}

fn matmul_shape(a: &[i64], b: &[i64]) -> Option<Vec<i64>> {
    match (a.len(), b.len()) {
        (0, _) | (_, 0) => None,
        (1, 1) => Some(Vec::new()),
        (1, rb) => Some(b[..rb - 2].iter().copied().chain([b[rb - 1]]).collect()),
        (ra, 1) => Some(a[..ra - 1].to_vec()),
        (ra, rb) => {
            let mut out = broadcast(&[a[..ra - 2].to_vec(), b[..rb - 2].to_vec()])?;
            out.extend([a[ra - 2], b[rb - 1]]);
            Some(out)
        }
    }
}

fn broadcast(shapes: &[Vec<i64>]) -> Option<Vec<i64>> {
    let rank = shapes.iter().map(Vec::len).max()?;
    let mut out = vec![1i64; rank];
    for s in shapes {
        for (i, &d) in s.iter().enumerate() {
            let slot = &mut out[rank - s.len() + i];
            if *slot == 1 {
                *slot = d;
            } else if d != 1 && d != *slot {
                return None;
            }
        }
    }
    Some(out)
}

/// The values of an integer tensor of at most 64 elements.
fn small_ints(t: &crate::ir::Tensor) -> Option<Vec<i64>> {
    let count: i64 = t.dims.iter().product();
    if !(0..=64).contains(&count) {
        return None;
    }
    t.to_i64().ok()
}

/// The output shapes of a Split: sizes from its input or attribute, else equal parts.
fn split_shapes(
    n: &crate::ir::Node,
    shapes: &HashMap<String, Vec<i64>>,
    values: &HashMap<String, Vec<i64>>,
) -> Option<Vec<Vec<i64>>> {
    let s = shapes.get(n.inputs.first()?)?;
    let axis = n.attr_int("axis").unwrap_or(0);
    let axis = usize::try_from(if axis < 0 {
        axis + s.len() as i64
    } else {
        axis
    })
    .ok()?;
    let len = *s.get(axis)?;
    let sizes: Vec<i64> = match n
        .attr_ints("split")
        .map(<[i64]>::to_vec)
        .or_else(|| n.inputs.get(1).and_then(|v| values.get(v)).cloned())
    {
        Some(v) => v,
        None => {
            let parts = n.outputs.len() as i64;
            let each = (len + parts - 1) / parts.max(1);
            (0..parts)
                .map(|i| each.min(len - i * each).max(0))
                .collect()
        }
    };
    Some(
        sizes
            .iter()
            .map(|&k| {
                let mut o = s.clone();
                o[axis] = k;
                o
            })
            .collect(),
    )
}

/// Output shape and (for small integer tensors) value of the ops that
/// exporters build shapes with; `None` for every other op.
fn shape_arithmetic(
    n: &crate::ir::Node,
    shapes: &HashMap<String, Vec<i64>>,
    values: &HashMap<String, Vec<i64>>,
) -> Option<(Vec<i64>, Option<Vec<i64>>)> {
    let shape = |i: usize| n.inputs.get(i).and_then(|v| shapes.get(v));
    let value = |i: usize| n.inputs.get(i).and_then(|v| values.get(v));
    let norm = |a: i64, rank: usize| {
        let a = if a < 0 { a + rank as i64 } else { a };
        usize::try_from(a).ok().filter(|&a| a <= rank)
    };
    match n.op_type() {
        "Constant" => {
            let t = match &n.attr("value")?.value {
                crate::ir::AttrValue::Tensor(t) => t,
                _ => return None,
            };
            Some((t.dims.clone(), small_ints(t)))
        }
        "Shape" => {
            let s = shape(0)?;
            let r = s.len();
            let start = norm(n.attr_int("start").unwrap_or(0), r)?.min(r);
            let end = norm(n.attr_int("end").unwrap_or(r as i64), r)
                .unwrap_or(r)
                .min(r);
            let v = s.get(start..end.max(start))?.to_vec();
            Some((vec![v.len() as i64], Some(v)))
        }
        "Gather" => {
            let (data, idx) = (shape(0)?, shape(1)?);
            let axis = norm(n.attr_int("axis").unwrap_or(0), data.len())?;
            let mut out = data.get(..axis)?.to_vec();
            out.extend(idx);
            out.extend(data.get(axis + 1..)?);
            let picked = match (value(0), value(1)) {
                (Some(v), Some(i)) if data.len() == 1 => i
                    .iter()
                    .map(|&k| {
                        let k = if k < 0 { k + v.len() as i64 } else { k };
                        v.get(usize::try_from(k).ok()?).copied()
                    })
                    .collect(),
                _ => None,
            };
            Some((out, picked))
        }
        "Unsqueeze" | "Squeeze" => {
            let s = shape(0)?;
            let axes: Option<Vec<i64>> = n
                .attr_ints("axes")
                .map(<[i64]>::to_vec)
                .or_else(|| value(1).cloned());
            let out = if n.op_type() == "Unsqueeze" {
                let axes = axes?;
                let r = s.len() + axes.len();
                let mut axes: Vec<usize> =
                    axes.iter().map(|&a| norm(a, r)).collect::<Option<_>>()?;
                axes.sort_unstable();
                let mut rest = s.iter();
                (0..r)
                    .map(|i| {
                        if axes.contains(&i) {
                            Some(1)
                        } else {
                            rest.next().copied()
                        }
                    })
                    .collect::<Option<Vec<i64>>>()?
            } else {
                match axes {
                    Some(axes) => {
                        let axes: Vec<usize> = axes
                            .iter()
                            .map(|&a| norm(a, s.len()))
                            .collect::<Option<_>>()?;
                        s.iter()
                            .enumerate()
                            .filter(|(i, _)| !axes.contains(i))
                            .map(|(_, &d)| d)
                            .collect()
                    }
                    None => s.iter().copied().filter(|&d| d != 1).collect(),
                }
            };
            Some((out, value(0).cloned()))
        }
        "Concat" if n.inputs.iter().all(|v| values.contains_key(v)) => {
            let v: Vec<i64> = n.inputs.iter().flat_map(|i| values[i].clone()).collect();
            Some((vec![v.len() as i64], Some(v)))
        }
        "Cast" | "Identity" if value(0).is_some() => Some((shape(0)?.clone(), value(0).cloned())),
        "Slice" => {
            let s = shape(0)?;
            let (starts, ends) = (value(1)?, value(2)?);
            let axes: Vec<i64> = match value(3) {
                Some(a) => a.clone(),
                None => (0..starts.len() as i64).collect(),
            };
            let steps: Vec<i64> = value(4).cloned().unwrap_or_else(|| vec![1; starts.len()]);
            let mut out = s.clone();
            let mut range = None;
            for (k, &a) in axes.iter().enumerate() {
                let a = norm(a, s.len()).filter(|&a| a < s.len())?;
                let len = s[a];
                let step = *steps.get(k)?;
                if step != 1 {
                    return None;
                }
                let clamp = |x: i64| if x < 0 { (x + len).max(0) } else { x.min(len) };
                let (lo, hi) = (clamp(*starts.get(k)?), clamp(*ends.get(k)?));
                out[a] = (hi - lo).max(0);
                range = Some((lo as usize, hi.max(lo) as usize));
            }
            let picked = match (value(0), range) {
                (Some(v), Some((lo, hi))) if s.len() == 1 => Some(v.get(lo..hi)?.to_vec()),
                _ => None,
            };
            Some((out, picked))
        }
        "ReduceMean" | "ReduceSum" | "ReduceMax" | "ReduceMin" | "ReduceProd" | "ReduceL2" => {
            let s = shape(0)?;
            let axes: Vec<usize> = match n
                .attr_ints("axes")
                .map(<[i64]>::to_vec)
                .or_else(|| value(1).cloned())
            {
                Some(a) => a
                    .iter()
                    .map(|&a| norm(a, s.len()).filter(|&a| a < s.len()))
                    .collect::<Option<_>>()?,
                None => (0..s.len()).collect(),
            };
            let keep = n.attr_int("keepdims").unwrap_or(1) == 1;
            let out = s
                .iter()
                .enumerate()
                .filter_map(|(i, &d)| match (axes.contains(&i), keep) {
                    (false, _) => Some(d),
                    (true, true) => Some(1),
                    (true, false) => None,
                })
                .collect();
            Some((out, None))
        }
        "Reshape" if value(0).is_some() => {
            let v = value(0)?;
            let out = reshape(&[v.len() as i64], value(1)?)?;
            Some((out, Some(v.clone())))
        }
        "Add" | "Sub" | "Mul" | "Div" | "Mod" if value(0).is_some() && value(1).is_some() => {
            let (a, b) = (value(0)?, value(1)?);
            let len = a.len().max(b.len());
            let at = |v: &Vec<i64>, i: usize| if v.len() == 1 { v[0] } else { v[i] };
            if (a.len() != len && a.len() != 1) || (b.len() != len && b.len() != 1) {
                return None;
            }
            let out: Option<Vec<i64>> = (0..len)
                .map(|i| {
                    let (x, y) = (at(a, i), at(b, i));
                    match n.op_type() {
                        "Add" => x.checked_add(y),
                        "Sub" => x.checked_sub(y),
                        "Mul" => x.checked_mul(y),
                        // Integer Mod takes the divisor's sign (fmod = 0).
                        "Mod" => x.checked_rem(y).map(|r| {
                            if r != 0 && (r < 0) != (y < 0) {
                                r + y
                            } else {
                                r
                            }
                        }),
                        _ => x.checked_div(y),
                    }
                })
                .collect();
            let s = if a.len() >= b.len() {
                shape(0)?
            } else {
                shape(1)?
            };
            Some((s.clone(), Some(out?)))
        }
        _ => None,
    }
}

fn reshape(input: &[i64], target: &[i64]) -> Option<Vec<i64>> {
    let total: i64 = input.iter().product();
    let mut out: Vec<i64> = target
        .iter()
        .enumerate()
        .map(|(i, &d)| {
            if d == 0 {
                input.get(i).copied().unwrap_or(0)
            } else {
                d
            }
        })
        .collect();
    if let Some(pos) = out.iter().position(|&d| d == -1) {
        let known: i64 = out.iter().filter(|&&d| d != -1).product();
        if known == 0 {
            return None;
        }
        out[pos] = total / known;
    }
    Some(out)
}

/// A human-readable report.
pub fn render(s: &Summary) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "ir_version   {}",
        s.ir_version.map_or("-".into(), |v| v.to_string())
    );
    let _ = writeln!(out, "opsets       {}", s.opsets.join(", "));
    if !s.producer.is_empty() {
        let _ = writeln!(out, "producer     {}", s.producer);
    }
    let _ = writeln!(out, "inputs");
    for (n, t) in &s.inputs {
        let _ = writeln!(out, "  {n}: {t}");
    }
    let _ = writeln!(out, "outputs");
    for (n, t) in &s.outputs {
        let _ = writeln!(out, "  {n}: {t}");
    }
    let _ = writeln!(
        out,
        "nodes        {} (+{} in subgraphs)",
        s.nodes, s.subgraph_nodes
    );
    let _ = writeln!(out, "ops");
    let mut ops: Vec<_> = s.ops.iter().collect();
    ops.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    for (op, c) in ops {
        let _ = writeln!(out, "  {c:>6}  {op}");
    }
    let _ = writeln!(out, "parameters   {}", thousands(s.parameters));
    let _ = writeln!(out, "weights");
    for (dt, b) in &s.bytes_by_dtype {
        let _ = writeln!(out, "  {dt:<6} {} bytes", thousands(*b));
    }
    if s.external_bytes > 0 {
        let _ = writeln!(out, "  external {} bytes", thousands(s.external_bytes));
    }
    let _ = write!(
        out,
        "MACs         {} (one sample, symbolic dims = 1)",
        thousands(s.macs)
    );
    if s.macs_unknown_nodes > 0 {
        let _ = write!(
            out,
            "; {} compute nodes with unknown shapes not counted",
            s.macs_unknown_nodes
        );
    }
    out.push('\n');
    if s.functions > 0 {
        let _ = writeln!(out, "functions    {}", s.functions);
    }
    out
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_helpers() {
        assert_eq!(broadcast(&[vec![2, 3], vec![3]]), Some(vec![2, 3]));
        assert_eq!(broadcast(&[vec![2, 3], vec![4]]), None);
        assert_eq!(reshape(&[2, 3, 4], &[0, -1]), Some(vec![2, 12]));
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(matmul_shape(&[4, 2, 8], &[8, 5]), Some(vec![4, 2, 5]));
        assert_eq!(matmul_shape(&[8], &[8, 5]), Some(vec![5]));
    }
}
