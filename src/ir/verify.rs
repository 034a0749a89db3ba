//! The IR verifier: checks a model's graphs and collects every problem it
//! finds, each naming the graph and node it concerns.
//!
//! Checked: dependency cycles; node inputs and graph outputs that nothing
//! defines (in the graph or, for subgraphs, an enclosing scope); names defined
//! twice; nodes without an operator; initializers whose data does not fit
//! their dtype and dims; declared types that contradict an initializer.

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use super::graph::Graph;
use super::model::Model;
use super::tensor::{Tensor, TensorData};
use super::types::TypeKind;
use super::{DataType, IrError};

/// Every problem the verifier found, in a stable order.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifyError {
    /// One sentence per problem.
    pub problems: Vec<String>,
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.problems.join("\n"))
    }
}

impl std::error::Error for VerifyError {}

/// Checks the model; `Ok` when no problem was found.
pub fn verify(model: &Model) -> Result<(), VerifyError> {
    let mut problems = Vec::new();
    let main = format!("graph {:?}", model.graph.name.as_deref().unwrap_or(""));
    check_graph(&model.graph, &main, &BTreeSet::new(), &mut problems);
    for (i, t) in model.training_info.iter().enumerate() {
        // Training graphs read the main graph's initializers.
        let scope: BTreeSet<String> = model
            .graph
            .initializers()
            .iter()
            .map(|t| t.name().to_string())
            .collect();
        for (what, g) in [
            ("initialization", &t.initialization),
            ("algorithm", &t.algorithm),
        ] {
            if let Some(g) = g {
                check_graph(
                    g,
                    &format!("training_info[{i}].{what}"),
                    &scope,
                    &mut problems,
                );
            }
        }
    }
    for f in &model.functions {
        let mut defined: BTreeSet<&str> = f.inputs.iter().map(String::as_str).collect();
        let fname = f.name.as_deref().unwrap_or("");
        for n in &f.nodes {
            for v in n.inputs.iter().filter(|v| !v.is_empty()) {
                if !defined.contains(v.as_str()) {
                    problems.push(format!(
                        "function {fname:?}: node {} reads {v:?}, which is neither a function input nor an earlier node's output",
                        n.label()
                    ));
                }
            }
            defined.extend(n.outputs.iter().map(String::as_str));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(VerifyError { problems })
    }
}

fn check_graph(g: &Graph, path: &str, outer: &BTreeSet<String>, problems: &mut Vec<String>) {
    if let Err(IrError::Cycle { nodes, .. }) = g.topological_order() {
        problems.push(format!("{path} has a cycle through {nodes}"));
    }

    // Names defined more than once.
    let mut defs: HashMap<&str, Vec<String>> = HashMap::new();
    for i in &g.inputs {
        defs.entry(i.name())
            .or_default()
            .push("a graph input".into());
    }
    let mut init_names: HashMap<&str, usize> = HashMap::new();
    for t in g.initializers() {
        *init_names.entry(t.name()).or_default() += 1;
        check_tensor(t, path, problems);
    }
    for (name, count) in &init_names {
        if *count > 1 {
            problems.push(format!("{path}: {count} initializers are named {name:?}"));
        }
    }
    for (_, n) in g.nodes() {
        if n.op_type().is_empty() {
            problems.push(format!("{path}: node {} has no op_type", n.label()));
        }
        for o in n.outputs.iter().filter(|o| !o.is_empty()) {
            defs.entry(o)
                .or_default()
                .push(format!("node {}", n.label()));
        }
    }
    let mut dups: Vec<_> = defs
        .iter()
        .filter(|(name, by)| {
            by.len() > 1 || (init_names.contains_key(*name) && by[0] != "a graph input")
        })
        .collect();
    dups.sort();
    for (name, by) in dups {
        let mut by = by.clone();
        if init_names.contains_key(name) {
            by.push("an initializer".into());
        }
        problems.push(format!(
            "{path}: value {name:?} is defined more than once (by {})",
            by.join(" and ")
        ));
    }

    // Uses of names nothing defines.
    let visible = |v: &str| g.defines(v) || outer.contains(v);
    for (_, n) in g.nodes() {
        for v in n.inputs.iter().filter(|v| !v.is_empty()) {
            if !visible(v) {
                problems.push(format!(
                    "{path}: node {} reads {v:?}, which no node, graph input or initializer produces",
                    n.label()
                ));
            }
        }
    }
    for o in &g.outputs {
        if !visible(o.name()) {
            problems.push(format!(
                "{path}: graph output {:?} is not produced by any node, input or initializer",
                o.name()
            ));
        }
    }

    // Declared types that contradict an initializer.
    for vi in g.inputs.iter().chain(&g.value_info) {
        let (Some(t), Some(ty)) = (g.initializer(vi.name()), &vi.ty) else {
            continue;
        };
        if let TypeKind::Tensor {
            elem: Some(elem), ..
        } = &ty.kind
        {
            if *elem != t.dtype() {
                problems.push(format!(
                    "{path}: initializer {:?} is {} but declared {}",
                    t.name(),
                    t.dtype(),
                    elem
                ));
            }
        }
    }

    // Subgraphs see everything this graph defines, plus the outer scope.
    for (_, n) in g.nodes() {
        for a in &n.attributes {
            let graphs = a.graphs();
            if graphs.is_empty() {
                continue;
            }
            let mut scope = outer.clone();
            scope.extend(g.inputs.iter().map(|i| i.name().to_string()));
            scope.extend(g.initializers().iter().map(|t| t.name().to_string()));
            scope.extend(g.sparse_initializers.iter().map(|t| t.name().to_string()));
            for (_, m) in g.nodes() {
                scope.extend(m.outputs.iter().cloned());
            }
            for (k, sub) in graphs.into_iter().enumerate() {
                let sub_path = format!("{path} > node {} attribute {:?}[{k}]", n.label(), a.name());
                check_graph(sub, &sub_path, &scope, problems);
            }
        }
    }
}

fn check_tensor(t: &Tensor, path: &str, problems: &mut Vec<String>) {
    let dtype = t.dtype();
    if t.dims.iter().any(|&d| d < 0) {
        problems.push(format!(
            "{path}: initializer {:?} has a negative dimension {:?}",
            t.name(),
            t.dims
        ));
        return;
    }
    let Some(n) = t.num_elements() else {
        problems.push(format!(
            "{path}: initializer {:?} has absurd dims {:?} (element count overflows)",
            t.name(),
            t.dims
        ));
        return;
    };
    let stored = match &t.data {
        TensorData::Raw(b) => Some(b.len() as u64),
        TensorData::External(e) => Some(e.length),
        TensorData::Fields(_) => None,
    };
    if let (Some(stored), Some(expected)) = (stored, dtype.packed_len(n)) {
        if t.segment.is_none() && stored != expected {
            problems.push(format!(
                "{path}: initializer {:?} holds {stored} bytes but {dtype}{:?} needs {expected}",
                t.name(),
                t.dims
            ));
        }
    }
    if let TensorData::Fields(f) = &t.data {
        let count = match dtype {
            DataType::Float | DataType::Complex64 => f.float_data.len(),
            DataType::Double | DataType::Complex128 => f.double_data.len(),
            DataType::Int64 => f.int64_data.len(),
            DataType::Uint32 | DataType::Uint64 => f.uint64_data.len(),
            DataType::String => f.string_data.len(),
            _ => f.int32_data.len(),
        } as u64;
        let expected = match dtype {
            DataType::Complex64 | DataType::Complex128 => n * 2,
            DataType::Int4 | DataType::Uint4 | DataType::Float4e2m1 => n.div_ceil(2),
            DataType::Int2 | DataType::Uint2 => n.div_ceil(4),
            _ => n,
        };
        if t.segment.is_none() && count != expected && dtype != DataType::Undefined {
            problems.push(format!(
                "{path}: initializer {:?} holds {count} elements but dims {:?} need {expected}",
                t.name(),
                t.dims
            ));
        }
    }
}
