//! The streamed observation pass: one run of the model over the calibration
//! samples, observing every requested tensor at once.
//!
//! The tensors to observe become extra outputs of a copy of the model, which
//! tract runs sample by sample on every thread. Each thread folds what it
//! sees into its own [`TensorStats`] and drops the activations; the threads'
//! statistics merge exactly at the end, so memory is bounded by one sample's
//! activations per thread and the result does not depend on the thread count.
//!
//! A model whose initializers pass [`PARTS_ABOVE`] bytes (1 GiB) is observed
//! a part at a time instead ([`parts`]: consecutive runs of the topological
//! order of at most [`PART_BYTES`] of weights each), so that tract, which
//! reads every weight of a model it loads into its own memory and copies
//! them again while optimising, holds one part's weights at a time rather
//! than two or three copies of all of them. The statistics are the same as
//! the whole model's (tested); the values that cross a cut are kept for
//! every sample until the last part that reads them has run.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::data::{Array, Sample};
use crate::exec::Runner;
use crate::ir::{DataType, Model, TypeInfo, ValueInfo};
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
    if let Some(parts) = big_model_parts(model) {
        return observe_in_parts(
            model,
            &parts,
            tensors,
            channel_axes,
            samples,
            dir,
            threads,
            bins,
            progress,
        );
    }
    let (probe, slots) = probe(model, tensors);
    let runner = Runner::from_model("calibration model", &probe, dir)
        .map_err(|e| PassError::Model(format!("calibration: {e}")))?;
    for s in samples {
        runner
            .prepare(s)
            .map_err(|e| PassError::Model(format!("calibration: {e}")))?;
    }
    drop(probe);

    let fresh = || empty_stats(tensors, channel_axes, bins);
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

