//! `distill-head` end to end: the grafted graph runs in tract, its loss
//! outputs equal the formula recomputed here from separate runs of teacher
//! and student, the student's outputs are bit-identical, onnxruntime agrees
//! with tract, and bad configurations fail with clear messages.
//!
//! Teacher: `fixtures/resnet_tiny.onnx` (PyTorch-made, x [N,3,32,32] →
//! logits [N,10]). Student: a small net built here on the same input
//! (GlobalAveragePool → Flatten → Gemm → Relu → Gemm) with seeded weights.

mod common;

use std::path::{Path, PathBuf};

use whittle::data::Array;
use whittle::exec::Runner;
use whittle::ir::{DataType, Dim, Graph, Model, Node, Tensor, TypeInfo, ValueInfo};
use whittle::passes::PassContext;
use whittle::pipeline::Pipeline;

const BATCH: usize = 4;

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("whittle-distill-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Seeded uniform values in [-a, a).
fn uniform(seed: u64, n: usize, a: f32) -> Vec<f32> {
    let mut rng = whittle::data::Rng::new(seed);
    (0..n)
        .map(|_| (rng.unit() as f32 * 2.0 - 1.0) * a)
        .collect()
}

/// The student: x [N,3,32,32] → GlobalAveragePool → Flatten (`pooled` [N,3])
/// → Gemm(3→16) → Relu → Gemm(16→10) → `logits` [N,10].
fn student() -> Model {
    let mut g = Graph::new("student");
    let n = Dim::symbol("N");
    g.inputs.push(ValueInfo::new(
        "x",
        TypeInfo::tensor(
            DataType::Float,
            vec![n.clone(), Dim::known(3), Dim::known(32), Dim::known(32)],
        ),
    ));
    g.outputs.push(ValueInfo::new(
        "logits",
        TypeInfo::tensor(DataType::Float, vec![n.clone(), Dim::known(10)]),
    ));
    g.value_info.push(ValueInfo::new(
        "pooled",
        TypeInfo::tensor(DataType::Float, vec![n, Dim::known(3)]),
    ));
    g.add_initializer(Tensor::from_f32(
        "fc1.weight",
        vec![3, 16],
        &uniform(1, 48, 2.0),
    ));
    g.add_initializer(Tensor::from_f32("fc1.bias", vec![16], &uniform(2, 16, 0.5)));
    g.add_initializer(Tensor::from_f32(
        "fc2.weight",
        vec![16, 10],
        &uniform(3, 160, 1.0),
    ));
    g.add_initializer(Tensor::from_f32("fc2.bias", vec![10], &uniform(4, 10, 0.5)));
    g.add_node(Node::with_io(
        "GlobalAveragePool",
        "gap",
        &["x"],
        &["gap_out"],
    ));
    g.add_node(Node::with_io(
        "Flatten",
        "flatten",
        &["gap_out"],
        &["pooled"],
    ));
    g.add_node(Node::with_io(
        "Gemm",
        "fc1",
        &["pooled", "fc1.weight", "fc1.bias"],
        &["h"],
    ));
    g.add_node(Node::with_io("Relu", "relu", &["h"], &["h_relu"]));
    g.add_node(Node::with_io(
        "Gemm",
        "fc2",
        &["h_relu", "fc2.weight", "fc2.bias"],
        &["logits"],
    ));
    Model::new(g, 17)
}

fn student_path() -> PathBuf {
    let p = tmp("student.onnx");
    if !p.exists() {
        let staged = tmp(&format!("student.{:?}.onnx", std::thread::current().id()));
        whittle::onnx::save(&student(), &staged, &Default::default()).unwrap();
        std::fs::rename(&staged, &p).unwrap();
    }
    p
}

/// One batch of the teacher fixture's 4 samples: x [4,3,32,32].
fn batch() -> Array {
    let arrays = whittle::data::read_npz(&common::fixture("resnet_tiny.data.npz")).unwrap();
    let x = &arrays.iter().find(|(n, _)| n == "x").unwrap().1;
    // [4,1,3,32,32] → [4,3,32,32]: the same bytes.
    Array::new(DataType::Float, vec![BATCH, 3, 32, 32], x.data.clone()).unwrap()
}

const LABELS: [i64; BATCH] = [3, 7, 0, 9];

fn labels(dtype: DataType) -> Array {
    let data: Vec<u8> = match dtype {
        DataType::Int32 => LABELS
            .iter()
            .flat_map(|&l| (l as i32).to_le_bytes())
            .collect(),
        _ => LABELS.iter().flat_map(|l| l.to_le_bytes()).collect(),
    };
    Array::new(dtype, vec![BATCH], data).unwrap()
}

fn floats(a: &Array) -> Vec<f32> {
    a.data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// Runs the pipeline text on `input` through the pass manager.
fn graft(
    pipeline: &str,
    input: &Path,
    data: Option<&Path>,
) -> Result<(Model, Vec<whittle::manager::PassRun>), String> {
    let p = Pipeline::parse(pipeline, Path::new("distill.yaml")).map_err(|e| e.to_string())?;
    let mut model = whittle::onnx::load(input).unwrap();
    let ctx = PassContext {
        data: data.map(Path::to_path_buf),
        model_dir: input.parent().map(Path::to_path_buf),
        pipeline_dir: Some(common::root()),
        ..Default::default()
    };
    let runs = whittle::manager::run(&mut model, &p, &ctx, None).map_err(|e| e.to_string())?;
    Ok((model, runs))
}

/// Runs a model in tract on named inputs; outputs by name.
fn run(model: &Model, dir: &Path, feed: &[(&str, Array)]) -> Vec<(String, Array)> {
    let runner = Runner::from_model("model", model, Some(dir)).unwrap();
    let sample: Vec<Array> = runner
        .inputs()
        .iter()
        .map(|i| {
            feed.iter()
                .find(|(n, _)| *n == i.name)
                .unwrap_or_else(|| panic!("no input {}", i.name))
                .1
                .clone()
        })
        .collect();
    let out = runner.run(0, &sample).unwrap();
    runner.outputs().iter().cloned().zip(out).collect()
}

fn output<'a>(outs: &'a [(String, Array)], name: &str) -> &'a Array {
    &outs
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no output {name}"))
        .1
}

