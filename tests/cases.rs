//! Fixture cases: `fixtures/cases/<pass>/<case>.yaml` names a fixture model,
//! a pipeline and expectations. One helper runs every case: it snapshots the
//! pass reports and a unified diff of the dumps before and after, checks the
//! expectations, validates the rewrite numerically with tract, and has
//! onnxruntime (an independent runtime) run the result against the fixture's
//! reference outputs.

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use whittle::exec::validate::{validate, Subject, ValidateOptions};
use whittle::ir::{dump, map_file};
use whittle::onnx::{self, SaveOptions};
use whittle::pipeline::Pipeline;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    model: String,
    pipeline: String,
    expect: Expect,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct Expect {
    /// Op types that must not remain.
    absent_ops: Vec<String>,
    /// `pass.counter: value` summed over the pipeline's runs of that pass.
    counters: BTreeMap<String, i64>,
    /// Every output's SQNR against the original (tract, fixture data).
    min_sqnr_db: Option<f64>,
    /// onnxruntime must match the fixture's reference outputs to float
    /// tolerance (false for lossy rewrites such as quantization, which
    /// tests/quantize.rs checks against onnxruntime its own way).
    ort_reference: Option<bool>,
    /// Compare with the original in tract (false when the pipeline changes
    /// the inputs, e.g. `specialize` pinning one: the signatures differ).
    tract_validate: Option<bool>,
}

