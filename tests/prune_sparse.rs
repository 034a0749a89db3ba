//! `prune` with `granularity: unstructured` and `n:m`, end to end through the
//! CLI: the sparsity asked is the sparsity written (per layer and global),
//! the 2:4 pattern holds in every group of the saved weights, the zeros
//! survive a following `quantize`, one and two threads write the same bytes,
//! tract and onnxruntime run the results, and bad options or missing data
//! get clear errors.

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use whittle::ir::{DataType, Model};

use common::run_fixture as run;

fn pipeline(dir: &Path, name: &str, options: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("version: 1\npasses:\n  - prune:\n{options}\n")).unwrap();
    p
}

/// Every Conv/Gemm/MatMul constant float weight of a saved model, by node
/// name: (op, node, dims, values).
fn weights(path: &Path) -> Vec<(String, whittle::ir::Node, Vec<i64>, Vec<f32>)> {
    let m: Model = whittle::onnx::load(path).unwrap();
    let g = &m.graph;
    let mut out = Vec::new();
    for (_, n) in g.nodes() {
        if !matches!(n.op_type(), "Conv" | "Gemm" | "MatMul") {
            continue;
        }
        let Some(t) = n.inputs.get(1).and_then(|w| g.initializer(w)) else {
            continue;
        };
        if t.dtype() == DataType::Float {
            out.push((
                n.name().to_string(),
                n.clone(),
                t.dims.clone(),
                t.to_f32().unwrap(),
            ));
        }
    }
    out
}

fn zeros(v: &[f32]) -> usize {
    v.iter().filter(|&&x| x == 0.0).count()
}

/// For every N:M group along the reduction axis of `dims`: its non-zeros.
fn group_nonzeros(
    node: &whittle::ir::Node,
    dims: &[i64],
    v: &[f32],
    m: usize,
) -> Option<Vec<usize>> {
    let d: Vec<usize> = dims.iter().map(|&x| x as usize).collect();
    let mut out = Vec::new();
    match node.op_type() {
        "Conv" => {
            let (o, c, k) = (d[0], d[1], d[2..].iter().product::<usize>());
            if c % m != 0 {
                return None;
            }
            for oo in 0..o {
                for kk in 0..k {
                    for c0 in (0..c).step_by(m) {
                        let nz = (c0..c0 + m)
                            .filter(|&cc| v[(oo * c + cc) * k + kk] != 0.0)
                            .count();
                        out.push(nz);
                    }
                }
            }
        }
        op => {
            let t = op == "Gemm" && node.attr_int("transB") == Some(1);
            let (k, n) = if t { (d[1], d[0]) } else { (d[0], d[1]) };
            if k % m != 0 {
                return None;
            }
            for col in 0..n {
                for k0 in (0..k).step_by(m) {
                    let at = |kk: usize| if t { col * k + kk } else { kk * n + col };
                    out.push((k0..k0 + m).filter(|&kk| v[at(kk)] != 0.0).count());
                }
            }
        }
    }
    Some(out)
}

/// Must show 1: each layer gets exactly round(sparsity · params) zeros, for
/// every method.
#[test]
fn unstructured_sparsity_is_exact_per_layer_for_every_method() {
    let tmp = tempfile::tempdir().unwrap();
    for method in ["magnitude", "wanda", "sparsegpt"] {
        for (fixture, s) in [("resnet_tiny", 0.5), ("transformer_tiny", 0.3)] {
            let config = pipeline(
                tmp.path(),
                &format!("{method}.yaml"),
                &format!(
                    "      granularity: unstructured\n      method: {method}\n      sparsity: {s}"
                ),
            );
            let out = tmp.path().join(format!("{fixture}.{method}.onnx"));
            run(&config, fixture, &out, &[]);
            let pruned = weights(&out);
            assert!(pruned.len() >= 3, "{fixture}");
            for (name, _, _, v) in &pruned {
                let want = (s * v.len() as f64).round() as usize;
                assert_eq!(zeros(v), want, "{fixture} {method} {name}");
            }
        }
    }
}

