//! `target: { min_sqnr_db }` for channel pruning: per-group amounts chosen
//! by measured sensitivity, through the shared target search
//! (`passes/measure.rs`, as quantize's target does).
//!
//! Each prunable group has `LEVELS` steps of pruning (a quarter, a half,
//! three quarters of its channels, the least important first, bounded by
//! `min_channels` / `round_to`). A *unit* of the search is one step of one
//! group; keeping it means not taking that step. The sensitivity of step `s`
//! of group `g` is the output noise (`10^(−SQNR/10)` against the unpruned
//! model in tract, on the target's samples) of the model with only `g`
//! pruned at level `s`, minus that at level `s − 1`; units are ranked by
//! it, largest first. `measure::search` finds the smallest ranked prefix to
//! keep that meets the target (on the SQNR's 95% lower bound), then gives
//! back the steps that save the most MACs while it still holds. A group's
//! amount is `LEVELS −` its kept steps. Variants are re-fitted exactly as
//! the pass would (`reconstruct`), so the search measures what is written.
//!
//! The chosen model is then measured as written, with tract's
//! optimisation, on every sample (what `whittle validate` does); if it
//! misses, more ranked steps are kept (`measure::widen`) until it meets the
//! target or nothing is pruned. The final line states the samples and the
//! SQNR `whittle validate ORIGINAL PRUNED --data SAME` prints.

use std::collections::BTreeSet;

use crate::data::{Array, Sample};
use crate::ir::Model;
use crate::passes::measure::{self, Score, Thresholds, Unit};
use crate::passes::{calib, PassContext, PassError, PassReport};

use super::channel::{self, Fate, Plan};
use super::{reconstruct, Prune};

/// Pruning steps per group: level `s` removes `s / LEVELS` of its channels
/// (at most `MAX_RATIO`).
const LEVELS: usize = 3;

/// Fraction removed at the top level.
const MAX_RATIO: f64 = 0.75;

/// Default samples the sensitivity is measured on.
const SAMPLES: usize = 32;

/// The removal of every group at `levels[g]` (0: nothing).
fn removal(cfg: &Prune, plan: &Plan, levels: &[usize]) -> Vec<Vec<usize>> {
    plan.analysis
        .groups
        .iter()
        .zip(&plan.fates)
        .zip(levels)
        .map(|((grp, fate), &lv)| match fate {
            Fate::Prunable(scores) if lv > 0 => {
                let n = scores.len();
                let ratio = MAX_RATIO * lv as f64 / LEVELS as f64;
                let remove = (ratio * n as f64).floor() as usize;
                channel::least(scores, channel::bounded_keep(cfg, grp, n - remove))
            }
            _ => Vec::new(),
        })
        .collect()
}

/// `model` pruned by `removed` (re-fitted when `refit`), as the pass writes it.
fn variant(
    model: &Model,
    plan: &mut Plan,
    removed: Vec<Vec<usize>>,
    refit: bool,
) -> Result<Model, PassError> {
    let mut m = model.clone();
    plan.removed = removed;
    let mut scratch = PassReport::default();
    let pending = if refit {
        reconstruct::refit(&mut m.graph, plan, &plan.stats, &mut scratch)?
    } else {
        Vec::new()
    };
    channel::apply(&mut m, plan)?;
    reconstruct::add_biases(&mut m.graph, plan, pending)?;
    Ok(m)
}

