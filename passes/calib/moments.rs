//! Second moments of layer inputs: the Gram matrix `H = Σ x xᵀ` of the
//! inputs `x` a Conv/MatMul/Gemm row of weights sees, gathered in one pass
//! over the calibration samples. GPTQ rounds against it; SparseGPT prunes
//! through its inverse; Wanda's input norms are `‖X_j‖ = √H[j,j]`;
//! least-squares reconstruction and whitening solve with it.
//!
//! What `x` is, per [`Layout`]: for a MatMul/Gemm the rows of `A` (last dim
//! `K`, every leading axis a position); for a Conv the im2col patches, one
//! per output position and group, `C/g · kh · kw` long, zero where the patch
//! hangs over the padding. A grouped Conv gets one matrix per group.
//!
//! Bounded and deterministic: at most `positions_per_sample` evenly spaced
//! positions per sample (the first included) enter `H`; sums are f64, added
//! in sample order (fixed chunks of samples run together, then each job adds
//! its chunk in order), so the thread count does not change a bit. Memory is
//! `groups · D²` f64 per job (`D` = row length): `max_row` refuses jobs
//! above it (D = 1536 is 18 MB; D = 4096 is 128 MB).

use std::sync::Mutex;

use crate::data::{Array, Sample};
use crate::exec::{parallel_map, run_samples, Runner};
use crate::ir::{DataType, Graph, Model, Node, NodeId};
use crate::passes::PassError;

use super::{floats_into, probe, Progress, Source};

/// Default cap of output positions (Conv) or rows (MatMul/Gemm) of one
/// sample that enter `H`.
pub const POSITIONS_PER_SAMPLE: usize = 1024;

/// Default largest row length `D` gathered (memory `D²` f64 per group).
pub const MAX_ROW: usize = 1536;

/// Samples run together before their contributions are added, in order.
const CHUNK: usize = 4;

/// Where the `D` inputs of each output row of a weight come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Layout {
    /// Conv weight `[O, C/g, k…]` (one or two spatial dims), rows contiguous.
    Conv {
        /// Groups.
        groups: usize,
        /// Input channels per group.
        per_group: usize,
        /// Kernel `[kh, kw]` (`kh = 1` for 1-D).
        kernel: [usize; 2],
        /// Strides.
        strides: [usize; 2],
        /// Dilations.
        dilations: [usize; 2],
        /// Leading pads `[top, left]`.
        pads: [usize; 2],
        /// Trailing pads `[bottom, right]`.
        ends: [usize; 2],
        /// Spatial rank (1 or 2).
        rank: usize,
    },
    /// MatMul/Gemm weight `[K, N]` (`transposed`: `[N, K]`); inputs are the
    /// rows of `A` (last dim `K`).
    Dense {
        /// `K`.
        k: usize,
        /// `N`.
        n: usize,
        /// Weight stored `[N, K]` (Gemm `transB`).
        transposed: bool,
    },
}

