//! Calibration for every pass that runs the model: the samples, probe
//! models, one streamed observation pass, the statistics it keeps, and the
//! second moments of layer inputs. quantize, prune, low-rank and
//! distill-head all use this room; nothing here knows about any one pass.
//!
//! How a pass uses it (all of it deterministic across thread counts):
//!
//! ```text
//! let samples = calib::load_samples(model, ctx, limit, &mut report)?;  // --data or synthetic (warned)
//! let threads = ctx.threads.unwrap_or_else(crate::exec::default_threads);
//!
//! // Ranges, histograms, channel means / absmax of any tensors:
//! let seen = calib::observe(model, &names, &channel_axes, &samples,
//!                           ctx.model_dir.as_deref(), threads, bins, ctx.progress)?;
//! // seen.stats[i]: Ok(TensorStats) or Err(dtype) when not float32; seen.shapes[i].
//!
//! // Second moments E[x xᵀ] of Conv/MatMul/Gemm inputs (im2col for Conv):
//! let jobs: Vec<MomentJob> = ids.iter().filter_map(|&id| MomentJob::for_node(g, id)).collect();
//! let moments = calib::second_moments(model, &jobs, &samples, dir, threads,
//!                                     MomentLimits { max_row: 4096, ..Default::default() },
//!                                     ctx.progress)?;
//! // moments[i]: Some(Moments { h: per group D×D Σ x xᵀ, positions, samples, .. })
//! ```
//!
//! - [`load_samples`]: `ctx.data` (an `.npz` or a folder of them, checked
//!   against the model's inputs) or seeded synthetic inputs from the input
//!   types (the report warns).
//! - [`probe`] / [`Source`]: a copy of the model with any tensors as extra
//!   outputs, and where each is found after a run (graph inputs are read
//!   from the sample).
//! - [`observe`] ([`observe.rs`](observe)): the streamed pass; each thread
//!   folds samples into its own [`stats::TensorStats`] and drops the
//!   activations; the statistics merge exactly. Models of more than 1 GiB
//!   of weights are run a part of the graph at a time (same statistics;
//!   the second moments too).
//! - [`stats`]: min/max, mergeable power-of-two histograms of `|x|`,
//!   per-channel sums (means) and absmax.
//! - [`second_moments`] ([`moments`]): `H = Σ x xᵀ` per job and group, with
//!   the positions counted (`E[x xᵀ] = H / positions`), capped per sample
//!   and by row length (memory `groups · D²` f64 per job);
//!   [`first_and_second_moments`] adds the sums `Σ x` over the same
//!   positions (centred moments, fits with an intercept).
//! - [`Progress`]: the one-line progress bar on stderr.

pub mod moments;
mod observe;
mod progress;
pub mod stats;

use crate::data::{Array, Sample};
use crate::ir::{Model, ValueInfo};
use crate::passes::{PassContext, PassError, PassReport};

pub use moments::{
    first_and_second_moments, second_moments, Layout, MomentJob, MomentLimits, Moments,
};
pub use observe::{observe, Observed};
pub use progress::Progress;

/// The calibration samples: `ctx.data` (checked against the model's inputs
/// by `data::load_samples`: names, types, shapes, `--dim` values), at most
/// `limit` of them; without data, `limit` (default 16) seeded synthetic
/// samples from the input types, with a warning in `report`.
pub fn load_samples(
    model: &Model,
    ctx: &PassContext,
    limit: Option<usize>,
    report: &mut PassReport,
) -> Result<Vec<Sample>, PassError> {
    let inputs = crate::data::InputSpec::of_graph(&model.graph).map_err(PassError::Model)?;
    let loaded = match &ctx.data {
        Some(path) => crate::data::load_samples(path, &inputs, &ctx.dims, limit),
        None => {
            let spec = crate::data::SyntheticSpec::default();
            let s = crate::data::synthetic(&inputs, &ctx.dims, limit.unwrap_or(16), &spec);
            if let Ok(s) = &s {
                report.warnings.push(format!(
                    "calibrated on {}: pass --data with real inputs, or the ranges fit noise rather than your data",
                    s.source
                ));
            }
            s
        }
    };
    loaded
        .map(|s| s.samples)
        .map_err(|e| PassError::Model(format!("calibration data: {e}")))
}

/// A copy of `model` with every tensor of `tensors` readable after a run:
/// graph inputs are read from the sample, everything else becomes an output.
pub fn probe(model: &Model, tensors: &[String]) -> (Model, Vec<Source>) {
    let g = &model.graph;
    let mut probe = model.clone();
    let mut slots: Vec<Source> = Vec::with_capacity(tensors.len());
    for t in tensors {
        if let Some(i) = g.inputs.iter().position(|v| v.name() == t) {
            slots.push(Source::Input(i));
        } else if let Some(o) = probe.graph.outputs.iter().position(|o| o.name() == t) {
            slots.push(Source::Output(o));
        } else {
            probe.graph.outputs.push(ValueInfo {
                name: Some(t.clone()),
                ty: None,
                doc_string: None,
                metadata_props: Vec::new(),
            });
            slots.push(Source::Output(probe.graph.outputs.len() - 1));
        }
    }
    (probe, slots)
}

/// Where a probed tensor is found after a run.
#[derive(Debug, Clone, Copy)]
pub enum Source {
    /// The sample's input at this index.
    Input(usize),
    /// The run's output at this index.
    Output(usize),
}

impl Source {
    /// The probed tensor in `sample`'s run with `outputs`.
    pub fn pick<'a>(self, sample: &'a [Array], outputs: &'a [Array]) -> &'a Array {
        match self {
            Source::Input(k) => &sample[k],
            Source::Output(k) => &outputs[k],
        }
    }
}

/// The f32 values of a float array into `values` (reused between calls).
pub fn floats_into(a: &Array, values: &mut Vec<f32>) {
    values.clear();
    values.extend(
        a.data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
    );
}
