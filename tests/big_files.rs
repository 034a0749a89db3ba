//! Big files and hostile conditions: external data written to the output's
//! own side file in one sequential stream, the input never overwritten, a
//! run killed mid-write (SIGKILL) or a full disk leaving nothing behind.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use whittle::ir::{DataType, Graph, Model, Node, Tensor, TensorData, TypeInfo, ValueInfo};
use whittle::onnx::{self, SaveOptions};

/// x -> Add(w0) -> Add(w1) ... -> y, every weight `len` floats, saved with
/// its weights in `location` beside `path`.
fn external_model(path: &Path, location: &str, weights: usize, len: usize) {
    let mut g = Graph::new("g");
    let f = |n: &str| ValueInfo::new(n, TypeInfo::tensor(DataType::Float, vec![]));
    g.inputs.push(f("x"));
    g.outputs.push(f("y"));
    for i in 0..weights {
        let values: Vec<f32> = (0..len).map(|j| (i * 7 + j % 1000) as f32).collect();
        g.add_initializer(Tensor::from_f32(format!("w{i}"), vec![len as i64], &values));
        let x = if i == 0 {
            "x".to_string()
        } else {
            format!("v{}", i - 1)
        };
        let y = if i + 1 == weights {
            "y".to_string()
        } else {
            format!("v{i}")
        };
        g.add_node(Node::new(
            "Add",
            format!("add{i}"),
            vec![x, format!("w{i}")],
            vec![y],
        ));
    }
    let options = SaveOptions {
        external_threshold: Some(1024),
        external_location: Some(location.into()),
    };
    onnx::save(&Model::new(g, 17), path, &options).unwrap();
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn floats(t: &Tensor) -> Vec<f32> {
    let b = t.packed_bytes().unwrap();
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[test]
fn saving_beside_the_input_writes_its_own_side_file_and_keeps_the_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.onnx");
    external_model(&input, "in.weights", 3, 4096);
    let before = std::fs::read(dir.path().join("in.weights")).unwrap();

    let mut m = onnx::load(&input).unwrap();
    let doubled: Vec<f32> = floats(m.graph.initializer("w1").unwrap())
        .iter()
        .map(|v| v * 2.0)
        .collect();
    m.graph
        .replace_initializer(Tensor::from_f32("w1", vec![4096], &doubled));
    // Keeps the input's location name: the old writer renamed its own
    // in.weights over the input's.
    let out = dir.path().join("out.onnx");
    let options = SaveOptions {
        external_threshold: Some(1024),
        external_location: None,
    };
    let saved = onnx::save(&m, &out, &options).unwrap();
    assert_eq!(saved.external_files, vec!["out.onnx.data".to_string()]);
    assert_eq!(
        std::fs::read(dir.path().join("in.weights")).unwrap(),
        before
    );
    assert_eq!(
        entries(dir.path()),
        ["in.onnx", "in.weights", "out.onnx", "out.onnx.data"]
    );

    let back = onnx::load(&out).unwrap();
    assert_eq!(floats(back.graph.initializer("w1").unwrap()), doubled);
    let original = onnx::load(&input).unwrap();
    for name in ["w0", "w2"] {
        assert_eq!(
            floats(back.graph.initializer(name).unwrap()),
            floats(original.graph.initializer(name).unwrap())
        );
    }
    // One sequential stream: offsets rise in list order (the rewritten w1,
    // moved out by the threshold, between the two that were external), and
    // the file ends where the last tensor does.
    let mut end = 0;
    for t in back.graph.initializers() {
        let TensorData::External(e) = &t.data else {
            panic!("{} is not external", t.name());
        };
        assert_eq!(e.location, "out.onnx.data");
        assert!(
            e.offset >= end,
            "{} starts before the previous tensor ends",
            t.name()
        );
        end = e.offset + e.length;
    }
    assert_eq!(
        std::fs::metadata(dir.path().join("out.onnx.data"))
            .unwrap()
            .len(),
        end
    );
}

#[test]
fn saving_over_the_inputs_side_file_is_refused_and_the_input_is_intact() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.onnx");
    // The input's weights sit where out.onnx's default side file would go.
    external_model(&input, "out.onnx.data", 2, 2048);
    let before = std::fs::read(dir.path().join("out.onnx.data")).unwrap();
    let m = onnx::load(&input).unwrap();
    let err = onnx::save(&m, &dir.path().join("out.onnx"), &SaveOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("reads its weights from"), "{err}");
    assert_eq!(
        std::fs::read(dir.path().join("out.onnx.data")).unwrap(),
        before
    );
    assert_eq!(entries(dir.path()), ["in.onnx", "out.onnx.data"]);
}

