//! `low-rank` end to end on the weights of known rank in `fixtures/low_rank/`
//! (made by `fixtures/make_fixtures.py`, `low_rank()`): ranks chosen and
//! honoured, exact splits at the weight's true rank, data-aware whitening,
//! the global targets, determinism across threads, and onnxruntime running
//! the results (integer kernels when `quantize` follows).

mod common;

use std::path::{Path, PathBuf};

use whittle::exec::validate::{validate, Subject, ValidateOptions};
use whittle::ir::{map_file, Model};
use whittle::manager::PassRun;
use whittle::onnx::{self, SaveOptions};
use whittle::pipeline::Pipeline;

struct Run {
    original: Model,
    model: Model,
    runs: Vec<PassRun>,
    path: PathBuf,
}

/// Runs `passes` (YAML list items) on `fixtures/low_rank/<name>.onnx`, with
/// the fixture's data when `data`.
fn run(name: &str, passes: &str, data: bool, threads: Option<usize>) -> Run {
    let path = common::fixture(&format!("low_rank/{name}.onnx"));
    let original = onnx::load(&path).unwrap();
    let text = format!("version: 1\npasses:\n{passes}\n");
    let pipeline = Pipeline::parse(&text, &path).unwrap_or_else(|e| panic!("{e}"));
    let mut model = original.clone();
    let ctx = whittle::passes::PassContext {
        data: data.then(|| data_of(name)),
        model_dir: path.parent().map(Path::to_path_buf),
        threads,
        ..Default::default()
    };
    let runs =
        whittle::manager::run(&mut model, &pipeline, &ctx, None).unwrap_or_else(|e| panic!("{e}"));
    Run {
        original,
        model,
        runs,
        path,
    }
}

fn data_of(name: &str) -> PathBuf {
    common::fixture(&format!("low_rank/{name}.data.npz"))
}

/// The worst output SQNR of the rewrite against the original, in tract, on
/// the fixture's data.
fn sqnr(r: &Run, name: &str) -> f64 {
    let bytes = map_file(&r.path).unwrap();
    let dir = r.path.parent().unwrap();
    let report = validate(
        Subject {
            label: "original",
            model: &r.original,
            bytes: Some(&bytes),
            dir: Some(dir),
        },
        Subject {
            label: "rewritten",
            model: &r.model,
            bytes: None,
            dir: Some(dir),
        },
        &ValidateOptions {
            data: Some(data_of(name)),
            ..Default::default()
        },
    )
    .unwrap();
    report
        .outputs
        .iter()
        .map(|o| o.sqnr_db)
        .fold(f64::INFINITY, f64::min)
}

fn details(r: &Run) -> Vec<serde_json::Value> {
    r.runs
        .iter()
        .filter(|p| p.name == "low-rank")
        .flat_map(|p| p.report.details.clone())
        .collect()
}

fn detail(r: &Run, node: &str) -> serde_json::Value {
    details(r)
        .into_iter()
        .find(|d| {
            d["node"]
                .as_str()
                .is_some_and(|n| n.ends_with(&format!("{node:?}")))
        })
        .unwrap_or_else(|| panic!("no detail for {node}: {:#?}", details(r)))
}

fn counter(r: &Run, name: &str) -> i64 {
    r.runs
        .iter()
        .filter(|p| p.name == "low-rank")
        .filter_map(|p| p.report.counters.get(name))
        .sum()
}

fn dims(m: &Model, name: &str) -> Vec<i64> {
    m.graph
        .initializer(name)
        .unwrap_or_else(|| panic!("{name}"))
        .dims
        .clone()
}

