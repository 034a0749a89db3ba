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
//! `H` is gathered in one extra pass over the calibration samples: at most
//! [`POSITIONS_PER_SAMPLE`] evenly spaced output positions (or rows) per
//! sample, accumulated in f64 in sample order (fixed chunks, so the thread
//! count does not change a byte). `H` is damped by 1% of its mean diagonal,
//! as GPTQ does. Layers whose rows have more than [`MAX_ROW`] inputs keep
//! nearest rounding (the O(D³) factorization would dominate the pass), as do
//! Convs with `auto_pad` or more than two spatial dims and MatMuls with a
//! weight that is not 2-D.
//!
//! Measured on the bench (BENCHMARKS.md): on PP-OCR rec's 1×1 Convs the
//! output SQNR of one layer's weights alone goes from 22 to 46 dB.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::data::{Array, Sample};
use crate::exec::{parallel_map, run_samples, Runner};
use crate::ir::{DataType, Model, Node};
use crate::passes::PassError;

use super::plan::PlannedWeight;
use super::qdq::QuantWeight;
use super::QType;

/// Output positions (Conv) or rows (MatMul/Gemm) of one sample that enter `H`.
pub const POSITIONS_PER_SAMPLE: usize = 1024;

/// Largest row length (inputs per output) rounded by GPTQ.
pub const MAX_ROW: usize = 1536;

/// Samples run together before their contributions are added, in order.
const CHUNK: usize = 4;

/// Where the `D` inputs of each output row of a weight come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Layout {
    /// Conv weight `[O, C/g, k…]` (one or two spatial dims), rows contiguous.
    Conv {
        /// Groups.
        groups: usize,
        /// Input channels per group.
        per_group: usize,
        /// Kernel `[kh, kw]` (`kh = 1` for 1-D).
        kernel: [usize; 2],
        /// Strides.
        strides: [usize; 2],
        /// Dilations.
        dilations: [usize; 2],
        /// Leading pads `[top, left]`.
        pads: [usize; 2],
        /// Trailing pads `[bottom, right]`.
        ends: [usize; 2],
        /// Spatial rank (1 or 2).
        rank: usize,
    },
    /// MatMul/Gemm weight `[K, N]` (`transposed`: `[N, K]`); inputs are the
    /// rows of `A` (last dim `K`).
    Dense {
        /// `K`.
        k: usize,
        /// `N`.
        n: usize,
        /// Weight stored `[N, K]` (Gemm `transB`).
        transposed: bool,
    },
}

impl Layout {
    /// The layout of `node`'s weight of shape `dims`, when GPTQ can round it.
    pub fn of(node: &Node, dims: &[i64]) -> Option<Layout> {
        let d: Vec<usize> = dims
            .iter()
            .map(|&v| usize::try_from(v).ok())
            .collect::<Option<_>>()?;
        match node.op_type() {
            "Conv" if d.len() == 3 || d.len() == 4 => {
                let auto = node.attr("auto_pad").map(|a| format!("{:?}", a.value));
                if auto.is_some_and(|a| !a.contains("NOTSET")) {
                    return None;
                }
                let rank = d.len() - 2;
                let pick = |name: &str, default: usize| -> Option<[usize; 2]> {
                    let v: Vec<usize> = match node.attr_ints(name) {
                        Some(v) => v
                            .iter()
                            .map(|&x| usize::try_from(x).ok())
                            .collect::<Option<_>>()?,
                        None => vec![default; rank],
                    };
                    match (rank, v.as_slice()) {
                        (1, [a]) => Some([default, *a]),
                        (2, [a, b]) => Some([*a, *b]),
                        _ => None,
                    }
                };
                let (pads, ends) = match node.attr_ints("pads") {
                    Some(p) if p.len() == 2 * rank => {
                        let p: Vec<usize> = p
                            .iter()
                            .map(|&x| usize::try_from(x).ok())
                            .collect::<Option<_>>()?;
                        if rank == 1 {
                            ([0, p[0]], [0, p[1]])
                        } else {
                            ([p[0], p[1]], [p[2], p[3]])
                        }
                    }
                    None => ([0, 0], [0, 0]),
                    _ => return None,
                };
                let groups = usize::try_from(node.attr_int("group").unwrap_or(1)).ok()?;
                if groups == 0 || d[0] % groups != 0 {
                    return None;
                }
                let kernel = if rank == 1 { [1, d[2]] } else { [d[2], d[3]] };
                Some(Layout::Conv {
                    groups,
                    per_group: d[1],
                    kernel,
                    strides: pick("strides", 1)?,
                    dilations: pick("dilations", 1)?,
                    pads,
                    ends,
                    rank,
                })
            }
            "MatMul" if d.len() == 2 => Some(Layout::Dense {
                k: d[0],
                n: d[1],
                transposed: false,
            }),
            "Gemm" if d.len() == 2 && node.attr_int("transA").unwrap_or(0) == 0 => {
                let transposed = node.attr_int("transB").unwrap_or(0) == 1;
                let (k, n) = if transposed {
                    (d[1], d[0])
                } else {
                    (d[0], d[1])
                };
                Some(Layout::Dense { k, n, transposed })
            }
            _ => None,
        }
    }