/// Must show 1: scope: global zeros exactly round(sparsity · Σ params) over
/// all selected layers, spread unevenly.
#[test]
fn global_sparsity_is_exact_over_all_selected_layers() {
    let tmp = tempfile::tempdir().unwrap();
    for method in ["magnitude", "wanda", "sparsegpt"] {
        let config = pipeline(
            tmp.path(),
            "global.yaml",
            &format!(
                "      granularity: unstructured\n      method: {method}\n      sparsity: 0.6\n      scope: global"
            ),
        );
        let out = tmp.path().join(format!("resnet.{method}.onnx"));
        run(&config, "resnet_tiny", &out, &[]);
        let w = weights(&out);
        let total: usize = w.iter().map(|x| x.3.len()).sum();
        let z: usize = w.iter().map(|x| zeros(&x.3)).sum();
        assert_eq!(z, (0.6 * total as f64).round() as usize, "{method}");
        let shares: Vec<f64> = w
            .iter()
            .map(|x| zeros(&x.3) as f64 / x.3.len() as f64)
            .collect();
        let spread =
            shares.iter().cloned().fold(0.0, f64::max) - shares.iter().cloned().fold(1.0, f64::min);
        assert!(spread > 0.05, "{method}: layers all near 60%: {shares:?}");
    }
}

/// Must show 1: 2:4 holds in every group of every pruned weight (read back
/// from the saved model), for every method; weights whose reduction axis is
/// not a multiple of 4 are left as they were, and the run says so.
#[test]
fn two_four_holds_in_every_group() {
    let tmp = tempfile::tempdir().unwrap();
    for method in ["magnitude", "wanda", "sparsegpt"] {
        for fixture in ["resnet_tiny", "transformer_tiny", "conv_bn_relu"] {
            let config = pipeline(
                tmp.path(),
                "nm.yaml",
                &format!(
                    "      granularity: \"n:m\"\n      pattern: \"2:4\"\n      method: {method}"
                ),
            );
            let out = tmp.path().join(format!("{fixture}.{method}.nm.onnx"));
            let stderr = run(&config, fixture, &out, &[]);
            let original: BTreeMap<String, Vec<f32>> =
                weights(&common::fixture(&format!("{fixture}.onnx")))
                    .into_iter()
                    .map(|(n, _, _, v)| (n, v))
                    .collect();
            let mut groups = 0;
            for (name, node, dims, v) in weights(&out) {
                match group_nonzeros(&node, &dims, &v, 4) {
                    Some(nz) => {
                        assert!(
                            nz.iter().all(|&c| c <= 2),
                            "{fixture} {method} {name}: {nz:?}"
                        );
                        assert_eq!(zeros(&v), v.len() / 2, "{fixture} {method} {name}");
                        groups += nz.len();
                    }
                    None => {
                        assert_eq!(Some(&v), original.get(&name), "{fixture} {name} changed");
                        assert!(stderr.contains("not a multiple of 4"), "{stderr}");
                    }
                }
            }
            assert!(groups > 0, "{fixture}");
        }
    }
}

/// Must show 5: the same input and options give the same bytes on 1 and 2
/// threads.
#[test]
fn one_and_two_threads_write_the_same_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, options) in [
        (
            "global",
            "      granularity: unstructured\n      method: sparsegpt\n      scope: global",
        ),
        ("nm", "      granularity: \"n:m\"\n      method: wanda"),
    ] {
        let config = pipeline(tmp.path(), &format!("{name}.yaml"), options);
        let mut bytes = Vec::new();
        for threads in ["1", "2"] {
            let out = tmp.path().join(format!("{name}.{threads}.onnx"));
            run(&config, "resnet_tiny", &out, &["--threads", threads]);
            bytes.push(std::fs::read(&out).unwrap());
        }
        assert!(bytes[0] == bytes[1], "{name}: 1 and 2 threads differ");
    }
}

