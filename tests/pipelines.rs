//! The pipeline file is a contract: every malformed pipeline in
//! `fixtures/pipelines/bad/` gives a one-line error naming the file, the line
//! and the YAML path, and nothing is written. Every shipped config in
//! `configs/` runs, and runs deterministically.

mod common;

/// (file under fixtures/pipelines/bad/, what the error must say)
const BAD: &[(&str, &[&str])] = &[
    (
        "typo_pass.yaml",
        &[
            "typo_pass.yaml:3:",
            "passes[0]",
            "unknown pass \"fold-batchnrom\"",
            "did you mean \"fold-batchnorm\"",
        ],
    ),
    (
        "typo_option.yaml",
        &[
            "typo_option.yaml:4:",
            "passes[1].eliminate-dead.identiy",
            "did you mean `identity`",
        ],
    ),
    (
        "wrong_type.yaml",
        &[
            "wrong_type.yaml:3:",
            "passes[0].eliminate-dead.identity",
            "expected a boolean",
        ],
    ),
    (
        "bad_value.yaml",
        &[
            "bad_value.yaml:3:",
            "passes[0].fold-batchnorm.into[0]",
            "cannot fold into \"Relu\"",
        ],
    ),
    (
        "negative_threshold.yaml",
        &[
            "negative_threshold.yaml:5:",
            "validate.gates.max_abs_error",
            "negative",
        ],
    ),
    (
        "missing_version.yaml",
        &["missing_version.yaml", "line 1", "missing field `version`"],
    ),
    ("tabs.yaml", &["tabs.yaml", "line 3", "tab"]),
    (
        "duplicate_key.yaml",
        &[
            "duplicate_key.yaml",
            "line 4",
            "duplicate mapping key: passes",
        ],
    ),
    (
        "two_key_entry.yaml",
        &["two_key_entry.yaml:3:", "passes[0]", "one-key map"],
    ),
];

#[test]
fn malformed_pipelines_give_precise_errors() {
    let dir = common::fixture("pipelines/bad");
    let listed: Vec<String> = BAD.iter().map(|(f, _)| f.to_string()).collect();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(listed.contains(&name), "{name} has no expectation in BAD");
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.onnx");
    for (file, expected) in BAD {
        let pipeline = dir.join(file);
        let res = common::whittle(&[
            "run",
            pipeline.to_str().unwrap(),
            "--input",
            "fixtures/mlp.onnx",
            "--output",
            out.to_str().unwrap(),
        ]);
        let (_, stderr) = common::text(&res);
        assert_eq!(res.status.code(), Some(1), "{file}: {stderr}");
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "{file}: not one line:\n{stderr}"
        );
        for e in *expected {
            assert!(stderr.contains(e), "{file}: expected {e:?} in {stderr:?}");
        }
        assert!(!out.exists(), "{file}: an output was written");
    }
}

/// (config, fixture it runs on)
const CONFIGS: &[(&str, &str)] = &[
    ("roundtrip.yaml", "conv_bn_relu.onnx"),
    ("fold-batchnorm.yaml", "resnet_tiny.onnx"),
    ("int8.yaml", "resnet_tiny.onnx"),
];

#[test]
fn every_shipped_config_runs_and_is_deterministic() {
    let mut shipped: Vec<String> = std::fs::read_dir(common::root().join("configs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    shipped.sort();
    let mut tested: Vec<String> = CONFIGS.iter().map(|(c, _)| c.to_string()).collect();
    tested.sort();
    assert_eq!(
        shipped, tested,
        "every file in configs/ must be run by this test"
    );

    let tmp = tempfile::tempdir().unwrap();
    for (config, fixture) in CONFIGS {
        let mut outputs = Vec::new();
        for run in 0..2 {
            let out = tmp.path().join(format!("{config}.{run}.onnx"));
            let report = tmp.path().join(format!("{config}.{run}.json"));
            let data = format!("fixtures/{}", fixture.replace(".onnx", ".data.npz"));
            let res = common::whittle(&[
                "run",
                &format!("configs/{config}"),
                "--input",
                &format!("fixtures/{fixture}"),
                "--output",
                out.to_str().unwrap(),
                "--report",
                report.to_str().unwrap(),
                "--data",
                &data,
            ]);
            assert!(res.status.success(), "{config}: {}", common::text(&res).1);
            let json: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
            assert!(json["passes"].is_array(), "{config}: report has no passes");
            outputs.push(std::fs::read(&out).unwrap());
        }
        assert!(
            outputs[0] == outputs[1],
            "{config}: two runs wrote different bytes"
        );
    }
}

#[test]
fn dump_dir_shows_every_step() {
    let tmp = tempfile::tempdir().unwrap();
    let dumps = tmp.path().join("dumps");
    let res = common::whittle(&[
        "run",
        "configs/fold-batchnorm.yaml",
        "--input",
        "fixtures/conv_bn_relu.onnx",
        "--output",
        tmp.path().join("out.onnx").to_str().unwrap(),
        "--dump-dir",
        dumps.to_str().unwrap(),
    ]);
    assert!(res.status.success(), "{}", common::text(&res).1);
    let mut files: Vec<String> = std::fs::read_dir(&dumps)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "00-input.txt",
            "01-fold-batchnorm.txt",
            "02-eliminate-dead.txt"
        ]
    );
    let input = std::fs::read_to_string(dumps.join("00-input.txt")).unwrap();
    let folded = std::fs::read_to_string(dumps.join("01-fold-batchnorm.txt")).unwrap();
    assert!(input.contains("BatchNormalization"));
    assert!(!folded.contains("BatchNormalization \""));
}

#[test]
fn passes_and_schema_describe_the_registry() {
    let res = common::whittle(&["passes"]);
    let (stdout, _) = common::text(&res);
    assert!(res.status.success());
    for p in whittle::passes::PASSES {
        assert!(
            stdout.contains(p.name),
            "{} missing from `whittle passes`",
            p.name
        );
    }
    let res = common::whittle(&["passes", "fold-batchnrom"]);
    assert_eq!(res.status.code(), Some(1));
    assert!(common::text(&res)
        .1
        .contains("did you mean \"fold-batchnorm\""));
    let res = common::whittle(&["schema"]);
    let schema: serde_json::Value = serde_json::from_slice(&res.stdout).unwrap();
    assert_eq!(schema["required"][0], "version");
}
