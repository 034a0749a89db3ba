//! `eliminate-dead`: removes what cannot affect the graph's outputs.
//!
//! ```text
//! before:  x ─ Relu ─ y ─ Identity ─ z ─ Conv(W) ─ out       unused: Sigmoid(x), initializer V
//! after:   x ─ Relu ─ y ────────────────Conv(W) ─ out
//! ```
//!
//! - **Identity nodes** whose output is not a graph output: every use of the
//!   output (subgraph captures included) reads the input instead.
//! - **Dead nodes**: nodes none of whose outputs reach a graph output, directly
//!   or through a subgraph that captures them.
//! - **Unused initializers** (and sparse initializers): read by no live node
//!   and not a graph input, a graph output, a quantization-annotation
//!   parameter or a training binding.
//! - **Stale value_info**: entries for values the graph no longer has.
//!
//! Subgraphs (If/Loop/Scan bodies) are cleaned the same way, their outputs
//! being live. Graph inputs are never removed: they are the model's interface.
//! Exact: no value that reaches an output changes.

use std::collections::BTreeSet;

use schemars::JsonSchema;
use serde::Deserialize;

use super::{parse_config, Config, Pass, PassError, PassInfo, PassReport};
use crate::ir::{Graph, Model};

/// Registry entry.
pub const INFO: PassInfo = PassInfo {
    name: "eliminate-dead",
    summary: "remove dead nodes, Identity nodes, unused initializers and stale value_info",
    doc: include_str!("eliminate_dead.rs"),
    schema: super::schema_of::<EliminateDead>,
    build: |o| Ok(Box::new(parse_config::<EliminateDead>(o)?)),
};

/// Options of `eliminate-dead`.
#[derive(Debug, Clone, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EliminateDead {
    /// Bypass Identity nodes whose output is not a graph output.
    pub identity: bool,
    /// Remove initializers (and sparse initializers) that nothing reads.
    pub initializers: bool,
    /// Remove value_info entries of values that no longer exist.
    pub value_info: bool,
}

impl Default for EliminateDead {
    fn default() -> Self {
        EliminateDead {
            identity: true,
            initializers: true,
            value_info: true,
        }
    }
}

impl Config for EliminateDead {}

const COUNTERS: &[&str] = &[
    "identity_removed",
    "nodes_removed",
    "initializers_removed",
    "value_info_removed",
    "bytes_saved",
];

impl Pass for EliminateDead {
    fn run(&self, model: &mut Model, _ctx: &super::PassContext) -> Result<PassReport, PassError> {
        let mut protected: BTreeSet<String> = BTreeSet::new();
        for t in &model.training_info {
            for kv in t.initialization_binding.iter().chain(&t.update_binding) {
                protected.insert(kv.key().to_string());
                protected.insert(kv.value().to_string());
            }
            // Training graphs read main-graph initializers by name.
            for g in t.initialization.iter().chain(t.algorithm.iter()) {
                protected.extend(g.outer_references());
            }
        }
        let mut report = PassReport::with_counters(COUNTERS);
        self.clean(&mut model.graph, &protected, &mut report);
        Ok(report)
    }
}

impl EliminateDead {
    fn clean(&self, g: &mut Graph, protected: &BTreeSet<String>, report: &mut PassReport) {
        if self.identity {
            report.count("identity_removed", bypass_identities(g) as i64);
        }
        report.count("nodes_removed", remove_dead_nodes(g) as i64);
        // Subgraphs, now that only live nodes remain.
        for id in g.node_ids() {
            if !g.node(id).has_subgraphs() {
                continue;
            }
            g.update_node(id, |n| {
                for a in &mut n.attributes {
                    for sub in a.graphs_mut() {
                        self.clean(sub, protected, report);
                    }
                }
            });
        }
        if self.initializers {
            let read = read_values(g);
            let mut keep: BTreeSet<String> = protected.clone();
            keep.extend(g.inputs.iter().map(|v| v.name().to_string()));
            keep.extend(g.outputs.iter().map(|v| v.name().to_string()));
            for a in &g.quantization_annotation {
                keep.extend(a.tensor_name.iter().cloned());
                keep.extend(
                    a.quant_parameter_tensor_names
                        .iter()
                        .map(|kv| kv.value().to_string()),
                );
            }
            let dead = g.remove_initializers_where(|t| {
                !read.contains(t.name()) && !keep.contains(t.name())
            });
            for t in dead {
                report.count("initializers_removed", 1);
                report.count("bytes_saved", t.byte_len() as i64);
            }
            let before = g.sparse_initializers.len();
            g.sparse_initializers
                .retain(|s| read.contains(s.name()) || keep.contains(s.name()));
            report.count(
                "initializers_removed",
                (before - g.sparse_initializers.len()) as i64,
            );
        }
        if self.value_info {
            let before = g.value_info.len();
            let live: BTreeSet<String> = g
                .nodes()
                .flat_map(|(_, n)| n.outputs.iter().cloned())
                .collect();
            let keep = |name: &str| live.contains(name) || g.defines(name) || g.is_output(name);
            let kept: Vec<_> = g
                .value_info
                .iter()
                .filter(|v| keep(v.name()))
                .cloned()
                .collect();
            g.value_info = kept;
            report.count("value_info_removed", (before - g.value_info.len()) as i64);
        }
    }
}

