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

/// Saves `g` as `dir/NAME.onnx` and `x`'s samples (`shape`, sample axis
/// first) as `dir/NAME.npz`; returns both paths.
fn save_with_inputs(
    dir: &Path,
    name: &str,
    g: whittle::ir::Graph,
    shape: Vec<usize>,
    x: &[f32],
) -> (std::path::PathBuf, std::path::PathBuf) {
    let model_path = dir.join(format!("{name}.onnx"));
    whittle::onnx::save(
        &whittle::ir::Model::new(g, 17),
        &model_path,
        &Default::default(),
    )
    .unwrap();
    let data_path = dir.join(format!("{name}.npz"));
    common::write_npz(
        &data_path,
        &[("x".into(), whittle::data::Array::from_f32(shape, x))],
    );
    (model_path, data_path)
}

/// Seeded values uniform in [-0.5, 0.5), `n` at a time (a 64-bit LCG's high bits).
fn seeded(mut seed: u64) -> impl FnMut(usize) -> Vec<f32> {
    move |n| {
        (0..n)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((seed >> 33) as f64 / (1u64 << 31) as f64 - 0.5) as f32
            })
            .collect()
    }
}

/// x[1,3,8,8] ─ conv1(3→6, 3×3) ─ conv2(6→4, 3×3) ─ y, where conv1's
/// filter 5 (and bias) is 0.1·filter 0 − 0.05·filter 1: channel 5 is a
/// linear combination of channels 0 and 1 (in conv2's zero padding too),
/// and the smallest (l1).
fn affine_channel_model(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    use whittle::ir::{Attribute, DataType, Dim, Graph, Node, Tensor, TypeInfo, ValueInfo};
    let mut rand = seeded(11);
    let mut g = Graph::new("affine");
    let dims = |d: &[i64]| d.iter().map(|&v| Dim::known(v)).collect::<Vec<_>>();
    g.inputs.push(ValueInfo::new(
        "x",
        TypeInfo::tensor(DataType::Float, dims(&[1, 3, 8, 8])),
    ));
    g.outputs.push(ValueInfo::new(
        "y",
        TypeInfo::tensor(DataType::Float, dims(&[1, 4, 8, 8])),
    ));
    let mut w1 = rand(6 * 27);
    let mut b1 = rand(6);
    for k in 0..27 {
        w1[5 * 27 + k] = 0.1 * w1[k] - 0.05 * w1[27 + k];
    }
    b1[5] = 0.1 * b1[0] - 0.05 * b1[1];
    g.add_initializer(Tensor::from_f32("w1", vec![6, 3, 3, 3], &w1));
    g.add_initializer(Tensor::from_f32("b1", vec![6], &b1));
    g.add_initializer(Tensor::from_f32("w2", vec![4, 6, 3, 3], &rand(4 * 54)));
    g.add_initializer(Tensor::from_f32("b2", vec![4], &rand(4)));
    let pads = || Attribute::ints("pads", vec![1, 1, 1, 1]);
    let mut c1 = Node::with_io("Conv", "conv1", &["x", "w1", "b1"], &["h"]);
    c1.set_attr(pads());
    let mut c2 = Node::with_io("Conv", "conv2", &["h", "w2", "b2"], &["y"]);
    c2.set_attr(pads());
    g.add_node(c1);
    g.add_node(c2);
    let data: Vec<f32> = rand(16 * 3 * 64).iter().map(|v| 2.0 * v).collect();
    save_with_inputs(dir, "affine", g, vec![16, 1, 3, 8, 8], &data)
}

#[test]
fn reconstruction_is_exact_when_a_removed_channel_is_a_linear_combination_of_kept_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, data) = affine_channel_model(tmp.path());
    let mut sqnr = Vec::new();
    for reconstruct in ["false", "true"] {
        let p = write_pipeline(
            tmp.path(),
            reconstruct,
            &format!("      ratio: 0.2\n      reconstruct: {reconstruct}"),
        );
        let out = tmp.path().join(format!("{reconstruct}.onnx"));
        common::run_pipeline(&p, &model, &data, &out, &["--threads", "1"]);
        let w1 = whittle::onnx::load(&out).unwrap();
        assert_eq!(w1.graph.initializer("w1").unwrap().dims, [5, 3, 3, 3]);
        sqnr.push(common::validate_sqnr(&model, &out, &data));
    }
    assert!(sqnr[1] >= 60.0, "reconstructed: {sqnr:?}");
    assert!(sqnr[0] < 40.0, "without reconstruction: {sqnr:?}");
}

