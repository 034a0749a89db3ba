//! `specialize` from the command line: errors name the input and suggest the
//! closest name, and nothing is written.

mod common;

fn run_with(pipeline: &str) -> (bool, String, bool) {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("p.yaml");
    std::fs::write(&cfg, pipeline).unwrap();
    let out = tmp.path().join("out.onnx");
    let res = common::whittle(&[
        "run",
        cfg.to_str().unwrap(),
        "--input",
        "fixtures/if_branch.onnx",
        "--output",
        out.to_str().unwrap(),
    ]);
    let (_, stderr) = common::text(&res);
    (res.status.success(), stderr, out.exists())
}

#[test]
fn unknown_input_name_is_an_error_with_a_suggestion() {
    let (ok, stderr, written) =
        run_with("version: 1\npasses:\n  - specialize: { inputs: { cnd: true } }\n");
    assert!(!ok && !written, "{stderr}");
    assert!(
        stderr.contains("passes[0] (specialize)")
            && stderr.contains("no input \"cnd\"")
            && stderr.contains("did you mean `cond`?"),
        "{stderr}"
    );
}

#[test]
fn a_value_that_does_not_fit_the_input_is_an_error() {
    let (ok, stderr, written) =
        run_with("version: 1\npasses:\n  - specialize: { inputs: { cond: [true, false] } }\n");
    assert!(!ok && !written, "{stderr}");
    assert!(
        stderr.contains("inputs.cond") && stderr.contains("does not fit input \"cond\""),
        "{stderr}"
    );
}

#[test]
fn pinning_the_condition_removes_the_if() {
    let (ok, stderr, _) =
        run_with("version: 1\npasses:\n  - specialize: { inputs: { cond: false } }\n");
    assert!(ok, "{stderr}");
}
