//! `whittle dump`: a deterministic text form of a model, for humans reading
//! snapshot diffs.
//!
//! Nodes appear in topological order (the file's order when valid), one per
//! line with attributes sorted by name; subgraphs are indented under their
//! node. Tensors are summarised as dtype, shape and an FNV-1a checksum of
//! their elements; only tiny tensors (at most 8 elements) show values. No
//! addresses, hash-map orders or timings leak in, so the text is stable
//! across runs and machines.

use std::fmt::Write;

use super::attribute::{AttrValue, Attribute};
use super::graph::Graph;
use super::model::Model;
use super::node::Node;
use super::tensor::{SparseTensor, Tensor, TensorData};
use super::types::{KeyValue, OpsetId, ValueInfo};
use super::DataType;

/// The text form of a model.
pub fn dump(model: &Model) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "model ir_version={} opsets=[{}]",
        opt_num(model.ir_version),
        opsets(&model.opset_import)
    );
    for (label, v) in [
        ("producer", &model.producer_name),
        ("producer_version", &model.producer_version),
        ("domain", &model.domain),
        ("doc", &model.doc_string),
    ] {
        if let Some(v) = v {
            let _ = writeln!(out, "  {label} {}", quote(v));
        }
    }
    if let Some(v) = model.model_version {
        let _ = writeln!(out, "  model_version {v}");
    }
    meta(&mut out, 1, &model.metadata_props);
    if !model.configuration.is_empty() {
        let _ = writeln!(out, "  device_configurations {}", model.configuration.len());
    }
    graph(&mut out, 0, "graph", &model.graph);
    for (i, t) in model.training_info.iter().enumerate() {
        let _ = writeln!(out, "training_info[{i}]");
        for (what, b) in [
            ("init_binding", &t.initialization_binding),
            ("update_binding", &t.update_binding),
        ] {
            for kv in b {
                let _ = writeln!(out, "  {what} {} <- {}", kv.key(), kv.value());
            }
        }
        for (what, g) in [
            ("initialization", &t.initialization),
            ("algorithm", &t.algorithm),
        ] {
            if let Some(g) = g {
                graph(&mut out, 1, what, g);
            }
        }
    }
    for f in &model.functions {
        let _ = writeln!(
            out,
            "function {}:{}{} ({}) -> ({}) opsets=[{}]",
            f.domain.as_deref().unwrap_or(""),
            f.name.as_deref().unwrap_or(""),
            f.overload
                .as_deref()
                .map(|o| format!("@{o}"))
                .unwrap_or_default(),
            f.inputs.join(", "),
            f.outputs.join(", "),
            opsets(&f.opset_import)
        );
        if !f.attribute.is_empty() {
            let _ = writeln!(out, "  attributes {}", f.attribute.join(", "));
        }
        for a in sorted(&f.attribute_proto) {
            let _ = writeln!(out, "  default {}", attr(a, 2));
        }
        meta(&mut out, 1, &f.metadata_props);
        for v in &f.value_info {
            value_line(&mut out, 1, "value_info", v);
        }
        for n in &f.nodes {
            node_line(&mut out, 1, n);
        }
    }
    out
}

