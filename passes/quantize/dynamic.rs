//! Dynamic activation scaling: a Conv or MatMul whose activation input gets
//! its scale and zero point from each run's own values instead of from
//! calibration.
//!
//! The node becomes, under its own name, an integer kernel:
//!
//! ```text
//! x ─ DynamicQuantizeLinear ─┬ x_q ─┐
//!                            ├ x_zp ┼ ConvInteger / MatMulInteger ─ Cast ─ Mul ─ [Add bias] ─ y
//!                            └ x_s ─┼─────────────── Mul(x_s, w_s) ──┘
//!                        w_q, w_zp ─┘
//! ```
//!
//! `x_s · w_s[c]` is one multiply per output channel; the float bias is added
//! after. A Gemm (no transA, alpha = beta = 1) takes the same form as a
//! MatMul, its weight stored `[K, N]` (transposed when `transB` is set) and
//! its C added after. A MatMul of two activations (attention's `Q·Kᵀ` and
//! `P·V`) gets both inputs quantized per run, both uint8:
//! `MatMulInteger(a_u8, b_u8, a_zp, b_zp) ─ Cast ─ × a_s·b_s`. DynamicQuantizeLinear gives uint8 over `[min(x, 0), max(x, 0)]` of
//! the run, so a quiet input keeps its resolution where a calibrated scale
//! would round it to a few levels. The weight's zero point must be one value
//! (symmetric weights), which ConvInteger and MatMulInteger take as a scalar.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::ir::{Attribute, DataType, Node, NodeId, Tensor};

use super::qdq::{Editor, QuantWeight};
use super::QType;

/// The three outputs of one DynamicQuantizeLinear, by the float tensor it reads.
pub type Shared = BTreeMap<String, [String; 3]>;

/// Rewrites `node` (a planned dynamic Conv or MatMul, weight at slot 1) into
/// the integer form with weight `q`; `bias` is its float bias, if any.
/// Returns an error message when the weight's zero points differ.
pub fn emit(
    ed: &mut Editor,
    node: NodeId,
    q: &QuantWeight,
    dtype: QType,
    dims: &[i64],
    bias: Option<&[f32]>,
    shared: &mut Shared,
) -> Result<(), String> {
    let n = ed.g.node(node).clone();
    let zp = q.zero_points.first().copied().unwrap_or(0);
    if q.zero_points.iter().any(|&z| z != zp) {
        return Err(format!(
            "{}: a dynamic input needs one weight zero point (symmetric weights)",
            n.label()
        ));
    }
    let (x, w, y) = (&n.inputs[0], &n.inputs[1], &n.outputs[0]);
    let [xq, xs, xz] = per_run(ed, node, x, shared);
    // Gemm with transB holds B as [N, K]; MatMulInteger wants [K, N].
    let gemm = n.op_type() == "Gemm";
    let (data, dims) = if gemm && n.attr_int("transB") == Some(1) && dims.len() == 2 {
        let (rows, cols) = (dims[0] as usize, dims[1] as usize);
        let width = q.data.len() / (rows * cols).max(1);
        let mut t = vec![0u8; q.data.len()];
        for r in 0..rows {
            for c in 0..cols {
                let (from, to) = ((r * cols + c) * width, (c * rows + r) * width);
                t[to..to + width].copy_from_slice(&q.data[from..from + width]);
            }
        }
        (t, vec![dims[1], dims[0]])
    } else {
        (q.data.clone(), dims.to_vec())
    };
    let dims = &dims[..];
    let wq = ed.g.unique_name(&format!("{w}_quantized"));
    let wz = ed.g.unique_name(&format!("{w}_zero_point"));
    let ws = ed.g.unique_name(&format!("{w}_scale"));
    ed.g.add_initializer(Tensor::from_raw(
        &wq,
        dtype.data_type(),
        dims.to_vec(),
        Bytes::from(data),
    ));
    ed.g.add_initializer(Tensor::from_raw(
        &wz,
        dtype.data_type(),
        vec![],
        Bytes::from(dtype.bytes(zp)),
    ));
    // Per output channel: Conv's axis 1 of the output, MatMul's last axis.
    let conv = n.op_type() == "Conv";
    let channel_dims = |c: usize| -> Vec<i64> {
        if c <= 1 {
            vec![]
        } else if conv {
            let mut d = vec![1; dims.len() - 1];
            d[0] = c as i64;
            d
        } else {
            vec![c as i64]
        }
    };
    ed.g.add_initializer(Tensor::from_f32(
        &ws,
        channel_dims(q.scales.len()),
        &q.scales,
    ));
    let acc = ed.g.unique_name(&format!("{y}_int32"));
    let accf = ed.g.unique_name(&format!("{y}_int32_float"));
    let scale = ed.g.unique_name(&format!("{y}_scale"));
    let label = n.name().to_string();
    ed.g.update_node(node, |m| {
        m.op_type = Some(if conv { "ConvInteger" } else { "MatMulInteger" }.into());
        m.inputs = vec![xq.clone(), wq.clone(), xz.clone(), wz.clone()];
        m.outputs = vec![acc.clone()];
        if gemm {
            m.attributes.clear(); // transB is in the stored weight; alpha = beta = 1
        }
    });
    let s = rescale(ed, node, &label, &acc, &accf, [&xs, &ws], &scale);
    let mul_name = ed.node_name(&format!("{label}_Mul"));
    match bias {
        None => {
            ed.g.insert_node_after(s, Node::with_io("Mul", &mul_name, &[&accf, &scale], &[y]));
        }
        Some(b) => {
            let scaled = ed.g.unique_name(&format!("{y}_without_bias"));
            let m = ed.g.insert_node_after(
                s,
                Node::with_io("Mul", &mul_name, &[&accf, &scale], &[&scaled]),
            );
            let bname = ed.g.unique_name(&format!("{}_broadcast", n.inputs[2]));
            ed.g.add_initializer(Tensor::from_f32(&bname, channel_dims(b.len()), b));
            let add_name = ed.node_name(&format!("{label}_bias_Add"));
            ed.g.insert_node_after(m, Node::with_io("Add", &add_name, &[&scaled, &bname], &[y]));
        }
    }
    Ok(())
}

