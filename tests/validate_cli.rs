//! `whittle validate` and the pipeline's `validate:` section, end to end:
//! gates that fail when they must, "not validated" when tract cannot run a
//! model, signature checks, and `whittle run` writing nothing on a failed gate.

mod common;

use std::path::{Path, PathBuf};

use whittle::ir::TensorData;
use whittle::onnx::{self, SaveOptions};

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Copies `fixtures/<name>.onnx` with one element of initializer `weight` set to `value`.
fn corrupt(name: &str, weight: &str, value: f32, out: &Path) -> PathBuf {
    let mut model = onnx::load(&common::fixture(&format!("{name}.onnx"))).unwrap();
    let t = model
        .graph
        .initializers_mut()
        .iter_mut()
        .find(|t| t.name() == weight)
        .unwrap_or_else(|| panic!("{name} has no initializer {weight}"));
    let mut values = t.to_f32().unwrap();
    assert_ne!(values[0], value);
    values[0] = value;
    t.set_raw(
        values
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>()
            .into(),
    );
    assert!(matches!(t.data, TensorData::Raw(_)));
    let path = out.join(format!("{name}.corrupt.onnx"));
    onnx::save(&model, &path, &SaveOptions::default()).unwrap();
    path
}

#[test]
fn a_corrupted_weight_fails_a_30_db_gate_naming_the_output() {
    let tmp = tempfile::tempdir().unwrap();
    let original = common::fixture("conv_bn_relu.onnx");
    let data = common::fixture("conv_bn_relu.data.npz");
    let bad = corrupt("conv_bn_relu", "conv1.weight", 100.0, tmp.path());
    let json = tmp.path().join("r.json");
    let out = common::whittle(&[
        "validate",
        path_str(&original),
        path_str(&bad),
        "--data",
        path_str(&data),
        "--min-sqnr",
        "30",
        "--json",
        path_str(&json),
    ]);
    let (stdout, stderr) = common::text(&out);
    assert!(!out.status.success(), "a corrupted model passed:\n{stdout}");
    assert!(
        stdout.contains("FAIL") && stdout.contains("logits"),
        "{stdout}"
    );
    assert!(
        stderr.contains("validation failed")
            && stderr.contains("\"logits\"")
            && stderr.contains("SQNR"),
        "{stderr}"
    );
    // The JSON report says the same.
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["verdict"], "failed");
    assert_eq!(report["outputs"][0]["name"], "logits");
    assert!(report["outputs"][0]["sqnr_db"].as_f64().unwrap() < 30.0);

    // The same gate passes the untouched model: it is the corruption that fails it.
    let copy = tmp.path().join("copy.onnx");
    std::fs::copy(&original, &copy).unwrap();
    let out = common::whittle(&[
        "validate",
        path_str(&original),
        path_str(&copy),
        "--data",
        path_str(&data),
        "--min-sqnr",
        "30",
        "--min-cosine",
        "0.999",
    ]);
    let (stdout, stderr) = common::text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("PASSED") && stdout.contains("4 samples"),
        "{stdout}"
    );
}

#[test]
fn without_data_the_inputs_are_synthetic_and_dims_are_pinned() {
    let m = common::fixture("conv_bn_relu.onnx");
    let out = common::whittle(&[
        "validate",
        path_str(&m),
        path_str(&m),
        "--dim",
        "N=3",
        "--samples",
        "2",
    ]);
    let (stdout, stderr) = common::text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("SYNTHETIC") && stdout.contains("seed 0"),
        "{stdout}"
    );
    assert!(
        stdout.contains("[3,10]") && stdout.contains("2 samples"),
        "{stdout}"
    );
    assert!(stdout.contains("no gates set"), "{stdout}");
}

#[test]
fn models_with_different_signatures_are_refused() {
    let out = common::whittle(&[
        "validate",
        path_str(&common::fixture("conv_bn_relu.onnx")),
        path_str(&common::fixture("mlp.onnx")),
    ]);
    let (_, stderr) = common::text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("different signatures") && stderr.contains("logits"),
        "{stderr}"
    );
}