fn scalar(outs: &[(String, Array)], name: &str) -> f64 {
    let a = output(outs, name);
    assert!(a.shape.is_empty(), "{name} is {:?}, not a scalar", a.shape);
    floats(a)[0] as f64
}

fn log_softmax(row: &[f64]) -> Vec<f64> {
    let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let lse = m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
    row.iter().map(|v| v - lse).collect()
}

/// The formula, in f64, for rank-2 logits: (kd, ce).
fn reference(s: &[f32], t: &[f32], classes: usize, temp: f64, labels: &[i64]) -> (f64, f64) {
    let rows = s.len() / classes;
    let (mut kd, mut ce) = (0.0, 0.0);
    for r in 0..rows {
        let sr: Vec<f64> = s[r * classes..(r + 1) * classes]
            .iter()
            .map(|&v| v as f64)
            .collect();
        let tr: Vec<f64> = t[r * classes..(r + 1) * classes]
            .iter()
            .map(|&v| v as f64)
            .collect();
        let ls = log_softmax(&sr.iter().map(|v| v / temp).collect::<Vec<_>>());
        let lt = log_softmax(&tr.iter().map(|v| v / temp).collect::<Vec<_>>());
        kd += lt
            .iter()
            .zip(&ls)
            .map(|(a, b)| a.exp() * (a - b))
            .sum::<f64>();
        if let Some(&l) = labels.get(r) {
            ce -= log_softmax(&sr)[l as usize];
        }
    }
    (temp * temp * kd / rows as f64, ce / rows as f64)
}

