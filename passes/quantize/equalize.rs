//! Channel equalization (`equalize`): rescales the channels of a compute
//! op's activation input so that per-tensor activation ranges and
//! per-channel weight ranges both lose less to rounding. Exact in real
//! numbers; the float model computes the same function.
//!
//! ```text
//! before:  h ─ Mul(a) ─ Add(b) ─ x ─ Conv(W)          x_i has outlier channels
//! after:   h ─ Mul(a/s) ─ Add(b/s) ─ x/s ─ Conv(W·s)  (s per input channel i)
//! ```
//!
//! For an activation `x` whose every reader is a Conv (channel axis 1),
//! MatMul or Gemm (last axis) with a constant weight, channel `i` is divided
//! by `s_i` and the weights reading it are multiplied by `s_i`:
//! - `s_i = a_i^α / w_i^(1−α)` (SmoothQuant), `a_i` = largest |x_i| over the
//!   calibration data, `w_i` = largest |weight| reading channel `i`, α =
//!   `equalize_alpha`; cross-layer equalization is the case where the
//!   division lands in a Conv's output channel;
//! - when every reader is depthwise (its per-channel weight scale absorbs
//!   `s_i` whatever it is), `s_i = a_i / max_j a_j`: every channel gets the
//!   widest channel's range;
//! - a channel that is all zeros, or whose weights are, keeps `s_i = 1`;
//!   `s_i` is clamped to [0.01, 100] (beyond that, biases of tiny weights
//!   overflow int32 and the weights of tiny channels lose their precision).
//!
//! The division is absorbed upstream along a chain of single-reader
//! tensors: through `Add(y, c)` (`c/s`, then on up `y`), `Relu`,
//! `LeakyRelu`, `MaxPool`, `AveragePool` (positively homogeneous or linear per
//! channel), ending in `Mul(y, c)` (`c/s`), a Conv (output channel `i` of
//! its weight and bias), a MatMul (column `i` of its constant weight) or a
//! Gemm (column `i` of B and of C). Constants must be scalars or hold one
//! value per channel; a constant something else also reads is copied under
//! a new name. Any other producer leaves `x` alone.

use std::collections::BTreeMap;

use serde_json::json;

use crate::ir::{Graph, NodeId, Tensor};
use crate::passes::{PassError, PassReport};

/// Where `x`'s channels sit.
const CONV_AXIS: i64 = 1;
const LAST_AXIS: i64 = -1;

/// A reader of `x` whose weight takes `s`.
#[derive(Debug, Clone)]
struct Reader {
    node: NodeId,
    op: String,
}

/// One step of the chain that absorbs `1/s`, from `x` upward.
#[derive(Debug, Clone)]
enum Step {
    /// `Add(y, c)`: `c` (input `slot`) is divided; the chain goes on up `y`.
    Add { node: NodeId, slot: usize },
    /// `Relu`, `LeakyRelu`, pooling: nothing changes; the chain goes on.
    Through,
    /// `Mul(y, c)`: `c` (input `slot`) is divided; the chain ends.
    Mul { node: NodeId, slot: usize },
    /// A Conv, MatMul or Gemm whose output channels are divided; the chain ends.
    Producer { node: NodeId },
}

/// A tensor that can be equalized.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The activation.
    pub tensor: String,
    /// Its channel axis (negative: from the end).
    pub axis: i64,
    readers: Vec<Reader>,
    chain: Vec<Step>,
}

fn f32_initializer<'a>(g: &'a Graph, name: &str) -> Option<&'a Tensor> {
    g.initializer(name)
        .filter(|t| t.dtype() == crate::ir::DataType::Float && !g.is_input(name))
}

