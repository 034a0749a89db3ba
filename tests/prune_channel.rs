//! `prune` with `granularity: channel` end to end through the CLI: the
//! fixture CNN and transformer pruned to a MACs target run in tract and in
//! onnxruntime with their original output shapes, pass `onnx.checker` with
//! full shape inference, give the same bytes on 1 and 2 threads, and bad
//! options fail naming their YAML path.

mod common;

use std::fmt::Write as _;
use std::path::Path;

fn write_pipeline(dir: &Path, name: &str, options: &str) -> std::path::PathBuf {
    let p = dir.join(format!("{name}.yaml"));
    std::fs::write(&p, format!("version: 1\npasses:\n  - prune:\n{options}\n")).unwrap();
    p
}

fn run(pipeline: &Path, input: &Path, output: &Path, threads: &str) -> (bool, String, String) {
    let out = common::whittle(&[
        "run",
        pipeline.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--threads",
        threads,
    ]);
    let (stdout, stderr) = common::text(&out);
    (out.status.success(), stdout, stderr)
}

fn macs(model: &Path) -> u64 {
    let m = whittle::onnx::load(model).unwrap();
    whittle::inspect::summarize(&m).macs
}

#[test]
fn fixtures_pruned_to_a_macs_target_run_in_tract_and_onnxruntime() {
    let tmp = tempfile::tempdir().unwrap();
    let pipeline = write_pipeline(tmp.path(), "p", "      target: { macs: 0.7 }");
    let mut list = String::new();
    for name in ["resnet_tiny", "transformer_tiny", "conv_bn_relu", "mlp"] {
        let input = common::fixture(&format!("{name}.onnx"));
        let out = tmp.path().join(format!("{name}.onnx"));
        let (ok, stdout, stderr) = run(&pipeline, &input, &out, "1");
        assert!(ok, "{name}:\n{stdout}\n{stderr}");
        let (before, after) = (macs(&input), macs(&out));
        eprintln!("{name}: MACs {before} -> {after}\n{stderr}");
        // tract runs the result (validate) with the original output shapes.
        let original = whittle::onnx::load(&input).unwrap();
        let pruned = whittle::onnx::load(&out).unwrap();
        let runner = whittle::exec::Runner::from_model("pruned", &pruned, None).unwrap();
        let data = common::fixture(&format!("{name}.data.npz"));
        let specs = whittle::data::InputSpec::of_graph(&original.graph).unwrap();
        let samples = whittle::data::load_samples(&data, &specs, &Default::default(), Some(1))
            .unwrap()
            .samples;
        let reference = whittle::exec::Runner::from_model("original", &original, None).unwrap();
        let (a, b) = (
            reference.run(0, &samples[0]).unwrap(),
            runner.run(0, &samples[0]).unwrap(),
        );
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.shape, y.shape, "{name}");
        }
        writeln!(
            list,
            "{}\t{}\t{}",
            input.display(),
            out.display(),
            data.display()
        )
        .unwrap();
    }
    let file = tmp.path().join("list.txt");
    std::fs::write(&file, &list).unwrap();
    let out = common::run_python("prune_check.py", &[&file]);
    let (stdout, stderr) = common::text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("prune: 4 passed, 0 failed"), "{stdout}");
}

#[test]
fn bert_attention_heads_prune_through_the_exporters_computed_shapes() {
    // PyTorch's export of a BERT-style encoder reshapes Q/K/V to heads with
    // shapes computed from `Shape` (dynamic batch); the head count is a
    // constant piece of the `Concat`, which pruning rewrites.
    let tmp = tempfile::tempdir().unwrap();
    let pipeline = write_pipeline(tmp.path(), "p", "      ratio: 0.5");
    let input = common::fixture("trained/bert_tiny.onnx");
    let out = tmp.path().join("bert.onnx");
    let (ok, stdout, stderr) = run(&pipeline, &input, &out, "1");
    assert!(ok, "{stdout}\n{stderr}");
    assert!(
        stderr.contains("/layers.0/attention/query/MatMul     4 → 2"),
        "{stderr}"
    );
    let pruned = whittle::onnx::load(&out).unwrap();
    let q = pruned
        .graph
        .nodes()
        .find(|(_, n)| n.name() == "/layers.0/attention/query/MatMul")
        .map(|(_, n)| n.inputs[1].clone())
        .unwrap();
    assert_eq!(pruned.graph.initializer(&q).unwrap().dims, [64, 32]);
    let list = tmp.path().join("list.txt");
    let data = common::fixture("trained/bert_tiny.test.npz");
    std::fs::write(
        &list,
        format!(
            "{}\t{}\t{}\n",
            input.display(),
            out.display(),
            data.display()
        ),
    )
    .unwrap();
    let check = common::run_python("prune_check.py", &[&list]);
    let (stdout, stderr) = common::text(&check);
    assert!(check.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("prune: 1 passed, 0 failed"), "{stdout}");
}

#[test]
fn resnet_macs_fall_to_the_target() {
    let tmp = tempfile::tempdir().unwrap();
    let pipeline = write_pipeline(tmp.path(), "p", "      target: { macs: 0.7 }");
    let input = common::fixture("resnet_tiny.onnx");
    let out = tmp.path().join("r.onnx");
    let (ok, _, stderr) = run(&pipeline, &input, &out, "2");
    assert!(ok, "{stderr}");
    let (before, after) = (macs(&input) as f64, macs(&out) as f64);
    assert!(after <= 0.7 * before, "{after} / {before}\n{stderr}");
}

#[test]
fn same_bytes_on_one_and_two_threads() {
    let tmp = tempfile::tempdir().unwrap();
    let pipeline = write_pipeline(tmp.path(), "p", "      ratio: 0.4\n      importance: l2");
    for name in ["resnet_tiny", "transformer_tiny"] {
        let input = common::fixture(&format!("{name}.onnx"));
        let (a, b) = (tmp.path().join("a.onnx"), tmp.path().join("b.onnx"));
        assert!(run(&pipeline, &input, &a, "1").0);
        assert!(run(&pipeline, &input, &b, "2").0);
        assert_eq!(
            std::fs::read(&a).unwrap(),
            std::fs::read(&b).unwrap(),
            "{name}"
        );
    }
}

#[test]
fn bad_options_fail_naming_the_yaml_path() {
    let tmp = tempfile::tempdir().unwrap();
    let input = common::fixture("resnet_tiny.onnx");
    for (options, want) in [
        ("      ratio: 1.0", "ratio: must be in [0, 1)"),
        (
            "      target: { macs: 0 }",
            "target.macs: must be in (0, 1]",
        ),
        ("      importance: l3", "did you mean `l1`"),
        (
            "      ratio: 0.5\n      target: { macs: 0.5 }",
            "give either `ratio` or `target`, not both",
        ),
        (
            "      ratio: 0.5\n      pattern: \"2:4\"",
            "`pattern` applies to granularity",
        ),
        (
            "      exclude_nodes: [nope]",
            "exclude_nodes[0]: no node is named \"nope\"",
        ),
    ] {
        let p = write_pipeline(tmp.path(), "bad", options);
        let out = tmp.path().join("bad.onnx");
        let (ok, _, stderr) = run(&p, &input, &out, "1");
        assert!(!ok, "{options}");
        assert!(stderr.contains(want), "{options}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(!out.exists(), "{options}: wrote a model");
    }
}
