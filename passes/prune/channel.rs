//! `granularity: channel`: plan (which channels of which group go), score,
//! and the rewrite that removes them.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;

use super::groups::{self, const_ints, Analysis, Group, Shapes};
use super::reconstruct::{self, InputStats};
use super::{Importance, Prune};
use crate::ir::{Attribute, DataType, DimValue, Graph, Model, NodeId, Tensor};
use crate::passes::select::NodeMatch;
use crate::passes::{PassContext, PassError, PassReport};

const COMPUTE: &[&str] = &["Conv", "ConvTranspose", "Gemm", "MatMul"];

/// Ratio used when neither `ratio` nor `target` is given.
pub const DEFAULT_RATIO: f64 = 0.3;

/// What happens to one group.
#[derive(Debug, Clone, PartialEq)]
pub enum Fate {
    /// Left whole: why.
    Whole(String),
    /// Prunable, with each channel's importance.
    Prunable(Vec<f64>),
}

/// The plan for a model: the analysis, each group's fate and removed channels.
pub struct Plan {
    /// The dependency analysis.
    pub analysis: Analysis,
    /// Per group.
    pub fates: Vec<Fate>,
    /// Per group, the removed channel indices (sorted).
    pub removed: Vec<Vec<usize>>,
    /// Shapes of every tensor before pruning.
    pub shapes: Shapes,
    /// Moments of the consumers' inputs in the unpruned model (when
    /// `importance: activation` or reconstruction asked for them).
    pub stats: BTreeMap<String, InputStats>,
}

/// Whether the run reconstructs: `reconstruct`, by default when `--data`
/// is given.
pub fn reconstructs(cfg: &Prune, ctx: &PassContext) -> bool {
    cfg.reconstruct.unwrap_or(ctx.data.is_some())
}

/// The shapes of every tensor, from tract's typing of the model with each
/// node output made an output (symbolic input dims from `--dim`, else 1).
pub fn shapes(model: &Model, ctx: &PassContext) -> Result<Shapes, PassError> {
    let g = &model.graph;
    let mut m = model.clone();
    let mut outs: Vec<crate::ir::ValueInfo> = Vec::new();
    for (_, n) in g.nodes() {
        for o in n.outputs.iter().filter(|o| !o.is_empty()) {
            outs.push(crate::ir::ValueInfo {
                name: Some(o.clone()),
                ..Default::default()
            });
        }
    }
    m.graph.outputs = outs;
    let runner = crate::exec::Runner::from_model("prune (shapes)", &m, ctx.model_dir.as_deref())
        .map_err(|e| PassError::Model(format!("shapes of the model: {e}")))?;
    let mut ins: Vec<Vec<usize>> = Vec::new();
    for spec in runner.inputs() {
        let dims = spec
            .shape
            .clone()
            .ok_or_else(|| PassError::Model(format!("input {:?} has no known rank", spec.name)))?;
        ins.push(
            dims.iter()
                .map(|d| match d {
                    DimValue::Known(k) => (*k).max(0) as usize,
                    DimValue::Symbol(s) => ctx.dims.get(s).copied().unwrap_or(1),
                    DimValue::Unknown => 1,
                })
                .collect(),
        );
    }
    let found = runner
        .output_shapes(&ins)
        .map_err(|e| PassError::Model(format!("shapes of the model: {e}")))?;
    let mut shapes = Shapes::new();
    for (spec, s) in runner.inputs().iter().zip(&ins) {
        shapes.insert(spec.name.clone(), s.iter().map(|&d| d as i64).collect());
    }
    for (name, s) in runner.outputs().iter().zip(found) {
        if let Some(s) = s {
            shapes.insert(name.clone(), s.iter().map(|&d| d as i64).collect());
        }
    }
    for t in g.initializers() {
        shapes.insert(t.name().to_string(), t.dims.clone());
    }
    Ok(shapes)
}

/// Checks that exact names given in include/exclude/overrides exist.
fn check_names(cfg: &Prune, g: &Graph, report: &mut PassReport) -> Result<(), PassError> {
    let names: Vec<&str> = g.nodes().map(|(_, n)| n.name()).collect();
    let missing = |field: String, n: &str| {
        let hint = crate::passes::closest(n, &names)
            .map(|c| format!("; did you mean {c:?}?"))
            .unwrap_or_default();
        PassError::Model(format!("{field}: no node is named {n:?}{hint}"))
    };
    for (list, field) in [
        (&cfg.include_nodes, "include_nodes"),
        (&cfg.exclude_nodes, "exclude_nodes"),
    ] {
        for (i, m) in list.iter().enumerate() {
            match m {
                NodeMatch::Name(n) if !names.contains(&n.as_str()) => {
                    return Err(missing(format!("{field}[{i}]"), n))
                }
                NodeMatch::Regex(r) if !names.iter().any(|n| m.matches(n)) => report.warnings.push(
                    format!("{field}[{i}]: regex {:?} matches no node name", r.regex),
                ),
                _ => {}
            }
        }
    }
    for n in cfg.overrides.keys() {
        if !names.contains(&n.as_str()) {
            return Err(missing(format!("overrides.{n}"), n));
        }
    }
    Ok(())
}

/// Why the options keep a group whole, if they do.
fn filtered(cfg: &Prune, g: &Group, ops: &BTreeMap<String, String>) -> Option<String> {
    for name in g.producers.iter().chain(&g.consumers) {
        let op = ops.get(name).map(String::as_str).unwrap_or("");
        if !cfg.ops.iter().any(|o| o == op) {
            return Some(format!("{op} {name:?} is not in `ops`"));
        }
        if let Some(i) = cfg.exclude_nodes.iter().position(|m| m.matches(name)) {
            return Some(format!("{name:?} is excluded by exclude_nodes[{i}]"));
        }
        if cfg.overrides.get(name).is_some_and(|o| o.skip) {
            return Some(format!("overrides.{name}.skip"));
        }
    }
    if !cfg.include_nodes.is_empty()
        && !g
            .producers
            .iter()
            .any(|p| cfg.include_nodes.iter().any(|m| m.matches(p)))
    {
        return Some("no producer is in include_nodes".into());
    }
    None
}

/// Per-index norm of a tensor's slices along `axis`: Σ|w| (l1) or Σw² (l2).
fn slice_norms(t: &Tensor, axis: usize, l1: bool) -> Option<Vec<f64>> {
    let v = t.to_f32().ok()?;
    let dims: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
    let size = *dims.get(axis)?;
    let inner: usize = dims[axis + 1..].iter().product();
    let mut out = vec![0f64; size];
    for (k, x) in v.iter().enumerate() {
        let i = (k / inner.max(1)) % size.max(1);
        let x = f64::from(*x);
        out[i] += if l1 { x.abs() } else { x * x };
    }
    Some(out)
}

