//! Measuring variant models against the float model, for every pass that
//! chooses by accuracy (quantize's target and sensitivity analysis; prune's
//! and low-rank's `target: { min_sqnr_db }`).
//!
//! - [`run`]: a model on samples in tract (the float reference run, or a
//!   variant: without tract's optimisation for the many cheap variant runs,
//!   with it for an acceptance that must equal `whittle validate`).
//! - [`score`]: EXACTLY the metrics `whittle validate` prints
//!   (`exec::metrics`, the one definition): per output, statistics pooled
//!   over all samples (`SQNR = 10·log10(Σa² / Σ(a−b)²)` over every element of
//!   every sample, cosine, top-1 agreement); a [`Score`] is the worst output,
//!   so `score.sqnr_db` is the lowest SQNR row of `whittle validate ORIGINAL
//!   VARIANT --data SAME`. It also carries a one-sided 95% lower bound of
//!   the SQNR over the samples ([`lower_bound_db`]).
//! - [`node_macs`]: multiply-accumulates per node, as `whittle inspect`
//!   counts them (`inspect::node_macs`), from observed shapes.
//! - [`search`]: the generic target search. Given units in rank order (most
//!   worth keeping first; "keeping" a unit means leaving it as in the float
//!   model: not quantized, not pruned, not factored) and a way to score the
//!   variant that keeps a set of them, it finds the smallest ranked prefix
//!   that meets the [`Thresholds`] (bisection), then gives back the
//!   costliest kept units the margin can pay for. [`widen`] is the step
//!   that keeps more when a later, exact acceptance fails.

use std::collections::{BTreeMap, BTreeSet};

use crate::data::{Array, Sample};
use crate::exec::{metrics, run_samples, Runner};
use crate::ir::{Graph, Model, NodeId};
use crate::passes::{ConfigError, PassError};

/// How close a variant's outputs are to the reference (worst output).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score {
    /// Least SQNR over the outputs, dB, pooled over the samples (what
    /// `whittle validate` prints per output).
    pub sqnr_db: f64,
    /// Least one-sided 95% lower confidence bound of the SQNR over the
    /// outputs, dB: the total noise is raised by 1.645 standard errors of
    /// the pooled noise-to-signal ratio ([`lower_bound_db`]; equal to
    /// `sqnr_db` on one sample).
    pub sqnr_db_low: f64,
    /// Least cosine similarity.
    pub cosine: f64,
    /// Least top-1 agreement over class-score outputs.
    pub top1: Option<f64>,
    /// Samples measured.
    pub samples: usize,
}

/// Accuracy thresholds on a [`Score`]; every given one must hold.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Thresholds {
    /// Least SQNR, dB.
    pub min_sqnr_db: Option<f64>,
    /// Least cosine similarity.
    pub min_cosine: Option<f64>,
    /// Least top-1 agreement (class-score outputs), 0..1.
    pub min_top1: Option<f64>,
}

impl Thresholds {
    /// Checks the values; errors name `prefix.field` (e.g. `target.min_cosine`).
    pub fn check(&self, prefix: &str) -> Result<(), ConfigError> {
        let error = |f: &str, m: &str| ConfigError {
            field: format!("{prefix}.{f}"),
            message: m.into(),
        };
        if self.min_sqnr_db.is_none() && self.min_cosine.is_none() && self.min_top1.is_none() {
            return Err(ConfigError {
                field: prefix.into(),
                message: "give at least one of min_sqnr_db, min_cosine, min_top1".into(),
            });
        }
        if self.min_sqnr_db.is_some_and(|v| !v.is_finite()) {
            return Err(error("min_sqnr_db", "must be a finite number of dB"));
        }
        for (v, f) in [(self.min_cosine, "min_cosine"), (self.min_top1, "min_top1")] {
            if v.is_some_and(|v| !(0.0..=1.0).contains(&v)) {
                return Err(error(f, "must be between 0 and 1"));
            }
        }
        Ok(())
    }