#[test]
fn energy_finds_the_exact_rank_8_and_keeps_60_db() {
    let r = run(
        "dense",
        "  - low-rank: { energy: 0.9999, data_aware: false }",
        false,
        None,
    );
    let d = detail(&r, "fc1");
    assert_eq!(d["split"], true, "{d}");
    assert_eq!(d["rank"], 8, "{d}");
    assert!(d["energy_kept"].as_f64().unwrap() >= 0.9999);
    assert_eq!(dims(&r.model, "fc1.weight.lr_a"), vec![64, 8]);
    assert_eq!(dims(&r.model, "fc1.weight.lr_b"), vec![8, 96]);
    assert!(
        r.model.graph.initializer("fc1.weight").is_none(),
        "old weight removed"
    );
    // fc2 is full rank: energy 0.9999 needs a rank that saves nothing.
    let d2 = detail(&r, "fc2");
    assert_eq!(d2["split"], false, "{d2}");
    assert!(
        d2["reason"].as_str().unwrap().contains("would not save"),
        "{d2}"
    );
    let db = sqnr(&r, "dense");
    assert!(db >= 60.0, "{db} dB");
}

#[test]
fn explicit_ranks_overrides_and_round_to_are_honoured() {
    let r = run(
        "dense",
        "  - low-rank: { rank: 5, data_aware: false, overrides: { fc2: { rank: 11 } } }",
        false,
        None,
    );
    assert_eq!(detail(&r, "fc1")["rank"], 5);
    assert_eq!(detail(&r, "fc2")["rank"], 11);
    assert_eq!(dims(&r.model, "fc1.weight.lr_a"), vec![64, 5]);
    assert_eq!(dims(&r.model, "fc2.weight.lr_a"), vec![96, 11]);
    assert_eq!(dims(&r.model, "fc2.weight.lr_b"), vec![11, 40]);
    assert_eq!(counter(&r, "layers_split"), 2);
    // Gemm: alpha on the first factor, C and beta on the second.
    let fc2 = r
        .model
        .graph
        .nodes()
        .find(|(_, n)| n.name() == "fc2")
        .unwrap()
        .1;
    // β = 0.5 folded into C (onnxruntime's integer Gemm needs β = 1).
    assert_eq!(fc2.attr_float("beta"), None);
    assert_eq!(fc2.inputs[2], "fc2.bias.lr_beta");
    assert_eq!(fc2.attr_float("alpha"), None);
    assert_eq!(fc2.inputs.len(), 3);
    let first = r
        .model
        .graph
        .nodes()
        .find(|(_, n)| n.name() == "fc2.lr_a")
        .unwrap()
        .1;
    assert_eq!(first.attr_float("alpha"), Some(0.7));
    assert_eq!(first.inputs.len(), 2);
    // Rank 8 on the rank-8 layer, rank 11 of 40 on the Gemm: a real loss, not a wreck.
    let r = run(
        "dense",
        "  - low-rank: { rank: 5, round_to: 8, data_aware: false }",
        false,
        None,
    );
    assert_eq!(detail(&r, "fc1")["rank"], 8);
    assert_eq!(detail(&r, "fc2")["rank"], 8);
    // A rank beyond break-even (64·96/160 = 38.4) is refused with the reason.
    let r = run(
        "dense",
        "  - low-rank: { rank: 39, data_aware: false }",
        false,
        None,
    );
    assert_eq!(counter(&r, "layers_split"), 0);
    assert!(detail(&r, "fc1")["reason"]
        .as_str()
        .unwrap()
        .contains("break-even"));
}

