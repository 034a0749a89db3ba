//! Least-squares reconstruction after channel pruning (`reconstruct: true`;
//! He et al. 2017, ThiNet, AIMET's channel pruning with reconstruction).
//!
//! ```text
//! before:  x[C] ─ Conv(W[O, C, k, k], b) ─ y                  unpruned
//! after:   x[K] ─ Conv(W'[O, K, k, k], b') ─ y' ≈ y           K of the C channels kept
//!          (W', b') = argmin Σ ‖W'·x_K + b' − (W·x + b)‖²      over the calibration rows
//! ```
//!
//! Every compute node that reads removed channels (a *consumer*: Conv with
//! `group = 1`, Gemm, MatMul with a constant weight) gets its remaining
//! weights re-fitted so that its output matches the unpruned model's. The
//! rows `x` are what the consumer's weight rows see: im2col patches for a
//! Conv (`C·kh·kw` long), the rows of `A` for Gemm/MatMul. Their first and
//! second moments come from one streamed run of the *unpruned* model over
//! the calibration data (`calib::first_and_second_moments`, every consumer
//! at once, the same moments `importance: activation` scores with); with
//! `μ = E[x]`, `Σ = E[x xᵀ] − μ μᵀ` and `K` the kept features:
//!
//! ```text
//! W' = W · Σ[:, K] · (Σ[K, K] + λ·I)⁻¹          (solved by Cholesky, passes/linalg.rs)
//! b' = b + W·μ − W'·μ_K                          (the intercept: the removed channels' mean)
//! λ  = DAMP · mean(diag Σ[K, K])                 (DAMP = 1e-4, reported per node)
//! ```
//!
//! The intercept is the exact least-squares answer where the consumer can
//! carry a bias: a Conv or Gemm (a zero bias is added when it has none) or a
//! MatMul followed by an Add of a constant bias vector. A MatMul without one
//! is fitted without intercept (`Σ` and `μ` replaced by `E[x xᵀ]` and 0).
//!
//! Exactness: when every removed feature (an im2col entry for a Conv) is an
//! affine combination of kept ones on the calibration data, the fit is
//! exact up to `λ` (a zero-padded Conv input keeps that only for linear
//! combinations; tested ≥ 60 dB end to end). Otherwise it is the best linear correction for each consumer
//! on its own: the moments are those of the unpruned model, so a consumer
//! whose input was itself changed by pruning upstream (a removed filter of
//! the layer before) is fitted to the unpruned input. Refitting each
//! consumer in turn on the partly pruned model instead was measured on the
//! five trained fixtures (BENCHMARKS.md): better on two (up to +2.6 dB),
//! worse on two (up to −0.8 dB), at one calibration run per consumer (30×
//! slower on yolo_tiny), so the one-run fit is what ships.
//!
//! Memory: `D²` f64 per consumer (`D` = row length); rows longer than
//! `MomentLimits::max_row` (1536) get no moments, are not re-fitted, and the
//! report says so. The report gives, per consumer, the layer's output SQNR
//! on the calibration moments with the channels simply removed and after
//! the re-fit.

use std::collections::{BTreeMap, BTreeSet};

use crate::ir::{DataType, Graph, Model, NodeId, Tensor};
use crate::passes::calib::{self, Layout, MomentJob, MomentLimits, Moments};
use crate::passes::{linalg, PassContext, PassError, PassReport};

use super::channel::{self, Fate, Plan};

/// Relative damping of the kept inputs' covariance (times its mean diagonal).
pub const DAMP: f64 = 1e-4;

/// First and second moments of one consumer's input rows.
#[derive(Debug, Clone, PartialEq)]
pub struct InputStats {
    /// `Σ x xᵀ` (per group), positions, samples.
    pub moments: Moments,
    /// `Σ x` (group 0).
    pub sums: Vec<f64>,
}

/// Compute nodes reading channels of groups that are not left whole, in
/// graph order.
pub fn consumers(g: &Graph, plan_groups: &[super::groups::Group], fates: &[Fate]) -> Vec<NodeId> {
    let names: BTreeSet<&str> = plan_groups
        .iter()
        .zip(fates)
        .filter(|(_, f)| !matches!(f, Fate::Whole(_)))
        .flat_map(|(grp, _)| grp.consumers.iter().map(String::as_str))
        .collect();
    g.topological_order()
        .unwrap_or_default()
        .into_iter()
        .filter(|&id| names.contains(g.node(id).name()))
        .collect()
}

