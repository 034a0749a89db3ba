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
    let const_ints = |name: &str| -> Option<Vec<i64>> {
        let t = g.initializer(name)?;
        let b = t.packed_bytes().ok()?;
        match t.dtype() {
            crate::ir::DataType::Int64 => Some(
                b.chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                    .collect(),
            ),
            _ => None,
        }
    };
    let (mut macs, mut unknown) = (0u64, 0usize);
    let Ok(order) = g.topological_order() else {
        return (0, 0, shapes);
    };
    for id in order {
        let n = g.node(id);
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