#[test]
fn conv_channel_and_spatial_splits_are_exact_at_the_weights_rank() {
    // conv1 has channel rank 4 (strides [2,1], pads [1,2,1,0], dilations [1,2], bias).
    let r = run(
        "conv",
        "  - low-rank: { rank: 4, mode: channel, include_nodes: [conv1], data_aware: false }",
        false,
        None,
    );
    assert_eq!(detail(&r, "conv1")["kind"], "conv-channel");
    assert_eq!(dims(&r.model, "conv1.weight.lr_a"), vec![4, 8, 3, 3]);
    assert_eq!(dims(&r.model, "conv1.weight.lr_b"), vec![16, 4, 1, 1]);
    let db = sqnr(&r, "conv");
    assert!(db >= 80.0, "channel split: {db} dB");
    // conv2 has spatial rank 4.
    let r = run(
        "conv",
        "  - low-rank: { rank: 4, mode: spatial, include_nodes: [conv2], data_aware: false }",
        false,
        None,
    );
    assert_eq!(detail(&r, "conv2")["kind"], "conv-spatial");
    assert_eq!(dims(&r.model, "conv2.weight.lr_a"), vec![4, 16, 3, 1]);
    assert_eq!(dims(&r.model, "conv2.weight.lr_b"), vec![16, 4, 1, 3]);
    let db = sqnr(&r, "conv");
    assert!(db >= 80.0, "spatial split: {db} dB");
    // Spatial on conv1 too: strides, pads and dilations of each axis carried.
    // conv1's weight is not of spatial rank 4, but at rank 8 (of 24) the
    // split must still track the original closely if the attributes are right.
    let r = run(
        "conv",
        "  - low-rank: { mode: spatial, overrides: { conv1: { rank: 24 } }, include_nodes: [conv1], data_aware: false }",
        false,
        None,
    );
    // 24 = min(C·kh, kw·O) is full rank but saves nothing: kept.
    assert_eq!(detail(&r, "conv1")["split"], false);
}

#[test]
fn spatial_split_carries_strides_pads_and_dilations_of_both_axes() {
    // conv1 at a saving rank under the spatial split: the output must be close
    // (the dropped σ² are small against the kept) and have the original shape.
    let r = run(
        "conv",
        "  - low-rank: { energy: 0.999, mode: spatial, include_nodes: [conv1], data_aware: false }",
        false,
        None,
    );
    let d = detail(&r, "conv1");
    if d["split"] == true {
        let predicted = d["predicted_sqnr_db"].as_f64().unwrap();
        let db = sqnr(&r, "conv");
        assert!(
            db > 20.0 && predicted > 20.0,
            "{db} dB, predicted {predicted}"
        );
    }
}

#[test]
fn data_aware_whitening_beats_plain_svd_and_reports_damping() {
    // fc2 reads Relu(fc1(x)) (fc1 has rank 8): strongly correlated inputs.
    let plain = run(
        "dense",
        "  - low-rank: { rank: 9, include_nodes: [fc2], data_aware: false }",
        true,
        None,
    );
    let aware = run(
        "dense",
        "  - low-rank: { rank: 9, include_nodes: [fc2] }",
        true,
        None,
    );
    let d = detail(&aware, "fc2");
    assert_eq!(d["whitened"], true, "{d}");
    assert!(d["damping"].as_f64().unwrap() >= 1e-6);
    let calib = d["calib_sqnr_db"].as_f64().unwrap();
    let predicted = d["predicted_sqnr_db"].as_f64().unwrap();
    let (p, a) = (sqnr(&plain, "dense"), sqnr(&aware, "dense"));
    assert!(a > p + 5.0, "data-aware {a} dB vs plain {p} dB");
    // fc2 is the output layer: the model's SQNR is the layer's (less its
    // bias), as computed from the calibration moments of the same data; the
    // prediction from the dropped σ² is close (it sees the damped moments).
    assert!(
        (calib - a).abs() < 3.0,
        "from the moments {calib} vs tract {a}"
    );
    assert!(
        (predicted - calib).abs() < 3.0,
        "predicted {predicted} vs from the moments {calib}"
    );
    // fc1 sees anisotropic x (columns scaled 0.01 … 10): also better whitened at rank 4.
    let plain = run(
        "dense",
        "  - low-rank: { rank: 4, include_nodes: [fc1], data_aware: false }",
        true,
        None,
    );
    let aware = run(
        "dense",
        "  - low-rank: { rank: 4, include_nodes: [fc1] }",
        true,
        None,
    );
    let (p, a) = (sqnr(&plain, "dense"), sqnr(&aware, "dense"));
    assert!(a > p, "fc1: data-aware {a} dB vs plain {p} dB");
}

