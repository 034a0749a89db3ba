//! The streamed observation pass: one run of the model over the calibration
//! samples, observing every requested tensor at once.
//!
//! The tensors to observe become extra outputs of a copy of the model, which
//! tract runs sample by sample on every thread. Each thread folds what it
//! sees into its own [`TensorStats`] and drops the activations; the threads'
//! statistics merge exactly at the end, so memory is bounded by one sample's
//! activations per thread and the result does not depend on the thread count.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::data::{Array, Sample};
use crate::exec::Runner;
use crate::ir::{DataType, Model};
use crate::passes::PassError;

use super::stats::{ChannelSums, TensorStats};
use super::{floats_into, probe, Progress};

/// What calibration saw.
#[derive(Debug)]
pub struct Observed {
    /// Per requested tensor: its statistics, or the element type it turned
    /// out to have when that is not float32 (such tensors are not quantized).
    pub stats: Vec<Result<TensorStats, DataType>>,
    /// Per requested tensor: its shape in the first sample.
    pub shapes: Vec<Option<Vec<usize>>>,
}

/// Runs `samples` through `model`, observing `tensors` (and the per-channel
/// sums along the axis `channel_axes` gives a tensor).
#[allow(clippy::too_many_arguments)]
pub fn observe(
    model: &Model,
    tensors: &[String],
    channel_axes: &std::collections::BTreeMap<String, i64>,
    samples: &[Sample],
    dir: Option<&std::path::Path>,
    threads: usize,
    bins: usize,
    progress: bool,
) -> Result<Observed, PassError> {
    let (probe, slots) = probe(model, tensors);
    let runner = Runner::from_model("calibration model", &probe, dir)
        .map_err(|e| PassError::Model(format!("calibration: {e}")))?;
    for s in samples {
        runner
            .prepare(s)
            .map_err(|e| PassError::Model(format!("calibration: {e}")))?;
    }
    drop(probe);

    let fresh = || -> Vec<Result<TensorStats, DataType>> {
        tensors
            .iter()
            .map(|t| {
                let mut st = TensorStats::new(bins);
                st.channels = channel_axes.get(t).map(|&a| ChannelSums::new(a));
                Ok(st)
            })
            .collect()
    };
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let failure: Mutex<Option<(usize, String)>> = Mutex::new(None);
    let bar = Progress::new(progress, samples.len(), "calibrating (samples)");
    let first_shapes: Mutex<Vec<Option<Vec<usize>>>> = Mutex::new(vec![None; tensors.len()]);
    let work = || {
        let mut acc = fresh();
        // One conversion buffer per thread, reused for every tensor.
        let mut values: Vec<f32> = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(sample) = samples.get(i) else { break };
            match runner.run(i, sample) {
                Ok(outputs) => {
                    if i == 0 {
                        let mut shapes = first_shapes.lock().unwrap_or_else(|e| e.into_inner());
                        for (shape, slot) in shapes.iter_mut().zip(&slots) {
                            *shape = Some(slot.pick(sample, &outputs).shape.clone());
                        }
                    }
                    for (stat, slot) in acc.iter_mut().zip(&slots) {
                        add(stat, i, slot.pick(sample, &outputs), &mut values);
                    }
                }
                Err(e) => {
                    let mut f = failure.lock().unwrap_or_else(|e| e.into_inner());
                    if f.as_ref().is_none_or(|(j, _)| i < *j) {
                        *f = Some((i, e.to_string()));
                    }
                    next.store(samples.len(), Ordering::Relaxed);
                    break;
                }
            }
            bar.tick(done.fetch_add(1, Ordering::Relaxed) + 1);
        }
        acc
    };
    let threads = threads.clamp(1, samples.len().max(1));
    let parts: Vec<Vec<Result<TensorStats, DataType>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads).map(|_| s.spawn(work)).collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    bar.finish();
    if let Some((_, message)) = failure.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(PassError::Model(format!("calibration: {message}")));
    }
    let mut stats = fresh();
    for part in parts {
        for (into, from) in stats.iter_mut().zip(part) {
            match (into.as_mut(), from) {
                (Ok(a), Ok(b)) => a.merge(&b),
                (Ok(_), Err(dt)) => *into = Err(dt),
                (Err(_), _) => {}
            }
        }
    }
    Ok(Observed {
        stats,
        shapes: first_shapes.into_inner().unwrap_or_else(|e| e.into_inner()),
    })
}

fn add(stat: &mut Result<TensorStats, DataType>, sample: usize, a: &Array, values: &mut Vec<f32>) {
    let Ok(st) = stat else { return };
    if a.dtype != DataType::Float {
        *stat = Err(a.dtype);
        return;
    }
    floats_into(a, values);
    st.add(values);
    if let Some(ch) = &mut st.channels {
        ch.add(sample, values, &a.shape);
    }
}
