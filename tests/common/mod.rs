//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A path under `fixtures/`.
pub fn fixture(name: &str) -> PathBuf {
    root().join("fixtures").join(name)
}

/// The `.onnx` files of a folder under `fixtures/`, sorted; `script` is what
/// makes them, for the message when there are none.
fn models_under(folder: &str, script: &str) -> Vec<PathBuf> {
    let dir = root().join(folder);
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "onnx"))
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no models in {folder}/; run {script}");
    v
}

/// The valid fixture models (`fixtures/*.onnx`), sorted.
pub fn fixture_models() -> Vec<PathBuf> {
    models_under("fixtures", "fixtures/make_fixtures.py")
}

/// The trained fixture models (`fixtures/trained/*.onnx`), sorted.
pub fn trained_models() -> Vec<PathBuf> {
    models_under("fixtures/trained", "fixtures/export/train_models.py")
}

/// Compares an output with its reference like numpy's `assert_allclose`:
/// `|actual - expected| <= atol + rtol * |expected|`, NaN equal to NaN,
/// infinities equal only to themselves. `None` when close enough, else what
/// differs.
pub fn allclose(
    actual: &whittle::data::Array,
    expected: &whittle::data::Array,
    rtol: f64,
    atol: f64,
) -> Option<String> {
    if actual.shape != expected.shape {
        return Some(format!(
            "shape {:?}, expected {:?}",
            actual.shape, expected.shape
        ));
    }
    if actual.dtype != expected.dtype {
        return Some(format!(
            "type {}, expected {}",
            actual.dtype, expected.dtype
        ));
    }
    let (a, e) = (actual.to_f64(), expected.to_f64());
    let mut bad = 0usize;
    let mut worst = 0.0f64;
    for (&x, &y) in a.iter().zip(&e) {
        let ok = if x.is_nan() || y.is_nan() {
            x.is_nan() && y.is_nan()
        } else if x.is_infinite() || y.is_infinite() {
            x == y
        } else {
            (x - y).abs() <= atol + rtol * y.abs()
        };
        if !ok {
            bad += 1;
            worst = worst.max((x - y).abs());
        }
    }
    (bad > 0).then(|| format!("{bad} of {} elements differ (max abs {worst:.3e})", a.len()))
}

/// The Python interpreter of the test venv (set up by `scripts/test`).
pub fn python() -> PathBuf {
    match std::env::var_os("WHITTLE_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => panic!(
            "WHITTLE_PYTHON is not set: the oracle tests need the pinned Python venv; run the suite with `bash scripts/test`"
        ),
    }
}

/// Runs a Python script from `tests/python/` with the venv interpreter.
pub fn run_python(script: &str, args: &[&Path]) -> Output {
    let out = Command::new(python())
        .arg(root().join("tests/python").join(script))
        .args(args)
        .output()
        .expect("the venv python runs");
    out
}

/// Runs the `whittle` binary.
pub fn whittle(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_whittle"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("whittle runs")
}

/// Text of a process's stdout and stderr.
pub fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
