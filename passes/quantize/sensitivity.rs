//! Sensitivity analysis and the accuracy target.
//!
//! Every quantized compute (or element-wise) node is measured twice against
//! the float model on a few samples, with the ranges calibration already
//! measured (nothing is calibrated again):
//! - **quantized alone**: only this node is quantized, everything else float;
//! - **float alone**: everything is quantized but this node.
//!
//! Each measurement builds the variant model, loads it in tract and runs the
//! samples; variants run in parallel on all threads. Nodes are ranked by the
//! output noise they cause quantized alone (`10^(-SQNR/10)`) per MAC that
//! keeping them float costs, highest first (ties by float-alone SQNR, then by
//! name), so the ranking and everything after it are deterministic: noise of
//! independent nodes roughly adds up, and this greedy knapsack order keeps
//! the most noise out for the fewest float MACs.
//!
//! A target on SQNR is checked on its one-sided 95% lower confidence bound
//! over the samples (the per-sample noise's spread widens it), so a choice
//! that just clears the target on the calibration data still holds on
//! unseen inputs.
//!
//! With a target, the pass keeps the `k` highest-ranked nodes float for the
//! smallest `k` whose model meets the target, found by bisection over `k`
//! (one model build and run per step). The error of a set of float nodes is
//! close to monotone in `k` but not exactly; the chosen model is always
//! measured, never extrapolated. Then each kept node holding at least 1% of
//! the MACs (biggest first, at most 12) is quantized again if the target
//! still holds without it: the prefix usually overshoots the target, and
//! the margin can pay for a big node. Errors do not add up exactly, so the
//! nodes that fail are retried after a round that gave any back (at most 3
//! rounds).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde_json::json;

use crate::data::{Array, Sample};
use crate::exec::{metrics, parallel_map, run_samples, Runner};
use crate::ir::{Graph, Model, NodeId};
use crate::passes::{PassContext, PassError, PassReport};

use super::plan::{Plan, RangeSource, Role};
use super::qdq::TensorParams;
use super::ranges::RangeMethod;
use super::{Measured, NodeFilter, Quantize, Settings, Target};

/// How close a variant's outputs are to the float model's (worst output).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score {
    /// Least SQNR over the outputs, dB.
    pub sqnr_db: f64,
    /// Least one-sided 95% lower confidence bound of the SQNR over the
    /// outputs, dB: the mean noise per sample is raised by 1.645 standard
    /// errors of the per-sample noise (equal to `sqnr_db` on one sample).
    pub sqnr_db_low: f64,
    /// Least cosine similarity.
    pub cosine: f64,
    /// Least top-1 agreement over class-score outputs.
    pub top1: Option<f64>,
}

impl Score {
    fn meets(&self, t: &Target) -> bool {
        t.min_sqnr_db.is_none_or(|m| self.sqnr_db_low >= m)
            && t.min_cosine.is_none_or(|m| self.cosine >= m)
            && t.min_top1.is_none_or(|m| self.top1.is_none_or(|v| v >= m))
    }
}

/// One measured node.
#[derive(Debug, Clone)]
pub struct Row {
    /// The node.
    pub node: NodeId,
    /// Its label.
    pub label: String,
    /// Its multiply-accumulates per sample, when known.
    pub macs: Option<u64>,
    /// Only this node quantized.
    pub alone: Score,
    /// Everything but this node quantized.
    pub float_alone: Score,
}

/// Kept-float nodes the target search tries to quantize again.
const GIVE_BACK_TRIES: usize = 12;

/// Rounds of those tries: a round retries the nodes the previous one could
/// not give back, and the last round is one that gives back none.
const GIVE_BACK_ROUNDS: usize = 3;

/// Relative noise power of a score: `10^(-SQNR/10)`.
fn noise(s: &Score) -> f64 {
    10f64.powf(-s.sqnr_db / 10.0)
}

impl Row {
    /// Output noise this node adds when it alone is quantized, per MAC it
    /// would move back to float (nodes without MACs count one): the greedy
    /// order of a knapsack that keeps the most noise out for the fewest
    /// float MACs. Quantization noise of independent nodes adds up roughly,
    /// so the prefix of this order is a near-best float set for its MACs.
    fn gain_per_mac(&self) -> f64 {
        noise(&self.alone) / self.macs.unwrap_or(0).max(1) as f64
    }
}

