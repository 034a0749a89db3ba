//! `granularity: unstructured` and `granularity: n:m`: zeros inside dense
//! weights.
//!
//! Every selected weight is seen as a matrix of output rows × reduction
//! inputs `D`: a Conv weight `[O, C/g, k…]` has `O` rows of `D = C/g·Πk`
//! (the im2col row), a MatMul weight `[K, N]` has `N` rows of `D = K`, a Gemm
//! `B` the same per `transB`. Three methods choose the zeros:
//!
//! - `magnitude`: the smallest `|W_ij|` of the layer (no data).
//! - `wanda` (Sun et al. 2023): the smallest `|W_ij|·‖X_j‖`, with
//!   `‖X_j‖² = H_jj`, `H = Σ x xᵀ` the second moments of the layer input over
//!   the calibration data, compared over the layer (`comparison: layer`, the
//!   default) or within each output row (`comparison: output`).
//! - `sparsegpt` (Frantar & Alistarh 2023): columns in order; with `U` the
//!   upper Cholesky factor of `(H + λI)⁻¹` (λ = 1% of the mean diagonal,
//!   never-seen inputs get 1 on the diagonal, as GPTQ does), zeroing `w_i`
//!   moves its error onto the weights not visited yet:
//!   `w_j −= w_i / U_ii · U_ij` (the OBS update). Lazy batches of
//!   [`BLOCK`] columns: updates inside a block are applied at once, the rest
//!   of the row gets the block's errors in one product at the block's end.
//!   The unstructured mask is chosen per block among all rows by the OBS
//!   saliency `w² / U_jj²`, with the block's share of zeros fixed in advance
//!   so that the layer gets exactly its count.
//!
//! **Bias correction** (`bias_correction`, default on with `--data`):
//! zeroing weights also moves each output's mean by `ΔW·E[x]`, and after a
//! ReLU the inputs share a large positive mean, so much of a layer's error
//! is that shift. It is added to the layer's bias (a Conv or Gemm without
//! one gets one; a MatMul's own bias Add takes it), with `E[x]` the mean of
//! each reduction input (im2col column for a Conv, padding zeros included)
//! over the calibration positions, and the methods then measure the error
//! that remains: Wanda's `‖X_j‖` and SparseGPT's `H` are centred,
//! `H − s sᵀ / n` (`s = Σ x`), as is the reported layer SQNR. The input
//! means come with the second moments, so layers whose rows are longer
//! than 1536 inputs (or whose input is never seen) are not corrected; the
//! report says so per layer.
//!
//! **How much.** Unstructured, `scope: local`: each layer gets exactly
//! `round(sparsity · params)` zeros (magnitude and wanda over the layer; wanda
//! with `comparison: output` split as evenly as possible over the rows;
//! sparsegpt over its blocks). `scope:
//! global`: one ranking of all weights of all selected layers, each weight's
//! score normalized by its layer's energy, so that it reads as the share of
//! the layer's output it costs: `w² / ‖W‖²` for magnitude,
//! `w²·H_jj / tr(W H Wᵀ)` for wanda, `(w² / (H⁻¹)_jj) / tr(W H Wᵀ)` for
//! sparsegpt. The `round(sparsity · Σ params)` lowest decide how many zeros
//! each layer gets; each layer is then pruned by its method at that count.
//! Nodes with an override `sparsity` keep theirs and stay out of the ranking.
//!
//! **N:M.** `pattern: "N:M"` means at most N non-zeros in every group of M
//! consecutive weights along the reduction axis (NVIDIA's convention: "2:4"
//! keeps 2 of every 4); exactly M − N are set to zero per group. For a Conv
//! the groups run along the input channels at each kernel position (the
//! `[O, kh, kw, C]` order sparse tensor cores and TensorRT use), so C/g must
//! be a multiple of M; for MatMul/Gemm along K, a multiple of M. SparseGPT
//! visits the columns in that order (the Hessian permuted with them) and
//! picks each group's zeros when it reaches the group's first column.
//!
//! Left alone, with the reason in the report: nodes filtered out by the
//! selection, weights that are not float32 initializers, weights read by
//! more than one node or also a graph input, layouts the method cannot
//! handle (n:m and the data methods need the row view above: no
//! ConvTranspose; wanda and sparsegpt need the second moments, which are
//! gathered for rows of at most 1536 inputs).
//!
//! **Memory.** Layers are pruned `threads` at a time; each weight is read
//! once from its (mapped) initializer into the buffer that becomes its new
//! bytes, and magnitude prunes it there: the `k`-th smallest `|w|` by a
//! streamed radix selection (`rank.rs`), then zeros below it and the first
//! ties in row order (the same weights a sort would pick). The global
//! ranking recomputes magnitude's scores from the weights on each pass of
//! the same selection rather than gathering them. Peak memory is the pruned
//! weights plus one layer's work (the data methods and n:m hold that layer's
//! f64 matrices).
//!
//! Report: per layer the params, zeros before and after, the achieved
//! sparsity, the weight bytes, the deflate-compressed size of the weight
//! before and after, and (with data) the layer's output SQNR on the
//! calibration second moments, `10·log10(tr(W H Wᵀ) / tr(ΔW H ΔWᵀ))`.

use std::io::Write as _;

use serde_json::json;

use super::rank::{self, order_key};
use super::{Comparison, Granularity, Method, Prune, Scope};
use crate::exec::parallel_map;
use crate::ir::{DataType, Graph, Model, NodeId};
use crate::passes::calib::{self, moments::MAX_ROW, MomentJob, MomentLimits, Moments};
use crate::passes::linalg;
use crate::passes::{PassContext, PassError, PassReport};

/// Columns per lazy-batch block of SparseGPT.
pub const BLOCK: usize = 128;

/// Damping of `H`, relative to its mean diagonal.
const DAMP: f64 = 0.01;

/// A weight seen as `rows` output rows of `d` reduction inputs.
#[derive(Debug, Clone, Copy, PartialEq)]
struct View {
    rows: usize,
    d: usize,
    /// Conv groups (rows split evenly among them).
    groups: usize,
    /// Kernel positions per input channel (1 for MatMul/Gemm).
    kernel: usize,
    /// Stored `[d, rows]` (MatMul, Gemm transB=0) rather than `[rows, d]`.
    transposed: bool,
}

impl View {
    fn of(op: &str, node: &crate::ir::Node, dims: &[i64]) -> Option<View> {
        let d: Vec<usize> = dims
            .iter()
            .map(|&v| usize::try_from(v).ok())
            .collect::<Option<_>>()?;
        match op {
            "Conv" if d.len() >= 3 => {
                let groups = usize::try_from(node.attr_int("group").unwrap_or(1)).ok()?;
                if groups == 0 || d[0] % groups != 0 {
                    return None;
                }
                let kernel: usize = d[2..].iter().product();
                Some(View {
                    rows: d[0],
                    d: d[1] * kernel,
                    groups,
                    kernel,
                    transposed: false,
                })
            }
            "MatMul" if d.len() == 2 => Some(View {
                rows: d[1],
                d: d[0],
                groups: 1,
                kernel: 1,
                transposed: true,
            }),
            "Gemm" if d.len() == 2 => {
                let t = node.attr_int("transB").unwrap_or(0) == 1;
                Some(View {
                    rows: if t { d[0] } else { d[1] },
                    d: if t { d[1] } else { d[0] },
                    groups: 1,
                    kernel: 1,
                    transposed: !t,
                })
            }
            _ => None,
        }
    }

    fn at(&self, r: usize, j: usize) -> usize {
        if self.transposed {
            j * self.rows + r
        } else {
            r * self.d + j
        }
    }

