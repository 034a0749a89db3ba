//! ONNX protobuf -> IR.

use std::sync::Arc;

use bytes::Bytes;
use prost::Message;

use super::proto;
use super::OnnxError;
use crate::ir::{
    attr_kind, AttrValue, Attribute, DataType, Dim, DimValue, ExternalData, ExternalFiles,
    Function, Graph, KeyValue, Model, Node, OpsetId, Segment, SparseTensor, Tensor,
    TensorAnnotation, TensorData, TrainingInfo, TypeInfo, TypeKind, TypedFields, ValueInfo,
};

/// Decodes a model from its bytes. Tensor data is sliced out of `bytes`, not
/// copied. `files` resolves external data (the model's folder); without it,
/// a model with external tensors is refused.
pub fn decode(bytes: Bytes, files: Option<Arc<ExternalFiles>>) -> Result<Model, OnnxError> {
    if bytes.is_empty() {
        return Err(OnnxError::Invalid("the file is empty".into()));
    }
    let proto = proto::ModelProto::decode(bytes).map_err(|e| {
        OnnxError::Invalid(format!(
            "not an ONNX model, or a truncated one: the protobuf does not parse ({e})"
        ))
    })?;
    let cx = Cx { files };
    cx.model(proto)
}

/// Decodes a standalone `TensorProto` (the `.pb` files of ONNX's backend
/// test data, for example). External data is refused.
pub fn decode_tensor(bytes: Bytes) -> Result<Tensor, OnnxError> {
    let proto = proto::TensorProto::decode(bytes).map_err(|e| {
        OnnxError::Invalid(format!(
            "not an ONNX TensorProto: the protobuf does not parse ({e})"
        ))
    })?;
    Cx { files: None }.tensor(proto)
}

struct Cx {
    files: Option<Arc<ExternalFiles>>,
}

fn kvs(v: Vec<proto::StringStringEntryProto>) -> Vec<KeyValue> {
    v.into_iter()
        .map(|e| KeyValue {
            key: e.key,
            value: e.value,
        })
        .collect()
}

fn opsets(v: Vec<proto::OperatorSetIdProto>) -> Vec<OpsetId> {
    v.into_iter()
        .map(|o| OpsetId {
            domain: o.domain,
            version: o.version,
        })
        .collect()
}

impl Cx {
    fn model(&self, m: proto::ModelProto) -> Result<Model, OnnxError> {
        let graph = m.graph.ok_or_else(|| {
            OnnxError::Invalid(
                "not an ONNX model: it has no graph (ModelProto.graph is unset)".into(),
            )
        })?;
        Ok(Model {
            ir_version: m.ir_version,
            opset_import: opsets(m.opset_import),
            producer_name: m.producer_name,
            producer_version: m.producer_version,
            domain: m.domain,
            model_version: m.model_version,
            doc_string: m.doc_string,
            graph: self.graph(graph)?,
            metadata_props: kvs(m.metadata_props),
            training_info: m
                .training_info
                .into_iter()
                .map(|t| self.training_info(t))
                .collect::<Result<_, _>>()?,
            functions: m
                .functions
                .into_iter()
                .map(|f| self.function(f))
                .collect::<Result<_, _>>()?,
            configuration: m
                .configuration
                .into_iter()
                .map(|c| Bytes::from(c.encode_to_vec()))
                .collect(),
        })
    }

    fn training_info(&self, t: proto::TrainingInfoProto) -> Result<TrainingInfo, OnnxError> {
        Ok(TrainingInfo {
            initialization: t.initialization.map(|g| self.graph(g)).transpose()?,
            algorithm: t.algorithm.map(|g| self.graph(g)).transpose()?,
            initialization_binding: kvs(t.initialization_binding),
            update_binding: kvs(t.update_binding),
        })
    }

    fn function(&self, f: proto::FunctionProto) -> Result<Function, OnnxError> {
        Ok(Function {
            name: f.name,
            domain: f.domain,
            overload: f.overload,
            inputs: f.input,
            outputs: f.output,
            attribute: f.attribute,
            attribute_proto: f
                .attribute_proto
                .into_iter()
                .map(|a| self.attribute(a, "function attribute"))
                .collect::<Result<_, _>>()?,
            nodes: f
                .node
                .into_iter()
                .map(|n| self.node(n))
                .collect::<Result<_, _>>()?,
            doc_string: f.doc_string,
            opset_import: opsets(f.opset_import),
            value_info: f.value_info.into_iter().map(value_info).collect(),
            metadata_props: kvs(f.metadata_props),
        })
    }

