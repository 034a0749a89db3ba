//! Dependency groups for channel pruning (DepGraph, Fang et al., CVPR 2023).
//!
//! An *element* is one index of one axis of one tensor: `(tensor, axis, i)`.
//! Starting from the output channel axis of every selected compute node, the
//! analysis visits tensor axes and asks each node that produces or reads the
//! tensor which elements of its other tensors must go with each index
//! ([`couple`]); a union-find joins them. A connected set of elements is a
//! *channel* (one Conv filter, one FFN hidden unit, one attention head); the
//! channels that touch the same set of tensor axes form a *group* (one Conv's
//! filters, one half of a Split, one projection's heads).
//!
//! Nothing is guessed: an axis that reaches a graph input or output, an op
//! without a rule, a rule's precondition that fails (a Reshape whose shape
//! entry for the shrinking axis is computed, a `Shape` whose size of the axis
//! is read, a Pad that pads channels, a grouped ConvTranspose) *blocks* the axis, and
//! every group touching a blocked axis is left whole with the node and reason.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::ir::{DataType, Graph, Node, NodeId};

/// (index of one axis, index of another) pairs that go together.
type Pairs = Vec<(usize, usize)>;

/// Shapes of every tensor of the graph (inputs, initializers, node outputs).
pub type Shapes = BTreeMap<String, Vec<i64>>;

/// One tensor axis the analysis visited.
#[derive(Debug, Clone, PartialEq)]
pub struct Dim {
    /// The tensor.
    pub tensor: String,
    /// The axis.
    pub axis: usize,
    /// Its size.
    pub size: usize,
    /// Index of its first element in the union-find.
    base: usize,
}

/// A set of elements removed together.
#[derive(Debug, Clone, PartialEq)]
pub struct Channel {
    /// `(dim, index)` pairs, sorted.
    pub elements: Vec<(usize, usize)>,
}

/// Channels touching the same tensor axes.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    /// The dims its channels touch, sorted.
    pub dims: Vec<usize>,
    /// Its channels, ordered by their first element.
    pub channels: Vec<Channel>,
    /// Compute nodes whose output channels are in the group, in graph order.
    pub producers: Vec<String>,
    /// Compute nodes whose input channels (reduction axis) are in the group.
    pub consumers: Vec<String>,
    /// Why the group must stay whole: (node label, reason).
    pub blocked: Option<(String, String)>,
    /// Whether it holds the input or output channels of a grouped Conv
    /// (1 < group < C_in): its channel count is then a per-group width.
    pub grouped: bool,
}

/// The result of the analysis.
#[derive(Debug, Clone, Default)]
pub struct Analysis {
    /// Every visited tensor axis.
    pub dims: Vec<Dim>,
    /// Groups, in the graph order of their first producer.
    pub groups: Vec<Group>,
    index: BTreeMap<(String, usize), usize>,
}

impl Analysis {
    /// The dim of `(tensor, axis)`, if visited.
    pub fn dim(&self, tensor: &str, axis: usize) -> Option<usize> {
        self.index.get(&(tensor.to_string(), axis)).copied()
    }
}

/// A coupling found by a node's rule: index `pairs.0` of the visited axis
/// goes with index `pairs.1` of `(tensor, axis)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Link {
    /// The other tensor.
    pub tensor: String,
    /// Its axis.
    pub axis: usize,
    /// (visited index, other index) pairs.
    pub pairs: Vec<(usize, usize)>,
}

/// Where the visited tensor sits on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Input number.
    In(usize),
    /// Output number.
    Out(usize),
}

struct UnionFind(Vec<usize>);

impl UnionFind {
    fn find(&mut self, mut x: usize) -> usize {
        while self.0[x] != x {
            self.0[x] = self.0[self.0[x]];
            x = self.0[x];
        }
        x
    }
    fn union(&mut self, a: usize, b: usize) {
        let (ra, rb) = (self.find(a), self.find(b));
        // The smaller root wins: the result does not depend on visit order.
        if ra != rb {
            let (lo, hi) = (ra.min(rb), ra.max(rb));
            self.0[hi] = lo;
        }
    }
}

/// The output channel axis of a compute node with a constant weight, when it is one.
pub fn source_axis(g: &Graph, n: &Node, shapes: &Shapes) -> Option<usize> {
    let weight = |slot: usize| {
        n.inputs
            .get(slot)
            .is_some_and(|w| g.initializer(w).is_some())
    };
    let out = shapes.get(n.outputs.first()?)?;
    match n.op_type() {
        "Conv" | "ConvTranspose" if weight(1) && out.len() >= 3 => Some(1),
        "Gemm" if weight(1) && out.len() == 2 => Some(1),
        "MatMul" if weight(1) && out.len() >= 2 && shapes.get(&n.inputs[1])?.len() == 2 => {
            Some(out.len() - 1)
        }
        _ => None,
    }
}

