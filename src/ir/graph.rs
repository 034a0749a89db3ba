//! The graph: operator nodes in a petgraph DAG, plus the graph's interface,
//! initializers and annotations.
//!
//! Values are named, as in ONNX. A node's `inputs`/`outputs` name them; the
//! graph keeps two indexes in step with every edit, which is why nodes are
//! only changed through [`Graph`] methods:
//! - `producer`: value name -> (node, output slot) for values made by a node;
//! - `free_uses`: value name -> (node, input slot) for uses of values that no
//!   node here produces (graph inputs, initializers, outer-scope values of a
//!   subgraph, or dangling references, which the verifier reports).
//!
//! Uses of node-produced values are the petgraph edges. The node list keeps
//! the file's order; [`Graph::topological_order`] is that order whenever it is
//! a valid one, so an unedited graph encodes back in its original order.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet};
use std::fmt;

use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use petgraph::visit::{EdgeRef, IntoEdgeReferences};
use petgraph::Direction;

use super::node::Node;
use super::tensor::{SparseTensor, Tensor};
use super::types::{KeyValue, TensorAnnotation, TypeInfo, ValueInfo};
use super::IrError;

/// A handle to a node of one graph. Valid until that node is removed; never
/// keep one from one pass to the next.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(NodeIndex);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0.index())
    }
}

/// A data dependency: output `output` of the source feeds input `input` of
/// the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Edge {
    output: usize,
    input: usize,
}

/// A use of a value: input `slot` of `node`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Use {
    /// The consuming node.
    pub node: NodeId,
    /// Which of its inputs.
    pub slot: usize,
}

/// A computation graph.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    /// The graph's name.
    pub name: Option<String>,
    /// Free-form documentation.
    pub doc_string: Option<String>,
    /// Metadata entries.
    pub metadata_props: Vec<KeyValue>,
    /// Graph inputs, in order.
    pub inputs: Vec<ValueInfo>,
    /// Graph outputs, in order.
    pub outputs: Vec<ValueInfo>,
    /// Type annotations of intermediate values, in file order.
    pub value_info: Vec<ValueInfo>,
    /// Quantization annotations.
    pub quantization_annotation: Vec<TensorAnnotation>,
    /// Sparse initializers.
    pub sparse_initializers: Vec<SparseTensor>,
    initializers: Vec<Tensor>,
    init_index: HashMap<String, usize>,
    dag: StableDiGraph<Node, Edge>,
    order: Vec<NodeId>,
    producer: HashMap<String, (NodeId, usize)>,
    free_uses: HashMap<String, Vec<Use>>,
    /// Nodes that hold subgraphs (kept by attach/detach), so edits that must
    /// look into subgraphs do not scan every node of a long graph.
    with_subgraphs: BTreeSet<NodeId>,
    /// Each node's position in `order`, built on first need by [`Graph::uses`]
    /// and cleared by every edit that moves nodes in the list (appending keeps
    /// it), so a pass that asks for the uses of many values between edits of
    /// the list (Identity bypassing) scans the list once, not once per value.
    rank: std::sync::OnceLock<HashMap<NodeId, usize>>,
}

impl PartialEq for Graph {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
            && self.doc_string == other.doc_string
            && self.metadata_props == other.metadata_props
            && self.inputs == other.inputs
            && self.outputs == other.outputs
            && self.value_info == other.value_info
            && self.quantization_annotation == other.quantization_annotation
            && self.sparse_initializers == other.sparse_initializers
            && self.initializers == other.initializers
            && self
                .nodes()
                .map(|(_, n)| n)
                .eq(other.nodes().map(|(_, n)| n))
    }
}

impl Graph {
    /// An empty graph.
    pub fn new(name: impl Into<String>) -> Graph {
        Graph {
            name: Some(name.into()),
            ..Graph::default()
        }
    }

    // ---- nodes -------------------------------------------------------------

    /// Number of nodes.
    pub fn node_count(&self) -> usize {
        self.order.len()
    }

    /// The node behind a handle.
    ///
    /// # Panics
    /// If the node was removed: handles must not outlive the edit that made them.
    pub fn node(&self, id: NodeId) -> &Node {
        &self.dag[id.0]
    }