    /// "SQNR >= 30 dB, cosine >= 0.99".
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(v) = self.min_sqnr_db {
            parts.push(format!("SQNR >= {v} dB"));
        }
        if let Some(v) = self.min_cosine {
            parts.push(format!("cosine >= {v}"));
        }
        if let Some(v) = self.min_top1 {
            parts.push(format!("top-1 >= {v}"));
        }
        parts.join(", ")
    }
}

impl Score {
    /// The thresholds hold, SQNR judged on its 95% lower bound (the search's
    /// rule: a choice that only just clears the target on these samples is
    /// not taken).
    pub fn meets(&self, t: &Thresholds) -> bool {
        self.meets_with(t, self.sqnr_db_low)
    }

    /// The thresholds hold, SQNR judged on the pooled figure (what
    /// `whittle validate` gates on).
    pub fn meets_pooled(&self, t: &Thresholds) -> bool {
        self.meets_with(t, self.sqnr_db)
    }

    /// The thresholds hold, SQNR judged on `sqnr`.
    pub fn meets_with(&self, t: &Thresholds, sqnr: f64) -> bool {
        t.min_sqnr_db.is_none_or(|m| sqnr >= m)
            && t.min_cosine.is_none_or(|m| self.cosine >= m)
            && t.min_top1.is_none_or(|m| self.top1.is_none_or(|v| v >= m))
    }

    /// Relative noise power `10^(-SQNR/10)`.
    pub fn noise(&self) -> f64 {
        10f64.powf(-self.sqnr_db / 10.0)
    }
}

/// Runs `model` on `samples` on `threads` threads; `optimize` false skips
/// tract's optimisation (a variant run once costs less that way).
pub fn run(
    label: &str,
    model: &Model,
    samples: &[Sample],
    dir: Option<&std::path::Path>,
    threads: usize,
    optimize: bool,
) -> Result<Vec<Vec<Array>>, PassError> {
    let fail = |e: crate::exec::ExecError| PassError::Model(format!("measuring {label}: {e}"));
    let mut runner = Runner::from_model(label, model, dir).map_err(fail)?;
    if !optimize {
        runner = runner.without_optimization();
    }
    run_samples(&runner, samples, threads).map_err(fail)
}

/// The score of `got` against `reference` (same samples, same outputs), by
/// `whittle validate`'s definitions (see the module doc).
pub fn score(reference: &[Vec<Array>], got: &[Vec<Array>]) -> Score {
    let c = compare(reference, got);
    c.score((0..c.samples()).collect::<Vec<_>>().as_slice())
}

/// Per-sample, per-output comparisons of a variant's outputs with the
/// reference's, from which the [`Score`] of any subset of the samples is
/// pooled exactly as [`score`] pools all of them (what the cross-validated
/// search scores folds with, without running a variant twice).
#[derive(Debug, Clone, Default)]
pub struct Compared {
    /// `[sample][output]`.
    per_sample: Vec<Vec<metrics::Stats>>,
}

/// The comparisons of `got` with `reference`, sample by sample.
pub fn compare(reference: &[Vec<Array>], got: &[Vec<Array>]) -> Compared {
    Compared {
        per_sample: reference
            .iter()
            .zip(got)
            .map(|(r, g)| {
                r.iter()
                    .zip(g)
                    .map(|(a, b)| metrics::compare(a, b))
                    .collect()
            })
            .collect(),
    }
}

impl Compared {
    /// Samples compared.
    pub fn samples(&self) -> usize {
        self.per_sample.len()
    }

    /// The comparisons of sample `i` taken from `other` instead (the
    /// out-of-fold outputs of a cross-validation come from several variants).
    fn take_sample(&mut self, i: usize, other: &Compared) {
        if self.per_sample.len() <= i {
            self.per_sample.resize(i + 1, Vec::new());
        }
        self.per_sample[i] = other.per_sample[i].clone();
    }

