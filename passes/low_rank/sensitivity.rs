//! How much of a layer's own output error reaches the model's output: the
//! measured gains that weight the global target allocation.
//!
//! The greedy allocation predicts each layer's error from its (whitened)
//! spectrum: dropping singular values costs `d = Σ_dropped σ² / Σσ²` of
//! that layer's output power. Layers differ in how much of that reaches the
//! model's output (a late 1×1 Conv before a 6625-way head, a projection
//! whose output a LayerNorm rescales), so ranking them by `d` alone cuts
//! the wrong ones. Here each candidate layer is truncated *alone* at a
//! probe rank — the largest saving rank whose predicted error is at least
//! [`PROBE_ERROR`] — and the variant runs in tract on the calibration
//! samples (`measure::run`, scored by `measure::score`: the worst output's
//! pooled relative noise `10^(−SQNR/10)`, as `whittle validate` reports it).
//! The layer's gain is that measured noise over its predicted `d` at the
//! probe; the allocation then adds `gain · Δd` per step, so the model's
//! output error is what it spends, to first order (noise of independent
//! layers adds up).
//!
//! One tract run of the unchanged model (the reference) and one per layer
//! with a measurable probe; layers whose spectrum leaves nothing to drop at
//! any saving rank (`d < 1e-9`) are not run and keep gain 1 (whatever it
//! is, their steps cost nothing). Variants run in parallel, one thread
//! each, and each is the same computation on any thread count: the gains,
//! and so the ranks, are the same bytes on 1 and 2 threads.

use serde_json::json;

use super::{Layer, Spectrum};
use crate::data::{Array, Sample};
use crate::exec::metrics::Num;
use crate::ir::Model;
use crate::passes::measure;
use crate::passes::{PassError, PassReport};

/// The predicted relative layer error at the probe rank: small enough to
/// stay in the range where noise propagates linearly, large enough to be
/// measured far above f32 rounding.
pub const PROBE_ERROR: f64 = 0.01;

/// Calibration samples the probes and the candidates run on (the first
/// ones): a probe only ranks layers, and a big model's tract runs are slow
/// (PP-OCR rec: ~1 s per sample and run in the debug build on a loaded
/// machine).
pub const SAMPLES: usize = 8;

/// Exponents `a` of the candidate allocations, by `gain^a`: 0 is the
/// spectra alone, 1 the first-order model error; between them a model whose
/// noise does not add up linearly (a saturating softmax head).
pub const EXPONENTS: [f64; 3] = [0.0, 0.5, 1.0];

/// Predicted errors below this are not measured (the ratio would be noise).
const MEASURABLE: f64 = 1e-9;

/// Least gain: a layer whose probe left every output unchanged still pays
/// a little for its cuts, so ties fall to its predicted error.
const MIN_GAIN: f64 = 1e-6;

/// One layer's measured sensitivity.
#[derive(Debug, Clone, PartialEq)]
pub struct Gain {
    /// Rank the layer was truncated to alone.
    pub probe_rank: usize,
    /// Its predicted relative output error there (`Σ_dropped σ² / Σσ²`).
    pub predicted: f64,
    /// The model's worst-output SQNR with that layer alone truncated (dB,
    /// tract, calibration samples); `None`: not run.
    pub output_sqnr_db: Option<f64>,
    /// Model output noise per unit of predicted layer error.
    pub gain: f64,
}

/// The probe rank of a layer: the largest saving rank whose predicted error
/// is at least [`PROBE_ERROR`] (rank 1 when none drops that much).
pub fn probe_rank(layer: &Layer, s: &Spectrum) -> Option<usize> {
    let top = layer.max_saving_rank()?;
    Some(
        (1..=top)
            .rev()
            .find(|&r| s.dropped(r) >= PROBE_ERROR)
            .unwrap_or(1),
    )
}

/// What the measurements run on: the global target's layers `which` of the
/// model, and the unchanged model's outputs on `samples`.
pub struct Probe<'a> {
    pub model: &'a Model,
    pub layers: &'a [Layer],
    pub spectra: &'a [Spectrum],
    pub which: &'a [usize],
    pub samples: &'a [Sample],
    pub reference: &'a [Vec<Array>],
    pub dir: Option<&'a std::path::Path>,
    pub threads: usize,
}