/// The tensors of `g` that can be equalized, in graph order.
pub fn candidates(g: &Graph) -> Vec<Candidate> {
    // Readers by activation.
    let mut by_tensor: BTreeMap<String, (i64, Vec<Reader>)> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    for (id, n) in g.nodes() {
        let axis = match n.op_type() {
            "Conv" => CONV_AXIS,
            "MatMul" => LAST_AXIS,
            "Gemm" if n.attr_int("transA").unwrap_or(0) == 0 => LAST_AXIS,
            _ => continue,
        };
        let (Some(x), Some(w)) = (n.inputs.first(), n.inputs.get(1)) else {
            continue;
        };
        let Some(wt) = f32_initializer(g, w) else {
            continue;
        };
        let rank_ok = match n.op_type() {
            "Conv" => wt.dims.len() >= 3,
            _ => wt.dims.len() == 2,
        };
        if !rank_ok || x.is_empty() || f32_initializer(g, x).is_some() {
            continue;
        }
        let e = by_tensor.entry(x.clone()).or_insert_with(|| {
            order.push(x.clone());
            (axis, Vec::new())
        });
        if e.0 != axis {
            e.0 = 0; // readers disagree on the channel axis
        }
        e.1.push(Reader {
            node: id,
            op: n.op_type().to_string(),
        });
    }
    let mut out = Vec::new();
    for x in order {
        let (axis, readers) = by_tensor.remove(&x).unwrap_or_default();
        if axis == 0 || g.is_output(&x) || g.uses(&x).len() != readers.len() {
            continue;
        }
        if let Some(chain) = chain_above(g, &x, axis) {
            out.push(Candidate {
                tensor: x,
                axis,
                readers,
                chain,
            });
        }
    }
    out
}

/// The chain that absorbs `1/s` above `x`, if there is one.
fn chain_above(g: &Graph, x: &str, axis: i64) -> Option<Vec<Step>> {
    let mut chain = Vec::new();
    let mut t = x.to_string();
    loop {
        let (p, _) = g.producer(&t)?;
        let n = g.node(p);
        if n.outputs.len() != 1 {
            return None;
        }
        let constant = |i: usize| {
            n.inputs
                .get(i)
                .is_some_and(|v| f32_initializer(g, v).is_some())
        };
        match n.op_type() {
            "Add" | "Mul" if n.inputs.len() == 2 => {
                let slot = match (constant(0), constant(1)) {
                    (false, true) => 1,
                    (true, false) => 0,
                    _ => return None,
                };
                if n.op_type() == "Mul" {
                    chain.push(Step::Mul { node: p, slot });
                    return Some(chain);
                }
                chain.push(Step::Add { node: p, slot });
                t = n.inputs[1 - slot].clone();
            }
            "Relu" | "LeakyRelu" | "MaxPool" | "AveragePool" if n.inputs.len() == 1 => {
                if axis != CONV_AXIS && n.op_type().ends_with("Pool") {
                    return None;
                }
                chain.push(Step::Through);
                t = n.inputs[0].clone();
            }
            "Conv" if axis == CONV_AXIS && constant(1) => {
                chain.push(Step::Producer { node: p });
                return Some(chain);
            }
            "MatMul" if axis == LAST_AXIS && constant(1) => {
                chain.push(Step::Producer { node: p });
                return Some(chain);
            }
            "Gemm" if axis == LAST_AXIS && constant(1) => {
                chain.push(Step::Producer { node: p });
                return Some(chain);
            }
            _ => return None,
        }
        // The tensor the chain moves up to must feed only the chain.
        if g.uses(&t).len() != 1 || g.is_output(&t) || g.is_input(&t) {
            return None;
        }
    }
}