/// The moments of every node of `nodes`' input from the calibration data
/// (`--data`; `field` names the option that needs it in the error).
pub fn gather(
    model: &Model,
    ctx: &PassContext,
    nodes: &[NodeId],
    field: &str,
    report: &mut PassReport,
) -> Result<BTreeMap<String, InputStats>, PassError> {
    if ctx.data.is_none() {
        return Err(PassError::Model(format!(
            "{field} needs calibration data: pass --data DATA.npz"
        )));
    }
    let g = &model.graph;
    let (ids, jobs): (Vec<NodeId>, Vec<MomentJob>) = nodes
        .iter()
        .filter_map(|&id| MomentJob::for_node(g, id).map(|j| (id, j)))
        .unzip();
    let samples = calib::load_samples(model, ctx, None, report)?;
    report
        .counters
        .insert("calibration_samples".into(), samples.len() as i64);
    let threads = ctx.threads.unwrap_or_else(crate::exec::default_threads);
    let found = calib::first_and_second_moments(
        model,
        &jobs,
        &samples,
        ctx.model_dir.as_deref(),
        threads,
        MomentLimits::default(),
        ctx.progress,
    )?;
    let mut out = BTreeMap::new();
    for (id, m) in ids.into_iter().zip(found) {
        if let Some((moments, mut sums)) = m {
            out.insert(
                g.node(id).name().to_string(),
                InputStats {
                    moments,
                    sums: sums.swap_remove(0),
                },
            );
        }
    }
    Ok(out)
}

/// The features of a consumer's row that input channel `i` feeds (`None`
/// for a grouped Conv).
fn features(layout: &Layout, i: usize) -> Option<std::ops::Range<usize>> {
    match layout {
        Layout::Conv {
            groups: 1, kernel, ..
        } => {
            let kk = kernel[0] * kernel[1];
            Some(i * kk..(i + 1) * kk)
        }
        Layout::Conv { .. } => None,
        Layout::Dense { .. } => Some(i..i + 1),
    }
}

/// Output rows of a weight of `dims` laid out as `layout`.
fn rows(layout: &Layout, dims: &[i64]) -> usize {
    match layout {
        Layout::Conv { .. } => dims.first().copied().unwrap_or(0).max(0) as usize,
        Layout::Dense { n, .. } => *n,
    }
}

/// The axes of a consumer's weight: (input, output).
fn axes(n: &crate::ir::Node) -> Option<(usize, usize)> {
    match n.op_type() {
        "Conv" => Some((1, 0)),
        "MatMul" => Some((0, 1)),
        "Gemm" if n.attr_int("transB") == Some(1) => Some((1, 0)),
        "Gemm" => Some((0, 1)),
        _ => None,
    }
}

/// Per input channel `i < channels` of a consumer with weight `t`:
/// `Σ_r Σ_{j∈feats(i)} W[r, j]² · E[x_j²]`, its share of the consumer's
/// output energy were the inputs uncorrelated (Wanda's `|W|·‖X‖`, squared
/// and summed over the channel's weights; `‖X_j‖` from
/// [`Moments::column_norms`]). `None` for a grouped Conv or a mismatch.
pub fn channel_energies(t: &Tensor, stats: &InputStats, channels: usize) -> Option<Vec<f64>> {
    let layout = &stats.moments.layout;
    let w = t.to_f32().ok()?;
    let norms = stats.moments.column_norms(0);
    let n = stats.moments.positions.max(1) as f64;
    let o = rows(layout, &t.dims);
    (0..channels)
        .map(|i| {
            let mut e = 0.0;
            for j in features(layout, i)? {
                let x2 = norms.get(j)?.powi(2) / n;
                let mut c = 0.0;
                for r in 0..o {
                    let v = f64::from(*w.get(layout.index(r, j))?);
                    c += v * v;
                }
                e += c * x2;
            }
            Some(e)
        })
        .collect()
}

