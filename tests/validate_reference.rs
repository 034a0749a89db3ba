//! Reference agreement: tract, fed the bytes whittle encodes, computes what an
//! independent runtime computed.
//!
//! - every fixture with reference outputs (`fixtures/<name>.ref.npz`, from
//!   onnxruntime) and every QDQ fixture (`fixtures/qdq/`);
//! - every backend node test of onnx 1.22.0 that tract supports, against the
//!   expected outputs shipped with it. The cases tract cannot run, or runs to
//!   a different answer, are listed in `tests/tract_unsupported.txt`; the test
//!   fails when that list is out of date in either direction. Regenerate it
//!   with `WHITTLE_BLESS=1 cargo test --test validate_reference`.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use whittle::data::{self, Array, InputSpec};
use whittle::exec::{self, Runner};
use whittle::onnx;

/// onnx's backend runner compares with numpy's `assert_allclose` defaults of
/// its test harness: |actual - expected| <= atol + rtol * |expected|.
const RTOL: f64 = 1e-3;
const ATOL: f64 = 1e-7;

// ---------------------------------------------------------------- fixtures

/// Runs `model` on its `.data.npz` and compares with its `.ref.npz`.
fn check_fixture(model_path: &Path, rtol: f64, atol: f64) -> Result<(), String> {
    let stem = model_path
        .file_stem()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let dir = model_path.parent().unwrap();
    let model = onnx::load(model_path).map_err(|e| e.to_string())?;
    let inputs = InputSpec::of_graph(&model.graph)?;
    let samples = data::load_samples(
        &dir.join(format!("{stem}.data.npz")),
        &inputs,
        &BTreeMap::new(),
        None,
    )
    .map_err(|e| e.to_string())?;
    let reference: BTreeMap<String, Array> = data::read_npz(&dir.join(format!("{stem}.ref.npz")))
        .map_err(|e| e.to_string())?
        .into_iter()
        .collect();
    let runner = Runner::from_model(&stem, &model, Some(dir)).map_err(|e| e.to_string())?;
    let outputs = exec::run_samples(&runner, &samples.samples, 2).map_err(|e| e.to_string())?;
    for (name_ix, name) in runner.outputs().iter().enumerate() {
        let expected = reference
            .get(name)
            .ok_or_else(|| format!("{stem}: no reference for output {name:?}"))?;
        for (i, out) in outputs.iter().enumerate() {
            if let Some(d) =
                common::allclose(&out[name_ix], &expected.index_first_axis(i), rtol, atol)
            {
                return Err(format!("{stem}: output {name:?}, sample {i}: {d}"));
            }
        }
    }
    Ok(())
}

fn models_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "onnx"))
        .collect();
    v.sort();
    v
}

#[test]
fn fixtures_match_onnxruntime_in_tract() {
    let mut matched = Vec::new();
    let mut refused = BTreeMap::new();
    for path in common::fixture_models() {
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        if !common::fixture(&format!("{stem}.ref.npz")).exists() {
            continue;
        }
        match check_fixture(&path, RTOL, 1e-5) {
            Ok(()) => matched.push(stem),
            Err(e) => {
                refused.insert(stem, e);
            }
        }
    }
    // What tract cannot run is named precisely, never reported as a match.
    let expected_refusals = [
        // Model-local functions are not expanded by tract.
        (
            "function",
            ["\"first_call\"", "ScaledRelu", "model-local function"].as_slice(),
        ),
        // tract reads no sparse initializers.
        (
            "training_info",
            ["sparse", "sparse_weight", "MatMul"].as_slice(),
        ),
    ];
    for (name, needles) in expected_refusals {
        let e = refused
            .remove(name)
            .unwrap_or_else(|| panic!("{name} ran in tract; expected a refusal"));
        for n in needles {
            assert!(e.contains(n), "{name}: {n:?} not in {e}");
        }
    }
    assert!(
        refused.is_empty(),
        "fixtures that do not match: {refused:#?}"
    );
    assert!(matched.len() >= 5, "only {matched:?} matched");
}

#[test]
fn qdq_fixtures_match_onnxruntime_in_tract() {
    let models = models_in(&common::fixture("qdq"));
    assert_eq!(models.len(), 4, "QDQ fixtures: {models:?}");
    for path in models {
        // Integer outputs must be equal; float outputs may differ in the last
        // bits of the float accumulation before requantization.
        check_fixture(&path, 1e-5, 1e-6).unwrap_or_else(|e| panic!("{e}"));
    }
}

// ---------------------------------------------------------------- backend node tests

