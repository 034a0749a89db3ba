//! Grafting the teacher into the student's graph: every teacher name gets the
//! prefix, the teacher's inputs become the student's, opset imports are
//! reconciled, functions and custom domains carried. The teacher's tensors
//! keep their bytes (refcounted slices of the teacher file; external data is
//! mapped, not read).

use std::collections::{BTreeMap, BTreeSet, HashSet};

use crate::ir::{
    AttrValue, Attribute, Dim, DimValue, Graph, Model, Node, OpsetId, Tensor, TensorData, TypeInfo,
    ValueInfo,
};
use crate::passes::PassError;

/// What grafting did.
#[derive(Debug, Default)]
pub struct Grafted {
    /// Teacher nodes added (main graph).
    pub nodes: usize,
    /// Teacher initializers added, under their new names.
    pub initializers: Vec<String>,
    /// Teacher input -> student input it now reads.
    pub wired: Vec<(String, String)>,
    /// Functions carried over from the teacher.
    pub functions: usize,
    /// Opset imports that changed (domain, from, to).
    pub opsets_raised: Vec<(String, i64, i64)>,
}

/// Ops whose interface or meaning changed in a default-domain opset version:
/// a node written for an opset below the version cannot run unchanged at or
/// above it. Additive changes (new types, new optional inputs) are not listed.
const BREAKING: &[(&str, i64)] = &[
    ("Add", 7),
    ("Sub", 7),
    ("Mul", 7),
    ("Div", 7),
    ("Pow", 7),
    ("PRelu", 7),
    ("Gemm", 7),
    ("Dropout", 7),
    ("Dropout", 12),
    ("Concat", 4),
    ("Reshape", 5),
    ("Cast", 6),
    ("Tile", 6),
    ("BatchNormalization", 9),
    ("Upsample", 9),
    ("Upsample", 10),
    ("Scan", 9),
    ("Slice", 10),
    ("TopK", 10),
    ("Clip", 11),
    ("Pad", 11),
    ("Resize", 11),
    ("Scatter", 11),
    ("Softmax", 13),
    ("LogSoftmax", 13),
    ("Hardmax", 13),
    ("ReduceSum", 13),
    ("Squeeze", 13),
    ("Unsqueeze", 13),
    ("Split", 13),
    ("Split", 18),
    ("ReduceMean", 18),
    ("ReduceMax", 18),
    ("ReduceMin", 18),
    ("ReduceProd", 18),
    ("ReduceL1", 18),
    ("ReduceL2", 18),
    ("ReduceLogSum", 18),
    ("ReduceLogSumExp", 18),
    ("ReduceSumSquare", 18),
    ("GroupNormalization", 21),
];

/// The op of `g` (or its subgraphs) that cannot move from default-domain
/// opset `from` to `to`, with the version where it changed.
fn breaking_op(g: &Graph, from: i64, to: i64) -> Option<(String, i64)> {
    for (_, n) in g.nodes() {
        if n.domain().is_empty() {
            if let Some(&(op, v)) = BREAKING
                .iter()
                .find(|(op, v)| *op == n.op_type() && from < *v && *v <= to)
            {
                return Some((format!("{op} {:?}", n.name()), v));
            }
        }
        for a in &n.attributes {
            for sub in a.graphs() {
                if let Some(found) = breaking_op(sub, from, to) {
                    return Some(found);
                }
            }
        }
    }
    None
}

/// The first node of `g` (or its subgraphs) in `domain`.
fn node_in_domain(g: &Graph, domain: &str) -> Option<String> {
    for (_, n) in g.nodes() {
        if n.domain() == domain {
            return Some(n.label());
        }
        for a in &n.attributes {
            for sub in a.graphs() {
                if let Some(found) = node_in_domain(sub, domain) {
                    return Some(found);
                }
            }
        }
    }
    None
}

fn norm_domain(d: &str) -> &str {
    if d == "ai.onnx" {
        ""
    } else {
        d
    }
}

