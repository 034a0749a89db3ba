//! IR -> ONNX protobuf, and the streaming writer.
//!
//! Building the protobuf message copies no weights (tensor data are `Bytes`
//! handles). [`write_model`] then streams it: every message is encoded by
//! prost except the path model -> graph -> initializer -> raw_data, whose
//! bytes go straight from the (memory-mapped) source to the writer. The
//! output is byte-for-byte what `prost::Message::encode` would produce
//! (fields in tag order), without ever holding the whole file in memory.

use std::io::{self, Write};

use bytes::Bytes;
use prost::encoding::{encode_key, encode_varint, WireType};
use prost::Message;

use super::proto;
use crate::ir::{
    AttrValue, Attribute, DimValue, Function, Graph, KeyValue, Model, Node, OpsetId, SparseTensor,
    Tensor, TensorData, TrainingInfo, TypeInfo, TypeKind, ValueInfo,
};

/// Converts the IR to protobuf messages.
pub fn to_proto(model: &Model) -> proto::ModelProto {
    proto::ModelProto {
        ir_version: model.ir_version,
        opset_import: opsets(&model.opset_import),
        producer_name: model.producer_name.clone(),
        producer_version: model.producer_version.clone(),
        domain: model.domain.clone(),
        model_version: model.model_version,
        doc_string: model.doc_string.clone(),
        graph: Some(graph(&model.graph)),
        metadata_props: kvs(&model.metadata_props),
        training_info: model.training_info.iter().map(training_info).collect(),
        functions: model.functions.iter().map(function).collect(),
        configuration: model
            .configuration
            .iter()
            .map(|b| proto::DeviceConfigurationProto::decode(b.clone()).unwrap_or_default())
            .collect(),
    }
}

fn kvs(v: &[KeyValue]) -> Vec<proto::StringStringEntryProto> {
    v.iter()
        .map(|kv| proto::StringStringEntryProto {
            key: kv.key.clone(),
            value: kv.value.clone(),
        })
        .collect()
}

fn opsets(v: &[OpsetId]) -> Vec<proto::OperatorSetIdProto> {
    v.iter()
        .map(|o| proto::OperatorSetIdProto {
            domain: o.domain.clone(),
            version: o.version,
        })
        .collect()
}

fn training_info(t: &TrainingInfo) -> proto::TrainingInfoProto {
    proto::TrainingInfoProto {
        initialization: t.initialization.as_ref().map(graph),
        algorithm: t.algorithm.as_ref().map(graph),
        initialization_binding: kvs(&t.initialization_binding),
        update_binding: kvs(&t.update_binding),
    }
}

fn function(f: &Function) -> proto::FunctionProto {
    proto::FunctionProto {
        name: f.name.clone(),
        input: f.inputs.clone(),
        output: f.outputs.clone(),
        attribute: f.attribute.clone(),
        attribute_proto: f.attribute_proto.iter().map(attribute).collect(),
        node: f.nodes.iter().map(node).collect(),
        doc_string: f.doc_string.clone(),
        opset_import: opsets(&f.opset_import),
        domain: f.domain.clone(),
        overload: f.overload.clone(),
        value_info: f.value_info.iter().map(value_info).collect(),
        metadata_props: kvs(&f.metadata_props),
    }
}

/// The graph's nodes in topological order (the file's order when valid).
/// A cyclic graph keeps its list order: the verifier reports cycles before
/// anything is written, so this only matters for `dump`-style inspection.
pub(crate) fn graph(g: &Graph) -> proto::GraphProto {
    let nodes: Vec<proto::NodeProto> = match g.topological_order() {
        Ok(order) => order.into_iter().map(|id| node(g.node(id))).collect(),
        Err(_) => g.nodes().map(|(_, n)| node(n)).collect(),
    };
    proto::GraphProto {
        node: nodes,
        name: g.name.clone(),
        initializer: g.initializers().iter().map(tensor).collect(),
        sparse_initializer: g.sparse_initializers.iter().map(sparse).collect(),
        doc_string: g.doc_string.clone(),
        input: g.inputs.iter().map(value_info).collect(),
        output: g.outputs.iter().map(value_info).collect(),
        value_info: g.value_info.iter().map(value_info).collect(),
        quantization_annotation: g
            .quantization_annotation
            .iter()
            .map(|a| proto::TensorAnnotation {
                tensor_name: a.tensor_name.clone(),
                quant_parameter_tensor_names: kvs(&a.quant_parameter_tensor_names),
            })
            .collect(),
        metadata_props: kvs(&g.metadata_props),
    }
}

fn node(n: &Node) -> proto::NodeProto {
    proto::NodeProto {
        input: n.inputs.clone(),
        output: n.outputs.clone(),
        name: n.name.clone(),
        op_type: n.op_type.clone(),
        domain: n.domain.clone(),
        overload: n.overload.clone(),
        attribute: n.attributes.iter().map(attribute).collect(),
        doc_string: n.doc_string.clone(),
        metadata_props: kvs(&n.metadata_props),
        device_configurations: n
            .device_configurations
            .iter()
            .map(|b| proto::NodeDeviceConfigurationProto::decode(b.clone()).unwrap_or_default())
            .collect(),
    }
}