/// What the analysis found and decided.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Nodes in rank order (most worth keeping float first).
    pub rows: Vec<Row>,
    /// Every node quantized.
    pub full: Score,
    /// The chosen model's score.
    pub chosen: Score,
    /// Nodes kept float.
    pub keep_float: BTreeSet<NodeId>,
    /// Whether the target (if any) is met.
    pub met: bool,
    /// Variant models built and run.
    pub evaluations: usize,
}

/// MACs per sample of every Conv/ConvTranspose/Gemm/MatMul whose input and
/// output shapes calibration saw.
pub fn node_macs(g: &Graph, shapes: &BTreeMap<String, Vec<usize>>) -> BTreeMap<NodeId, u64> {
    let dims = |v: &str| -> Option<Vec<i64>> {
        match g.initializer(v) {
            Some(t) => Some(t.dims.clone()),
            None => shapes.get(v).map(|s| s.iter().map(|&d| d as i64).collect()),
        }
    };
    let mut out = BTreeMap::new();
    for (id, n) in g.nodes() {
        if super::plan::role(n.op_type()) != Some(Role::Compute) {
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

fn score(reference: &[Vec<Array>], got: &[Vec<Array>]) -> Score {
    let outputs = reference.first().map_or(0, Vec::len);
    let mut s = Score {
        sqnr_db: f64::INFINITY,
        sqnr_db_low: f64::INFINITY,
        cosine: 1.0,
        top1: None,
    };
    for k in 0..outputs {
        let mut st: Option<metrics::Stats> = None;
        let mut noise: Vec<f64> = Vec::with_capacity(reference.len());
        for (r, g) in reference.iter().zip(got) {
            let one = metrics::compare(&r[k], &g[k]);
            noise.push(one.sum_noise_sq);
            match &mut st {
                Some(acc) => acc.merge(&one),
                None => st = Some(one),
            }
        }
        let Some(st) = st else { continue };
        s.sqnr_db = s.sqnr_db.min(st.sqnr_db());
        s.sqnr_db_low = s.sqnr_db_low.min(lower_bound_db(st.sum_a_sq, &noise));
        s.cosine = s.cosine.min(st.cosine());
        if let Some(t) = st.top1() {
            s.top1 = Some(s.top1.map_or(t, |v: f64| v.min(t)));
        }
    }
    s
}

/// One-sided 95% lower confidence bound of the SQNR, from the signal energy
/// and the per-sample noise energies: `10·log10(S / (ΣN + 1.645·√n·sd(N)))`.
fn lower_bound_db(signal: f64, noise: &[f64]) -> f64 {
    let n = noise.len() as f64;
    let total: f64 = noise.iter().sum();
    let spread = if noise.len() > 1 {
        let mean = total / n;
        let var = noise.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (n - 1.0);
        1.645 * (n * var).sqrt()
    } else {
        0.0
    };
    let bound = total + spread;
    if bound == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (signal / bound).log10()
    }
}

/// What measuring variant models needs, built once per pass run and shared
/// by the range choice, the scaling choice and the sensitivity analysis: the
/// pass, the float model, calibration's measurements, the samples and the
/// float model's outputs on them.
pub struct Probe<'a> {
    q: &'a Quantize,
    model: &'a Model,
    cal: &'a Measured,
    dir: Option<&'a std::path::Path>,
    progress: bool,
    threads: usize,
    samples: &'a [Sample],
    reference: Vec<Vec<Array>>,
    /// The first samples nodes and choices are measured on (`target.samples`).
    eval: usize,
}

impl<'a> Probe<'a> {
    /// Runs the float model on `samples`.
    pub fn new(
        q: &'a Quantize,
        model: &'a Model,
        cal: &'a Measured,
        samples: &'a [Sample],
        ctx: &'a PassContext,
        threads: usize,
    ) -> Result<Probe<'a>, PassError> {
        let dir = ctx.model_dir.as_deref();
        let float = Runner::from_model("float model", model, dir).map_err(probe_error)?;
        let reference = run_samples(&float, samples, threads).map_err(probe_error)?;
        Ok(Probe {
            q,
            model,
            cal,
            dir,
            progress: ctx.progress,
            threads,
            samples,
            reference,
            eval: samples.len().min(q.target_samples()),
        })
    }

    /// The model quantized with `s`, the nodes in `keep` float, scored on the
    /// first `n` samples against the float model. Variants run once, without
    /// tract's optimisation (it would cost more than it saves).
    fn score(
        &self,
        s: &Settings,
        keep: &BTreeSet<NodeId>,
        n: usize,
        threads: usize,
    ) -> Result<Score, PassError> {
        let m = self.q.variant(self.model, s, keep, self.cal)?;
        let r = Runner::from_model("quantized variant", &m, self.dir)
            .map_err(probe_error)?
            .without_optimization();
        let got = run_samples(&r, &self.samples[..n], threads).map_err(probe_error)?;
        Ok(score(&self.reference[..n], &got))
    }

    /// `score` of every job on the first `eval` samples, in parallel (one
    /// thread per job), with a progress line labelled `what`.
    fn score_all<J: Sync>(
        &self,
        jobs: &[J],
        what: &'static str,
        variant: impl Fn(&J) -> (Settings, BTreeSet<NodeId>) + Sync,
    ) -> Result<Vec<Score>, PassError> {
        let progress = crate::passes::calib::Progress::new(self.progress, jobs.len(), what);
        let done = std::sync::atomic::AtomicUsize::new(0);
        let scores: Vec<Result<Score, PassError>> = parallel_map(jobs, self.threads, |_, job| {
            let (s, keep) = variant(job);
            let r = self.score(&s, &keep, self.eval, 1);
            progress.tick(done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1);
            r
        });
        progress.finish();
        scores.into_iter().collect()
    }
}