fn graph(out: &mut String, depth: usize, label: &str, g: &Graph) {
    let pad = "  ".repeat(depth);
    let _ = writeln!(
        out,
        "{pad}{label} {}",
        quote(g.name.as_deref().unwrap_or(""))
    );
    let depth = depth + 1;
    let pad = "  ".repeat(depth);
    if let Some(doc) = &g.doc_string {
        let _ = writeln!(out, "{pad}doc {}", quote(doc));
    }
    meta(out, depth, &g.metadata_props);
    for v in &g.inputs {
        value_line(out, depth, "input", v);
    }
    for t in g.initializers() {
        let _ = writeln!(out, "{pad}init {}", tensor(t));
    }
    for s in &g.sparse_initializers {
        let _ = writeln!(out, "{pad}sparse_init {}", sparse(s));
    }
    match g.topological_order() {
        Ok(order) => {
            for id in order {
                node_line(out, depth, g.node(id));
            }
        }
        Err(e) => {
            let _ = writeln!(out, "{pad}# not a DAG ({e}); nodes in file order:");
            for (_, n) in g.nodes() {
                node_line(out, depth, n);
            }
        }
    }
    for v in &g.value_info {
        value_line(out, depth, "value_info", v);
    }
    for a in &g.quantization_annotation {
        let params: Vec<String> = a
            .quant_parameter_tensor_names
            .iter()
            .map(|kv| format!("{}={}", kv.key(), kv.value()))
            .collect();
        let _ = writeln!(
            out,
            "{pad}quant_annotation {} [{}]",
            a.tensor_name.as_deref().unwrap_or(""),
            params.join(", ")
        );
    }
    for v in &g.outputs {
        value_line(out, depth, "output", v);
    }
}

fn node_line(out: &mut String, depth: usize, n: &Node) {
    let pad = "  ".repeat(depth);
    let domain = n.domain();
    let op = if domain.is_empty() {
        n.op_type().to_string()
    } else {
        format!("{domain}:{}", n.op_type())
    };
    let overload = n
        .overload
        .as_deref()
        .map(|o| format!("@{o}"))
        .unwrap_or_default();
    let _ = write!(
        out,
        "{pad}{op}{overload} {} ({}) -> ({})",
        quote(n.name()),
        n.inputs.join(", "),
        n.outputs.join(", ")
    );
    let attrs = sorted(&n.attributes);
    let simple: Vec<String> = attrs
        .iter()
        .filter(|a| a.graphs().is_empty())
        .map(|a| attr(a, depth + 1))
        .collect();
    if !simple.is_empty() {
        let _ = write!(out, " {{{}}}", simple.join(", "));
    }
    if !n.metadata_props.is_empty() {
        let kvs: Vec<String> = n
            .metadata_props
            .iter()
            .map(|kv| format!("{}={}", kv.key(), quote(kv.value())))
            .collect();
        let _ = write!(out, " meta{{{}}}", kvs.join(", "));
    }
    if !n.device_configurations.is_empty() {
        let _ = write!(
            out,
            " device_configurations={}",
            n.device_configurations.len()
        );
    }
    out.push('\n');
    for a in attrs {
        for (k, g) in a.graphs().into_iter().enumerate() {
            let label = match &a.value {
                AttrValue::Graphs(_) => format!("{}[{k}] =", a.name()),
                _ => format!("{} =", a.name()),
            };
            graph(out, depth + 1, &label, g);
        }
    }
}

fn sorted(attrs: &[Attribute]) -> Vec<&Attribute> {
    let mut v: Vec<&Attribute> = attrs.iter().collect();
    v.sort_by(|a, b| a.name().cmp(b.name()));
    v
}

fn attr(a: &Attribute, _depth: usize) -> String {
    let value = match &a.value {
        AttrValue::Unset => String::new(),
        AttrValue::Float(f) => format!("{f:?}"),
        AttrValue::Int(i) => i.to_string(),
        AttrValue::String(s) => quote(&String::from_utf8_lossy(s)),
        AttrValue::Tensor(t) => tensor(t),
        AttrValue::Graph(_) | AttrValue::Graphs(_) => "<graph>".into(),
        AttrValue::SparseTensor(s) => sparse(s),
        AttrValue::TypeProto(t) => t.to_string(),
        AttrValue::Floats(v) => list(v.iter().map(|f| format!("{f:?}"))),
        AttrValue::Ints(v) => list(v.iter().map(i64::to_string)),
        AttrValue::Strings(v) => list(v.iter().map(|s| quote(&String::from_utf8_lossy(s)))),
        AttrValue::Tensors(v) => list(v.iter().map(tensor)),
        AttrValue::SparseTensors(v) => list(v.iter().map(sparse)),
        AttrValue::TypeProtos(v) => list(v.iter().map(|t| t.to_string())),
    };
    let mut s = format!("{}={value}", a.name());
    if let Some(r) = &a.ref_attr_name {
        let _ = write!(s, "@{r}");
    }
    s
}