/// Where a consumer's intercept goes.
enum Bias {
    /// This initializer (scaled by Gemm's `beta`).
    Initializer(String, f64),
    /// None yet: a Conv or Gemm gets one after the rewrite.
    Missing,
    /// No place for one: fit without intercept.
    Absent,
}

fn bias_of(g: &Graph, id: NodeId, o: usize) -> Bias {
    let n = g.node(id);
    let own = |name: &str| {
        g.initializer(name).is_some_and(|t| {
            t.dtype() == DataType::Float
                && t.dims.iter().product::<i64>() == o as i64
                && t.dims.iter().rev().skip(1).all(|&d| d == 1)
        }) && g.uses(name).len() == 1
            && !g.is_output(name)
    };
    match n.op_type() {
        "Conv" | "Gemm" => match n.inputs.get(2).filter(|b| !b.is_empty()) {
            None => Bias::Missing,
            Some(b) if own(b) => {
                let beta = if n.op_type() == "Gemm" {
                    n.attr_float("beta").map_or(1.0, f64::from)
                } else {
                    1.0
                };
                if beta == 0.0 {
                    Bias::Absent
                } else {
                    Bias::Initializer(b.clone(), beta)
                }
            }
            Some(_) => Bias::Absent,
        },
        "MatMul" => {
            let Some(y) = n.outputs.first() else {
                return Bias::Absent;
            };
            let uses = g.uses(y);
            if uses.len() != 1 || g.is_output(y) {
                return Bias::Absent;
            }
            let add = g.node(uses[0].node);
            if add.op_type() != "Add" || add.inputs.len() != 2 {
                return Bias::Absent;
            }
            let other = &add.inputs[1 - uses[0].slot];
            let rank1 = g.initializer(other).is_some_and(|t| t.dims.len() == 1);
            if rank1 && own(other) {
                Bias::Initializer(other.clone(), 1.0)
            } else {
                Bias::Absent
            }
        }
        _ => Bias::Absent,
    }
}

/// A bias the rewrite must add: the consumer, its weight's output dim, the
/// bias over every original output row.
pub struct Pending {
    node: String,
    out_dim: Option<usize>,
    bias: Vec<f64>,
}

/// The least-squares fit of one consumer: `W' = W C (A + λI)⁻¹` with
/// `C = Σ[:, K]`, `A = Σ[K, K]` (`o × d` weight `w`, `d × d` moment `s`),
/// and the output SQNR of the layer on these moments with the channels
/// removed as they are and after the fit. Returns (W', λ, before dB, after dB).
fn solve(
    w: &[f64],
    o: usize,
    d: usize,
    s: &[f64],
    kept: &[usize],
    signal: f64,
) -> Option<(Vec<f64>, f64, f64, f64)> {
    let k = kept.len();
    let mut a = vec![0f64; k * k];
    for (p, &i) in kept.iter().enumerate() {
        for (q, &j) in kept.iter().enumerate() {
            a[p * k + q] = s[i * d + j];
        }
    }
    let mean_diag = (0..k).map(|p| a[p * k + p]).sum::<f64>() / k.max(1) as f64;
    if mean_diag.is_nan() || mean_diag <= 0.0 {
        return None;
    }
    let lambda = DAMP * mean_diag;
    for p in 0..k {
        a[p * k + p] += lambda;
    }
    // B = C ᵀ Wᵀ = Σ[K, :] Wᵀ  (k × o).
    let mut b = vec![0f64; k * o];
    for (p, &i) in kept.iter().enumerate() {
        let srow = &s[i * d..(i + 1) * d];
        for r in 0..o {
            let wr = &w[r * d..(r + 1) * d];
            b[p * o + r] = srow.iter().zip(wr).map(|(x, y)| x * y).sum();
        }
    }
    let x = linalg::solve_spd(&a, k, &b, o)?;
    // W' embedded in the full row (removed features 0), and the errors.
    let mut fitted = vec![0f64; o * d];
    let mut plain = vec![0f64; o * d];
    for r in 0..o {
        for (p, &i) in kept.iter().enumerate() {
            fitted[r * d + i] = x[p * o + r];
            plain[r * d + i] = w[r * d + i];
        }
    }
    let err = |v: &[f64]| {
        // tr(E S Eᵀ), E = V − W.
        let mut total = 0.0;
        let mut e = vec![0f64; d];
        for r in 0..o {
            for j in 0..d {
                e[j] = v[r * d + j] - w[r * d + j];
            }
            for i in 0..d {
                if e[i] != 0.0 {
                    let si = &s[i * d..(i + 1) * d];
                    total += e[i] * si.iter().zip(&e).map(|(x, y)| x * y).sum::<f64>();
                }
            }
        }
        total.max(0.0)
    };
    let db = |noise: f64| {
        if noise > 0.0 {
            10.0 * (signal / noise).log10()
        } else {
            f64::INFINITY
        }
    };
    let (before, after) = (db(err(&plain)), db(err(&fitted)));
    Some((fitted, lambda, before, after))
}