/// A model with 48 MB of external weights and the roundtrip pipeline.
fn big_input(dir: &Path) -> (PathBuf, Vec<u8>, Vec<u8>) {
    let input = dir.join("in.onnx");
    external_model(&input, "in.onnx.data", 12, 1 << 20);
    let model = std::fs::read(&input).unwrap();
    let data = std::fs::read(dir.join("in.onnx.data")).unwrap();
    (input, model, data)
}

fn roundtrip_cmd(input: &Path, output: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_whittle"));
    c.args(["run", "configs/roundtrip.yaml", "-i"])
        .arg(input)
        .arg("-o")
        .arg(output)
        .current_dir(common::root())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

/// True once process `pid` holds a file open inside `dir`.
fn writing_into(pid: u32, dir: &Path) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .any(|target| target.starts_with(dir))
}

#[test]
fn killed_mid_write_leaves_no_output_and_an_intact_input() {
    let dir = tempfile::tempdir().unwrap();
    let (input, model, data) = big_input(dir.path());
    let mut landed = 0;
    // Kill points: as soon as an output file is open, then later in the write.
    for delay_ms in [0, 1, 3, 10, 30] {
        let out_dir = dir.path().join(format!("out{delay_ms}"));
        std::fs::create_dir(&out_dir).unwrap();
        let mut child = roundtrip_cmd(&input, &out_dir.join("out.onnx"))
            .spawn()
            .unwrap();
        let started = Instant::now();
        while !writing_into(child.id(), &out_dir) && started.elapsed() < Duration::from_secs(60) {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill(); // SIGKILL (nothing to do if it already exited)
        let status = child.wait().unwrap();
        // Judged by how it ended, not by a check before the kill: it may
        // finish between the two.
        if !status.success() {
            landed += 1;
            assert!(
                entries(&out_dir).is_empty(),
                "killed {delay_ms} ms into the write, it left {:?}",
                entries(&out_dir)
            );
        } else {
            // It finished first: then the output must be whole.
            assert_eq!(entries(&out_dir), ["out.onnx", "out.onnx.data"]);
        }
        assert_eq!(std::fs::read(&input).unwrap(), model);
        assert_eq!(
            std::fs::read(dir.path().join("in.onnx.data")).unwrap(),
            data
        );
    }
    assert!(
        landed >= 2,
        "only {landed} kills landed before the write ended"
    );
}

#[test]
fn full_disk_gives_a_clear_error_and_no_partial_output() {
    let dir = tempfile::tempdir().unwrap();
    let (input, model, data) = big_input(dir.path());
    let small = dir.path().join("small");
    std::fs::create_dir(&small).unwrap();
    // A 4 MiB tmpfs in a private mount namespace (root, or a user namespace).
    let script = format!(
        "mount -t tmpfs -o size=4m whittle-full {small} || exit 97; \
         \"$0\" run configs/roundtrip.yaml -i {input} -o {small}/out.onnx; rc=$?; \
         echo \"left: $(ls -A {small} | tr '\\n' ' ')\" >&2; exit $rc",
        small = small.display(),
        input = input.display(),
    );
    let mut out = None;
    for flags in [&["-m"][..], &["-r", "-m"][..]] {
        let o = Command::new("unshare")
            .args(flags)
            .args(["sh", "-c", &script, env!("CARGO_BIN_EXE_whittle")])
            .current_dir(common::root())
            .output();
        if let Ok(o) = o {
            if o.status.code() != Some(97)
                && !String::from_utf8_lossy(&o.stderr).contains("unshare failed")
            {
                out = Some(o);
                break;
            }
        }
    }
    let Some(out) = out else {
        eprintln!("skipped: this environment allows no private tmpfs mount (unshare -m / -rm)");
        return;
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("No space left on device"), "{stderr}");
    assert!(stderr.contains("cannot write"), "{stderr}");
    assert!(
        stderr.contains("left: \n") || stderr.trim_end().ends_with("left:"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&input).unwrap(), model);
    assert_eq!(
        std::fs::read(dir.path().join("in.onnx.data")).unwrap(),
        data
    );
}

/// x -> MatMul(w0) -> MatMul(w1) -> Add(b) -> y, every weight external.
fn matmul_model(path: &Path) {
    let mut g = Graph::new("g");
    let f = |n: &str| ValueInfo::new(n, TypeInfo::tensor(DataType::Float, vec![]));
    g.inputs.push(f("x"));
    g.outputs.push(f("y"));
    for (name, dims) in [("w0", vec![64, 64]), ("w1", vec![64, 64]), ("b", vec![64])] {
        let n: i64 = dims.iter().product();
        let values: Vec<f32> = (0..n)
            .map(|j| ((j * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        g.add_initializer(Tensor::from_f32(name, dims, &values));
    }
    g.add_node(Node::with_io("MatMul", "mm0", &["x", "w0"], &["h"]));
    g.add_node(Node::with_io("MatMul", "mm1", &["h", "w1"], &["z"]));
    g.add_node(Node::with_io("Add", "add", &["z", "b"], &["y"]));
    let options = SaveOptions {
        external_threshold: Some(64),
        external_location: Some("mm.bin".into()),
    };
    onnx::save(&Model::new(g, 17), path, &options).unwrap();
}

#[test]
fn a_pass_that_rewrites_some_initializers_leaves_the_others_mapped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mm.onnx");
    matmul_model(&path);
    let original = onnx::load(&path).unwrap();
    let mut model = original.clone();
    let text = "version: 1\npasses:\n  - prune: { granularity: unstructured, method: magnitude, sparsity: 0.5, include_nodes: [mm0] }\n";
    let pipeline = whittle::pipeline::Pipeline::parse(text, Path::new("p.yaml")).unwrap();
    let ctx = whittle::passes::PassContext {
        model_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    };
    whittle::manager::run(&mut model, &pipeline, &ctx, None).unwrap();
    let g = &model.graph;
    // The rewritten weight holds new bytes, in memory.
    let w0 = g.initializer("w0").unwrap();
    assert!(
        matches!(w0.data, TensorData::Raw(_)),
        "w0 was not rewritten"
    );
    assert_eq!(
        floats(w0).iter().filter(|&&v| v == 0.0).count(),
        64 * 64 / 2
    );
    // The others are still the input's external data: the very bytes of the
    // side file's map (same address), not copies.
    for name in ["w1", "b"] {
        let (before, after) = (
            original.graph.initializer(name).unwrap(),
            g.initializer(name).unwrap(),
        );
        let TensorData::External(e) = &after.data else {
            panic!("{name} is no longer external data: {:?}", after.data);
        };
        assert_eq!(e.location, "mm.bin");
        let (a, b) = (
            before.packed_bytes().unwrap(),
            after.packed_bytes().unwrap(),
        );
        assert_eq!(a.as_ptr(), b.as_ptr(), "{name} was copied");
        // Released pages read back the same bytes.
        after.release_pages();
        assert_eq!(floats(after), floats(before), "{name} changed");
    }
}