fn assert_close(got: f64, want: f64, what: &str) {
    let rel = (got - want).abs() / want.abs().max(1e-30);
    assert!(
        rel <= 1e-5,
        "{what}: {got} vs {want} (relative error {rel:.2e})"
    );
}

/// Separate runs of teacher and student on the batch: (student logits, teacher logits).
fn separate_runs() -> (Array, Array) {
    let x = batch();
    let s = run(&student(), &std::env::temp_dir(), &[("x", x.clone())]);
    let teacher = whittle::onnx::load(&common::fixture("resnet_tiny.onnx")).unwrap();
    let t = run(&teacher, &common::fixture(""), &[("x", x)]);
    (output(&s, "logits").clone(), output(&t, "logits").clone())
}

#[test]
fn loss_outputs_match_the_formula_for_several_temperatures_and_alphas() {
    let (s, t) = separate_runs();
    let (sv, tv) = (floats(&s), floats(&t));
    let cases: &[(f64, Option<f64>, Option<DataType>)] = &[
        (1.0, None, None),
        (4.0, Some(1.0), None),
        (2.0, Some(0.5), Some(DataType::Int64)),
        (3.0, Some(0.25), Some(DataType::Int32)),
    ];
    for &(temp, alpha, label_type) in cases {
        let mut opts = format!("teacher: fixtures/resnet_tiny.onnx, temperature: {temp}");
        if let Some(a) = alpha {
            opts += &format!(", alpha: {a}");
        }
        if let Some(dt) = label_type {
            let name = if dt == DataType::Int32 {
                "int32"
            } else {
                "int64"
            };
            opts += &format!(", labels: {{ name: labels, dtype: {name} }}");
        }
        let pipeline = format!("version: 1\npasses:\n  - distill-head: {{ {opts} }}\n");
        let (model, runs) = graft(&pipeline, &student_path(), None).unwrap();
        let report = &runs[0].report;
        assert!(
            report.counters["teacher_nodes"] > 20,
            "{:?}",
            report.counters
        );
        let names: Vec<&str> = model.graph.outputs.iter().map(|o| o.name()).collect();
        let mut feed = vec![("x", batch())];
        if let Some(dt) = label_type {
            assert_eq!(names, ["loss", "kd_loss", "ce_loss", "logits"]);
            feed.push(("labels", labels(dt)));
        } else {
            assert_eq!(names, ["loss", "kd_loss", "logits"]);
        }
        // Saved and reloaded, as a user gets it.
        let path = tmp(&format!("grafted_t{temp}.onnx"));
        whittle::onnx::save(&model, &path, &Default::default()).unwrap();
        let model = whittle::onnx::load(&path).unwrap();
        let outs = run(&model, path.parent().unwrap(), &feed);
        let ls: &[i64] = if label_type.is_some() { &LABELS } else { &[] };
        let (kd, ce) = reference(&sv, &tv, 10, temp, ls);
        let a = alpha.unwrap_or(if label_type.is_some() { 0.5 } else { 1.0 });
        let what = format!("T={temp} alpha={a}");
        assert_close(scalar(&outs, "kd_loss"), kd, &format!("{what} kd_loss"));
        if label_type.is_some() {
            assert_close(scalar(&outs, "ce_loss"), ce, &format!("{what} ce_loss"));
            assert_close(
                scalar(&outs, "loss"),
                a * kd + (1.0 - a) * ce,
                &format!("{what} loss"),
            );
        } else {
            assert_close(scalar(&outs, "loss"), kd, &format!("{what} loss"));
        }
        // Must-show 2: the student's outputs are bit-identical.
        assert_eq!(
            output(&outs, "logits").data,
            s.data,
            "{what}: student logits changed"
        );
    }
}

