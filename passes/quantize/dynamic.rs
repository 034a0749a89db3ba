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
//! after. DynamicQuantizeLinear gives uint8 over `[min(x, 0), max(x, 0)]` of
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
    let [xq, xs, xz] = match shared.get(x) {
        Some(names) => names.clone(),
        None => {
            let names = ["quantized", "scale", "zero_point"]
                .map(|s| ed.g.unique_name(&format!("{x}_dynamic_{s}")));
            let name = ed.node_name(&format!("{x}_DynamicQuantizeLinear"));
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            ed.g.insert_node_before(
                node,
                Node::with_io("DynamicQuantizeLinear", &name, &[x], &refs),
            );
            shared.insert(x.clone(), names.clone());
            names
        }
    };
    let wq = ed.g.unique_name(&format!("{w}_quantized"));
    let wz = ed.g.unique_name(&format!("{w}_zero_point"));
    let ws = ed.g.unique_name(&format!("{w}_scale"));
    ed.g.add_initializer(Tensor::from_raw(
        &wq,
        dtype.data_type(),
        dims.to_vec(),
        Bytes::from(q.data.clone()),
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
    });
    let cast_name = ed.node_name(&format!("{label}_Cast"));
    let mut cast = Node::with_io("Cast", &cast_name, &[&acc], &[&accf]);
    cast.set_attr(Attribute::int("to", i64::from(DataType::Float.code())));
    let cast = ed.g.insert_node_after(node, cast);
    let scale_name = ed.node_name(&format!("{label}_scale_Mul"));
    let s = ed.g.insert_node_after(
        cast,
        Node::with_io("Mul", &scale_name, &[&xs, &ws], &[&scale]),
    );
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
