//! The data-aware half of `low-rank`: the layer inputs' second moments
//! (gathered by the shared `calib` moments), their Cholesky whitening, the error
//! of the written factors on those moments, and the `min_sqnr_db` search.

use std::collections::BTreeMap;

use super::{linalg, Layer, Spectrum};
use crate::data::{Array, Sample};
use crate::ir::{Model, NodeId};
use crate::passes::{calib, measure};
use crate::passes::{PassContext, PassError, PassReport};

/// One layer's input second moments, `Σ x xᵀ` over the observed rows (or
/// patches), `K × K` row-major.
pub struct LayerGram {
    pub h: Vec<f64>,
    /// Rows (positions) `h` is the mean over.
    pub positions: u64,
}

/// The moments over the samples of both `a` and `b` (gathered on disjoint
/// samples): per layer the position-weighted mean of the two, or the one
/// side that saw the layer.
pub fn merge(
    mut a: BTreeMap<NodeId, LayerGram>,
    b: BTreeMap<NodeId, LayerGram>,
) -> BTreeMap<NodeId, LayerGram> {
    for (id, gb) in b {
        match a.get_mut(&id) {
            Some(ga) if ga.h.len() == gb.h.len() => {
                let (pa, pb) = (ga.positions as f64, gb.positions as f64);
                let n = (pa + pb).max(1.0);
                for (x, y) in ga.h.iter_mut().zip(&gb.h) {
                    *x = (*x * pa + y * pb) / n;
                }
                ga.positions += gb.positions;
            }
            Some(_) => {}
            None => {
                a.insert(id, gb);
            }
        }
    }
    a
}

/// Longest input row (`K`) whose moments are gathered: `K²` f64 each,
/// 4096 is 128 MB. Above the shared default (1536) because a layer left
/// unwhitened loses most of what whitening buys (PP-OCR rec's 3×3 Conv over
/// 320 channels has K = 2880; BENCHMARKS.md).
pub const MAX_ROW: usize = 4096;

/// Output positions (Conv) or rows (MatMul/Gemm) of one sample that enter
/// the moments, evenly spaced: all of them on the models measured (PP-OCR
/// rec's first Conv has 3840), so the whitening sees the data SVD-LLM sees.
pub const POSITIONS_PER_SAMPLE: usize = 4096;

/// The samples for the moments and the `min_sqnr_db` search (shared calib code).
pub fn load_samples(
    model: &Model,
    ctx: &PassContext,
    limit: usize,
    report: &mut PassReport,
) -> Result<Vec<Sample>, PassError> {
    calib::load_samples(model, ctx, Some(limit), report)
}

/// The second moments of every whitenable layer's input (dense layers and
/// channel-split Convs), by node, through the shared `calib` moments.
pub fn grams(
    model: &Model,
    layers: &[Layer],
    samples: &[Sample],
    ctx: &PassContext,
) -> Result<BTreeMap<NodeId, LayerGram>, PassError> {
    let g = &model.graph;
    let mut jobs = Vec::new();
    let mut owners = Vec::new();
    for l in layers.iter().filter(|l| {
        matches!(
            l.kind,
            super::Kind::MatMul
                | super::Kind::Gemm { trans_a: false, .. }
                | super::Kind::Channel { .. }
        )
    }) {
        if let Some(job) = calib::MomentJob::for_node(g, l.node) {
            jobs.push(job);
            owners.push(l);
        }
    }
    let threads = ctx.threads.unwrap_or_else(crate::exec::default_threads);
    let moments = calib::second_moments(
        model,
        &jobs,
        samples,
        ctx.model_dir.as_deref(),
        threads,
        calib::MomentLimits {
            positions_per_sample: POSITIONS_PER_SAMPLE,
            max_row: MAX_ROW,
        },
        ctx.progress,
    )?;
    let mut out = BTreeMap::new();
    for (l, m) in owners.into_iter().zip(moments) {
        let Some(m) = m else { continue };
        if m.layout.row_len() != l.k || m.h.len() != 1 {
            continue;
        }
        out.insert(
            l.node,
            LayerGram {
                h: m.mean(0),
                positions: m.positions,
            },
        );
    }
    Ok(out)
}

/// `H + λI = L Lᵀ` and what it took.
pub struct Whitening {
    /// `L`, lower, `K × K`.
    l: Vec<f64>,
    /// `L⁻¹`, lower, `K × K`.
    l_inv: Vec<f64>,
    k: usize,
    /// λ relative to the mean diagonal of `H`.
    pub damping: f64,
}

impl Whitening {
    /// `Lᵀ W` for the `K × n` matrix `w`.
    pub fn whiten(&self, w: &[f64], n: usize) -> Vec<f64> {
        let k = self.k;
        let mut out = vec![0f64; k * n];
        for i in 0..k {
            // (Lᵀ)[i, p] = L[p, i], non-zero for p ≥ i.
            for p in i..k {
                let c = self.l[p * k + i];
                if c != 0.0 {
                    let (row, src) = (&mut out[i * n..(i + 1) * n], &w[p * n..(p + 1) * n]);
                    row.iter_mut().zip(src).for_each(|(o, s)| *o += c * s);
                }
            }
        }
        out
    }

