//! The lossless round trip: decode -> encode with an empty pipeline gives a
//! model equal to the input as a protobuf message (checked by the `onnx`
//! Python package, an independent implementation), still accepted by
//! `onnx.checker` — for every fixture and for the 1,765 single-node models
//! of onnx 1.22.0's backend test data.

mod common;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use whittle::onnx::{self, SaveOptions};

/// Decodes and re-encodes each model into `out_dir`, checks the IR-level
/// fixed point, and returns `original<TAB>re-encoded` lines for the oracle.
fn round_trip_all(models: &[(String, PathBuf)], out_dir: &Path) -> String {
    let mut pairs = String::new();
    for (name, path) in models {
        let model = onnx::load(path).unwrap_or_else(|e| panic!("{name}: {e}"));
        // Each model gets its own folder so side files keep their names.
        let dir = out_dir.join(name);
        let out = dir.join(path.file_name().expect("file name"));
        onnx::save(&model, &out, &SaveOptions::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
        // Decoding what was written and encoding it again is a fixed point.
        // (Bytes, not IR equality: NaN attribute values differ from themselves.)
        let again = onnx::load(&out).unwrap_or_else(|e| panic!("{name}: re-read: {e}"));
        let written = std::fs::read(&out).unwrap();
        assert!(
            onnx::encode(&again) == written,
            "{name}: encoding is not a fixed point"
        );
        let _ = writeln!(pairs, "{}\t{}", path.display(), out.display());
    }
    pairs
}

fn oracle(pairs: &str, dir: &Path, expected: usize) {
    let list = dir.join("pairs.txt");
    std::fs::write(&list, pairs).unwrap();
    let out = common::run_python("roundtrip_check.py", &[&list]);
    let (stdout, stderr) = common::text(&out);
    assert!(
        out.status.success(),
        "round trip not lossless:\n{stdout}\n{stderr}"
    );
    let summary = format!("roundtrip: {expected} passed, 0 failed");
    assert!(
        stdout.contains(&summary),
        "expected {summary:?} in:\n{stdout}\n{stderr}"
    );
}

#[test]
fn fixtures_round_trip_losslessly() {
    // The trained models of fixtures/trained/ too (their stems differ from the others').
    let models: Vec<(String, PathBuf)> = common::fixture_models()
        .into_iter()
        .chain(common::trained_models())
        .map(|p| (p.file_stem().unwrap().to_string_lossy().into_owned(), p))
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let pairs = round_trip_all(&models, tmp.path());
    oracle(&pairs, tmp.path(), models.len());
}

#[test]
fn backend_node_models_round_trip_losslessly() {
    let out = common::run_python("backend_node_dir.py", &[]);
    assert!(out.status.success(), "{}", common::text(&out).1);
    let dir = PathBuf::from(common::text(&out).0.trim());
    let mut models: Vec<(String, PathBuf)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                e.path().join("model.onnx"),
            )
        })
        .filter(|(_, p)| p.exists())
        .collect();
    models.sort();
    // onnx 1.22.0 ships exactly this many; a different count means the pin moved.
    assert_eq!(
        models.len(),
        1765,
        "unexpected number of backend node models"
    );
    let tmp = tempfile::tempdir().unwrap();
    let pairs = round_trip_all(&models, tmp.path());
    oracle(&pairs, tmp.path(), models.len());
}