impl Layout {
    /// The layout of `node`'s weight of shape `dims`: Conv with one or two
    /// spatial dims and explicit pads (no `auto_pad`), MatMul with a 2-D
    /// weight, Gemm without `transA`; `None` otherwise.
    pub fn of(node: &Node, dims: &[i64]) -> Option<Layout> {
        let d: Vec<usize> = dims
            .iter()
            .map(|&v| usize::try_from(v).ok())
            .collect::<Option<_>>()?;
        match node.op_type() {
            "Conv" if d.len() == 3 || d.len() == 4 => {
                let auto = node.attr("auto_pad").map(|a| format!("{:?}", a.value));
                if auto.is_some_and(|a| !a.contains("NOTSET")) {
                    return None;
                }
                let rank = d.len() - 2;
                let pick = |name: &str, default: usize| -> Option<[usize; 2]> {
                    let v: Vec<usize> = match node.attr_ints(name) {
                        Some(v) => v
                            .iter()
                            .map(|&x| usize::try_from(x).ok())
                            .collect::<Option<_>>()?,
                        None => vec![default; rank],
                    };
                    match (rank, v.as_slice()) {
                        (1, [a]) => Some([default, *a]),
                        (2, [a, b]) => Some([*a, *b]),
                        _ => None,
                    }
                };
                let (pads, ends) = match node.attr_ints("pads") {
                    Some(p) if p.len() == 2 * rank => {
                        let p: Vec<usize> = p
                            .iter()
                            .map(|&x| usize::try_from(x).ok())
                            .collect::<Option<_>>()?;
                        if rank == 1 {
                            ([0, p[0]], [0, p[1]])
                        } else {
                            ([p[0], p[1]], [p[2], p[3]])
                        }
                    }
                    None => ([0, 0], [0, 0]),
                    _ => return None,
                };
                let groups = usize::try_from(node.attr_int("group").unwrap_or(1)).ok()?;
                if groups == 0 || d[0] % groups != 0 {
                    return None;
                }
                let kernel = if rank == 1 { [1, d[2]] } else { [d[2], d[3]] };
                Some(Layout::Conv {
                    groups,
                    per_group: d[1],
                    kernel,
                    strides: pick("strides", 1)?,
                    dilations: pick("dilations", 1)?,
                    pads,
                    ends,
                    rank,
                })
            }
            "MatMul" if d.len() == 2 => Some(Layout::Dense {
                k: d[0],
                n: d[1],
                transposed: false,
            }),
            "Gemm" if d.len() == 2 && node.attr_int("transA").unwrap_or(0) == 0 => {
                let transposed = node.attr_int("transB").unwrap_or(0) == 1;
                let (k, n) = if transposed {
                    (d[1], d[0])
                } else {
                    (d[0], d[1])
                };
                Some(Layout::Dense { k, n, transposed })
            }
            _ => None,
        }
    }

    /// Inputs per row.
    pub fn row_len(&self) -> usize {
        match self {
            Layout::Conv {
                per_group, kernel, ..
            } => per_group * kernel[0] * kernel[1],
            Layout::Dense { k, .. } => *k,
        }
    }

    /// Groups (one Gram matrix each): a Conv's `group`, 1 for MatMul/Gemm.
    pub fn groups(&self) -> usize {
        match self {
            Layout::Conv { groups, .. } => *groups,
            Layout::Dense { .. } => 1,
        }
    }

    /// Index of element `j` of output row `r` in the weight's data (rows of
    /// a Conv weight are contiguous; a MatMul weight's row `r` is column `r`).
    pub fn index(&self, r: usize, j: usize) -> usize {
        match self {
            Layout::Conv { .. }
            | Layout::Dense {
                transposed: true, ..
            } => r * self.row_len() + j,
            Layout::Dense { n, .. } => j * n + r,
        }
    }

    /// Adds `x`'s contribution (one sample's tensor of shape `shape`, at
    /// most `cap` evenly spaced positions) to the per-group Gram matrices
    /// `h`; returns the positions added (0 when the shape does not fit).
    pub fn accumulate(&self, x: &[f32], shape: &[usize], h: &mut [Vec<f64>], cap: usize) -> u64 {
        self.accumulate_with_sums(x, shape, h, None, cap)
    }