/// Makes `student`'s opset imports cover the teacher's: equal versions are
/// kept, a default-domain version is raised to the higher one when no op of
/// the lower side changed in between, and any other difference is an error
/// naming the op and both opsets.
pub fn reconcile_opsets(
    student: &mut Model,
    teacher: &Model,
) -> Result<Vec<(String, i64, i64)>, PassError> {
    let mut raised = Vec::new();
    for t in &teacher.opset_import {
        let domain = norm_domain(t.domain()).to_string();
        let Some(tv) = t.version else { continue };
        let shown = if domain.is_empty() {
            "ai.onnx"
        } else {
            &domain
        };
        match student.opset_version(&domain) {
            None => {
                student.opset_import.push(OpsetId {
                    domain: Some(domain.clone()),
                    version: Some(tv),
                });
            }
            Some(sv) if sv == tv => {}
            Some(sv) if domain.is_empty() => {
                let (low_graph, low, high, side) = if sv < tv {
                    (&student.graph, sv, tv, "student")
                } else {
                    (&teacher.graph, tv, sv, "teacher")
                };
                if let Some((op, changed)) = breaking_op(low_graph, low, high) {
                    return Err(PassError::Model(format!(
                        "cannot reconcile opsets: the {side}'s {op} is written for {shown} opset {low}, and {} changed at opset {changed}; the other model needs opset {high} (student {sv}, teacher {tv}); convert one model to the other's opset first",
                        op.split(' ').next().unwrap_or("")
                    )));
                }
                if sv < tv {
                    set_version(student, &domain, tv);
                    raised.push((shown.to_string(), sv, tv));
                }
            }
            Some(sv) => {
                let op = node_in_domain(&teacher.graph, &domain)
                    .or_else(|| node_in_domain(&student.graph, &domain))
                    .unwrap_or_else(|| "no node".into());
                return Err(PassError::Model(format!(
                    "cannot reconcile opsets: custom domain {shown:?} is imported at version {sv} by the student and {tv} by the teacher (op {op}); whittle cannot know what changed between versions of a custom domain"
                )));
            }
        }
    }
    Ok(raised)
}

fn set_version(model: &mut Model, domain: &str, v: i64) {
    for o in &mut model.opset_import {
        if norm_domain(o.domain()) == domain {
            o.version = Some(v);
        }
    }
}

/// Carries the teacher's model-local functions: one the student already has
/// with the same body is shared; a different body under the same
/// (domain, name, overload) is an error.
pub fn carry_functions(student: &mut Model, teacher: &Model) -> Result<usize, PassError> {
    let mut carried = 0;
    for f in &teacher.functions {
        let key = |g: &crate::ir::Function| (g.domain.clone(), g.name.clone(), g.overload.clone());
        match student.functions.iter().find(|s| key(s) == key(f)) {
            Some(s) if s == f => {}
            Some(_) => {
                return Err(PassError::Model(format!(
                    "the teacher's function {:?} (domain {:?}) differs from the student's function of the same name; rename one",
                    f.name.as_deref().unwrap_or(""),
                    f.domain.as_deref().unwrap_or("")
                )))
            }
            None => {
                student.functions.push(f.clone());
                carried += 1;
            }
        }
    }
    Ok(carried)
}

/// Names in one scope: how a teacher name reads in the merged graph.
struct Renamer<'a> {
    prefix: &'a str,
    /// Teacher main-graph input -> student input.
    inputs: &'a BTreeMap<String, String>,
}

impl Renamer<'_> {
    fn main(&self, name: &str) -> String {
        if name.is_empty() {
            return String::new();
        }
        match self.inputs.get(name) {
            Some(s) => s.clone(),
            None => format!("{}{name}", self.prefix),
        }
    }
}

/// Tensor bytes stay shared; external data becomes a mapped slice held
/// inline (the merged model's side files are laid out anew on save).
fn shared_tensor(t: &Tensor, name: String) -> Result<Tensor, PassError> {
    let mut t = t.clone();
    if let TensorData::External(e) = &t.data {
        let bytes = e.bytes()?;
        t.set_raw(bytes);
    }
    t.name = Some(name);
    Ok(t)
}

fn rename_info(v: &ValueInfo, f: &dyn Fn(&str) -> String) -> ValueInfo {
    let mut v = v.clone();
    v.name = v.name.as_deref().map(f);
    v
}