    /// Inputs per row.
    pub fn row_len(&self) -> usize {
        match self {
            Layout::Conv {
                per_group, kernel, ..
            } => per_group * kernel[0] * kernel[1],
            Layout::Dense { k, .. } => *k,
        }
    }

    fn groups(&self) -> usize {
        match self {
            Layout::Conv { groups, .. } => *groups,
            Layout::Dense { .. } => 1,
        }
    }

    /// Index of element `j` of row `r` in the weight.
    fn index(&self, r: usize, j: usize) -> usize {
        match self {
            Layout::Conv { .. }
            | Layout::Dense {
                transposed: true, ..
            } => r * self.row_len() + j,
            Layout::Dense { n, .. } => j * n + r,
        }
    }

    /// Adds `x`'s contribution to the per-group Gram matrices `h`.
    fn accumulate(&self, x: &[f32], shape: &[usize], h: &mut [Vec<f64>]) {
        let d = self.row_len();
        match self {
            Layout::Dense { k, .. } => {
                if shape.last() != Some(k) {
                    return;
                }
                let rows = x.len() / k;
                let picked = spread(rows, POSITIONS_PER_SAMPLE);
                let mut cols = vec![0f64; d * picked.len()];
                for (p, &r) in picked.iter().enumerate() {
                    for j in 0..d {
                        cols[j * picked.len() + p] = f64::from(x[r * k + j]);
                    }
                }
                gram_add(&cols, d, picked.len(), &mut h[0]);
            }
            Layout::Conv {
                groups,
                per_group,
                kernel,
                strides,
                dilations,
                pads,
                ends,
                rank,
            } => {
                let (batch, channels, height, width) = match (rank, shape) {
                    (1, [n, c, w]) => (*n, *c, 1, *w),
                    (2, [n, c, hh, w]) => (*n, *c, *hh, *w),
                    _ => return,
                };
                if channels != groups * per_group {
                    return;
                }
                let span = |i: usize| dilations[i] * (kernel[i] - 1) + 1;
                let extent = |size: usize, i: usize| {
                    let padded = size + pads[i] + ends[i];
                    if padded < span(i) {
                        0
                    } else {
                        (padded - span(i)) / strides[i] + 1
                    }
                };
                let (oh, ow) = (extent(height, 0), extent(width, 1));
                let picked = spread(batch * oh * ow, POSITIONS_PER_SAMPLE);
                let np = picked.len();
                let mut cols = vec![0f64; d * np];
                for (g, hg) in h.iter_mut().enumerate().take(*groups) {
                    cols.iter_mut().for_each(|v| *v = 0.0);
                    for (p, &pos) in picked.iter().enumerate() {
                        let (b, rest) = (pos / (oh * ow), pos % (oh * ow));
                        let (oy, ox) = (rest / ow, rest % ow);
                        for c in 0..*per_group {
                            let plane = (b * channels + g * per_group + c) * height * width;
                            for ky in 0..kernel[0] {
                                let y = (oy * strides[0] + ky * dilations[0]).checked_sub(pads[0]);
                                let Some(y) = y.filter(|&y| y < height) else {
                                    continue;
                                };
                                for kx in 0..kernel[1] {
                                    let xx =
                                        (ox * strides[1] + kx * dilations[1]).checked_sub(pads[1]);
                                    let Some(xx) = xx.filter(|&v| v < width) else {
                                        continue;
                                    };
                                    let j = (c * kernel[0] + ky) * kernel[1] + kx;
                                    cols[j * np + p] = f64::from(x[plane + y * width + xx]);
                                }
                            }
                        }
                    }
                    gram_add(&cols, d, np, hg);
                }
            }
        }
    }
}