/// Runs the analysis from the output channel axes of `sources`.
pub fn analyze(g: &Graph, shapes: &Shapes, sources: &[NodeId]) -> Analysis {
    let mut a = Analysis::default();
    let mut parent: Vec<usize> = Vec::new();
    let mut blocked: BTreeMap<usize, (String, String)> = BTreeMap::new();
    let mut queue: VecDeque<usize> = VecDeque::new();
    let mut links: Vec<(usize, usize, Pairs)> = Vec::new();

    let add_dim = |a: &mut Analysis,
                   parent: &mut Vec<usize>,
                   queue: &mut VecDeque<usize>,
                   tensor: &str,
                   axis: usize|
     -> Option<usize> {
        if let Some(&d) = a.index.get(&(tensor.to_string(), axis)) {
            return Some(d);
        }
        let size = usize::try_from(*shapes.get(tensor)?.get(axis)?).ok()?;
        let d = a.dims.len();
        a.dims.push(Dim {
            tensor: tensor.to_string(),
            axis,
            size,
            base: parent.len(),
        });
        parent.extend(parent.len()..parent.len() + size);
        a.index.insert((tensor.to_string(), axis), d);
        queue.push_back(d);
        Some(d)
    };

    for &id in sources {
        let n = g.node(id);
        if let (Some(axis), Some(out)) = (source_axis(g, n, shapes), n.outputs.first()) {
            add_dim(&mut a, &mut parent, &mut queue, out, axis);
        }
    }

    let mut visited: BTreeSet<(NodeId, usize)> = BTreeSet::new();
    while let Some(d) = queue.pop_front() {
        let (tensor, axis) = (a.dims[d].tensor.clone(), a.dims[d].axis);
        if g.is_output(&tensor) {
            blocked
                .entry(d)
                .or_insert(("graph".into(), format!("reaches graph output {tensor:?}")));
        }
        let mut touching: Vec<(NodeId, Slot)> = Vec::new();
        match g.producer(&tensor) {
            Some((p, o)) => touching.push((p, Slot::Out(o))),
            None if g.initializer(&tensor).is_some() => {}
            None => {
                blocked
                    .entry(d)
                    .or_insert(("graph".into(), format!("reaches graph input {tensor:?}")));
            }
        }
        touching.extend(
            g.uses(&tensor)
                .into_iter()
                .map(|u| (u.node, Slot::In(u.slot))),
        );
        for (id, slot) in touching {
            if !visited.insert((id, d)) {
                continue;
            }
            let n = g.node(id);
            match couple(g, shapes, n, slot, axis) {
                Ok(found) => {
                    for l in found {
                        match add_dim(&mut a, &mut parent, &mut queue, &l.tensor, l.axis) {
                            Some(other) => links.push((d, other, l.pairs)),
                            None => {
                                blocked.entry(d).or_insert((
                                    n.label(),
                                    format!("the shape of {:?} is not known", l.tensor),
                                ));
                            }
                        }
                    }
                }
                Err(reason) => {
                    blocked.entry(d).or_insert((n.label(), reason));
                }
            }
        }
    }

    let mut uf = UnionFind(parent);
    for (da, db, pairs) in &links {
        let (ba, sa) = (a.dims[*da].base, a.dims[*da].size);
        let (bb, sb) = (a.dims[*db].base, a.dims[*db].size);
        for &(i, j) in pairs {
            if i < sa && j < sb {
                uf.union(ba + i, bb + j);
            }
        }
    }
    // Channels: elements by root.
    let mut by_root: BTreeMap<usize, Vec<(usize, usize)>> = BTreeMap::new();
    for (d, dim) in a.dims.iter().enumerate() {
        for i in 0..dim.size {
            by_root
                .entry(uf.find(dim.base + i))
                .or_default()
                .push((d, i));
        }
    }
    // Groups: channels by the set of dims they touch.
    let mut by_dims: BTreeMap<Vec<usize>, Vec<Channel>> = BTreeMap::new();
    for (_, mut elements) in by_root {
        elements.sort();
        let mut dims: Vec<usize> = elements.iter().map(|e| e.0).collect();
        dims.dedup();
        by_dims.entry(dims).or_default().push(Channel { elements });
    }
    let position: BTreeMap<NodeId, usize> = g
        .topological_order()
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, id)| (id, i))
        .collect();
    let mut groups: Vec<(usize, Group)> = Vec::new();
    for (dims, mut channels) in by_dims {
        channels.sort_by(|x, y| x.elements.cmp(&y.elements));
        let mut producers: Vec<(usize, String)> = Vec::new();
        let mut consumers: Vec<(usize, String)> = Vec::new();
        let mut grouped = false;
        for &d in &dims {
            let dim = &a.dims[d];
            for u in g.uses(&dim.tensor) {
                let n = g.node(u.node);
                if n.op_type() == "Conv" && u.slot == 1 {
                    let group = n.attr_int("group").unwrap_or(1);
                    let cin = n
                        .inputs
                        .first()
                        .and_then(|x| shapes.get(x)?.get(1).copied());
                    grouped |= group > 1 && cin != Some(group);
                }
                let pos = position.get(&u.node).copied().unwrap_or(usize::MAX);
                if let Some(role) = weight_role(g, n, u.slot, dim.axis, shapes) {
                    let list = if role { &mut producers } else { &mut consumers };
                    list.push((pos, n.name().to_string()));
                }
            }
        }
        producers.sort();
        producers.dedup();
        consumers.sort();
        consumers.dedup();
        let block = dims.iter().find_map(|d| blocked.get(d).cloned());
        let first = producers.first().map_or(usize::MAX, |p| p.0);
        groups.push((
            first,
            Group {
                dims,
                channels,
                producers: producers.into_iter().map(|p| p.1).collect(),
                consumers: consumers.into_iter().map(|p| p.1).collect(),
                blocked: block,
                grouped,
            },
        ));
    }
    groups.sort_by(|x, y| (x.0, &x.1.dims).cmp(&(y.0, &y.1.dims)));
    a.groups = groups.into_iter().map(|g| g.1).collect();
    a
}

/// For a constant weight read at `slot` of compute node `n` along `axis`:
/// `Some(true)` when the axis is the node's output channel axis, `Some(false)`
/// when it is its reduction (input channel) axis, `None` otherwise.
pub fn weight_role(g: &Graph, n: &Node, slot: usize, axis: usize, shapes: &Shapes) -> Option<bool> {
    let w = n.inputs.get(slot)?;
    g.initializer(w)?;
    let rank = shapes.get(w)?.len();
    let t = |name: &str| n.attr_int(name) == Some(1);
    match (n.op_type(), slot) {
        ("Conv", 1) => Some(axis == 0).filter(|_| axis <= 1),
        ("ConvTranspose", 1) => Some(axis == 1).filter(|_| axis <= 1),
        ("Gemm", 1) if rank == 2 => Some(axis == usize::from(!t("transB"))),
        ("MatMul", 1) if rank == 2 => Some(axis == 1),
        _ => None,
    }
}