    /// [`Layout::accumulate`], also adding each row's values to the
    /// per-group sums `Σ x` when `sums` is given (first moments over the
    /// same positions: `E[x] = Σ x / positions`).
    pub fn accumulate_with_sums(
        &self,
        x: &[f32],
        shape: &[usize],
        h: &mut [Vec<f64>],
        mut sums: Option<&mut [Vec<f64>]>,
        cap: usize,
    ) -> u64 {
        let d = self.row_len();
        match self {
            Layout::Dense { k, .. } => {
                if shape.last() != Some(k) || *k == 0 {
                    return 0;
                }
                let rows = x.len() / k;
                let picked = spread(rows, cap);
                let mut cols = vec![0f64; d * picked.len()];
                for (p, &r) in picked.iter().enumerate() {
                    for j in 0..d {
                        cols[j * picked.len() + p] = f64::from(x[r * k + j]);
                    }
                }
                gram_add(&cols, d, picked.len(), &mut h[0]);
                if let Some(s) = sums.as_deref_mut() {
                    row_sums(&cols, d, picked.len(), &mut s[0]);
                }
                picked.len() as u64
            }
            Layout::Conv {
                groups,
                per_group,
                kernel,
                strides,
                dilations,
                pads,
                ends,
                rank,
            } => {
                let (batch, channels, height, width) = match (rank, shape) {
                    (1, [n, c, w]) => (*n, *c, 1, *w),
                    (2, [n, c, hh, w]) => (*n, *c, *hh, *w),
                    _ => return 0,
                };
                if channels != groups * per_group {
                    return 0;
                }
                let span = |i: usize| dilations[i] * (kernel[i] - 1) + 1;
                let extent = |size: usize, i: usize| {
                    let padded = size + pads[i] + ends[i];
                    if padded < span(i) {
                        0
                    } else {
                        (padded - span(i)) / strides[i] + 1
                    }
                };
                let (oh, ow) = (extent(height, 0), extent(width, 1));
                let picked = spread(batch * oh * ow, cap);
                let np = picked.len();
                let mut cols = vec![0f64; d * np];
                for (g, hg) in h.iter_mut().enumerate().take(*groups) {
                    cols.iter_mut().for_each(|v| *v = 0.0);
                    for (p, &pos) in picked.iter().enumerate() {
                        let (b, rest) = (pos / (oh * ow), pos % (oh * ow));
                        let (oy, ox) = (rest / ow, rest % ow);
                        for c in 0..*per_group {
                            let plane = (b * channels + g * per_group + c) * height * width;
                            for ky in 0..kernel[0] {
                                let y = (oy * strides[0] + ky * dilations[0]).checked_sub(pads[0]);
                                let Some(y) = y.filter(|&y| y < height) else {
                                    continue;
                                };
                                for kx in 0..kernel[1] {
                                    let xx =
                                        (ox * strides[1] + kx * dilations[1]).checked_sub(pads[1]);
                                    let Some(xx) = xx.filter(|&v| v < width) else {
                                        continue;
                                    };
                                    let j = (c * kernel[0] + ky) * kernel[1] + kx;
                                    cols[j * np + p] = f64::from(x[plane + y * width + xx]);
                                }
                            }
                        }
                    }
                    gram_add(&cols, d, np, hg);
                    if let Some(s) = sums.as_deref_mut() {
                        row_sums(&cols, d, np, &mut s[g]);
                    }
                }
                np as u64
            }
        }
    }
}

/// At most `cap` indices of `0..n`, evenly spaced, the first included.
fn spread(n: usize, cap: usize) -> Vec<usize> {
    if n <= cap {
        (0..n).collect()
    } else {
        (0..cap).map(|i| i * n / cap).collect()
    }
}

/// `h += cols · colsᵀ` for `cols` stored feature-major (`d` rows of `np`).
fn gram_add(cols: &[f64], d: usize, np: usize, h: &mut [f64]) {
    for a in 0..d {
        let ra = &cols[a * np..(a + 1) * np];
        for b in a..d {
            let rb = &cols[b * np..(b + 1) * np];
            let v = dot(ra, rb);
            h[a * d + b] += v;
            if a != b {
                h[b * d + a] += v;
            }
        }
    }
}

/// `s[j] += Σ_p cols[j, p]` for `cols` stored feature-major.
fn row_sums(cols: &[f64], d: usize, np: usize, s: &mut [f64]) {
    for (j, v) in s.iter_mut().enumerate().take(d) {
        *v += cols[j * np..(j + 1) * np].iter().sum::<f64>();
    }
}

/// Dot product with eight independent accumulators (vectorizes; the order
/// of additions is fixed, so results do not vary between runs).
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0f64; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f64 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// One tensor whose second moments are gathered, read as `layout` says.
#[derive(Debug, Clone, PartialEq)]
pub struct MomentJob {
    /// The tensor (a graph input or any value the model computes).
    pub input: String,
    /// How its values become rows of length `D`.
    pub layout: Layout,
}

impl MomentJob {
    /// The job for node `id`'s data input (input 0), laid out for its weight
    /// (input 1, an initializer); `None` when the node or weight has no
    /// [`Layout`].
    pub fn for_node(g: &Graph, id: NodeId) -> Option<MomentJob> {
        let node = g.node(id);
        let input = node.inputs.first().filter(|v| !v.is_empty())?;
        let weight = g.initializer(node.inputs.get(1)?)?;
        Some(MomentJob {
            input: input.clone(),
            layout: Layout::of(node, &weight.dims)?,
        })
    }
}