    /// The [`Score`] pooled over the samples `which` (indices).
    pub fn score(&self, which: &[usize]) -> Score {
        let outputs = which
            .first()
            .and_then(|&i| self.per_sample.get(i))
            .map_or(0, Vec::len);
        let mut s = Score {
            sqnr_db: f64::INFINITY,
            sqnr_db_low: f64::INFINITY,
            cosine: 1.0,
            top1: None,
            samples: which.len(),
        };
        for k in 0..outputs {
            let mut st: Option<metrics::Stats> = None;
            let mut noise: Vec<f64> = Vec::with_capacity(which.len());
            let mut signal: Vec<f64> = Vec::with_capacity(which.len());
            for one in which.iter().filter_map(|&i| self.per_sample[i].get(k)) {
                noise.push(one.sum_noise_sq);
                signal.push(one.sum_a_sq);
                match &mut st {
                    Some(acc) => acc.merge(one),
                    None => st = Some(one.clone()),
                }
            }
            let Some(st) = st else { continue };
            s.sqnr_db = s.sqnr_db.min(st.sqnr_db());
            s.sqnr_db_low = s.sqnr_db_low.min(lower_bound_db(&signal, &noise));
            s.cosine = s.cosine.min(st.cosine());
            if let Some(t) = st.top1() {
                s.top1 = Some(s.top1.map_or(t, |v: f64| v.min(t)));
            }
        }
        s
    }
}

/// One-sided 95% lower confidence bound of the pooled SQNR `ΣS / ΣN`, from
/// the per-sample signal and noise energies: the pooled noise-to-signal
/// ratio `R = ΣN / ΣS` is a ratio estimator, whose standard error comes from
/// the residuals `eᵢ = Nᵢ − R·Sᵢ` (delta method), so the bound is
/// `10·log10(ΣS / (ΣN + 1.645·√n·sd(e)))`. A sample that is noisy because
/// its signal is large (its own SQNR typical) widens the bound less than one
/// whose noise is out of proportion; with equal signals it is the spread of
/// the noise itself.
pub fn lower_bound_db(signal: &[f64], noise: &[f64]) -> f64 {
    let n = noise.len() as f64;
    let total: f64 = noise.iter().sum();
    let energy: f64 = signal.iter().sum();
    let spread = if noise.len() > 1 && energy > 0.0 {
        let ratio = total / energy;
        let e: Vec<f64> = noise
            .iter()
            .zip(signal)
            .map(|(nz, sg)| nz - ratio * sg)
            .collect();
        let mean = e.iter().sum::<f64>() / n;
        let var = e.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (n - 1.0);
        1.645 * (n * var).sqrt()
    } else {
        0.0
    };
    let bound = total + spread;
    if bound == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (energy / bound).log10()
    }
}

/// MACs per sample of every Conv/ConvTranspose/Gemm/MatMul whose input and
/// output shapes are known (initializer dims, else `shapes`, e.g. what
/// calibration observed), counted as `whittle inspect` counts them.
pub fn node_macs(g: &Graph, shapes: &BTreeMap<String, Vec<usize>>) -> BTreeMap<NodeId, u64> {
    let dims = |v: &str| -> Option<Vec<i64>> {
        match g.initializer(v) {
            Some(t) => Some(t.dims.clone()),
            None => shapes.get(v).map(|s| s.iter().map(|&d| d as i64).collect()),
        }
    };
    let mut out = BTreeMap::new();
    for (id, n) in g.nodes() {
        if !matches!(n.op_type(), "Conv" | "ConvTranspose" | "Gemm" | "MatMul") {
            continue;
        }
        let input = |i: usize| n.inputs.get(i).and_then(|v| dims(v));
        let y = n.outputs.first().and_then(|v| dims(v));
        if let Some(m) = crate::inspect::node_macs(n, input(0), input(1), y.as_deref()) {
            out.insert(id, m);
        }
    }
    out
}

/// Kept units the search tries to give back (largest cost first).
const GIVE_BACK_TRIES: usize = 12;

/// Rounds of those tries: a round retries the units the previous one could
/// not give back, and the last round is one that gives back none.
const GIVE_BACK_ROUNDS: usize = 3;

/// One choice of the search, in rank order.
#[derive(Debug, Clone, PartialEq)]
pub struct Unit {
    /// Its label (ties between equal costs go by label).
    pub label: String,
    /// What keeping it costs (e.g. its MACs); `None` counts as nothing.
    pub cost: Option<u64>,
}

/// What the search found.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    /// Indices (into the ranked units) kept.
    pub kept: BTreeSet<usize>,
    /// The kept set's score.
    pub score: Score,
    /// Whether it meets the thresholds ([`Score::meets`]).
    pub met: bool,
    /// Variants scored.
    pub evaluations: usize,
}