    /// The weight as a row-major `rows × d` matrix.
    fn matrix(&self, values: &[f32]) -> Vec<f64> {
        let mut m = vec![0f64; self.rows * self.d];
        for r in 0..self.rows {
            for j in 0..self.d {
                m[r * self.d + j] = f64::from(values[self.at(r, j)]);
            }
        }
        m
    }

    fn store(&self, m: &[f64], values: &mut [f32]) {
        for r in 0..self.rows {
            for j in 0..self.d {
                values[self.at(r, j)] = m[r * self.d + j] as f32;
            }
        }
    }

    /// Column order in which N:M groups are consecutive: for a Conv, input
    /// channels fastest at each kernel position (`p = k·C + c` visits
    /// `j = c·K + k`); identity otherwise.
    fn nm_order(&self) -> Vec<usize> {
        let c = self.d / self.kernel;
        (0..self.d).map(|p| (p % c) * self.kernel + p / c).collect()
    }
}

/// How many zeros, or which pattern.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Rule {
    /// Exactly this many zeros in the layer.
    Count(usize),
    /// At most `n` non-zeros in every `m` consecutive columns (in visiting order).
    Pattern { n: usize, m: usize },
}

/// `k` split over `parts`: the share of part `i` (shares differ by at most 1
/// and add up to `k`).
fn share(k: usize, parts: usize, i: usize) -> usize {
    k * (i + 1) / parts - k * i / parts
}

/// Indices of the `k` smallest `scores` (ties: lower index first).
fn lowest(scores: &[f64], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    if k < idx.len() {
        idx.select_nth_unstable_by(k, |&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
        idx.truncate(k);
    }
    idx
}

/// Zero mask from per-element scores of a `rows × d` matrix, visiting columns
/// in `order` for N:M. `per_row`: counts are split over rows (wanda) rather
/// than taken over the whole layer (magnitude).
fn mask_from_scores(
    scores: &[f64],
    rows: usize,
    d: usize,
    rule: Rule,
    per_row: bool,
    order: &[usize],
) -> Vec<bool> {
    let mut mask = vec![false; rows * d];
    match rule {
        Rule::Count(k) if !per_row => {
            for i in lowest(scores, k) {
                mask[i] = true;
            }
        }
        Rule::Count(k) => {
            for r in 0..rows {
                let row = &scores[r * d..(r + 1) * d];
                for j in lowest(row, share(k, rows, r)) {
                    mask[r * d + j] = true;
                }
            }
        }
        Rule::Pattern { n, m } => {
            for r in 0..rows {
                for group in order.chunks(m) {
                    let s: Vec<f64> = group.iter().map(|&j| scores[r * d + j]).collect();
                    for g in lowest(&s, m - n) {
                        mask[r * d + group[g]] = true;
                    }
                }
            }
        }
    }
    mask
}

/// The float32 little-endian elements of `bytes`.
fn floats(bytes: &[u8]) -> impl Iterator<Item = f32> + '_ {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
}

/// Ties at the threshold collected while zeroing, beyond which the tie pass
/// walks the weight in row order instead.
const MAX_TIES: usize = 1 << 20;

/// Magnitude pruning in place on float32 little-endian `bytes`: zeros the `k`
/// weights of smallest `|w|`, ties at the threshold broken by the position in
/// the row-major `rows × d` view (storage order without a view) — the very
/// weights [`lowest`] picks from the scores `|w|`, found without a score
/// vector: the threshold by a streamed selection ([`rank::kth_key`]), then
/// one pass zeroing below it, then the first ties.
fn magnitude_in_place(bytes: &mut [u8], view: Option<View>, k: usize) -> Result<(), String> {
    magnitude_in_place_with(bytes, view, k, MAX_TIES)
}

/// [`magnitude_in_place`] collecting at most `max_ties` ties.
fn magnitude_in_place_with(
    bytes: &mut [u8],
    view: Option<View>,
    k: usize,
    max_ties: usize,
) -> Result<(), String> {
    let n = bytes.len() / 4;
    let key = |v: f32| order_key(f64::from(v.abs()));
    if k == 0 {
        return Ok(());
    }
    if k >= n {
        bytes.iter_mut().for_each(|b| *b = 0);
        return Ok(());
    }
    let t = rank::kth_key(k - 1, |f: &mut dyn FnMut(u64)| {
        floats(bytes).for_each(|v| f(key(v)));
        Ok::<(), String>(())
    })?
    .ok_or("the weight changed while its threshold was chosen")?;
    // Below the threshold: zero. At it: remember where (in storage order).
    let mut less = 0usize;
    let mut ties: Vec<usize> = Vec::new();
    let mut overflow = false;
    for (i, c) in bytes.chunks_exact_mut(4).enumerate() {
        let kv = key(f32::from_le_bytes([c[0], c[1], c[2], c[3]]));
        if kv < t {
            c.copy_from_slice(&0f32.to_le_bytes());
            less += 1;
        } else if kv == t && !overflow {
            if ties.len() < max_ties {
                ties.push(i);
            } else {
                overflow = true;
                ties = Vec::new();
            }
        }
    }
    let mut left = k - less;
    let zero = |bytes: &mut [u8], i: usize| bytes[4 * i..4 * i + 4].copy_from_slice(&[0; 4]);
    match view {
        Some(v) if v.transposed && !overflow => {
            // Storage index s = j·rows + r: row-major order is (r, j).
            ties.sort_unstable_by_key(|&s| (s % v.rows, s / v.rows));
            for &i in ties.iter().take(left) {
                zero(bytes, i);
            }
        }
        Some(v) if v.transposed => {
            'rows: for r in 0..v.rows {
                for j in 0..v.d {
                    if left == 0 {
                        break 'rows;
                    }
                    let i = v.at(r, j);
                    let c = &bytes[4 * i..4 * i + 4];
                    if key(f32::from_le_bytes([c[0], c[1], c[2], c[3]])) == t {
                        zero(bytes, i);
                        left -= 1;
                    }
                }
            }
        }
        _ if !overflow => {
            for &i in ties.iter().take(left) {
                zero(bytes, i);
            }
        }
        _ => {
            for i in 0..n {
                if left == 0 {
                    break;
                }
                let c = &bytes[4 * i..4 * i + 4];
                if key(f32::from_le_bytes([c[0], c[1], c[2], c[3]])) == t {
                    zero(bytes, i);
                    left -= 1;
                }
            }
        }
    }
    Ok(())
}

/// `H + λI` with never-seen inputs set to 1 on the diagonal; `None` when `H`
/// is all zero.
fn damped(h: &[f64], d: usize) -> Option<Vec<f64>> {
    let mean = (0..d).map(|i| h[i * d + i]).sum::<f64>() / d as f64;
    if !(mean.is_finite() && mean > 0.0) {
        return None;
    }
    let mut a = h.to_vec();
    for i in 0..d {
        if a[i * d + i] == 0.0 {
            a[i * d + i] = 1.0;
        }
        a[i * d + i] += DAMP * mean;
    }
    Some(a)
}

