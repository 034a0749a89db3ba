//! The in-memory representation of a model that passes rewrite.
//!
//! Nothing here knows about protobuf: `crate::onnx` converts between this IR
//! and ONNX files. Every field of the ONNX schema has a home here, with
//! field presence kept (`Option`), so decode followed by encode is lossless.

mod attribute;
mod dtype;
mod dump;
mod graph;
mod model;
mod node;
mod tensor;
mod types;
mod verify;

pub use attribute::{kind as attr_kind, AttrValue, Attribute};
pub use dtype::DataType;
pub use dump::dump;
pub use graph::{Graph, NodeId, Use};
pub use model::{Function, Model, TrainingInfo};
pub use node::Node;
pub use tensor::{
    map_file, ExternalData, ExternalFiles, Segment, SparseTensor, Tensor, TensorData, TypedFields,
};
pub use types::{
    known_dims, Dim, DimValue, KeyValue, OpsetId, Shape, TensorAnnotation, TypeInfo, TypeKind,
    ValueInfo,
};
pub use verify::{verify, VerifyError};

/// Errors raised by IR operations.
#[derive(Debug, thiserror::Error)]
pub enum IrError {
    /// The graph's dependencies form a cycle.
    #[error("graph {graph:?} has a cycle through {nodes}")]
    Cycle {
        /// The graph's name.
        graph: String,
        /// Some of the nodes on or behind the cycle.
        nodes: String,
    },
    /// A tensor's external data cannot be used.
    #[error("external data of tensor {tensor:?}: {reason}")]
    ExternalData {
        /// The tensor (or file) concerned.
        tensor: String,
        /// What is wrong.
        reason: String,
    },
    /// A tensor's contents cannot be read as asked.
    #[error("tensor {tensor:?}: {reason}")]
    Tensor {
        /// The tensor concerned.
        tensor: String,
        /// What is wrong.
        reason: String,
    },
}