fn cases() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in std::fs::read_dir(common::fixture("cases")).unwrap() {
        for f in std::fs::read_dir(dir.unwrap().path()).unwrap() {
            let p = f.unwrap().path();
            if p.extension().is_some_and(|e| e == "yaml") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Runs one case; returns the snapshot text, the path of the written model
/// and whether onnxruntime must match the fixture's reference outputs.
fn run_case(path: &Path, out_dir: &Path) -> (String, PathBuf, bool) {
    let label = path
        .strip_prefix(common::root())
        .unwrap()
        .display()
        .to_string();
    let case: Case = serde_saphyr::from_str(&std::fs::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("{label}: {e}"));
    let model_path = common::fixture(&case.model);
    let original = onnx::load(&model_path).unwrap();
    let pipeline = Pipeline::parse(&case.pipeline, path).unwrap_or_else(|e| panic!("{label}: {e}"));
    let mut model = original.clone();
    // Passes that calibrate use the fixture's data.
    let data = common::fixture(&case.model.replace(".onnx", ".data.npz"));
    let ctx = whittle::passes::PassContext {
        data: data.exists().then(|| data.clone()),
        model_dir: model_path.parent().map(Path::to_path_buf),
        ..Default::default()
    };
    let runs = whittle::manager::run(&mut model, &pipeline, &ctx, None)
        .unwrap_or_else(|e| panic!("{label}: {e}"));

    // Expectations.
    for op in &case.expect.absent_ops {
        assert!(
            !model.graph.nodes().any(|(_, n)| n.op_type() == op),
            "{label}: {op} remains"
        );
    }
    for (key, want) in &case.expect.counters {
        let (pass, counter) = key.split_once('.').expect("pass.counter");
        let got: i64 = runs
            .iter()
            .filter(|r| r.name == pass)
            .filter_map(|r| r.report.counters.get(counter))
            .sum();
        assert_eq!(got, *want, "{label}: {key}");
    }

    // Numerical validation with tract on the fixture's data.
    if case.expect.tract_validate == Some(false) {
        assert!(
            case.expect.min_sqnr_db.is_none(),
            "{label}: min_sqnr_db needs tract_validate"
        );
    } else {
        validate_case(&label, &case, &original, &model, &model_path, &data);
    }

    // The snapshot: reports (timings left out) and the dump diff.
    let mut snap = String::new();
    for r in &runs {
        let _ = writeln!(snap, "== passes[{}] {}", r.index, r.name);
        let _ = writeln!(snap, "{}", serde_json::to_string_pretty(&r.report).unwrap());
        if r.dead_nodes_cleaned > 0 {
            let _ = writeln!(
                snap,
                "dead nodes cleaned by the manager: {}",
                r.dead_nodes_cleaned
            );
        }
    }
    let (before, after) = (dump(&original), dump(&model));
    let diff = similar::TextDiff::from_lines(&before, &after);
    let _ = writeln!(snap, "== dump diff");
    let _ = write!(
        snap,
        "{}",
        diff.unified_diff()
            .context_radius(2)
            .header("before", "after")
    );

    // <pass>/<case>/<model>: case names repeat across passes.
    let pass_dir = path.parent().unwrap().file_name().unwrap();
    let out = out_dir
        .join(pass_dir)
        .join(path.file_stem().unwrap())
        .join(&case.model);
    onnx::save(&model, &out, &SaveOptions::default()).unwrap();
    (snap, out, case.expect.ort_reference.unwrap_or(true))
}

/// Validates the rewrite against the original with tract on the fixture's data.
fn validate_case(
    label: &str,
    case: &Case,
    original: &whittle::ir::Model,
    model: &whittle::ir::Model,
    model_path: &Path,
    data: &Path,
) {
    let bytes = map_file(model_path).unwrap();
    let dir = model_path.parent().unwrap();
    let options = ValidateOptions {
        data: data.exists().then(|| data.to_path_buf()),
        ..ValidateOptions::default()
    };
    let report = validate(
        Subject {
            label: "original",
            model: original,
            bytes: Some(&bytes),
            dir: Some(dir),
        },
        Subject {
            label: "rewritten",
            model,
            bytes: None,
            dir: Some(dir),
        },
        &options,
    )
    .unwrap_or_else(|e| panic!("{label}: {e}"));
    if let Some(min) = case.expect.min_sqnr_db {
        assert!(report.verdict.ok(), "{label}: {}", report.render());
        for o in &report.outputs {
            assert!(
                o.sqnr_db >= min,
                "{label}: {} at {} dB < {min}",
                o.name,
                o.sqnr_db
            );
        }
    }
}

/// The snapshots hold weights and scales that passes compute from tract's
/// outputs (calibration ranges, moments, reconstructions). tract's SIMD
/// kernels add in a different order on each instruction set, so the last
/// bits of those outputs, and the snapshots, would differ between CPUs: the
/// cases run on tract's portable kernels (`TRACT_CPU_ISA` takes every x86_64
/// extension away), the same on every x86_64 CPU. tract reads it once, at
/// its first use, so this runs first in the only test of this binary.
fn portable_tract_kernels() {
    if cfg!(target_arch = "x86_64") {
        std::env::set_var(
            "TRACT_CPU_ISA",
            "-avx,-avx2,-fma,-f16c,-avx512f,-avx512vnni,-avx512fp16,-avxvnni,-amx-int8,-amx-bf16",
        );
    }
}

#[test]
fn fixture_cases() {
    portable_tract_kernels();
    let tmp = tempfile::tempdir().unwrap();
    let mut ort_checks = String::new();
    for path in cases() {
        let (snap, out, ort_reference) = run_case(&path, tmp.path());
        let pass = path
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let case = path.file_stem().unwrap().to_string_lossy().into_owned();
        insta::assert_snapshot!(format!("case_{pass}_{case}"), snap);
        let name = out.file_stem().unwrap().to_string_lossy().into_owned();
        let (data, reference) = (
            common::fixture(&format!("{name}.data.npz")),
            common::fixture(&format!("{name}.ref.npz")),
        );
        if ort_reference && data.exists() && reference.exists() {
            let _ = writeln!(
                ort_checks,
                "{}\t{}\t{}",
                out.display(),
                data.display(),
                reference.display()
            );
        }
    }
    // onnxruntime loads and runs every rewritten model and matches onnxruntime's
    // outputs on the original.
    let list = tmp.path().join("ort.txt");
    std::fs::write(&list, &ort_checks).unwrap();
    let out = common::run_python("ort_check.py", &[&list]);
    let (stdout, stderr) = common::text(&out);
    assert!(
        out.status.success(),
        "onnxruntime check failed:\n{stdout}\n{stderr}"
    );
    let n = ort_checks.lines().count();
    assert!(
        stdout.contains(&format!("ort: {n} passed, 0 failed")),
        "{stdout}\n{stderr}"
    );
}
