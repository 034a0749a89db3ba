//! The ONNX protobuf boundary: the only code that touches the generated types.
//!
//! - [`decode`]: protobuf bytes -> IR, tensor data sliced (not copied) from
//!   the input buffer;
//! - [`encode`]: IR -> protobuf, streamed so weights are never copied into
//!   one big buffer;
//! - [`load`] and [`save`]: files, external data and atomic output.

mod decode;
mod encode;
mod file;

use std::path::PathBuf;

pub use decode::{decode, decode_tensor};
pub use encode::{encode, encode_bytes};
pub use file::{load, save, SaveOptions, SaveReport};

use crate::ir::IrError;

/// Types generated from `proto/onnx.proto`.
#[allow(missing_docs, clippy::all)]
pub(crate) mod proto {
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}

/// Errors reading or writing ONNX files.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    /// The bytes are not a valid ONNX model.
    #[error("{0}")]
    Invalid(String),
    /// A tensor's external data cannot be used.
    #[error(transparent)]
    External(#[from] IrError),
    /// A file could not be read or written.
    #[error("{what} {path}: {error}")]
    Io {
        /// What was being done ("cannot read", "cannot write").
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// An error about a specific file.
    #[error("{path}: {error}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        error: Box<OnnxError>,
    },
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use prost::Message;

    use super::*;
    use crate::ir::{DataType, Graph, Model, Node, Tensor, TensorData, TypeInfo, ValueInfo};

    fn model_with_weight(len: usize) -> Model {
        let mut g = Graph::new("g");
        g.inputs.push(ValueInfo::new(
            "x",
            TypeInfo::tensor(DataType::Float, vec![]),
        ));
        g.outputs.push(ValueInfo::new(
            "y",
            TypeInfo::tensor(DataType::Float, vec![]),
        ));
        let values: Vec<f32> = (0..len).map(|i| i as f32).collect();
        g.add_initializer(Tensor::from_f32("w", vec![len as i64], &values));
        g.add_node(Node::new(
            "Add",
            "add",
            vec!["x".into(), "w".into()],
            vec!["y".into()],
        ));
        Model::new(g, 17)
    }

    #[test]
    fn decoding_slices_tensor_data_out_of_the_input_buffer() {
        let bytes = encode_bytes(&model_with_weight(1000));
        let range = bytes.as_ptr_range();
        let model = decode(bytes.clone(), None).unwrap();
        let TensorData::Raw(raw) = &model.graph.initializer("w").unwrap().data else {
            panic!("expected raw data");
        };
        assert!(range.contains(&raw.as_ptr()), "raw_data was copied");
    }

    #[test]
    fn streamed_encoding_equals_prost_encoding() {
        let model = model_with_weight(300);
        let streamed = encode(&model);
        let whole = encode::to_proto(&model).encode_to_vec();
        assert_eq!(streamed, whole);
        // And decode -> encode is a fixed point.
        let again = encode(&decode(Bytes::from(streamed.clone()), None).unwrap());
        assert_eq!(again, streamed);
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        let err = decode(Bytes::new(), None).unwrap_err().to_string();
        assert!(err.contains("empty"), "{err}");
        let err = decode(Bytes::from_static(&[0xff; 64]), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not parse"), "{err}");
        // A valid protobuf message that is not a model.
        let err = decode(Bytes::from_static(&[0x08, 0x07]), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no graph"), "{err}");
    }
}