#[test]
fn reconstruction_raises_the_sqnr_of_a_trained_cnn_at_the_same_channels_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = common::root().join("fixtures/trained");
    let model = dir.join("digits_cnn.onnx");
    let (calib, test) = (
        dir.join("digits_cnn.calib.npz"),
        dir.join("digits_cnn.test.npz"),
    );
    let mut sqnr = Vec::new();
    let mut kept = Vec::new();
    for reconstruct in ["false", "true"] {
        let p = write_pipeline(
            tmp.path(),
            reconstruct,
            &format!("      ratio: 0.3\n      reconstruct: {reconstruct}"),
        );
        let out = tmp.path().join(format!("{reconstruct}.onnx"));
        common::run_pipeline(&p, &model, &calib, &out, &["--threads", "2"]);
        let m = whittle::onnx::load(&out).unwrap();
        let mut dims: Vec<(String, Vec<i64>)> = m
            .graph
            .initializers()
            .iter()
            .filter(|t| t.dims.len() == 4)
            .map(|t| (t.name().to_string(), t.dims.clone()))
            .collect();
        dims.sort();
        kept.push(dims);
        sqnr.push(common::validate_sqnr(&model, &out, &test));
    }
    assert_eq!(kept[0], kept[1], "the same channels are removed");
    assert!(sqnr[1] > sqnr[0] + 6.0, "{sqnr:?}");
}

#[test]
fn data_aware_options_give_the_same_bytes_on_one_and_two_threads() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, data) = affine_channel_model(tmp.path());
    let p = write_pipeline(
        tmp.path(),
        "p",
        "      ratio: 0.4\n      importance: activation\n      reconstruct: true",
    );
    let (a, b) = (tmp.path().join("a.onnx"), tmp.path().join("b.onnx"));
    common::run_pipeline(&p, &model, &data, &a, &["--threads", "1"]);
    common::run_pipeline(&p, &model, &data, &b, &["--threads", "2"]);
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
}

#[test]
fn data_aware_options_without_data_fail_naming_the_option() {
    let tmp = tempfile::tempdir().unwrap();
    let input = common::fixture("resnet_tiny.onnx");
    for (options, want) in [
        (
            "      reconstruct: true",
            "reconstruct: true needs calibration data",
        ),
        (
            "      importance: activation",
            "importance: activation needs calibration data",
        ),
    ] {
        let p = write_pipeline(tmp.path(), "bad", options);
        let out = tmp.path().join("bad.onnx");
        let (ok, _, stderr) = run(&p, &input, &out, "1");
        assert!(!ok, "{options}");
        assert!(stderr.contains(want), "{options}: {stderr}");
        assert!(!out.exists(), "{options}: wrote a model");
    }
}