fn probe_error(e: crate::exec::ExecError) -> PassError {
    PassError::Model(format!("measuring quantized variants: {e}"))
}

/// Measures every node and, with a target, chooses the nodes to keep float
/// (checked on all the probe's samples).
pub fn analyse(
    probe: &Probe,
    s: &Settings,
    plan: &Plan,
    macs: &BTreeMap<NodeId, u64>,
) -> Result<Outcome, PassError> {
    let (q, threads) = (probe.q, probe.threads);
    let check = probe.samples.len();
    let evaluate =
        |keep: &BTreeSet<NodeId>, n: usize, threads: usize| probe.score(s, keep, n, threads);

    let units: Vec<(NodeId, String)> = plan
        .nodes
        .iter()
        .filter(|st| st.outcome.is_ok() && matches!(st.role, Some(Role::Compute | Role::Generic)))
        .map(|st| (st.node, st.label.clone()))
        .collect();
    let all: BTreeSet<NodeId> = units.iter().map(|(id, _)| *id).collect();
    let mut jobs: Vec<BTreeSet<NodeId>> = vec![BTreeSet::new()];
    for (id, _) in &units {
        let mut others = all.clone();
        others.remove(id);
        jobs.push(others);
        jobs.push(BTreeSet::from([*id]));
    }
    let scores = probe.score_all(&jobs, "measuring sensitivity", |keep| {
        (s.clone(), keep.clone())
    })?;
    let full = scores[0];
    let mut rows: Vec<Row> = units
        .iter()
        .enumerate()
        .map(|(i, (id, label))| Row {
            node: *id,
            label: label.clone(),
            macs: macs.get(id).copied(),
            alone: scores[1 + 2 * i],
            float_alone: scores[2 + 2 * i],
        })
        .collect();
    rows.sort_by(|a, b| {
        b.gain_per_mac()
            .total_cmp(&a.gain_per_mac())
            .then(b.float_alone.sqnr_db.total_cmp(&a.float_alone.sqnr_db))
            .then(a.label.cmp(&b.label))
    });

    let mut evaluations = jobs.len();
    let (mut keep_float, mut chosen, mut met) = (BTreeSet::new(), full, true);
    if let Some(t) = &q.target {
        // The decision is checked on all the data, the ranking on the first samples.
        chosen = if check > probe.eval {
            evaluations += 1;
            evaluate(&BTreeSet::new(), check, threads)?
        } else {
            full
        };
        met = chosen.meets(t);
        if !met {
            // Bisection for the smallest k whose top-k-float model meets the
            // target: k = lo fails, k = hi is assumed to meet until measured.
            let top = |k: usize| -> BTreeSet<NodeId> { rows[..k].iter().map(|r| r.node).collect() };
            let (mut lo, mut hi) = (0usize, rows.len());
            let mut at_hi: Option<Score> = None;
            while hi - lo > 1 {
                let mid = (lo + hi) / 2;
                let sc = evaluate(&top(mid), check, threads)?;
                evaluations += 1;
                if sc.meets(t) {
                    hi = mid;
                    at_hi = Some(sc);
                } else {
                    lo = mid;
                }
            }
            let sc = match at_hi {
                Some(sc) => sc,
                None => {
                    evaluations += 1;
                    evaluate(&top(hi), check, threads)?
                }
            };
            keep_float = top(hi);
            chosen = sc;
            met = sc.meets(t);
            if met {
                // Give back: the prefix may hold big nodes whose noise the
                // margin above the target can absorb; try each kept node
                // with at least 1% of the MACs, biggest first, and quantize
                // it again if the target still holds. Errors do not add up
                // exactly, so the nodes that failed are tried again after a
                // round that gave any back.
                let total: u64 = rows.iter().filter_map(|r| r.macs).sum();
                let mut big: Vec<&Row> = rows[..hi]
                    .iter()
                    .filter(|r| r.macs.unwrap_or(0) * 100 >= total.max(1))
                    .collect();
                big.sort_by(|a, b| b.macs.cmp(&a.macs).then(a.label.cmp(&b.label)));
                big.truncate(GIVE_BACK_TRIES);
                for _ in 0..GIVE_BACK_ROUNDS {
                    let tried = big.len();
                    let mut failed = Vec::new();
                    for r in big {
                        let mut fewer = keep_float.clone();
                        fewer.remove(&r.node);
                        let sc = evaluate(&fewer, check, threads)?;
                        evaluations += 1;
                        if sc.meets(t) {
                            keep_float = fewer;
                            chosen = sc;
                        } else {
                            failed.push(r);
                        }
                    }
                    big = failed;
                    if big.is_empty() || big.len() == tried {
                        break;
                    }
                }
            }
        }
    }
    Ok(Outcome {
        rows,
        full,
        chosen,
        keep_float,
        met,
        evaluations,
    })
}