#[test]
fn data_aware_runs_are_identical_on_1_and_2_threads() {
    let pass = "  - low-rank: { target: { params: 0.3 } }";
    let bytes = |threads| {
        let r = run("dense", pass, true, Some(threads));
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("m.onnx");
        onnx::save(&r.model, &out, &SaveOptions::default()).unwrap();
        (std::fs::read(&out).unwrap(), details(&r))
    };
    assert_eq!(bytes(1), bytes(2));
}

#[test]
fn global_params_target_is_reached_and_an_unreachable_one_says_how_close() {
    let r = run(
        "dense",
        "  - low-rank: { target: { params: 0.3 } }",
        true,
        None,
    );
    let (before, after) = (counter(&r, "params_before"), counter(&r, "params_after"));
    assert_eq!(before, 64 * 96 + 96 * 40);
    assert!(after as f64 <= 0.3 * before as f64, "{after} of {before}");
    let summary = r.runs[0].report.summary.join("\n");
    assert!(
        summary.contains("target params 30.0%: reached"),
        "{summary}"
    );
    // 0.5% cannot be reached (rank 1 everywhere keeps 160 + 136 weights).
    let r = run(
        "dense",
        "  - low-rank: { target: { params: 0.005 } }",
        true,
        None,
    );
    let w = r.runs[0].report.warnings.join("\n");
    assert!(w.contains("not reached"), "{w}");
    assert_eq!(counter(&r, "params_after"), 160 + 136);
    // MACs: the shapes are known (symbolic batch = 1).
    let r = run(
        "dense",
        "  - low-rank: { target: { macs: 0.3 } }",
        true,
        None,
    );
    assert!(counter(&r, "params_after") as f64 <= 0.3 * before as f64 + 1.0);
}

/// By default the global target's allocation is chosen on the last quarter
/// of the calibration samples, whitened by the moments of the others; the
/// budget still holds, and `holdout: 0` scores on the first samples.
#[test]
fn the_default_holdout_scores_the_allocation_on_samples_the_moments_did_not_see() {
    let r = run(
        "dense",
        "  - low-rank: { target: { params: 0.3 } }",
        true,
        None,
    );
    let samples = 64; // fixtures/low_rank/dense.data.npz, all of them (`samples` defaults to 64)
    let held = counter(&r, "samples_held_out");
    assert_eq!(held, (samples as f64 * 0.25).round() as i64, "{samples}");
    assert_eq!(
        counter(&r, "moments_samples_for_the_choice"),
        samples - held
    );
    let summary = r.runs[0].report.summary.join("\n");
    assert!(summary.contains("target.holdout"), "{summary}");
    let (before, after) = (counter(&r, "params_before"), counter(&r, "params_after"));
    assert!(after as f64 <= 0.3 * before as f64, "{after} of {before}");
    let none = run(
        "dense",
        "  - low-rank: { target: { params: 0.3, holdout: 0 } }",
        true,
        None,
    );
    assert!(
        !none.runs[0]
            .report
            .counters
            .contains_key("samples_held_out"),
        "{:?}",
        none.runs[0].report.counters
    );
}

#[test]
fn min_sqnr_target_is_checked_in_tract() {
    let r = run(
        "dense",
        "  - low-rank: { target: { min_sqnr_db: 30 } }",
        true,
        None,
    );
    let db = sqnr(&r, "dense");
    assert!(db >= 30.0, "{db} dB");
    assert!(counter(&r, "layers_split") >= 1);
    assert!(counter(&r, "params_after") < counter(&r, "params_before"));
}