/// How much of each sample enters `H`, and the largest `D` gathered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MomentLimits {
    /// Positions (Conv) or rows (MatMul/Gemm) per sample, evenly spaced.
    pub positions_per_sample: usize,
    /// Jobs whose row is longer get no moments (memory `D²` f64 per group).
    pub max_row: usize,
}

impl Default for MomentLimits {
    fn default() -> Self {
        MomentLimits {
            positions_per_sample: POSITIONS_PER_SAMPLE,
            max_row: MAX_ROW,
        }
    }
}

/// The second moments of one job's input.
#[derive(Debug, Clone, PartialEq)]
pub struct Moments {
    /// The job's layout.
    pub layout: Layout,
    /// `groups` row-major `D × D` matrices `H = Σ x xᵀ`.
    pub h: Vec<Vec<f64>>,
    /// Positions added to each group's `H`: `E[x xᵀ] = H / positions`.
    pub positions: u64,
    /// Samples that added any.
    pub samples: usize,
}

impl Moments {
    /// `E[x xᵀ]` of group `g` (`H / positions`; zeros when nothing was seen).
    pub fn mean(&self, g: usize) -> Vec<f64> {
        let n = self.positions.max(1) as f64;
        self.h[g].iter().map(|v| v / n).collect()
    }

    /// `√H[j,j]` of group `g`: the norm of each input feature over every
    /// position seen (Wanda's `‖X_j‖`).
    pub fn column_norms(&self, g: usize) -> Vec<f64> {
        let d = self.layout.row_len();
        (0..d)
            .map(|j| self.h[g][j * d + j].max(0.0).sqrt())
            .collect()
    }
}

/// Gathers the second moments of every job over `samples` in one run of the
/// model (each distinct input read once, as an extra output of a copy of
/// the model; a model of more than 1 GiB of weights a part at a time, as
/// [`super::observe()`] runs it, with the same result). Returns one entry per job, in order: `None` for a job whose
/// row is empty or longer than `limits.max_row`, or whose input was never
/// float32 with a fitting shape. Jobs with the same input and layout are
/// gathered once.
pub fn second_moments(
    model: &Model,
    jobs: &[MomentJob],
    samples: &[Sample],
    dir: Option<&std::path::Path>,
    threads: usize,
    limits: MomentLimits,
    progress: bool,
) -> Result<Vec<Option<Moments>>, PassError> {
    Ok(gather(
        model,
        jobs,
        samples,
        dir,
        threads,
        limits,
        progress,
        false,
        super::observe::big_model_parts(model),
    )?
    .into_iter()
    .map(|m| m.map(|(m, _)| m))
    .collect())
}

/// A job's moments and its per-group sums `Σ x`.
pub type WithSums = (Moments, Vec<Vec<f64>>);

/// [`second_moments`] with the first moments too: per job, the moments and
/// the per-group sums `Σ x` over the same positions (`E[x] = Σ x /
/// positions`), for fits with an intercept (centred second moments).
pub fn first_and_second_moments(
    model: &Model,
    jobs: &[MomentJob],
    samples: &[Sample],
    dir: Option<&std::path::Path>,
    threads: usize,
    limits: MomentLimits,
    progress: bool,
) -> Result<Vec<Option<WithSums>>, PassError> {
    gather(
        model,
        jobs,
        samples,
        dir,
        threads,
        limits,
        progress,
        true,
        super::observe::big_model_parts(model),
    )
}