#[test]
fn an_sqnr_target_is_met_and_its_final_line_equals_validate() {
    let tmp = tempfile::tempdir().unwrap();
    let input = common::fixture("resnet_tiny.onnx");
    let data = common::fixture("resnet_tiny.data.npz");
    let p = write_pipeline(tmp.path(), "p", "      target: { min_sqnr_db: 25 }");
    let out = tmp.path().join("t.onnx");
    let stderr = common::run_pipeline(&p, &input, &data, &out, &["--threads", "2"]);
    let line = stderr
        .lines()
        .find(|l| l.contains("target.min_sqnr_db 25: met"))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(line.contains("calibration samples"), "{line}");
    let printed: f64 = line
        .split("output SQNR ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    let measured = common::validate_sqnr(&input, &out, &data);
    assert!(measured >= 25.0, "{measured}");
    assert!((printed - measured).abs() < 0.01, "{printed} vs {measured}");
    // Something was pruned.
    assert!(macs(&out) < macs(&input), "{stderr}");
}

/// A ResNeXt-style block, seeded: stem Conv 8 → 16 → BN → Relu, then
/// [1x1 Conv → BN → Relu → 3x3 Conv (group 4) → BN → Relu → 1x1 Conv → BN]
/// + skip → Add → Relu → GlobalAveragePool → Flatten → Gemm → `logits` [1, 10].
fn resnext_block_model(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    use whittle::ir::{Attribute, DataType, Dim, Graph, Node, Tensor, TypeInfo, ValueInfo};
    let mut rand = seeded(23);
    let mut g = Graph::new("resnext_block");
    let dims = |d: &[i64]| d.iter().map(|&v| Dim::known(v)).collect::<Vec<_>>();
    g.inputs.push(ValueInfo::new(
        "x",
        TypeInfo::tensor(DataType::Float, dims(&[1, 8, 8, 8])),
    ));
    g.outputs.push(ValueInfo::new(
        "logits",
        TypeInfo::tensor(DataType::Float, dims(&[1, 10])),
    ));
    let mut conv = |g: &mut Graph, name: &str, x: &str, cin: i64, cout: i64, k: i64, group: i64| {
        let w = rand((cout * cin / group * k * k) as usize);
        g.add_initializer(Tensor::from_f32(
            format!("{name}.w"),
            vec![cout, cin / group, k, k],
            &w,
        ));
        let (s, b, m) = (
            rand(cout as usize),
            rand(cout as usize),
            rand(cout as usize),
        );
        let s: Vec<f32> = s.iter().map(|v| 1.0 + v).collect();
        let v: Vec<f32> = rand(cout as usize).iter().map(|v| 0.6 + v).collect();
        for (p, vals) in [("s", &s), ("b", &b), ("m", &m), ("v", &v)] {
            g.add_initializer(Tensor::from_f32(format!("{name}.bn.{p}"), vec![cout], vals));
        }
        let mut c = Node::new(
            "Conv",
            name,
            vec![x.into(), format!("{name}.w")],
            vec![format!("{name}.c")],
        );
        c.set_attr(Attribute::ints("pads", vec![k / 2; 4]));
        c.set_attr(Attribute::int("group", group));
        g.add_node(c);
        let bn = |p: &str| format!("{name}.bn.{p}");
        g.add_node(Node::new(
            "BatchNormalization",
            format!("{name}.bn"),
            vec![format!("{name}.c"), bn("s"), bn("b"), bn("m"), bn("v")],
            vec![format!("{name}.y")],
        ));
        format!("{name}.y")
    };
    let relu = |g: &mut Graph, x: &str| {
        g.add_node(Node::new(
            "Relu",
            format!("{x}.relu"),
            vec![x.into()],
            vec![format!("{x}.r")],
        ));
        format!("{x}.r")
    };
    let stem = conv(&mut g, "stem", "x", 8, 16, 3, 1);
    let stem = relu(&mut g, &stem);
    let a = conv(&mut g, "reduce", &stem, 16, 16, 1, 1);
    let a = relu(&mut g, &a);
    let a = conv(&mut g, "grouped", &a, 16, 16, 3, 4);
    let a = relu(&mut g, &a);
    let a = conv(&mut g, "expand", &a, 16, 16, 1, 1);
    g.add_node(Node::new("Add", "add", vec![a, stem], vec!["sum".into()]));
    let s = relu(&mut g, "sum");
    g.add_node(Node::new(
        "GlobalAveragePool",
        "gap",
        vec![s],
        vec!["gap".into()],
    ));
    g.add_node(Node::new(
        "Flatten",
        "flat",
        vec!["gap".into()],
        vec!["flat".into()],
    ));
    g.add_initializer(Tensor::from_f32("fc.w", vec![10, 16], &rand(160)));
    g.add_initializer(Tensor::from_f32("fc.b", vec![10], &rand(10)));
    let mut fc = Node::new(
        "Gemm",
        "fc",
        vec!["flat".into(), "fc.w".into(), "fc.b".into()],
        vec!["logits".into()],
    );
    fc.set_attr(Attribute::int("transB", 1));
    g.add_node(fc);
    let data: Vec<f32> = rand(4 * 8 * 64).iter().map(|v| 2.0 * v).collect();
    save_with_inputs(dir, "resnext", g, vec![4, 1, 8, 8, 8], &data)
}

#[test]
fn grouped_convs_in_a_residual_block_prune_and_keep_their_group() {
    let tmp = tempfile::tempdir().unwrap();
    let (input, data) = resnext_block_model(tmp.path());
    let pipeline = write_pipeline(tmp.path(), "p", "      target: { macs: 0.7 }");
    let out = tmp.path().join("pruned.onnx");
    let (ok, stdout, stderr) = run(&pipeline, &input, &out, "1");
    assert!(ok, "{stdout}\n{stderr}");
    // The grouped Conv's input and output channels both shrink, by as many
    // in each of its 4 groups, and it keeps `group` 4; the report says so.
    assert!(
        stderr.contains("grouped Conv grouped: group 4 kept"),
        "{stderr}"
    );
    let pruned = whittle::onnx::load(&out).unwrap();
    let node = |name: &str| {
        pruned
            .graph
            .nodes()
            .find(|(_, n)| n.name() == name)
            .map(|(_, n)| n.clone())
            .unwrap()
    };
    let gc = node("grouped");
    assert_eq!(gc.attr_int("group"), Some(4));
    let w = pruned
        .graph
        .initializer(&gc.inputs[1])
        .unwrap()
        .dims
        .clone();
    assert!(w[0] < 16 && w[1] < 4 && w[0] % 4 == 0, "{w:?}");
    let reduce = pruned.graph.initializer("reduce.w").unwrap().dims.clone();
    assert_eq!(reduce[0], 4 * w[1], "{reduce:?} vs {w:?}");
    let expand = pruned.graph.initializer("expand.w").unwrap().dims.clone();
    assert_eq!(expand[1], w[0], "{expand:?} vs {w:?}");
    let (before, after) = (macs(&input) as f64, macs(&out) as f64);
    assert!(after <= 0.75 * before, "{after} / {before}\n{stderr}");
    // tract equals onnxruntime on the pruned model; onnx.checker (full) passes
    // and onnxruntime gives the original output shapes.
    let tract = common::tract_outputs(&out, &data);
    let list = tmp.path().join("ort.txt");
    std::fs::write(
        &list,
        format!(
            "{}\t{}\t{}\n",
            out.display(),
            data.display(),
            tract.display()
        ),
    )
    .unwrap();
    let check = common::run_python("ort_check.py", &[&list]);
    let (so, se) = common::text(&check);
    assert!(check.status.success(), "{so}\n{se}");
    assert!(so.contains("ort: 1 passed, 0 failed"), "{so}");
    let list = tmp.path().join("prune.txt");
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
    let (so, se) = common::text(&check);
    assert!(check.status.success(), "{so}\n{se}");
    assert!(so.contains("prune: 1 passed, 0 failed"), "{so}");
}
