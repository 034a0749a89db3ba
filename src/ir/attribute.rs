//! Node attributes.

use bytes::Bytes;

use super::graph::Graph;
use super::tensor::{SparseTensor, Tensor};
use super::types::TypeInfo;

/// A named attribute of a node, or an attribute declared by a function.
#[derive(Clone, Debug, PartialEq)]
pub struct Attribute {
    /// The attribute's name.
    pub name: Option<String>,
    /// Inside a function body: take the value of the caller's attribute of
    /// this name instead of `value`.
    pub ref_attr_name: Option<String>,
    /// Free-form documentation.
    pub doc_string: Option<String>,
    /// The `type` code as stored; `None` in very old files, where the kind is
    /// inferred from the field that is set.
    pub type_code: Option<i32>,
    /// The value.
    pub value: AttrValue,
}

/// The value of an attribute.
#[derive(Clone, Debug, PartialEq)]
pub enum AttrValue {
    /// No value field set (references to a caller's attribute, declarations).
    Unset,
    /// A float.
    Float(f32),
    /// An integer.
    Int(i64),
    /// A byte string (usually UTF-8).
    String(Bytes),
    /// A tensor.
    Tensor(Box<Tensor>),
    /// A subgraph (`If` branches, `Loop`/`Scan` bodies).
    Graph(Box<Graph>),
    /// A sparse tensor.
    SparseTensor(Box<SparseTensor>),
    /// A type.
    TypeProto(Box<TypeInfo>),
    /// A list of floats.
    Floats(Vec<f32>),
    /// A list of integers.
    Ints(Vec<i64>),
    /// A list of byte strings.
    Strings(Vec<Bytes>),
    /// A list of tensors.
    Tensors(Vec<Tensor>),
    /// A list of subgraphs.
    Graphs(Vec<Graph>),
    /// A list of sparse tensors.
    SparseTensors(Vec<SparseTensor>),
    /// A list of types.
    TypeProtos(Vec<TypeInfo>),
}

/// `AttributeProto.AttributeType` codes.
pub mod kind {
    /// No type.
    pub const UNDEFINED: i32 = 0;
    /// `f`.
    pub const FLOAT: i32 = 1;
    /// `i`.
    pub const INT: i32 = 2;
    /// `s`.
    pub const STRING: i32 = 3;
    /// `t`.
    pub const TENSOR: i32 = 4;
    /// `g`.
    pub const GRAPH: i32 = 5;
    /// `floats`.
    pub const FLOATS: i32 = 6;
    /// `ints`.
    pub const INTS: i32 = 7;
    /// `strings`.
    pub const STRINGS: i32 = 8;
    /// `tensors`.
    pub const TENSORS: i32 = 9;
    /// `graphs`.
    pub const GRAPHS: i32 = 10;
    /// `sparse_tensor`.
    pub const SPARSE_TENSOR: i32 = 11;
    /// `sparse_tensors`.
    pub const SPARSE_TENSORS: i32 = 12;
    /// `tp`.
    pub const TYPE_PROTO: i32 = 13;
    /// `type_protos`.
    pub const TYPE_PROTOS: i32 = 14;
}

impl AttrValue {
    /// The `type` code of this kind of value.
    pub fn type_code(&self) -> i32 {
        match self {
            AttrValue::Unset => kind::UNDEFINED,
            AttrValue::Float(_) => kind::FLOAT,
            AttrValue::Int(_) => kind::INT,
            AttrValue::String(_) => kind::STRING,
            AttrValue::Tensor(_) => kind::TENSOR,
            AttrValue::Graph(_) => kind::GRAPH,
            AttrValue::SparseTensor(_) => kind::SPARSE_TENSOR,
            AttrValue::TypeProto(_) => kind::TYPE_PROTO,
            AttrValue::Floats(_) => kind::FLOATS,
            AttrValue::Ints(_) => kind::INTS,
            AttrValue::Strings(_) => kind::STRINGS,
            AttrValue::Tensors(_) => kind::TENSORS,
            AttrValue::Graphs(_) => kind::GRAPHS,
            AttrValue::SparseTensors(_) => kind::SPARSE_TENSORS,
            AttrValue::TypeProtos(_) => kind::TYPE_PROTOS,
        }
    }
}

impl Attribute {
    /// An attribute with a value, typed accordingly.
    pub fn new(name: impl Into<String>, value: AttrValue) -> Attribute {
        Attribute {
            name: Some(name.into()),
            ref_attr_name: None,
            doc_string: None,
            type_code: Some(value.type_code()),
            value,
        }
    }

    /// An integer attribute.
    pub fn int(name: impl Into<String>, v: i64) -> Attribute {
        Attribute::new(name, AttrValue::Int(v))
    }

    /// A float attribute.
    pub fn float(name: impl Into<String>, v: f32) -> Attribute {
        Attribute::new(name, AttrValue::Float(v))
    }

    /// A list-of-integers attribute.
    pub fn ints(name: impl Into<String>, v: Vec<i64>) -> Attribute {
        Attribute::new(name, AttrValue::Ints(v))
    }

    /// The name, or "" when absent.
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("")
    }

    /// The subgraphs held by this attribute.
    pub fn graphs(&self) -> Vec<&Graph> {
        match &self.value {
            AttrValue::Graph(g) => vec![g],
            AttrValue::Graphs(gs) => gs.iter().collect(),
            _ => Vec::new(),
        }
    }

    /// The subgraphs held by this attribute, mutably.
    pub fn graphs_mut(&mut self) -> Vec<&mut Graph> {
        match &mut self.value {
            AttrValue::Graph(g) => vec![g],
            AttrValue::Graphs(gs) => gs.iter_mut().collect(),
            _ => Vec::new(),
        }
    }
}