    /// True when the handle still names a node of this graph.
    pub fn contains(&self, id: NodeId) -> bool {
        self.dag.contains_node(id.0)
    }

    /// Nodes in list order (the file's order, plus insertions where asked).
    pub fn nodes(&self) -> impl Iterator<Item = (NodeId, &Node)> + '_ {
        self.order.iter().map(move |&id| (id, &self.dag[id.0]))
    }

    /// Node handles in list order.
    pub fn node_ids(&self) -> Vec<NodeId> {
        self.order.clone()
    }

    /// Appends a node at the end of the list.
    pub fn add_node(&mut self, node: Node) -> NodeId {
        let id = NodeId(self.dag.add_node(node));
        self.attach(id);
        if let Some(rank) = self.rank.get_mut() {
            rank.insert(id, self.order.len());
        }
        self.order.push(id);
        id
    }

    /// Inserts a node just before `anchor` in the list.
    pub fn insert_node_before(&mut self, anchor: NodeId, node: Node) -> NodeId {
        let at = self.position(anchor);
        let id = NodeId(self.dag.add_node(node));
        self.attach(id);
        self.rank.take();
        self.order.insert(at, id);
        id
    }

    /// Inserts a node just after `anchor` in the list.
    pub fn insert_node_after(&mut self, anchor: NodeId, node: Node) -> NodeId {
        let at = self.position(anchor) + 1;
        let id = NodeId(self.dag.add_node(node));
        self.attach(id);
        self.rank.take();
        self.order.insert(at, id);
        id
    }

    /// Removes a node and returns it. Its consumers keep naming its outputs;
    /// rewire them first (or the verifier reports them as dangling).
    pub fn remove_node(&mut self, id: NodeId) -> Node {
        self.detach(id);
        let at = self.position(id);
        self.rank.take();
        self.order.remove(at);
        self.dag
            .remove_node(id.0)
            .expect("node handle outlived its node")
    }

    /// Removes several nodes at once and returns them in the order given:
    /// one pass over the node list instead of one per node, so cleaning up
    /// thousands of nodes of a long graph stays linear. Repeated handles
    /// count once.
    pub fn remove_nodes(&mut self, ids: &[NodeId]) -> Vec<Node> {
        let mut gone = HashSet::with_capacity(ids.len());
        let ids: Vec<NodeId> = ids.iter().copied().filter(|&id| gone.insert(id)).collect();
        for &id in &ids {
            self.detach(id);
        }
        self.rank.take();
        self.order.retain(|id| !gone.contains(id));
        ids.into_iter()
            .map(|id| {
                self.dag
                    .remove_node(id.0)
                    .expect("node handle outlived its node")
            })
            .collect()
    }

    /// Edits a node (its inputs, outputs, attributes, anything) and keeps the
    /// graph's indexes in step.
    pub fn update_node<R>(&mut self, id: NodeId, edit: impl FnOnce(&mut Node) -> R) -> R {
        self.detach(id);
        let result = edit(&mut self.dag[id.0]);
        self.attach(id);
        result
    }

    /// Makes input `slot` of `id` read `value`.
    pub fn set_input(&mut self, id: NodeId, slot: usize, value: &str) {
        self.update_node(id, |n| n.inputs[slot] = value.to_string());
    }

    /// Makes every use of `old` in this graph's nodes (and in subgraphs that
    /// capture it) read `new` instead. Graph outputs are not renamed.
    /// Returns how many uses were rewired.
    pub fn replace_uses(&mut self, old: &str, new: &str) -> usize {
        let mut count = 0;
        for u in self.uses(old) {
            self.set_input(u.node, u.slot, new);
            count += 1;
        }
        let holders: Vec<NodeId> = self.with_subgraphs.iter().copied().collect();
        for id in holders {
            if self.dag[id.0].has_subgraphs()
                && self.dag[id.0].attributes.iter().any(|a| {
                    a.graphs()
                        .iter()
                        .any(|g| g.outer_references().contains(old))
                })
            {
                self.update_node(id, |n| {
                    for a in &mut n.attributes {
                        for g in a.graphs_mut() {
                            count += g.rename_outer_reference(old, new);
                        }
                    }
                });
            }
        }
        count
    }

    fn rename_outer_reference(&mut self, old: &str, new: &str) -> usize {
        if self.defines(old) {
            return 0;
        }
        self.replace_uses(old, new)
    }

    fn position(&self, id: NodeId) -> usize {
        self.order
            .iter()
            .position(|&x| x == id)
            .expect("node handle outlived its node")
    }

    /// Adds the node's uses and definitions to the indexes.
    fn attach(&mut self, id: NodeId) {
        let node = &self.dag[id.0];
        if node.has_subgraphs() {
            self.with_subgraphs.insert(id);
        }
        let inputs: Vec<(usize, String)> = node
            .inputs
            .iter()
            .enumerate()
            .filter(|(_, v)| !v.is_empty())
            .map(|(i, v)| (i, v.clone()))
            .collect();
        let outputs: Vec<(usize, String)> = node
            .outputs
            .iter()
            .enumerate()
            .filter(|(_, v)| !v.is_empty())
            .map(|(i, v)| (i, v.clone()))
            .collect();
        for (slot, value) in inputs {
            match self.producer.get(&value) {
                Some(&(p, output)) => {
                    self.dag.add_edge(
                        p.0,
                        id.0,
                        Edge {
                            output,
                            input: slot,
                        },
                    );
                }
                None => self
                    .free_uses
                    .entry(value)
                    .or_default()
                    .push(Use { node: id, slot }),
            }
        }
        for (output, value) in outputs {
            if self.producer.contains_key(&value) {
                // A second definition: the verifier reports it.
                continue;
            }
            if let Some(uses) = self.free_uses.remove(&value) {
                for u in uses {
                    self.dag.add_edge(
                        id.0,
                        u.node.0,
                        Edge {
                            output,
                            input: u.slot,
                        },
                    );
                }
            }
            self.producer.insert(value, (id, output));
        }
    }

    /// Removes the node's uses and definitions from the indexes; its consumers
    /// become free uses of the names it defined.
    fn detach(&mut self, id: NodeId) {
        self.with_subgraphs.remove(&id);
        let outgoing: Vec<(NodeIndex, Edge)> = self
            .dag
            .edges_directed(id.0, Direction::Outgoing)
            .map(|e| (e.target(), *e.weight()))
            .collect();
        let node = &self.dag[id.0];
        for (output, value) in node.outputs.iter().enumerate() {
            if self.producer.get(value) == Some(&(id, output)) {
                self.producer.remove(value);
                let uses = outgoing
                    .iter()
                    .filter(|(t, e)| e.output == output && *t != id.0)
                    .map(|&(t, e)| Use {
                        node: NodeId(t),
                        slot: e.input,
                    });
                self.free_uses
                    .entry(value.clone())
                    .or_default()
                    .extend(uses);
            }
        }
        for (slot, value) in node.inputs.iter().enumerate() {
            if let Some(uses) = self.free_uses.get_mut(value) {
                uses.retain(|u| !(u.node == id && u.slot == slot));
                if uses.is_empty() {
                    self.free_uses.remove(value);
                }
            }
        }
        let edges: Vec<_> = self
            .dag
            .edges_directed(id.0, Direction::Outgoing)
            .chain(self.dag.edges_directed(id.0, Direction::Incoming))
            .map(|e| e.id())
            .collect();
        for e in edges {
            self.dag.remove_edge(e);
        }
    }

    // ---- values ------------------------------------------------------------

    /// The node and output slot that produce `value`.
    pub fn producer(&self, value: &str) -> Option<(NodeId, usize)> {
        self.producer.get(value).copied()
    }

    /// Every use of `value` by this graph's nodes, sorted by node list order.
    pub fn uses(&self, value: &str) -> Vec<Use> {
        let mut uses: Vec<Use> = match self.producer.get(value) {
            Some(&(p, output)) => self
                .dag
                .edges_directed(p.0, Direction::Outgoing)
                .filter(|e| e.weight().output == output)
                .map(|e| Use {
                    node: NodeId(e.target()),
                    slot: e.weight().input,
                })
                .collect(),
            None => self.free_uses.get(value).cloned().unwrap_or_default(),
        };
        if uses.len() > 1 {
            // Positions from the cached index (one scan of the list per edit
            // of the list, not one per call).
            let rank = self.rank.get_or_init(|| {
                self.order
                    .iter()
                    .enumerate()
                    .map(|(i, &id)| (id, i))
                    .collect()
            });
            uses.sort_by_key(|u| (rank.get(&u.node).copied().unwrap_or(usize::MAX), u.slot));
        }
        uses
    }

    /// True when `value` is one of the graph's outputs.
    pub fn is_output(&self, value: &str) -> bool {
        self.outputs.iter().any(|o| o.name() == value)
    }

    /// True when `value` is one of the graph's inputs.
    pub fn is_input(&self, value: &str) -> bool {
        self.inputs.iter().any(|o| o.name() == value)
    }

    /// True when this graph defines `value` (input, initializer, sparse
    /// initializer or node output).
    pub fn defines(&self, value: &str) -> bool {
        self.producer.contains_key(value)
            || self.init_index.contains_key(value)
            || self.is_input(value)
            || self.sparse_initializers.iter().any(|s| s.name() == value)
    }

    /// A value name not yet used in this graph: `base`, or `base_1`, `base_2`...
    /// (Outer scopes are not consulted; prefer distinctive bases in subgraphs.)
    pub fn unique_name(&self, base: &str) -> String {
        let taken = |n: &str| {
            self.defines(n)
                || self.is_output(n)
                || self.value_info.iter().any(|v| v.name() == n)
                || self.free_uses.contains_key(n)
        };
        if !taken(base) {
            return base.to_string();
        }
        (1..)
            .map(|i| format!("{base}_{i}"))
            .find(|n| !taken(n))
            .unwrap_or_default()
    }

    /// The declared type of `value`: from an input, output, value_info entry
    /// or initializer of this graph.
    pub fn value_type(&self, value: &str) -> Option<TypeInfo> {
        let declared = self
            .inputs
            .iter()
            .chain(&self.outputs)
            .chain(&self.value_info)
            .find(|v| v.name() == value)
            .and_then(|v| v.ty.clone());
        declared.or_else(|| {
            self.initializer(value).map(|t| {
                TypeInfo::tensor(
                    t.dtype(),
                    t.dims
                        .iter()
                        .map(|&d| super::types::Dim::known(d))
                        .collect(),
                )
            })
        })
    }

    /// The nodes the values `roots` depend on, through node inputs and the
    /// values their subgraphs capture, and every value visited on the way
    /// (`roots` included).
    pub fn upstream(
        &self,
        roots: impl IntoIterator<Item = String>,
    ) -> (BTreeSet<NodeId>, BTreeSet<String>) {
        let (mut nodes, mut seen) = (BTreeSet::new(), BTreeSet::new());
        let mut stack: Vec<String> = roots.into_iter().collect();
        while let Some(v) = stack.pop() {
            if !seen.insert(v.clone()) {
                continue;
            }
            let Some((id, _)) = self.producer(&v) else {
                continue;
            };
            if !nodes.insert(id) {
                continue;
            }
            let n = self.node(id);
            stack.extend(n.inputs.iter().filter(|i| !i.is_empty()).cloned());
            for a in &n.attributes {
                for sub in a.graphs() {
                    stack.extend(sub.outer_references());
                }
            }
        }
        (nodes, seen)
    }

    /// Names this graph's nodes (and their subgraphs) read but do not define:
    /// the values a subgraph captures from its enclosing scopes.
    pub fn outer_references(&self) -> BTreeSet<String> {
        let mut refs = BTreeSet::new();
        for (_, node) in self.nodes() {
            for v in &node.inputs {
                if !v.is_empty() && !self.defines(v) {
                    refs.insert(v.clone());
                }
            }
            for a in &node.attributes {
                for g in a.graphs() {
                    refs.extend(
                        g.outer_references()
                            .into_iter()
                            .filter(|v| !self.defines(v)),
                    );
                }
            }
        }
        refs
    }

    // ---- initializers ------------------------------------------------------

    /// Initializers in file order.
    pub fn initializers(&self) -> &[Tensor] {
        &self.initializers
    }

    /// The initializer of this name.
    pub fn initializer(&self, name: &str) -> Option<&Tensor> {
        self.init_index.get(name).map(|&i| &self.initializers[i])
    }

    /// Adds an initializer at the end of the list. Several initializers with
    /// one name are kept (the verifier reports them); lookups find the first.
    pub fn add_initializer(&mut self, tensor: Tensor) {
        self.init_index
            .entry(tensor.name().to_string())
            .or_insert(self.initializers.len());
        self.initializers.push(tensor);
    }

    /// Replaces the initializer of the same name in place, keeping its
    /// position; adds it when there is none. Returns the old one.
    pub fn replace_initializer(&mut self, tensor: Tensor) -> Option<Tensor> {
        match self.init_index.get(tensor.name()) {
            Some(&i) => Some(std::mem::replace(&mut self.initializers[i], tensor)),
            None => {
                self.add_initializer(tensor);
                None
            }
        }
    }

    /// Removes the initializer of this name.
    pub fn remove_initializer(&mut self, name: &str) -> Option<Tensor> {
        let i = *self.init_index.get(name)?;
        let t = self.initializers.remove(i);
        self.reindex_initializers();
        Some(t)
    }

    /// Removes every initializer `remove` accepts, in one pass over the list,
    /// and returns them in list order.
    pub fn remove_initializers_where(
        &mut self,
        mut remove: impl FnMut(&Tensor) -> bool,
    ) -> Vec<Tensor> {
        let (gone, kept): (Vec<Tensor>, Vec<Tensor>) = std::mem::take(&mut self.initializers)
            .into_iter()
            .partition(|t| remove(t));
        self.initializers = kept;
        self.reindex_initializers();
        gone
    }

    /// Edits every initializer in place (names must stay the same).
    pub fn initializers_mut(&mut self) -> &mut [Tensor] {
        &mut self.initializers
    }

    fn reindex_initializers(&mut self) {
        self.init_index.clear();
        for (i, t) in self.initializers.iter().enumerate() {
            self.init_index.entry(t.name().to_string()).or_insert(i);
        }
    }

    // ---- order -------------------------------------------------------------

    /// Nodes in an order where every value is produced before it is read
    /// (counting values that subgraphs capture). It is the list order
    /// whenever that is already valid; otherwise each step takes the ready
    /// node that comes first in the list, so the result is deterministic.
    pub fn topological_order(&self) -> Result<Vec<NodeId>, IrError> {
        let rank: HashMap<NodeId, usize> = self
            .order
            .iter()
            .enumerate()
            .map(|(i, &id)| (id, i))
            .collect();
        // Edges, plus implicit edges from producers of captured values.
        let mut succ: HashMap<NodeId, Vec<NodeId>> = HashMap::new();
        let mut indegree: HashMap<NodeId, usize> = self.order.iter().map(|&id| (id, 0)).collect();
        let mut add = |from: NodeId, to: NodeId, indegree: &mut HashMap<NodeId, usize>| {
            succ.entry(from).or_default().push(to);
            *indegree.get_mut(&to).expect("node in order") += 1;
        };
        for e in (&self.dag).edge_references() {
            add(NodeId(e.source()), NodeId(e.target()), &mut indegree);
        }
        for &id in &self.order {
            let node = &self.dag[id.0];
            if !node.has_subgraphs() {
                continue;
            }
            let captured: HashSet<NodeId> = node
                .attributes
                .iter()
                .flat_map(|a| a.graphs())
                .flat_map(|g| g.outer_references())
                .filter_map(|v| self.producer(&v).map(|(p, _)| p))
                .collect();
            let mut captured: Vec<NodeId> = captured.into_iter().collect();
            captured.sort_by_key(|p| rank[p]);
            for p in captured {
                add(p, id, &mut indegree);
            }
        }
        let mut ready: BinaryHeap<Reverse<(usize, NodeId)>> = indegree
            .iter()
            .filter(|(_, &d)| d == 0)
            .map(|(&id, _)| Reverse((rank[&id], id)))
            .collect();
        let mut out = Vec::with_capacity(self.order.len());
        while let Some(Reverse((_, id))) = ready.pop() {
            out.push(id);
            for &next in succ.get(&id).map(Vec::as_slice).unwrap_or(&[]) {
                let d = indegree.get_mut(&next).expect("node in order");
                *d -= 1;
                if *d == 0 {
                    ready.push(Reverse((rank[&next], next)));
                }
            }
        }
        if out.len() < self.order.len() {
            let done: HashSet<NodeId> = out.iter().copied().collect();
            let stuck: Vec<String> = self
                .order
                .iter()
                .filter(|id| !done.contains(id))
                .take(4)
                .map(|&id| self.dag[id.0].label())
                .collect();
            return Err(IrError::Cycle {
                graph: self.name.clone().unwrap_or_default(),
                nodes: stuck.join(", "),
            });
        }
        Ok(out)
    }

    /// Puts the node list in [`Graph::topological_order`].
    pub fn sort(&mut self) -> Result<(), IrError> {
        self.order = self.topological_order()?;
        self.rank.take();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(g: &Graph, ids: &[NodeId]) -> Vec<String> {
        ids.iter()
            .map(|&id| g.node(id).name().to_string())
            .collect()
    }

    #[test]
    fn uses_follow_edits() {
        let mut g = Graph::new("g");
        let a = g.add_node(Node::with_io("Relu", "a", &["x"], &["y"]));
        let b = g.add_node(Node::with_io("Relu", "b", &["y"], &["z"]));
        let c = g.add_node(Node::with_io("Add", "c", &["y", "z"], &["w"]));
        assert_eq!(
            g.uses("y"),
            vec![Use { node: b, slot: 0 }, Use { node: c, slot: 0 }]
        );
        assert_eq!(g.uses("x"), vec![Use { node: a, slot: 0 }]);
        assert_eq!(g.producer("z"), Some((b, 0)));

        // Rewire c's first input to the graph input.
        g.set_input(c, 0, "x");
        assert_eq!(g.uses("y"), vec![Use { node: b, slot: 0 }]);
        assert_eq!(
            g.uses("x"),
            vec![Use { node: a, slot: 0 }, Use { node: c, slot: 0 }]
        );

        // Removing the producer turns its uses into free uses.
        g.remove_node(b);
        assert_eq!(g.producer("z"), None);
        assert_eq!(g.uses("z"), vec![Use { node: c, slot: 1 }]);

        // A new producer picks them up again.
        let d = g.insert_node_before(c, Node::with_io("Neg", "d", &["y"], &["z"]));
        assert_eq!(g.producer("z"), Some((d, 0)));
        assert_eq!(names(&g, &g.topological_order().unwrap()), ["a", "d", "c"]);
        assert_eq!(g.replace_uses("y", "x"), 1);
        assert_eq!(g.uses("x").len(), 3);
    }

    #[test]
    fn list_order_is_kept_when_valid_and_repaired_when_not() {
        let mut g = Graph::new("g");
        g.add_node(Node::with_io("Relu", "late", &["y"], &["z"]));
        g.add_node(Node::with_io("Relu", "early", &["x"], &["y"]));
        g.add_node(Node::with_io("Relu", "free", &["x"], &["q"]));
        assert_eq!(
            names(&g, &g.topological_order().unwrap()),
            ["early", "late", "free"]
        );
        g.sort().unwrap();
        let order = g.node_ids();
        assert_eq!(g.topological_order().unwrap(), order);
    }

    #[test]
    fn cycles_are_reported_with_node_names() {
        let mut g = Graph::new("g");
        g.add_node(Node::with_io("Relu", "a", &["b_out"], &["a_out"]));
        g.add_node(Node::with_io("Relu", "b", &["a_out"], &["b_out"]));
        let err = g.topological_order().unwrap_err().to_string();
        assert!(err.contains("cycle") && err.contains("\"a\""), "{err}");
    }
}