fn rename_node(n: &Node, f: &dyn Fn(&str) -> String, prefix: &str) -> Result<Node, PassError> {
    let mut n = n.clone();
    n.name = n
        .name
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(|s| format!("{prefix}{s}"));
    n.inputs = n.inputs.iter().map(|v| f(v)).collect();
    n.outputs = n.outputs.iter().map(|v| f(v)).collect();
    for a in &mut n.attributes {
        match &mut a.value {
            AttrValue::Graph(g) => **g = rename_subgraph(g, f, prefix)?,
            AttrValue::Graphs(gs) => {
                for g in gs.iter_mut() {
                    *g = rename_subgraph(g, f, prefix)?;
                }
            }
            _ => {}
        }
    }
    Ok(n)
}

/// A subgraph with its own names prefixed and its captures renamed as the
/// enclosing scope renames them.
fn rename_subgraph(
    g: &Graph,
    outer: &dyn Fn(&str) -> String,
    prefix: &str,
) -> Result<Graph, PassError> {
    let mut local: HashSet<String> = g.inputs.iter().map(|v| v.name().to_string()).collect();
    local.extend(g.initializers().iter().map(|t| t.name().to_string()));
    local.extend(g.sparse_initializers.iter().map(|s| s.name().to_string()));
    for (_, n) in g.nodes() {
        local.extend(n.outputs.iter().filter(|v| !v.is_empty()).cloned());
    }
    let f = |name: &str| -> String {
        if name.is_empty() {
            String::new()
        } else if local.contains(name) {
            format!("{prefix}{name}")
        } else {
            outer(name)
        }
    };
    let mut out = Graph::new(format!("{prefix}{}", g.name.as_deref().unwrap_or("")));
    out.doc_string = g.doc_string.clone();
    out.metadata_props = g.metadata_props.clone();
    fill_graph(&mut out, g, &f, prefix, None)?;
    Ok(out)
}

/// Copies `from`'s interface, annotations, initializers and nodes into `to`
/// with every name passed through `f`. With `only`, just those nodes (and
/// the initializers they read) are copied, and inputs/outputs are left to
/// the caller.
fn fill_graph(
    to: &mut Graph,
    from: &Graph,
    f: &dyn Fn(&str) -> String,
    prefix: &str,
    only: Option<&BTreeSet<crate::ir::NodeId>>,
) -> Result<Vec<String>, PassError> {
    let mut read: HashSet<String> = HashSet::new();
    let mut touched: HashSet<String> = HashSet::new();
    if only.is_none() {
        to.inputs = from.inputs.iter().map(|v| rename_info(v, f)).collect();
        to.outputs = from.outputs.iter().map(|v| rename_info(v, f)).collect();
    }
    let mut nodes = Vec::new();
    for (id, n) in from.nodes() {
        if only.is_some_and(|o| !o.contains(&id)) {
            continue;
        }
        read.extend(n.inputs.iter().cloned());
        for a in &n.attributes {
            for sub in a.graphs() {
                read.extend(sub.outer_references());
            }
        }
        touched.extend(n.outputs.iter().cloned());
        nodes.push(rename_node(n, f, prefix)?);
    }
    touched.extend(read.iter().cloned());
    let keep = |name: &str| only.is_none() || read.contains(name);
    let near = |name: &str| only.is_none() || touched.contains(name);
    for v in &from.value_info {
        if near(v.name()) {
            to.value_info.push(rename_info(v, f));
        }
    }
    for a in &from.quantization_annotation {
        if !near(a.tensor_name.as_deref().unwrap_or("")) {
            continue;
        }
        let mut a = a.clone();
        a.tensor_name = a.tensor_name.as_deref().map(f);
        for kv in &mut a.quant_parameter_tensor_names {
            kv.value = kv.value.as_deref().map(f);
        }
        to.quantization_annotation.push(a);
    }
    let mut inits = Vec::new();
    for t in from.initializers() {
        if keep(t.name()) {
            let name = f(t.name());
            to.add_initializer(shared_tensor(t, name.clone())?);
            inits.push(name);
        }
    }
    for s in &from.sparse_initializers {
        if keep(s.name()) {
            let mut s = s.clone();
            if let Some(v) = s.values.as_mut() {
                let name = f(v.name());
                *v = shared_tensor(v, name.clone())?;
                inits.push(name);
            }
            if let Some(i) = s.indices.as_mut() {
                let name = f(i.name());
                *i = shared_tensor(i, name)?;
            }
            to.sparse_initializers.push(s);
        }
    }
    for n in nodes {
        to.add_node(n);
    }
    Ok(inits)
}