/// Largest |weight| reading each of `channels` input channels of reader
/// `r`, or `None` for a depthwise Conv (one input channel per group), whose
/// per-channel weight scales absorb any `s`.
fn weight_ranges(g: &Graph, r: &Reader, channels: usize) -> Result<Option<Vec<f64>>, PassError> {
    let n = g.node(r.node);
    let w = f32_initializer(g, &n.inputs[1])
        .ok_or_else(|| PassError::Model(format!("{}: weight vanished", n.label())))?;
    let v = w.to_f32()?;
    w.release_pages();
    let d: Vec<usize> = w.dims.iter().map(|&x| x.max(0) as usize).collect();
    let mut out = vec![0f64; channels];
    match r.op.as_str() {
        "Conv" => {
            let (o, per_group) = (d[0], d[1]);
            if per_group == 0 || channels % per_group != 0 {
                return Err(PassError::Model(format!(
                    "{}: channels do not match",
                    n.label()
                )));
            }
            if per_group == 1 {
                return Ok(None);
            }
            let groups = channels / per_group;
            let k: usize = d[2..].iter().product();
            for oc in 0..o {
                let group = oc / (o / groups).max(1);
                for j in 0..per_group {
                    let c = group * per_group + j;
                    let start = (oc * per_group + j) * k;
                    for &x in &v[start..start + k] {
                        out[c] = out[c].max(f64::from(x.abs()));
                    }
                }
            }
        }
        _ => {
            let trans_b = r.op == "Gemm" && n.attr_int("transB") == Some(1);
            let (k, cols) = if trans_b { (d[1], d[0]) } else { (d[0], d[1]) };
            if k != channels {
                return Err(PassError::Model(format!(
                    "{}: channels do not match",
                    n.label()
                )));
            }
            for i in 0..k {
                for j in 0..cols {
                    let x = v[if trans_b { j * k + i } else { i * cols + j }];
                    out[i] = out[i].max(f64::from(x.abs()));
                }
            }
        }
    }
    Ok(Some(out))
}

/// The per-channel factors `s` for activation ranges `a`.
fn factors(a: &[f64], weights: &[Option<Vec<f64>>], alpha: f64) -> Vec<f64> {
    let depthwise_only = weights.iter().all(Option::is_none);
    let widest = a.iter().cloned().fold(0f64, f64::max);
    (0..a.len())
        .map(|i| {
            let s = if depthwise_only {
                if widest > 0.0 {
                    a[i] / widest
                } else {
                    1.0
                }
            } else {
                let w = weights.iter().flatten().map(|w| w[i]).fold(0f64, f64::max);
                if w > 0.0 {
                    a[i].powf(alpha) / w.powf(1.0 - alpha)
                } else {
                    1.0
                }
            };
            if s > 0.0 && s.is_finite() {
                s.clamp(1e-2, 1e2)
            } else {
                1.0
            }
        })
        .collect()
}

/// Equalizes every candidate whose channel ranges calibration measured
/// (`absmax`, by tensor) and whose constants fit; returns how many.
pub fn apply(
    g: &mut Graph,
    cands: &[Candidate],
    absmax: &BTreeMap<String, Vec<f64>>,
    rank: &BTreeMap<String, usize>,
    alpha: f64,
    report: &mut PassReport,
) -> Result<usize, PassError> {
    let mut done = 0;
    for c in cands {
        let (Some(a), Some(&r)) = (absmax.get(&c.tensor), rank.get(&c.tensor)) else {
            continue;
        };
        if a.is_empty() {
            continue;
        }
        let channels = a.len();
        let mut weights = Vec::with_capacity(c.readers.len());
        let mut fits = true;
        for reader in &c.readers {
            match weight_ranges(g, reader, channels) {
                Ok(w) => weights.push(w),
                Err(_) => fits = false,
            }
        }
        if !fits || !chain_fits(g, &c.chain, channels, c.axis) {
            continue;
        }
        let s = factors(a, &weights, alpha);
        for reader in &c.readers {
            scale_reader(g, reader, &s)?;
        }
        for step in &c.chain {
            absorb(g, step, &s, c.axis, r)?;
        }
        let spread = |v: &[f64]| {
            let lo = v
                .iter()
                .cloned()
                .filter(|&x| x > 0.0)
                .fold(f64::INFINITY, f64::min);
            let hi = v.iter().cloned().fold(0f64, f64::max);
            if lo.is_finite() && lo > 0.0 {
                hi / lo
            } else {
                1.0
            }
        };
        let after: Vec<f64> = a.iter().zip(&s).map(|(x, s)| x / s).collect();
        report.details.push(json!({
            "kind": "equalize", "tensor": c.tensor, "channels": channels,
            "channel_range_spread_before": spread(a), "channel_range_spread_after": spread(&after),
        }));
        done += 1;
    }
    Ok(done)
}

