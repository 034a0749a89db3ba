//! Bad input: every malformed model gives a one-line error naming the
//! problem, a non-zero exit, no panic and no output file.

mod common;

use std::path::Path;

/// (fixture under fixtures/bad/, text the error must contain)
const CASES: &[(&str, &str)] = &[
    ("empty.onnx", "the file is empty"),
    ("random.onnx", "does not parse"),
    ("truncated.onnx", "does not parse"),
    ("cycle.onnx", "has a cycle through"),
    (
        "dangling.onnx",
        "which no node, graph input or initializer produces",
    ),
    ("escape.onnx", "escapes the model's folder"),
    ("absolute_external.onnx", "is absolute"),
    ("missing_external.onnx", "missing.bin"),
];

fn assert_clean_failure(args: &[&str], expected: &str, out_dir: &Path) {
    let out = common::whittle(args);
    let (_, stderr) = common::text(&out);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
    assert!(
        stderr.contains(expected),
        "{args:?}: expected {expected:?} in {stderr:?}"
    );
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "{args:?}: not one line: {stderr:?}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    let leftovers: Vec<_> = std::fs::read_dir(out_dir).unwrap().collect();
    assert!(
        leftovers.is_empty(),
        "{args:?} left files behind: {leftovers:?}"
    );
}

#[test]
fn malformed_models_fail_cleanly_in_every_command() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.onnx");
    let out = out.to_str().unwrap();
    for (name, expected) in CASES {
        let path = common::fixture(&format!("bad/{name}"));
        assert!(path.exists(), "missing fixture {}", path.display());
        let path = path.to_str().unwrap();
        assert_clean_failure(
            &[
                "run",
                "configs/roundtrip.yaml",
                "--input",
                path,
                "--output",
                out,
            ],
            expected,
            tmp.path(),
        );
        assert_clean_failure(&["inspect", path], expected, tmp.path());
        assert_clean_failure(&["dump", path], expected, tmp.path());
    }
}

#[test]
fn errors_name_the_file() {
    let out = common::whittle(&["dump", "fixtures/bad/cycle.onnx"]);
    assert!(common::text(&out).1.contains("fixtures/bad/cycle.onnx"));
}

#[test]
fn missing_files_and_bad_paths_fail_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.onnx");
    let out = out.to_str().unwrap();
    let model = "fixtures/mlp.onnx";
    assert_clean_failure(
        &["dump", "fixtures/does-not-exist.onnx"],
        "cannot read",
        tmp.path(),
    );
    assert_clean_failure(
        &[
            "run",
            "configs/nope.yaml",
            "--input",
            model,
            "--output",
            out,
        ],
        "cannot read configs/nope.yaml",
        tmp.path(),
    );
    // The input is never overwritten.
    let copy = tmp.path().join("in.onnx");
    std::fs::copy(common::fixture("mlp.onnx"), &copy).unwrap();
    let copy = copy.to_str().unwrap();
    let before = std::fs::read(copy).unwrap();
    let res = common::whittle(&[
        "run",
        "configs/roundtrip.yaml",
        "--input",
        copy,
        "--output",
        copy,
    ]);
    assert_eq!(res.status.code(), Some(1));
    assert!(common::text(&res).1.contains("never modifies its input"));
    assert_eq!(std::fs::read(copy).unwrap(), before);
}

#[test]
fn unwritable_output_leaves_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    // The output's folder is a file: creating it fails.
    let blocker = tmp.path().join("blocker");
    std::fs::write(&blocker, b"").unwrap();
    let out = blocker.join("out.onnx");
    let res = common::whittle(&[
        "run",
        "configs/roundtrip.yaml",
        "--input",
        "fixtures/mlp.onnx",
        "--output",
        out.to_str().unwrap(),
    ]);
    assert_eq!(res.status.code(), Some(1));
    let (_, stderr) = common::text(&res);
    assert!(stderr.contains("cannot"), "{stderr}");
    let entries: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
}
