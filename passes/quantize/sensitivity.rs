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
//! With a target, `measure::search` keeps the `k` highest-ranked nodes
//! float for the smallest `k` whose model meets the target (bisection, one
//! model build and run per step, always measured), then quantizes again the
//! kept nodes with at least 1% of the MACs that the margin can pay for.
//! Every score is against the pass's input model, by `validate`'s metrics
//! (`measure::score`). The pass then accepts the model exactly as written
//! on every sample the search used (see `quantize.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde_json::json;

use crate::data::{Array, Sample};
use crate::exec::{parallel_map, run_samples, Runner};
use crate::ir::{Model, NodeId};
use crate::passes::measure::{self, Score};
use crate::passes::{PassContext, PassError, PassReport};

use super::plan::{Plan, RangeSource, Role};
use super::qdq::TensorParams;
use super::ranges::RangeMethod;
use super::{Measured, NodeFilter, Quantize, Settings};

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

impl Row {
    /// Output noise this node adds when it alone is quantized, per MAC it
    /// would move back to float (nodes without MACs count one): the greedy
    /// order of a knapsack that keeps the most noise out for the fewest
    /// float MACs. Quantization noise of independent nodes adds up roughly,
    /// so the prefix of this order is a near-best float set for its MACs.
    fn gain_per_mac(&self) -> f64 {
        self.alone.noise() / self.macs.unwrap_or(0).max(1) as f64
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
    /// Whether the target (if any) is met: by the search, then by the
    /// acceptance of the model as written.
    pub met: bool,
    /// Variant models built and run.
    pub evaluations: usize,
    /// The cross-validated search's estimate and rounds (`target.folds`).
    pub validated: Option<measure::Validated>,
    /// The model as written, measured as `whittle validate` measures it.
    pub accepted: Option<Acceptance>,
}

/// The acceptance of the written model against the pass's input model, on
/// the same samples and by the same metrics as `whittle validate`.
#[derive(Debug, Clone)]
pub struct Acceptance {
    /// On the samples the search used (all of them but the held-out ones).
    pub search: Score,
    /// What those samples are: "calibration" or "synthetic".
    pub source: &'static str,
    /// On the samples `target.holdout` kept out of calibration and search.
    pub holdout: Option<Score>,
    /// The cross-validated estimate (`target.folds`) of the same choice.
    pub cross_validated: Option<super::crossval::CrossVal>,
    /// Times more nodes were kept float because the acceptance failed.
    pub retries: usize,
    /// Of those, times because the cross-validated estimate missed.
    pub cv_retries: usize,
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
    reference: &'a [Vec<Array>],
    /// The first samples nodes and choices are measured on (`target.samples`).
    eval: usize,
}

impl<'a> Probe<'a> {
    /// Variants of `model` scored against `reference`, the float model's
    /// outputs on `samples` (the pass's input model, as `whittle validate`
    /// compares with).
    pub fn new(
        q: &'a Quantize,
        model: &'a Model,
        cal: &'a Measured,
        samples: &'a [Sample],
        reference: &'a [Vec<Array>],
        ctx: &'a PassContext,
        threads: usize,
    ) -> Result<Probe<'a>, PassError> {
        let dir = ctx.model_dir.as_deref();
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
        let got = self.outputs(s, keep, n, threads)?;
        Ok(measure::score(&self.reference[..n], &got))
    }

    /// The variant's comparisons with the float model on every sample, one
    /// by one (what the cross-validated search scores folds from).
    fn compared(
        &self,
        s: &Settings,
        keep: &BTreeSet<NodeId>,
        threads: usize,
    ) -> Result<measure::Compared, PassError> {
        let got = self.outputs(s, keep, self.samples.len(), threads)?;
        Ok(measure::compare(self.reference, &got))
    }