/// Each channel's importance: `l1` / `l2`, the norm of its slices of every
/// compute weight (producer rows, consumer columns), summed over the group;
/// `activation`, over the group's consumers with calibration moments, the
/// root of the channel's output energy `Σ ‖W[:, j]‖²·E[x_j²]`
/// (`reconstruct::channel_energies`), summed. A group none of whose
/// consumers has moments is scored by `l2` (`None` second value: why).
fn importance(
    g: &Graph,
    a: &Analysis,
    group: &Group,
    shapes: &Shapes,
    imp: Importance,
    stats: &BTreeMap<String, InputStats>,
) -> (Vec<f64>, Option<String>) {
    if imp == Importance::Activation {
        let mut per_dim: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
        for &d in &group.dims {
            let dim = &a.dims[d];
            let Some(t) = g.initializer(&dim.tensor) else {
                continue;
            };
            for u in g.uses(&dim.tensor) {
                let n = g.node(u.node);
                let consumer = groups::weight_role(g, n, u.slot, dim.axis, shapes) == Some(false);
                if let (true, Some(st)) = (consumer, stats.get(n.name())) {
                    if let Some(e) = reconstruct::channel_energies(t, st, dim.size) {
                        per_dim.insert(d, e);
                    }
                }
            }
        }
        if !per_dim.is_empty() {
            let scores = group
                .channels
                .iter()
                .map(|c| {
                    c.elements
                        .iter()
                        .filter_map(|(d, i)| per_dim.get(d).map(|v| v[*i].max(0.0).sqrt()))
                        .sum()
                })
                .collect();
            return (scores, None);
        }
        let (scores, _) = importance(g, a, group, shapes, Importance::L2, stats);
        return (
            scores,
            Some("no consumer has calibration moments of its input; scored by l2".into()),
        );
    }
    let l1 = imp == Importance::L1;
    let mut per_dim: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    for &d in &group.dims {
        let dim = &a.dims[d];
        let Some(t) = g.initializer(&dim.tensor) else {
            continue;
        };
        if t.dtype() != DataType::Float {
            continue;
        }
        let is_weight = g
            .uses(&dim.tensor)
            .iter()
            .any(|u| groups::weight_role(g, g.node(u.node), u.slot, dim.axis, shapes).is_some());
        if is_weight {
            if let Some(n) = slice_norms(t, dim.axis, l1) {
                per_dim.insert(d, n);
            }
        }
    }
    let scores = group
        .channels
        .iter()
        .map(|c| {
            let s: f64 = c
                .elements
                .iter()
                .filter_map(|(d, i)| per_dim.get(d).map(|v| v[*i]))
                .sum();
            if l1 {
                s
            } else {
                s.sqrt()
            }
        })
        .collect();
    (scores, None)
}

/// Channels a group keeps when `want` are asked for: at least `min_channels`,
/// and a multiple of `round_to` elements in its widest tensor axis — for a
/// grouped Conv's channels, a multiple of `round_to` per group (the count is
/// the per-group width; onnxruntime's blocked NCHWc Conv needs it).
pub(super) fn bounded_keep(cfg: &Prune, group: &Group, want: usize) -> usize {
    let n = group.channels.len();
    let unit = group
        .channels
        .first()
        .filter(|_| !group.grouped)
        .map(|c| {
            let mut per: BTreeMap<usize, usize> = BTreeMap::new();
            for (d, _) in &c.elements {
                *per.entry(*d).or_default() += 1;
            }
            per.values().copied().max().unwrap_or(1)
        })
        .unwrap_or(1);
    let mut keep = want.max(cfg.min_channels).min(n);
    while keep < n && (keep * unit) % cfg.round_to != 0 {
        keep += 1;
    }
    keep
}

/// The `keep` most important channels' complement, sorted.
pub(super) fn least(scores: &[f64], keep: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&x, &y| scores[y].total_cmp(&scores[x]).then(x.cmp(&y)));
    let mut removed: Vec<usize> = order[keep.min(order.len())..].to_vec();
    removed.sort();
    removed
}

/// Per dim: how many of its indices the removal takes.
fn removed_counts(a: &Analysis, removed: &[Vec<usize>]) -> Vec<usize> {
    let mut counts = vec![0usize; a.dims.len()];
    for (gi, r) in removed.iter().enumerate() {
        for &c in r {
            for (d, _) in &a.groups[gi].channels[c].elements {
                counts[*d] += 1;
            }
        }
    }
    counts
}

fn new_shape(a: &Analysis, shapes: &Shapes, counts: &[usize], t: &str) -> Option<Vec<i64>> {
    let mut s = shapes.get(t)?.clone();
    for (ax, v) in s.iter_mut().enumerate() {
        if let Some(d) = a.dim(t, ax) {
            *v -= counts[d] as i64;
        }
    }
    Some(s)
}

/// Conv/ConvTranspose/Gemm/MatMul MACs (counted by `inspect::node_macs`) and
/// float weight elements after removing `removed`.
pub(super) fn cost(g: &Graph, plan: &Plan, removed: &[Vec<usize>]) -> (u64, u64) {
    let counts = removed_counts(&plan.analysis, removed);
    let shape = |t: &str| new_shape(&plan.analysis, &plan.shapes, &counts, t);
    let mut macs = 0u64;
    for (_, n) in g.nodes() {
        if !COMPUTE.contains(&n.op_type()) || !n.domain().is_empty() {
            continue;
        }
        let x = n.inputs.first().and_then(|v| shape(v));
        let w = n.inputs.get(1).and_then(|v| shape(v));
        let y = n.outputs.first().and_then(|v| shape(v));
        macs += crate::inspect::node_macs(n, x, w, y.as_deref()).unwrap_or(0);
    }
    let params = g
        .initializers()
        .iter()
        .filter(|t| t.dtype().is_float())
        .map(|t| {
            shape(t.name())
                .map(|s| s.iter().product::<i64>().max(0) as u64)
                .unwrap_or(0)
        })
        .sum();
    (macs, params)
}