impl Probe<'_> {
    /// The gain of every layer of `which` (in that order).
    pub fn gains(&self) -> Result<Vec<Gain>, PassError> {
        measure_gains(self)
    }

    /// The global target at `fraction` of the params (or MACs): the greedy
    /// allocation for every exponent of [`EXPONENTS`] (steps weighted by
    /// `gain^a`) and the uniform per-layer ratio `fraction` (when it fits
    /// the budget), each split and run in tract; the best measured wins.
    pub fn best_allocation(
        &self,
        gains: &[f64],
        fraction: f64,
        by_macs: bool,
        round_to: usize,
        report: &mut PassReport,
    ) -> Result<Vec<Option<usize>>, PassError> {
        let what = if by_macs { "macs" } else { "params" };
        let mut candidates = Vec::new();
        let mut first = None;
        for a in EXPONENTS {
            let g: Vec<f64> = gains.iter().map(|g| g.powf(a)).collect();
            let alloc = super::allocate(
                self.layers,
                self.spectra,
                self.which,
                &g,
                fraction,
                by_macs,
                round_to,
            );
            candidates.push(Candidate {
                name: format!("greedy, steps × gain^{a}"),
                ranks: alloc.ranks.clone(),
                after: alloc.after,
                sqnr_db: f64::NAN,
            });
            first.get_or_insert(alloc);
        }
        let Some(base) = first else {
            return Ok(vec![None; self.which.len()]);
        };
        // The uniform ratio: every layer at the largest rank keeping
        // `fraction` of its weights, if that meets the budget.
        let uniform: Vec<Option<usize>> = self
            .which
            .iter()
            .map(|&i| Some(super::ratio_rank(&self.layers[i], fraction, round_to)))
            .collect();
        let after: u64 = self
            .which
            .iter()
            .zip(&uniform)
            .map(|(&i, r)| {
                let l = &self.layers[i];
                super::cost(l, r.filter(|&r| l.saves(r)), by_macs)
            })
            .sum::<u64>()
            + (base.before
                - self
                    .which
                    .iter()
                    .map(|&i| super::cost(&self.layers[i], None, by_macs))
                    .sum::<u64>());
        if after as f64 <= (fraction * base.before as f64).floor() {
            candidates.push(Candidate {
                name: format!("uniform ratio {fraction}"),
                ranks: uniform,
                after,
                sqnr_db: f64::NAN,
            });
        }
        let (best, runs) = choose(self, &mut candidates)?;
        report.count("candidate_runs", runs as i64);
        let chosen = &candidates[best];
        let reached = super::Allocation {
            ranks: Vec::new(),
            before: base.before,
            after: chosen.after,
            reached: chosen.after as f64 <= (fraction * base.before as f64).floor(),
        };
        super::target_line(report, what, fraction, &reached);
        let mut t = format!(
            "target {what} {:.1}%: candidate allocations (tract, {} samples, worst output):\n",
            fraction * 100.0,
            self.samples.len()
        );
        for (i, c) in candidates.iter().enumerate() {
            t.push_str(&format!(
                "{} {:<34} {what} after {:>12}  {:>8.2} dB\n",
                if i == best { "*" } else { " " },
                c.name,
                c.after,
                c.sqnr_db
            ));
        }
        report.summary.push(t.trim_end().to_string());
        Ok(chosen.ranks.clone())
    }
}

/// The gain of every layer of `which` (in that order), measured against
/// `reference` (the unchanged model's outputs on `samples`).
fn measure_gains(p: &Probe) -> Result<Vec<Gain>, PassError> {
    let Probe {
        model,
        layers,
        spectra,
        which,
        samples,
        reference,
        dir,
        threads,
    } = *p;
    let probes: Vec<(usize, usize, f64)> = which
        .iter()
        .filter_map(|&i| {
            let r = probe_rank(&layers[i], &spectra[i])?;
            Some((i, r, spectra[i].dropped(r)))
        })
        .collect();
    let run = |&(i, r, d): &(usize, usize, f64)| -> Result<Gain, PassError> {
        if d < MEASURABLE {
            return Ok(Gain {
                probe_rank: r,
                predicted: d,
                output_sqnr_db: None,
                gain: 1.0,
            });
        }
        let mut alone = vec![None; layers.len()];
        alone[i] = Some(r);
        let m = split_copy(model, layers, spectra, &alone)?;
        let got = measure::run("low-rank probe", &m, samples, dir, 1, false)?;
        let score = measure::score(reference, &got);
        let noise = if score.sqnr_db.is_finite() {
            score.noise()
        } else {
            0.0
        };
        Ok(Gain {
            probe_rank: r,
            predicted: d,
            output_sqnr_db: Some(score.sqnr_db),
            gain: (noise / d).max(MIN_GAIN),
        })
    };
    let found: Vec<Result<Gain, PassError>> =
        crate::exec::parallel_map(&probes, threads, |_, p| run(p));
    let mut out = Vec::with_capacity(which.len());
    let mut found = found.into_iter();
    for &i in which {
        // Layers without a saving rank are not candidates (see `Layer`); a
        // neutral gain keeps the indices aligned all the same.
        if probe_rank(&layers[i], &spectra[i]).is_some() {
            out.push(found.next().expect("one result per probe")?);
        } else {
            out.push(Gain {
                probe_rank: 0,
                predicted: 0.0,
                output_sqnr_db: None,
                gain: 1.0,
            });
        }
    }
    Ok(out)
}