/// The DynamicQuantizeLinear outputs `[quantized, scale, zero_point]` of
/// `x`, inserted before `node` unless another node made them already.
fn per_run(ed: &mut Editor, node: NodeId, x: &str, shared: &mut Shared) -> [String; 3] {
    if let Some(names) = shared.get(x) {
        return names.clone();
    }
    let names =
        ["quantized", "scale", "zero_point"].map(|s| ed.g.unique_name(&format!("{x}_dynamic_{s}")));
    let name = ed.node_name(&format!("{x}_DynamicQuantizeLinear"));
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    ed.g.insert_node_before(
        node,
        Node::with_io("DynamicQuantizeLinear", &name, &[x], &refs),
    );
    shared.insert(x.to_string(), names.clone());
    names
}

/// After the integer `node` (output `acc`): `Cast(acc) → accf` and
/// `Mul(scales) → scale`; returns the Mul's id (the caller multiplies).
fn rescale(
    ed: &mut Editor,
    node: NodeId,
    label: &str,
    acc: &str,
    accf: &str,
    scales: [&str; 2],
    scale: &str,
) -> NodeId {
    let cast_name = ed.node_name(&format!("{label}_Cast"));
    let mut cast = Node::with_io("Cast", &cast_name, &[acc], &[accf]);
    cast.set_attr(Attribute::int("to", i64::from(DataType::Float.code())));
    let cast = ed.g.insert_node_after(node, cast);
    let scale_name = ed.node_name(&format!("{label}_scale_Mul"));
    ed.g.insert_node_after(cast, Node::with_io("Mul", &scale_name, &scales, &[scale]))
}

/// Rewrites `node`, a planned dynamic MatMul of two activations, into
/// `MatMulInteger(a_u8, b_u8, a_zp, b_zp) ─ Cast ─ × a_s·b_s ─ y`.
pub fn emit_pair(ed: &mut Editor, node: NodeId, shared: &mut Shared) {
    let n = ed.g.node(node).clone();
    let (a, b, y) = (&n.inputs[0], &n.inputs[1], &n.outputs[0]);
    let [aq, as_, az] = per_run(ed, node, a, shared);
    let [bq, bs, bz] = per_run(ed, node, b, shared);
    let acc = ed.g.unique_name(&format!("{y}_int32"));
    let accf = ed.g.unique_name(&format!("{y}_int32_float"));
    let scale = ed.g.unique_name(&format!("{y}_scale"));
    let label = n.name().to_string();
    ed.g.update_node(node, |m| {
        m.op_type = Some("MatMulInteger".into());
        m.inputs = vec![aq.clone(), bq.clone(), az.clone(), bz.clone()];
        m.outputs = vec![acc.clone()];
    });
    let s = rescale(ed, node, &label, &acc, &accf, [&as_, &bs], &scale);
    let mul_name = ed.node_name(&format!("{label}_Mul"));
    ed.g.insert_node_after(s, Node::with_io("Mul", &mul_name, &[&accf, &scale], &[y]));
}
