//! whittle: an ONNX graph-rewriting optimizer.
#![warn(missing_docs)]

pub mod inspect;
pub mod ir;
pub mod onnx;
pub mod pipeline;
pub mod report;
