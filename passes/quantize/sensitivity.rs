//! Sensitivity analysis and the accuracy target.
//!
//! Every quantized compute (or element-wise) node is measured twice against
//! the float model on a few samples, with the ranges calibration already
//! measured (nothing is calibrated again):
//! - **quantized alone**: only this node is quantized, everything else float;
//! - **float alone**: everything is quantized but this node.
//!
//! Each measurement builds the variant model, loads it in tract and runs the
//! samples; variants run in parallel on all threads. Nodes are ranked by how
//! much leaving them float helps (float-alone SQNR, highest first; ties by
//! quantized-alone SQNR, lowest first, then by name), so the ranking and
//! everything after it are deterministic.
//!
//! With a target, the pass keeps the `k` highest-ranked nodes float for the
//! smallest `k` whose model meets the target, found by bisection over `k`
//! (one model build and run per step). The error of a set of float nodes is
//! close to monotone in `k` but not exactly; the chosen model is always
//! measured, never extrapolated.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde_json::json;

use crate::data::{Array, Sample};
use crate::exec::{metrics, parallel_map, run_samples, Runner};
use crate::ir::{Graph, Model, NodeId};
use crate::passes::{PassContext, PassError, PassReport};

use super::plan::{Plan, Role};
use super::{Measured, Quantize, Settings, Target};

/// How close a variant's outputs are to the float model's (worst output).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score {
    /// Least SQNR over the outputs, dB.
    pub sqnr_db: f64,
    /// Least cosine similarity.
    pub cosine: f64,
    /// Least top-1 agreement over class-score outputs.
    pub top1: Option<f64>,
}

impl Score {
    fn meets(&self, t: &Target) -> bool {
        t.min_sqnr_db.is_none_or(|m| self.sqnr_db >= m)
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
        cosine: 1.0,
        top1: None,
    };
    for k in 0..outputs {
        let mut st: Option<metrics::Stats> = None;
        for (r, g) in reference.iter().zip(got) {
            let one = metrics::compare(&r[k], &g[k]);
            match &mut st {
                Some(acc) => acc.merge(&one),
                None => st = Some(one),
            }
        }
        let Some(st) = st else { continue };
        s.sqnr_db = s.sqnr_db.min(st.sqnr_db());
        s.cosine = s.cosine.min(st.cosine());
        if let Some(t) = st.top1() {
            s.top1 = Some(s.top1.map_or(t, |v: f64| v.min(t)));
        }
    }
    s
}

/// Measures every node and, with a target, chooses the nodes to keep float.
#[allow(clippy::too_many_arguments)]
pub fn analyse(
    q: &Quantize,
    s: &Settings,
    model: &Model,
    plan: &Plan,
    cal: &Measured,
    eval: &[Sample],
    check: &[Sample],
    ctx: &PassContext,
    threads: usize,
    macs: &BTreeMap<NodeId, u64>,
) -> Result<Outcome, PassError> {
    let dir = ctx.model_dir.as_deref();
    let fail = |e: crate::exec::ExecError| PassError::Model(format!("sensitivity analysis: {e}"));
    let float = Runner::from_model("float model", model, dir).map_err(fail)?;
    let reference = run_samples(&float, check, threads).map_err(fail)?;
    drop(float);
    // Variants run once: tract's optimisation would cost more than it saves.
    let evaluate =
        |keep: &BTreeSet<NodeId>, samples: &[Sample], threads: usize| -> Result<Score, PassError> {
            let m = q.variant(model, s, keep, cal)?;
            let r = Runner::from_model("quantized variant", &m, dir)
                .map_err(fail)?
                .without_optimization();
            let got = run_samples(&r, samples, threads).map_err(fail)?;
            Ok(score(&reference[..samples.len()], &got))
        };

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
    let progress =
        super::calibrate::Progress::new(ctx.progress, jobs.len(), "measuring sensitivity");
    let done = std::sync::atomic::AtomicUsize::new(0);
    let scores: Vec<Result<Score, PassError>> = parallel_map(&jobs, threads, |_, keep| {
        let r = evaluate(keep, eval, 1);
        progress.tick(done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1);
        r
    });
    progress.finish();
    let scores: Vec<Score> = scores.into_iter().collect::<Result<_, _>>()?;
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
        b.float_alone
            .sqnr_db
            .total_cmp(&a.float_alone.sqnr_db)
            .then(a.alone.sqnr_db.total_cmp(&b.alone.sqnr_db))
            .then(a.label.cmp(&b.label))
    });

    let mut evaluations = jobs.len();
    let (mut keep_float, mut chosen, mut met) = (BTreeSet::new(), full, true);
    if let Some(t) = &q.target {
        // The decision is checked on all the data, the ranking on the first samples.
        chosen = if check.len() > eval.len() {
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
                "target {}: {} with {} of {} nodes kept float (SQNR {} dB, cosine {:.5}{})",
                describe(t),
                if self.met { "met" } else { "NOT met" },
                self.keep_float.len(),
                self.rows.len(),
                db(self.chosen.sqnr_db),
                self.chosen.cosine,
                self.chosen
                    .top1
                    .map(|v| format!(", top-1 {:.1}%", v * 100.0))
                    .unwrap_or_default()
            );
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
