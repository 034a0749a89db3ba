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

/// The valid fixture models (`fixtures/*.onnx`), sorted.
pub fn fixture_models() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("fixtures"))
        .expect("fixtures/ exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "onnx"))
        .collect();
    v.sort();
    assert!(
        !v.is_empty(),
        "no fixtures found; run fixtures/make_fixtures.py"
    );
    v
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
pub fn write_npz(path: &Path, arrays: &[(String, whittle::data::Array)]) {
    let file = std::fs::File::create(path).unwrap();
    let mut zip = zip::ZipWriter::new(file);
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, a) in arrays {
        let descr = match a.dtype {
            whittle::ir::DataType::Float => "<f4",
            whittle::ir::DataType::Int64 => "<i8",
            whittle::ir::DataType::Int32 => "<i4",
            whittle::ir::DataType::Uint8 => "|u1",
            whittle::ir::DataType::Int8 => "|i1",
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
        std::io::Write::write_all(&mut zip, b"\x93NUMPY\x01\x00").unwrap();
        std::io::Write::write_all(&mut zip, &(header.len() as u16).to_le_bytes()).unwrap();
        std::io::Write::write_all(&mut zip, header.as_bytes()).unwrap();
        std::io::Write::write_all(&mut zip, &a.data).unwrap();
    }
    zip.finish().unwrap();
}