/// Statistics of nothing yet for each tensor (with per-channel sums along
/// the axis `channel_axes` gives it).
fn empty_stats(
    tensors: &[String],
    channel_axes: &std::collections::BTreeMap<String, i64>,
    bins: usize,
) -> Vec<Result<TensorStats, DataType>> {
    tensors
        .iter()
        .map(|t| {
            let mut st = TensorStats::new(bins);
            st.channels = channel_axes.get(t).map(|&a| ChannelSums::new(a));
            Ok(st)
        })
        .collect()
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

/// Models whose initializers pass this many bytes are observed a part at a
/// time ([`observe`] does it by itself).
pub const PARTS_ABOVE: u64 = 1 << 30;
/// The initializer bytes of one part, at most (a single node may pass it).
pub const PART_BYTES: u64 = 256 << 20;

/// The parts a model too big to hand to tract whole is run in ([`parts`]
/// with [`PARTS_ABOVE`] and [`PART_BYTES`]); `None` for the others.
pub(crate) fn big_model_parts(model: &Model) -> Option<Vec<Vec<crate::ir::NodeId>>> {
    parts(model, PARTS_ABOVE, PART_BYTES)
}

/// The main graph cut into consecutive runs of its topological order, each
/// reading at most `budget` bytes of initializers, or `None` when the model
/// is run whole: its initializers come to at most `above` bytes, or a node
/// holds subgraphs (which may read any value of the graph around them).
pub fn parts(model: &Model, above: u64, budget: u64) -> Option<Vec<Vec<crate::ir::NodeId>>> {
    let g = &model.graph;
    let total: u64 = g.initializers().iter().map(|t| t.byte_len()).sum();
    if total <= above || g.nodes().any(|(_, n)| n.has_subgraphs()) {
        return None;
    }
    let order = g.topological_order().ok()?;
    let mut parts = Vec::new();
    let (mut part, mut bytes, mut held) = (Vec::new(), 0u64, HashSet::new());
    for id in order {
        let weights = |held: &HashSet<&str>| -> u64 {
            let mut seen = HashSet::new();
            g.node(id)
                .inputs
                .iter()
                .filter(|v| !held.contains(v.as_str()) && seen.insert(v.as_str()))
                .filter_map(|v| g.initializer(v))
                .map(|t| t.byte_len())
                .sum()
        };
        let mut w = weights(&held);
        if !part.is_empty() && w > 0 && bytes + w > budget {
            parts.push(std::mem::take(&mut part));
            (bytes, held) = (0, HashSet::new());
            w = weights(&held);
        }
        part.push(id);
        bytes += w;
        held.extend(g.node(id).inputs.iter().map(String::as_str));
    }
    if !part.is_empty() {
        parts.push(part);
    }
    (parts.len() > 1).then_some(parts)
}

/// [`observe`] for a model too big to hand to tract whole, through
/// [`run_in_parts`]: each tensor's values fold into its statistics in
/// sample order.
#[allow(clippy::too_many_arguments)]
fn observe_in_parts(
    model: &Model,
    parts: &[Vec<crate::ir::NodeId>],
    tensors: &[String],
    channel_axes: &std::collections::BTreeMap<String, i64>,
    samples: &[Sample],
    dir: Option<&std::path::Path>,
    threads: usize,
    bins: usize,
    progress: bool,
) -> Result<Observed, PassError> {
    let mut stats = empty_stats(tensors, channel_axes, bins);
    let mut shapes: Vec<Option<Vec<usize>>> = vec![None; tensors.len()];
    let mut values: Vec<f32> = Vec::new();
    let label = "calibration";
    run_in_parts(
        model,
        parts,
        tensors,
        samples,
        dir,
        threads,
        progress,
        label,
        |t, arrays| {
            shapes[t] = arrays.first().map(|a| a.shape.clone());
            for (i, a) in arrays.iter().enumerate() {
                add(&mut stats[t], i, a, &mut values);
            }
            Ok(())
        },
    )?;
    Ok(Observed { stats, shapes })
}

/// Runs `model` a part of [`parts`] at a time over `samples` and hands each
/// tensor of `tensors` (by index) to `visit` with its value in every sample,
/// in sample order: graph inputs and constants first, then each tensor as
/// soon as the part that makes it has run. Each part becomes a model of its
/// own (its initializers, the values it reads from earlier parts as inputs,
/// what later parts or `tensors` need as outputs), loaded into tract, run on
/// every sample on `threads` threads and dropped before the next, so tract
/// holds one part's weights at a time. The values passed between parts are
/// held for every sample until their last reader has run. `label` starts
/// error messages. Shared by [`observe`] and `second_moments`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_in_parts(
    model: &Model,
    parts: &[Vec<crate::ir::NodeId>],
    tensors: &[String],
    samples: &[Sample],
    dir: Option<&std::path::Path>,
    threads: usize,
    progress: bool,
    label: &str,
    mut visit: impl FnMut(usize, &[&Array]) -> Result<(), PassError>,
) -> Result<(), PassError> {
    let g = &model.graph;
    let fail = |e: String| PassError::Model(format!("{label}: {e}"));
    let part_of: HashMap<crate::ir::NodeId, usize> = parts
        .iter()
        .enumerate()
        .flat_map(|(k, p)| p.iter().map(move |&id| (id, k)))
        .collect();
    // The last part that reads each value.
    let mut last_read: HashMap<&str, usize> = HashMap::new();
    for (k, p) in parts.iter().enumerate() {
        for &id in p {
            for v in g.node(id).inputs.iter().filter(|v| !v.is_empty()) {
                last_read.insert(v, k);
            }
        }
    }
    let wanted: HashMap<&str, usize> = tensors
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let inputs = crate::data::InputSpec::of_graph(g).map_err(fail)?;
    // Graph inputs and constants come before any part runs (a run of the
    // whole model gives a constant asked for as an output every sample).
    for (k, spec) in inputs.iter().enumerate() {
        if let Some(&t) = wanted.get(spec.name.as_str()) {
            let arrays: Vec<&Array> = samples.iter().map(|s| &s[k]).collect();
            visit(t, &arrays)?;
        }
    }
    for (t, name) in tensors.iter().enumerate() {
        if let Some(c) = g.initializer(name) {
            let a = Array::from_tensor(c).map_err(fail)?;
            visit(t, &vec![&a; samples.len()])?;
        }
    }
    let mut live: Vec<HashMap<String, Array>> = samples
        .iter()
        .map(|s| {
            inputs
                .iter()
                .zip(s)
                .map(|(spec, a)| (spec.name.clone(), a.clone()))
                .collect()
        })
        .collect();
    let bar = Progress::new(progress, parts.len(), "running the model (parts)");
    for (k, part) in parts.iter().enumerate() {
        let (sub, reads, makes) =
            part_model(model, part, &part_of, k, &last_read, &wanted, &live).map_err(fail)?;
        if makes.is_empty() {
            bar.tick(k + 1);
            continue; // nothing after it reads what it makes
        }
        let name = format!("{label} model (part {} of {})", k + 1, parts.len());
        let runner = Runner::from_model(&name, &sub, dir).map_err(|e| fail(e.to_string()))?;
        drop(sub);
        let feeds: Vec<Vec<Array>> = live
            .iter()
            .map(|vals| reads.iter().map(|v| vals[v].clone()).collect())
            .collect();
        for f in &feeds {
            runner.prepare(f).map_err(|e| fail(e.to_string()))?;
        }
        let outs = crate::exec::parallel_map(&feeds, threads, |i, f| runner.run(i, f));
        drop((runner, feeds));
        let outs: Vec<Vec<Array>> = outs
            .into_iter()
            .collect::<Result<_, _>>()
            .map_err(|e| fail(e.to_string()))?;
        for (j, name) in makes.iter().enumerate() {
            if let Some(&t) = wanted.get(name.as_str()) {
                let arrays: Vec<&Array> = outs.iter().map(|o| &o[j]).collect();
                visit(t, &arrays)?;
            }
        }
        for (vals, out) in live.iter_mut().zip(outs) {
            vals.retain(|name, _| last_read.get(name.as_str()).is_some_and(|&r| r > k));
            for (name, a) in makes.iter().zip(out) {
                if last_read.get(name.as_str()).is_some_and(|&r| r > k) {
                    vals.insert(name.clone(), a);
                }
            }
        }
        bar.tick(k + 1);
    }
    bar.finish();
    Ok(())
}