#[test]
fn parameters_are_listed_in_metadata_and_report() {
    let pipeline = "version: 1\npasses:\n  - distill-head: { teacher: fixtures/resnet_tiny.onnx, trainable: { exclude: [{ regex: '^fc1' }] } }\n";
    let (model, runs) = graft(pipeline, &student_path(), None).unwrap();
    let meta = |k: &str| -> Vec<String> {
        let v = model
            .metadata_props
            .iter()
            .find(|kv| kv.key() == k)
            .unwrap();
        serde_json::from_str(v.value()).unwrap()
    };
    let (rg, frozen) = (meta("whittle.requires_grad"), meta("whittle.frozen_params"));
    assert_eq!(rg, ["fc2.weight", "fc2.bias"]);
    assert!(frozen.contains(&"fc1.weight".to_string()) && frozen.contains(&"fc1.bias".to_string()));
    assert!(
        frozen.iter().filter(|n| n.starts_with("teacher/")).count() >= 10,
        "{frozen:?}"
    );
    // BatchNormalization statistics of the teacher are frozen, never trainable.
    assert!(!rg.iter().any(|n| n.starts_with("teacher/")));
    let details = serde_json::to_value(&runs[0].report.details).unwrap();
    let lists = details
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d.get("requires_grad").is_some())
        .unwrap();
    assert_eq!(lists["requires_grad"], serde_json::json!(rg));
    assert_eq!(lists["frozen_params"], serde_json::json!(frozen));
    // Every teacher name is prefixed; teacher weights share the teacher file's bytes.
    for (_, n) in model.graph.nodes() {
        assert!(
            n.name().starts_with("teacher/")
                || n.name().starts_with("distill/")
                || ["gap", "flatten", "fc1", "relu", "fc2"].contains(&n.name()),
            "{}",
            n.label()
        );
    }
}

/// Must-show 3: onnxruntime runs the grafted graph and agrees with tract on
/// every output (tests/python/ort_check.py, tolerance 1e-3 relative).
#[test]
fn onnxruntime_agrees_with_tract_on_every_loss_output() {
    let pipeline = "version: 1\npasses:\n  - distill-head: { teacher: fixtures/resnet_tiny.onnx, temperature: 2, alpha: 0.7, labels: { name: labels } }\n";
    let (model, _) = graft(pipeline, &student_path(), None).unwrap();
    let path = tmp("grafted_ort.onnx");
    whittle::onnx::save(&model, &path, &Default::default()).unwrap();
    let outs = run(
        &model,
        path.parent().unwrap(),
        &[("x", batch()), ("labels", labels(DataType::Int64))],
    );
    // One sample holding the whole batch (first axis = samples).
    let sample = |a: &Array| {
        let mut shape = vec![1];
        shape.extend(&a.shape);
        Array::new(a.dtype, shape, a.data.clone()).unwrap()
    };
    let data = tmp("grafted_ort.data.npz");
    let reference = tmp("grafted_ort.ref.npz");
    common::write_npz(
        &data,
        &[
            ("x".into(), sample(&batch())),
            ("labels".into(), sample(&labels(DataType::Int64))),
        ],
    );
    common::write_npz(
        &reference,
        &outs
            .iter()
            .map(|(n, a)| (n.clone(), sample(a)))
            .collect::<Vec<_>>(),
    );
    let list = tmp("grafted_ort.list");
    std::fs::write(
        &list,
        format!(
            "{}\t{}\t{}\n",
            path.display(),
            data.display(),
            reference.display()
        ),
    )
    .unwrap();
    let out = common::run_python("ort_check.py", &[&list]);
    let (stdout, stderr) = common::text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("ort: 1 passed, 0 failed"), "{stdout}");
}

