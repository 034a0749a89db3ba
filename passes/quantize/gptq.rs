//! `weights.rounding: gptq`: weight rounding that minimizes the error of the
//! layer's output on the calibration inputs, not of the weights themselves.
//!
//! Rounding each weight to its nearest level makes every weight's error
//! small, but the output error of a row `w` is `Δwᵀ H Δw` with `H = Σ x xᵀ`
//! over the inputs `x` it sees (im2col patches for a Conv, rows of `A` for a
//! MatMul/Gemm). Neighbouring pixels and channels are correlated, so `H` is
//! far from diagonal and nearest rounding leaves errors that add up along
//! its large directions. GPTQ (optimal brain quantization, column by
//! column) rounds the weights of a row in order and pushes each one's
//! rounding error onto the weights not rounded yet, through the upper
//! Cholesky factor `U` of `H⁻¹`: `w[j] −= (w[i] − q[i]) / U[i,i] · U[i,j]`.
//! The scales and zero points are the nearest-rounding ones (`weights.range`
//! decides them); only the integer levels change.
//!
//! `H` is gathered in one extra pass over the calibration samples by
//! `calib::second_moments` (at most 1024 evenly spaced output positions or
//! rows per sample, f64, deterministic). `H` is damped by 1% of its mean
//! diagonal, as GPTQ does; the factorizations are `linalg`'s. Layers whose
//! rows have more than 1536 inputs (`calib::moments::MAX_ROW`) keep nearest
//! rounding (the O(D³) factorization would dominate the pass), as do Convs
//! with `auto_pad` or more than two spatial dims and MatMuls with a weight
//! that is not 2-D.
//!
//! Measured on the bench (BENCHMARKS.md): on PP-OCR rec's 1×1 Convs the
//! output SQNR of one layer's weights alone goes from 22 to 46 dB.

use std::collections::BTreeMap;

use crate::data::Sample;
use crate::ir::Model;
use crate::passes::calib::{second_moments, MomentJob, MomentLimits, Moments};
use crate::passes::{linalg, PassError};

use super::plan::PlannedWeight;
use super::qdq::QuantWeight;
use super::QType;

/// Gathers `H` for every planned weight GPTQ can round, keyed by weight
/// name and axis (a weight read by several nodes gets the sum of their `H`:
/// the output errors add up). Runs `samples` through the model once.
pub fn grams(
    model: &Model,
    weights: &[PlannedWeight],
    samples: &[Sample],
    dir: Option<&std::path::Path>,
    threads: usize,
) -> Result<BTreeMap<(String, Option<usize>), Moments>, PassError> {
    let g = &model.graph;
    let (mut jobs, mut keys) = (Vec::new(), Vec::new());
    for w in weights.iter().filter(|w| w.slot == 1) {
        if let Some(job) = MomentJob::for_node(g, w.node) {
            jobs.push(job);
            keys.push((w.name.clone(), w.axis));
        }
    }
    let gathered = second_moments(
        model,
        &jobs,
        samples,
        dir,
        threads,
        MomentLimits::default(),
        false,
    )?;
    let mut out: BTreeMap<(String, Option<usize>), Moments> = BTreeMap::new();
    let mut refused = std::collections::BTreeSet::new();
    for (key, m) in keys.into_iter().zip(gathered) {
        let Some(m) = m else { continue };
        if refused.contains(&key) {
            continue;
        }
        match out.get_mut(&key) {
            Some(sum) if sum.layout == m.layout => {
                for (a, b) in sum.h.iter_mut().zip(&m.h) {
                    a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
                }
                sum.positions += m.positions;
            }
            Some(_) => {
                // Read with two different layouts: keep nearest rounding.
                out.remove(&key);
                refused.insert(key);
            }
            None => {
                out.insert(key, m);
            }
        }
    }
    Ok(out)
}

/// The upper Cholesky factor `U` of `(H + λI)⁻¹` (`Uᵀ U = (H + λI)⁻¹`; λ =
/// 1% of the mean diagonal; inputs never seen get 1 on the diagonal, as GPTQ
/// does); `None` when `H` is all zero or not positive definite after damping.
///
/// With `J` the order reversal and `J H J = L Lᵀ` (Cholesky), `H = R Rᵀ`
/// for the upper `R = J L J`, so `H⁻¹ = R⁻ᵀ R⁻¹` and `U = R⁻¹ = J L⁻¹ J`:
/// one factorization and one triangular inverse (`linalg`).
fn inverse_factor(h: &[f64], d: usize) -> Option<Vec<f64>> {
    let mean = (0..d).map(|i| h[i * d + i]).sum::<f64>() / d as f64;
    if mean.is_nan() || mean <= 0.0 || !mean.is_finite() {
        return None;
    }
    // J (H + λI) J.
    let mut a = vec![0f64; d * d];
    for r in 0..d {
        for c in 0..d {
            a[r * d + c] = h[(d - 1 - r) * d + (d - 1 - c)];
        }
        if a[r * d + r] == 0.0 {
            a[r * d + r] = 1.0;
        }
        a[r * d + r] += 0.01 * mean;
    }
    let l = linalg::cholesky(&a, d)?;
    let li = linalg::lower_inverse(&l, d);
    // U[i][j] = L⁻¹[d−1−i][d−1−j].
    let mut u = vec![0f64; d * d];
    for i in 0..d {
        for j in i..d {
            u[i * d + j] = li[(d - 1 - i) * d + (d - 1 - j)];
        }
    }
    Some(u)
}