/// The target search over `units` in rank order (most worth keeping first).
/// `evaluate(kept)` scores the variant keeping those units; `none_kept` is
/// the score with nothing kept when already measured on the same samples.
///
/// The smallest `k` whose top-`k` set meets `t` is found by bisection (the
/// error of a prefix is close to monotone in `k`, not exactly; the chosen
/// set is always measured, never extrapolated). Then each kept unit with at
/// least 1% of the total cost (biggest first, at most 12) is given back if
/// `t` still holds without it; errors do not add up exactly, so the ones
/// that fail are retried after a round that gave any back (at most 3).
pub fn search(
    units: &[Unit],
    t: &Thresholds,
    none_kept: Option<Score>,
    mut evaluate: impl FnMut(&BTreeSet<usize>) -> Result<Score, PassError>,
) -> Result<Found, PassError> {
    let mut evaluations = 0;
    let full = match none_kept {
        Some(s) => s,
        None => {
            evaluations += 1;
            evaluate(&BTreeSet::new())?
        }
    };
    if full.meets(t) {
        return Ok(Found {
            kept: BTreeSet::new(),
            score: full,
            met: true,
            evaluations,
        });
    }
    let top = |k: usize| -> BTreeSet<usize> { (0..k).collect() };
    let (mut lo, mut hi) = (0usize, units.len());
    let mut at_hi: Option<Score> = None;
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        let sc = evaluate(&top(mid))?;
        evaluations += 1;
        if sc.meets(t) {
            hi = mid;
            at_hi = Some(sc);
        } else {
            lo = mid;
        }
    }
    let score = match at_hi {
        Some(sc) => sc,
        None => {
            evaluations += 1;
            evaluate(&top(hi))?
        }
    };
    let mut found = Found {
        kept: top(hi),
        score,
        met: score.meets(t),
        evaluations,
    };
    if found.met {
        give_back(units, t, &mut found, &mut evaluate)?;
    }
    Ok(found)
}

/// The give-back rounds of [`search`].
fn give_back(
    units: &[Unit],
    t: &Thresholds,
    found: &mut Found,
    evaluate: &mut impl FnMut(&BTreeSet<usize>) -> Result<Score, PassError>,
) -> Result<(), PassError> {
    let cost = |i: usize| units[i].cost.unwrap_or(0);
    let total: u64 = units.iter().filter_map(|u| u.cost).sum();
    let mut big: Vec<usize> = found
        .kept
        .iter()
        .copied()
        .filter(|&i| cost(i) * 100 >= total.max(1))
        .collect();
    // Biggest first; ties by label.
    big.sort_by(|&a, &b| {
        units[b]
            .cost
            .cmp(&units[a].cost)
            .then(units[a].label.cmp(&units[b].label))
    });
    big.truncate(GIVE_BACK_TRIES);
    for _ in 0..GIVE_BACK_ROUNDS {
        let tried = big.len();
        let mut failed = Vec::new();
        for i in big {
            let mut fewer = found.kept.clone();
            fewer.remove(&i);
            let sc = evaluate(&fewer)?;
            found.evaluations += 1;
            if sc.meets(t) {
                found.kept = fewer;
                found.score = sc;
            } else {
                failed.push(i);
            }
        }
        big = failed;
        if big.is_empty() || big.len() == tried {
            break;
        }
    }
    Ok(())
}

/// `k` contiguous folds of `n` samples (sizes differ by at most one, the
/// larger first), every sample in exactly one; fewer when `n < k`.
pub fn folds(n: usize, k: usize) -> Vec<std::ops::Range<usize>> {
    let k = k.min(n).max(1);
    let (base, extra) = (n / k, n % k);
    let mut out = Vec::with_capacity(k);
    let mut start = 0;
    for f in 0..k {
        let len = base + usize::from(f < extra);
        out.push(start..start + len);
        start += len;
    }
    out
}

/// Rounds of [`validated_search`]: each asks the samples for more SQNR.
const CV_ROUNDS: usize = 4;