/// `method: auto`: for every tensor with its own calibrated range, the range
/// method that gives the best output SQNR with every other tensor quantized
/// by `mse` (on `eval`; ties go to the earlier of minmax, percentile,
/// entropy, mse). Tensors whose methods all give the same scale and zero
/// point are not measured; data-movement outputs sharing a range follow it.
pub fn choose_methods(
    probe: &Probe,
    s: &Settings,
    plan: &Plan,
    report: &mut PassReport,
) -> Result<BTreeMap<String, (RangeMethod, &'static str)>, PassError> {
    let (q, cal) = (probe.q, probe.cal);
    let methods: [(RangeMethod, &'static str); 4] = [
        (RangeMethod::MinMax, "minmax"),
        (
            RangeMethod::Percentile(q.calibration.percentile),
            "percentile",
        ),
        (RangeMethod::Entropy, "entropy"),
        (RangeMethod::Mse, "mse"),
    ];
    // Jobs: (tensor, method index), one per distinct scale and zero point.
    let mut jobs: Vec<(usize, usize)> = Vec::new();
    for (ti, t) in plan.tensors.iter().enumerate() {
        if !matches!(t.range, RangeSource::Calibrated) || q.overrides.contains_key(&t.name) {
            continue;
        }
        let Some(st) = cal.stats.get(&t.name) else {
            continue;
        };
        let mut distinct: Vec<(usize, TensorParams)> = Vec::new();
        for (mi, &m) in methods.iter().enumerate() {
            let mut one = s.clone();
            one.per_tensor.insert(t.name.clone(), m);
            let Some(p) = q.params_of(&one, &t.name, Some(st)) else {
                continue;
            };
            if !distinct
                .iter()
                .any(|(_, d)| d.scale == p.scale && d.zero_point == p.zero_point)
            {
                distinct.push((mi, p));
            }
        }
        if distinct.len() > 1 {
            jobs.extend(distinct.into_iter().map(|(mi, _)| (ti, mi)));
        }
    }
    let mut chosen = BTreeMap::new();
    if jobs.is_empty() {
        return Ok(chosen);
    }
    // Everything quantized, this tensor with method `mi`: rounding noise adds
    // up over tensors, so a range judged alone would favour no clipping.
    let scores = probe.score_all(&jobs, "choosing ranges", |(ti, mi)| {
        let mut one = s.clone();
        one.per_tensor
            .insert(plan.tensors[*ti].name.clone(), methods[*mi]);
        (one, BTreeSet::new())
    })?;
    let scores: Vec<f64> = scores.iter().map(|sc| sc.sqnr_db).collect();
    let mut best: BTreeMap<usize, (usize, f64)> = BTreeMap::new();
    let mut measured: BTreeMap<usize, Vec<serde_json::Value>> = BTreeMap::new();
    for ((ti, mi), sc) in jobs.iter().zip(&scores) {
        measured
            .entry(*ti)
            .or_default()
            .push(json!({ "method": methods[*mi].1, "sqnr_db": finite(*sc) }));
        let e = best.entry(*ti).or_insert((*mi, *sc));
        if *sc > e.1 {
            *e = (*mi, *sc);
        }
    }
    for (ti, (mi, _)) in best {
        let name = plan.tensors[ti].name.clone();
        report.details.push(json!({
            "kind": "range_choice", "tensor": name, "chosen": methods[mi].1,
            "measured": measured.remove(&ti).unwrap_or_default(),
        }));
        chosen.insert(name, methods[mi]);
    }
    report.count("range_choices_measured", jobs.len() as i64);
    report.count("tensors_range_chosen", chosen.len() as i64);
    Ok(chosen)
}

/// `activations.scaling: auto`: for every compute node that can take a
/// per-run input scale, the output SQNR on `eval` with only that node
/// quantized, once with a calibrated scale and once with a per-run one.
/// Returns the nodes where per-run is better (ties go to static), and those
/// `activations.dynamic_nodes` names, unmeasured.
pub fn choose_scaling(
    probe: &Probe,
    s: &Settings,
    report: &mut PassReport,
) -> Result<BTreeSet<NodeId>, PassError> {
    let (q, model) = (probe.q, probe.model);
    let mut every = s.clone();
    every.dynamic_choice = Some(model.graph.node_ids().into_iter().collect());
    let plan = q.plan_for(&model.graph, &every, &BTreeSet::new())?;
    let quantized: BTreeSet<NodeId> = plan
        .nodes
        .iter()
        .filter(|st| st.outcome.is_ok() && matches!(st.role, Some(Role::Compute | Role::Generic)))
        .map(|st| st.node)
        .collect();
    let filter = NodeFilter::new(q, BTreeSet::new());
    let g = &model.graph;
    let (chosen, measured): (Vec<NodeId>, Vec<NodeId>) = plan
        .dynamic
        .iter()
        .partition(|id| filter.dynamic(g.node(**id).name()));
    let mut chosen: BTreeSet<NodeId> = chosen.into_iter().collect();
    if measured.is_empty() {
        return Ok(chosen);
    }
    let jobs: Vec<(NodeId, bool)> = measured
        .iter()
        .flat_map(|&id| [(id, false), (id, true)])
        .collect();
    let scores = probe.score_all(&jobs, "choosing scaling", |(id, dynamic)| {
        let mut one = s.clone();
        one.dynamic_choice = Some(if *dynamic {
            BTreeSet::from([*id])
        } else {
            BTreeSet::new()
        });
        let mut others = quantized.clone();
        others.remove(id);
        (one, others)
    })?;
    let scores: Vec<f64> = scores.iter().map(|sc| sc.sqnr_db).collect();
    for (id, pair) in measured.iter().zip(scores.chunks(2)) {
        let dynamic = pair[1] > pair[0];
        if dynamic {
            chosen.insert(*id);
        }
        report.details.push(json!({
            "kind": "scaling_choice", "node": g.node(*id).label(),
            "chosen": if dynamic { "dynamic" } else { "static" },
            "sqnr_db_static": finite(pair[0]), "sqnr_db_dynamic": finite(pair[1]),
        }));
    }
    report.count("scaling_choices_measured", jobs.len() as i64);
    report.count("nodes_scaling_dynamic", chosen.len() as i64);
    Ok(chosen)
}

fn db(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.1}")
    } else {
        "exact".into()
    }
}

