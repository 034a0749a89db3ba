//! The graph edits: folded activations removed, weights and biases stored as
//! integers behind a DequantizeLinear, and a QuantizeLinear/DequantizeLinear
//! pair on every planned activation tensor.
//!
//! Arithmetic, as QuantizeLinear defines it: `q = clamp(round_half_even(x / s) + zp)`;
//! weights per channel `c` get `s_c` from the channel's range on the weight
//! grid (symmetric int8: `s_c = max|w_c| / 127`, zero point 0); a bias gets
//! `s_b[c] = s_x · s_w[c]` (computed in f32, the product runtimes assume
//! when they fuse the bias into an integer kernel) and zero point 0.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::ir::{Attribute, DataType, Graph, Node, NodeId, Tensor};

use super::plan::{Plan, Readers};
use super::ranges::Grid;
use super::QType;

/// Quantization parameters of one activation tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorParams {
    /// Integer type.
    pub dtype: QType,
    /// Scale.
    pub scale: f32,
    /// Zero point.
    pub zero_point: i64,
    /// The real range the parameters were made from.
    pub range: (f64, f64),
    /// How the range was chosen (`minmax`, `override`, `same as "x"`).
    pub source: String,
}

/// A weight after quantization.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantWeight {
    /// Integer values, one byte each.
    pub data: Vec<u8>,
    /// Scale per channel (one for per-tensor).
    pub scales: Vec<f32>,
    /// Zero point per channel.
    pub zero_points: Vec<i64>,
}

impl QuantWeight {
    /// The real values the integers stand for, `(q − zp[c]) · s[c]`, in the
    /// layout of the original (`inner` values per channel step).
    pub fn dequantized(&self, dtype: QType, inner: usize) -> Vec<f32> {
        let channels = self.scales.len().max(1);
        self.data
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                let c = (i / inner.max(1)) % channels;
                (dtype.value(b) - self.zero_points[c]) as f32 * self.scales[c]
            })
            .collect()
    }
}

/// Quantizes `values` of shape `dims` along `axis` (or as one tensor). With
/// `mse_range`, each channel's range is its observed one shrunk by the factor
/// in 1.00, 0.99, ..., 0.50 whose rounding-plus-clipping error is least
/// (first least on ties); else the observed range.
pub fn quantize_weight(
    values: &[f32],
    dims: &[i64],
    axis: Option<usize>,
    dtype: QType,
    grid: &Grid,
    mse_range: bool,
) -> QuantWeight {
    let (outer, channels, inner) = match axis {
        Some(a) => {
            let d = |r: &[i64]| r.iter().product::<i64>().max(0) as usize;
            (d(&dims[..a]), dims[a].max(0) as usize, d(&dims[a + 1..]))
        }
        None => (1, 1, values.len()),
    };
    let channel = |c: usize| {
        (0..outer).flat_map(move |o| {
            let start = (o * channels + c) * inner;
            start..start + inner
        })
    };
    let (lo_q, hi_q) = dtype.limits();
    let level = |v: f32, s: f32, zp: i64| ((v / s).round_ties_even() as i64 + zp).clamp(lo_q, hi_q);
    let mut data = vec![0u8; values.len()];
    let mut scales = Vec::with_capacity(channels);
    let mut zero_points = Vec::with_capacity(channels);
    for c in 0..channels {
        let (mut lo, mut hi) = (0f64, 0f64);
        for i in channel(c) {
            let v = f64::from(values[i]);
            if v.is_finite() {
                lo = lo.min(v);
                hi = hi.max(v);
            }
        }
        let (mut s, mut zp) = grid.params(lo, hi);
        if mse_range && hi > lo {
            let error = |s: f32, zp: i64| -> f64 {
                channel(c)
                    .map(|i| {
                        let v = values[i];
                        let d = f64::from(v) - f64::from((level(v, s, zp) - zp) as f32 * s);
                        if d.is_finite() {
                            d * d
                        } else {
                            0.0
                        }
                    })
                    .sum()
            };
            let mut best = error(s, zp);
            for step in 1..=50 {
                let f = 1.0 - f64::from(step) * 0.01;
                let (s2, zp2) = grid.params(lo * f, hi * f);
                let e = error(s2, zp2);
                if e < best {
                    (best, s, zp) = (e, s2, zp2);
                }
            }
        }
        for i in channel(c) {
            data[i] = dtype.byte(level(values[i], s, zp));
        }
        scales.push(s);
        zero_points.push(zp);
    }
    QuantWeight {
        data,
        scales,
        zero_points,
    }
}