/// Builds the plan: analysis, fates, and the channels removed.
pub fn plan(
    cfg: &Prune,
    model: &Model,
    ctx: &PassContext,
    report: &mut PassReport,
) -> Result<Plan, PassError> {
    let g = &model.graph;
    check_names(cfg, g, report)?;
    let shapes = shapes(model, ctx)?;
    let order = g.topological_order()?;
    let sources: Vec<NodeId> = order
        .iter()
        .copied()
        .filter(|&id| {
            let n = g.node(id);
            n.domain().is_empty()
                && COMPUTE.contains(&n.op_type())
                && groups::source_axis(g, n, &shapes).is_some()
        })
        .collect();
    let analysis = groups::analyze(g, &shapes, &sources);
    let ops: BTreeMap<String, String> = g
        .nodes()
        .map(|(_, n)| (n.name().to_string(), n.op_type().to_string()))
        .collect();
    let whole: Vec<Option<String>> = analysis
        .groups
        .iter()
        .map(|grp| {
            if let Some((node, why)) = &grp.blocked {
                return Some(format!("{node}: {why}"));
            }
            if grp.producers.is_empty() {
                return Some("no compute node produces these channels".into());
            }
            if let Some(why) = filtered(cfg, grp, &ops) {
                return Some(why);
            }
            if grp.channels.len() <= cfg.min_channels {
                return Some(format!(
                    "{} channels, min_channels is {}",
                    grp.channels.len(),
                    cfg.min_channels
                ));
            }
            None
        })
        .collect();
    // Moments of the consumers' inputs, once, for the activation scores
    // and the reconstruction.
    let field = if cfg.importance == Importance::Activation {
        Some("importance: activation")
    } else if cfg.reconstruct == Some(true) {
        Some("reconstruct: true")
    } else if reconstructs(cfg, ctx) {
        Some("reconstruct")
    } else {
        None
    };
    let stats = match field {
        Some(field) => {
            let pre: Vec<Fate> = whole
                .iter()
                .map(|w| match w {
                    Some(w) => Fate::Whole(w.clone()),
                    None => Fate::Prunable(Vec::new()),
                })
                .collect();
            let nodes = reconstruct::consumers(g, &analysis.groups, &pre);
            reconstruct::gather(model, ctx, &nodes, field, report)?
        }
        None => BTreeMap::new(),
    };
    let mut fates = Vec::with_capacity(whole.len());
    for (grp, w) in analysis.groups.iter().zip(whole) {
        fates.push(match w {
            Some(w) => Fate::Whole(w),
            None => {
                let (scores, note) = importance(g, &analysis, grp, &shapes, cfg.importance, &stats);
                if let Some(note) = note {
                    report.warnings.push(format!(
                        "importance: activation: group {}: {note}",
                        group_name(grp)
                    ));
                }
                Fate::Prunable(scores)
            }
        });
    }
    let mut plan = Plan {
        removed: vec![Vec::new(); analysis.groups.len()],
        analysis,
        fates,
        shapes,
        stats,
    };
    match cfg.target.as_ref() {
        None => {
            for (gi, grp) in plan.analysis.groups.iter().enumerate() {
                let Fate::Prunable(scores) = &plan.fates[gi] else {
                    continue;
                };
                let ratio = grp
                    .producers
                    .iter()
                    .find_map(|p| cfg.overrides.get(p).and_then(|o| o.ratio))
                    .or(cfg.ratio)
                    .unwrap_or(DEFAULT_RATIO);
                let n = scores.len();
                let remove = (ratio * n as f64).floor() as usize;
                let keep = bounded_keep(cfg, grp, n - remove);
                plan.removed[gi] = least(scores, keep);
            }
        }
        Some(t) => {
            let (macs0, params0) = cost(g, &plan, &plan.removed);
            let (goal, use_macs, field) = match (t.macs, t.params) {
                (Some(m), _) => ((macs0 as f64 * m), true, "macs"),
                (_, Some(p)) => ((params0 as f64 * p), false, "params"),
                // min_sqnr_db: chosen by `target::search` on measured runs.
                _ => return Ok(plan),
            };
            // Scores over the group's mean: comparable across groups.
            let normalized: Vec<Option<Vec<f64>>> = plan
                .fates
                .iter()
                .map(|f| match f {
                    Fate::Prunable(s) => {
                        let mean = s.iter().sum::<f64>() / s.len().max(1) as f64;
                        Some(
                            s.iter()
                                .map(|x| if mean > 0.0 { x / mean } else { 0.0 })
                                .collect(),
                        )
                    }
                    Fate::Whole(_) => None,
                })
                .collect();
            let mut thresholds: Vec<f64> = normalized.iter().flatten().flatten().copied().collect();
            thresholds.sort_by(f64::total_cmp);
            thresholds.dedup();
            thresholds.push(f64::INFINITY);
            let removal = |tau: f64| -> Vec<Vec<usize>> {
                plan.analysis
                    .groups
                    .iter()
                    .zip(&normalized)
                    .map(|(grp, s)| match s {
                        None => Vec::new(),
                        Some(s) => {
                            let want = s.iter().filter(|&&x| x >= tau).count();
                            least(s, bounded_keep(cfg, grp, want))
                        }
                    })
                    .collect()
            };
            let metric = |r: &[Vec<usize>]| {
                let (m, p) = cost(g, &plan, r);
                if use_macs {
                    m as f64
                } else {
                    p as f64
                }
            };
            // Smallest threshold (fewest channels removed) that meets the goal.
            let (mut lo, mut hi) = (0usize, thresholds.len() - 1);
            let best = removal(thresholds[hi]);
            if metric(&best) > goal {
                let total = if use_macs { macs0 } else { params0 };
                let reached = metric(&best) / total.max(1) as f64;
                let whole: Vec<String> = plan
                    .fates
                    .iter()
                    .zip(&plan.analysis.groups)
                    .filter_map(|(f, grp)| match f {
                        Fate::Whole(w) => Some(format!("{}: {w}", group_name(grp))),
                        _ => None,
                    })
                    .take(5)
                    .collect();
                report.warnings.push(format!(
                    "target.{field} {} cannot be reached: with every prunable group at min_channels the model keeps {:.3} of its {field}; the rest sits in groups left whole ({}{})",
                    if use_macs { t.macs.unwrap_or(0.0) } else { t.params.unwrap_or(0.0) },
                    reached,
                    whole.join("; "),
                    if plan.fates.iter().filter(|f| matches!(f, Fate::Whole(_))).count() > 5 { "; ..." } else { "" }
                ));
                plan.removed = best;
            } else {
                while lo < hi {
                    let mid = (lo + hi) / 2;
                    if metric(&removal(thresholds[mid])) <= goal {
                        hi = mid;
                    } else {
                        lo = mid + 1;
                    }
                }
                plan.removed = removal(thresholds[lo]);
            }
        }
    }
    Ok(plan)
}

/// A group's name: its first producer, or its first tensor.
pub fn group_name(grp: &Group) -> String {
    grp.producers
        .first()
        .cloned()
        .unwrap_or_else(|| format!("({} channels)", grp.channels.len()))
}

/// The removed indices of every dim that loses any.
pub fn gone(a: &Analysis, removed: &[Vec<usize>]) -> BTreeMap<usize, BTreeSet<usize>> {
    let mut gone: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
    for (gi, r) in removed.iter().enumerate() {
        for &c in r {
            for &(d, i) in &a.groups[gi].channels[c].elements {
                gone.entry(d).or_default().insert(i);
            }
        }
    }
    gone
}

/// Removes the planned channels from the graph.
pub fn apply(model: &mut Model, plan: &Plan) -> Result<usize, PassError> {
    let a = &plan.analysis;
    let counts = removed_counts(a, &plan.removed);
    let gone = gone(a, &plan.removed);
    let opset = model.opset_version("").unwrap_or(13);
    let g = &mut model.graph;
    let shape = |t: &str| new_shape(a, &plan.shapes, &counts, t);
    // 1. Initializers.
    let mut changed = 0;
    let mut per_tensor: BTreeMap<String, Vec<(usize, &BTreeSet<usize>)>> = BTreeMap::new();
    for (d, idx) in &gone {
        let dim = &a.dims[*d];
        if g.initializer(&dim.tensor).is_some() {
            per_tensor
                .entry(dim.tensor.clone())
                .or_default()
                .push((dim.axis, idx));
        }
    }
    for (name, cuts) in per_tensor {
        let Some(mut t) = g.initializer(&name).cloned() else {
            continue;
        };
        for (axis, idx) in cuts {
            t = slice(&t, axis, idx)?;
        }
        g.replace_initializer(t);
        changed += 1;
    }
    // 2. Attributes and shape constants.
    for id in g.node_ids() {
        let n = g.node(id).clone();
        let touched = n
            .inputs
            .iter()
            .chain(&n.outputs)
            .any(|v| (0..8).any(|ax| a.dim(v, ax).is_some_and(|d| counts[d] > 0)));
        if !touched {
            continue;
        }
        match n.op_type() {
            // Depthwise: `group` follows the channels. Grouped (group < C_in):
            // every group lost as many channels, `group` stays.
            "Conv"
                if n.attr_int("group").unwrap_or(1) > 1
                    && plan
                        .shapes
                        .get(&n.inputs[0])
                        .and_then(|s| s.get(1))
                        .copied()
                        == n.attr_int("group") =>
            {
                let cin = shape(&n.inputs[0])
                    .and_then(|s| s.get(1).copied())
                    .unwrap_or(0);
                g.update_node(id, |n| n.set_attr(Attribute::int("group", cin)));
            }
            "Split" => {
                let r = plan.shapes.get(&n.inputs[0]).map_or(0, Vec::len);
                let axis = n.attr_int("axis").unwrap_or(0);
                let axis = if axis < 0 { axis + r as i64 } else { axis } as usize;
                let sizes: Vec<i64> = n
                    .outputs
                    .iter()
                    .map(|o| shape(o).and_then(|s| s.get(axis).copied()).unwrap_or(0))
                    .collect();
                if opset >= 13 {
                    let name = g.unique_name(&format!("{}_split", n.outputs[0]));
                    g.add_initializer(int_tensor(&name, &sizes));
                    g.update_node(id, |n| {
                        n.attributes.retain(|a| a.name() != "num_outputs");
                        if n.inputs.len() < 2 {
                            n.inputs.push(String::new());
                        }
                    });
                    g.set_input(id, 1, &name);
                } else {
                    g.update_node(id, |n| n.set_attr(Attribute::ints("split", sizes)));
                }
            }
            "Reshape" => {
                let Some(c) = groups::shape_entries(g, &plan.shapes, &n.inputs[1]) else {
                    continue;
                };
                let (Some(ny), Some(nx)) = (shape(&n.outputs[0]), shape(&n.inputs[0])) else {
                    continue;
                };
                // Constant entries take the new sizes; computed ones (dynamic
                // batch) stay, the analysis checked they are not pruned axes.
                let new: Vec<Option<i64>> = c
                    .iter()
                    .enumerate()
                    .map(|(j, &v)| match v {
                        None | Some(-1) => v,
                        Some(0) if nx.get(j) == ny.get(j) => v,
                        Some(v) => Some(ny.get(j).copied().unwrap_or(v)),
                    })
                    .collect();
                if new == c {
                    continue;
                }
                if let Some(full) = new.iter().copied().collect::<Option<Vec<i64>>>() {
                    if const_ints(g, &n.inputs[1]).is_some() {
                        let name = g.unique_name(&format!("{}_shape", n.outputs[0]));
                        g.add_initializer(int_tensor(&name, &full));
                        g.set_input(id, 1, &name);
                        continue;
                    }
                }
                // A Concat of pieces: rewrite the constant pieces that change.
                let Some((cat, _)) = g.producer(&n.inputs[1]) else {
                    continue;
                };
                let pieces = g.node(cat).inputs.clone();
                let mut at = 0;
                for (slot, piece) in pieces.iter().enumerate() {
                    let len = plan.shapes.get(piece).and_then(|s| s.first()).copied();
                    let len = len.unwrap_or(0).max(0) as usize;
                    let part: Option<Vec<i64>> = new
                        .get(at..at + len)
                        .and_then(|p| p.iter().copied().collect());
                    if let (Some(part), Some(old)) = (part, const_ints(g, piece)) {
                        if part != old {
                            let name = g.unique_name(&format!("{piece}_pruned"));
                            g.add_initializer(int_tensor(&name, &part));
                            g.set_input(cat, slot, &name);
                        }
                    }
                    at += len;
                }
            }
            _ => {}
        }
    }
    // 3. Declared shapes of intermediate tensors.
    for vi in g.value_info.iter_mut() {
        let name = vi.name().to_string();
        if let Some(ty) = vi.ty.as_mut() {
            if let crate::ir::TypeKind::Tensor {
                shape: Some(dims), ..
            } = &mut ty.kind
            {
                for (ax, dim) in dims.iter_mut().enumerate() {
                    if let (Some(d), DimValue::Known(k)) = (a.dim(&name, ax), &mut dim.value) {
                        *k -= counts[d] as i64;
                    }
                }
            }
        }
    }
    crate::passes::eliminate_dead::remove_dead_nodes(g);
    remove_unused_initializers(g);
    Ok(changed)
}