/// True when every constant the chain divides is a scalar or holds one
/// value per channel along the axis.
fn chain_fits(g: &Graph, chain: &[Step], channels: usize, axis: i64) -> bool {
    chain.iter().all(|step| match step {
        Step::Add { node, slot } | Step::Mul { node, slot } => {
            let t = f32_initializer(g, &g.node(*node).inputs[*slot]);
            t.is_some_and(|t| per_channel_layout(&t.dims, channels, axis).is_some())
        }
        Step::Through => true,
        Step::Producer { node } => {
            let n = g.node(*node);
            let bias_ok = match n.inputs.get(2).filter(|b| !b.is_empty()) {
                None => true,
                Some(b) => f32_initializer(g, b).is_some_and(|t| {
                    let count: i64 = t.dims.iter().product();
                    count == 1 || count as usize == channels
                }),
            };
            let w = f32_initializer(g, &n.inputs[1]);
            let out_channels = w.map(|w| match n.op_type() {
                "Conv" => w.dims[0] as usize,
                "Gemm" if n.attr_int("transB") == Some(1) => w.dims[0] as usize,
                _ => w.dims.get(1).copied().unwrap_or(0) as usize,
            });
            bias_ok && out_channels == Some(channels)
        }
    })
}

/// For a constant of shape `dims`: `Some(true)` if it is a scalar (one
/// value), `Some(false)` if it holds one value per channel laid out along
/// the channel axis (aligned from the right), else `None`.
fn per_channel_layout(dims: &[i64], channels: usize, axis: i64) -> Option<bool> {
    let count: i64 = dims.iter().product();
    if count == 1 {
        return Some(true);
    }
    if count as usize != channels {
        return None;
    }
    let wanted = if axis == LAST_AXIS {
        dims.last().copied() == Some(channels as i64)
    } else {
        // [C, 1, ..., 1] aligned from the right, any leading 1s.
        dims.iter()
            .rposition(|&d| d != 1)
            .is_some_and(|p| dims[p] == channels as i64)
    };
    wanted.then_some(false)
}

/// The name a modified constant takes: its own when only `node` reads it,
/// else a fresh copy's.
fn own_copy(g: &mut Graph, node: NodeId, slot: usize) -> String {
    let name = g.node(node).inputs[slot].clone();
    let shared = g
        .uses(&name)
        .iter()
        .any(|u| u.node != node || u.slot != slot)
        || g.is_output(&name);
    if !shared {
        return name;
    }
    let fresh = g.unique_name(&format!("{name}_eq"));
    g.update_node(node, |n| n.inputs[slot] = fresh.clone());
    fresh
}

fn write(g: &mut Graph, name: &str, dims: Vec<i64>, values: &[f32]) {
    let mut t = Tensor::from_f32(name, dims, values);
    if let Some(old) = g.initializer(name) {
        t.doc_string = old.doc_string.clone();
    }
    g.replace_initializer(t);
}

/// Multiplies the weight values reading input channel `i` by `s[i]`.
fn scale_reader(g: &mut Graph, r: &Reader, s: &[f64]) -> Result<(), PassError> {
    let name = own_copy(g, r.node, 1);
    let n = g.node(r.node).clone();
    let w = g
        .initializer(&name)
        .cloned()
        .ok_or_else(|| PassError::Model(format!("{name} vanished")))?;
    let mut v = w.to_f32()?;
    w.release_pages();
    let d: Vec<usize> = w.dims.iter().map(|&x| x.max(0) as usize).collect();
    let channels = s.len();
    if r.op == "Conv" {
        let (o, per_group) = (d[0], d[1]);
        let groups = channels / per_group.max(1);
        let k: usize = d[2..].iter().product();
        for oc in 0..o {
            let group = oc / (o / groups.max(1)).max(1);
            for j in 0..per_group {
                let c = group * per_group + j;
                let start = (oc * per_group + j) * k;
                for x in &mut v[start..start + k] {
                    *x = (f64::from(*x) * s[c]) as f32;
                }
            }
        }
    } else {
        let trans_b = r.op == "Gemm" && n.attr_int("transB") == Some(1);
        let (k, cols) = if trans_b { (d[1], d[0]) } else { (d[0], d[1]) };
        for (i, &si) in s.iter().enumerate().take(k) {
            for j in 0..cols {
                let idx = if trans_b { j * k + i } else { i * cols + j };
                v[idx] = (f64::from(v[idx]) * si) as f32;
            }
        }
    }
    write(g, &name, w.dims.clone(), &v);
    Ok(())
}