fn attribute(a: &Attribute) -> proto::AttributeProto {
    let mut p = proto::AttributeProto {
        name: a.name.clone(),
        ref_attr_name: a.ref_attr_name.clone(),
        doc_string: a.doc_string.clone(),
        r#type: a.type_code,
        ..Default::default()
    };
    match &a.value {
        AttrValue::Unset => {}
        AttrValue::Float(f) => p.f = Some(*f),
        AttrValue::Int(i) => p.i = Some(*i),
        AttrValue::String(s) => p.s = Some(s.clone()),
        AttrValue::Tensor(t) => p.t = Some(tensor(t)),
        AttrValue::Graph(g) => p.g = Some(graph(g)),
        AttrValue::SparseTensor(s) => p.sparse_tensor = Some(sparse(s)),
        AttrValue::TypeProto(t) => p.tp = Some(type_proto(t)),
        AttrValue::Floats(v) => p.floats = v.clone(),
        AttrValue::Ints(v) => p.ints = v.clone(),
        AttrValue::Strings(v) => p.strings = v.clone(),
        AttrValue::Tensors(v) => p.tensors = v.iter().map(tensor).collect(),
        AttrValue::Graphs(v) => p.graphs = v.iter().map(graph).collect(),
        AttrValue::SparseTensors(v) => p.sparse_tensors = v.iter().map(sparse).collect(),
        AttrValue::TypeProtos(v) => p.type_protos = v.iter().map(type_proto).collect(),
    }
    p
}

fn sparse(s: &SparseTensor) -> proto::SparseTensorProto {
    proto::SparseTensorProto {
        values: s.values.as_ref().map(tensor),
        indices: s.indices.as_ref().map(tensor),
        dims: s.dims.clone(),
    }
}

pub(crate) fn tensor(t: &Tensor) -> proto::TensorProto {
    let mut p = proto::TensorProto {
        dims: t.dims.clone(),
        data_type: t.data_type,
        segment: t.segment.as_ref().map(|s| proto::tensor_proto::Segment {
            begin: s.begin,
            end: s.end,
        }),
        name: t.name.clone(),
        doc_string: t.doc_string.clone(),
        data_location: t.data_location,
        metadata_props: kvs(&t.metadata_props),
        ..Default::default()
    };
    match &t.data {
        TensorData::Raw(b) => p.raw_data = Some(b.clone()),
        TensorData::External(e) => p.external_data = kvs(&e.entries),
        TensorData::Fields(f) => {
            p.float_data = f.float_data.clone();
            p.int32_data = f.int32_data.clone();
            p.string_data = f.string_data.clone();
            p.int64_data = f.int64_data.clone();
            p.double_data = f.double_data.clone();
            p.uint64_data = f.uint64_data.clone();
        }
    }
    p
}

fn value_info(v: &ValueInfo) -> proto::ValueInfoProto {
    proto::ValueInfoProto {
        name: v.name.clone(),
        r#type: v.ty.as_ref().map(type_proto),
        doc_string: v.doc_string.clone(),
        metadata_props: kvs(&v.metadata_props),
    }
}

fn shape(dims: &[crate::ir::Dim]) -> proto::TensorShapeProto {
    use proto::tensor_shape_proto::dimension::Value;
    proto::TensorShapeProto {
        dim: dims
            .iter()
            .map(|d| proto::tensor_shape_proto::Dimension {
                value: match &d.value {
                    DimValue::Known(v) => Some(Value::DimValue(*v)),
                    DimValue::Symbol(s) => Some(Value::DimParam(s.clone())),
                    DimValue::Unknown => None,
                },
                denotation: d.denotation.clone(),
            })
            .collect(),
    }
}

fn type_proto(t: &TypeInfo) -> proto::TypeProto {
    use proto::type_proto::{self as tp, Value};
    let boxed = |t: &Option<Box<TypeInfo>>| t.as_ref().map(|t| Box::new(type_proto(t)));
    let value = match &t.kind {
        TypeKind::Tensor { elem, shape: s } => Some(Value::TensorType(tp::Tensor {
            elem_type: elem.map(|e| e.code()),
            shape: s.as_deref().map(shape),
        })),
        TypeKind::SparseTensor { elem, shape: s } => {
            Some(Value::SparseTensorType(tp::SparseTensor {
                elem_type: elem.map(|e| e.code()),
                shape: s.as_deref().map(shape),
            }))
        }
        TypeKind::Sequence(e) => Some(Value::SequenceType(Box::new(tp::Sequence {
            elem_type: boxed(e),
        }))),
        TypeKind::Optional(e) => Some(Value::OptionalType(Box::new(tp::Optional {
            elem_type: boxed(e),
        }))),
        TypeKind::Map { key, value } => Some(Value::MapType(Box::new(tp::Map {
            key_type: key.map(|k| k.code()),
            value_type: boxed(value),
        }))),
        TypeKind::Opaque { domain, name } => Some(Value::OpaqueType(tp::Opaque {
            domain: domain.clone(),
            name: name.clone(),
        })),
        TypeKind::Unset => None,
    };
    proto::TypeProto {
        value,
        denotation: t.denotation.clone(),
    }
}