/// PyTorch's KLDivLoss(reduction="batchmean")·T² + CrossEntropyLoss on the
/// same logits, with torch from the export venv; skipped (and said so) when
/// that venv is absent.
#[test]
fn the_formula_matches_pytorch() {
    let python = common::root().join(".venv-export/bin/python");
    if !python.exists() {
        eprintln!("SKIPPED: no .venv-export (torch); the PyTorch cross-check did not run");
        return;
    }
    let (s, t) = separate_runs();
    let path = tmp("torch_logits.npz");
    common::write_npz(
        &path,
        &[
            ("s".into(), s.clone()),
            ("t".into(), t.clone()),
            ("labels".into(), labels(DataType::Int64)),
        ],
    );
    for (temp, alpha) in [(1.0, 0.5), (4.0, 0.9)] {
        let out = std::process::Command::new(&python)
            .arg(common::root().join("tests/python/distill_torch_check.py"))
            .arg(&path)
            .arg(temp.to_string())
            .arg(alpha.to_string())
            .output()
            .unwrap();
        let (stdout, stderr) = common::text(&out);
        assert!(out.status.success(), "{stdout}{stderr}");
        let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        let (kd, ce) = reference(&floats(&s), &floats(&t), 10, temp, &LABELS);
        assert_close(v["kd"].as_f64().unwrap(), kd, "torch kd");
        assert_close(v["ce"].as_f64().unwrap(), ce, "torch ce");
        assert_close(
            v["loss"].as_f64().unwrap(),
            alpha * kd + (1.0 - alpha) * ce,
            "torch loss",
        );
    }
}

/// Must-show 4: `teacher: input` after another pass of the same pipeline
/// (fold-batchnorm; after `prune`: see the trained-pair test), soft-target
/// inputs, and a feature term with a least-squares projection.
#[test]
fn teacher_input_after_fold_batchnorm() {
    let pipeline = "version: 1\npasses:\n  - fold-batchnorm\n  - distill-head: { teacher: input, temperature: 2, labels: { name: labels } }\n";
    let fixture = common::fixture("resnet_tiny.onnx");
    let (model, runs) = graft(pipeline, &fixture, None).unwrap();
    assert_eq!(runs[0].report.counters["folded"], 8);
    // The teacher is the unfolded original: its BatchNormalizations are there.
    assert_eq!(
        model
            .graph
            .nodes()
            .filter(|(_, n)| n.op_type() == "BatchNormalization")
            .count(),
        8
    );
    let outs = run(
        &model,
        &common::fixture(""),
        &[("x", batch()), ("labels", labels(DataType::Int64))],
    );
    let original = whittle::onnx::load(&fixture).unwrap();
    let t = floats(output(
        &run(&original, &common::fixture(""), &[("x", batch())]),
        "logits",
    ));
    let mut folded = original.clone();
    let only_fold = Pipeline::parse(
        "version: 1\npasses: [fold-batchnorm]\n",
        Path::new("p.yaml"),
    )
    .unwrap();
    whittle::manager::run(&mut folded, &only_fold, &PassContext::default(), None).unwrap();
    let s_arr = output(
        &run(&folded, &common::fixture(""), &[("x", batch())]),
        "logits",
    )
    .clone();
    let (kd, ce) = reference(&floats(&s_arr), &t, 10, 2.0, &LABELS);
    // The student computes the teacher's function up to rounding: kd is ~0,
    // so it is checked absolutely; ce and loss relatively.
    assert!(
        (scalar(&outs, "kd_loss") - kd).abs() < 1e-6,
        "{} vs {kd}",
        scalar(&outs, "kd_loss")
    );
    assert_close(scalar(&outs, "ce_loss"), ce, "ce_loss");
    assert_close(scalar(&outs, "loss"), 0.5 * kd + 0.5 * ce, "loss");
    assert_eq!(output(&outs, "logits").data, s_arr.data);
}