fn list(items: impl Iterator<Item = String>) -> String {
    format!("[{}]", items.collect::<Vec<_>>().join(", "))
}

fn value_line(out: &mut String, depth: usize, label: &str, v: &ValueInfo) {
    let pad = "  ".repeat(depth);
    let ty =
        v.ty.as_ref()
            .map_or_else(|| "untyped".to_string(), |t| t.to_string());
    let _ = write!(out, "{pad}{label} {}: {ty}", v.name());
    if !v.metadata_props.is_empty() {
        let kvs: Vec<String> = v
            .metadata_props
            .iter()
            .map(|kv| format!("{}={}", kv.key(), quote(kv.value())))
            .collect();
        let _ = write!(out, " meta{{{}}}", kvs.join(", "));
    }
    out.push('\n');
}

/// `name: f32[8,3,3,3] fnv=...`, with values for tiny numeric tensors.
fn tensor(t: &Tensor) -> String {
    let dims: Vec<String> = t.dims.iter().map(i64::to_string).collect();
    let mut s = if t.name().is_empty() {
        format!("{}[{}]", t.dtype(), dims.join(","))
    } else {
        format!("{}: {}[{}]", t.name(), t.dtype(), dims.join(","))
    };
    if let TensorData::External(e) = &t.data {
        let _ = write!(s, " external({}@{}+{})", e.location, e.offset, e.length);
    }
    match small_values(t) {
        Some(values) => {
            let _ = write!(s, " = {values}");
        }
        None => match t.checksum() {
            Ok(c) => {
                let _ = write!(s, " fnv={c:016x}");
            }
            Err(_) => s.push_str(" fnv=unreadable"),
        },
    }
    if !t.metadata_props.is_empty() {
        let _ = write!(s, " meta[{}]", t.metadata_props.len());
    }
    s
}

fn small_values(t: &Tensor) -> Option<String> {
    if t.num_elements()? > 8 || t.is_external() {
        return None;
    }
    let bytes = t.packed_bytes().ok()?;
    let values: Vec<String> = match t.dtype() {
        DataType::Float => bytes
            .chunks_exact(4)
            .map(|c| format!("{:?}", f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect(),
        DataType::Int64 => bytes
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])).to_string())
            .collect(),
        DataType::Int32 => bytes
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]).to_string())
            .collect(),
        DataType::Int8 => bytes.iter().map(|&b| (b as i8).to_string()).collect(),
        DataType::Uint8 => bytes.iter().map(u8::to_string).collect(),
        DataType::Bool => bytes.iter().map(|&b| (b != 0).to_string()).collect(),
        _ => return None,
    };
    Some(format!("[{}]", values.join(", ")))
}

fn sparse(s: &SparseTensor) -> String {
    let dims: Vec<String> = s.dims.iter().map(i64::to_string).collect();
    format!(
        "[{}] values {} indices {}",
        dims.join(","),
        s.values.as_ref().map_or_else(|| "-".into(), tensor),
        s.indices.as_ref().map_or_else(|| "-".into(), tensor)
    )
}

fn meta(out: &mut String, depth: usize, props: &[KeyValue]) {
    let pad = "  ".repeat(depth);
    for kv in props {
        let _ = writeln!(out, "{pad}meta {} = {}", quote(kv.key()), quote(kv.value()));
    }
}

fn opsets(o: &[OpsetId]) -> String {
    o.iter()
        .map(|o| {
            let d = if o.domain().is_empty() {
                "ai.onnx"
            } else {
                o.domain()
            };
            format!("{d}:{}", opt_num(o.version))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn opt_num(v: Option<i64>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

fn quote(s: &str) -> String {
    format!("{s:?}")
}