/// Must show 5: bad options fail with the YAML path and nothing is written;
/// the data methods without data say what is missing.
#[test]
fn bad_options_and_missing_data_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let input = common::fixture("resnet_tiny.onnx");
    let out = tmp.path().join("never.onnx");
    for (options, want) in [
        (
            "      ratio: 1.0",
            "passes[0].prune.ratio: must be in [0, 1), got 1",
        ),
        (
            "      granularity: \"n:m\"\n      pattern: \"5:4\"",
            "passes[0].prune.pattern: \"5:4\" is not \"N:M\" with 1 ≤ N < M ≤ 64",
        ),
        (
            "      granularity: unstructured\n      method: wandaa",
            "did you mean `wanda`?",
        ),
        (
            "      target: { macs: 0 }",
            "passes[0].prune.target.macs: must be in (0, 1]",
        ),
        (
            "      granularity: unstructured\n      ratio: 0.2",
            "passes[0].prune.ratio: `ratio` applies to granularity: channel",
        ),
        (
            "      granularity: unstructured\n      sparsity: 1.0",
            "passes[0].prune.sparsity: must be in [0, 1)",
        ),
    ] {
        let config = pipeline(tmp.path(), "bad.yaml", options);
        fails_without_output(&config, &input, &out, want);
    }
    let config = pipeline(
        tmp.path(),
        "sgpt.yaml",
        "      granularity: unstructured\n      method: sparsegpt",
    );
    let want = "method: sparsegpt needs calibration data: pass --data";
    fails_without_output(&config, &input, &out, want);
}

/// `whittle run CONFIG --input INPUT --output OUT` (no data) exits 1 with
/// `want` in its stderr and writes nothing.
fn fails_without_output(config: &Path, input: &Path, out: &Path, want: &str) {
    let o = common::whittle(&[
        "run",
        config.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    let (_, stderr) = common::text(&o);
    assert_eq!(o.status.code(), Some(1), "{}: {stderr}", config.display());
    assert!(stderr.contains(want), "{}: {stderr}", config.display());
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!out.exists());
}

/// The zeros survive a following `quantize`: symmetric int8 weights map 0.0
/// to level 0, read back from the int8 initializers.
#[test]
fn zeros_survive_a_following_quantize() {
    let tmp = tempfile::tempdir().unwrap();
    let prune_only = pipeline(
        tmp.path(),
        "p.yaml",
        "      granularity: \"n:m\"\n      method: sparsegpt",
    );
    let both = tmp.path().join("pq.yaml");
    std::fs::write(
        &both,
        "version: 1\npasses:\n  - prune:\n      granularity: \"n:m\"\n      method: sparsegpt\n  - quantize\n",
    )
    .unwrap();
    let (p, pq) = (tmp.path().join("p.onnx"), tmp.path().join("pq.onnx"));
    run(&prune_only, "resnet_tiny", &p, &[]);
    run(&both, "resnet_tiny", &pq, &[]);
    let float: BTreeMap<String, Vec<f32>> =
        weights(&p).into_iter().map(|(n, _, _, v)| (n, v)).collect();
    let m: Model = whittle::onnx::load(&pq).unwrap();
    let g = &m.graph;
    let mut checked = 0;
    for (_, n) in g.nodes() {
        let Some(w) = float.get(n.name()) else {
            continue;
        };
        if zeros(w) == 0 {
            continue;
        }
        let (dq, _) = g
            .producer(&n.inputs[1])
            .expect("weight behind a DequantizeLinear");
        let q = g.initializer(&g.node(dq).inputs[0]).expect("int8 weight");
        assert_eq!(q.dtype(), DataType::Int8, "{}", n.name());
        let levels = q.packed_bytes().unwrap();
        for (i, &v) in w.iter().enumerate() {
            if v == 0.0 {
                assert_eq!(levels[i] as i8, 0, "{} element {i}", n.name());
            }
        }
        checked += 1;
    }
    assert!(checked >= 5, "{checked} weights checked");
}

/// tract runs every pruned model, and onnxruntime runs it too and matches
/// tract's outputs on it.
#[test]
fn tract_and_onnxruntime_run_the_pruned_models() {
    let tmp = tempfile::tempdir().unwrap();
    let config = pipeline(
        tmp.path(),
        "p.yaml",
        "      granularity: unstructured\n      method: sparsegpt",
    );
    let nm = pipeline(
        tmp.path(),
        "nm.yaml",
        "      granularity: \"n:m\"\n      method: wanda",
    );
    let mut list = String::new();
    for fixture in ["resnet_tiny", "transformer_tiny", "mlp"] {
        for (tag, c) in [("u", &config), ("nm", &nm)] {
            let out = tmp.path().join(format!("{fixture}.{tag}.onnx"));
            run(c, fixture, &out, &[]);
            let data = common::fixture(&format!("{fixture}.data.npz"));
            let tract = common::tract_outputs(&out, &data);
            let _ = writeln!(
                list,
                "{}\t{}\t{}",
                out.display(),
                data.display(),
                tract.display()
            );
        }
    }
    let path = tmp.path().join("ort.txt");
    std::fs::write(&path, &list).unwrap();
    let o = common::run_python("ort_check.py", &[&path]);
    let (stdout, stderr) = common::text(&o);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("ort: 6 passed, 0 failed"),
        "{stdout}\n{stderr}"
    );
}