    /// `L⁻ᵀ a` for the `K × r` matrix `a`.
    pub fn unwhiten(&self, a: &[f64], r: usize) -> Vec<f64> {
        let k = self.k;
        let mut out = vec![0f64; k * r];
        for i in 0..k {
            // (L⁻ᵀ)[i, p] = L⁻¹[p, i], non-zero for p ≥ i.
            for p in i..k {
                let c = self.l_inv[p * k + i];
                if c != 0.0 {
                    let (row, src) = (&mut out[i * r..(i + 1) * r], &a[p * r..(p + 1) * r]);
                    row.iter_mut().zip(src).for_each(|(o, s)| *o += c * s);
                }
            }
        }
        out
    }
}

/// The Cholesky whitening of `h` (`k × k`), damped by `damping` × its mean
/// diagonal, ten times more until it factors (at most 6 times); `None` when
/// `h` is zero or never factors.
pub fn whitening(g: &LayerGram, k: usize, damping: f64) -> Option<Whitening> {
    let h = &g.h;
    let mean = (0..k).map(|i| h[i * k + i]).sum::<f64>() / k.max(1) as f64;
    if !(mean > 0.0 && mean.is_finite()) {
        return None;
    }
    let mut rel = damping;
    for _ in 0..7 {
        let mut a = h.clone();
        for i in 0..k {
            a[i * k + i] += rel * mean;
        }
        if let Some(l) = linalg::cholesky(&a, k) {
            let l_inv = linalg::lower_inverse(&l, k);
            if l_inv.iter().all(|v| v.is_finite()) {
                return Some(Whitening {
                    l,
                    l_inv,
                    k,
                    damping: rel,
                });
            }
        }
        rel = if rel == 0.0 { 1e-6 } else { rel * 10.0 };
    }
    None
}

/// The layer's output SQNR (dB) with the written f32 factors on the
/// calibration inputs, computed from their second moments (not run):
/// `tr(Wᵀ H W) / tr(ΔWᵀ H ΔW)` with `ΔW = W − A B`, undamped `H`.
pub fn calib_sqnr_db(g: &LayerGram, layer: &Layer, a: &[f32], b: &[f32], r: usize) -> f64 {
    let (k, n) = (layer.k, layer.n);
    let mut delta = layer.w.clone();
    for i in 0..k {
        for p in 0..r {
            let c = f64::from(a[i * r + p]);
            for j in 0..n {
                delta[i * n + j] -= c * f64::from(b[p * n + j]);
            }
        }
    }
    let quad = |m: &[f64]| -> f64 {
        // tr(Mᵀ H M) = Σ_j m_jᵀ H m_j.
        let mut hm = vec![0f64; k * n];
        for i in 0..k {
            for p in 0..k {
                let c = g.h[i * k + p];
                if c != 0.0 {
                    let (row, src) = (&mut hm[i * n..(i + 1) * n], &m[p * n..(p + 1) * n]);
                    row.iter_mut().zip(src).for_each(|(o, s)| *o += c * s);
                }
            }
        }
        hm.iter().zip(m).map(|(x, y)| x * y).sum()
    };
    let (signal, noise) = (quad(&layer.w), quad(&delta));
    if noise <= 0.0 {
        return 300.0;
    }
    10.0 * (signal / noise).log10()
}

/// `target: { min_sqnr_db }`: the smallest params fraction (by bisection,
/// 7 steps over (0, 1)) whose greedily allocated model keeps every output's
/// SQNR against the original (`reference`: its outputs on `samples`) at
/// least `min_db` in tract (`measure::run`, `measure::score`).
#[allow(clippy::too_many_arguments)]
pub fn search_sqnr(
    model: &Model,
    dir: Option<&std::path::Path>,
    threads: usize,
    layers: &[Layer],
    spectra: &[Spectrum],
    samples: &[Sample],
    reference: &[Vec<Array>],
    min_db: f64,
    alloc: &dyn Fn(f64) -> Vec<Option<usize>>,
    report: &mut PassReport,
) -> Result<Vec<Option<usize>>, PassError> {
    let global: Vec<usize> = (0..layers.len())
        .filter(|&i| layers[i].rule == super::RankRule::Global)
        .collect();
    let score = |ranks: &[Option<usize>]| -> Result<f64, PassError> {
        let mut all: Vec<Option<usize>> = vec![None; layers.len()];
        for (&i, r) in global.iter().zip(ranks) {
            all[i] = *r;
        }
        let m = super::sensitivity::split_copy(model, layers, spectra, &all)?;
        let outs = measure::run("low-rank candidate", &m, samples, dir, threads, true)?;
        Ok(measure::score(reference, &outs).sqnr_db)
    };
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    let mut best: Option<(f64, Vec<Option<usize>>, f64)> = None;
    for _ in 0..7 {
        let mid = 0.5 * (lo + hi);
        let ranks = alloc(mid);
        let db = score(&ranks)?;
        report.summary.push(format!(
            "target min_sqnr_db {min_db}: params fraction {mid:.4} → worst output {db:.2} dB"
        ));
        if db >= min_db {
            best = Some((mid, ranks, db));
            hi = mid;
        } else {
            lo = mid;
        }
    }
    match best {
        Some((f, ranks, db)) => {
            report.summary.push(format!(
                "target min_sqnr_db {min_db}: chose params fraction {f:.4} ({db:.2} dB, tract)"
            ));
            Ok(ranks)
        }
        None => {
            report.warnings.push(format!(
                "target.min_sqnr_db {min_db} not reached even at params fraction {hi:.4}; nothing split"
            ));
            Ok(vec![None; global.len()])
        }
    }
}