/// `nearest` with its integer levels re-rounded by GPTQ against `gram`
/// (same scales and zero points); `None` when `H` cannot be factored or the
/// weight has non-finite values. `channel_of(index)` gives the scale index
/// of a weight element.
pub fn round(
    values: &[f32],
    nearest: &QuantWeight,
    dtype: QType,
    gram: &Moments,
    channel_of: impl Fn(usize) -> usize,
) -> Option<QuantWeight> {
    if values.iter().any(|v| !v.is_finite()) {
        return None;
    }
    let layout = &gram.layout;
    let d = layout.row_len();
    let rows = values.len() / d.max(1);
    let per_group = rows / layout.groups().max(1);
    let factors: Vec<Vec<f64>> = gram
        .h
        .iter()
        .map(|h| inverse_factor(h, d))
        .collect::<Option<_>>()?;
    let (lo, hi) = dtype.limits();
    let mut out = nearest.clone();
    let mut w = vec![0f64; d];
    for r in 0..rows {
        let u = &factors[r / per_group.max(1)];
        for (j, v) in w.iter_mut().enumerate() {
            *v = f64::from(values[layout.index(r, j)]);
        }
        for i in 0..d {
            let at = layout.index(r, i);
            let c = channel_of(at);
            let (s, zp) = (f64::from(nearest.scales[c]), nearest.zero_points[c]);
            let level = ((w[i] / s).round_ties_even() as i64 + zp).clamp(lo, hi);
            out.data[at] = dtype.byte(level);
            let err = (w[i] - (level - zp) as f64 * s) / u[i * d + i];
            for j in i + 1..d {
                w[j] -= err * u[i * d + j];
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passes::calib::Layout;
    use crate::passes::quantize::qdq::quantize_weight;
    use crate::passes::quantize::ranges::Grid;

    fn dense(k: usize, n: usize) -> Layout {
        Layout::Dense {
            k,
            n,
            transposed: false,
        }
    }

    /// Output error `Σ_rows Δwᵀ H Δw`.
    fn output_error(values: &[f32], q: &QuantWeight, gram: &Moments, dtype: QType) -> f64 {
        let layout = &gram.layout;
        let d = layout.row_len();
        let rows = values.len() / d;
        let deq: Vec<f64> = (0..values.len())
            .map(|i| {
                let c = i % q.scales.len();
                ((dtype.value(q.data[i]) - q.zero_points[c]) as f32 * q.scales[c]) as f64
            })
            .collect();
        (0..rows)
            .map(|r| {
                let dw: Vec<f64> = (0..d)
                    .map(|j| deq[layout.index(r, j)] - f64::from(values[layout.index(r, j)]))
                    .collect();
                (0..d)
                    .map(|a| {
                        (0..d)
                            .map(|b| dw[a] * gram.h[0][a * d + b] * dw[b])
                            .sum::<f64>()
                    })
                    .sum::<f64>()
            })
            .sum()
    }

    #[test]
    fn inverse_factor_is_the_upper_cholesky_factor_of_the_damped_inverse() {
        // H = A Aᵀ for a fixed 5×5 A: Uᵀ U must equal (H + λI)⁻¹, U upper.
        let d = 5;
        let a: Vec<f64> = (0..d * d)
            .map(|i| ((i * 7 + 3) % 11) as f64 - 5.0)
            .collect();
        let mut h = vec![0f64; d * d];
        for r in 0..d {
            for c in 0..d {
                h[r * d + c] = (0..d).map(|k| a[r * d + k] * a[c * d + k]).sum();
            }
        }
        let u = inverse_factor(&h, d).unwrap();
        let lambda = 0.01 * (0..d).map(|i| h[i * d + i]).sum::<f64>() / d as f64;
        let utu = |r: usize, c: usize| (0..d).map(|k| u[k * d + r] * u[k * d + c]).sum::<f64>();
        for r in 0..d {
            for c in 0..d {
                let v: f64 = (0..d)
                    .map(|k| (h[r * d + k] + if r == k { lambda } else { 0.0 }) * utu(k, c))
                    .sum();
                let want = if r == c { 1.0 } else { 0.0 };
                assert!((v - want).abs() < 1e-9, "{r},{c}: {v}");
                if c < r {
                    assert_eq!(u[r * d + c], 0.0, "upper triangular");
                }
            }
        }
    }

    #[test]
    fn correlated_inputs_get_a_smaller_output_error_than_nearest_rounding() {
        // Inputs that move together: H has a dominant all-ones direction, the
        // one nearest rounding's errors pile up along.
        let (k, n) = (16, 8);
        let mut state = 7u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) as f64 / (1u64 << 31) as f64) - 0.5
        };
        let rows = 512;
        let x: Vec<f32> = (0..rows)
            .flat_map(|_| {
                let common = next() * 4.0;
                (0..k)
                    .map(|_| (common + next() * 0.2) as f32)
                    .collect::<Vec<_>>()
            })
            .collect();
        let layout = dense(k, n);
        let mut h = vec![vec![0f64; k * k]];
        let positions = layout.accumulate(&x, &[rows, k], &mut h, rows);
        let gram = Moments {
            layout,
            h,
            positions,
            samples: 1,
        };
        let values: Vec<f32> = (0..k * n).map(|_| next() as f32).collect();
        let grid = Grid {
            qmin: -127,
            qmax: 127,
            symmetric: true,
        };
        let nearest = quantize_weight(
            &values,
            &[k as i64, n as i64],
            Some(1),
            QType::Int8,
            &grid,
            false,
        );
        let better = round(&values, &nearest, QType::Int8, &gram, |i| i % n).unwrap();
        assert_eq!(better.scales, nearest.scales, "only the levels change");
        let (e0, e1) = (
            output_error(&values, &nearest, &gram, QType::Int8),
            output_error(&values, &better, &gram, QType::Int8),
        );
        assert!(e1 < e0 * 0.5, "gptq {e1} vs nearest {e0}");
    }
}
