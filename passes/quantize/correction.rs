//! Bias correction: weight quantization shifts each output channel's mean
//! by `Σ_i E[x_i] · Σ_k (W_q − W)[o, i, k]`; subtracting that from the bias
//! (before it is quantized) removes the shift, with the input channel means
//! `E[x_i]` measured during calibration (per sample, summed in sample order,
//! so thread count does not change a byte).
//!
//! Measured on the bench (BENCHMARKS.md, "Ablation"): it helps most fully
//! quantized models (with `mse` ranges: resnet_tiny +3.2 dB, PP-OCR cls
//! +2.0; silero-vad −0.6) but, with means taken from 32 samples,
//! mixed-precision choices made with it generalize worse (PP-OCR cls: 23.1
//! vs 29.3 dB held-out), so it is off by default.

use std::collections::BTreeMap;

use crate::ir::{Graph, Node};

use super::plan::Plan;

/// The activation inputs of nodes with a planned bias (or a dynamically
/// scaled Conv with a float bias), and their channel axis (Conv: 1; Gemm:
/// 1, or 0 with `transA`): what bias correction needs the channel means of.
pub fn bias_inputs(g: &Graph, plan: &Plan) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    let dynamic = plan
        .dynamic
        .iter()
        .filter(|id| g.node(**id).inputs.get(2).is_some_and(|b| !b.is_empty()));
    for &id in plan.biases.iter().map(|b| &b.node).chain(dynamic) {
        let n = g.node(id);
        let axis = match n.op_type() {
            "Conv" => 1,
            "Gemm" if n.attr_int("transA") == Some(1) => 0,
            "Gemm" => 1,
            _ => continue,
        };
        out.insert(n.inputs[0].clone(), axis);
    }
    out
}

/// The mean output error per output channel that the weight error `dw`
/// (quantized − float, shape `dims`) causes for inputs with channel means
/// `means`: Conv `Σ_{j,k} dw[o, j, k] · mean[g·(C/G) + j]` (borders where
/// padding reads zeros aside), Gemm `alpha · Σ_k mean[k] · dB[k, o]`.
/// `None` when the shapes do not line up.
pub fn bias_shift(node: &Node, dims: &[i64], dw: &[f32], means: &[f64]) -> Option<Vec<f64>> {
    let d: Vec<usize> = dims.iter().map(|&v| v.max(0) as usize).collect();
    match node.op_type() {
        "Conv" => {
            let (out, per_group) = (*d.first()?, *d.get(1)?);
            let kernel: usize = d[2..].iter().product();
            if per_group == 0 || means.len() % per_group != 0 {
                return None;
            }
            let groups = means.len() / per_group;
            if groups == 0 || out % groups != 0 {
                return None;
            }
            let out_per_group = out / groups;
            Some(
                (0..out)
                    .map(|o| {
                        let g = o / out_per_group;
                        (0..per_group)
                            .map(|j| {
                                let start = (o * per_group + j) * kernel;
                                let sum: f64 = dw[start..start + kernel]
                                    .iter()
                                    .map(|&v| f64::from(v))
                                    .sum();
                                sum * means[g * per_group + j]
                            })
                            .sum()
                    })
                    .collect(),
            )
        }
        "Gemm" if d.len() == 2 => {
            let trans_b = node.attr_int("transB") == Some(1);
            let (k, n) = if trans_b { (d[1], d[0]) } else { (d[0], d[1]) };
            if means.len() != k {
                return None;
            }
            let alpha = f64::from(node.attr_float("alpha").unwrap_or(1.0));
            let beta = f64::from(node.attr_float("beta").unwrap_or(1.0));
            if beta == 0.0 {
                return None;
            }
            Some(
                (0..n)
                    .map(|o| {
                        let s: f64 = (0..k)
                            .map(|i| {
                                let idx = if trans_b { o * k + i } else { i * n + o };
                                f64::from(dw[idx]) * means[i]
                            })
                            .sum();
                        alpha * s / beta
                    })
                    .collect(),
            )
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{AttrValue, Attribute};

    /// Direct evaluation: the mean over positions of a grouped 1-D
    /// convolution (no padding) of a constant-per-channel input.
    fn conv_mean_shift(dw: &[f32], dims: [usize; 3], groups: usize, means: &[f64]) -> Vec<f64> {
        let [out, per_group, k] = dims;
        let out_per_group = out / groups;
        (0..out)
            .map(|o| {
                let g = o / out_per_group;
                let mut acc = 0.0;
                for j in 0..per_group {
                    for t in 0..k {
                        acc +=
                            f64::from(dw[(o * per_group + j) * k + t]) * means[g * per_group + j];
                    }
                }
                acc
            })
            .collect()
    }

    #[test]
    fn conv_shift_matches_direct_evaluation_with_groups() {
        // 4 outputs, 2 groups, 3 inputs per group (6 input channels), kernel 2.
        let dw: Vec<f32> = (0..24)
            .map(|i| ((i * 7) % 11) as f32 * 0.01 - 0.05)
            .collect();
        let means = [0.5, -1.0, 2.0, 0.25, 3.0, -0.5];
        let mut n = Node::with_io("Conv", "c", &["x", "w", "b"], &["y"]);
        n.set_attr(Attribute::new("group", AttrValue::Int(2)));
        let got = bias_shift(&n, &[4, 3, 2], &dw, &means).unwrap();
        let want = conv_mean_shift(&dw, [4, 3, 2], 2, &means);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-12, "{got:?} vs {want:?}");
        }
        // Means that do not match the weight's input channels: no shift.
        assert!(bias_shift(&n, &[4, 3, 2], &dw, &means[..5]).is_none());
    }

    #[test]
    fn gemm_shift_follows_trans_b_alpha_and_beta() {
        // B is [K=2, N=3]; dB[k, n] = k + n.
        let dw = [0.0, 1.0, 2.0, 1.0, 2.0, 3.0];
        let means = [1.0, 10.0];
        let mut n = Node::with_io("Gemm", "g", &["a", "b", "c"], &["y"]);
        n.set_attr(Attribute::new("alpha", AttrValue::Float(2.0)));
        n.set_attr(Attribute::new("beta", AttrValue::Float(0.5)));
        let got = bias_shift(&n, &[2, 3], &dw, &means).unwrap();
        // alpha/beta · Σ_k mean[k]·dB[k, n] = 4 · (0+10, 1+20, 2+30).
        assert_eq!(got, vec![40.0, 84.0, 128.0]);
        // The same weight stored transposed ([N, K]).
        n.set_attr(Attribute::new("transB", AttrValue::Int(1)));
        let t = [0.0, 1.0, 1.0, 2.0, 2.0, 3.0];
        assert_eq!(bias_shift(&n, &[3, 2], &t, &means).unwrap(), got);
    }
}