/// Re-fits every consumer of removed channels in `g` (before the rewrite
/// slices them: removed features are written as zeros), from `stats`.
/// Biases that do not exist yet come back as [`Pending`], for [`add_biases`]
/// after the rewrite.
pub fn refit(
    g: &mut Graph,
    plan: &Plan,
    stats: &BTreeMap<String, InputStats>,
    report: &mut PassReport,
) -> Result<Vec<Pending>, PassError> {
    let a = &plan.analysis;
    let gone = channel::gone(a, &plan.removed);
    let mut pending = Vec::new();
    for id in consumers(g, &a.groups, &plan.fates) {
        let n = g.node(id).clone();
        let name = n.name().to_string();
        let skip = |report: &mut PassReport, why: &str| {
            report
                .warnings
                .push(format!("reconstruct: {} not re-fitted: {why}", n.label()));
            report.count("reconstruct_skipped", 1);
        };
        let (Some((in_axis, out_axis)), Some(wname)) = (axes(&n), n.inputs.get(1)) else {
            continue;
        };
        let Some(removed_in) = a.dim(wname, in_axis).and_then(|d| gone.get(&d)) else {
            continue;
        };
        let Some(t) = g.initializer(wname).cloned() else {
            continue;
        };
        if t.dtype() != DataType::Float || g.uses(wname).len() != 1 {
            skip(report, "its weight is shared or not float32");
            continue;
        }
        let Some(st) = stats.get(&name) else {
            skip(
                report,
                "no moments of its input (not float32, or a row longer than 1536)",
            );
            continue;
        };
        let layout = &st.moments.layout;
        let d = layout.row_len();
        let o = rows(layout, &t.dims);
        let mut removed = BTreeSet::new();
        for &i in removed_in {
            match features(layout, i) {
                Some(f) => removed.extend(f),
                None => {
                    skip(report, "a grouped Conv");
                    removed.clear();
                    break;
                }
            }
        }
        if removed.is_empty() {
            continue;
        }
        let kept: Vec<usize> = (0..d).filter(|j| !removed.contains(j)).collect();
        let values = t.to_f32()?;
        let mut w = vec![0f64; o * d];
        for r in 0..o {
            for j in 0..d {
                w[r * d + j] = f64::from(values[layout.index(r, j)]);
            }
        }
        let bias = bias_of(g, id, o);
        let positions = st.moments.positions.max(1) as f64;
        let mu: Vec<f64> = st.sums.iter().map(|s| s / positions).collect();
        let mut s = st.moments.mean(0);
        let centred = !matches!(bias, Bias::Absent);
        if centred {
            for i in 0..d {
                for j in 0..d {
                    s[i * d + j] -= mu[i] * mu[j];
                }
            }
        }
        // Signal: E‖W x + b‖² of the unpruned layer, from the raw moments.
        let b0: Vec<f64> = match &bias {
            Bias::Initializer(bn, beta) => g
                .initializer(bn)
                .and_then(|b| b.to_f32().ok())
                .map(|v| v.iter().map(|x| f64::from(*x) * beta).collect())
                .unwrap_or_else(|| vec![0.0; o]),
            _ => vec![0.0; o],
        };
        let raw = st.moments.mean(0);
        let mut signal = 0.0;
        for r in 0..o {
            let wr = &w[r * d..(r + 1) * d];
            let wmu: f64 = wr.iter().zip(&mu).map(|(x, y)| x * y).sum();
            let mut q = 0.0;
            for i in 0..d {
                if wr[i] != 0.0 {
                    q += wr[i]
                        * raw[i * d..(i + 1) * d]
                            .iter()
                            .zip(wr)
                            .map(|(x, y)| x * y)
                            .sum::<f64>();
                }
            }
            signal += q + 2.0 * b0[r] * wmu + b0[r] * b0[r];
        }
        let Some((fitted, lambda, before_db, after_db)) = solve(&w, o, d, &s, &kept, signal) else {
            skip(
                report,
                "its kept inputs' covariance is not positive definite",
            );
            continue;
        };
        // With a centred fit, the error of the plain removal also carries the
        // removed channels' mean (b unchanged): add it to `before`.
        let before_db = if centred {
            let mut mean_err = 0.0;
            for r in 0..o {
                let m: f64 = removed.iter().map(|&j| w[r * d + j] * mu[j]).sum();
                mean_err += m * m;
            }
            let noise = signal / 10f64.powf(before_db / 10.0) + mean_err;
            if noise > 0.0 {
                10.0 * (signal / noise).log10()
            } else {
                f64::INFINITY
            }
        } else {
            before_db
        };
        let mut new = values.clone();
        for r in 0..o {
            for j in 0..d {
                new[layout.index(r, j)] = fitted[r * d + j] as f32;
            }
        }
        g.replace_initializer(Tensor::from_f32(wname, t.dims.clone(), &new));
        let mut delta = vec![0f64; o];
        if centred {
            for (r, dr) in delta.iter_mut().enumerate() {
                let wr = &w[r * d..(r + 1) * d];
                let fr = &fitted[r * d..(r + 1) * d];
                *dr = (0..d).map(|j| (wr[j] - fr[j]) * mu[j]).sum();
            }
        }
        let intercept = match &bias {
            Bias::Initializer(bn, beta) => {
                if let Some(b) = g.initializer(bn).cloned() {
                    let mut v = b.to_f32()?;
                    for (x, dr) in v.iter_mut().zip(&delta) {
                        *x = (f64::from(*x) + dr / beta) as f32;
                    }
                    g.replace_initializer(Tensor::from_f32(bn, b.dims.clone(), &v));
                }
                "bias"
            }
            Bias::Missing => {
                if delta.iter().any(|&v| v != 0.0) {
                    pending.push(Pending {
                        node: name.clone(),
                        out_dim: a.dim(wname, out_axis),
                        bias: delta,
                    });
                }
                "bias added"
            }
            Bias::Absent => "none",
        };
        report.count("reconstructed", 1);
        report.details.push(serde_json::json!({
            "reconstructed": n.label(),
            "features_kept": kept.len(),
            "features_removed": removed.len(),
            "damping": format!("{lambda:.4e}").parse::<f64>().unwrap_or(lambda),
            "intercept": intercept,
            "layer_sqnr_db_removed": round3(before_db),
            "layer_sqnr_db_refit": round3(after_db),
            "positions": st.moments.positions,
        }));
    }
    Ok(pending)
}