/// True when two types can describe the same tensor: same element type, same
/// rank, equal sizes where both are fixed (symbols and unknowns match anything).
pub fn compatible(a: &TypeInfo, b: &TypeInfo) -> bool {
    if a.tensor_elem() != b.tensor_elem() {
        return false;
    }
    match (a.tensor_shape(), b.tensor_shape()) {
        (Some(x), Some(y)) => x.len() == y.len() && x.iter().zip(y).all(|(p, q)| dims_agree(p, q)),
        _ => true,
    }
}

fn dims_agree(a: &Dim, b: &Dim) -> bool {
    match (&a.value, &b.value) {
        (DimValue::Known(x), DimValue::Known(y)) => x == y,
        _ => true,
    }
}

/// The teacher's run-time inputs (graph inputs without an initializer).
fn runtime_inputs(g: &Graph) -> Vec<&ValueInfo> {
    g.inputs
        .iter()
        .filter(|v| g.initializer(v.name()).is_none())
        .collect()
}

/// Grafts the part of `teacher` that computes `needed` (teacher value names)
/// into `student`. Returns the merged name of each needed value and a record.
pub fn graft(
    student: &mut Model,
    teacher: &Model,
    prefix: &str,
    input_map: &BTreeMap<String, String>,
    needed: &[String],
) -> Result<(Vec<String>, Grafted), PassError> {
    let tg = &teacher.graph;
    // Wire the teacher's inputs.
    let mut wiring = BTreeMap::new();
    for t in input_map.keys() {
        if !tg.is_input(t) {
            let names: Vec<&str> = runtime_inputs(tg).iter().map(|v| v.name()).collect();
            return Err(PassError::Model(format!(
                "inputs: the teacher has no input {t:?} (its inputs: {})",
                names.join(", ")
            )));
        }
    }
    for v in runtime_inputs(tg) {
        let t = v.name();
        let s = input_map.get(t).cloned().unwrap_or_else(|| t.to_string());
        let Some(sv) = student.graph.inputs.iter().find(|i| i.name() == s) else {
            let names: Vec<&str> = runtime_inputs(&student.graph)
                .iter()
                .map(|v| v.name())
                .collect();
            return Err(PassError::Model(format!(
                "the teacher's input {t:?} has no student input {s:?} to read (student inputs: {}); map it with `inputs: {{ {t}: <student input> }}`",
                names.join(", ")
            )));
        };
        if let (Some(a), Some(b)) = (&v.ty, &sv.ty) {
            if !compatible(a, b) {
                return Err(PassError::Model(format!(
                    "the teacher's input {t:?} is {a} but the student's input {s:?} is {b}"
                )));
            }
        }
        wiring.insert(t.to_string(), s);
    }
    let renamer = Renamer {
        prefix,
        inputs: &wiring,
    };
    let f = |n: &str| renamer.main(n);

    // Only what the needed values depend on.
    for v in needed {
        if !tg.defines(v) {
            return Err(PassError::Model(format!("the teacher has no tensor {v:?}")));
        }
    }
    let (nodes, _) = tg.upstream(needed.iter().cloned());

    // Name clashes after prefixing.
    let sg = &student.graph;
    let mut node_names: HashSet<&str> = HashSet::new();
    for (_, n) in sg.nodes() {
        node_names.insert(n.name());
    }
    let clash = |what: &str, old: &str, new: &str| {
        PassError::Model(format!(
            "name clash after prefixing: the teacher's {what} {old:?} becomes {new:?}, which the student already has; choose another `teacher_prefix`"
        ))
    };
    for (id, n) in tg.nodes() {
        if !nodes.contains(&id) {
            continue;
        }
        for o in n.outputs.iter().filter(|o| !o.is_empty()) {
            let new = f(o);
            if sg.defines(&new) || sg.is_output(&new) || !sg.uses(&new).is_empty() {
                return Err(clash("tensor", o, &new));
            }
        }
        if !n.name().is_empty() {
            let new = format!("{prefix}{}", n.name());
            if node_names.contains(new.as_str()) {
                return Err(clash("node", n.name(), &new));
            }
        }
    }
    for t in tg.initializers() {
        let new = f(t.name());
        if wiring.contains_key(t.name()) {
            continue;
        }
        if sg.defines(&new) || !sg.uses(&new).is_empty() {
            return Err(clash("initializer", t.name(), &new));
        }
    }

    let mut record = Grafted {
        nodes: nodes.len(),
        wired: wiring.iter().map(|(a, b)| (a.clone(), b.clone())).collect(),
        ..Grafted::default()
    };
    record.opsets_raised = reconcile_opsets(student, teacher)?;
    record.functions = carry_functions(student, teacher)?;
    if let (Some(a), Some(b)) = (student.ir_version, teacher.ir_version) {
        student.ir_version = Some(a.max(b));
    }
    record.initializers = fill_graph(&mut student.graph, tg, &f, prefix, Some(&nodes))?;
    // The types the teacher declares for the values the head reads.
    for v in needed {
        let new = f(v);
        let declared = student.graph.value_info.iter().any(|i| i.name() == new);
        if let (false, Some(o)) = (declared, tg.outputs.iter().find(|o| o.name() == v)) {
            student.graph.value_info.push(rename_info(o, &f));
        }
    }
    Ok((needed.iter().map(|v| f(v)).collect(), record))
}