/// Moments and per-group sums (empty unless `sums`) of every job.
#[allow(clippy::too_many_arguments)]
fn gather(
    model: &Model,
    jobs: &[MomentJob],
    samples: &[Sample],
    dir: Option<&std::path::Path>,
    threads: usize,
    limits: MomentLimits,
    progress: bool,
    sums: bool,
    parts: Option<Vec<Vec<NodeId>>>,
) -> Result<Vec<Option<WithSums>>, PassError> {
    // Distinct jobs within the limit; `of[i]` is job i's distinct index.
    let mut distinct: Vec<&MomentJob> = Vec::new();
    let of: Vec<Option<usize>> = jobs
        .iter()
        .map(|j| {
            let d = j.layout.row_len();
            if d == 0 || d > limits.max_row {
                return None;
            }
            Some(match distinct.iter().position(|k| *k == j) {
                Some(i) => i,
                None => {
                    distinct.push(j);
                    distinct.len() - 1
                }
            })
        })
        .collect();
    if distinct.is_empty() || samples.is_empty() {
        return Ok(vec![None; jobs.len()]);
    }
    let mut inputs: Vec<String> = distinct.iter().map(|j| j.input.clone()).collect();
    inputs.sort();
    inputs.dedup();
    // Per distinct job: (H per group, positions, samples, Σ x per group).
    type Acc = (Vec<Vec<f64>>, u64, usize, Vec<Vec<f64>>);
    let totals: Vec<Mutex<Acc>> = distinct
        .iter()
        .map(|j| {
            let (d, groups) = (j.layout.row_len(), j.layout.groups());
            let s = if sums { d } else { 0 };
            Mutex::new((
                vec![vec![0f64; d * d]; groups],
                0,
                0,
                vec![vec![0f64; s]; groups],
            ))
        })
        .collect();
    // Folds job `ji`'s input in a run of samples, in sample order.
    let fold = |ji: usize, arrays: &[&Array]| {
        let job = distinct[ji];
        let mut acc = totals[ji].lock().unwrap_or_else(|e| e.into_inner());
        let mut values: Vec<f32> = Vec::new();
        for a in arrays {
            if a.dtype != DataType::Float {
                return;
            }
            floats_into(a, &mut values);
            let acc = &mut *acc;
            let (h, s) = (&mut acc.0, &mut acc.3);
            let n = job.layout.accumulate_with_sums(
                &values,
                &a.shape,
                h,
                sums.then_some(s.as_mut_slice()),
                limits.positions_per_sample,
            );
            if n > 0 {
                acc.1 += n;
                acc.2 += 1;
            }
        }
    };
    let label = "input second moments";
    if let Some(parts) = parts {
        // A big model a part at a time: each input as soon as it is made.
        super::observe::run_in_parts(
            model,
            &parts,
            &inputs,
            samples,
            dir,
            threads,
            progress,
            label,
            |t, arrays| {
                let readers: Vec<usize> = (0..distinct.len())
                    .filter(|&ji| distinct[ji].input == inputs[t])
                    .collect();
                parallel_map(&readers, threads, |_, &ji| fold(ji, arrays));
                Ok(())
            },
        )?;
    } else {
        let (probed, sources) = probe(model, &inputs);
        let slot: std::collections::BTreeMap<&str, Source> =
            inputs.iter().map(String::as_str).zip(sources).collect();
        let fail = |e: crate::exec::ExecError| PassError::Model(format!("{label}: {e}"));
        let runner = Runner::from_model("second-moment model", &probed, dir).map_err(fail)?;
        drop(probed);
        let order: Vec<usize> = (0..distinct.len()).collect();
        let bar = Progress::new(progress, samples.len(), "input second moments (samples)");
        let mut done = 0;
        for chunk in samples.chunks(CHUNK) {
            let outputs = run_samples(&runner, chunk, threads).map_err(fail)?;
            parallel_map(&order, threads, |_, &ji| {
                let source = slot[distinct[ji].input.as_str()];
                let arrays: Vec<&Array> = chunk
                    .iter()
                    .zip(&outputs)
                    .map(|(sample, outs)| source.pick(sample, outs))
                    .collect();
                fold(ji, &arrays);
            });
            done += chunk.len();
            bar.tick(done);
        }
        bar.finish();
    }
    let gathered: Vec<Option<WithSums>> = distinct
        .iter()
        .zip(totals)
        .map(|(job, total)| {
            let (h, positions, samples, s) = total.into_inner().unwrap_or_else(|e| e.into_inner());
            (positions > 0).then(|| {
                let m = Moments {
                    layout: job.layout.clone(),
                    h,
                    positions,
                    samples,
                };
                (m, s)
            })
        })
        .collect();
    Ok(of
        .into_iter()
        .map(|i| i.and_then(|i| gathered[i].clone()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Dim, Tensor, TypeInfo, ValueInfo};

    /// x [2, 3] ─ Relu ─ r ─ MatMul(W [3, 2]) ─ y.
    fn dense_model() -> Model {
        let mut g = crate::ir::Graph::new("g");
        g.inputs.push(ValueInfo::new(
            "x",
            TypeInfo::tensor(DataType::Float, vec![Dim::known(2), Dim::known(3)]),
        ));
        g.outputs.push(ValueInfo::new(
            "y",
            TypeInfo::tensor(DataType::Float, vec![Dim::known(2), Dim::known(2)]),
        ));
        g.add_initializer(Tensor::from_f32("w", vec![3, 2], &[1.0; 6]));
        g.add_node(Node::new(
            "Relu",
            "relu",
            vec!["x".into()],
            vec!["r".into()],
        ));
        g.add_node(Node::new(
            "MatMul",
            "mm",
            vec!["r".into(), "w".into()],
            vec!["y".into()],
        ));
        Model::new(g, 17)
    }

    #[test]
    fn a_big_model_run_in_parts_gathers_the_same_moments() {
        // x ─ MatMul(w0) ─ h ─ Relu ─ r ─ MatMul(w) ─ y: two weighted nodes,
        // so a 1-byte part budget cuts between them.
        let mut m = dense_model();
        let w0: Vec<f32> = (0..9).map(|i| (i as f32 * 0.9).cos()).collect();
        m.graph
            .add_initializer(Tensor::from_f32("w0", vec![3, 3], &w0));
        let relu = m.graph.nodes().find(|(_, n)| n.name() == "relu").unwrap().0;
        m.graph.set_input(relu, 0, "h");
        m.graph.insert_node_before(
            relu,
            Node::new(
                "MatMul",
                "mm0",
                vec!["x".into(), "w0".into()],
                vec!["h".into()],
            ),
        );
        let ids: Vec<NodeId> = ["mm0", "mm"]
            .iter()
            .map(|name| m.graph.nodes().find(|(_, n)| n.name() == *name).unwrap().0)
            .collect();
        let jobs: Vec<MomentJob> = ids
            .iter()
            .map(|&id| MomentJob::for_node(&m.graph, id).unwrap())
            .collect();
        assert_eq!([jobs[0].input.as_str(), jobs[1].input.as_str()], ["x", "r"]);
        let samples: Vec<Sample> = (0..7)
            .map(|s| {
                let v: Vec<f32> = (0..6).map(|i| ((s * 6 + i) as f32 * 0.61).sin()).collect();
                vec![Array::from_f32(vec![2, 3], &v)]
            })
            .collect();
        let cut = super::super::observe::parts(&m, 0, 1).unwrap();
        assert_eq!(cut.len(), 2);
        let limits = MomentLimits::default();
        for sums in [false, true] {
            let whole = gather(&m, &jobs, &samples, None, 2, limits, false, sums, None).unwrap();
            for threads in [1, 2] {
                let split = gather(
                    &m,
                    &jobs,
                    &samples,
                    None,
                    threads,
                    limits,
                    false,
                    sums,
                    Some(cut.clone()),
                )
                .unwrap();
                assert_eq!(split, whole);
            }
            assert!(whole
                .iter()
                .all(|j| j.as_ref().is_some_and(|(m, _)| m.samples == 7)));
        }
    }

    #[test]
    fn second_moments_are_the_gram_matrix_of_every_row_seen() {
        let m = dense_model();
        let id = m.graph.nodes().find(|(_, n)| n.name() == "mm").unwrap().0;
        let job = MomentJob::for_node(&m.graph, id).unwrap();
        assert_eq!(job.input, "r");
        let samples: Vec<Sample> = (0..5)
            .map(|s| {
                let v: Vec<f32> = (0..6).map(|i| (s * 6 + i) as f32 - 7.0).collect();
                vec![Array::from_f32(vec![2, 3], &v)]
            })
            .collect();
        // Rows of relu(x), by hand.
        let mut want = vec![0f64; 9];
        for s in &samples {
            let v = s[0].to_f64();
            for row in v.chunks(3) {
                for a in 0..3 {
                    for b in 0..3 {
                        want[a * 3 + b] += row[a].max(0.0) * row[b].max(0.0);
                    }
                }
            }
        }
        let big = MomentJob {
            input: "x".into(),
            layout: Layout::Dense {
                k: 3,
                n: 2,
                transposed: false,
            },
        };
        let limits = MomentLimits {
            positions_per_sample: 8,
            max_row: 2,
        };
        for threads in [1, 2] {
            let got = second_moments(
                &m,
                &[job.clone(), job.clone()],
                &samples,
                None,
                threads,
                MomentLimits::default(),
                false,
            )
            .unwrap();
            let one = got[0].as_ref().unwrap();
            assert_eq!(one.h, vec![want.clone()]);
            assert_eq!((one.positions, one.samples), (10, 5));
            assert_eq!(got[1], got[0], "duplicate jobs get the same moments");
            let mean = one.mean(0);
            assert!((mean[4] - want[4] / 10.0).abs() < 1e-12);
            assert!((one.column_norms(0)[2] - want[8].sqrt()).abs() < 1e-12);
            // First moments over the same rows, and the same H.
            let with = first_and_second_moments(
                &m,
                std::slice::from_ref(&job),
                &samples,
                None,
                threads,
                MomentLimits::default(),
                false,
            )
            .unwrap();
            let (m2, sums) = with[0].as_ref().unwrap();
            assert_eq!(m2, one);
            let mut want_sums = [0f64; 3];
            for s in &samples {
                for row in s[0].to_f64().chunks(3) {
                    for j in 0..3 {
                        want_sums[j] += row[j].max(0.0);
                    }
                }
            }
            assert_eq!(sums, &vec![want_sums.to_vec()]);
            // Rows longer than the cap are refused.
            let capped = second_moments(
                &m,
                std::slice::from_ref(&big),
                &samples,
                None,
                threads,
                limits,
                false,
            )
            .unwrap();
            assert_eq!(capped, vec![None]);
        }
    }

    #[test]
    fn conv_patches_match_a_direct_gram() {
        // 1 batch, 2 channels, 3x3 input, 2x2 kernel, stride 1, pad 1 on the
        // leading edges: every patch built by hand.
        let layout = Layout::Conv {
            groups: 1,
            per_group: 2,
            kernel: [2, 2],
            strides: [1, 1],
            dilations: [1, 1],
            pads: [1, 1],
            ends: [1, 1],
            rank: 2,
        };
        let x: Vec<f32> = (0..18).map(|v| v as f32 - 8.0).collect();
        let mut h = vec![vec![0f64; 64]];
        let positions = layout.accumulate(&x, &[1, 2, 3, 3], &mut h, POSITIONS_PER_SAMPLE);
        assert_eq!(positions, 16);
        let at = |c: usize, y: i64, xx: i64| -> f64 {
            if (0..3).contains(&y) && (0..3).contains(&xx) {
                f64::from(x[c * 9 + (y * 3 + xx) as usize])
            } else {
                0.0
            }
        };
        let mut want = vec![0f64; 64];
        let mut want_sums = vec![0f64; 8];
        for oy in 0..4i64 {
            for ox in 0..4i64 {
                let mut p = Vec::new();
                for c in 0..2 {
                    for ky in 0..2 {
                        for kx in 0..2 {
                            p.push(at(c, oy + ky - 1, ox + kx - 1));
                        }
                    }
                }
                for a in 0..8 {
                    want_sums[a] += p[a];
                    for b in 0..8 {
                        want[a * 8 + b] += p[a] * p[b];
                    }
                }
            }
        }
        assert_eq!(h[0], want);
        // The patch sums over the same positions (padding counts as zero).
        let mut h2 = vec![vec![0f64; 64]];
        let mut sums = vec![vec![0f64; 8]];
        let n = layout.accumulate_with_sums(
            &x,
            &[1, 2, 3, 3],
            &mut h2,
            Some(&mut sums),
            POSITIONS_PER_SAMPLE,
        );
        assert_eq!((n, &h2[0], &sums[0]), (16, &want, &want_sums));
    }

    #[test]
    fn spread_is_even_and_keeps_the_first() {
        assert_eq!(spread(3, 8), vec![0, 1, 2]);
        assert_eq!(spread(10, 4), vec![0, 2, 5, 7]);
    }
}