/// Adds the biases [`refit`] left pending, sliced to the rows the rewrite kept.
pub fn add_biases(g: &mut Graph, plan: &Plan, pending: Vec<Pending>) -> Result<(), PassError> {
    let gone = channel::gone(&plan.analysis, &plan.removed);
    for p in pending {
        let Some((id, _)) = g.nodes().find(|(_, n)| n.name() == p.node) else {
            continue;
        };
        let cut = p.out_dim.and_then(|d| gone.get(&d));
        let v: Vec<f32> = p
            .bias
            .iter()
            .enumerate()
            .filter(|(r, _)| cut.is_none_or(|c| !c.contains(r)))
            .map(|(_, &x)| x as f32)
            .collect();
        let name = g.unique_name(&format!("{}.bias", p.node));
        g.add_initializer(Tensor::from_f32(&name, vec![v.len() as i64], &v));
        g.update_node(id, |n| {
            n.inputs.truncate(2);
            n.inputs.push(name.clone());
        });
    }
    Ok(())
}

/// Adds `delta` (one value per output row of node `id`'s weight) to what
/// the node adds after its product — a Conv's or Gemm's bias (scaled by
/// Gemm's `beta`; one is added when there is none), or the constant of a
/// MatMul's bias Add — as [`refit`] does for its intercept. Returns what
/// took it (`"bias"`, `"bias added"`), or `None` when nothing can (a bias
/// shared with another node, `beta: 0`, a MatMul without its own bias Add).
pub fn shift_bias(g: &mut Graph, id: NodeId, delta: &[f64]) -> Option<&'static str> {
    match bias_of(g, id, delta.len()) {
        Bias::Initializer(name, beta) => {
            let b = g.initializer(&name)?.clone();
            let mut v = b.to_f32().ok()?;
            for (x, d) in v.iter_mut().zip(delta) {
                *x = (f64::from(*x) + d / beta) as f32;
            }
            g.replace_initializer(Tensor::from_f32(&name, b.dims.clone(), &v));
            Some("bias")
        }
        Bias::Missing => {
            let n = g.node(id);
            let beta = match n.op_type() {
                "Gemm" => n.attr_float("beta").map_or(1.0, f64::from),
                _ => 1.0,
            };
            if beta == 0.0 {
                return None;
            }
            let v: Vec<f32> = delta.iter().map(|d| (d / beta) as f32).collect();
            let name = g.unique_name(&format!("{}.bias", n.name()));
            g.add_initializer(Tensor::from_f32(&name, vec![v.len() as i64], &v));
            g.update_node(id, |n| {
                n.inputs.truncate(2);
                n.inputs.push(name.clone());
            });
            Some("bias added")
        }
        Bias::Absent => None,
    }
}