/// What [`validated_search`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct Validated {
    /// The choice on all the samples (`met` also requires the estimate).
    pub found: Found,
    /// The cross-validated estimate of the choice: every sample scored by
    /// the choice a search made without it, pooled (`None` with fewer than
    /// two folds or when the search did not meet the target at all).
    pub estimate: Option<Score>,
    /// The estimate's SQNR less the search's own margin (its pooled SQNR
    /// minus its 95% lower bound on all samples): what must meet the target.
    pub estimate_low_db: f64,
    /// Folds used.
    pub folds: usize,
    /// SQNR asked of the samples above the target in the last round, dB.
    pub raised_db: f64,
    /// Searches on all the samples (one, plus one per round the estimate
    /// missed).
    pub rounds: usize,
    /// Distinct variants scored (each once, on every sample).
    pub variants_run: usize,
}

/// Variants scored once on every sample, by kept set.
struct Seen<F> {
    evaluate: F,
    done: BTreeMap<BTreeSet<usize>, Compared>,
}

impl<F: FnMut(&BTreeSet<usize>) -> Result<Compared, PassError>> Seen<F> {
    fn get(&mut self, kept: &BTreeSet<usize>) -> Result<&Compared, PassError> {
        if !self.done.contains_key(kept) {
            let c = (self.evaluate)(kept)?;
            self.done.insert(kept.clone(), c);
        }
        Ok(&self.done[kept])
    }
}

/// [`search`], with its choice confirmed by cross-validating the search
/// itself: the samples are cut into `folds` contiguous [`folds`]; for each,
/// the same search runs on the other samples only, and its choice is scored
/// on the fold it did not see. Those out-of-fold scores, pooled over all
/// the samples as `whittle validate` pools, estimate what the search's
/// choice gives on inputs it was not chosen on (a search that picks among
/// many variants by these samples fits their noise: its own figure is
/// optimistic). The estimate must meet the target after the margin the
/// lower-bound rule asked on all the samples (pooled SQNR minus the bound)
/// is taken off it, as the search's own figure must. When it misses, the SQNR asked
/// of the samples is raised by the shortfall and everything runs again (at
/// most 4 rounds; the last round's estimate decides `met`). `evaluate(kept)`
/// runs a variant on every sample once; folds reuse its comparisons.
pub fn validated_search(
    units: &[Unit],
    t: &Thresholds,
    folds_wanted: usize,
    samples: usize,
    evaluate: impl FnMut(&BTreeSet<usize>) -> Result<Compared, PassError>,
) -> Result<Validated, PassError> {
    let all: Vec<usize> = (0..samples).collect();
    let mut seen = Seen {
        evaluate,
        done: BTreeMap::new(),
    };
    let parts = folds(samples, folds_wanted);
    let (mut raised_db, mut round) = (0.0, 0);
    loop {
        round += 1;
        let asked = Thresholds {
            min_sqnr_db: t.min_sqnr_db.map(|v| v + raised_db),
            ..*t
        };
        let mut found = search(units, &asked, None, |k| Ok(seen.get(k)?.score(&all)))?;
        let mut out = Validated {
            found: found.clone(),
            estimate: None,
            folds: parts.len(),
            raised_db,
            rounds: round,
            variants_run: 0,
            estimate_low_db: f64::NAN,
        };
        if folds_wanted < 2 || parts.len() < 2 || !found.met {
            out.variants_run = seen.done.len();
            return Ok(out);
        }
        let mut held = Compared::default();
        for part in &parts {
            let train: Vec<usize> = all.iter().copied().filter(|i| !part.contains(i)).collect();
            let f = search(units, &asked, None, |k| Ok(seen.get(k)?.score(&train)))?;
            let c = seen.get(&f.kept)?;
            for i in part.clone() {
                held.take_sample(i, c);
            }
        }
        let estimate = held.score(&all);
        // The lower-bound rule, applied to the estimate: it must clear the
        // target by the margin the search's own bound asked on these samples.
        let margin = found.score.sqnr_db - found.score.sqnr_db_low;
        let estimate_low = estimate.sqnr_db - margin.max(0.0);
        let shortfall = t.min_sqnr_db.map_or(0.0, |m| m - estimate_low);
        let ok = estimate.meets_with(t, estimate_low);
        // Stop when it holds, when only another gate misses (raising the
        // SQNR asked is no cure for that), or after the last round.
        if ok || shortfall <= 0.0 || round == CV_ROUNDS {
            found.met = found.met && ok;
            out.found = found;
            out.estimate = Some(estimate);
            out.estimate_low_db = estimate_low;
            out.variants_run = seen.done.len();
            return Ok(out);
        }
        raised_db += shortfall.max(0.1);
    }
}