/// Quantizes a bias to int32 with `scale[c]`; returns the values and how
/// many saturated.
pub fn quantize_bias(values: &[f32], scales: &[f32]) -> (Vec<i32>, usize) {
    let mut saturated = 0;
    let q = values
        .iter()
        .zip(scales)
        .map(|(&b, &s)| {
            let q = (f64::from(b) / f64::from(s)).round_ties_even();
            if q > f64::from(i32::MAX) || q < f64::from(i32::MIN) {
                saturated += 1;
            }
            q.clamp(f64::from(i32::MIN), f64::from(i32::MAX)) as i32
        })
        .collect();
    (q, saturated)
}

/// Edits the graph; returns the counters of what it added.
pub struct Editor<'g> {
    /// The graph being edited.
    pub g: &'g mut Graph,
    /// One Q/DQ pair per consumer.
    pub dedicated: bool,
    /// Q nodes added.
    pub q_nodes: usize,
    /// DQ nodes added.
    pub dq_nodes: usize,
    /// Node names in use (tract refuses duplicates).
    pub node_names: std::collections::BTreeSet<String>,
}

fn tensor_of(name: &str, dtype: DataType, dims: Vec<i64>, raw: Vec<u8>) -> Tensor {
    Tensor::from_raw(name, dtype, dims, Bytes::from(raw))
}

fn zero_points(dtype: QType, zps: &[i64]) -> Vec<u8> {
    zps.iter().flat_map(|&z| dtype.bytes(z)).collect()
}