fn remove_unused_initializers(g: &mut Graph) {
    let unused: Vec<String> = g
        .initializers()
        .iter()
        .map(|t| t.name().to_string())
        .filter(|n| g.uses(n).is_empty() && !g.is_output(n) && !g.is_input(n))
        .collect();
    for n in unused {
        g.remove_initializer(&n);
    }
}

fn int_tensor(name: &str, v: &[i64]) -> Tensor {
    let raw: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    Tensor::from_raw(
        name,
        DataType::Int64,
        vec![v.len() as i64],
        Bytes::from(raw),
    )
}

/// `t` without the indices `gone` of `axis`.
fn slice(t: &Tensor, axis: usize, gone: &BTreeSet<usize>) -> Result<Tensor, PassError> {
    let bad = |why: &str| PassError::Model(format!("initializer {:?}: {why}", t.name()));
    let bits = t
        .dtype()
        .bits()
        .ok_or_else(|| bad("unknown element size"))?;
    if bits % 8 != 0 {
        return Err(bad("sub-byte elements cannot be sliced"));
    }
    let esize = (bits / 8) as usize;
    let raw = t.packed_bytes()?;
    let dims: Vec<usize> = t.dims.iter().map(|&d| d.max(0) as usize).collect();
    let size = *dims.get(axis).ok_or_else(|| bad("no such axis"))?;
    let outer: usize = dims[..axis].iter().product();
    let inner: usize = dims[axis + 1..].iter().product::<usize>() * esize;
    if raw.len() != outer * size * inner {
        return Err(bad("data does not match its dims"));
    }
    let mut out = Vec::with_capacity(raw.len());
    for o in 0..outer {
        for i in (0..size).filter(|i| !gone.contains(i)) {
            let start = (o * size + i) * inner;
            out.extend_from_slice(&raw[start..start + inner]);
        }
    }
    let mut new = t.clone();
    new.dims[axis] = (size - gone.iter().filter(|&&i| i < size).count()) as i64;
    new.set_raw(Bytes::from(out));
    new.data_type = Some(t.dtype().code());
    Ok(new)
}

/// The pass: plan, rewrite, report.
pub fn run(cfg: &Prune, model: &mut Model, ctx: &PassContext) -> Result<PassReport, PassError> {
    let mut report = PassReport::with_counters(&[
        "groups",
        "groups_pruned",
        "groups_whole",
        "channels_removed",
        "initializers_changed",
        "params_before",
        "params_after",
        "weight_bytes_before",
        "weight_bytes_after",
        "macs_before",
        "macs_after",
    ]);
    let before = crate::inspect::summarize(model);
    let mut plan = plan(cfg, model, ctx, &mut report)?;
    let mut last_line = None;
    if let Some(t) = &cfg.target {
        if let Some(db) = t.min_sqnr_db {
            last_line = Some(super::target::search(
                cfg,
                model,
                ctx,
                &mut plan,
                db,
                t.samples,
                &mut report,
            )?);
        }
    }
    let g = &model.graph;
    // MACs as `inspect::node_macs` counts them, on the shapes tract proves
    // (inspect's own propagation does not follow every op a model has).
    let (macs0, _) = cost(g, &plan, &vec![Vec::new(); plan.removed.len()]);
    let (macs1, _) = cost(g, &plan, &plan.removed);
    let grouped = grouped_notes(g, &plan);
    // MACs in compute nodes that read or produce a prunable group.
    let mut prunable_nodes: BTreeSet<String> = BTreeSet::new();
    let mut rows = Vec::new();
    for (gi, grp) in plan.analysis.groups.iter().enumerate() {
        let n = grp.channels.len();
        let removed = plan.removed[gi].len();
        let members: Vec<String> = grp
            .dims
            .iter()
            .map(|&d| {
                format!(
                    "{}[{}]",
                    plan.analysis.dims[d].tensor, plan.analysis.dims[d].axis
                )
            })
            .collect();
        let mut detail = serde_json::json!({
            "group": group_name(grp),
            "producers": grp.producers,
            "consumers": grp.consumers,
            "members": members,
            "channels_before": n,
            "channels_after": n - removed,
        });
        match &plan.fates[gi] {
            Fate::Whole(why) => {
                report.count("groups_whole", 1);
                detail["left_whole"] = serde_json::json!(why);
                rows.push(format!(
                    "  {:<28} {:>5} → {:<5} whole: {why}",
                    group_name(grp),
                    n,
                    n
                ));
            }
            Fate::Prunable(scores) => {
                prunable_nodes.extend(grp.producers.iter().chain(&grp.consumers).cloned());
                if removed > 0 {
                    report.count("groups_pruned", 1);
                }
                report.count("channels_removed", removed as i64);
                let kept_min = (0..n)
                    .filter(|i| plan.removed[gi].binary_search(i).is_err())
                    .map(|i| scores[i])
                    .fold(f64::INFINITY, f64::min);
                let gone_max = plan.removed[gi]
                    .iter()
                    .map(|&i| scores[i])
                    .fold(0.0, f64::max);
                detail["importance_kept_min"] = serde_json::json!(round6(kept_min));
                detail["importance_removed_max"] = serde_json::json!(round6(gone_max));
                let notes: Vec<&String> = grp
                    .producers
                    .iter()
                    .chain(&grp.consumers)
                    .filter_map(|p| grouped.get(p))
                    .collect();
                let mut row = format!("  {:<28} {:>5} → {:<5}", group_name(grp), n, n - removed);
                if removed > 0 && !notes.is_empty() {
                    detail["grouped_convs"] = serde_json::json!(notes);
                    let joined: Vec<&str> = notes.iter().map(|s| s.as_str()).collect();
                    row.push_str(&format!(" ({})", joined.join("; ")));
                }
                rows.push(row);
            }
        }
        report.count("groups", 1);
        report.details.push(detail);
    }
    let prunable_macs: u64 = {
        let shapes = &plan.shapes;
        g.nodes()
            .filter(|(_, n)| prunable_nodes.contains(n.name()) && COMPUTE.contains(&n.op_type()))
            .map(|(_, n)| {
                let s = |i: usize| n.inputs.get(i).and_then(|v| shapes.get(v)).cloned();
                let y = n.outputs.first().and_then(|v| shapes.get(v)).cloned();
                crate::inspect::node_macs(n, s(0), s(1), y.as_deref()).unwrap_or(0)
            })
            .sum()
    };
    let pending = if reconstructs(cfg, ctx) {
        report.count("reconstructed", 0);
        reconstruct::refit(&mut model.graph, &plan, &plan.stats, &mut report)?
    } else {
        Vec::new()
    };
    let changed = apply(model, &plan)?;
    reconstruct::add_biases(&mut model.graph, &plan, pending)?;
    report.count("initializers_changed", changed as i64);
    let after = crate::inspect::summarize(model);
    let bytes = |s: &crate::inspect::Summary| s.bytes_by_dtype.values().sum::<u64>() as i64;
    report.count("params_before", before.parameters as i64);
    report.count("params_after", after.parameters as i64);
    report.count("weight_bytes_before", bytes(&before));
    report.count("weight_bytes_after", bytes(&after));
    report.count("macs_before", macs0 as i64);
    report.count("macs_after", macs1 as i64);
    let share = if macs0 > 0 {
        prunable_macs as f64 / macs0 as f64
    } else {
        0.0
    };
    report.count(
        "macs_in_prunable_groups_permille",
        (share * 1000.0).round() as i64,
    );
    let ratio = |a: i64, b: i64| if b > 0 { a as f64 / b as f64 } else { 1.0 };
    let mut summary = format!(
        "groups: {} ({} pruned, {} left whole); MACs {} → {} ({:.3}); params {} → {} ({:.3}); {:.1}% of MACs in prunable groups\n",
        report.counters["groups"],
        report.counters["groups_pruned"],
        report.counters["groups_whole"],
        macs0,
        macs1,
        ratio(macs1 as i64, macs0 as i64),
        before.parameters,
        after.parameters,
        ratio(after.parameters as i64, before.parameters as i64),
        share * 100.0
    );
    summary.push_str(&rows.join("\n"));
    report.summary.push(summary);
    report.summary.extend(last_line);
    Ok(report)
}

