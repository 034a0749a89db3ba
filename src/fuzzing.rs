//! Entry points for hostile input: one function per fuzz target, shared by
//! the cargo-fuzz targets in `fuzz/` (nightly, libFuzzer) and the corpus
//! replay test `tests/fuzz_corpus.rs` (stable `cargo test`, in CI).
//!
//! Each takes arbitrary bytes and must return, never panic: `Ok` when the
//! bytes were accepted, `Err` with a non-empty message when they were
//! refused. What an accepted input must also satisfy is asserted here (a
//! violated assertion is a bug the fuzzer reports as a crash):
//!
//! - [`model`]: a model that decodes and verifies also dumps, inspects, has
//!   a topological order, loses its dead nodes and still verifies, and its
//!   encoding decodes again to a model whose encoding is the same bytes
//!   (decode → encode is a fixed point);
//! - [`pipeline`]: YAML text either parses into passes that build, or is
//!   refused with a message;
//! - [`npz`]: an archive either reads into arrays whose byte sizes match
//!   their shapes, or is refused.

use std::io::Cursor;
use std::path::Path;

use bytes::Bytes;

use crate::ir::{self, verify};
use crate::{data, inspect, onnx, passes, pipeline};

/// Model decoding and verification, then every read-only command and a
/// round trip on what verified.
pub fn model(bytes: &[u8]) -> Result<(), String> {
    let m = onnx::decode(Bytes::copy_from_slice(bytes), None).map_err(|e| e.to_string())?;
    verify(&m).map_err(|e| e.to_string())?;
    let _ = ir::dump(&m);
    let _ = inspect::render(&inspect::summarize(&m));
    let order = m.graph.topological_order().map_err(|e| e.to_string())?;
    assert_eq!(
        order.len(),
        m.graph.node_count(),
        "topological order lost nodes"
    );

    let encoded = onnx::encode(&m);
    let again = onnx::decode(Bytes::from(encoded.clone()), None)
        .unwrap_or_else(|e| panic!("whittle's own encoding does not decode: {e}"));
    assert!(
        onnx::encode(&again) == encoded,
        "decode -> encode is not a fixed point"
    );

    let mut cleaned = again;
    passes::eliminate_dead::remove_dead_nodes(&mut cleaned.graph);
    if let Err(e) = verify(&cleaned) {
        panic!("removing dead nodes broke a verified model: {e}");
    }
    Ok(())
}

/// Pipeline YAML parsing, and building every pass it names.
pub fn pipeline(bytes: &[u8]) -> Result<(), String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8: {e}"))?;
    let p = pipeline::Pipeline::parse(text, Path::new("fuzz.yaml")).map_err(|e| e.to_string())?;
    for (i, spec) in p.passes.iter().enumerate() {
        spec.build(i).map_err(|(field, message)| {
            assert!(!message.is_empty(), "empty error for {field}");
            format!("{field}: {message}")
        })?;
    }
    Ok(())
}

/// `.npz` reading (zip archive of `.npy` arrays).
pub fn npz(bytes: &[u8]) -> Result<(), String> {
    let arrays = data::read_npz_from(Cursor::new(bytes), Path::new("fuzz.npz"))
        .map_err(|e| e.to_string())?;
    for (name, a) in &arrays {
        let elems: usize = a.shape.iter().product();
        let size = data::element_size(a.dtype).unwrap_or(1);
        assert_eq!(
            a.data.len(),
            elems * size,
            "array {name:?}: bytes do not match its shape"
        );
    }
    Ok(())
}

/// A fuzz entry point.
pub type Target = fn(&[u8]) -> Result<(), String>;

/// The three targets by name, as the replay test walks `fuzz/corpus/<name>/`.
pub const TARGETS: [(&str, Target); 3] = [("model", model), ("pipeline", pipeline), ("npz", npz)];