/// `kept` and the next `step` ranked units of `0..units` it lacks: the next
/// set to try when an acceptance of `kept` failed. Equal to `kept` when
/// every unit is kept already.
pub fn widen(units: usize, kept: &BTreeSet<usize>, step: usize) -> BTreeSet<usize> {
    let mut out = kept.clone();
    out.extend((0..units).filter(|i| !kept.contains(i)).take(step.max(1)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(db: f64) -> Score {
        Score {
            sqnr_db: db,
            sqnr_db_low: db,
            cosine: 1.0,
            top1: None,
            samples: 1,
        }
    }

    #[test]
    fn the_sqnr_lower_bound_widens_with_the_spread_of_per_sample_noise() {
        // Equal noise on every sample: the bound is the pooled SQNR.
        let even = lower_bound_db(&[25.0; 4], &[1.0; 4]);
        assert!((even - 10.0 * (100.0f64 / 4.0).log10()).abs() < 1e-12);
        // Same total noise, all on one sample: lower.
        assert!(lower_bound_db(&[25.0; 4], &[4.0, 0.0, 0.0, 0.0]) < even - 1.0);
        assert_eq!(lower_bound_db(&[0.5, 0.5], &[0.0, 0.0]), f64::INFINITY);
        // Noise in proportion to each sample's signal (every sample at the
        // same SQNR): no spread to allow for, the bound is the pooled SQNR.
        let proportional = lower_bound_db(&[97.0, 1.0, 1.0, 1.0], &[3.88, 0.04, 0.04, 0.04]);
        assert!((proportional - 10.0 * 25f64.log10()).abs() < 1e-9);
    }

    #[test]
    fn scores_pool_every_sample_as_validate_does() {
        let a = |v: &[f32]| vec![Array::from_f32(vec![1, 2], v)];
        let reference = vec![a(&[1.0, 0.0]), a(&[0.0, 3.0])];
        let got = vec![a(&[1.0, 0.1]), a(&[0.0, 2.0])];
        let s = score(&reference, &got);
        // Σa² = 10, Σ(a−b)² = 1.01: pooled, not the mean of per-sample SQNRs.
        assert!((s.sqnr_db - 10.0 * (10.0f64 / 1.01).log10()).abs() < 1e-5);
        assert!(s.sqnr_db_low < s.sqnr_db);
        assert_eq!((s.samples, s.top1), (2, Some(1.0)));
    }

    #[test]
    fn search_keeps_the_cheapest_prefix_then_gives_back_big_units() {
        // Units 0..4 in rank order; the variant meets 30 dB when units 0 and
        // 1 are kept, or when unit 0 alone is kept with unit 1's cost small.
        let costs: Vec<Unit> = [10, 1000, 5, 5]
            .iter()
            .enumerate()
            .map(|(i, &c)| Unit {
                label: format!("n{i}"),
                cost: Some(c),
            })
            .collect();
        let t = Thresholds {
            min_sqnr_db: Some(30.0),
            ..Thresholds::default()
        };
        let mut seen = Vec::new();
        let found = search(&costs, &t, None, |kept| {
            seen.push(kept.clone());
            Ok(at(if kept.contains(&0) && kept.contains(&2) {
                35.0
            } else if kept.contains(&0) && kept.contains(&1) {
                31.0
            } else {
                20.0
            }))
        })
        .unwrap();
        // Bisection finds {0, 1}; giving back unit 1 (the biggest) fails.
        assert_eq!(found.kept, BTreeSet::from([0, 1]));
        assert!(found.met && found.score.sqnr_db == 31.0);
        assert_eq!(found.evaluations, seen.len());
        // Nothing meets: every unit kept, not met.
        let none = search(&costs, &t, Some(at(10.0)), |_| Ok(at(10.0))).unwrap();
        assert!(!none.met && none.kept.len() == 4);
        assert_eq!(widen(4, &BTreeSet::from([1]), 2), BTreeSet::from([0, 1, 2]));
        assert_eq!(widen(2, &BTreeSet::from([0, 1]), 2), BTreeSet::from([0, 1]));
    }

    #[test]
    fn folds_hold_every_sample_back_exactly_once_in_order() {
        for (n, k) in [(32, 4), (33, 4), (10, 3), (3, 4), (2, 2), (1, 4)] {
            let parts = folds(n, k);
            assert_eq!(parts.len(), k.min(n));
            // Contiguous, in order, covering 0..n once.
            let mut next = 0;
            for p in &parts {
                assert_eq!(p.start, next, "{n} in {k}: {parts:?}");
                assert!(!p.is_empty());
                next = p.end;
            }
            assert_eq!(next, n);
            // Sizes differ by at most one.
            let sizes: Vec<usize> = parts.iter().map(|p| p.len()).collect();
            assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1);
            // Deterministic.
            assert_eq!(parts, folds(n, k));
        }
        assert_eq!(folds(10, 3), vec![0..4, 4..7, 7..10]);
    }

    #[test]
    fn a_search_that_fits_its_samples_is_caught_by_the_folds() {
        // 8 samples, signal 1 each. Units 0..8 are cheap and each lowers the
        // noise of its own sample only (0.09 -> 0.009); unit 8 is costly and
        // lowers every sample's (-> 1e-4). Keeping the 8 cheap ones meets
        // 20 dB on these samples (20.5), but a search that did not see a
        // sample keeps no unit for it: the choice does not generalize.
        let units: Vec<Unit> = (0..9)
            .map(|i| Unit {
                label: format!("n{i}"),
                cost: Some(if i == 8 { 1000 } else { 1 }),
            })
            .collect();
        let t = Thresholds {
            min_sqnr_db: Some(20.0),
            ..Thresholds::default()
        };
        let a = |v: f32| vec![Array::from_f32(vec![1, 1], &[v])];
        let compared = |kept: &BTreeSet<usize>| {
            let reference: Vec<Vec<Array>> = (0..8).map(|_| a(1.0)).collect();
            let got: Vec<Vec<Array>> = (0..8)
                .map(|i| {
                    a(if kept.contains(&8) {
                        1.01
                    } else if kept.contains(&i) {
                        1.0 + 0.009f32.sqrt()
                    } else {
                        1.3
                    })
                })
                .collect();
            compare(&reference, &got)
        };
        let plain = validated_search(&units, &t, 0, 8, |k| Ok(compared(k))).unwrap();
        assert!(plain.found.met && plain.estimate.is_none());
        assert_eq!(plain.found.kept, (0..8).collect());
        // The folds: the search that did not see samples 6 and 7 keeps units
        // 0..6 only; pooled out of fold, 15.3 dB. Asked for 4.7 dB more, the
        // search keeps unit 8, and then the estimate holds.
        let checked = validated_search(&units, &t, 4, 8, |k| Ok(compared(k))).unwrap();
        assert!(checked.found.met, "{checked:?}");
        assert!(checked.found.kept.contains(&8), "{checked:?}");
        assert!(checked.estimate.unwrap().sqnr_db >= 20.0, "{checked:?}");
        assert_eq!((checked.rounds, checked.folds), (2, 4));
        assert!(
            (checked.raised_db - (20.0 - 15.33)).abs() < 0.05,
            "{checked:?}"
        );
        assert_eq!(
            validated_search(&units, &t, 4, 8, |k| Ok(compared(k))).unwrap(),
            checked
        );
    }

    #[test]
    fn thresholds_are_checked_with_their_yaml_path() {
        assert_eq!(
            Thresholds::default().check("target").unwrap_err().field,
            "target"
        );
        let bad = Thresholds {
            min_cosine: Some(2.0),
            ..Thresholds::default()
        };
        assert_eq!(bad.check("target").unwrap_err().field, "target.min_cosine");
    }
}