#[test]
fn soft_targets_input_equals_the_embedded_teacher() {
    let (s, t) = separate_runs();
    let pipeline = "version: 1\npasses:\n  - distill-head: { teacher: fixtures/resnet_tiny.onnx, soft_targets: input, temperature: 3 }\n";
    let (model, runs) = graft(pipeline, &student_path(), None).unwrap();
    assert_eq!(runs[0].report.counters["teacher_nodes"], 0);
    assert!(model
        .graph
        .initializers()
        .iter()
        .all(|i| !i.name().starts_with("teacher/")));
    let outs = run(
        &model,
        &std::env::temp_dir(),
        &[("x", batch()), ("teacher/logits", t.clone())],
    );
    let (kd, _) = reference(&floats(&s), &floats(&t), 10, 3.0, &[]);
    assert_close(scalar(&outs, "kd_loss"), kd, "kd_loss");
    assert_close(scalar(&outs, "loss"), kd, "loss");
}

#[test]
fn feature_terms_with_a_least_squares_projection() {
    // The student's pooled input [N,3] against the teacher's pooled features
    // [N,32] (the input of its classifier Gemm).
    let teacher = whittle::onnx::load(&common::fixture("resnet_tiny.onnx")).unwrap();
    let gemm = teacher
        .graph
        .nodes()
        .find(|(_, n)| n.op_type() == "Gemm")
        .unwrap()
        .1
        .clone();
    let feat = gemm.inputs[0].clone();
    let pipeline = format!(
        "version: 1\npasses:\n  - distill-head: {{ teacher: fixtures/resnet_tiny.onnx, features: [{{ student: pooled, teacher: {feat:?}, loss: mse, weight: 0.5, projection: linear }}, {{ student: pooled, teacher: {feat:?}, loss: cosine, projection: linear }}] }}\n"
    );
    let data = common::fixture("resnet_tiny.data.npz");
    let (model, runs) = graft(&pipeline, &student_path(), Some(&data)).unwrap();
    assert_eq!(runs[0].report.counters["feature_terms"], 2);
    let outs = run(&model, &std::env::temp_dir(), &[("x", batch())]);
    // Separate runs of the features.
    let probe = |m: &Model, v: &str, dir: &Path| {
        let mut p = m.clone();
        p.graph.outputs = vec![ValueInfo {
            name: Some(v.into()),
            ..Default::default()
        }];
        floats(&run(&p, dir, &[("x", batch())])[0].1)
    };
    let x = probe(&student(), "pooled", &std::env::temp_dir());
    let y = probe(&teacher, &feat, &common::fixture(""));
    let w = model
        .graph
        .initializer("distill/feature0/projection_weight")
        .unwrap()
        .to_f32()
        .unwrap();
    let b = model
        .graph
        .initializer("distill/feature0/projection_bias")
        .unwrap()
        .to_f32()
        .unwrap();
    let proj: Vec<f64> = (0..BATCH * 32)
        .map(|i| {
            let (r, c) = (i / 32, i % 32);
            b[c] as f64
                + (0..3)
                    .map(|k| x[r * 3 + k] as f64 * w[k * 32 + c] as f64)
                    .sum::<f64>()
        })
        .collect();
    let mse = proj
        .iter()
        .zip(&y)
        .map(|(p, &t)| (p - t as f64).powi(2))
        .sum::<f64>()
        / proj.len() as f64;
    // Four rows and four unknowns per column: the fit is exact and the mse is
    // ~1e-7, so it is compared with the scale of the teacher features.
    let scale = y.iter().map(|&t| (t as f64).powi(2)).sum::<f64>() / y.len() as f64;
    let got = scalar(&outs, "feature_loss_0");
    assert!(
        (got - mse).abs() <= 1e-5 * scale,
        "mse: {got} vs {mse} (features' mean square {scale})"
    );
    let mut cos = 0.0;
    for r in 0..BATCH {
        let (p, t) = (&proj[r * 32..(r + 1) * 32], &y[r * 32..(r + 1) * 32]);
        let dot: f64 = p.iter().zip(t).map(|(a, &b)| a * b as f64).sum();
        let np: f64 = p.iter().map(|a| a * a).sum::<f64>().sqrt();
        let nt: f64 = t.iter().map(|&a| (a as f64).powi(2)).sum::<f64>().sqrt();
        cos += dot / (np * nt);
    }
    // The exact fit makes the cosines ~1: the term (in [0, 2]) is compared absolutely.
    let cosine = scalar(&outs, "feature_loss_1");
    let want = 1.0 - cos / BATCH as f64;
    assert!((cosine - want).abs() < 1e-6, "cosine: {cosine} vs {want}");
    let kd = scalar(&outs, "kd_loss");
    assert_close(
        scalar(&outs, "loss"),
        kd + 0.5 * got + (1.0 - cos / BATCH as f64),
        "loss",
    );
    // Least squares: the residual is orthogonal to the design [X 1] (normal equations).
    for c in 0..32 {
        let res: Vec<f64> = (0..BATCH)
            .map(|r| proj[r * 32 + c] - y[r * 32 + c] as f64)
            .collect();
        let scale: f64 = (0..BATCH)
            .map(|r| (y[r * 32 + c] as f64).abs())
            .sum::<f64>()
            + 1.0;
        let g1: f64 = res.iter().sum();
        assert!(g1.abs() / scale < 1e-3, "column {c}: Σ residual {g1}");
    }
    let meta = model
        .metadata_props
        .iter()
        .find(|kv| kv.key() == "whittle.requires_grad")
        .unwrap();
    assert!(
        meta.value().contains("distill/feature0/projection_weight"),
        "{}",
        meta.value()
    );

    // Without data the projection could only start as identity, but the
    // teacher declares no width for this intermediate: an error that says so.
    let err = graft(&pipeline, &student_path(), None).unwrap_err();
    assert!(
        err.contains("features[0]") && err.contains("not declared") && err.contains("--data"),
        "{err}"
    );
}

