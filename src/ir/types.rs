//! Value types and shapes, value annotations and metadata entries.
//!
//! Optional protobuf fields are `Option`s here: ONNX files distinguish "set
//! to the default" from "not set", and the lossless round trip keeps that.

use std::fmt;

use super::dtype::DataType;

/// A string key/value pair (metadata, external-data fields, bindings). Either
/// side may be absent in a file, so both are optional.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KeyValue {
    /// The key.
    pub key: Option<String>,
    /// The value.
    pub value: Option<String>,
}

impl KeyValue {
    /// A pair with both sides set.
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> KeyValue {
        KeyValue {
            key: Some(key.into()),
            value: Some(value.into()),
        }
    }

    /// The key, or "" when absent.
    pub fn key(&self) -> &str {
        self.key.as_deref().unwrap_or("")
    }

    /// The value, or "" when absent.
    pub fn value(&self) -> &str {
        self.value.as_deref().unwrap_or("")
    }
}

/// The value of one dimension of a shape.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum DimValue {
    /// A fixed size.
    Known(i64),
    /// A named symbolic size (`batch`, `N`).
    Symbol(String),
    /// Neither a size nor a name.
    Unknown,
}

/// One dimension of a shape, with its optional denotation (`DATA_BATCH`, ...).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Dim {
    /// The size.
    pub value: DimValue,
    /// A semantic label for the axis.
    pub denotation: Option<String>,
}

impl Dim {
    /// A fixed-size dimension.
    pub fn known(size: i64) -> Dim {
        Dim {
            value: DimValue::Known(size),
            denotation: None,
        }
    }

    /// A symbolic dimension.
    pub fn symbol(name: impl Into<String>) -> Dim {
        Dim {
            value: DimValue::Symbol(name.into()),
            denotation: None,
        }
    }

    /// The size when it is fixed.
    pub fn as_known(&self) -> Option<i64> {
        match self.value {
            DimValue::Known(n) => Some(n),
            _ => None,
        }
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            DimValue::Known(n) => write!(f, "{n}"),
            DimValue::Symbol(s) => write!(f, "{s}"),
            DimValue::Unknown => f.write_str("?"),
        }
    }
}

/// A tensor shape: a list of dimensions (rank 0 for scalars).
pub type Shape = Vec<Dim>;

/// All dimensions as fixed sizes, if every one is known.
pub fn known_dims(shape: &[Dim]) -> Option<Vec<i64>> {
    shape.iter().map(Dim::as_known).collect()
}

/// The type of a value.
#[derive(Clone, Debug, PartialEq)]
pub enum TypeKind {
    /// A dense tensor; element type and shape may each be unknown.
    Tensor {
        /// Element type.
        elem: Option<DataType>,
        /// Shape; `None` means the rank is unknown too.
        shape: Option<Shape>,
    },
    /// A sparse tensor.
    SparseTensor {
        /// Element type.
        elem: Option<DataType>,
        /// Shape.
        shape: Option<Shape>,
    },
    /// A sequence of values of one type.
    Sequence(Option<Box<TypeInfo>>),
    /// A map from a key element type to values of one type.
    Map {
        /// Key element type code.
        key: Option<DataType>,
        /// Value type.
        value: Option<Box<TypeInfo>>,
    },
    /// An optional value.
    Optional(Option<Box<TypeInfo>>),
    /// A type opaque to ONNX, named by domain and name.
    Opaque {
        /// The domain.
        domain: Option<String>,
        /// The name.
        name: Option<String>,
    },
    /// No type given.
    Unset,
}

/// A value type plus its optional denotation (`IMAGE`, `TEXT`, ...).
#[derive(Clone, Debug, PartialEq)]
pub struct TypeInfo {
    /// The type.
    pub kind: TypeKind,
    /// A semantic label.
    pub denotation: Option<String>,
}

impl TypeInfo {
    /// A dense tensor type with a known element type and shape.
    pub fn tensor(elem: DataType, shape: Shape) -> TypeInfo {
        TypeInfo {
            kind: TypeKind::Tensor {
                elem: Some(elem),
                shape: Some(shape),
            },
            denotation: None,
        }
    }