fn same(size: usize) -> Vec<(usize, usize)> {
    (0..size).map(|i| (i, i)).collect()
}

fn norm_axis(axis: i64, rank: usize) -> Option<usize> {
    let a = if axis < 0 { axis + rank as i64 } else { axis };
    usize::try_from(a).ok().filter(|&a| a < rank)
}

/// The int64 values of an initializer.
pub fn const_ints(g: &Graph, name: &str) -> Option<Vec<i64>> {
    let t = g.initializer(name)?;
    if t.dtype() != DataType::Int64 {
        return None;
    }
    t.to_i64().ok()
}

/// The entries of a Reshape's shape tensor `name`: all of a constant, or of a
/// Concat along axis 0 of constant and computed 1-D pieces (what exporters emit
/// for a dynamic batch: `Shape` -> `Gather` -> `Unsqueeze` -> `Concat`). `None`
/// marks a computed entry; the whole is `None` when neither form fits.
pub fn shape_entries(g: &Graph, shapes: &Shapes, name: &str) -> Option<Vec<Option<i64>>> {
    if let Some(c) = const_ints(g, name) {
        return Some(c.into_iter().map(Some).collect());
    }
    let n = g.node(g.producer(name)?.0);
    if n.op_type() != "Concat" || !n.domain().is_empty() || n.attr_int("axis").unwrap_or(0) != 0 {
        return None;
    }
    let mut entries = Vec::new();
    for piece in &n.inputs {
        match const_ints(g, piece) {
            Some(c) => entries.extend(c.into_iter().map(Some)),
            None => match shapes.get(piece)?.as_slice() {
                [len] => entries.extend((0..*len).map(|_| None)),
                _ => return None,
            },
        }
    }
    Some(entries)
}

/// An op's axes from its attribute (older opsets) or its constant input `slot`.
fn axes_of(g: &Graph, n: &Node, slot: usize) -> Result<Option<Vec<i64>>, String> {
    if let Some(a) = n.attr_ints("axes") {
        return Ok(Some(a.to_vec()));
    }
    match n.inputs.get(slot).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(v) => const_ints(g, v)
            .map(Some)
            .ok_or_else(|| format!("its axes {v:?} are computed, not a constant")),
    }
}

const UNARY: &[&str] = &[
    "Relu",
    "LeakyRelu",
    "Sigmoid",
    "HardSigmoid",
    "HardSwish",
    "Tanh",
    "Erf",
    "Gelu",
    "Elu",
    "Selu",
    "Celu",
    "Softplus",
    "Softsign",
    "Mish",
    "Neg",
    "Abs",
    "Sqrt",
    "Exp",
    "Log",
    "Reciprocal",
    "Floor",
    "Ceil",
    "Round",
    "Sign",
    "Sin",
    "Cos",
    "Identity",
    "Dropout",
    "Cast",
    "Clip",
    "ThresholdedRelu",
];

const BROADCAST: &[&str] = &[
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "PRelu", "Where",
];