impl Outcome {
    /// Adds the ranked table (terminal and JSON), the decision and its counters.
    pub fn report(&self, report: &mut PassReport, target: Option<&Target>) {
        report.count("sensitivity_nodes", self.rows.len() as i64);
        report.count("sensitivity_models_run", self.evaluations as i64);
        let mut table = String::new();
        let _ = writeln!(
            table,
            "sensitivity (SQNR dB vs float on the first samples; all quantized: {}):",
            db(self.full.sqnr_db)
        );
        let _ = writeln!(
            table,
            "  {:>4}  {:>14}  {:>12}  {:>12}  node",
            "rank", "float alone", "int8 alone", "MACs"
        );
        for (i, r) in self.rows.iter().enumerate() {
            let kept = self.keep_float.contains(&r.node);
            let _ = writeln!(
                table,
                "  {:>4}  {:>14}  {:>12}  {:>12}  {}{}",
                i + 1,
                db(r.float_alone.sqnr_db),
                db(r.alone.sqnr_db),
                r.macs.map_or("?".into(), |m| m.to_string()),
                r.label,
                if kept { "  [kept float]" } else { "" }
            );
            report.details.push(json!({
                "kind": "sensitivity", "rank": i + 1, "node": r.label, "macs": r.macs,
                "sqnr_db_float_alone": finite(r.float_alone.sqnr_db),
                "sqnr_db_quantized_alone": finite(r.alone.sqnr_db),
                "kept_float": kept,
            }));
        }
        if let Some(t) = target {
            let _ = write!(
                table,
                "target {}: {} with {} of {} nodes kept float (SQNR {} dB, 95% lower bound {} dB, cosine {:.5}{})",
                describe(t),
                if self.met { "met" } else { "NOT met" },
                self.keep_float.len(),
                self.rows.len(),
                db(self.chosen.sqnr_db),
                db(self.chosen.sqnr_db_low),
                self.chosen.cosine,
                self.chosen
                    .top1
                    .map(|v| format!(", top-1 {:.1}%", v * 100.0))
                    .unwrap_or_default()
            );
            report.details.push(json!({
                "kind": "target", "target": describe(t), "met": self.met,
                "nodes_kept_float": self.keep_float.len(),
                "sqnr_db": finite(self.chosen.sqnr_db),
                "sqnr_db_lower_bound": finite(self.chosen.sqnr_db_low),
                "cosine": self.chosen.cosine, "top1": self.chosen.top1,
            }));
            if !self.met {
                report.warnings.push(format!(
                    "target {} not met even with every quantized compute node kept float",
                    describe(t)
                ));
            }
        }
        report.summary.push(table.trim_end().to_string());
    }
}

fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

fn describe(t: &Target) -> String {
    let mut parts = Vec::new();
    if let Some(v) = t.min_sqnr_db {
        parts.push(format!("SQNR >= {v} dB"));
    }
    if let Some(v) = t.min_cosine {
        parts.push(format!("cosine >= {v}"));
    }
    if let Some(v) = t.min_top1 {
        parts.push(format!("top-1 >= {v}"));
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sqnr_lower_bound_widens_with_the_spread_of_per_sample_noise() {
        // Equal noise on every sample: the bound is the pooled SQNR.
        let even = lower_bound_db(100.0, &[1.0; 4]);
        assert!((even - 10.0 * (100.0f64 / 4.0).log10()).abs() < 1e-12);
        // Same total noise, all on one sample: lower.
        assert!(lower_bound_db(100.0, &[4.0, 0.0, 0.0, 0.0]) < even - 1.0);
        assert_eq!(lower_bound_db(1.0, &[0.0, 0.0]), f64::INFINITY);
    }

    #[test]
    fn ranking_puts_noise_per_mac_first() {
        let score = |db: f64| Score {
            sqnr_db: db,
            sqnr_db_low: db,
            cosine: 1.0,
            top1: None,
        };
        let node = crate::ir::Graph::new("g").add_node(crate::ir::Node::with_io(
            "Conv",
            "c",
            &["x"],
            &["y"],
        ));
        let row = |macs: Option<u64>, alone: f64| Row {
            node,
            label: String::new(),
            macs,
            alone: score(alone),
            float_alone: score(30.0),
        };
        // 20 dB alone on 1000 MACs beats 10 dB alone on a million.
        assert!(row(Some(1000), 20.0).gain_per_mac() > row(Some(1_000_000), 10.0).gain_per_mac());
        // Nodes without MACs count one.
        assert_eq!(row(None, 0.0).gain_per_mac(), 1.0);
    }
}