/// A scalar-free helper for building constant-valued nodes.
pub fn constant_node(name: String, output: String, tensor: Tensor) -> Node {
    let mut n = Node::new("Constant", name, Vec::new(), vec![output]);
    n.attributes
        .push(Attribute::new("value", AttrValue::Tensor(Box::new(tensor))));
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::DataType;

    fn tiny(prefix_names: &str) -> Model {
        let mut g = Graph::new("g");
        let ty = TypeInfo::tensor(DataType::Float, vec![Dim::symbol("N"), Dim::known(4)]);
        g.inputs.push(ValueInfo::new("x", ty.clone()));
        g.outputs
            .push(ValueInfo::new(format!("{prefix_names}y"), ty));
        g.add_initializer(Tensor::from_f32("w", vec![4, 4], &[0.5; 16]));
        g.add_node(Node::with_io(
            "MatMul",
            "mm",
            &["x", "w"],
            &[&format!("{prefix_names}y")],
        ));
        Model::new(g, 17)
    }

    #[test]
    fn every_name_is_prefixed_and_inputs_are_shared() {
        let mut s = tiny("");
        let t = tiny("");
        let (names, rec) = graft(&mut s, &t, "teacher/", &BTreeMap::new(), &["y".into()]).unwrap();
        assert_eq!(names, ["teacher/y"]);
        assert_eq!(rec.initializers, ["teacher/w"]);
        assert_eq!(rec.wired, [("x".to_string(), "x".to_string())]);
        let mm = s
            .graph
            .nodes()
            .find(|(_, n)| n.name() == "teacher/mm")
            .map(|(_, n)| n.clone())
            .unwrap();
        assert_eq!(mm.inputs, ["x", "teacher/w"]);
        // The bytes are the teacher's, not a copy.
        let (a, b) = (
            t.graph.initializer("w").unwrap().packed_bytes().unwrap(),
            s.graph
                .initializer("teacher/w")
                .unwrap()
                .packed_bytes()
                .unwrap(),
        );
        assert_eq!(a.as_ptr(), b.as_ptr());
    }

    #[test]
    fn clashes_and_opsets_are_errors() {
        let mut s = tiny("teacher/");
        let t = tiny("");
        let err = graft(&mut s, &t, "teacher/", &BTreeMap::new(), &["y".into()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("name clash") && err.contains("\"teacher/y\""),
            "{err}"
        );

        let mut s = tiny("");
        s.opset_import[0].version = Some(11);
        s.graph
            .add_node(Node::with_io("Softmax", "sm", &["y"], &["p"]));
        let err = graft(&mut s, &t, "teacher/", &BTreeMap::new(), &["y".into()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("Softmax") && err.contains("11") && err.contains("17"),
            "{err}"
        );
    }
}