/// Divides what `step` holds for channel `i` by `s[i]`.
fn absorb(g: &mut Graph, step: &Step, s: &[f64], axis: i64, rank: usize) -> Result<(), PassError> {
    let channels = s.len();
    match step {
        Step::Through => Ok(()),
        Step::Add { node, slot } | Step::Mul { node, slot } => {
            let name = own_copy(g, *node, *slot);
            let t = g
                .initializer(&name)
                .cloned()
                .ok_or_else(|| PassError::Model(format!("{name} vanished")))?;
            let v = t.to_f32()?;
            let scalar = per_channel_layout(&t.dims, channels, axis) == Some(true);
            let dims = if !scalar {
                t.dims.clone()
            } else if axis == LAST_AXIS {
                vec![channels as i64]
            } else {
                // [C, 1, ..., 1]: aligned from the right onto axis 1 of a rank-`rank` tensor.
                let mut d = vec![channels as i64];
                d.extend(std::iter::repeat_n(1, rank.saturating_sub(2)));
                d
            };
            let out: Vec<f32> = (0..channels)
                .map(|i| (f64::from(if scalar { v[0] } else { v[i] }) / s[i]) as f32)
                .collect();
            write(g, &name, dims, &out);
            Ok(())
        }
        Step::Producer { node } => {
            let n = g.node(*node).clone();
            let wname = own_copy(g, *node, 1);
            let w = g
                .initializer(&wname)
                .cloned()
                .ok_or_else(|| PassError::Model(format!("{wname} vanished")))?;
            let mut v = w.to_f32()?;
            w.release_pages();
            let d: Vec<usize> = w.dims.iter().map(|&x| x.max(0) as usize).collect();
            match n.op_type() {
                "Conv" => {
                    let per = v.len() / channels.max(1);
                    for (i, x) in v.iter_mut().enumerate() {
                        *x = (f64::from(*x) / s[i / per.max(1)]) as f32;
                    }
                }
                _ => {
                    let trans_b = n.op_type() == "Gemm" && n.attr_int("transB") == Some(1);
                    for (idx, x) in v.iter_mut().enumerate() {
                        let col = if trans_b {
                            idx / d[1].max(1)
                        } else {
                            idx % d[1].max(1)
                        };
                        *x = (f64::from(*x) / s[col]) as f32;
                    }
                }
            }
            write(g, &wname, w.dims.clone(), &v);
            if n.inputs.get(2).is_some_and(|b| !b.is_empty()) {
                let bname = own_copy(g, *node, 2);
                let b = g
                    .initializer(&bname)
                    .cloned()
                    .ok_or_else(|| PassError::Model(format!("{bname} vanished")))?;
                let bv = b.to_f32()?;
                // Gemm: beta·(C/s) = (beta·C)/s, whatever beta is.
                let dims = if bv.len() == 1 {
                    vec![channels as i64]
                } else {
                    b.dims.clone()
                };
                let out: Vec<f32> = (0..channels)
                    .map(|i| (f64::from(if bv.len() == 1 { bv[0] } else { bv[i] }) / s[i]) as f32)
                    .collect();
                write(g, &bname, dims, &out);
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::Node;

    /// x ─ Mul(c) ─ Add(b) ─ t ─ MatMul(W) ─ y, with a scalar `c` and `b`.
    fn graph() -> Graph {
        let mut g = Graph::new("g");
        g.add_initializer(Tensor::from_f32("c", vec![], &[2.0]));
        g.add_initializer(Tensor::from_f32("b", vec![1], &[1.0]));
        g.add_initializer(Tensor::from_f32(
            "w",
            vec![2, 3],
            &[1.0, -2.0, 0.5, 0.1, 0.2, -0.3],
        ));
        g.add_node(Node::with_io("Mul", "mul", &["x", "c"], &["m"]));
        g.add_node(Node::with_io("Add", "add", &["m", "b"], &["t"]));
        g.add_node(Node::with_io("MatMul", "mm", &["t", "w"], &["y"]));
        g
    }

    /// y for one row `x`, from the graph's constants (broadcasting c and b).
    fn eval(g: &Graph, x: [f32; 2]) -> Vec<f64> {
        let v = |n: &str| g.initializer(n).unwrap().to_f32().unwrap();
        let (c, b, w) = (v("c"), v("b"), v("w"));
        let at = |a: &[f32], i: usize| f64::from(if a.len() == 1 { a[0] } else { a[i] });
        let t: Vec<f64> = (0..2)
            .map(|i| f64::from(x[i]) * at(&c, i) + at(&b, i))
            .collect();
        (0..3)
            .map(|j| (0..2).map(|i| t[i] * f64::from(w[i * 3 + j])).sum())
            .collect()
    }

    #[test]
    fn smoothing_a_matmul_input_keeps_the_function_and_evens_the_channels() {
        let mut g = graph();
        let cands = candidates(&g);
        assert_eq!(cands.len(), 1);
        assert_eq!((cands[0].tensor.as_str(), cands[0].axis), ("t", LAST_AXIS));
        let before = eval(&g, [0.3, -40.0]);
        // Channel 1 of t is 100x wider than channel 0.
        let absmax = BTreeMap::from([("t".to_string(), vec![1.0, 100.0])]);
        let rank = BTreeMap::from([("t".to_string(), 2)]);
        let mut report = PassReport::default();
        assert_eq!(
            apply(&mut g, &cands, &absmax, &rank, 0.5, &mut report).unwrap(),
            1
        );
        let after = eval(&g, [0.3, -40.0]);
        for (a, b) in before.iter().zip(&after) {
            assert!(
                (a - b).abs() < 1e-4 * a.abs().max(1.0),
                "{before:?} vs {after:?}"
            );
        }
        // The scalar constants became one value per channel.
        assert_eq!(g.initializer("c").unwrap().dims, vec![2]);
        assert_eq!(g.initializer("b").unwrap().dims, vec![2]);
        let d = &report.details[0];
        assert!(
            d["channel_range_spread_after"].as_f64() < d["channel_range_spread_before"].as_f64()
        );
    }

    #[test]
    fn tensors_with_other_readers_or_unabsorbable_producers_are_left_alone() {
        // t also read by a Relu: not every reader takes the factor.
        let mut g = graph();
        g.add_node(Node::with_io("Relu", "r", &["t"], &["r_out"]));
        assert!(candidates(&g).is_empty());
        // A Sigmoid before the MatMul cannot absorb 1/s.
        let mut g = Graph::new("g");
        g.add_initializer(Tensor::from_f32("w", vec![2, 2], &[1.0, 2.0, 3.0, 4.0]));
        g.add_node(Node::with_io("Sigmoid", "s", &["x"], &["t"]));
        g.add_node(Node::with_io("MatMul", "mm", &["t", "w"], &["y"]));
        assert!(candidates(&g).is_empty());
    }

    #[test]
    fn depthwise_readers_get_every_channel_to_the_widest_range() {
        let s = factors(&[1.0, 4.0, 0.0], &[None], 0.5);
        assert_eq!(s, vec![0.25, 1.0, 1.0]);
        // Otherwise sqrt(a / w) at alpha 0.5, clamped.
        let s = factors(&[4.0, 1e6], &[Some(vec![1.0, 1.0])], 0.5);
        assert_eq!(s, vec![2.0, 100.0]);
    }
}