/// Bias correction (default with `--data`): on the trained digits CNN at 50%
/// magnitude, every pruned layer's bias takes the mean shift ΔW·E[x] (its
/// Convs have none: one is added), and the held-out output SQNR is higher
/// than with `bias_correction: false`; asked for without data it is an
/// error, and it is refused with granularity channel.
#[test]
fn bias_correction_takes_the_mean_shift_into_the_biases() {
    let tmp = tempfile::tempdir().unwrap();
    let trained = |f: &str| common::fixture(&format!("trained/{f}"));
    let (model, calib, test) = (
        trained("digits_cnn.onnx"),
        trained("digits_cnn.calib.npz"),
        trained("digits_cnn.test.npz"),
    );
    let mut sqnr = Vec::new();
    for (tag, extra) in [("on", ""), ("off", "\n      bias_correction: false")] {
        let config = pipeline(
            tmp.path(),
            &format!("{tag}.yaml"),
            &format!("      granularity: unstructured\n      sparsity: 0.5{extra}"),
        );
        let out = tmp.path().join(format!("{tag}.onnx"));
        let report = tmp.path().join(format!("{tag}.json"));
        common::run_pipeline(
            &config,
            &model,
            &calib,
            &out,
            &["--report", report.to_str().unwrap()],
        );
        let r: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
        let pass = &r["passes"][0]["report"];
        let corrected = pass["counters"]["biases_corrected"].as_i64();
        let pruned = pass["counters"]["layers_pruned"].as_i64().unwrap();
        if tag == "on" {
            assert_eq!(corrected, Some(pruned), "{pass}");
            let m: Model = whittle::onnx::load(&out).unwrap();
            let with_bias = m
                .graph
                .nodes()
                .filter(|(_, n)| n.op_type() == "Conv" && n.inputs.len() == 3)
                .count();
            assert!(with_bias >= 8, "{with_bias} Convs with a bias");
        } else {
            assert_eq!(corrected, None, "{pass}");
        }
        sqnr.push(common::validate_sqnr(&model, &out, &test));
    }
    assert!(sqnr[0] > sqnr[1] + 0.5, "with / without: {sqnr:?}");

    let config = pipeline(
        tmp.path(),
        "bad.yaml",
        "      granularity: unstructured\n      bias_correction: true",
    );
    let out = tmp.path().join("bad.onnx");
    fails_without_output(
        &config,
        &model,
        &out,
        "bias_correction: true needs calibration data",
    );
    let channel = pipeline(
        tmp.path(),
        "ch.yaml",
        "      ratio: 0.2\n      bias_correction: true",
    );
    fails_without_output(&channel, &model, &out, "bias_correction");
}