#[test]
fn bad_options_name_their_field() {
    let path = common::fixture("low_rank/dense.onnx");
    for (opts, field) in [
        ("{ rank: 4, energy: 0.9 }", "at most one"),
        ("{ energy: 1.5 }", "energy"),
        ("{ ratio: 1.0 }", "ratio"),
        ("{ target: { params: 0.5, macs: 0.5 } }", "target"),
        ("{ ops: [Relu] }", "ops[0]"),
        (
            "{ target: { params: 0.5, holdout: 1.0 } }",
            "target.holdout",
        ),
        (
            "{ target: { min_sqnr_db: 30, holdout: 0.2 } }",
            "target.holdout",
        ),
        ("{ rnak: 4 }", "did you mean `rank`"),
        (
            "{ include_nodes: [{ regex: '(' }] }",
            "include_nodes[0].regex",
        ),
    ] {
        let text = format!("version: 1\npasses:\n  - low-rank: {opts}\n");
        let e = Pipeline::parse(&text, &path)
            .err()
            .unwrap_or_else(|| panic!("{opts} accepted"))
            .to_string();
        assert!(e.contains(field), "{opts}: {e}");
    }
}

/// onnxruntime runs the exact Conv splits and matches its own outputs of the
/// original (the dense fixture's dropped noise exceeds ort_check's float
/// tolerance); after `quantize`, both factors of both dense layers run as
/// integer kernels.
#[test]
fn onnxruntime_runs_the_splits_and_quantized_factors_use_integer_kernels() {
    let dir = tempfile::tempdir().unwrap();
    let save = |r: &Run, file: &str| {
        let out = dir.path().join(file);
        onnx::save(&r.model, &out, &SaveOptions::default()).unwrap();
        out
    };
    let mut list = String::new();
    for (i, (name, passes)) in [
        (
            "conv",
            "  - low-rank: { rank: 4, mode: channel, include_nodes: [conv1] }",
        ),
        (
            "conv",
            "  - low-rank: { rank: 4, mode: spatial, include_nodes: [conv2] }",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let r = run(name, passes, true, None);
        assert_eq!(counter(&r, "layers_split"), 1, "{passes}");
        let out = save(&r, &format!("{name}_{i}.onnx"));
        list.push_str(&format!(
            "{}\t{}\t{}\n",
            out.display(),
            data_of(name).display(),
            common::fixture(&format!("low_rank/{name}.ref.npz")).display()
        ));
    }
    let list_path = dir.path().join("split.txt");
    std::fs::write(&list_path, &list).unwrap();
    let out = common::run_python("ort_check.py", &[&list_path]);
    let (stdout, stderr) = common::text(&out);
    assert!(
        stdout.contains("ort: 2 passed, 0 failed"),
        "{stdout}\n{stderr}"
    );

    // low-rank then quantize: all four factor MatMul/Gemm nodes quantized.
    let r = run(
        "dense",
        "  - low-rank: { rank: 8 }\n  - quantize",
        true,
        None,
    );
    assert_eq!(counter(&r, "layers_split"), 2);
    let q = r.runs.iter().find(|p| p.name == "quantize").unwrap();
    let out = save(&r, "dense_q.onnx");
    for w in [
        "fc1.weight.lr_a",
        "fc1.weight.lr_b",
        "fc2.weight.lr_a",
        "fc2.weight.lr_b",
    ] {
        let (id, _) = r
            .model
            .graph
            .nodes()
            .find(|(_, n)| n.op_type() == "DequantizeLinear" && n.inputs[0].starts_with(w))
            .unwrap_or_else(|| panic!("{w} is not quantized: {:#?}", q.report.counters));
        let _ = id;
    }
    let list_path = dir.path().join("quant.txt");
    std::fs::write(
        &list_path,
        format!("{}\t{}\t-\n", out.display(), data_of("dense").display()),
    )
    .unwrap();
    let out = common::run_python(
        "ort_quant_check.py",
        &[
            &list_path,
            Path::new("--min-kernel-share"),
            Path::new("1.0"),
        ],
    );
    let (stdout, stderr) = common::text(&out);
    assert!(
        stdout.contains("ort-quant: 1 passed, 0 failed"),
        "{stdout}\n{stderr}"
    );
}