    /// Element type of a dense tensor type.
    pub fn tensor_elem(&self) -> Option<DataType> {
        match &self.kind {
            TypeKind::Tensor { elem, .. } => *elem,
            _ => None,
        }
    }

    /// Shape of a dense tensor type.
    pub fn tensor_shape(&self) -> Option<&[Dim]> {
        match &self.kind {
            TypeKind::Tensor { shape, .. } => shape.as_deref(),
            _ => None,
        }
    }
}

fn write_tensor_type(
    f: &mut fmt::Formatter<'_>,
    elem: &Option<DataType>,
    shape: &Option<Shape>,
) -> fmt::Result {
    match elem {
        Some(dt) => write!(f, "{dt}")?,
        None => f.write_str("?")?,
    }
    match shape {
        Some(dims) => {
            f.write_str("[")?;
            for (i, d) in dims.iter().enumerate() {
                if i > 0 {
                    f.write_str(",")?;
                }
                write!(f, "{d}")?;
            }
            f.write_str("]")
        }
        None => f.write_str("[..]"),
    }
}

impl fmt::Display for TypeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = |f: &mut fmt::Formatter<'_>, t: &Option<Box<TypeInfo>>| match t {
            Some(t) => write!(f, "{t}"),
            None => f.write_str("?"),
        };
        match &self.kind {
            TypeKind::Tensor { elem, shape } => write_tensor_type(f, elem, shape)?,
            TypeKind::SparseTensor { elem, shape } => {
                f.write_str("sparse ")?;
                write_tensor_type(f, elem, shape)?;
            }
            TypeKind::Sequence(t) => {
                f.write_str("seq<")?;
                inner(f, t)?;
                f.write_str(">")?;
            }
            TypeKind::Optional(t) => {
                f.write_str("optional<")?;
                inner(f, t)?;
                f.write_str(">")?;
            }
            TypeKind::Map { key, value } => {
                match key {
                    Some(k) => write!(f, "map<{k},")?,
                    None => f.write_str("map<?,")?,
                }
                inner(f, value)?;
                f.write_str(">")?;
            }
            TypeKind::Opaque { domain, name } => write!(
                f,
                "opaque<{}:{}>",
                domain.as_deref().unwrap_or(""),
                name.as_deref().unwrap_or("")
            )?,
            TypeKind::Unset => f.write_str("untyped")?,
        }
        if let Some(d) = &self.denotation {
            write!(f, " ({d})")?;
        }
        Ok(())
    }
}

/// The name, type and annotations of a value: a graph input or output, or an
/// entry of a graph's `value_info` list.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ValueInfo {
    /// The value's name.
    pub name: Option<String>,
    /// Its type, if declared.
    pub ty: Option<TypeInfo>,
    /// Free-form documentation.
    pub doc_string: Option<String>,
    /// Metadata entries.
    pub metadata_props: Vec<KeyValue>,
}

impl ValueInfo {
    /// A value with a name and a type.
    pub fn new(name: impl Into<String>, ty: TypeInfo) -> ValueInfo {
        ValueInfo {
            name: Some(name.into()),
            ty: Some(ty),
            ..ValueInfo::default()
        }
    }

    /// The name, or "" when absent.
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("")
    }
}

/// Quantization parameters attached to a tensor by name
/// (`GraphProto.quantization_annotation`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TensorAnnotation {
    /// The annotated tensor.
    pub tensor_name: Option<String>,
    /// Parameter role -> tensor name (`SCALE_TENSOR`, `ZERO_POINT_TENSOR`).
    pub quant_parameter_tensor_names: Vec<KeyValue>,
}

/// An operator set a model or function imports.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OpsetId {
    /// The domain ("" or absent is the default ONNX domain).
    pub domain: Option<String>,
    /// The version.
    pub version: Option<i64>,
}

impl OpsetId {
    /// The domain, or "" when absent.
    pub fn domain(&self) -> &str {
        self.domain.as_deref().unwrap_or("")
    }
}