// ---- streaming -------------------------------------------------------------

/// Writes `m` to `w` in protobuf form, streaming initializer data. Returns
/// the number of bytes written.
pub fn write_model(m: &proto::ModelProto, w: &mut impl Write) -> io::Result<u64> {
    let mut w = Counting { inner: w, count: 0 };
    let Some(g) = &m.graph else {
        w.write_all(&m.encode_to_vec())?;
        return Ok(w.count);
    };
    // ModelProto: fields 1..=6, then graph (7), then 8 and above.
    let head = proto::ModelProto {
        ir_version: m.ir_version,
        producer_name: m.producer_name.clone(),
        producer_version: m.producer_version.clone(),
        domain: m.domain.clone(),
        model_version: m.model_version,
        doc_string: m.doc_string.clone(),
        ..Default::default()
    };
    w.write_all(&head.encode_to_vec())?;
    write_len_prefix(&mut w, 7, g.encoded_len())?;
    write_graph(g, &mut w)?;
    let tail = proto::ModelProto {
        opset_import: m.opset_import.clone(),
        metadata_props: m.metadata_props.clone(),
        training_info: m.training_info.clone(),
        functions: m.functions.clone(),
        configuration: m.configuration.clone(),
        ..Default::default()
    };
    w.write_all(&tail.encode_to_vec())?;
    Ok(w.count)
}

fn write_graph(g: &proto::GraphProto, w: &mut impl Write) -> io::Result<()> {
    // GraphProto: node (1), name (2), then initializer (5), then 10 and above.
    let head = proto::GraphProto {
        node: g.node.clone(),
        name: g.name.clone(),
        ..Default::default()
    };
    w.write_all(&head.encode_to_vec())?;
    for t in &g.initializer {
        write_len_prefix(w, 5, t.encoded_len())?;
        write_tensor(t, w)?;
    }
    let tail = proto::GraphProto {
        sparse_initializer: g.sparse_initializer.clone(),
        doc_string: g.doc_string.clone(),
        input: g.input.clone(),
        output: g.output.clone(),
        value_info: g.value_info.clone(),
        quantization_annotation: g.quantization_annotation.clone(),
        metadata_props: g.metadata_props.clone(),
        ..Default::default()
    };
    w.write_all(&tail.encode_to_vec())
}

fn write_tensor(t: &proto::TensorProto, w: &mut impl Write) -> io::Result<()> {
    let Some(raw) = &t.raw_data else {
        return w.write_all(&t.encode_to_vec());
    };
    // TensorProto: fields 1..=8, raw_data (9), then 10 and above.
    let head = proto::TensorProto {
        dims: t.dims.clone(),
        data_type: t.data_type,
        segment: t.segment,
        float_data: t.float_data.clone(),
        int32_data: t.int32_data.clone(),
        string_data: t.string_data.clone(),
        int64_data: t.int64_data.clone(),
        name: t.name.clone(),
        ..Default::default()
    };
    w.write_all(&head.encode_to_vec())?;
    write_len_prefix(w, 9, raw.len())?;
    w.write_all(raw)?;
    let tail = proto::TensorProto {
        double_data: t.double_data.clone(),
        uint64_data: t.uint64_data.clone(),
        doc_string: t.doc_string.clone(),
        external_data: t.external_data.clone(),
        data_location: t.data_location,
        metadata_props: t.metadata_props.clone(),
        ..Default::default()
    };
    w.write_all(&tail.encode_to_vec())
}

fn write_len_prefix(w: &mut impl Write, tag: u32, len: usize) -> io::Result<()> {
    let mut buf = Vec::with_capacity(16);
    encode_key(tag, WireType::LengthDelimited, &mut buf);
    encode_varint(len as u64, &mut buf);
    w.write_all(&buf)
}

struct Counting<'a, W: Write> {
    inner: &'a mut W,
    count: u64,
}

impl<W: Write> Write for Counting<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Encodes the model into one buffer (small models, tests, tract input).
pub fn encode(model: &Model) -> Vec<u8> {
    let p = to_proto(model);
    let mut out = Vec::with_capacity(p.encoded_len());
    // Writing to a Vec cannot fail.
    let _ = write_model(&p, &mut out);
    out
}

/// Bytes handle of an encoded model.
pub fn encode_bytes(model: &Model) -> Bytes {
    Bytes::from(encode(model))
}