/// SparseGPT on the row-major `rows × d` matrix `w` (columns already in
/// visiting order) with `u` the upper Cholesky factor of the damped inverse
/// Hessian. Returns the zero mask; `w` holds the updated weights, exact
/// zeros where masked.
fn sparsegpt(w: &mut [f64], rows: usize, d: usize, u: &[f64], rule: Rule) -> Vec<bool> {
    let mut mask = vec![false; rows * d];
    let mut errs = vec![0f64; BLOCK];
    for i1 in (0..d).step_by(BLOCK) {
        let i2 = (i1 + BLOCK).min(d);
        let bw = i2 - i1;
        if let Rule::Count(k) = rule {
            // This block's share of the zeros, chosen among all rows.
            let kb = k * i2 / d - k * i1 / d;
            let mut sal = vec![0f64; rows * bw];
            for r in 0..rows {
                for j in i1..i2 {
                    let v = w[r * d + j] / u[j * d + j];
                    sal[r * bw + j - i1] = v * v;
                }
            }
            for i in lowest(&sal, kb) {
                mask[(i / bw) * d + i1 + i % bw] = true;
            }
        }
        for r in 0..rows {
            let row = &mut w[r * d..(r + 1) * d];
            let mrow = &mut mask[r * d..(r + 1) * d];
            for i in i1..i2 {
                if let Rule::Pattern { n, m } = rule {
                    if i % m == 0 {
                        let end = (i + m).min(d);
                        let s: Vec<f64> =
                            (i..end).map(|j| (row[j] / u[j * d + j]).powi(2)).collect();
                        for g in lowest(&s, (end - i).saturating_sub(n)) {
                            mrow[i + g] = true;
                        }
                    }
                }
                let e = if mrow[i] { row[i] / u[i * d + i] } else { 0.0 };
                errs[i - i1] = e;
                if e != 0.0 {
                    let ui = &u[i * d..(i + 1) * d];
                    for j in i + 1..i2 {
                        row[j] -= e * ui[j];
                    }
                }
                if mrow[i] {
                    row[i] = 0.0;
                }
            }
            // The block's errors onto the rest of the row, at once.
            for (bi, &e) in errs[..bw].iter().enumerate() {
                if e != 0.0 {
                    let ui = &u[(i1 + bi) * d..(i1 + bi + 1) * d];
                    for j in i2..d {
                        row[j] -= e * ui[j];
                    }
                }
            }
        }
    }
    mask
}

/// `Σ_rows w_rᵀ H w_r` for the rows `rows_of` of `w` (`d` wide).
fn quad(w: &[f64], d: usize, h: &[f64], rows: std::ops::Range<usize>) -> f64 {
    let mut total = 0.0;
    for r in rows {
        let row = &w[r * d..(r + 1) * d];
        for a in 0..d {
            if row[a] == 0.0 {
                continue;
            }
            let ha = &h[a * d..(a + 1) * d];
            let s: f64 = row.iter().zip(ha).map(|(x, y)| x * y).sum();
            total += row[a] * s;
        }
    }
    total
}

/// One weight to prune.
struct Layer {
    node: String,
    weight: String,
    dims: Vec<i64>,
    /// Number of elements (the weights are read from the graph when the
    /// layer is pruned, never held for all layers at once).
    params: usize,
    view: Option<View>,
    /// Unstructured: this layer's own sparsity (local scope or override);
    /// `None`: decided by the global ranking.
    sparsity: Option<f64>,
    gram: Option<Moments>,
    /// Bias correction: the node, and per group `Σ x` over the positions of
    /// `gram` (the input means); `None`: no correction for this layer.
    id: NodeId,
    sums: Option<Vec<Vec<f64>>>,
}

/// What pruning one layer gave.
struct Outcome {
    values: Vec<f32>,
    /// Layer output SQNR on the calibration second moments (with data).
    sqnr_db: Option<f64>,
}

impl Layer {
    fn params(&self) -> usize {
        self.params
    }

    /// Per-group `H`, damped (data methods only); centred with bias
    /// correction.
    fn hessians(&self) -> Option<Vec<Vec<f64>>> {
        let v = self.view?;
        self.errors()?.iter().map(|h| damped(h, v.d)).collect()
    }

    /// Per group, the moments the error of a weight change `ΔW` is measured
    /// with, `tr(ΔW H ΔWᵀ)`: `H = Σ x xᵀ`, or with bias correction (the bias
    /// takes `ΔW·E[x]`) the centred `Σ (x − x̄)(x − x̄)ᵀ = H − s sᵀ / n`.
    fn errors(&self) -> Option<std::borrow::Cow<'_, [Vec<f64>]>> {
        let gram = self.gram.as_ref()?;
        let Some(sums) = &self.sums else {
            return Some(std::borrow::Cow::Borrowed(&gram.h));
        };
        let n = gram.positions.max(1) as f64;
        Some(
            gram.h
                .iter()
                .zip(sums)
                .map(|(h, s)| {
                    let d = s.len();
                    let mut c = h.clone();
                    for a in 0..d {
                        for b in 0..d {
                            c[a * d + b] -= s[a] * s[b] / n;
                        }
                    }
                    c
                })
                .collect::<Vec<_>>()
                .into(),
        )
    }

    /// With bias correction, what each output row's bias must add after the
    /// weight went from `old` to `new` (little-endian f32 bytes):
    /// `(W − W')·E[x]` (`None` without).
    fn bias_shift(&self, old: &[u8], new: &[u8]) -> Option<Vec<f64>> {
        let at = |b: &[u8], i: usize| {
            f64::from(f32::from_le_bytes([
                b[4 * i],
                b[4 * i + 1],
                b[4 * i + 2],
                b[4 * i + 3],
            ]))
        };
        let (view, sums, gram) = (self.view?, self.sums.as_ref()?, self.gram.as_ref()?);
        let n = gram.positions.max(1) as f64;
        let per = view.rows / view.groups;
        Some(
            (0..view.rows)
                .map(|r| {
                    let s = &sums[r / per];
                    (0..view.d)
                        .map(|j| {
                            let i = view.at(r, j);
                            (at(old, i) - at(new, i)) * s[j] / n
                        })
                        .sum()
                })
                .collect(),
        )
    }

    /// The scores of the global ranking, per element in weight order: each
    /// weight's estimated cost divided by its layer's energy.
    fn normalized(&self, values: &[f32], method: Method) -> Result<Vec<f64>, String> {
        let Some(view) = self.view.filter(|_| method != Method::Magnitude) else {
            let energy: f64 = values.iter().map(|&v| f64::from(v).powi(2)).sum();
            return Ok(values
                .iter()
                .map(|&v| f64::from(v).powi(2) / energy.max(f64::MIN_POSITIVE))
                .collect());
        };
        let hs = self
            .hessians()
            .ok_or("the input's second moments are all zero")?;
        let gram = self.gram.as_ref().ok_or("no second moments")?;
        let errors = self.errors().ok_or("no second moments")?;
        let w = view.matrix(values);
        let (d, per) = (view.d, view.rows / view.groups);
        let mut energy = 0.0;
        let mut diag: Vec<Vec<f64>> = Vec::new();
        for (g, ((h, e), damped)) in gram.h.iter().zip(errors.iter()).zip(&hs).enumerate() {
            energy += quad(&w, d, h, g * per..(g + 1) * per);
            diag.push(if method == Method::Wanda {
                (0..d).map(|j| e[j * d + j].max(0.0)).collect()
            } else {
                // 1 / (H⁻¹)_jj from U (Uᵀ U = H⁻¹): column j of U.
                let u = linalg::inverse_upper_cholesky(damped, d)
                    .ok_or("H is not positive definite after damping")?;
                (0..d)
                    .map(|j| 1.0 / (0..=j).map(|k| u[k * d + j].powi(2)).sum::<f64>())
                    .collect()
            });
        }
        let energy = energy.max(f64::MIN_POSITIVE);
        let mut out = vec![0f64; values.len()];
        for r in 0..view.rows {
            for j in 0..d {
                out[view.at(r, j)] = w[r * d + j].powi(2) * diag[r / per][j] / energy;
            }
        }
        Ok(out)
    }

    /// Prunes with `method` under `rule`; `per_row`: a count is split over
    /// the output rows (wanda, `comparison: output`), else taken over the layer.
    fn prune(
        &self,
        weights: &[f32],
        method: Method,
        rule: Rule,
        per_row: bool,
    ) -> Result<Outcome, String> {
        let n = weights.len();
        let mut values = weights.to_vec();
        let Some(view) = self.view else {
            // Magnitude over the flat weight (no row view needed).
            let Rule::Count(k) = rule else {
                return Err("n:m needs a Conv, MatMul or Gemm weight".into());
            };
            let scores: Vec<f64> = values.iter().map(|v| f64::from(v.abs())).collect();
            for i in lowest(&scores, k) {
                values[i] = 0.0;
            }
            return Ok(Outcome {
                values,
                sqnr_db: None,
            });
        };
        let (rows, d) = (view.rows, view.d);
        let order: Vec<usize> = match rule {
            Rule::Pattern { .. } => view.nm_order(),
            Rule::Count(_) => (0..d).collect(),
        };
        let w = view.matrix(weights);
        let hs = match method {
            Method::Sparsegpt => Some(
                self.hessians()
                    .ok_or("the input's second moments are all zero")?,
            ),
            _ => None,
        };
        let per = rows / view.groups;
        let mut out = w.clone();
        match (method, &hs) {
            (Method::Sparsegpt, Some(hs)) => {
                for (g, h) in hs.iter().enumerate() {
                    // Rows and H of this group, columns in visiting order.
                    let mut hp = vec![0f64; d * d];
                    for a in 0..d {
                        for b in 0..d {
                            hp[a * d + b] = h[order[a] * d + order[b]];
                        }
                    }
                    let u = linalg::inverse_upper_cholesky(&hp, d)
                        .ok_or("H is not positive definite after damping")?;
                    let mut wg = vec![0f64; per * d];
                    for r in 0..per {
                        for (p, &j) in order.iter().enumerate() {
                            wg[r * d + p] = w[(g * per + r) * d + j];
                        }
                    }
                    let grule = match rule {
                        Rule::Count(k) => Rule::Count(share(k, view.groups, g)),
                        nm => nm,
                    };
                    sparsegpt(&mut wg, per, d, &u, grule);
                    for r in 0..per {
                        for (p, &j) in order.iter().enumerate() {
                            out[(g * per + r) * d + j] = wg[r * d + p];
                        }
                    }
                }
            }
            _ => {
                // Wanda's ‖X_j‖ per group (centred with bias correction);
                // magnitude: 1.
                let norms: Option<Vec<Vec<f64>>> =
                    self.errors().filter(|_| method == Method::Wanda).map(|es| {
                        es.iter()
                            .map(|e| (0..d).map(|j| e[j * d + j].max(0.0).sqrt()).collect())
                            .collect()
                    });
                let scores: Vec<f64> = (0..rows * d)
                    .map(|i| {
                        let (r, j) = (i / d, i % d);
                        w[i].abs() * norms.as_ref().map_or(1.0, |n| n[r / per][j])
                    })
                    .collect();
                let mask = mask_from_scores(&scores, rows, d, rule, per_row, &order);
                for (v, m) in out.iter_mut().zip(mask) {
                    if m {
                        *v = 0.0;
                    }
                }
            }
        }
        view.store(&out, &mut values);
        debug_assert_eq!(values.len(), n);
        let sqnr_db = self
            .gram
            .as_ref()
            .zip(self.errors())
            .filter(|_| method != Method::Magnitude)
            .map(|(gr, es)| {
                let mut energy = 0.0;
                let mut err = 0.0;
                let delta: Vec<f64> = out.iter().zip(&w).map(|(a, b)| a - b).collect();
                for (g, (h, e)) in gr.h.iter().zip(es.iter()).enumerate() {
                    energy += quad(&w, d, h, g * per..(g + 1) * per);
                    err += quad(&delta, d, e, g * per..(g + 1) * per);
                }
                if err <= 0.0 {
                    f64::INFINITY
                } else {
                    10.0 * (energy / err).log10()
                }
            });
        Ok(Outcome { values, sqnr_db })
    }
}

