//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use std::process::{Command, Output};
use whittle::data::{load_samples, Array, InputSpec};
use whittle::exec::Runner;
use whittle::ir::{DataType, Model};

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

/// Writes `arrays` as an uncompressed .npz (numpy's own layout, little-endian f32/other).
pub fn write_npz(path: &Path, arrays: &[(String, Array)]) {
    let file = std::fs::File::create(path).unwrap();
    let mut zip = zip::ZipWriter::new(file);
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, a) in arrays {
        let descr = match a.dtype {
            DataType::Float => "<f4",
            DataType::Int64 => "<i8",
            DataType::Int32 => "<i4",
            DataType::Uint8 => "|u1",
            DataType::Int8 => "|i1",
            other => panic!("no npy descr for {other}"),
        };
        let shape: Vec<String> = a.shape.iter().map(|d| d.to_string()).collect();
        let shape = match shape.len() {
            1 => format!("({},)", shape[0]),
            _ => format!("({})", shape.join(", ")),
        };
        let mut header =
            format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        zip.start_file(format!("{name}.npy"), options).unwrap();
        zip.write_all(b"\x93NUMPY\x01\x00").unwrap();
        zip.write_all(&(header.len() as u16).to_le_bytes()).unwrap();
        zip.write_all(header.as_bytes()).unwrap();
        zip.write_all(&a.data).unwrap();
    }
    zip.finish().unwrap();
}

/// Runs `model` in tract over the samples of `data` and writes its outputs
/// (first axis = samples) next to it.
pub fn tract_outputs(model_path: &Path, data: &Path) -> PathBuf {
    let model: Model = whittle::onnx::load(model_path).unwrap();
    let runner = Runner::from_model("model", &model, model_path.parent()).unwrap();
    let inputs = InputSpec::of_graph(&model.graph).unwrap();
    let samples = load_samples(data, &inputs, &BTreeMap::new(), None).unwrap();
    let outs = whittle::exec::run_samples(&runner, &samples.samples, 2).unwrap();
    let mut arrays = Vec::new();
    for (k, name) in runner.outputs().iter().enumerate() {
        let first = &outs[0][k];
        let mut shape = vec![outs.len()];
        shape.extend(&first.shape);
        let bytes: Vec<u8> = outs.iter().flat_map(|o| o[k].data.clone()).collect();
        arrays.push((name.clone(), Array::new(first.dtype, shape, bytes).unwrap()));
    }
    let path = model_path.with_extension("tract.npz");
    write_npz(&path, &arrays);
    path
}

/// `whittle run CONFIG --input INPUT --output OUT --data DATA EXTRA...`,
/// which must succeed; its stderr.
pub fn run_pipeline(
    config: &Path,
    input: &Path,
    data: &Path,
    out: &Path,
    extra: &[&str],
) -> String {
    let mut args = vec![
        "run",
        config.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let o = whittle(&args);
    let (stdout, stderr) = text(&o);
    assert!(
        o.status.success(),
        "whittle {args:?} failed:\n{stdout}\n{stderr}"
    );
    stderr
}

/// [`run_pipeline`] on `fixtures/FIXTURE.onnx` with `fixtures/FIXTURE.data.npz`.
pub fn run_fixture(config: &Path, name: &str, out: &Path, extra: &[&str]) -> String {
    let input = fixture(&format!("{name}.onnx"));
    let data = fixture(&format!("{name}.data.npz"));
    run_pipeline(config, &input, &data, out, extra)
}

/// The lowest output SQNR `whittle validate` prints for `b` against `a`.
pub fn validate_sqnr(a: &Path, b: &Path, data: &Path) -> f64 {
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("v.json");
    let out = whittle(&[
        "validate",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let mut worst = f64::INFINITY;
    let outputs = v["outputs"].as_array().expect("outputs in validate's JSON");
    for o in outputs {
        // validate writes an exact match's infinite SQNR as null.
        let db = o["sqnr_db"].as_f64().unwrap_or(f64::INFINITY);
        worst = worst.min(db);
    }
    worst
}