/// Chooses `plan.removed` for `target.min_sqnr_db = db`; returns the
/// line that ends the summary.
pub fn search(
    cfg: &Prune,
    model: &Model,
    ctx: &PassContext,
    plan: &mut Plan,
    db: f64,
    samples: Option<usize>,
    report: &mut PassReport,
) -> Result<String, PassError> {
    let refit = channel::reconstructs(cfg, ctx);
    let limit = samples.unwrap_or(SAMPLES);
    let samples: Vec<Sample> = calib::load_samples(model, ctx, Some(limit), report)?;
    let threads = ctx.threads.unwrap_or_else(crate::exec::default_threads);
    let dir = ctx.model_dir.as_deref();
    let reference: Vec<Vec<Array>> =
        measure::run("unpruned model", model, &samples, dir, threads, true)?;
    let t = Thresholds {
        min_sqnr_db: Some(db),
        ..Thresholds::default()
    };
    let groups: Vec<usize> = (0..plan.fates.len())
        .filter(|&g| matches!(plan.fates[g], Fate::Prunable(_)))
        .collect();
    let mut evaluations = 0usize;
    let mut score_of = |plan: &mut Plan, levels: &[usize]| -> Result<Score, PassError> {
        let removed = removal(cfg, plan, levels);
        let m = variant(model, plan, removed, refit)?;
        let got = measure::run("pruned variant", &m, &samples, dir, threads, false)?;
        evaluations += 1;
        Ok(measure::score(&reference, &got))
    };
    // Sensitivity: each group alone at each level.
    let none = vec![0usize; plan.fates.len()];
    let mut units: Vec<(f64, Unit, usize)> = Vec::new();
    let macs0 = channel::cost(&model.graph, plan, &removal(cfg, plan, &none)).0;
    for &g in &groups {
        let mut prev_noise = 0.0;
        let mut prev_macs = macs0;
        for s in 1..=LEVELS {
            let mut levels = none.clone();
            levels[g] = s;
            let sc = score_of(plan, &levels)?;
            let noise = sc.noise();
            let macs = channel::cost(&model.graph, plan, &removal(cfg, plan, &levels)).0;
            units.push((
                noise - prev_noise,
                Unit {
                    label: format!("{} step {s}", channel::group_name(&plan.analysis.groups[g])),
                    cost: Some(prev_macs.saturating_sub(macs)),
                },
                g,
            ));
            prev_noise = noise;
            prev_macs = macs;
        }
    }
    units.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.label.cmp(&b.1.label)));
    let ranked: Vec<Unit> = units.iter().map(|u| u.1.clone()).collect();
    let levels_of = |kept: &BTreeSet<usize>| -> Vec<usize> {
        let mut levels = none.clone();
        for &g in &groups {
            levels[g] = LEVELS;
        }
        for &i in kept {
            let g = units[i].2;
            levels[g] = levels[g].saturating_sub(1);
        }
        levels
    };
    let found = measure::search(&ranked, &t, None, |kept| score_of(plan, &levels_of(kept)))?;
    // Acceptance: as written, optimised, on every sample (= `whittle validate`).
    let mut kept = found.kept.clone();
    let mut step = 1;
    let (final_score, met) = loop {
        let removed = removal(cfg, plan, &levels_of(&kept));
        let m = variant(model, plan, removed, refit)?;
        let got = measure::run("pruned model", &m, &samples, dir, threads, true)?;
        let sc = measure::score(&reference, &got);
        if sc.meets_pooled(&t) || kept.len() == ranked.len() {
            break (sc, sc.meets_pooled(&t));
        }
        kept = measure::widen(ranked.len(), &kept, step);
        step *= 2;
    };
    plan.removed = removal(cfg, plan, &levels_of(&kept));
    let macs1 = channel::cost(&model.graph, plan, &plan.removed).0;
    report.count("target_evaluations", (evaluations + 1) as i64);
    report.count("target_steps_taken", (ranked.len() - kept.len()) as i64);
    for (g, lv) in levels_of(&kept).iter().enumerate() {
        if groups.contains(&g) {
            report.details.push(serde_json::json!({
                "target_group": channel::group_name(&plan.analysis.groups[g]),
                "level": lv,
                "fraction_removed": MAX_RATIO * *lv as f64 / LEVELS as f64,
            }));
        }
    }
    let line = format!(
        "target.min_sqnr_db {db}: {} — output SQNR {:.2} dB on {} {} samples (as `whittle validate` measures them), MACs {} → {} ({:.3}), {} of {} pruning steps taken{}",
        if met { "met" } else { "not met" },
        final_score.sqnr_db,
        final_score.samples,
        if ctx.data.is_some() { "calibration" } else { "synthetic" },
        macs0,
        macs1,
        macs1 as f64 / macs0.max(1) as f64,
        ranked.len() - kept.len(),
        ranked.len(),
        if refit { ", reconstructed" } else { "" },
    );
    if !met {
        report.warnings.push(line.clone());
    }
    Ok(line)
}