fn method_name(m: Method) -> &'static str {
    match m {
        Method::Magnitude => "magnitude",
        Method::Wanda => "wanda",
        Method::Sparsegpt => "sparsegpt",
    }
}

/// Why node `id` is not pruned, if it is not.
fn refusal(cfg: &Prune, g: &Graph, id: NodeId) -> Option<String> {
    let n = g.node(id);
    let name = n.name();
    if cfg.overrides.get(name).is_some_and(|o| o.skip) {
        return Some("overrides: skip".into());
    }
    if let Some(i) = cfg.exclude_nodes.iter().position(|m| m.matches(name)) {
        return Some(format!("excluded by exclude_nodes[{i}]"));
    }
    if !cfg.include_nodes.is_empty() && !cfg.include_nodes.iter().any(|m| m.matches(name)) {
        return Some("not in include_nodes".into());
    }
    let w = n.inputs.get(1).filter(|v| !v.is_empty())?;
    let Some(t) = g.initializer(w) else {
        return Some(format!("its weight {w:?} is not a constant initializer"));
    };
    if t.dtype() != DataType::Float {
        return Some(format!("its weight {w:?} is {:?}, not float32", t.dtype()));
    }
    let users = g.uses(w).len();
    if users > 1 {
        return Some(format!(
            "its weight {w:?} is read by {users} nodes (one mask cannot fit all of them)"
        ));
    }
    if g.is_input(w) {
        return Some(format!("its weight {w:?} is also a graph input"));
    }
    None
}

/// A sink that only counts what is written to it (deflate sizes without
/// holding the compressed bytes).
#[derive(Default)]
struct Counter(usize);

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Deflate size of float32 little-endian `bytes`.
fn deflated(bytes: &[u8]) -> usize {
    let mut enc = flate2::write::DeflateEncoder::new(Counter(0), flate2::Compression::default());
    // Writing into a counter cannot fail.
    let _ = enc.write_all(bytes);
    enc.finish().map(|c| c.0).unwrap_or(0)
}

/// Zero elements of float32 little-endian `bytes`.
fn zeros(bytes: &[u8]) -> usize {
    floats(bytes).filter(|&v| v == 0.0).count()
}

/// The deflate size of every initializer's bytes, concatenated in order
/// (each tensor's mapped pages released once compressed).
fn model_deflated(g: &Graph) -> Result<usize, PassError> {
    let mut enc = flate2::write::DeflateEncoder::new(Counter(0), flate2::Compression::default());
    for t in g.initializers() {
        let _ = enc.write_all(&t.packed_bytes()?);
        t.release_pages();
    }
    Ok(enc.finish().map(|c| c.0).unwrap_or(0))
}

fn nonzero_floats(g: &Graph) -> Result<usize, PassError> {
    let mut n = 0;
    for t in g
        .initializers()
        .iter()
        .filter(|t| t.dtype() == DataType::Float)
    {
        n += floats(&t.packed_bytes()?).filter(|&v| v != 0.0).count();
        t.release_pages();
    }
    Ok(n)
}

/// One layer pruned: its new bytes and what the report needs of the old ones.
struct Pruned {
    bytes: Vec<u8>,
    zeros_before: usize,
    deflate_before: usize,
    sqnr_db: Option<f64>,
    /// What each output row's bias adds (bias correction).
    shift: Option<Vec<f64>>,
}

