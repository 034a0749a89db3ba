//! whittle: an ONNX graph-rewriting optimizer.
#![warn(missing_docs)]

pub mod data;
pub mod describe;
pub mod exec;
pub mod fuzzing;
pub mod inspect;
pub mod ir;
pub mod manager;
pub mod onnx;
// The passes live in the top-level `passes/` folder so the layout shows the
// architecture; they are part of this crate (a separate crate would form a
// package cycle with the CLI).
#[path = "../passes/mod.rs"]
pub mod passes;
pub mod pipeline;
pub mod report;