/// A copy of `model` with every layer split at its rank in `ranks` (one
/// entry per layer; `None`, or a rank that saves nothing: kept).
pub fn split_copy(
    model: &Model,
    layers: &[Layer],
    spectra: &[Spectrum],
    ranks: &[Option<usize>],
) -> Result<Model, PassError> {
    let mut m = model.clone();
    for ((l, s), r) in layers.iter().zip(spectra).zip(ranks) {
        if let Some(r) = r.filter(|&r| l.saves(r)) {
            let (a, b) = super::factors(l, s, r);
            super::rewrite(&mut m.graph, l, r, &a, &b)?;
        }
    }
    Ok(m)
}

/// One candidate allocation of the global target and its measured score.
pub struct Candidate {
    /// What it is (`gain^0.5`, `uniform`).
    pub name: String,
    /// Ranks of the target's layers (the order of `which`).
    pub ranks: Vec<Option<usize>>,
    /// The candidates' total cost after (params or MACs).
    pub after: u64,
    /// Worst-output SQNR of the model split so, dB (tract, `samples`).
    pub sqnr_db: f64,
}

/// Scores every candidate (ranks of the layers `which`) in tract on
/// the probe's samples, in parallel; equal rank sets run once. Gives back
/// the index of the best (highest SQNR; ties: the first) and the runs made.
fn choose(p: &Probe, candidates: &mut [Candidate]) -> Result<(usize, usize), PassError> {
    let (layers, which) = (p.layers, p.which);
    let mut distinct: Vec<Vec<Option<usize>>> = Vec::new();
    for c in candidates.iter() {
        if !distinct.contains(&c.ranks) {
            distinct.push(c.ranks.clone());
        }
    }
    let scores: Vec<Result<f64, PassError>> =
        crate::exec::parallel_map(&distinct, p.threads, |_, ranks| {
            let mut all = vec![None; layers.len()];
            for (&i, r) in which.iter().zip(ranks) {
                all[i] = *r;
            }
            let m = split_copy(p.model, layers, p.spectra, &all)?;
            let got = measure::run("low-rank candidate", &m, p.samples, p.dir, 1, false)?;
            Ok(measure::score(p.reference, &got).sqnr_db)
        });
    let scores: Vec<f64> = scores.into_iter().collect::<Result<_, _>>()?;
    for c in candidates.iter_mut() {
        let k = distinct.iter().position(|d| *d == c.ranks).unwrap_or(0);
        c.sqnr_db = scores[k];
    }
    let mut best = 0;
    for (i, c) in candidates.iter().enumerate() {
        if c.sqnr_db > candidates[best].sqnr_db {
            best = i;
        }
    }
    Ok((best, distinct.len()))
}

/// `x` rounded to `digits` significant digits.
fn significant(x: f64, digits: i32) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    let scale = 10f64.powi(digits - 1 - x.abs().log10().floor() as i32);
    (x * scale).round() / scale
}

/// Tract runs the measurement made (the reference and one per measured layer).
pub fn runs(gains: &[Gain]) -> usize {
    1 + gains.iter().filter(|g| g.output_sqnr_db.is_some()).count()
}

/// Adds each layer's sensitivity to its report line, and a summary table.
pub fn annotate(report: &mut PassReport, layers: &[Layer], which: &[usize], gains: &[Gain]) {
    let mut table = format!(
        "sensitivity (layer alone truncated at the probe rank, tract, {} runs)\n{:<40} {:>6} {:>10} {:>10} {:>10}\n",
        runs(gains),
        "layer",
        "probe",
        "pred err",
        "output dB",
        "gain"
    );
    for (&i, g) in which.iter().zip(gains) {
        let label = &layers[i].label;
        // Measured in tract: rounded to what the f32 kernels of any CPU
        // agree on (their last bits differ with the SIMD width), so the
        // report reads the same on every machine.
        let value = json!({
            "probe_rank": g.probe_rank,
            "predicted_error": Num(g.predicted),
            "output_sqnr_db": g.output_sqnr_db.map(|db| Num((db * 1e3).round() / 1e3)),
            "gain": Num(significant(g.gain, 4)),
        });
        if let Some(d) = report
            .details
            .iter_mut()
            .find(|d| d["node"].as_str() == Some(label.as_str()))
        {
            d["sensitivity"] = value;
        }
        table.push_str(&format!(
            "{:<40} {:>6} {:>10.2e} {:>10} {:>10.3e}\n",
            super::truncate_label(label),
            g.probe_rank,
            g.predicted,
            g.output_sqnr_db.map_or("-".into(), |db| format!("{db:.2}")),
            g.gain
        ));
    }
    report.summary.push(table.trim_end().to_string());
}