    fn graph(&self, g: proto::GraphProto) -> Result<Graph, OnnxError> {
        let mut graph = Graph::default();
        graph.name = g.name;
        graph.doc_string = g.doc_string;
        graph.metadata_props = kvs(g.metadata_props);
        graph.inputs = g.input.into_iter().map(value_info).collect();
        graph.outputs = g.output.into_iter().map(value_info).collect();
        graph.value_info = g.value_info.into_iter().map(value_info).collect();
        graph.quantization_annotation = g
            .quantization_annotation
            .into_iter()
            .map(|a| TensorAnnotation {
                tensor_name: a.tensor_name,
                quant_parameter_tensor_names: kvs(a.quant_parameter_tensor_names),
            })
            .collect();
        graph.sparse_initializers = g
            .sparse_initializer
            .into_iter()
            .map(|s| self.sparse(s))
            .collect::<Result<_, _>>()?;
        for t in g.initializer {
            graph.add_initializer(self.tensor(t)?);
        }
        for n in g.node {
            graph.add_node(self.node(n)?);
        }
        Ok(graph)
    }

    fn node(&self, n: proto::NodeProto) -> Result<Node, OnnxError> {
        let mut node = Node {
            name: n.name,
            op_type: n.op_type,
            domain: n.domain,
            overload: n.overload,
            inputs: n.input,
            outputs: n.output,
            attributes: Vec::with_capacity(n.attribute.len()),
            doc_string: n.doc_string,
            metadata_props: kvs(n.metadata_props),
            device_configurations: n
                .device_configurations
                .into_iter()
                .map(|c| Bytes::from(c.encode_to_vec()))
                .collect(),
        };
        for a in n.attribute {
            let attr = self.attribute(a, &node.label())?;
            node.attributes.push(attr);
        }
        Ok(node)
    }

    fn attribute(&self, a: proto::AttributeProto, owner: &str) -> Result<Attribute, OnnxError> {
        let name = a.name.clone().unwrap_or_default();
        // Which value fields are set, as AttributeType codes.
        let mut set = Vec::new();
        let fields = [
            (a.f.is_some(), attr_kind::FLOAT),
            (a.i.is_some(), attr_kind::INT),
            (a.s.is_some(), attr_kind::STRING),
            (a.t.is_some(), attr_kind::TENSOR),
            (a.g.is_some(), attr_kind::GRAPH),
            (a.sparse_tensor.is_some(), attr_kind::SPARSE_TENSOR),
            (a.tp.is_some(), attr_kind::TYPE_PROTO),
            (!a.floats.is_empty(), attr_kind::FLOATS),
            (!a.ints.is_empty(), attr_kind::INTS),
            (!a.strings.is_empty(), attr_kind::STRINGS),
            (!a.tensors.is_empty(), attr_kind::TENSORS),
            (!a.graphs.is_empty(), attr_kind::GRAPHS),
            (!a.sparse_tensors.is_empty(), attr_kind::SPARSE_TENSORS),
            (!a.type_protos.is_empty(), attr_kind::TYPE_PROTOS),
        ];
        for (present, code) in fields {
            if present {
                set.push(code);
            }
        }
        let kind = match a.r#type {
            Some(code) => code,
            None => set.first().copied().unwrap_or(attr_kind::UNDEFINED),
        };
        if set.iter().any(|&c| c != kind) {
            return Err(OnnxError::Invalid(format!(
                "attribute {name:?} of {owner}: its type is {kind} but other value fields are set too"
            )));
        }
        let value = match kind {
            attr_kind::FLOAT => a.f.map_or(AttrValue::Unset, AttrValue::Float),
            attr_kind::INT => a.i.map_or(AttrValue::Unset, AttrValue::Int),
            attr_kind::STRING => a.s.map_or(AttrValue::Unset, AttrValue::String),
            attr_kind::TENSOR => match a.t {
                Some(t) => AttrValue::Tensor(Box::new(self.tensor(t)?)),
                None => AttrValue::Unset,
            },
            attr_kind::GRAPH => match a.g {
                Some(g) => AttrValue::Graph(Box::new(self.graph(g)?)),
                None => AttrValue::Unset,
            },
            attr_kind::SPARSE_TENSOR => match a.sparse_tensor {
                Some(s) => AttrValue::SparseTensor(Box::new(self.sparse(s)?)),
                None => AttrValue::Unset,
            },
            attr_kind::TYPE_PROTO => match a.tp {
                Some(t) => AttrValue::TypeProto(Box::new(type_info(t))),
                None => AttrValue::Unset,
            },
            attr_kind::FLOATS => AttrValue::Floats(a.floats),
            attr_kind::INTS => AttrValue::Ints(a.ints),
            attr_kind::STRINGS => AttrValue::Strings(a.strings),
            attr_kind::TENSORS => AttrValue::Tensors(
                a.tensors
                    .into_iter()
                    .map(|t| self.tensor(t))
                    .collect::<Result<_, _>>()?,
            ),
            attr_kind::GRAPHS => AttrValue::Graphs(
                a.graphs
                    .into_iter()
                    .map(|g| self.graph(g))
                    .collect::<Result<_, _>>()?,
            ),
            attr_kind::SPARSE_TENSORS => AttrValue::SparseTensors(
                a.sparse_tensors
                    .into_iter()
                    .map(|s| self.sparse(s))
                    .collect::<Result<_, _>>()?,
            ),
            attr_kind::TYPE_PROTOS => {
                AttrValue::TypeProtos(a.type_protos.into_iter().map(type_info).collect())
            }
            _ => AttrValue::Unset,
        };
        Ok(Attribute {
            name: a.name,
            ref_attr_name: a.ref_attr_name,
            doc_string: a.doc_string,
            type_code: a.r#type,
            value,
        })
    }

    fn sparse(&self, s: proto::SparseTensorProto) -> Result<SparseTensor, OnnxError> {
        Ok(SparseTensor {
            values: s.values.map(|t| self.tensor(t)).transpose()?,
            indices: s.indices.map(|t| self.tensor(t)).transpose()?,
            dims: s.dims,
        })
    }

    fn tensor(&self, t: proto::TensorProto) -> Result<Tensor, OnnxError> {
        let name = t.name.clone().unwrap_or_default();
        let typed = TypedFields {
            float_data: t.float_data,
            int32_data: t.int32_data,
            string_data: t.string_data,
            int64_data: t.int64_data,
            double_data: t.double_data,
            uint64_data: t.uint64_data,
        };
        let has_typed = typed != TypedFields::default();
        let external = t.data_location == Some(proto::tensor_proto::DataLocation::External as i32);
        let invalid = |why: &str| OnnxError::Invalid(format!("tensor {name:?}: {why}"));
        let data = if external {
            if t.raw_data.is_some() || has_typed {
                return Err(invalid(
                    "its data is marked external but is also stored inline",
                ));
            }
            let expected = t
                .dims
                .iter()
                .try_fold(1u64, |acc, &d| {
                    u64::try_from(d).ok().and_then(|d| acc.checked_mul(d))
                })
                .and_then(|n| DataType::from_code(t.data_type.unwrap_or(0)).packed_len(n));
            let files = match &self.files {
                Some(f) => Some(f.clone()),
                None => {
                    return Err(invalid(
                        "its data is external, but the model was not read from a file",
                    ))
                }
            };
            TensorData::External(
                ExternalData::new(&name, kvs(t.external_data), expected, files)
                    .map_err(OnnxError::External)?,
            )
        } else {
            if !t.external_data.is_empty() {
                return Err(invalid(
                    "it has external_data entries but data_location is not EXTERNAL",
                ));
            }
            match t.raw_data {
                Some(raw) if has_typed => {
                    let _ = raw;
                    return Err(invalid("it stores data in raw_data and in typed fields"));
                }
                Some(raw) => TensorData::Raw(raw),
                None => TensorData::Fields(typed),
            }
        };
        Ok(Tensor {
            name: t.name,
            data_type: t.data_type,
            dims: t.dims,
            segment: t.segment.map(|s| Segment {
                begin: s.begin,
                end: s.end,
            }),
            doc_string: t.doc_string,
            metadata_props: kvs(t.metadata_props),
            data_location: t.data_location,
            data,
        })
    }
}

