//! `target.refit`: the chosen configuration calibrated again without each
//! fold.
//!
//! The search and the acceptance score the model on the very samples its
//! ranges (and GPTQ's roundings, and equalization's scales) were fitted to,
//! so they cannot see a range that covers these samples only because one of
//! them set it. With `refit`, the samples are cut into `target.folds`
//! contiguous folds (`measure::folds`); for each fold, the same
//! configuration (the same float set, scaling choice, range methods,
//! equalization, bias correction, GPTQ) is calibrated again on the other
//! folds, and that model is run in tract on the fold left out. The outputs
//! of all folds are pooled over all samples against the float model's,
//! exactly as `whittle validate` pools (`measure::score`), and must meet the
//! target. The written model itself is calibrated on every sample. Opt-in:
//! on the bench it caught no miss and cost float MACs where one calibration
//! sample sets a range (BENCHMARKS.md, issue 13).
//!
//! Folds run one after the other, each calibrating and running on all
//! threads; the folds and everything in them are deterministic.

use std::collections::{BTreeMap, BTreeSet};

use crate::data::{Array, Sample};
use crate::ir::{Model, NodeId};
use crate::passes::measure::{self, Score};
use crate::passes::{calib, PassContext, PassError, PassReport};

use super::{drop_non_float, raise_opset, Measured, Quantize, Settings};

/// `target.folds` when not given: chosen on the bench (BENCHMARKS.md, issue
/// 13: it fixed PP-OCR cls and changed no other model).
pub const DEFAULT_FOLDS: usize = 4;

/// The cross-validated estimate.
#[derive(Debug, Clone, Copy)]
pub struct CrossVal {
    /// Pooled over every sample, each scored by the fold model that did not
    /// calibrate on it.
    pub score: Score,
    /// Folds used (at most one per sample).
    pub folds: usize,
}

/// What a fold's calibration starts from, as the pass had it.
pub struct Base<'a> {
    /// The model before equalization (after hoisting and BatchNorm folding).
    pub model: &'a Model,
    /// The opset the emitted ops need.
    pub needed: i64,
    /// Calibration's measurements on all samples (only the tensor shapes and
    /// element types are used: they do not depend on the samples).
    pub cal: &'a Measured,
}

impl Quantize {
    /// The cross-validated estimate of the model that keeps `keep_float`
    /// float, quantized with `s`, on `samples` (whose float outputs are
    /// `reference`), over `k` folds. `None` when there are fewer than two
    /// samples.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn cross_validate(
        &self,
        base: &Base,
        s: &Settings,
        keep_float: &BTreeSet<NodeId>,
        samples: &[Sample],
        reference: &[Vec<Array>],
        k: usize,
        ctx: &PassContext,
        threads: usize,
    ) -> Result<Option<CrossVal>, PassError> {
        if samples.len() < 2 || k < 2 {
            return Ok(None);
        }
        let parts = measure::folds(samples.len(), k);
        let mut got: Vec<Vec<Array>> = Vec::with_capacity(samples.len());
        for part in &parts {
            let train: Vec<Sample> = samples[..part.start]
                .iter()
                .chain(&samples[part.end..])
                .cloned()
                .collect();
            let m = self.fit(base, s, keep_float, &train, ctx, threads)?;
            let dir = ctx.model_dir.as_deref();
            got.extend(measure::run(
                "cross-validation model",
                &m,
                &samples[part.clone()],
                dir,
                threads,
                false,
            )?);
        }
        Ok(Some(CrossVal {
            score: measure::score(reference, &got),
            folds: parts.len(),
        }))
    }

    /// `base.model` calibrated on `train` as the pass calibrates (equalize,
    /// raise the opset, observe the planned tensors, GPTQ) and quantized
    /// with `s`, `keep_float` float.
    fn fit(
        &self,
        base: &Base,
        s: &Settings,
        keep_float: &BTreeSet<NodeId>,
        train: &[Sample],
        ctx: &PassContext,
        threads: usize,
    ) -> Result<Model, PassError> {
        let mut m = base.model.clone();
        let mut scratch = PassReport::default();
        if self.equalize {
            self.equalize(&mut m, train, ctx, threads, &mut scratch)?;
        }
        raise_opset(&mut m, base.needed, &base.cal.shapes)?;
        let mut plan = self.plan_for(&m.graph, s, keep_float)?;
        drop_non_float(&mut plan, &base.cal.not_float);
        let names = plan.calibrated();
        let axes = if self.bias_correction {
            super::correction::bias_inputs(&m.graph, &plan)
        } else {
            BTreeMap::new()
        };
        let mut names_and_axes = names.clone();
        names_and_axes.extend(axes.keys().filter(|v| !names.contains(v)).cloned());
        let observed = calib::observe(
            &m,
            &names_and_axes,
            &axes,
            train,
            ctx.model_dir.as_deref(),
            threads,
            s.bins,
            false,
        )?;
        let mut cal = Measured {
            stats: BTreeMap::new(),
            not_float: base.cal.not_float.clone(),
            shapes: base.cal.shapes.clone(),
            rounded: BTreeMap::new(),
        };
        for (name, st) in names_and_axes.iter().zip(observed.stats) {
            if let Ok(st) = st {
                cal.stats.insert(name.clone(), st);
            }
        }
        if s.w_gptq {
            cal.rounded = self.round_weights(&m, s, &plan, train, ctx, threads)?;
        }
        let params = self.params_for(s, &plan, &cal.stats);
        self.apply(&mut m, s, &plan, &params, &cal, &mut scratch)?;
        Ok(m)
    }
}