/// Reads `layer`'s weight from the graph into the buffer that becomes its new
/// bytes (releasing the mapped pages) and prunes it: magnitude with a count
/// in place ([`magnitude_in_place`]), everything else through
/// [`Layer::prune`] (`per_row` as there).
fn prune_layer(
    layer: &Layer,
    g: &Graph,
    method: Method,
    rule: Rule,
    per_row: bool,
) -> Result<Pruned, String> {
    let t = g
        .initializer(&layer.weight)
        .ok_or_else(|| format!("initializer {:?} vanished", layer.weight))?;
    let mut bytes = t.packed_bytes().map_err(|e| e.to_string())?.to_vec();
    t.release_pages();
    let (zeros_before, deflate_before) = (zeros(&bytes), deflated(&bytes));
    let sqnr_db = match (method, rule) {
        (Method::Magnitude, Rule::Count(k)) => {
            magnitude_in_place(&mut bytes, layer.view, k)?;
            None
        }
        _ => {
            let values: Vec<f32> = floats(&bytes).collect();
            let out = layer.prune(&values, method, rule, per_row)?;
            drop(values);
            bytes.clear();
            bytes.extend(out.values.iter().flat_map(|v| v.to_le_bytes()));
            out.sqnr_db
        }
    };
    // Bias correction: the old weight is read again from its map, not
    // copied beside the new one.
    let shift = if layer.sums.is_some() {
        let old = t.packed_bytes().map_err(|e| e.to_string())?;
        let shift = layer.bias_shift(&old, &bytes);
        drop(old);
        t.release_pages();
        shift
    } else {
        None
    };
    Ok(Pruned {
        bytes,
        zeros_before,
        deflate_before,
        sqnr_db,
        shift,
    })
}

/// Global scope: the zeros each layer of `pool` gets, as `(layer, count)`:
/// the `round(sparsity · Σ params)` lowest normalized scores over all of
/// them, ties to the earlier layer and element (what sorting the
/// concatenated scores gives), without gathering the scores: the threshold
/// by a streamed selection ([`rank::kth_key`]), then one counting pass.
/// Magnitude's scores `w² / ‖W‖²` are recomputed from the (mapped) weights
/// on every pass; the data methods' scores are computed once per layer.
fn global_counts(
    layers: &[Layer],
    pool: &[usize],
    cfg: &Prune,
    g: &Graph,
    threads: usize,
) -> Result<Vec<(usize, usize)>, PassError> {
    let params: usize = pool.iter().map(|&i| layers[i].params()).sum();
    let total = (cfg.sparsity() * params as f64).round() as usize;
    if total == 0 {
        return Ok(Vec::new());
    }
    if total >= params {
        return Ok(pool.iter().map(|&i| (i, layers[i].params())).collect());
    }
    let weight = |i: usize| {
        g.initializer(&layers[i].weight)
            .ok_or_else(|| PassError::Model(format!("initializer {:?} vanished", layers[i].weight)))
    };
    let node_error = |i: usize| {
        let node = layers[i].node.clone();
        move |message: String| PassError::Node { node, message }
    };
    let held: Option<Vec<Vec<f64>>> = if cfg.method == Method::Magnitude {
        None
    } else {
        let scored = parallel_map(pool, threads, |_, &i| -> Result<Vec<f64>, PassError> {
            let t = weight(i)?;
            let values: Vec<f32> = floats(&t.packed_bytes()?).collect();
            t.release_pages();
            layers[i]
                .normalized(&values, cfg.method)
                .map_err(node_error(i))
        });
        Some(scored.into_iter().collect::<Result<_, _>>()?)
    };
    let energies: Vec<f64> = if held.is_none() {
        let e = parallel_map(pool, threads, |_, &i| -> Result<f64, PassError> {
            let t = weight(i)?;
            let energy: f64 = floats(&t.packed_bytes()?)
                .map(|v| f64::from(v).powi(2))
                .sum();
            t.release_pages();
            Ok(energy)
        });
        e.into_iter().collect::<Result<_, _>>()?
    } else {
        Vec::new()
    };
    // Every pooled score in order, layer by layer.
    let stream = |p: usize, f: &mut dyn FnMut(u64)| -> Result<(), PassError> {
        if let Some(held) = &held {
            held[p].iter().for_each(|&s| f(order_key(s)));
            return Ok(());
        }
        let t = weight(pool[p])?;
        let energy = energies[p].max(f64::MIN_POSITIVE);
        floats(&t.packed_bytes()?).for_each(|v| f(order_key(f64::from(v).powi(2) / energy)));
        t.release_pages();
        Ok(())
    };
    let counts = split_lowest(total, pool.len(), stream)?
        .ok_or_else(|| PassError::Model("the weights changed while they were ranked".into()))?;
    Ok(pool.iter().copied().zip(counts).collect())
}

/// How many of the `total` lowest keys (ties: earlier part, then earlier
/// element) fall in each of `parts` key streams, `stream(p, f)` delivering
/// part `p`'s keys in order: the `total`-th key by [`rank::kth_key`], then
/// per part the keys below it plus its share of the ties, earlier parts
/// first. `None` when the streams hold fewer than `total` keys.
fn split_lowest<E>(
    total: usize,
    parts: usize,
    stream: impl Fn(usize, &mut dyn FnMut(u64)) -> Result<(), E>,
) -> Result<Option<Vec<usize>>, E> {
    if total == 0 {
        return Ok(Some(vec![0; parts]));
    }
    let Some(threshold) = rank::kth_key(total - 1, |f: &mut dyn FnMut(u64)| {
        (0..parts).try_for_each(|p| stream(p, f))
    })?
    else {
        return Ok(None);
    };
    let mut below = Vec::with_capacity(parts);
    for p in 0..parts {
        let (mut less, mut equal) = (0usize, 0usize);
        stream(p, &mut |k| {
            if k < threshold {
                less += 1;
            } else if k == threshold {
                equal += 1;
            }
        })?;
        below.push((less, equal));
    }
    let Some(mut ties) = total.checked_sub(below.iter().map(|b| b.0).sum::<usize>()) else {
        return Ok(None);
    };
    Ok(Some(
        below
            .into_iter()
            .map(|(less, equal)| {
                let take = equal.min(ties);
                ties -= take;
                less + take
            })
            .collect(),
    ))
}

fn weight_bytes(g: &Graph) -> i64 {
    g.initializers().iter().map(|t| t.byte_len() as i64).sum()
}