fn value_info(v: proto::ValueInfoProto) -> ValueInfo {
    ValueInfo {
        name: v.name,
        ty: v.r#type.map(type_info),
        doc_string: v.doc_string,
        metadata_props: kvs(v.metadata_props),
    }
}

fn shape(s: proto::TensorShapeProto) -> Vec<Dim> {
    use proto::tensor_shape_proto::dimension::Value;
    s.dim
        .into_iter()
        .map(|d| Dim {
            value: match d.value {
                Some(Value::DimValue(v)) => DimValue::Known(v),
                Some(Value::DimParam(p)) => DimValue::Symbol(p),
                None => DimValue::Unknown,
            },
            denotation: d.denotation,
        })
        .collect()
}

fn type_info(t: proto::TypeProto) -> TypeInfo {
    use proto::type_proto::Value;
    let boxed = |t: Option<Box<proto::TypeProto>>| t.map(|t| Box::new(type_info(*t)));
    let kind = match t.value {
        Some(Value::TensorType(t)) => TypeKind::Tensor {
            elem: t.elem_type.map(DataType::from_code),
            shape: t.shape.map(shape),
        },
        Some(Value::SparseTensorType(t)) => TypeKind::SparseTensor {
            elem: t.elem_type.map(DataType::from_code),
            shape: t.shape.map(shape),
        },
        Some(Value::SequenceType(s)) => TypeKind::Sequence(boxed(s.elem_type)),
        Some(Value::OptionalType(o)) => TypeKind::Optional(boxed(o.elem_type)),
        Some(Value::MapType(m)) => TypeKind::Map {
            key: m.key_type.map(DataType::from_code),
            value: boxed(m.value_type),
        },
        Some(Value::OpaqueType(o)) => TypeKind::Opaque {
            domain: o.domain,
            name: o.name,
        },
        None => TypeKind::Unset,
    };
    TypeInfo {
        kind,
        denotation: t.denotation,
    }
}