#[test]
fn a_model_tract_cannot_run_is_not_validated_and_fails() {
    let m = common::fixture("function.onnx");
    let out = common::whittle(&["validate", path_str(&m), path_str(&m), "--min-sqnr", "30"]);
    let (stdout, stderr) = common::text(&out);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains("NOT VALIDATED") && !stdout.contains("PASSED"),
        "{stdout}"
    );
    assert!(
        stderr.contains("not validated")
            && stderr.contains("first_call")
            && stderr.contains("ScaledRelu"),
        "{stderr}"
    );
}

#[test]
fn data_that_does_not_fit_is_refused_naming_file_and_input() {
    let out = common::whittle(&[
        "validate",
        path_str(&common::fixture("conv_bn_relu.onnx")),
        path_str(&common::fixture("conv_bn_relu.onnx")),
        "--data",
        path_str(&common::fixture("mlp.data.npz")),
    ]);
    let (_, stderr) = common::text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("mlp.data.npz") && stderr.contains("input x: f32[N,3,16,16]"),
        "{stderr}"
    );
    let out = common::whittle(&["validate", "a.onnx", "b.onnx", "--dim", "batch"]);
    assert!(!out.status.success());
    assert!(common::text(&out).1.contains("NAME=VALUE"));
}

fn pipeline(dir: &Path, gates: &str) -> PathBuf {
    let p = dir.join("p.yaml");
    let data = common::fixture("conv_bn_relu.data.npz");
    std::fs::write(
        &p,
        format!(
            "version: 1\npasses:\n  - fold-batchnorm\nvalidate:\n  data: {}\n  samples: 3\n  gates: {gates}\n",
            data.display()
        ),
    )
    .unwrap();
    p
}

#[test]
fn run_validates_its_output_before_writing_it() {
    let tmp = tempfile::tempdir().unwrap();
    let input = common::fixture("conv_bn_relu.onnx");
    let output = tmp.path().join("out.onnx");
    let report = tmp.path().join("report.json");
    let p = pipeline(tmp.path(), "{ min_sqnr_db: 60, min_cosine: 0.9999 }");
    let out = common::whittle(&[
        "run",
        path_str(&p),
        "--input",
        path_str(&input),
        "--output",
        path_str(&output),
        "--report",
        path_str(&report),
    ]);
    let (_, stderr) = common::text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("PASSED"), "{stderr}");
    assert!(output.exists());
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(r["validation"]["verdict"], "passed");
    assert_eq!(r["validation"]["samples"], 3);
    assert_eq!(r["validation"]["outputs"][0]["name"], "logits");

    // Folding batch norm is exact only up to float rounding: a 1000 dB gate
    // cannot hold, so the run fails and writes nothing.
    let strict = pipeline(tmp.path(), "{ min_sqnr_db: 1000 }");
    let output2 = tmp.path().join("out2.onnx");
    let report2 = tmp.path().join("report2.json");
    let out = common::whittle(&[
        "run",
        path_str(&strict),
        "--input",
        path_str(&input),
        "--output",
        path_str(&output2),
        "--report",
        path_str(&report2),
    ]);
    let (_, stderr) = common::text(&out);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("\"logits\"") && stderr.contains("nothing was written"),
        "{stderr}"
    );
    assert!(!output2.exists() && !report2.exists());
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("out2"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn the_validate_section_is_checked_strictly() {
    let tmp = tempfile::tempdir().unwrap();
    let input = common::fixture("conv_bn_relu.onnx");
    let output = tmp.path().join("out.onnx");
    for (yaml, needle) in [
        ("validate:\n  gates: { min_sqrn_db: 30 }\n", "min_sqrn_db"),
        (
            "validate:\n  gates: { min_cosine: 3 }\n",
            "validate.gates.min_cosine",
        ),
        ("validate:\n  samples: 0\n", "validate.samples"),
    ] {
        let p = tmp.path().join("p.yaml");
        std::fs::write(&p, format!("version: 1\npasses: []\n{yaml}")).unwrap();
        let out = common::whittle(&[
            "run",
            path_str(&p),
            "--input",
            path_str(&input),
            "--output",
            path_str(&output),
        ]);
        let (_, stderr) = common::text(&out);
        assert!(!out.status.success(), "{yaml}");
        assert!(stderr.contains(needle), "{yaml}: {stderr}");
        assert!(!output.exists());
    }
}