/// Saves a modified student as `file` and grafts resnet_tiny onto it: the error.
fn graft_student(s: &Model, file: &str) -> String {
    let p = tmp(file);
    whittle::onnx::save(s, &p, &Default::default()).unwrap();
    let pipeline =
        "version: 1\npasses:\n  - distill-head: { teacher: fixtures/resnet_tiny.onnx }\n";
    graft(pipeline, &p, None).unwrap_err()
}

/// Must-show 6: each error is clear.
#[test]
fn errors_are_clear() {
    let cases: &[(&str, &[&str])] = &[
        (
            "teacher: fixtures/no_such_teacher.onnx",
            &["no_such_teacher.onnx", "does not exist"],
        ),
        (
            "teacher: fixtures/resnet_tiny.onnx, inputs: { x: image }",
            &["no student input \"image\""],
        ),
        (
            "teacher: fixtures/resnet_tiny.onnx, labels: { name: labels, dtype: float32 }",
            &["labels.dtype", "not an integer type"],
        ),
        (
            "teacher: fixtures/resnet_tiny.onnx, alpha: 0.5",
            &["alpha", "needs labels"],
        ),
        (
            "teacher: fixtures/resnet_tiny.onnx, teacher_prefix: ''",
            &["teacher_prefix"],
        ),
    ];
    for (opts, wanted) in cases {
        let pipeline = format!("version: 1\npasses:\n  - distill-head: {{ {opts} }}\n");
        let err = graft(&pipeline, &student_path(), None).unwrap_err();
        for w in *wanted {
            assert!(err.contains(w), "{opts}: {err}");
        }
    }
    // No output pair with matching shapes: a student whose logits have 5 classes.
    let mut s = student();
    s.graph.outputs[0].ty = Some(TypeInfo::tensor(
        DataType::Float,
        vec![Dim::symbol("N"), Dim::known(5)],
    ));
    let err = graft_student(&s, "student5.onnx");
    assert!(
        err.contains("no student output pairs") && err.contains("pairs:"),
        "{err}"
    );
    // A name clash after prefixing.
    let mut s = student();
    let relu = s.graph.node_ids()[3];
    s.graph
        .update_node(relu, |n| n.outputs[0] = "teacher/stem.0.weight".into());
    let fc2 = s.graph.node_ids()[4];
    s.graph.set_input(fc2, 0, "teacher/stem.0.weight");
    let err = graft_student(&s, "student_clash.onnx");
    assert!(
        err.contains("name clash after prefixing") && err.contains("teacher/stem.0.weight"),
        "{err}"
    );
}

