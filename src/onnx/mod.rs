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

pub use decode::decode;
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
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done ("cannot read", "cannot write").
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// An error about a specific file.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        source: Box<OnnxError>,
    },
}