impl<'g> Editor<'g> {
    /// An editor over `g`.
    pub fn new(g: &'g mut Graph, dedicated: bool) -> Editor<'g> {
        let node_names = g.nodes().map(|(_, n)| n.name().to_string()).collect();
        Editor {
            g,
            dedicated,
            q_nodes: 0,
            dq_nodes: 0,
            node_names,
        }
    }

    /// `base`, or `base_1`, `base_2`... : a node name not yet taken.
    pub fn node_name(&mut self, base: &str) -> String {
        let name = if self.node_names.contains(base) {
            (1..)
                .map(|i| format!("{base}_{i}"))
                .find(|n| !self.node_names.contains(n))
                .unwrap_or_default()
        } else {
            base.to_string()
        };
        self.node_names.insert(name.clone());
        name
    }

    /// Removes each folded Relu/Clip and makes the compute node produce its output.
    pub fn apply_folds(&mut self, plan: &Plan) {
        for f in &plan.folds {
            self.g.remove_node(f.node);
            if let Some((producer, slot)) = self.g.producer(&f.from) {
                let to = f.to.clone();
                self.g.update_node(producer, |n| n.outputs[slot] = to);
            }
            self.g.value_info.retain(|v| v.name() != f.from);
        }
    }

    /// Stores `name` (read by `node` at `slot`) as integers behind a
    /// DequantizeLinear; returns the DQ output. Reuses `cache` for a weight
    /// shared by several nodes with the same axis.
    #[allow(clippy::too_many_arguments)]
    pub fn weight(
        &mut self,
        node: NodeId,
        slot: usize,
        name: &str,
        axis: Option<usize>,
        q: &QuantWeight,
        dtype: QType,
        dims: &[i64],
        cache: &mut BTreeMap<(String, Option<usize>), String>,
    ) -> String {
        if let Some(out) = cache.get(&(name.to_string(), axis)) {
            let out = out.clone();
            self.g.set_input(node, slot, &out);
            return out;
        }
        let qname = self.g.unique_name(&format!("{name}_quantized"));
        self.g.add_initializer(tensor_of(
            &qname,
            dtype.data_type(),
            dims.to_vec(),
            q.data.clone(),
        ));
        let out = self.dequantize_const(node, name, &qname, &q.scales, dtype, &q.zero_points, axis);
        self.g.set_input(node, slot, &out);
        cache.insert((name.to_string(), axis), out.clone());
        out
    }

    /// Stores a bias as int32 behind a DequantizeLinear and rewires `node`.
    pub fn bias(&mut self, node: NodeId, slot: usize, name: &str, values: &[i32], scales: &[f32]) {
        let qname = self.g.unique_name(&format!("{name}_quantized"));
        let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.g.add_initializer(tensor_of(
            &qname,
            DataType::Int32,
            vec![values.len() as i64],
            raw,
        ));
        let axis = (scales.len() > 1).then_some(0);
        let zps = vec![0i64; scales.len()];
        let out = self.dequantize_const(node, name, &qname, scales, QType::Int32, &zps, axis);
        self.g.set_input(node, slot, &out);
    }

    /// A DequantizeLinear of the constant `qname`, placed before `before`.
    #[allow(clippy::too_many_arguments)]
    fn dequantize_const(
        &mut self,
        before: NodeId,
        base: &str,
        qname: &str,
        scales: &[f32],
        dtype: QType,
        zps: &[i64],
        axis: Option<usize>,
    ) -> String {
        let dims = if axis.is_some() {
            vec![scales.len() as i64]
        } else {
            vec![]
        };
        let scale = self.g.unique_name(&format!("{base}_scale"));
        let zp = self.g.unique_name(&format!("{base}_zero_point"));
        self.g
            .add_initializer(Tensor::from_f32(&scale, dims.clone(), scales));
        self.g.add_initializer(tensor_of(
            &zp,
            dtype.data_type(),
            dims,
            zero_points(dtype, zps),
        ));
        let out = self.g.unique_name(&format!("{base}_dequantized"));
        let dq_name = self.node_name(&format!("{base}_DequantizeLinear"));
        let mut dq = Node::with_io("DequantizeLinear", &dq_name, &[qname, &scale, &zp], &[&out]);
        if let Some(a) = axis {
            dq.set_attr(Attribute::int("axis", a as i64));
        }
        self.g.insert_node_before(before, dq);
        self.dq_nodes += 1;
        out
    }

    /// Puts a Q/DQ pair (or one per reader) on activation `name`.
    pub fn activation(&mut self, name: &str, readers: &Readers, p: &TensorParams) {
        let all = matches!(readers, Readers::All);
        let mut readers: Vec<(NodeId, usize)> = match readers {
            Readers::All => self.g.uses(name).iter().map(|u| (u.node, u.slot)).collect(),
            Readers::Nodes(v) => v.clone(),
        };
        readers.dedup();
        // A graph output produced by a quantized op: the DQ produces it.
        let is_out = all && self.g.is_output(name) && self.g.producer(name).is_some();
        let scale = self.g.unique_name(&format!("{name}_scale"));
        let zp = self.g.unique_name(&format!("{name}_zero_point"));
        self.g
            .add_initializer(Tensor::from_f32(&scale, vec![], &[p.scale]));
        self.g.add_initializer(tensor_of(
            &zp,
            p.dtype.data_type(),
            vec![],
            zero_points(p.dtype, &[p.zero_point]),
        ));
        // The float value the Q reads: a graph output's producer is renamed
        // so that the DequantizeLinear can produce the output itself.
        let source = if is_out {
            let renamed = self.g.unique_name(&format!("{name}_float"));
            if let Some((producer, slot)) = self.g.producer(name) {
                let r = renamed.clone();
                self.g.update_node(producer, |n| n.outputs[slot] = r);
            }
            renamed
        } else {
            name.to_string()
        };
        let anchor = self.g.producer(&source).map(|(id, _)| id);
        let first_reader = self
            .g
            .nodes()
            .map(|(id, _)| id)
            .find(|id| readers.iter().any(|(r, _)| r == id));
        let pair = |ed: &mut Editor, before: Option<NodeId>, out: String| -> String {
            let q_out = ed.g.unique_name(&format!("{name}_quantized"));
            let q_name = ed.node_name(&format!("{name}_QuantizeLinear"));
            let dq_name = ed.node_name(&format!("{name}_DequantizeLinear"));
            let q = Node::with_io(
                "QuantizeLinear",
                &q_name,
                &[&source, &scale, &zp],
                &[&q_out],
            );
            let dq = Node::with_io(
                "DequantizeLinear",
                &dq_name,
                &[&q_out, &scale, &zp],
                &[&out],
            );
            let q_id = match (before, anchor, first_reader) {
                (Some(b), _, _) => ed.g.insert_node_before(b, q),
                (None, Some(a), _) => ed.g.insert_node_after(a, q),
                (None, None, Some(r)) => ed.g.insert_node_before(r, q),
                (None, None, None) => ed.g.add_node(q),
            };
            ed.g.insert_node_after(q_id, dq);
            ed.q_nodes += 1;
            ed.dq_nodes += 1;
            out
        };
        if self.dedicated {
            for &(node, slot) in &readers {
                let out = self.g.unique_name(&format!("{name}_dequantized"));
                let out = pair(self, Some(node), out);
                self.g.set_input(node, slot, &out);
            }
            if is_out {
                pair(self, None, name.to_string());
            }
        } else if is_out {
            pair(self, None, name.to_string());
        } else {
            let out = self.g.unique_name(&format!("{name}_dequantized"));
            let out = pair(self, None, out);
            for &(node, slot) in &readers {
                self.g.set_input(node, slot, &out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_quantized_per_output_channel() {
        // Two output channels of a [2, 3] weight along axis 0.
        let w = [0.5, -1.0, 0.25, 10.0, 5.0, -2.5];
        let grid = QType::Int8.grid(true);
        let q = quantize_weight(&w, &[2, 3], Some(0), QType::Int8, &grid, false);
        assert_eq!(q.scales, vec![1.0 / 127.0, 10.0 / 127.0]);
        assert_eq!(q.zero_points, vec![0, 0]);
        let ints: Vec<i8> = q.data.iter().map(|&b| b as i8).collect();
        assert_eq!(ints, vec![64, -127, 32, 127, 64, -32]);
        // Along axis 1 of the same tensor: three channels of two values.
        let q = quantize_weight(&w, &[2, 3], Some(1), QType::Int8, &grid, false);
        assert_eq!(q.scales.len(), 3);
        assert_eq!(q.scales[0], 10.0 / 127.0);
    }

    #[test]
    fn mse_weight_ranges_never_add_error_and_clip_lone_outliers() {
        // One channel: 10 000 values spread over ±0.5 and one at 0.6 (clipping
        // it to ~0.55 costs less than the coarser step costs everything else).
        let mut w: Vec<f32> = (0..10_000).map(|i| (i as f32 / 9_999.0) - 0.5).collect();
        w.push(0.6);
        let grid = QType::Int8.grid(true);
        let err = |q: &QuantWeight| -> f64 {
            q.dequantized(QType::Int8, 1)
                .iter()
                .zip(&w)
                .map(|(d, v)| f64::from(d - v).powi(2))
                .sum()
        };
        let minmax = quantize_weight(&w, &[1, 10_001], Some(0), QType::Int8, &grid, false);
        let mse = quantize_weight(&w, &[1, 10_001], Some(0), QType::Int8, &grid, true);
        assert!(mse.scales[0] < minmax.scales[0], "{:?}", mse.scales);
        assert!(err(&mse) < err(&minmax));
        // Evenly spread values keep their full range.
        let even: Vec<f32> = (0..=254).map(|i| (i as f32 - 127.0) / 127.0).collect();
        let a = quantize_weight(&even, &[1, 255], Some(0), QType::Int8, &grid, true);
        assert_eq!(a.scales, vec![1.0 / 127.0]);
    }

    #[test]
    fn all_zero_channels_get_scale_one() {
        let grid = QType::Int8.grid(true);
        let q = quantize_weight(&[0.0; 4], &[2, 2], Some(0), QType::Int8, &grid, false);
        assert_eq!(q.scales, vec![1.0, 1.0]);
        assert!(q.data.iter().all(|&b| b == 0));
    }

    #[test]
    fn biases_round_and_saturate() {
        let (q, sat) = quantize_bias(&[1.0, -0.26, 1e9], &[0.5, 0.1, 1e-6]);
        assert_eq!(q, vec![2, -3, i32::MAX]);
        assert_eq!(sat, 1);
    }
}