/// At most `cap` indices of `0..n`, evenly spaced, the first included.
fn spread(n: usize, cap: usize) -> Vec<usize> {
    if n <= cap {
        (0..n).collect()
    } else {
        (0..cap).map(|i| i * n / cap).collect()
    }
}

/// `h += cols · colsᵀ` for `cols` stored feature-major (`d` rows of `np`).
fn gram_add(cols: &[f64], d: usize, np: usize, h: &mut [f64]) {
    for a in 0..d {
        let ra = &cols[a * np..(a + 1) * np];
        for b in a..d {
            let rb = &cols[b * np..(b + 1) * np];
            let v = dot(ra, rb);
            h[a * d + b] += v;
            if a != b {
                h[b * d + a] += v;
            }
        }
    }
}

/// The Gram matrices of one weight's inputs, one per group.
#[derive(Debug, Clone)]
pub struct Gram {
    /// The weight's layout.
    pub layout: Layout,
    /// `groups` row-major `D × D` matrices.
    pub h: Vec<Vec<f64>>,
}

/// One weight to gather inputs for.
struct Job {
    input: String,
    layout: Layout,
    weight: (String, Option<usize>),
}

/// Gathers `H` for every planned weight GPTQ can round, keyed by weight
/// name and axis (a weight read by several nodes gets the sum of their `H`:
/// the output errors add up). Runs `samples` through the model once.
pub fn grams(
    model: &Model,
    weights: &[PlannedWeight],
    samples: &[Sample],
    dir: Option<&std::path::Path>,
    threads: usize,
) -> Result<BTreeMap<(String, Option<usize>), Gram>, PassError> {
    let g = &model.graph;
    let mut jobs: Vec<Job> = Vec::new();
    for w in weights.iter().filter(|w| w.slot == 1) {
        let node = g.node(w.node);
        let Some(t) = g.initializer(&w.name) else {
            continue;
        };
        let Some(layout) = Layout::of(node, &t.dims) else {
            continue;
        };
        let Some(input) = node.inputs.first().filter(|v| !v.is_empty()) else {
            continue;
        };
        if layout.row_len() == 0 || layout.row_len() > MAX_ROW {
            continue;
        }
        jobs.push(Job {
            input: input.clone(),
            layout,
            weight: (w.name.clone(), w.axis),
        });
    }
    let mut out: BTreeMap<(String, Option<usize>), Gram> = BTreeMap::new();
    if jobs.is_empty() || samples.is_empty() {
        return Ok(out);
    }
    // Each distinct input once, read from a copy of the model (or the samples).
    let mut inputs: Vec<String> = jobs.iter().map(|j| j.input.clone()).collect();
    inputs.sort();
    inputs.dedup();
    let (probe, sources) = super::calibrate::probe(model, &inputs);
    let slot: BTreeMap<&str, super::calibrate::Source> =
        inputs.iter().map(String::as_str).zip(sources).collect();
    let fail = |e: crate::exec::ExecError| PassError::Model(format!("gptq inputs: {e}"));
    let runner = Runner::from_model("gptq input model", &probe, dir).map_err(fail)?;
    drop(probe);
    let totals: Vec<Mutex<Vec<Vec<f64>>>> = jobs
        .iter()
        .map(|j| {
            let d = j.layout.row_len();
            Mutex::new(vec![vec![0f64; d * d]; j.layout.groups()])
        })
        .collect();
    let order: Vec<usize> = (0..jobs.len()).collect();
    for chunk in samples.chunks(CHUNK) {
        let outputs = run_samples(&runner, chunk, threads).map_err(fail)?;
        parallel_map(&order, threads, |_, &ji| {
            let job = &jobs[ji];
            let mut h = totals[ji].lock().unwrap_or_else(|e| e.into_inner());
            let mut values: Vec<f32> = Vec::new();
            for (sample, outs) in chunk.iter().zip(&outputs) {
                let a: &Array = slot[job.input.as_str()].pick(sample, outs);
                if a.dtype != DataType::Float {
                    return;
                }
                super::calibrate::floats_into(a, &mut values);
                job.layout.accumulate(&values, &a.shape, &mut h);
            }
        });
    }
    for (job, total) in jobs.into_iter().zip(totals) {
        let h = total.into_inner().unwrap_or_else(|e| e.into_inner());
        match out.get_mut(&job.weight) {
            Some(gram) if gram.layout == job.layout => {
                for (a, b) in gram.h.iter_mut().zip(&h) {
                    a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
                }
            }
            Some(_) => {
                // Read with two different layouts: keep nearest rounding.
                out.remove(&job.weight);
            }
            None => {
                out.insert(
                    job.weight,
                    Gram {
                        layout: job.layout,
                        h,
                    },
                );
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
/// one factorization and one triangular inverse, both over contiguous rows.
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
    let l = cholesky(&a, d)?;
    // L⁻¹, kept transposed (`mt[c][k] = L⁻¹[k][c]`) so its columns are rows.
    let mut mt = vec![0f64; d * d];
    for c in 0..d {
        mt[c * d + c] = 1.0 / l[c * d + c];
        for r in c + 1..d {
            let s = dot(&l[r * d + c..r * d + r], &mt[c * d + c..c * d + r]);
            mt[c * d + r] = -s / l[r * d + r];
        }
    }
    // U[i][j] = L⁻¹[d−1−i][d−1−j] = mt[d−1−j][d−1−i].
    let mut u = vec![0f64; d * d];
    for i in 0..d {
        for j in i..d {
            u[i * d + j] = mt[(d - 1 - j) * d + (d - 1 - i)];
        }
    }
    Some(u)
}

/// Lower Cholesky factor of a symmetric positive definite `d × d` matrix.
fn cholesky(a: &[f64], d: usize) -> Option<Vec<f64>> {
    let mut l = vec![0f64; d * d];
    for r in 0..d {
        for c in 0..=r {
            let s = dot(&l[r * d..r * d + c], &l[c * d..c * d + c]);
            if r == c {
                let v = a[r * d + r] - s;
                if v.is_nan() || v <= 0.0 {
                    return None;
                }
                l[r * d + r] = v.sqrt();
            } else {
                l[r * d + c] = (a[r * d + c] - s) / l[c * d + c];
            }
        }
    }
    Some(l)
}

/// Dot product with eight independent accumulators (vectorizes; the order
/// of additions is fixed, so results do not vary between runs).
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0f64; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f64 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// `nearest` with its integer levels re-rounded by GPTQ against `gram`
/// (same scales and zero points); `None` when `H` cannot be factored or the
/// weight has non-finite values. `channel_of(index)` gives the scale index
/// of a weight element.
pub fn round(
    values: &[f32],
    nearest: &QuantWeight,
    dtype: QType,
    gram: &Gram,
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
    use crate::passes::quantize::qdq::quantize_weight;
    use crate::passes::quantize::stats::Grid;

    fn dense(k: usize, n: usize) -> Layout {
        Layout::Dense {
            k,
            n,
            transposed: false,
        }
    }

    /// Output error `Σ_rows Δwᵀ H Δw`.
    fn output_error(values: &[f32], q: &QuantWeight, gram: &Gram, dtype: QType) -> f64 {
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
        layout.accumulate(&x, &[rows, k], &mut h);
        let gram = Gram { layout, h };
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

    #[test]
    fn conv_patches_match_a_direct_gram() {
        // 1 batch, 2 channels, 3x3 input, 2x2 kernel, stride 1, pad 1 on the
        // leading edges: every patch built by hand.
        let layout = Layout::Conv {
            groups: 1,
            per_group: 2,
            kernel: [2, 2],
            strides: [1, 1],
            dilations: [1, 1],
            pads: [1, 1],
            ends: [1, 1],
            rank: 2,
        };
        let x: Vec<f32> = (0..18).map(|v| v as f32 - 8.0).collect();
        let mut h = vec![vec![0f64; 64]];
        layout.accumulate(&x, &[1, 2, 3, 3], &mut h);
        let at = |c: usize, y: i64, xx: i64| -> f64 {
            if (0..3).contains(&y) && (0..3).contains(&xx) {
                f64::from(x[c * 9 + (y * 3 + xx) as usize])
            } else {
                0.0
            }
        };
        let mut want = vec![0f64; 64];
        for oy in 0..4i64 {
            for ox in 0..4i64 {
                let mut p = Vec::new();
                for c in 0..2 {
                    for ky in 0..2 {
                        for kx in 0..2 {
                            p.push(at(c, oy + ky - 1, ox + kx - 1));
                        }
                    }
                }
                for a in 0..8 {
                    for b in 0..8 {
                        want[a * 8 + b] += p[a] * p[b];
                    }
                }
            }
        }
        assert_eq!(h[0], want);
    }

    #[test]
    fn spread_is_even_and_keeps_the_first() {
        assert_eq!(spread(3, 8), vec![0, 1, 2]);
        assert_eq!(spread(10, 4), vec![0, 2, 5, 7]);
    }
}