/// The couplings node `n` imposes on axis `axis` of the tensor at `slot`:
/// the other tensor axes whose indices must go with it, or why it cannot.
pub fn couple(
    g: &Graph,
    shapes: &Shapes,
    n: &Node,
    slot: Slot,
    axis: usize,
) -> Result<Vec<Link>, String> {
    if !n.domain().is_empty() && n.domain() != "ai.onnx" {
        return Err(format!(
            "op {}:{} has no pruning rule",
            n.domain(),
            n.op_type()
        ));
    }
    if n.has_subgraphs() {
        return Err("control flow reads this tensor".into());
    }
    let shape = |v: &str| -> Result<Vec<i64>, String> {
        shapes
            .get(v)
            .cloned()
            .ok_or_else(|| format!("the shape of {v:?} is not known"))
    };
    let input = |i: usize| n.inputs.get(i).filter(|v| !v.is_empty()).cloned();
    let out0 = n.outputs.first().cloned().unwrap_or_default();
    let link = |tensor: &str, axis: usize, pairs: Vec<(usize, usize)>| Link {
        tensor: tensor.to_string(),
        axis,
        pairs,
    };
    let size_of = |v: &str, a: usize| -> Result<usize, String> {
        shape(v)?
            .get(a)
            .and_then(|&d| usize::try_from(d).ok())
            .ok_or_else(|| format!("{v:?} has no axis {a}"))
    };
    let op = n.op_type();
    if UNARY.contains(&op) {
        // Only the first input and output carry data (Clip's bounds and
        // Dropout's ratio are scalars).
        return match slot {
            Slot::In(0) => Ok(vec![link(&out0, axis, same(size_of(&out0, axis)?))]),
            Slot::Out(0) => {
                let x = input(0).unwrap_or_default();
                Ok(vec![link(&x, axis, same(size_of(&x, axis)?))])
            }
            Slot::Out(_) => Err("its second output (mask) is used".into()),
            Slot::In(_) => Err(format!("{op}'s bound follows this axis")),
        };
    }
    if BROADCAST.contains(&op) {
        let ry = shape(&out0)?.len();
        let out_axis = match slot {
            Slot::Out(_) => axis,
            Slot::In(i) => {
                let r = shape(&n.inputs[i])?.len();
                axis + ry - r
            }
        };
        let c = size_of(&out0, out_axis)?;
        let mut links = vec![];
        if !matches!(slot, Slot::Out(_)) {
            links.push(link(&out0, out_axis, same(c)));
        }
        for (i, v) in n.inputs.iter().enumerate() {
            if v.is_empty() || slot == Slot::In(i) {
                continue;
            }
            let s = shape(v)?;
            let Some(a) = (out_axis + s.len()).checked_sub(ry) else {
                continue;
            };
            match s.get(a) {
                Some(1) if c != 1 => {} // broadcast: one value for every channel
                Some(&d) if d as usize == c => links.push(link(v, a, same(c))),
                _ => return Err(format!("{v:?} does not broadcast along this axis")),
            }
        }
        return Ok(links);
    }
    match op {
        "Conv" | "ConvTranspose" => {
            let group = n.attr_int("group").unwrap_or(1);
            let x = input(0).unwrap_or_default();
            let w = input(1).ok_or("no weight")?;
            let b = input(2);
            let ws = shape(&w)?;
            let transpose = op == "ConvTranspose";
            // Weight axis holding output channels / input channels.
            let (w_out, w_in) = if transpose { (1, 0) } else { (0, 1) };
            let cin = size_of(&x, 1)?;
            let cout = size_of(&out0, 1)?;
            let depthwise =
                !transpose && group > 1 && group as usize == cin && ws.get(1) == Some(&1);
            // Grouped (1 < group < C_in): output channel o belongs to group
            // o / (C_out/g) and reads input channels k·(C_in/g).. of its group k.
            // Pruning keeps `group`: position p of every group goes together
            // (input side: X channels p, p + C_in/g, ...; output side: Y
            // channels p, p + C_out/g, ...), so every group loses as many.
            let g_us = usize::try_from(group).unwrap_or(0);
            let grouped = !transpose
                && group > 1
                && !depthwise
                && cin >= g_us
                && cout >= g_us
                && cin % g_us == 0
                && cout % g_us == 0
                && ws.get(1).copied() == Some((cin / g_us) as i64);
            if group != 1 && !depthwise && !grouped {
                return Err(format!(
                    "grouped {op} (group {group} of {cin} input channels) has no pruning rule"
                ));
            }
            let g_n = if grouped { g_us } else { 1 };
            let (ipg, opg) = (cin / g_n, cout / g_n);
            // Output channel o with the same position in every group.
            let out_pairs: Pairs = if grouped {
                (0..cout)
                    .flat_map(|o| (0..g_n).map(move |k| (o, o % opg + k * opg)))
                    .collect()
            } else {
                same(cout)
            };
            let is_axis = |want: usize| {
                if axis == want {
                    Ok(())
                } else {
                    Err(format!("{op} mixes axis {axis} of this tensor"))
                }
            };
            let mult = if depthwise { cout / cin.max(1) } else { 1 };
            // Output side: Y[1], W[w_out], B[0]; depthwise also X[1] (o / mult).
            let out_side = |skip: Option<&str>| {
                let mut l = vec![];
                let pairs = out_pairs.clone();
                for (t, a) in [(out0.as_str(), 1), (w.as_str(), w_out)] {
                    if Some(t) != skip {
                        l.push(link(t, a, pairs.clone()));
                    }
                }
                if let Some(b) = &b {
                    if Some(b.as_str()) != skip {
                        l.push(link(b, 0, pairs.clone()));
                    }
                }
                if depthwise && Some(x.as_str()) != skip {
                    l.push(link(&x, 1, (0..cout).map(|o| (o, o / mult)).collect()));
                }
                l
            };
            return match slot {
                Slot::Out(0) => {
                    is_axis(1)?;
                    Ok(out_side(Some(out0.as_str())))
                }
                Slot::In(2) => {
                    is_axis(0)?;
                    Ok(out_side(b.as_deref()))
                }
                Slot::In(1) if axis == w_out => Ok(out_side(Some(w.as_str()))),
                Slot::In(1) if axis == w_in && !depthwise => {
                    // Weight column j is input channel j of every group.
                    let pairs = (0..ipg)
                        .flat_map(|j| (0..g_n).map(move |k| (j, j + k * ipg)))
                        .collect();
                    Ok(vec![link(&x, 1, pairs)])
                }
                Slot::In(0) => {
                    is_axis(1)?;
                    if depthwise {
                        // X channel c goes with output channels c·mult..(c+1)·mult.
                        let l = out_side(Some(x.as_str()));
                        Ok(l.into_iter()
                            .map(|mut l| {
                                l.pairs = l.pairs.into_iter().map(|(o, _)| (o / mult, o)).collect();
                                l
                            })
                            .collect())
                    } else {
                        Ok(vec![link(
                            &w,
                            w_in,
                            (0..cin).map(|c| (c, c % ipg)).collect(),
                        )])
                    }
                }
                _ => Err(format!("{op} mixes axis {axis} of this tensor")),
            };
        }
        "Gemm" => {
            let (ta, tb) = (
                n.attr_int("transA") == Some(1),
                n.attr_int("transB") == Some(1),
            );
            let a = input(0).unwrap_or_default();
            let b = input(1).unwrap_or_default();
            let c = input(2);
            let (a_m, a_k) = if ta { (1, 0) } else { (0, 1) };
            let (b_k, b_n) = if tb { (1, 0) } else { (0, 1) };
            let k = size_of(&a, a_k)?;
            let nn = size_of(&out0, 1)?;
            let m = size_of(&out0, 0)?;
            let bias = |y_axis: usize, size: usize| -> Result<Vec<Link>, String> {
                let Some(c) = &c else { return Ok(vec![]) };
                let s = shape(c)?;
                let Some(ca) = (y_axis + s.len()).checked_sub(2) else {
                    return Ok(vec![]);
                };
                match s.get(ca) {
                    Some(&d) if d as usize == size && size != 1 => {
                        Ok(vec![link(c, ca, same(size))])
                    }
                    _ => Ok(vec![]),
                }
            };
            let n_side = |skip: &str| -> Result<Vec<Link>, String> {
                let mut l: Vec<Link> = bias(1, nn)?
                    .into_iter()
                    .filter(|l| l.tensor != skip)
                    .collect();
                if skip != out0 {
                    l.push(link(&out0, 1, same(nn)));
                }
                if skip != b {
                    l.push(link(&b, b_n, same(nn)));
                }
                Ok(l)
            };
            return match slot {
                Slot::In(0) if axis == a_k => Ok(vec![link(&b, b_k, same(k))]),
                Slot::In(1) if axis == b_k => Ok(vec![link(&a, a_k, same(k))]),
                Slot::In(1) if axis == b_n => n_side(&b),
                Slot::Out(0) if axis == 1 => n_side(&out0),
                Slot::In(2) => {
                    let s = shape(c.as_deref().unwrap_or_default())?;
                    match axis + 2 - s.len() {
                        1 => n_side(c.as_deref().unwrap_or_default()),
                        _ => Err("Gemm's bias follows its rows".into()),
                    }
                }
                Slot::In(0) if axis == a_m => Err(format!("Gemm's rows ({m}) follow this axis")),
                _ => Err("Gemm's rows follow this axis".into()),
            };
        }
        "MatMul" => {
            let a = input(0).unwrap_or_default();
            let b = input(1).unwrap_or_default();
            let (sa, sb, sy) = (shape(&a)?, shape(&b)?, shape(&out0)?);
            let (ra, rb, ry) = (sa.len(), sb.len(), sy.len());
            if ra < 2 || rb < 2 {
                return Err("MatMul with a 1-D operand has no pruning rule".into());
            }
            // (tensor, axis) → role: K (reduction), M/N (output), or batch index in Y.
            #[derive(PartialEq)]
            enum R {
                K,
                Y(usize),
            }
            let role = |t: usize, ax: usize| -> R {
                match t {
                    0 if ax == ra - 1 => R::K,
                    0 if ax == ra - 2 => R::Y(ry - 2),
                    1 if ax == rb - 2 => R::K,
                    1 if ax == rb - 1 => R::Y(ry - 1),
                    0 => R::Y(ax + ry - ra),
                    1 => R::Y(ax + ry - rb),
                    _ => R::Y(ax),
                }
            };
            let here = match slot {
                Slot::In(0) => role(0, axis),
                Slot::In(1) => role(1, axis),
                _ => R::Y(axis),
            };
            let mut l = vec![];
            let members: [(usize, &str, usize); 3] = [
                (0, a.as_str(), ra),
                (1, b.as_str(), rb),
                (2, out0.as_str(), ry),
            ];
            let me = match slot {
                Slot::In(i) => i,
                _ => 2,
            };
            for (t, name, r) in members {
                if t == me {
                    continue;
                }
                for ax in 0..r {
                    if t == 2 && here == R::Y(ax) {
                        l.push(link(name, ax, same(size_of(name, ax)?)));
                    } else if t < 2 && role(t, ax) == here {
                        let size = size_of(name, ax)?;
                        if size == 1 && here != R::K {
                            continue; // broadcast batch dim
                        }
                        l.push(link(name, ax, same(size)));
                    }
                }
            }
            let here_size = match slot {
                Slot::In(i) => size_of(&n.inputs[i], axis)?,
                _ => size_of(&out0, axis)?,
            };
            for x in &l {
                if x.pairs.len() != here_size {
                    return Err(format!("MatMul broadcasts {:?} along this axis", x.tensor));
                }
            }
            return Ok(l);
        }
        "BatchNormalization" | "InstanceNormalization" => {
            if n.outputs.iter().skip(1).any(|o| !o.is_empty()) {
                return Err("BatchNormalization in training mode".into());
            }
            let x = input(0).unwrap_or_default();
            let c = size_of(&x, 1)?;
            let params: Vec<String> = n
                .inputs
                .iter()
                .skip(1)
                .filter(|v| !v.is_empty())
                .cloned()
                .collect();
            let mut members = vec![(x.clone(), 1), (out0.clone(), 1)];
            members.extend(params.iter().map(|p| (p.clone(), 0)));
            let (me, my_axis) = match slot {
                Slot::In(0) => (x.clone(), axis),
                Slot::Out(0) => (out0.clone(), axis),
                Slot::In(i) => (n.inputs[i].clone(), axis + 1),
                _ => return Err("second output".into()),
            };
            if my_axis != 1 {
                // Other axes of X/Y pass straight through.
                return match slot {
                    Slot::In(0) => Ok(vec![link(&out0, axis, same(size_of(&out0, axis)?))]),
                    Slot::Out(0) => Ok(vec![link(&x, axis, same(size_of(&x, axis)?))]),
                    _ => Err("parameter axis".into()),
                };
            }
            return Ok(members
                .into_iter()
                .filter(|(t, _)| *t != me)
                .map(|(t, a)| link(&t, a, same(c)))
                .collect());
        }
        "LayerNormalization" => {
            let x = input(0).unwrap_or_default();
            let r = shape(&x)?.len();
            let first = norm_axis(n.attr_int("axis").unwrap_or(-1), r).ok_or("bad axis")?;
            if axis >= first || !matches!(slot, Slot::In(0) | Slot::Out(0)) {
                return Err("LayerNormalization normalizes over this axis".into());
            }
            let other = if slot == Slot::In(0) {
                out0.clone()
            } else {
                x.clone()
            };
            return Ok(vec![link(&other, axis, same(size_of(&other, axis)?))]);
        }
        "Softmax" | "LogSoftmax" | "Hardmax" => {
            let x = input(0).unwrap_or_default();
            let r = shape(&x)?.len();
            // Opsets before 13 flatten from `axis` (default 1) on; from 13 only
            // `axis` (default -1) is normalized: without the attribute, assume the wider.
            let s = norm_axis(n.attr_int("axis").unwrap_or(1.min(r as i64 - 1)), r)
                .ok_or("bad axis")?;
            if axis >= s {
                return Err(format!("{op} normalizes over this axis"));
            }
            let other = if slot == Slot::In(0) {
                out0.clone()
            } else {
                x.clone()
            };
            return Ok(vec![link(&other, axis, same(size_of(&other, axis)?))]);
        }
        "MaxPool" | "AveragePool" | "LpPool" | "GlobalAveragePool" | "GlobalMaxPool"
        | "GlobalLpPool" => {
            if n.outputs.iter().skip(1).any(|o| !o.is_empty()) {
                return Err("MaxPool's indices are used".into());
            }
            if axis >= 2 {
                return Err(format!("{op} pools over this axis"));
            }
            let x = input(0).unwrap_or_default();
            let other = if slot == Slot::In(0) {
                out0.clone()
            } else {
                x.clone()
            };
            return Ok(vec![link(&other, axis, same(size_of(&other, axis)?))]);
        }
        "Pad" => {
            if !matches!(slot, Slot::In(0) | Slot::Out(0)) {
                return Err("Pad's pads follow this axis".into());
            }
            let x = input(0).unwrap_or_default();
            let r = shape(&x)?.len();
            let pads = match n.attr_ints("pads") {
                Some(p) => p.to_vec(),
                None => {
                    let p = input(1).ok_or("no pads")?;
                    const_ints(g, &p).ok_or_else(|| format!("its pads {p:?} are computed"))?
                }
            };
            let axes = axes_of(g, n, 3)?;
            let padded = match axes {
                None => {
                    pads.get(axis).copied().unwrap_or(0) != 0
                        || pads.get(axis + r).copied().unwrap_or(0) != 0
                }
                Some(ax) => {
                    let k = ax.len();
                    ax.iter().enumerate().any(|(i, &a)| {
                        norm_axis(a, r) == Some(axis)
                            && (pads.get(i) != Some(&0) || pads.get(i + k) != Some(&0))
                    })
                }
            };
            if padded {
                return Err("Pad pads this axis".into());
            }
            let other = if slot == Slot::In(0) {
                out0.clone()
            } else {
                x.clone()
            };
            return Ok(vec![link(&other, axis, same(size_of(&other, axis)?))]);
        }
        "Resize" | "Upsample" => {
            if !matches!(slot, Slot::In(0) | Slot::Out(0)) {
                return Err(format!("{op}'s scales or sizes follow this axis"));
            }
            let x = input(0).unwrap_or_default();
            if op == "Resize" && input(3).is_some() {
                return Err("Resize with `sizes` (they would need rewriting)".into());
            }
            if size_of(&x, axis)? != size_of(&out0, axis)? {
                return Err(format!("{op} scales this axis"));
            }
            let other = if slot == Slot::In(0) {
                out0.clone()
            } else {
                x.clone()
            };
            return Ok(vec![link(&other, axis, same(size_of(&other, axis)?))]);
        }
        "Transpose" => {
            let x = input(0).unwrap_or_default();
            let r = shape(&x)?.len();
            let perm: Vec<usize> = match n.attr_ints("perm") {
                Some(p) => p.iter().map(|&a| a as usize).collect(),
                None => (0..r).rev().collect(),
            };
            return match slot {
                Slot::In(0) => {
                    let j = perm.iter().position(|&p| p == axis).ok_or("bad perm")?;
                    Ok(vec![link(&out0, j, same(size_of(&out0, j)?))])
                }
                _ => {
                    let i = *perm.get(axis).ok_or("bad perm")?;
                    Ok(vec![link(&x, i, same(size_of(&x, i)?))])
                }
            };
        }
        "Squeeze" | "Unsqueeze" => {
            if !matches!(slot, Slot::In(0) | Slot::Out(0)) {
                return Err(format!("{op}'s axes follow this axis"));
            }
            let x = input(0).unwrap_or_default();
            let (sx, sy) = (shape(&x)?, shape(&out0)?);
            let axes = axes_of(g, n, 1)?;
            // Map input axes to output axes by skipping the inserted/removed ones.
            let (long, short) = if op == "Unsqueeze" {
                (&sy, &sx)
            } else {
                (&sx, &sy)
            };
            let removed: Vec<usize> = match axes {
                Some(a) => a.iter().filter_map(|&v| norm_axis(v, long.len())).collect(),
                None => (0..long.len()).filter(|&i| long[i] == 1).collect(),
            };
            let kept: Vec<usize> = (0..long.len()).filter(|i| !removed.contains(i)).collect();
            if kept.len() != short.len() {
                return Err(format!("{op}'s axes do not match the shapes"));
            }
            let (from_long, here) = match (op, slot) {
                ("Unsqueeze", Slot::Out(_)) | ("Squeeze", Slot::In(_)) => (true, axis),
                _ => (false, axis),
            };
            let target = if from_long {
                kept.iter()
                    .position(|&k| k == here)
                    .ok_or(format!("{op} removes this axis"))?
            } else {
                *kept.get(here).ok_or("bad axis")?
            };
            let other = if slot == Slot::In(0) {
                out0.clone()
            } else {
                x.clone()
            };
            return Ok(vec![link(&other, target, same(size_of(&other, target)?))]);
        }
        "Concat" | "Split" => {
            let concat = op == "Concat";
            let whole = if concat {
                out0.clone()
            } else {
                input(0).unwrap_or_default()
            };
            let r = shape(&whole)?.len();
            let cat = norm_axis(n.attr_int("axis").unwrap_or(0), r).ok_or("bad axis")?;
            let parts: Vec<String> = if concat {
                n.inputs.clone()
            } else {
                n.outputs.clone()
            };
            if parts.iter().any(|p| p.is_empty()) {
                return Err(format!("{op} with an omitted part"));
            }
            if !concat && !matches!(slot, Slot::In(0) | Slot::Out(_)) {
                return Err("Split's sizes follow this axis".into());
            }
            let is_whole = matches!((concat, slot), (true, Slot::Out(_)) | (false, Slot::In(0)));
            let me = match slot {
                Slot::In(i) => n.inputs[i].clone(),
                Slot::Out(i) => n.outputs[i].clone(),
            };
            if axis != cat {
                // Every part and the whole share this axis.
                let c = size_of(&me, axis)?;
                let mut l: Vec<Link> = parts
                    .iter()
                    .filter(|p| **p != me)
                    .map(|p| link(p, axis, same(c)))
                    .collect();
                if !is_whole {
                    l.push(link(&whole, axis, same(c)));
                }
                return Ok(l);
            }
            let mut offset = 0;
            let mut l = vec![];
            for p in &parts {
                let len = size_of(p, cat)?;
                if is_whole {
                    l.push(link(p, cat, (0..len).map(|j| (offset + j, j)).collect()));
                } else if *p == me {
                    l.push(link(
                        &whole,
                        cat,
                        (0..len).map(|j| (j, offset + j)).collect(),
                    ));
                }
                offset += len;
            }
            return Ok(l);
        }
        "Flatten" | "Reshape" => {
            if !matches!(slot, Slot::In(0) | Slot::Out(0)) {
                return Err(format!("{op}'s shape follows this axis"));
            }
            let x = input(0).unwrap_or_default();
            let (sx, sy) = (shape(&x)?, shape(&out0)?);
            let links = reshape_links(&sx, &sy, slot == Slot::In(0), axis, &x, &out0)?;
            if op == "Reshape" {
                let s = input(1).ok_or("no shape")?;
                let entries = shape_entries(g, shapes, &s).ok_or_else(|| {
                    format!("its shape {s:?} is computed, not a constant that could be rewritten")
                })?;
                // The entry of the output axis that shrinks must be a constant.
                let out_axis = if slot == Slot::In(0) {
                    links.first().map_or(axis, |l| l.axis)
                } else {
                    axis
                };
                if entries.get(out_axis).copied().flatten().is_none() {
                    return Err(format!(
                        "entry {out_axis} of its shape {s:?} is computed, not a constant that could be rewritten"
                    ));
                }
            }
            return Ok(links);
        }
        "Shape" => {
            // Shape reads only sizes: fine when no one reads this axis's size.
            let rank = shape(&input(0).unwrap_or_default())?.len() as i64;
            let start = n.attr_int("start").unwrap_or(0);
            let start = if start < 0 { start + rank } else { start }.clamp(0, rank);
            for u in g.uses(&out0) {
                let user = g.node(u.node);
                let picked = (user.op_type() == "Gather"
                    && user.domain().is_empty()
                    && u.slot == 0
                    && user.attr_int("axis").unwrap_or(0) == 0)
                    .then(|| user.inputs.get(1).and_then(|i| const_ints(g, i)))
                    .flatten();
                let Some(picked) = picked else {
                    return Err(format!(
                        "the size of this axis may be read through {}",
                        user.label()
                    ));
                };
                if picked.iter().any(|&p| {
                    let p = if p < 0 { p + rank - start } else { p };
                    start + p == axis as i64
                }) {
                    return Err(format!("{} reads the size of this axis", user.label()));
                }
            }
            return Ok(vec![]);
        }
        _ => {}
    }
    Err(format!("{op} has no pruning rule"))
}