/// Per grouped (not depthwise) Conv whose channels change: what happens to
/// its `group` and its per-group widths.
fn grouped_notes(g: &Graph, plan: &Plan) -> BTreeMap<String, String> {
    let counts = removed_counts(&plan.analysis, &plan.removed);
    let mut out = BTreeMap::new();
    for (_, n) in g.nodes() {
        let group = n.attr_int("group").unwrap_or(1);
        let cin = plan
            .shapes
            .get(&n.inputs[0])
            .and_then(|s| s.get(1))
            .copied();
        if n.op_type() != "Conv" || group <= 1 || cin == Some(group) {
            continue;
        }
        let Some(w) = n.inputs.get(1) else { continue };
        let (Some(before), Some(after)) = (
            plan.shapes.get(w),
            new_shape(&plan.analysis, &plan.shapes, &counts, w),
        ) else {
            continue;
        };
        if before == &after || before.len() < 2 {
            continue;
        }
        out.insert(
            n.name().to_string(),
            format!(
                "grouped Conv {}: group {group} kept, per group {} → {} inputs, {} → {} outputs",
                n.name(),
                before[1],
                after[1],
                before[0] / group,
                after[0] / group
            ),
        );
    }
    out
}

fn round6(x: f64) -> f64 {
    if x.is_finite() {
        (x * 1e6).round() / 1e6
    } else {
        0.0
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::exec::Runner;
    use crate::ir::{Node, TypeInfo, ValueInfo};

    /// A small graph builder: float input `x`, seeded weights.
    pub struct B {
        pub g: Graph,
        seed: u64,
    }

    impl B {
        pub fn new(x: &[i64]) -> B {
            let mut g = Graph::new("g");
            let dims = x.iter().map(|&d| crate::ir::Dim::known(d)).collect();
            g.inputs
                .push(ValueInfo::new("x", TypeInfo::tensor(DataType::Float, dims)));
            B { g, seed: 7 }
        }
        fn rand(&mut self, n: usize) -> Vec<f32> {
            (0..n)
                .map(|_| {
                    self.seed = self
                        .seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((self.seed >> 33) as f64 / (1u64 << 31) as f64 - 0.5) as f32
                })
                .collect()
        }
        pub fn weight(&mut self, name: &str, dims: &[i64]) -> String {
            let n = dims.iter().product::<i64>() as usize;
            let v = self.rand(n);
            self.g
                .add_initializer(Tensor::from_f32(name, dims.to_vec(), &v));
            name.to_string()
        }
        pub fn ints(&mut self, name: &str, v: &[i64]) -> String {
            self.g.add_initializer(int_tensor(name, v));
            name.to_string()
        }
        pub fn node(
            &mut self,
            op: &str,
            name: &str,
            inputs: &[&str],
            attrs: Vec<Attribute>,
        ) -> String {
            let out = format!("{name}_out");
            let mut n = Node::with_io(op, name, inputs, &[out.as_str()]);
            n.attributes = attrs;
            self.g.add_node(n);
            out
        }
        pub fn conv(&mut self, name: &str, x: &str, cin: i64, cout: i64, k: i64) -> String {
            let w = self.weight(&format!("{name}.w"), &[cout, cin, k, k]);
            let b = self.weight(&format!("{name}.b"), &[cout]);
            let p = k / 2;
            self.node(
                "Conv",
                name,
                &[x, &w, &b],
                vec![Attribute::ints("pads", vec![p, p, p, p])],
            )
        }
        pub fn finish(mut self, y: &str) -> Model {
            self.g
                .outputs
                .push(ValueInfo::new(y, TypeInfo::tensor(DataType::Float, vec![])));
            Model::new(self.g, 17)
        }
    }

    fn cfg(yaml: serde_json::Value) -> Prune {
        crate::passes::parse_config::<Prune>(&yaml).unwrap()
    }

    fn run_model(m: &Model, x: &crate::data::Array) -> Vec<crate::data::Array> {
        let r = Runner::from_model("t", m, None).unwrap();
        r.run(0, std::slice::from_ref(x)).unwrap()
    }

    pub fn input(m: &Model) -> crate::data::Array {
        let shape: Vec<usize> = m.graph.inputs[0]
            .ty
            .as_ref()
            .and_then(|t| t.tensor_shape())
            .unwrap()
            .iter()
            .map(|d| d.as_known().unwrap() as usize)
            .collect();
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
            .collect();
        crate::data::Array::from_f32(shape, &v)
    }

    /// Prunes and checks tract runs the result with the original output shapes.
    pub fn prune(m: &Model, c: serde_json::Value) -> (Model, PassReport) {
        let mut out = m.clone();
        let rep = run(&cfg(c), &mut out, &PassContext::default()).unwrap();
        crate::ir::verify(&out).unwrap();
        let x = input(m);
        let (a, b) = (run_model(m, &x), run_model(&out, &x));
        for (a, b) in a.iter().zip(&b) {
            assert_eq!(a.shape, b.shape);
        }
        (out, rep)
    }

    fn dims(m: &Model, t: &str) -> Vec<i64> {
        m.graph.initializer(t).unwrap().dims.clone()
    }

    fn zero_channel(m: &mut Model, t: &str, c: usize) {
        let w = m.graph.initializer(t).unwrap().clone();
        let mut v = w.to_f32().unwrap();
        let per = v.len() / w.dims[0] as usize;
        v[c * per..(c + 1) * per].iter_mut().for_each(|x| *x = 0.0);
        m.graph
            .replace_initializer(Tensor::from_f32(t, w.dims.clone(), &v));
    }

    /// conv1 → BN → Relu → conv2 (→ output): conv1's filters are one group.
    fn chain() -> Model {
        let mut b = B::new(&[1, 3, 8, 8]);
        let c1 = b.conv("conv1", "x", 3, 8, 3);
        let (s, bb, mu, var) = (
            b.weight("bn.s", &[8]),
            b.weight("bn.b", &[8]),
            b.weight("bn.m", &[8]),
            b.weight("bn.v", &[8]),
        );
        let mut vv = b.g.initializer(&var).unwrap().to_f32().unwrap();
        vv.iter_mut().for_each(|v| *v = v.abs() + 0.5);
        b.g.replace_initializer(Tensor::from_f32(&var, vec![8], &vv));
        let bn = b.node(
            "BatchNormalization",
            "bn",
            &[&c1, &s, &bb, &mu, &var],
            vec![],
        );
        let r = b.node("Relu", "relu", &[&bn], vec![]);
        let y = b.conv("conv2", &r, 8, 4, 3);
        b.finish(&y)
    }

    #[test]
    fn a_chain_loses_filters_and_the_matching_inputs() {
        let m = chain();
        let (out, rep) = prune(&m, serde_json::json!({"ratio": 0.5}));
        assert_eq!(dims(&out, "conv1.w"), [4, 3, 3, 3]);
        assert_eq!(dims(&out, "conv1.b"), [4]);
        assert_eq!(dims(&out, "bn.v"), [4]);
        assert_eq!(dims(&out, "conv2.w"), [4, 4, 3, 3]);
        assert_eq!(rep.counters["groups_pruned"], 1);
        assert_eq!(rep.counters["channels_removed"], 4);
        // conv2's outputs reach the graph output: left whole, with the reason.
        assert!(rep.details.iter().any(|d| d["left_whole"]
            .as_str()
            .is_some_and(|w| w.contains("graph output"))));
        assert!(rep.counters["macs_after"] < rep.counters["macs_before"]);
    }

    #[test]
    fn removing_a_dead_filter_keeps_the_outputs() {
        // A filter with zero weights, bias and BN shift contributes nothing.
        let mut b = B::new(&[1, 3, 8, 8]);
        let c1 = b.conv("conv1", "x", 3, 6, 3);
        let r = b.node("Relu", "relu", &[&c1], vec![]);
        let y = b.conv("conv2", &r, 6, 4, 1);
        let mut m = b.finish(&y);
        zero_channel(&mut m, "conv1.w", 2);
        zero_channel(&mut m, "conv1.b", 2);
        let (out, rep) = prune(&m, serde_json::json!({"ratio": 0.2}));
        assert_eq!(rep.counters["channels_removed"], 1);
        assert_eq!(dims(&out, "conv2.w"), [4, 5, 1, 1]);
        let x = input(&m);
        let (a, o) = (run_model(&m, &x), run_model(&out, &x));
        let (a, o) = (a[0].to_f64(), o[0].to_f64());
        for (p, q) in a.iter().zip(&o) {
            assert!((p - q).abs() < 1e-5, "{p} {q}");
        }
    }

    #[test]
    fn residual_adds_join_both_branches_in_one_group() {
        let mut b = B::new(&[1, 4, 6, 6]);
        let stem = b.conv("stem", "x", 4, 8, 3);
        let r0 = b.node("Relu", "r0", &[&stem], vec![]);
        let c1 = b.conv("c1", &r0, 8, 8, 3);
        let add = b.node("Add", "add", &[&r0, &c1], vec![]);
        let r1 = b.node("Relu", "r1", &[&add], vec![]);
        let y = b.conv("head", &r1, 8, 2, 1);
        let m = b.finish(&y);
        let (out, _) = prune(&m, serde_json::json!({"ratio": 0.25}));
        assert_eq!(dims(&out, "stem.w"), [6, 4, 3, 3]);
        assert_eq!(dims(&out, "c1.w"), [6, 6, 3, 3]);
        assert_eq!(dims(&out, "head.w"), [2, 6, 1, 1]);
    }

    #[test]
    fn concat_and_split_keep_their_offsets_and_sizes() {
        // YOLOv8's C2f: Conv → Split → (a, b → Conv) → Concat → Conv.
        let mut b = B::new(&[1, 3, 6, 6]);
        let c0 = b.conv("cv1", "x", 3, 8, 1);
        let sizes = b.ints("sizes", &[4, 4]);
        let mut split = Node::with_io("Split", "split", &[&c0, &sizes], &["s0", "s1"]);
        split.set_attr(Attribute::int("axis", 1));
        b.g.add_node(split);
        let m1 = b.conv("m1", "s1", 4, 4, 3);
        let cat = b.node(
            "Concat",
            "cat",
            &["s0", "s1", &m1],
            vec![Attribute::int("axis", 1)],
        );
        let y = b.conv("cv2", &cat, 12, 2, 1);
        let m = b.finish(&y);
        let (out, rep) = prune(&m, serde_json::json!({"ratio": 0.5}));
        // cv1's halves are two groups (2 of 4 each), m1's filters a third.
        assert_eq!(dims(&out, "cv1.w"), [4, 3, 1, 1]);
        assert_eq!(dims(&out, "m1.w"), [2, 2, 3, 3]);
        assert_eq!(dims(&out, "cv2.w"), [2, 6, 1, 1]);
        assert_eq!(rep.counters["groups_pruned"], 3);
        let split = out
            .graph
            .nodes()
            .find(|(_, n)| n.op_type() == "Split")
            .unwrap()
            .1
            .clone();
        assert_eq!(const_ints(&out.graph, &split.inputs[1]).unwrap(), [2, 2]);
    }

    #[test]
    fn depthwise_convs_follow_their_input_and_rewrite_group() {
        let mut b = B::new(&[1, 3, 6, 6]);
        let c0 = b.conv("pw", "x", 3, 8, 1);
        let w = b.weight("dw.w", &[8, 1, 3, 3]);
        let dw = b.node(
            "Conv",
            "dw",
            &[&c0, &w],
            vec![
                Attribute::int("group", 8),
                Attribute::ints("pads", vec![1, 1, 1, 1]),
            ],
        );
        let s = b.node("Sigmoid", "sig", &[&dw], vec![]);
        let silu = b.node("Mul", "silu", &[&dw, &s], vec![]);
        let y = b.conv("out", &silu, 8, 2, 1);
        let m = b.finish(&y);
        let (out, _) = prune(&m, serde_json::json!({"ratio": 0.5}));
        assert_eq!(dims(&out, "dw.w"), [4, 1, 3, 3]);
        let dw = out
            .graph
            .nodes()
            .find(|(_, n)| n.name() == "dw")
            .unwrap()
            .1
            .clone();
        assert_eq!(dw.attr_int("group"), Some(4));
    }

    #[test]
    fn grouped_convs_lose_the_same_channels_in_every_group_and_keep_group() {
        let mut m = crate::passes::prune::groups::tests::grouped_block();
        // Position 1 is dead: pw's filters 1 and 5 (weights, bias) and the
        // grouped weight's column 1 are zero, so it is removed first and the
        // outputs do not change.
        for c in [1, 5] {
            zero_channel(&mut m, "pw.w", c);
            zero_channel(&mut m, "pw.b", c);
        }
        let w = m.graph.initializer("gc.w").unwrap().clone();
        let mut v = w.to_f32().unwrap();
        for (k, x) in v.iter_mut().enumerate() {
            if (k / 9) % 4 == 1 {
                *x = 0.0;
            }
        }
        m.graph
            .replace_initializer(Tensor::from_f32("gc.w", w.dims.clone(), &v));
        // Only the input side: the grouped Conv's own outputs stay.
        let (out, rep) = prune(
            &m,
            serde_json::json!({"ratio": 0.25, "include_nodes": ["pw"]}),
        );
        assert_eq!(dims(&out, "pw.w"), [6, 3, 1, 1]);
        assert_eq!(dims(&out, "pw.b"), [6]);
        assert_eq!(dims(&out, "gc.w"), [8, 3, 3, 3]);
        let gc = |m: &Model| {
            m.graph
                .nodes()
                .find(|(_, n)| n.name() == "gc")
                .unwrap()
                .1
                .clone()
        };
        assert_eq!(gc(&out).attr_int("group"), Some(2));
        // Kept: pw filters 0, 2, 3 | 4, 6, 7 and the columns 0, 2, 3 of each group.
        let (p0, p1) = (
            m.graph.initializer("pw.w").unwrap().to_f32().unwrap(),
            out.graph.initializer("pw.w").unwrap().to_f32().unwrap(),
        );
        let kept: Vec<f32> = [0, 2, 3, 4, 6, 7]
            .iter()
            .flat_map(|&c| p0[c * 3..c * 3 + 3].to_vec())
            .collect();
        assert_eq!(p1, kept);
        let (g0, g1) = (v, out.graph.initializer("gc.w").unwrap().to_f32().unwrap());
        let kept: Vec<f32> = (0..8)
            .flat_map(|o| [0, 2, 3].map(|j| (o, j)))
            .flat_map(|(o, j)| g0[(o * 4 + j) * 9..(o * 4 + j + 1) * 9].to_vec())
            .collect();
        assert_eq!(g1, kept);
        let x = input(&m);
        let (a, o) = (
            run_model(&m, &x)[0].to_f64(),
            run_model(&out, &x)[0].to_f64(),
        );
        for (p, q) in a.iter().zip(&o) {
            assert!((p - q).abs() < 1e-5, "{p} {q}");
        }
        // Both sides: the grouped Conv's outputs lose a position of each group too.
        let (out, rep2) = prune(&m, serde_json::json!({"ratio": 0.5}));
        assert_eq!(dims(&out, "gc.w"), [4, 2, 3, 3]);
        assert_eq!(dims(&out, "gc.b"), [4]);
        assert_eq!(dims(&out, "head.w"), [4, 4, 1, 1]);
        assert_eq!(gc(&out).attr_int("group"), Some(2));
        assert!(rep2.counters["macs_after"] < rep2.counters["macs_before"]);
        let note = rep2.summary.join("\n");
        assert!(
            note.contains("grouped Conv gc: group 2 kept, per group 4 → 2 inputs, 4 → 2 outputs"),
            "{note}"
        );
        assert!(rep.details.iter().any(|d| d["grouped_convs"].is_array()));
        // round_to counts per group: ratio 0.25 asks for 3 of 4 per group, whose
        // 6 channels in all are a multiple of 2, but 3 per group is not: 4 stay.
        let (out, _) = prune(&m, serde_json::json!({"ratio": 0.25}));
        assert_eq!(dims(&out, "gc.w"), [6, 3, 3, 3]);
        let (out, _) = prune(&m, serde_json::json!({"ratio": 0.25, "round_to": 2}));
        assert_eq!(dims(&out, "gc.w"), [8, 4, 3, 3]);
    }

    #[test]
    fn global_pool_flatten_gemm_and_squeeze_excitation() {
        let mut b = B::new(&[1, 3, 6, 6]);
        let c0 = b.conv("c0", "x", 3, 8, 3);
        // Squeeze-excitation: x · HardSigmoid(Conv(Relu(Conv(GAP(x))))).
        let gap = b.node("GlobalAveragePool", "se.gap", &[&c0], vec![]);
        let s1 = b.conv("se.fc1", &gap, 8, 4, 1);
        let s1r = b.node("Relu", "se.relu", &[&s1], vec![]);
        let s2 = b.conv("se.fc2", &s1r, 4, 8, 1);
        let hs = b.node("HardSigmoid", "se.hs", &[&s2], vec![]);
        let se = b.node("Mul", "se.mul", &[&c0, &hs], vec![]);
        let gap2 = b.node("GlobalAveragePool", "gap", &[&se], vec![]);
        let fl = b.node("Flatten", "flat", &[&gap2], vec![]);
        let w = b.weight("fc.w", &[5, 8]);
        let bias = b.weight("fc.b", &[5]);
        let y = b.node(
            "Gemm",
            "fc",
            &[&fl, &w, &bias],
            vec![Attribute::int("transB", 1)],
        );
        let m = b.finish(&y);
        let (out, _) = prune(&m, serde_json::json!({"ratio": 0.5}));
        assert_eq!(dims(&out, "c0.w"), [4, 3, 3, 3]);
        assert_eq!(dims(&out, "se.fc2.w"), [4, 2, 1, 1]);
        assert_eq!(dims(&out, "se.fc1.w"), [2, 4, 1, 1]);
        assert_eq!(dims(&out, "fc.w"), [5, 4]);
    }

    #[test]
    fn flatten_of_a_spatial_map_removes_blocks_of_the_spatial_size() {
        let mut b = B::new(&[1, 3, 4, 4]);
        let c0 = b.conv("c0", "x", 3, 4, 3);
        let fl = b.node("Flatten", "flat", &[&c0], vec![]);
        let w = b.weight("fc.w", &[64, 3]);
        let y = b.node("MatMul", "fc", &[&fl, &w], vec![]);
        let m = b.finish(&y);
        let (out, _) = prune(&m, serde_json::json!({"ratio": 0.5}));
        assert_eq!(dims(&out, "fc.w"), [32, 3]);
    }

    /// Transformer block: FFN hidden units and attention heads.
    /// A one-layer encoder; `dynamic` computes the head Reshape shapes as
    /// PyTorch's exporter does for a dynamic batch (`Shape` -> `Gather` ->
    /// `Unsqueeze` -> `Concat` with constant head sizes).
    fn encoder(dynamic: bool) -> Model {
        let (s, d, h) = (5i64, 16i64, 4i64);
        let hd = d / h;
        let mut b = B::new(&[1, s, d]);
        let (lg, lb) = (b.weight("ln.g", &[d]), b.weight("ln.b", &[d]));
        let ln = b.node(
            "LayerNormalization",
            "ln",
            &["x", &lg, &lb],
            vec![Attribute::int("axis", -1)],
        );
        let mut heads = Vec::new();
        for p in ["q", "k", "v"] {
            let w = b.weight(&format!("{p}.w"), &[d, d]);
            let bias = b.weight(&format!("{p}.b"), &[d]);
            let mm = b.node("MatMul", &format!("{p}.mm"), &[&ln, &w], vec![]);
            let add = b.node("Add", &format!("{p}.add"), &[&mm, &bias], vec![]);
            let shape = if dynamic {
                let sh = b.node("Shape", &format!("{p}.shape_of"), &[&add], vec![]);
                let mut parts = Vec::new();
                for axis in 0..2 {
                    let i = b.ints(&format!("{p}.axis{axis}"), &[axis]);
                    let gather = b.node("Gather", &format!("{p}.dim{axis}"), &[&sh, &i], vec![]);
                    parts.push(gather);
                }
                let heads = b.ints(&format!("{p}.heads"), &[h, hd]);
                let (p0, p1) = (parts[0].clone(), parts[1].clone());
                b.node(
                    "Concat",
                    &format!("{p}.shape"),
                    &[&p0, &p1, &heads],
                    vec![Attribute::int("axis", 0)],
                )
            } else {
                b.ints(&format!("{p}.shape"), &[1, s, h, hd])
            };
            let r = b.node("Reshape", &format!("{p}.reshape"), &[&add, &shape], vec![]);
            let perm = if p == "k" {
                vec![0, 2, 3, 1]
            } else {
                vec![0, 2, 1, 3]
            };
            heads.push(b.node(
                "Transpose",
                &format!("{p}.t"),
                &[&r],
                vec![Attribute::ints("perm", perm)],
            ));
        }
        let qk = b.node("MatMul", "qk", &[&heads[0], &heads[1]], vec![]);
        let sm = b.node(
            "Softmax",
            "softmax",
            &[&qk],
            vec![Attribute::int("axis", -1)],
        );
        let av = b.node("MatMul", "av", &[&sm, &heads[2]], vec![]);
        let t = b.node(
            "Transpose",
            "o.t",
            &[&av],
            vec![Attribute::ints("perm", vec![0, 2, 1, 3])],
        );
        let shape = b.ints("o.shape", &[1, s, d]);
        let r = b.node("Reshape", "o.reshape", &[&t, &shape], vec![]);
        let wo = b.weight("o.w", &[d, d]);
        let o = b.node("MatMul", "o.mm", &[&r, &wo], vec![]);
        let res = b.node("Add", "res", &["x", &o], vec![]);
        let w1 = b.weight("ffn1.w", &[d, 32]);
        let b1 = b.weight("ffn1.b", &[32]);
        let f1 = b.node("MatMul", "ffn1", &[&res, &w1], vec![]);
        let f1b = b.node("Add", "ffn1.add", &[&f1, &b1], vec![]);
        let gelu = b.node("Erf", "erf", &[&f1b], vec![]);
        let gm = b.node("Mul", "gelu", &[&f1b, &gelu], vec![]);
        let w2 = b.weight("ffn2.w", &[32, d]);
        let f2 = b.node("MatMul", "ffn2", &[&gm, &w2], vec![]);
        let y = b.node("Add", "res2", &[&res, &f2], vec![]);
        b.finish(&y)
    }

    #[test]
    fn heads_prune_through_computed_reshape_shapes() {
        let m = encoder(true);
        let (out, _) = prune(&m, serde_json::json!({"ratio": 0.5}));
        assert_eq!(dims(&out, "q.w"), [16, 8]);
        assert_eq!(dims(&out, "o.w"), [8, 16]);
        // The constant piece of each computed shape says two heads; the
        // dynamic pieces still come from `Shape`.
        for p in ["q", "k", "v"] {
            let cat = out
                .graph
                .nodes()
                .find(|(_, n)| n.name() == format!("{p}.shape"))
                .map(|(_, n)| n.clone())
                .unwrap();
            assert_eq!(const_ints(&out.graph, &cat.inputs[2]).unwrap(), [2, 4]);
            assert!(cat.inputs[0].ends_with("dim0_out"));
        }
    }

    #[test]
    fn ffn_hidden_units_and_whole_attention_heads() {
        let m = encoder(false);
        let (out, rep) = prune(&m, serde_json::json!({"ratio": 0.5}));
        assert_eq!(dims(&out, "ffn1.w"), [16, 16]);
        assert_eq!(dims(&out, "ffn2.w"), [16, 16]);
        // Two of four heads of 4: Q/K/V columns, biases, the output projection's rows.
        assert_eq!(dims(&out, "q.w"), [16, 8]);
        assert_eq!(dims(&out, "k.b"), [8]);
        assert_eq!(dims(&out, "o.w"), [8, 16]);
        let shapes: Vec<Vec<i64>> = out
            .graph
            .nodes()
            .filter(|(_, n)| n.op_type() == "Reshape")
            .map(|(_, n)| const_ints(&out.graph, &n.inputs[1]).unwrap())
            .collect();
        assert!(shapes.contains(&vec![1, 5, 2, 4]), "{shapes:?}");
        assert!(shapes.contains(&vec![1, 5, 8]), "{shapes:?}");
        // The residual stream reaches the graph input and output: whole.
        assert!(rep.details.iter().any(|d| d["left_whole"]
            .as_str()
            .is_some_and(|w| w.contains("graph"))));
    }

    #[test]
    fn a_macs_target_is_met_across_groups() {
        let m = chain();
        let (_, rep) = prune(&m, serde_json::json!({"target": {"macs": 0.6}}));
        let (a, b) = (
            rep.counters["macs_after"] as f64,
            rep.counters["macs_before"] as f64,
        );
        assert!(a <= 0.6 * b, "{a} {b}");
        // Not much further than needed.
        assert!(a > 0.4 * b, "{a} {b}");
    }

    #[test]
    fn unreachable_targets_say_how_close_and_why() {
        let m = chain();
        let (_, rep) = prune(&m, serde_json::json!({"target": {"macs": 0.01}}));
        assert!(
            rep.warnings
                .iter()
                .any(|w| w.contains("cannot be reached") && w.contains("graph output")),
            "{:?}",
            rep.warnings
        );
    }

    #[test]
    fn min_channels_round_to_exclude_and_overrides() {
        let m = chain();
        let (out, _) = prune(&m, serde_json::json!({"ratio": 0.9, "min_channels": 3}));
        assert_eq!(dims(&out, "conv1.w")[0], 3);
        let (out, _) = prune(&m, serde_json::json!({"ratio": 0.5, "round_to": 3}));
        assert_eq!(dims(&out, "conv1.w")[0], 6);
        let (out, rep) = prune(
            &m,
            serde_json::json!({"ratio": 0.5, "exclude_nodes": ["conv2"]}),
        );
        assert_eq!(dims(&out, "conv1.w")[0], 8);
        assert!(rep.details.iter().any(|d| d["left_whole"]
            .as_str()
            .is_some_and(|w| w.contains("exclude_nodes[0]"))));
        let (out, _) = prune(
            &m,
            serde_json::json!({"ratio": 0.5, "overrides": {"conv1": {"ratio": 0.25}}}),
        );
        assert_eq!(dims(&out, "conv1.w")[0], 6);
        let (out, _) = prune(&m, serde_json::json!({"ratio": 0.5, "importance": "l2"}));
        assert_eq!(dims(&out, "conv1.w")[0], 4);
    }

    #[test]
    fn ops_without_a_rule_leave_their_group_whole() {
        let mut b = B::new(&[1, 3, 6, 6]);
        let c0 = b.conv("c0", "x", 3, 8, 3);
        let lrn = b.node("LRN", "lrn", &[&c0], vec![Attribute::int("size", 3)]);
        let y = b.conv("c1", &lrn, 8, 2, 1);
        let m = b.finish(&y);
        let (out, rep) = prune(&m, serde_json::json!({"ratio": 0.5}));
        assert_eq!(dims(&out, "c0.w")[0], 8);
        assert!(
            rep.details.iter().any(|d| d["left_whole"]
                .as_str()
                .is_some_and(|w| w.contains("LRN has no pruning rule"))),
            "{:?}",
            rep.details
        );
    }

    #[test]
    fn same_bytes_on_one_and_two_threads() {
        let m = encoder(true);
        let mut a = m.clone();
        let mut b = m.clone();
        let c = cfg(serde_json::json!({"target": {"params": 0.7}}));
        let ctx = |t| PassContext {
            threads: Some(t),
            ..Default::default()
        };
        run(&c, &mut a, &ctx(1)).unwrap();
        run(&c, &mut b, &ctx(2)).unwrap();
        assert_eq!(crate::onnx::encode(&a), crate::onnx::encode(&b));
    }

    #[test]
    fn bad_options_name_their_yaml_path() {
        let e = |v: serde_json::Value| crate::passes::parse_config::<Prune>(&v).unwrap_err();
        let r = e(serde_json::json!({"ratio": 1.0}));
        assert_eq!(
            (r.field.as_str(), r.message.as_str()),
            ("ratio", "must be in [0, 1), got 1")
        );
        assert_eq!(
            e(serde_json::json!({"target": {"macs": 0.0}})).field,
            "target.macs"
        );
        let r = e(serde_json::json!({"importance": "l3"}));
        assert_eq!(r.field, "importance");
        assert!(r.message.contains("did you mean `l1`"), "{}", r.message);
        assert_eq!(
            e(serde_json::json!({"ratio": 0.3, "target": {"macs": 0.5}})).field,
            "target"
        );
        let r = e(serde_json::json!({"ratio": 0.3, "sparsity": 0.5}));
        assert!(
            r.message.contains("applies to granularity"),
            "{}",
            r.message
        );
        assert_eq!(
            e(serde_json::json!({"overrides": {"a": {"ratio": 2.0}}})).field,
            "overrides.a.ratio"
        );
    }
}