fn round3(x: f64) -> f64 {
    if x.is_finite() {
        (x * 1e3).round() / 1e3
    } else {
        999.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_energies_weigh_weight_norms_by_input_norms() {
        // MatMul weight [K=3, N=2]; E[x²] = 4, 0 (a dead input), 1.
        let w = Tensor::from_f32("w", vec![3, 2], &[1.0, 2.0, 5.0, 5.0, 0.5, 0.5]);
        let layout = Layout::Dense {
            k: 3,
            n: 2,
            transposed: false,
        };
        let mut h = vec![0f64; 9];
        (h[0], h[4], h[8]) = (40.0, 0.0, 10.0);
        let stats = InputStats {
            moments: Moments {
                layout,
                h: vec![h],
                positions: 10,
                samples: 10,
            },
            sums: vec![0.0; 3],
        };
        let e = channel_energies(&w, &stats, 3).unwrap();
        // Σ_r W[j, r]² · E[x_j²]: the large weights on the dead input count for nothing.
        let want = [(1.0 + 4.0) * 4.0, 0.0, 0.5 * 1.0];
        for (got, want) in e.iter().zip(want) {
            assert!((got - want).abs() < 1e-12, "{e:?}");
        }
    }

    #[test]
    fn a_removed_feature_that_is_a_combination_of_kept_ones_is_refit_exactly() {
        // x2 = 2·x0 − x1 on every row: removing it and re-fitting loses nothing.
        let rows: Vec<[f64; 3]> = (0..20)
            .map(|i| {
                let (a, b) = ((i as f64 * 0.37).sin(), (i as f64 * 0.91).cos());
                [a, b, 2.0 * a - b]
            })
            .collect();
        let mut s = vec![0f64; 9];
        for r in &rows {
            for i in 0..3 {
                for j in 0..3 {
                    s[i * 3 + j] += r[i] * r[j] / rows.len() as f64;
                }
            }
        }
        let w = [1.0, 0.5, -0.25, 0.3, -1.0, 2.0];
        let (fitted, lambda, before, after) = solve(&w, 2, 3, &s, &[0, 1], 1.0).unwrap();
        assert!(lambda > 0.0 && lambda < 1e-3);
        // W' = W_K + w_2 · [2, −1].
        let want = [1.0 - 0.5, 0.5 + 0.25, 0.0, 0.3 + 4.0, -1.0 - 2.0, 0.0];
        for (f, g) in fitted.iter().zip(&want) {
            // Exact up to the damping λ = 1e-4 · mean diag.
            assert!((f - g).abs() < 2e-3, "{fitted:?}");
        }
        assert!(after > before + 40.0, "{before} {after}");
    }
}