/// The first `n` calibration inputs of the trained digits fixtures
/// (x [n,1,8,8]) and their labels [n].
fn digits_batch(n: usize) -> (Array, Array, Vec<i64>) {
    let dir = common::root().join("fixtures/trained");
    let find = |file: &str, key: &str| {
        let arrays = whittle::data::read_npz(&dir.join(file)).unwrap();
        arrays.into_iter().find(|(k, _)| k == key).unwrap().1
    };
    let x = find("digits_student.calib.npz", "x");
    let x = Array::new(
        DataType::Float,
        vec![n, 1, 8, 8],
        x.data[..n * 64 * 4].to_vec(),
    )
    .unwrap();
    let y = find("digits_student.labels.npz", "calib_labels");
    let y = Array::new(DataType::Int64, vec![n], y.data[..n * 8].to_vec()).unwrap();
    let values = y
        .data
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    (x, y, values)
}

/// Must-shows 1 and 4 on the trained pair (scikit-learn digits, with labels):
/// student `digits_student` (19.7k parameters) grafted with teacher
/// `digits_cnn` (151k), and `teacher: input` after channel pruning in the
/// same pipeline; the losses equal the formula on separate runs.
#[test]
fn trained_digits_pair_and_teacher_input_after_prune() {
    let dir = common::root().join("fixtures/trained");
    let (x, y, label_values) = digits_batch(8);
    let logits = |m: &Model| floats(output(&run(m, &dir, &[("x", x.clone())]), "logits"));
    let student = dir.join("digits_student.onnx");
    let cnn = dir.join("digits_cnn.onnx");
    let pipeline = "version: 1\npasses:\n  - distill-head: { teacher: fixtures/trained/digits_cnn.onnx, temperature: 3, alpha: 0.5, labels: { name: labels } }\n";
    let (model, _) = graft(pipeline, &student, None).unwrap();
    let outs = run(&model, &dir, &[("x", x.clone()), ("labels", y.clone())]);
    let s = logits(&whittle::onnx::load(&student).unwrap());
    let t = logits(&whittle::onnx::load(&cnn).unwrap());
    let (kd, ce) = reference(&s, &t, 10, 3.0, &label_values);
    assert_close(scalar(&outs, "kd_loss"), kd, "kd_loss");
    assert_close(scalar(&outs, "ce_loss"), ce, "ce_loss");
    assert_close(scalar(&outs, "loss"), 0.5 * kd + 0.5 * ce, "loss");
    assert_eq!(floats(output(&outs, "logits")), s);

    // `teacher: input` after `prune`: the teacher is digits_cnn as it entered.
    let prune = "version: 1\npasses:\n  - prune: { target: { macs: 0.5 } }\n";
    let pipeline = format!("{prune}  - distill-head: {{ teacher: input, temperature: 2 }}\n");
    let (model, runs) = graft(&pipeline, &cnn, None).unwrap();
    let c = &runs[0].report.counters;
    assert!(c["macs_after"] * 10 <= c["macs_before"] * 6, "{c:?}");
    let outs = run(&model, &dir, &[("x", x.clone())]);
    let (pruned, _) = graft(prune, &cnn, None).unwrap();
    let s = logits(&pruned);
    let (kd, _) = reference(&s, &t, 10, 2.0, &[]);
    assert_close(scalar(&outs, "kd_loss"), kd, "kd_loss after prune");
    assert_close(scalar(&outs, "loss"), kd, "loss after prune");
    assert_eq!(
        floats(output(&outs, "logits")),
        s,
        "the pruned student's own logits"
    );
}