/// Values read by the graph's nodes or captured by their subgraphs.
fn read_values(g: &Graph) -> BTreeSet<String> {
    let mut read = BTreeSet::new();
    for (_, n) in g.nodes() {
        read.extend(n.inputs.iter().filter(|v| !v.is_empty()).cloned());
        for a in &n.attributes {
            for sub in a.graphs() {
                read.extend(sub.outer_references());
            }
        }
    }
    read
}

/// Makes the uses of each Identity's output read its input, then removes it.
/// Identities that produce a graph output are kept: removing them would rename
/// the output. Returns how many were removed.
fn bypass_identities(g: &mut Graph) -> usize {
    let mut bypassed = Vec::new();
    for id in g.node_ids() {
        let n = g.node(id);
        if n.op_type() != "Identity" || !n.domain().is_empty() || n.inputs.len() != 1 {
            continue;
        }
        let (x, y) = (
            n.inputs[0].clone(),
            n.outputs.first().cloned().unwrap_or_default(),
        );
        if x.is_empty() || y.is_empty() || g.is_output(&y) {
            continue;
        }
        g.replace_uses(&y, &x);
        bypassed.push(id);
    }
    // Removed together: one pass over the node list (linear on long graphs).
    g.remove_nodes(&bypassed).len()
}

/// Removes nodes whose outputs cannot reach a graph output. Returns how many.
pub fn remove_dead_nodes(g: &mut Graph) -> usize {
    let (live_nodes, _) = g.upstream(g.outputs.iter().map(|o| o.name().to_string()));
    let dead: Vec<_> = g
        .node_ids()
        .into_iter()
        .filter(|id| !live_nodes.contains(id))
        .collect();
    g.remove_nodes(&dead).len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{DataType, Node, Tensor, TypeInfo, ValueInfo};

    fn model() -> Model {
        let mut g = Graph::new("g");
        let f = TypeInfo::tensor(DataType::Float, vec![]);
        g.inputs.push(ValueInfo::new("x", f.clone()));
        g.outputs.push(ValueInfo::new("out", f.clone()));
        g.add_initializer(Tensor::from_f32("w", vec![1], &[2.0]));
        g.add_initializer(Tensor::from_f32("unused", vec![2], &[1.0, 2.0]));
        g.add_node(Node::with_io("Relu", "relu", &["x"], &["y"]));
        g.add_node(Node::with_io("Identity", "id", &["y"], &["z"]));
        g.add_node(Node::with_io("Mul", "mul", &["z", "w"], &["out"]));
        g.add_node(Node::with_io("Sigmoid", "dead", &["x"], &["d"]));
        g.value_info.push(ValueInfo::new("z", f.clone()));
        g.value_info.push(ValueInfo::new("d", f));
        Model::new(g, 17)
    }

    #[test]
    fn removes_identity_dead_nodes_initializers_and_value_info() {
        let mut m = model();
        let report = EliminateDead::default()
            .run(&mut m, &Default::default())
            .unwrap();
        assert_eq!(report.counters["identity_removed"], 1);
        assert_eq!(report.counters["nodes_removed"], 1);
        assert_eq!(report.counters["initializers_removed"], 1);
        assert_eq!(report.counters["value_info_removed"], 2);
        assert_eq!(report.counters["bytes_saved"], 8);
        let ops: Vec<&str> = m.graph.nodes().map(|(_, n)| n.op_type()).collect();
        assert_eq!(ops, ["Relu", "Mul"]);
        let mul = m.graph.producer("out").unwrap().0;
        assert_eq!(m.graph.node(mul).inputs, ["y", "w"]);
        crate::ir::verify(&m).unwrap();
    }

    #[test]
    fn options_switch_steps_off() {
        let mut m = model();
        let cfg = EliminateDead {
            identity: false,
            initializers: false,
            value_info: false,
        };
        let report = cfg.run(&mut m, &Default::default()).unwrap();
        assert_eq!(report.counters["identity_removed"], 0);
        assert_eq!(report.counters["nodes_removed"], 1);
        assert_eq!(m.graph.initializers().len(), 2);
        assert_eq!(m.graph.value_info.len(), 2);
    }

    #[test]
    fn identity_producing_a_graph_output_is_kept() {
        let mut m = model();
        m.graph.outputs.push(ValueInfo::new(
            "z",
            TypeInfo::tensor(DataType::Float, vec![]),
        ));
        let report = EliminateDead::default()
            .run(&mut m, &Default::default())
            .unwrap();
        assert_eq!(report.counters["identity_removed"], 0);
    }
}