/// Runs unstructured or N:M pruning.
pub fn run(cfg: &Prune, model: &mut Model, ctx: &PassContext) -> Result<PassReport, PassError> {
    let mut report = PassReport::with_counters(&[
        "layers_pruned",
        "layers_skipped",
        "weights_zeroed",
        "params_before",
        "params_after",
        "nonzero_params_before",
        "nonzero_params_after",
        "weight_bytes_before",
        "weight_bytes_after",
        "deflate_bytes_before",
        "deflate_bytes_after",
        "macs_before",
        "macs_after",
    ]);
    let before = crate::inspect::summarize(model);
    report.count("params_before", before.parameters as i64);
    report.count("macs_before", before.macs as i64);
    report.count("weight_bytes_before", weight_bytes(&model.graph));
    report.count("deflate_bytes_before", model_deflated(&model.graph)? as i64);
    report.count(
        "nonzero_params_before",
        nonzero_floats(&model.graph)? as i64,
    );

    let nm = cfg.granularity == Granularity::Nm;
    let (pn, pm) = cfg.pattern();
    let g = &model.graph;
    for name in cfg.overrides.keys() {
        if !g.nodes().any(|(_, n)| n.name() == name) {
            report
                .warnings
                .push(format!("overrides.{name} names no node of the model"));
        }
    }

    if cfg.bias_correction == Some(true) && ctx.data.is_none() {
        return Err(PassError::Model(
            "bias_correction: true needs calibration data (the input means): pass --data DATA.npz"
                .into(),
        ));
    }
    let correct = cfg.bias_correction.unwrap_or(ctx.data.is_some());

    // Which layers, and why not the others.
    let mut layers: Vec<Layer> = Vec::new();
    let mut skipped: Vec<(String, String)> = Vec::new();
    // One per layer: where its input moments come from (`None`: none).
    let mut jobs: Vec<Option<MomentJob>> = Vec::new();
    for (id, n) in g.nodes() {
        let op = n.op_type();
        if !n.domain().is_empty() || !super::OPS.contains(&op) {
            continue;
        }
        if !cfg.ops.iter().any(|o| o == op) {
            skipped.push((n.label(), format!("{op} is not in `ops`")));
            continue;
        }
        let constant = n.inputs.get(1).is_some_and(|w| g.initializer(w).is_some());
        if !constant {
            // An activation × activation MatMul: no weight to prune.
            report.count("nodes_without_weight", 1);
            report.details.push(
                json!({ "node": n.label(), "skipped": "no constant weight (input 1 is computed)" }),
            );
            continue;
        }
        if let Some(why) = refusal(cfg, g, id) {
            skipped.push((n.label(), why));
            continue;
        }
        let Some(weight) = n.inputs.get(1).filter(|v| !v.is_empty()) else {
            continue;
        };
        let Some(t) = g.initializer(weight) else {
            continue;
        };
        let view = View::of(op, n, &t.dims);
        if (nm || cfg.method != Method::Magnitude) && view.is_none() {
            skipped.push((
                n.label(),
                format!(
                    "{} needs a weight with output rows along the reduction axis (Conv, 2-D MatMul or Gemm weight); {:?} is {op} {:?}",
                    if nm { "n:m".to_string() } else { format!("method: {}", method_name(cfg.method)) },
                    weight,
                    t.dims
                ),
            ));
            continue;
        }
        if let (true, Some(v)) = (nm, view) {
            let c = v.d / v.kernel;
            if c % pm != 0 {
                skipped.push((
                    n.label(),
                    format!(
                        "pattern {pn}:{pm}: the reduction axis has {c} {} per {}, not a multiple of {pm}",
                        if v.kernel > 1 { "input channels" } else { "elements" },
                        if v.kernel > 1 { "kernel position" } else { "row" },
                    ),
                ));
                continue;
            }
        }
        let job = MomentJob::for_node(g, id).filter(|j| {
            let l = &j.layout;
            l.row_len() == view.map_or(0, |v| v.d) && l.row_len() <= MAX_ROW
        });
        if cfg.method != Method::Magnitude {
            let Some(job) = job else {
                skipped.push((
                    n.label(),
                    format!(
                        "method: {} needs the input's second moments, gathered for Conv (no auto_pad, 1 or 2 spatial dims), MatMul and Gemm (transA=0) with rows of at most {} inputs",
                        method_name(cfg.method),
                        MAX_ROW
                    ),
                ));
                continue;
            };
            jobs.push(Some(job));
        } else {
            jobs.push(job.filter(|_| correct));
        }
        let sparsity = cfg
            .overrides
            .get(n.name())
            .and_then(|o| o.sparsity)
            .or((cfg.scope == Scope::Local).then(|| cfg.sparsity()));
        layers.push(Layer {
            node: n.label(),
            weight: weight.clone(),
            dims: t.dims.clone(),
            params: (t.byte_len() / 4) as usize,
            view,
            sparsity,
            gram: None,
            id,
            sums: None,
        });
    }
    report.count("layers_skipped", skipped.len() as i64);

    // Second moments of the layer inputs (wanda, sparsegpt).
    let threads = ctx.threads.unwrap_or_else(crate::exec::default_threads);
    if cfg.method != Method::Magnitude && ctx.data.is_none() && !layers.is_empty() {
        return Err(PassError::Model(format!(
            "method: {} needs calibration data: pass --data DATA.npz (method: magnitude needs none)",
            method_name(cfg.method)
        )));
    }
    if jobs.iter().any(Option::is_some) {
        let samples = calib::load_samples(model, ctx, None, &mut report)?;
        report.count("calibration_samples", samples.len() as i64);
        let asked: Vec<MomentJob> = jobs.iter().flatten().cloned().collect();
        let (dir, limits) = (ctx.model_dir.as_deref(), MomentLimits::default());
        let found: Vec<Option<calib::moments::WithSums>> = if correct {
            calib::first_and_second_moments(
                model,
                &asked,
                &samples,
                dir,
                threads,
                limits,
                ctx.progress,
            )?
        } else {
            calib::second_moments(model, &asked, &samples, dir, threads, limits, ctx.progress)?
                .into_iter()
                .map(|m| m.map(|m| (m, Vec::new())))
                .collect()
        };
        let mut found = found.into_iter();
        for (l, job) in layers.iter_mut().zip(&jobs) {
            if job.is_none() {
                continue;
            }
            if let Some((m, sums)) = found.next().flatten() {
                l.sums = (correct && l.view.is_some()).then_some(sums);
                l.gram = Some(m);
            }
        }
    }
    if cfg.method != Method::Magnitude && !layers.is_empty() {
        let (with, without): (Vec<Layer>, Vec<Layer>) =
            layers.into_iter().partition(|l| l.gram.is_some());
        for l in without {
            skipped.push((
                l.node,
                "no float input was observed for it during calibration".into(),
            ));
            report.count("layers_skipped", 1);
        }
        layers = with;
    }

    // The zeros each layer gets.
    let rules: Vec<Rule> = if nm {
        vec![Rule::Pattern { n: pn, m: pm }; layers.len()]
    } else {
        let mut counts: Vec<usize> = layers
            .iter()
            .map(|l| {
                l.sparsity
                    .map_or(0, |s| (s * l.params() as f64).round() as usize)
            })
            .collect();
        let pool: Vec<usize> = (0..layers.len())
            .filter(|&i| layers[i].sparsity.is_none())
            .collect();
        if !pool.is_empty() {
            for (i, k) in global_counts(&layers, &pool, cfg, &model.graph, threads)? {
                counts[i] += k;
            }
        }
        counts.into_iter().map(Rule::Count).collect()
    };

    // Layer by layer (`threads` at a time): each weight is read once from
    // its map into the buffer that becomes the new initializer, pruned there
    // (magnitude) or through the row view (data methods, n:m), and the mapped
    // pages are released; no layer's weights are held twice.
    let per_row = cfg.method == Method::Wanda && cfg.comparison() == Comparison::Output;
    let mut rows_text = Vec::new();
    let (mut total_params, mut total_zeros) = (0usize, 0usize);
    let items: Vec<usize> = (0..layers.len()).collect();
    for batch in items.chunks(threads.max(1)) {
        let graph = &model.graph;
        let outcomes = parallel_map(batch, threads, |_, &i| {
            prune_layer(&layers[i], graph, cfg.method, rules[i], per_row)
        });
        for (&i, outcome) in batch.iter().zip(outcomes) {
            let (layer, rule) = (&layers[i], &rules[i]);
            let done = outcome.map_err(|e| PassError::Node {
                node: layer.node.clone(),
                message: e,
            })?;
            let (z0, z1, d0, d1) = (
                done.zeros_before,
                zeros(&done.bytes),
                done.deflate_before,
                deflated(&done.bytes),
            );
            let params = layer.params();
            total_params += params;
            total_zeros += z1;
            let sparsity = z1 as f64 / params.max(1) as f64;
            report.count("layers_pruned", 1);
            report.count("weights_zeroed", z1 as i64 - z0 as i64);
            let mut detail = json!({
                "node": layer.node,
                "weight": layer.weight,
                "shape": layer.dims,
                "params": params,
                "zeros_before": z0,
                "zeros_after": z1,
                "sparsity": (sparsity * 1e4).round() / 1e4,
                "weight_bytes": params * 4,
                "deflate_bytes_before": d0,
                "deflate_bytes_after": d1,
            });
            if let Rule::Count(k) = rule {
                detail["zeros_asked"] = json!(k);
            }
            if let Some(db) = done.sqnr_db {
                detail["layer_sqnr_db"] = json!((db * 100.0).round() / 100.0);
            }
            if correct {
                let took = done
                    .shift
                    .as_ref()
                    .and_then(|s| super::reconstruct::shift_bias(&mut model.graph, layer.id, s));
                if took.is_some() {
                    report.count("biases_corrected", 1);
                }
                detail["bias_correction"] = json!(took.unwrap_or(if layer.sums.is_some() {
                    "none: no bias of its own to take the shift"
                } else {
                    "none: the input means were not gathered for this layer"
                }));
            }
            report.details.push(detail);
            rows_text.push(format!(
                "  {:<40} {:>9} {:>8.2}% {:>10} → {:<10} {}",
                layer.node,
                params,
                sparsity * 100.0,
                d0,
                d1,
                done.sqnr_db
                    .map_or(String::new(), |db| format!("{db:.1} dB")),
            ));
            let mut t = model
                .graph
                .initializer(&layer.weight)
                .cloned()
                .ok_or_else(|| {
                    PassError::Model(format!("initializer {:?} vanished", layer.weight))
                })?;
            t.set_raw(bytes::Bytes::from(done.bytes));
            model.graph.replace_initializer(t);
        }
    }
    for (node, why) in &skipped {
        report.details.push(json!({ "node": node, "skipped": why }));
        report.warnings.push(format!("{node} not pruned: {why}"));
    }
    if !layers.is_empty() {
        let what = if nm {
            format!("pattern {pn}:{pm}")
        } else {
            format!("sparsity {} ({:?} scope)", cfg.sparsity(), cfg.scope).to_lowercase()
        };
        let mut table = format!(
            "{} layers, method {}, {what}: {:.2}% of {total_params} weights are zero\n  {:<40} {:>9} {:>9} {:>23} {}\n",
            layers.len(),
            method_name(cfg.method),
            100.0 * total_zeros as f64 / total_params.max(1) as f64,
            "layer",
            "params",
            "sparsity",
            "deflate bytes",
            if cfg.method == Method::Magnitude { "" } else { "layer SQNR" },
        );
        table.push_str(&rows_text.join("\n"));
        if correct {
            let n = report
                .counters
                .get("biases_corrected")
                .copied()
                .unwrap_or(0);
            table.push_str(&format!(
                "\n  bias correction: {n} of {} layers' biases take ΔW·E[x]",
                layers.len()
            ));
        }
        report.summary.push(table);
    }

    let after = crate::inspect::summarize(model);
    report.count("params_after", after.parameters as i64);
    report.count("macs_after", after.macs as i64);
    report.count("weight_bytes_after", weight_bytes(&model.graph));
    report.count("deflate_bytes_after", model_deflated(&model.graph)? as i64);
    report.count("nonzero_params_after", nonzero_floats(&model.graph)? as i64);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passes::calib::Layout;

    fn lcg(seed: u64) -> impl FnMut() -> f64 {
        let mut state = seed;
        move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) as f64 / (1u64 << 31) as f64) - 0.5
        }
    }

    /// `rows` correlated input vectors of width `d`, and their Gram matrix.
    fn correlated(d: usize, rows: usize, seed: u64) -> Vec<f64> {
        let mut next = lcg(seed);
        let mut h = vec![0f64; d * d];
        for _ in 0..rows {
            let common = next() * 4.0;
            let x: Vec<f64> = (0..d)
                .map(|j| common * (1.0 + j as f64 / d as f64) + next() * 0.5)
                .collect();
            for a in 0..d {
                for b in 0..d {
                    h[a * d + b] += x[a] * x[b];
                }
            }
        }
        h
    }

    fn layer(params: usize, view: View, h: Option<Vec<f64>>) -> Layer {
        Layer {
            node: "n".into(),
            weight: "w".into(),
            dims: vec![view.d as i64, view.rows as i64],
            view: Some(view),
            sparsity: None,
            gram: h.map(|h| Moments {
                layout: Layout::Dense {
                    k: view.d,
                    n: view.rows,
                    transposed: false,
                },
                h: vec![h],
                positions: 1,
                samples: 1,
            }),
            params,
            id: crate::ir::Graph::new("t").add_node(crate::ir::Node::with_io(
                "MatMul",
                "n",
                &[],
                &[],
            )),
            sums: None,
        }
    }

    #[test]
    fn bias_correction_takes_the_mean_shift_and_leaves_the_centred_error() {
        // Inputs after a ReLU: a large shared positive mean.
        let (d, rows, n) = (6, 3, 40);
        let xs: Vec<Vec<f64>> = (0..n)
            .map(|i| {
                (0..d)
                    .map(|j| 2.0 + (j as f64) * 0.3 + ((i * 7 + j * 3) as f64 * 0.61).sin())
                    .collect()
            })
            .collect();
        let mut h = vec![0f64; d * d];
        let mut sums = vec![0f64; d];
        for x in &xs {
            for a in 0..d {
                sums[a] += x[a];
                for b in 0..d {
                    h[a * d + b] += x[a] * x[b];
                }
            }
        }
        let view = dense(d, rows);
        let mut l = layer(d * rows, view, Some(h));
        l.gram.as_mut().unwrap().positions = n as u64;
        l.sums = Some(vec![sums]);
        let w: Vec<f32> = (0..d * rows)
            .map(|i| ((i * 5 % 7) as f32 - 3.0) * 0.25)
            .collect();
        let out = l
            .prune(&w, Method::Magnitude, Rule::Count(8), false)
            .unwrap();
        let (old, new) = (le(&w), le(&out.values));
        let shift = l.bias_shift(&old, &new).unwrap();
        // Per output row r (stored [d, rows]): y_r = Σ_j w[j·rows + r] x_j.
        let mut err = 0.0;
        for r in 0..rows {
            let dy: Vec<f64> = xs
                .iter()
                .map(|x| {
                    (0..d)
                        .map(|j| f64::from(w[j * rows + r] - out.values[j * rows + r]) * x[j])
                        .sum()
                })
                .collect();
            let mean = dy.iter().sum::<f64>() / n as f64;
            assert!(
                (shift[r] - mean).abs() < 1e-9,
                "row {r}: {} vs {mean}",
                shift[r]
            );
            err += dy.iter().map(|v| (v - mean).powi(2)).sum::<f64>();
        }
        // The centred moments measure what is left after the bias took the mean.
        let delta: Vec<f64> = view
            .matrix(&out.values)
            .iter()
            .zip(view.matrix(&w))
            .map(|(a, b)| a - b)
            .collect();
        let centred = quad(&delta, d, &l.errors().unwrap()[0], 0..rows);
        assert!(
            (centred - err).abs() < 1e-9 * err.max(1.0),
            "{centred} vs {err}"
        );
        assert!(shift.iter().any(|v| v.abs() > 0.1), "{shift:?}");
    }

    fn count_zeros(values: &[f32]) -> usize {
        values.iter().filter(|&&v| v == 0.0).count()
    }

    fn dense(d: usize, rows: usize) -> View {
        View {
            rows,
            d,
            groups: 1,
            kernel: 1,
            transposed: true,
        }
    }

    #[test]
    fn sparsegpt_beats_wanda_and_magnitude_on_correlated_inputs() {
        let (d, rows) = (32, 8);
        let h = correlated(d, 400, 3);
        let mut next = lcg(11);
        let values: Vec<f32> = (0..d * rows).map(|_| next() as f32).collect();
        let l = layer(values.len(), dense(d, rows), Some(h));
        let k = d * rows / 2;
        let db = |m: Method, rule: Rule| {
            l.prune(&values, m, rule, m == Method::Wanda)
                .unwrap()
                .sqnr_db
                .unwrap()
        };
        // Magnitude has no SQNR of its own: measure it with the same H.
        let mag = {
            let out = l
                .prune(&values, Method::Magnitude, Rule::Count(k), false)
                .unwrap();
            let w0 = dense(d, rows).matrix(&values);
            let w1 = dense(d, rows).matrix(&out.values);
            let delta: Vec<f64> = w1.iter().zip(&w0).map(|(a, b)| a - b).collect();
            let h = &l.gram.as_ref().unwrap().h[0];
            10.0 * (quad(&w0, d, h, 0..rows) / quad(&delta, d, h, 0..rows)).log10()
        };
        let (wanda, sgpt) = (
            db(Method::Wanda, Rule::Count(k)),
            db(Method::Sparsegpt, Rule::Count(k)),
        );
        assert!(
            sgpt > wanda + 3.0 && sgpt > mag + 3.0,
            "sparsegpt {sgpt} wanda {wanda} magnitude {mag}"
        );
        let nm = Rule::Pattern { n: 2, m: 4 };
        let (wanda, sgpt) = (db(Method::Wanda, nm), db(Method::Sparsegpt, nm));
        assert!(sgpt > wanda + 3.0, "2:4 sparsegpt {sgpt} wanda {wanda}");
    }

    #[test]
    fn counts_are_exact_and_patterns_hold() {
        let (d, rows) = (24, 5);
        let h = correlated(d, 100, 5);
        let mut next = lcg(2);
        let values: Vec<f32> = (0..d * rows).map(|_| next() as f32).collect();
        let l = layer(values.len(), dense(d, rows), Some(h));
        for m in [Method::Magnitude, Method::Wanda, Method::Sparsegpt] {
            for k in [0, 1, 37, 60, 119] {
                for per_row in [false, true] {
                    let out = l.prune(&values, m, Rule::Count(k), per_row).unwrap();
                    assert_eq!(count_zeros(&out.values), k, "{m:?} {k} {per_row}");
                }
            }
            let out = l
                .prune(&values, m, Rule::Pattern { n: 1, m: 4 }, false)
                .unwrap();
            let w = dense(d, rows).matrix(&out.values);
            for r in 0..rows {
                for g in 0..d / 4 {
                    let nz = (0..4).filter(|&i| w[r * d + g * 4 + i] != 0.0).count();
                    assert_eq!(nz, 1, "{m:?} row {r} group {g}");
                }
            }
        }
    }

    #[test]
    fn wanda_compares_over_the_layer_or_within_each_row() {
        // Row 0 holds large weights, row 1 small ones; the inputs are alike.
        let (d, rows) = (8, 2);
        let h = correlated(d, 100, 5);
        let values: Vec<f32> = (0..d * rows)
            .map(|i| {
                if i / d == 0 {
                    10.0 + i as f32
                } else {
                    0.1 + 0.01 * i as f32
                }
            })
            .collect();
        let view = View {
            rows,
            d,
            groups: 1,
            kernel: 1,
            transposed: false,
        };
        let l = layer(values.len(), view, Some(h));
        let per_row_zeros = |per_row: bool| {
            let out = l
                .prune(&values, Method::Wanda, Rule::Count(8), per_row)
                .unwrap();
            let w = view.matrix(&out.values);
            (0..rows)
                .map(|r| (0..d).filter(|&j| w[r * d + j] == 0.0).count())
                .collect::<Vec<_>>()
        };
        // Output: every row loses its share; layer: the small row goes first.
        assert_eq!(per_row_zeros(true), [4, 4]);
        assert_eq!(per_row_zeros(false), [0, 8]);
    }

    #[test]
    fn conv_groups_run_along_input_channels() {
        // [O=2, C=4, 1, 2]: kernel 2, so p = k·4 + c visits j = c·2 + k.
        let v = View {
            rows: 2,
            d: 8,
            groups: 1,
            kernel: 2,
            transposed: false,
        };
        assert_eq!(v.nm_order(), vec![0, 2, 4, 6, 1, 3, 5, 7]);
        let values: Vec<f32> = (1..=16).map(|x| x as f32).collect();
        let l = layer(values.len(), v, None);
        let out = l
            .prune(
                &values,
                Method::Magnitude,
                Rule::Pattern { n: 2, m: 4 },
                false,
            )
            .unwrap();
        // Row 0 = 1..8: channels at kernel 0 are 1,3,5,7 → keep 5,7; kernel 1: 2,4,6,8 → keep 6,8.
        assert_eq!(&out.values[..8], &[0.0, 0.0, 0.0, 0.0, 5.0, 6.0, 7.0, 8.0]);
    }

    /// Weights with many ties (few levels, both zeros), as bytes and floats.
    fn tied(n: usize, seed: u64) -> Vec<f32> {
        let mut next = lcg(seed);
        (0..n)
            .map(|_| {
                let x = (next() * 10.0).round() as f32 / 4.0;
                if x == 0.0 && next() > 0.0 {
                    -0.0
                } else {
                    x
                }
            })
            .collect()
    }

    fn le(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    #[test]
    fn magnitude_in_place_zeros_what_the_sorted_mask_zeros() {
        let (d, rows) = (12, 7);
        let conv = View {
            rows,
            d,
            groups: 1,
            kernel: 3,
            transposed: false,
        };
        for (seed, view) in [(1, Some(dense(d, rows))), (2, Some(conv)), (3, None)] {
            let values = tied(d * rows, seed);
            let mut l = layer(values.len(), dense(d, rows), None);
            l.view = view;
            for k in [0, 1, 5, 20, 41, 42, 60, 83, 84, 200] {
                let want = le(&l
                    .prune(&values, Method::Magnitude, Rule::Count(k), false)
                    .unwrap()
                    .values);
                for max_ties in [MAX_TIES, 3, 0] {
                    let mut got = le(&values);
                    magnitude_in_place_with(&mut got, view, k, max_ties).unwrap();
                    assert_eq!(got, want, "view {view:?} k {k} max_ties {max_ties}");
                }
            }
        }
    }

    #[test]
    fn split_lowest_counts_what_sorting_all_scores_gives() {
        let mut next = lcg(9);
        let parts: Vec<Vec<f64>> = [40, 0, 25, 60, 1]
            .iter()
            .map(|&n| {
                (0..n)
                    .map(|_| ((next() * 6.0).round() / 3.0).powi(2))
                    .collect()
            })
            .collect();
        let all: Vec<(f64, usize)> = parts
            .iter()
            .enumerate()
            .flat_map(|(p, s)| s.iter().map(move |&v| (v, p)))
            .collect();
        let keys: Vec<f64> = all.iter().map(|a| a.0).collect();
        for total in [0, 1, 7, 30, 63, 100, 125, 126] {
            let mut want = vec![0usize; parts.len()];
            for i in lowest(&keys, total) {
                want[all[i].1] += 1;
            }
            let got = split_lowest(total, parts.len(), |p, f: &mut dyn FnMut(u64)| {
                parts[p].iter().for_each(|&s| f(order_key(s)));
                Ok::<(), ()>(())
            })
            .unwrap();
            assert_eq!(got, Some(want), "total {total}");
        }
        let none = split_lowest(127, parts.len(), |p, f: &mut dyn FnMut(u64)| {
            parts[p].iter().for_each(|&s| f(order_key(s)));
            Ok::<(), ()>(())
        });
        assert_eq!(none, Ok(None));
    }

    #[test]
    fn shares_add_up() {
        for (k, parts) in [(7, 3), (0, 4), (10, 10), (5, 8)] {
            let s: Vec<usize> = (0..parts).map(|i| share(k, parts, i)).collect();
            assert_eq!(s.iter().sum::<usize>(), k);
            assert!(s.iter().max().unwrap() - s.iter().min().unwrap() <= 1);
        }
    }
}