/// What became of one backend node test.
fn run_case(dir: &Path) -> Result<(), String> {
    let model =
        onnx::load(&dir.join("model.onnx")).map_err(|e| format!("whittle cannot load: {e}"))?;
    let inputs = InputSpec::of_graph(&model.graph).map_err(|e| format!("non-tensor input: {e}"))?;
    let mut sets: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    sets.sort();
    let runner = Runner::from_model("model", &model, Some(dir)).map_err(|e| match &e {
        exec::ExecError::Unsupported {
            op: Some(op),
            reason,
            ..
        } if reason.contains("has no implementation")
            || reason.contains("calls a model-local function") =>
        {
            format!("no tract op {op}")
        }
        exec::ExecError::Unsupported { op: Some(op), .. } => format!("tract rejects {op}: {e}"),
        exec::ExecError::Unsupported { reason, .. } if reason.contains("element type") => {
            format!("input type tract lacks: {e}")
        }
        _ => format!("tract cannot load: {e}"),
    })?;
    for set in sets {
        let read = |prefix: &str| -> Result<Vec<Array>, String> {
            let mut v = Vec::new();
            for i in 0.. {
                let p = set.join(format!("{prefix}_{i}.pb"));
                if !p.exists() {
                    break;
                }
                let bytes = std::fs::read(&p).map_err(|e| e.to_string())?;
                let t = onnx::decode_tensor(bytes.into()).map_err(|e| e.to_string())?;
                v.push(Array::from_tensor(&t).map_err(|e| format!("unsupported data: {e}"))?);
            }
            Ok(v)
        };
        let ins = read("input")?;
        let outs = read("output")?;
        if ins.len() != inputs.len() {
            return Err(format!(
                "{} inputs for {} model inputs",
                ins.len(),
                inputs.len()
            ));
        }
        let got = runner.run(0, &ins).map_err(|e| match &e {
            exec::ExecError::Unsupported { op: Some(op), .. } => {
                format!("tract cannot type {op}: {e}")
            }
            exec::ExecError::Unsupported { .. } => format!("tract cannot type it: {e}"),
            exec::ExecError::Run { .. } => format!("tract fails to run it: {e}"),
            e => format!("tract refuses the inputs: {e}"),
        })?;
        for (k, expected) in outs.iter().enumerate() {
            let actual = got.get(k).ok_or("fewer outputs than expected")?;
            if let Some(d) = common::allclose(actual, expected, RTOL, ATOL) {
                // Keep the committed reason stable: no numbers.
                let kind = if d.starts_with("shape") {
                    "wrong shape"
                } else if d.starts_with("type") {
                    "wrong output type"
                } else {
                    "wrong values"
                };
                return Err(format!("{kind} (output {k}): {d}"));
            }
        }
    }
    Ok(())
}

fn backend_dir() -> PathBuf {
    let out = common::run_python("backend_node_dir.py", &[]);
    assert!(out.status.success(), "{}", common::text(&out).1);
    PathBuf::from(common::text(&out).0.trim())
}

/// The committed reason for a case: its category, without tract's details
/// (which name internal node ids) or numbers.
fn category(reason: &str) -> String {
    for stable in [
        "no tract op ",
        "wrong shape",
        "wrong output type",
        "wrong values",
    ] {
        if reason.starts_with(stable) {
            return reason.split(" (").next().unwrap_or(reason).to_string();
        }
    }
    reason.split(':').next().unwrap_or(reason).to_string()
}

#[test]
fn backend_node_tests_match_in_tract_except_the_listed_ones() {
    let dir = backend_dir();
    let mut cases: Vec<(String, PathBuf)> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .filter(|(_, p)| p.join("model.onnx").exists())
        .collect();
    cases.sort();
    assert_eq!(cases.len(), 1765, "unexpected number of backend node tests");
    let results = exec::parallel_map(&cases, 2, |_, (_, p)| run_case(p));
    let mut listed = String::new();
    let mut details = String::new();
    let mut passed = 0;
    for ((name, _), r) in cases.iter().zip(&results) {
        match r {
            Ok(()) => passed += 1,
            Err(reason) => {
                listed += &format!("{name}: {}\n", category(reason));
                details += &format!("{name}: {reason}\n");
            }
        }
    }
    let failed = cases.len() - passed;
    let header = format!(
        "# onnx 1.22.0 backend node tests that tract-onnx 0.23.9 cannot run, or runs to\n\
         # outputs outside rtol {RTOL:e} / atol {ATOL:e}, when fed whittle-encoded bytes.\n\
         # {failed} of {} cases; {passed} match. Generated by\n\
         # `WHITTLE_BLESS=1 cargo test --test validate_reference`; do not edit.\n",
        cases.len()
    );
    let text = header + &listed;
    let list = common::root().join("tests/tract_unsupported.txt");
    // The full reasons, for whoever looks into a case.
    let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("tract_node_tests.log");
    std::fs::write(&log, &details).unwrap();
    if std::env::var_os("WHITTLE_BLESS").is_some() {
        std::fs::write(&list, &text).unwrap();
    }
    let committed = std::fs::read_to_string(&list).unwrap_or_default();
    let lines = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|l| !l.starts_with('#'))
            .map(str::to_string)
            .collect()
    };
    let (want, got) = (lines(&committed), lines(&text));
    let newly_failing: Vec<&String> = got.iter().filter(|l| !want.contains(l)).collect();
    let newly_passing: Vec<&String> = want.iter().filter(|l| !got.contains(l)).collect();
    assert!(
        newly_failing.is_empty() && newly_passing.is_empty(),
        "tests/tract_unsupported.txt is out of date (regenerate with WHITTLE_BLESS=1; details in {}):\n\
         now failing or failing differently:\n  {}\nlisted but no longer so:\n  {}",
        log.display(),
        newly_failing.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n  "),
        newly_passing.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n  "),
    );
    assert_eq!(
        committed, text,
        "the header of tests/tract_unsupported.txt is stale"
    );
    // Most of the suite must run: a loader that broke everything would
    // otherwise only show as a longer list.
    assert!(passed > 900, "only {passed} backend node tests match");
}