/// One part as a model: the part's nodes and initializers; as inputs the
/// values it reads that earlier parts (or the graph's inputs) hold in
/// `live`, typed from the first sample; as outputs what it makes that a
/// later part reads or the observation wants. Also returns the input and
/// output names in order.
fn part_model(
    model: &Model,
    part: &[crate::ir::NodeId],
    part_of: &HashMap<crate::ir::NodeId, usize>,
    k: usize,
    last_read: &HashMap<&str, usize>,
    wanted: &HashMap<&str, usize>,
    live: &[HashMap<String, Array>],
) -> Result<(Model, Vec<String>, Vec<String>), String> {
    let g = &model.graph;
    let mut sub = Model::new(crate::ir::Graph::new(format!("part_{k}")), 0);
    sub.ir_version = model.ir_version;
    sub.opset_import = model.opset_import.clone();
    sub.functions = model.functions.clone();
    let (mut reads, mut makes) = (Vec::new(), Vec::new());
    let mut known: HashSet<&str> = HashSet::new();
    for &id in part {
        let n = g.node(id);
        for v in n.inputs.iter().filter(|v| !v.is_empty()) {
            if !known.insert(v) {
                continue;
            }
            if let Some(t) = g.initializer(v) {
                sub.graph.add_initializer(t.clone());
            } else if g
                .producer(v)
                .is_none_or(|(p, _)| part_of.get(&p) != Some(&k))
            {
                let first = live.first().and_then(|vals| vals.get(v.as_str()));
                let Some(a) = first else {
                    return Err(format!(
                        "value {v:?} read by node {:?} is not available to its part of the model",
                        n.name.as_deref().unwrap_or("")
                    ));
                };
                let dims = a
                    .shape
                    .iter()
                    .map(|&d| crate::ir::Dim::known(d as i64))
                    .collect();
                sub.graph.inputs.push(ValueInfo {
                    name: Some(v.clone()),
                    ty: Some(TypeInfo::tensor(a.dtype, dims)),
                    doc_string: None,
                    metadata_props: Vec::new(),
                });
                reads.push(v.clone());
            }
        }
        for o in n.outputs.iter().filter(|o| !o.is_empty()) {
            known.insert(o);
            if wanted.contains_key(o.as_str()) || last_read.get(o.as_str()).is_some_and(|&r| r > k)
            {
                sub.graph.outputs.push(ValueInfo {
                    name: Some(o.clone()),
                    ty: None,
                    doc_string: None,
                    metadata_props: Vec::new(),
                });
                makes.push(o.clone());
            }
        }
        sub.graph.add_node(n.clone());
    }
    Ok((sub, reads, makes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Dim, Graph, Node, Tensor};

    /// x [2, 4] ─ MatMul(w1) ─ h ─ Relu ─ r ─ MatMul(w2) ─ y ─ Add(x) ─ out:
    /// the residual reads the graph input three nodes later.
    fn residual_model() -> Model {
        let mut g = Graph::new("g");
        let ty = |d: &[i64]| {
            TypeInfo::tensor(DataType::Float, d.iter().map(|&n| Dim::known(n)).collect())
        };
        g.inputs.push(ValueInfo::new("x", ty(&[2, 4])));
        g.outputs.push(ValueInfo::new("out", ty(&[2, 4])));
        let w =
            |n: usize, seed: f32| -> Vec<f32> { (0..n).map(|i| (i as f32 * seed).sin()).collect() };
        g.add_initializer(Tensor::from_f32("w1", vec![4, 6], &w(24, 0.7)));
        g.add_initializer(Tensor::from_f32("w2", vec![6, 4], &w(24, 1.3)));
        let node = |op: &str, name: &str, i: &[&str], o: &str| {
            Node::new(
                op,
                name,
                i.iter().map(|s| s.to_string()).collect(),
                vec![o.into()],
            )
        };
        g.add_node(node("MatMul", "mm1", &["x", "w1"], "h"));
        g.add_node(node("Relu", "relu", &["h"], "r"));
        g.add_node(node("MatMul", "mm2", &["r", "w2"], "y"));
        g.add_node(node("Add", "res", &["x", "y"], "out"));
        Model::new(g, 17)
    }

    #[test]
    fn a_model_observed_in_parts_gives_the_statistics_of_the_whole_model() {
        let m = residual_model();
        let samples: Vec<Sample> = (0..5)
            .map(|s| {
                let v: Vec<f32> = (0..8).map(|i| (s * 8 + i) as f32 * 0.37 - 6.0).collect();
                vec![Array::from_f32(vec![2, 4], &v)]
            })
            .collect();
        let names: Vec<String> = ["x", "h", "r", "out", "w2"].map(String::from).to_vec();
        let axes = std::collections::BTreeMap::from([("h".to_string(), 1)]);
        // Small models are run whole; a 1-byte budget gives every weighted node its own part.
        assert!(big_model_parts(&m).is_none());
        let cut = parts(&m, 0, 1).unwrap();
        assert_eq!(cut.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2]);
        let whole = observe(&m, &names, &axes, &samples, None, 2, 64, false).unwrap();
        for threads in [1, 2] {
            let split =
                observe_in_parts(&m, &cut, &names, &axes, &samples, None, threads, 64, false)
                    .unwrap();
            // Per-channel sums are kept per sample in merge order (which
            // thread saw which sample); their means and absmax are the
            // results, in sample order.
            let plain = |o: &Observed| -> Vec<_> {
                o.stats
                    .iter()
                    .map(|s| {
                        let s = s.as_ref().unwrap();
                        let ch = s
                            .channels
                            .as_ref()
                            .map(|c| (c.means(), c.absmax().to_vec()));
                        let mut s = s.clone();
                        s.channels = None;
                        (s, ch)
                    })
                    .collect()
            };
            assert_eq!(plain(&split), plain(&whole));
            assert!(plain(&whole)[1].1.is_some()); // h's channels
            assert_eq!(split.shapes, whole.shapes);
        }
        assert!(whole
            .stats
            .iter()
            .all(|s| s.as_ref().is_ok_and(|s| s.count > 0)));
    }
}
