//! `whittle dump` is deterministic and readable: insta snapshots of every
//! fixture, stable across runs and unchanged by a round trip.

mod common;

use whittle::ir::dump;
use whittle::onnx::{self, SaveOptions};

#[test]
fn fixture_dumps() {
    for path in common::fixture_models() {
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let model = onnx::load(&path).unwrap();
        let text = dump(&model);
        assert_eq!(
            text,
            dump(&onnx::load(&path).unwrap()),
            "{name}: dump not stable"
        );
        // A round trip through the encoder does not change the dump.
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join(path.file_name().unwrap());
        onnx::save(&model, &out, &SaveOptions::default()).unwrap();
        assert_eq!(
            text,
            dump(&onnx::load(&out).unwrap()),
            "{name}: dump changed by a round trip"
        );
        insta::assert_snapshot!(format!("dump_{name}"), text);
    }
}

#[test]
fn cli_dump_matches_the_library() {
    let out = common::whittle(&["dump", "fixtures/conv_bn_relu.onnx"]);
    assert!(out.status.success());
    let model = onnx::load(&common::fixture("conv_bn_relu.onnx")).unwrap();
    assert_eq!(common::text(&out).0, dump(&model));
}

#[test]
fn inspect_summarises_the_conv_net() {
    let out = common::whittle(&["inspect", "fixtures/conv_bn_relu.onnx"]);
    let (stdout, stderr) = common::text(&out);
    assert!(out.status.success(), "{stderr}");
    insta::assert_snapshot!("inspect_conv_bn_relu", stdout);
    let json = common::whittle(&["inspect", "--json", "fixtures/conv_bn_relu.onnx"]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["ops"]["Conv"], 2);
    assert_eq!(v["ops"]["BatchNormalization"], 2);
    assert_eq!(v["macs_unknown_nodes"], 0);
    // Conv 3->8 and 8->8 (3x3, 16x16 output) and Gemm 8*8*8 -> 10, one sample.
    let expected = 16 * 16 * 8 * (3 * 9) + 16 * 16 * 8 * (8 * 9) + 512 * 10;
    assert_eq!(v["macs"], expected);
}

#[test]
fn inspect_follows_exporter_shape_arithmetic_and_agrees_with_tract() {
    // The trained exports compute Reshape shapes (Shape -> Gather -> Concat,
    // nn.MultiheadAttention's Mod/Slice arithmetic), Split C2f branches and
    // Resize by scales: inspect counts every compute node, and its MACs are
    // what prune counts on the shapes tract proves.
    let tmp = tempfile::tempdir().unwrap();
    let pipeline = tmp.path().join("p.yaml");
    std::fs::write(
        &pipeline,
        "version: 1\npasses:\n  - prune: { ratio: 0.0 }\n",
    )
    .unwrap();
    for model in common::trained_models() {
        let json = common::whittle(&["inspect", "--json", model.to_str().unwrap()]);
        let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
        assert_eq!(v["macs_unknown_nodes"], 0, "{}", model.display());
        let out = tmp.path().join("out.onnx");
        let run = common::whittle(&[
            "run",
            pipeline.to_str().unwrap(),
            "--input",
            model.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--report",
            tmp.path().join("r.json").to_str().unwrap(),
        ]);
        assert!(run.status.success(), "{}", common::text(&run).1);
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(tmp.path().join("r.json")).unwrap()).unwrap();
        let tract = &report["passes"][0]["report"]["counters"]["macs_before"];
        assert!(tract.is_u64(), "no macs_before in {report}");
        assert_eq!(&v["macs"], tract, "{}", model.display());
    }
}