    /// The variant's outputs on the first `n` samples.
    fn outputs(
        &self,
        s: &Settings,
        keep: &BTreeSet<NodeId>,
        n: usize,
        threads: usize,
    ) -> Result<Vec<Vec<Array>>, PassError> {
        let m = self.q.variant(self.model, s, keep, self.cal)?;
        let r = Runner::from_model("quantized variant", &m, self.dir)
            .map_err(probe_error)?
            .without_optimization();
        run_samples(&r, &self.samples[..n], threads).map_err(probe_error)
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
    let mut validated = None;
    if let Some(t) = &q.target {
        // The decision is checked on all the data, the ranking on the first samples.
        let units: Vec<measure::Unit> = rows
            .iter()
            .map(|r| measure::Unit {
                label: r.label.clone(),
                cost: r.macs,
            })
            .collect();
        let found = if t.folds >= 2 {
            let v = measure::validated_search(&units, &t.thresholds(), t.folds, check, |kept| {
                let ids: BTreeSet<NodeId> = kept.iter().map(|&i| rows[i].node).collect();
                probe.compared(s, &ids, threads)
            })?;
            evaluations += v.variants_run;
            validated = Some(v.clone());
            v.found
        } else {
            let none_kept = (check <= probe.eval).then_some(full);
            let found = measure::search(&units, &t.thresholds(), none_kept, |kept| {
                let ids: BTreeSet<NodeId> = kept.iter().map(|&i| rows[i].node).collect();
                evaluate(&ids, check, threads)
            })?;
            evaluations += found.evaluations;
            found
        };
        keep_float = found.kept.iter().map(|&i| rows[i].node).collect();
        chosen = found.score;
        met = found.met;
    }
    Ok(Outcome {
        rows,
        full,
        chosen,
        keep_float,
        met,
        evaluations,
        validated,
        accepted: None,
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

/// Above this share of the MACs kept float, the report names the kept-float
/// nodes and the options that may recover them.
pub const MOSTLY_FLOAT: f64 = 0.3;

impl Outcome {
    /// When the target keeps more than [`MOSTLY_FLOAT`] of `total_macs`
    /// float: a note naming each kept-float node with its share of the MACs
    /// and the output SQNR it gave quantized alone (the sensitivity
    /// measurement of this run), and the `options` to try (terminal text, a
    /// `kept_float` JSON detail and a warning). `options` lists options not in
    /// use yet that the bench shows recovering float nodes.
    fn kept_float_note(&self, report: &mut PassReport, total_macs: u64, options: &[&str]) {
        let kept: Vec<&Row> = self
            .rows
            .iter()
            .filter(|r| self.keep_float.contains(&r.node))
            .collect();
        let float_macs: u64 = kept.iter().filter_map(|r| r.macs).sum();
        if total_macs == 0 || (float_macs as f64) <= MOSTLY_FLOAT * total_macs as f64 {
            return;
        }
        let share = |m: Option<u64>| m.unwrap_or(0) as f64 / total_macs as f64;
        let mut text = format!(
            "{:.1}% of the MACs stay float, in {} nodes (MACs share, SQNR quantized alone as measured above):",
            100.0 * float_macs as f64 / total_macs as f64,
            kept.len()
        );
        let mut nodes = Vec::new();
        let mut by_macs = kept.clone();
        by_macs.sort_by(|a, b| b.macs.cmp(&a.macs).then(a.label.cmp(&b.label)));
        for r in &by_macs {
            let _ = write!(
                text,
                "\n  {:>6.1}%  {:>8} dB  {}",
                100.0 * share(r.macs),
                db(r.alone.sqnr_db),
                r.label
            );
            nodes.push(json!({
                "node": r.label, "macs": r.macs, "macs_share": share(r.macs),
                "sqnr_db_quantized_alone": finite(r.alone.sqnr_db),
            }));
        }
        let advice = if options.is_empty() {
            "every option the bench shows recovering float nodes is on already".to_string()
        } else {
            format!(
                "try {} (the bench recovers float nodes with them; their onnxruntime latency cost is in BENCHMARKS.md, quantize sections of issues 6 and 13)",
                options.join(", ")
            )
        };
        let _ = write!(text, "\n  {advice}");
        report.summary.push(text);
        report.warnings.push(format!(
            "the target keeps {:.1}% of the MACs float ({} nodes); {advice}",
            100.0 * float_macs as f64 / total_macs as f64,
            kept.len()
        ));
        report.details.push(json!({
            "kind": "kept_float", "macs_float_share": float_macs as f64 / total_macs as f64,
            "nodes": nodes, "suggested_options": options,
        }));
    }

    /// Adds the ranked table (terminal and JSON), the decision and its
    /// counters; with a target, the kept-float note (`total_macs`, `options`:
    /// see [`Outcome::kept_float_note`]).
    pub fn report(
        &self,
        report: &mut PassReport,
        target: Option<&super::Target>,
        total_macs: u64,
        options: &[&str],
    ) {
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
            let t = t.thresholds();
            let _ = write!(
                table,
                "target {}: {} with {} of {} nodes kept float",
                t.describe(),
                if self.met { "met" } else { "NOT met" },
                self.keep_float.len(),
                self.rows.len(),
            );
            let figures = |sc: &Score| {
                format!(
                    "SQNR {} dB, cosine {:.5}{}",
                    db(sc.sqnr_db),
                    sc.cosine,
                    sc.top1
                        .map(|v| format!(", top-1 {:.1}%", v * 100.0))
                        .unwrap_or_default()
                )
            };
            let mut detail = json!({
                "kind": "target", "target": t.describe(), "met": self.met,
                "nodes_kept_float": self.keep_float.len(),
                "search": {
                    "sqnr_db": finite(self.chosen.sqnr_db),
                    "sqnr_db_lower_bound": finite(self.chosen.sqnr_db_low),
                    "cosine": self.chosen.cosine, "top1": self.chosen.top1,
                    "samples": self.chosen.samples,
                },
            });
            if let Some(a) = &self.accepted {
                let _ = write!(
                    table,
                    "; the model as written, on all {} {} samples (as `whittle validate ORIGINAL OUTPUT --data SAME` measures): {}",
                    a.search.samples,
                    a.source,
                    figures(&a.search)
                );
                if let Some(h) = &a.holdout {
                    let _ = write!(table, "; on {} held-out samples: {}", h.samples, figures(h));
                }
                if let Some(v) = self.validated.as_ref().filter(|v| v.estimate.is_some()) {
                    let est = v.estimate.as_ref().map(figures).unwrap_or_default();
                    let _ = write!(
                        table,
                        "; cross-validated on the same {} samples in {} folds, each sample scored by the float set a search chose without it: {est} (less the search's 95% margin: {} dB)",
                        a.search.samples, v.folds, db(v.estimate_low_db)
                    );
                    if let Some(c) = &a.cross_validated {
                        let _ = write!(
                            table,
                            ", by the model calibrated without it: {}",
                            figures(&c.score)
                        );
                    }
                } else if let Some(c) = &a.cross_validated {
                    let _ = write!(
                        table,
                        "; cross-validated on the same {} samples in {} folds, each sample scored by the model calibrated without it: {}",
                        c.score.samples,
                        c.folds,
                        figures(&c.score)
                    );
                }
                if a.retries > 0 {
                    let _ = write!(
                        table,
                        "; kept more nodes float {} times after the written model missed ({} of them recalibrated on the folds)",
                        a.retries, a.cv_retries
                    );
                }
                let one = |sc: &Score| {
                    json!({
                        "sqnr_db": finite(sc.sqnr_db), "cosine": sc.cosine,
                        "top1": sc.top1, "samples": sc.samples,
                    })
                };
                detail["written_model"] = one(&a.search);
                detail["samples"] = json!(a.source);
                if let Some(h) = &a.holdout {
                    detail["held_out"] = one(h);
                }
                if let Some(c) = &a.cross_validated {
                    detail["cross_validated"] = one(&c.score);
                    detail["cross_validated"]["folds"] = json!(c.folds);
                    detail["cross_validated"]["sqnr_db_lower_bound"] =
                        json!(finite(c.score.sqnr_db_low));
                }
                detail["acceptance_retries"] = json!(a.retries);
                detail["cross_validation_retries"] = json!(a.cv_retries);
            }
            let _ = write!(
                table,
                " (search: SQNR {} dB, 95% lower bound {} dB",
                db(self.chosen.sqnr_db),
                db(self.chosen.sqnr_db_low),
            );
            let mut missed_on_folds = None;
            if let Some(v) = &self.validated {
                if v.raised_db > 0.0 {
                    let _ = write!(
                        table,
                        "; asked {:.1} dB above the target of the samples after the cross-validated estimate missed, {} searches",
                        v.raised_db, v.rounds
                    );
                }
                if let Some(e) = &v.estimate {
                    detail["cross_validated_search"] = json!({
                        "sqnr_db": finite(e.sqnr_db), "sqnr_db_lower_bound": finite(e.sqnr_db_low),
                        "cosine": e.cosine, "top1": e.top1, "samples": e.samples,
                        "folds": v.folds, "raised_db": v.raised_db, "rounds": v.rounds,
                        "sqnr_db_less_margin": finite(v.estimate_low_db),
                    });
                    if !e.meets_with(&t, v.estimate_low_db) {
                        missed_on_folds = Some(*e);
                    }
                }
            }
            table.push(')');
            report.details.push(detail);
            if let Some(e) = missed_on_folds {
                report.warnings.push(format!(
                    "target {} NOT met on the cross-validated estimate ({} dB): a choice made on these samples does not hold on samples it was not made on; give more (and more varied) calibration samples, or lower the target",
                    t.describe(),
                    db(e.sqnr_db)
                ));
            } else if !self.met {
                report.warnings.push(format!(
                    "target {} not met even with every quantized compute node kept float",
                    t.describe()
                ));
            }
        }
        report.summary.push(table.trim_end().to_string());
        if target.is_some() {
            self.kept_float_note(report, total_macs, options);
        }
    }
}

fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranking_puts_noise_per_mac_first() {
        let score = |db: f64| Score {
            sqnr_db: db,
            sqnr_db_low: db,
            cosine: 1.0,
            top1: None,
            samples: 1,
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