/// Pairs contiguous axes of `from` and `to` with equal products.
fn segments(d: &[i64], e: &[i64]) -> Option<Vec<(std::ops::Range<usize>, std::ops::Range<usize>)>> {
    let (n, m) = (d.len(), e.len());
    let (mut i, mut j) = (0, 0);
    let mut segs: Vec<(std::ops::Range<usize>, std::ops::Range<usize>)> = Vec::new();
    while i < n && j < m {
        let (i0, j0) = (i, j);
        let (mut pi, mut pj) = (*d.get(i)?, *e.get(j)?);
        i += 1;
        j += 1;
        while pi != pj {
            if pi < pj {
                pi = pi.checked_mul(*d.get(i)?)?;
                i += 1;
            } else {
                pj = pj.checked_mul(*e.get(j)?)?;
                j += 1;
            }
        }
        segs.push((i0..i, j0..j));
    }
    if let Some(last) = segs.last_mut() {
        last.0.end = n;
        last.1.end = m;
    }
    (d[i.min(n)..].iter().chain(&e[j.min(m)..]).all(|&x| x == 1)).then_some(segs)
}

fn reshape_links(
    sx: &[i64],
    sy: &[i64],
    from_input: bool,
    axis: usize,
    x: &str,
    y: &str,
) -> Result<Vec<Link>, String> {
    let segs = segments(sx, sy).ok_or("the reshape does not split or merge whole axes")?;
    let (here_dims, there_dims) = if from_input { (sx, sy) } else { (sy, sx) };
    let seg = segs
        .iter()
        .find(|(i, j)| {
            if from_input {
                i.contains(&axis)
            } else {
                j.contains(&axis)
            }
        })
        .ok_or("bad axis")?;
    let (here, there) = if from_input {
        (seg.0.clone(), seg.1.clone())
    } else {
        (seg.1.clone(), seg.0.clone())
    };
    let nontrivial = |dims: &[i64], r: &std::ops::Range<usize>| -> Vec<usize> {
        r.clone().filter(|&a| dims[a] != 1).collect()
    };
    let (hn, tn) = (nontrivial(here_dims, &here), nontrivial(there_dims, &there));
    let other = if from_input { y } else { x };
    if hn.len() <= 1 && tn.len() <= 1 {
        let t = tn.first().copied().unwrap_or(there.start);
        let size = here_dims[axis] as usize;
        return Ok(vec![Link {
            tensor: other.to_string(),
            axis: t,
            pairs: same(size),
        }]);
    }
    let comp = |dims: &[i64], r: &std::ops::Range<usize>, a: usize, p: usize| -> usize {
        let stride: i64 = dims[a + 1..r.end].iter().product();
        (p / stride.max(1) as usize) % dims[a].max(1) as usize
    };
    let total: i64 = here_dims[here.clone()].iter().product();
    let total = total as usize;
    if tn.len() == 1 {
        // Merge (from here's view the other side is one axis): any axis of the merged ones.
        let t = tn[0];
        return Ok(vec![Link {
            tensor: other.to_string(),
            axis: t,
            pairs: (0..total)
                .map(|p| (comp(here_dims, &here, axis, p), p))
                .collect(),
        }]);
    }
    if hn.len() == 1 {
        // Split: only the outermost part may shrink (whole heads).
        let t = tn[0];
        return Ok(vec![Link {
            tensor: other.to_string(),
            axis: t,
            pairs: (0..total)
                .map(|p| (p, comp(there_dims, &there, t, p)))
                .collect(),
        }]);
    }
    Err("the reshape regroups several axes into several axes".into())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::ir::Attribute;
    use crate::passes::prune::channel::tests::B;

    /// pw (3 → 8) → Relu → grouped 3x3 (8 → 8, group 2) → Relu → head (8 → 4).
    pub fn grouped_block() -> crate::ir::Model {
        let mut b = B::new(&[1, 3, 6, 6]);
        let pw = b.conv("pw", "x", 3, 8, 1);
        let r0 = b.node("Relu", "r0", &[&pw], vec![]);
        let w = b.weight("gc.w", &[8, 4, 3, 3]);
        let bias = b.weight("gc.b", &[8]);
        let gc = b.node(
            "Conv",
            "gc",
            &[&r0, &w, &bias],
            vec![
                Attribute::int("group", 2),
                Attribute::ints("pads", vec![1, 1, 1, 1]),
            ],
        );
        let r1 = b.node("Relu", "r1", &[&gc], vec![]);
        let y = b.conv("head", &r1, 8, 4, 1);
        b.finish(&y)
    }

    #[test]
    fn grouped_conv_couples_the_same_position_of_every_group() {
        let m = grouped_block();
        let g = &m.graph;
        let shapes = crate::passes::prune::channel::shapes(&m, &Default::default()).unwrap();
        let a = analyze(g, &shapes, &g.node_ids());
        let elements = |grp: &Group, tensor: &str, axis: usize| -> Vec<Vec<usize>> {
            let d = a.dim(tensor, axis).unwrap();
            grp.channels
                .iter()
                .map(|c| {
                    c.elements
                        .iter()
                        .filter(|e| e.0 == d)
                        .map(|e| e.1)
                        .collect()
                })
                .collect()
        };
        // Input side: pw's filter p goes with p + 4 (the same position of the
        // other group) and with column p of the grouped weight.
        let pw = a.groups.iter().find(|x| x.producers == ["pw"]).unwrap();
        assert!(pw.blocked.is_none(), "{:?}", pw.blocked);
        assert_eq!(pw.consumers, ["gc"]);
        assert_eq!(
            elements(pw, "pw_out", 1),
            [vec![0, 4], vec![1, 5], vec![2, 6], vec![3, 7]]
        );
        assert_eq!(
            elements(pw, "gc.w", 1),
            [vec![0], vec![1], vec![2], vec![3]]
        );
        // Output side: output p of group 0 goes with p + 4 of group 1, in the
        // weight rows, the bias and the head's columns.
        let gc = a.groups.iter().find(|x| x.producers == ["gc"]).unwrap();
        assert!(gc.blocked.is_none(), "{:?}", gc.blocked);
        assert_eq!(gc.consumers, ["head"]);
        for (t, ax) in [("gc_out", 1), ("gc.w", 0), ("gc.b", 0), ("head.w", 1)] {
            assert_eq!(
                elements(gc, t, ax),
                [vec![0, 4], vec![1, 5], vec![2, 6], vec![3, 7]],
                "{t}"
            );
        }
    }

    #[test]
    fn grouped_conv_transpose_is_still_refused() {
        let mut b = B::new(&[1, 4, 6, 6]);
        let pw = b.conv("pw", "x", 4, 4, 1);
        let w = b.weight("ct.w", &[4, 2, 3, 3]);
        let ct = b.node(
            "ConvTranspose",
            "ct",
            &[&pw, &w],
            vec![Attribute::int("group", 2)],
        );
        let m = b.finish(&ct);
        let g = &m.graph;
        let shapes = crate::passes::prune::channel::shapes(&m, &Default::default()).unwrap();
        let a = analyze(g, &shapes, &g.node_ids());
        let pw = a.groups.iter().find(|x| x.producers == ["pw"]).unwrap();
        let (node, why) = pw.blocked.clone().unwrap();
        assert!(
            node.contains("ct") && why.contains("grouped ConvTranspose"),
            "{why}"
        );
    }

    #[test]
    fn segments_pair_merged_and_split_axes() {
        let s = segments(&[1, 8, 1, 1], &[1, 8]).unwrap();
        assert_eq!(s, vec![(0..1, 0..1), (1..4, 1..2)]);
        let s = segments(&[2, 5, 768], &[2, 5, 12, 64]).unwrap();
        assert_eq!(s[2], (2..3, 2..4));
        assert!(
            segments(&[6, 4], &[4, 6]).is_none() || segments(&[6, 4], &[4, 6]).unwrap().len() == 1
        );
    }
}
