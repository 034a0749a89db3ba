//! The trained fixtures of `fixtures/trained/` (made by
//! `fixtures/export/train_models.py`, documented in `fixtures/README.md`):
//! their data files have the layout `--data` reads, tract computes what
//! onnxruntime computed on the held-out inputs, and tract's top-1 accuracy
//! against the labels is the one the README states. (Their lossless round
//! trip is checked with the other fixtures', in `tests/roundtrip.rs`.)

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use whittle::data::{self, Array, InputSpec, Samples};
use whittle::exec::{self, Runner};
use whittle::ir::DataType;
use whittle::onnx;

/// Samples of `<stem>.calib.npz`, all drawn from the training split.
const CALIB_SAMPLES: usize = 64;

/// Each trained model, its held-out sample count, its labels per sample
/// (the detector's: one per anchor), and the top-1 test accuracy (percent,
/// onnxruntime against `labels`; the detector's over the anchors a digit
/// holds) that `fixtures/README.md` states.
const MODELS: [(&str, usize, usize, f64); 5] = [
    ("bert_tiny", 512, 1, 98.63),
    ("digits_cnn", 360, 1, 98.89),
    ("digits_student", 360, 1, 98.89),
    ("digits_transformer", 360, 1, 97.78),
    ("yolo_tiny", 64, 80, 77.96),
];

fn trained(file: &str) -> PathBuf {
    common::fixture("trained").join(file)
}

fn samples(path: &Path, inputs: &[InputSpec]) -> Samples {
    data::load_samples(path, inputs, &BTreeMap::new(), None)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn npz(path: &Path) -> BTreeMap<String, Array> {
    data::read_npz(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .collect()
}

/// The int64 values of an array.
fn ints(a: &Array) -> Vec<i64> {
    assert_eq!(a.dtype, DataType::Int64, "labels are int64");
    a.data
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

/// Index of the largest of `values` (the first of equal ones, as numpy's argmax).
fn argmax(values: impl Iterator<Item = f64>) -> i64 {
    let mut best = (0, f64::NEG_INFINITY);
    for (i, x) in values.enumerate() {
        if x > best.1 {
            best = (i, x);
        }
    }
    best.0 as i64
}

/// Correct and counted predictions of one sample. A classifier's sample has
/// one label and `output` holds its logits; the detector's has one label per
/// anchor (-1 for background, not counted) and `output` is [1, 4 + classes,
/// anchors]: the box, then the class scores.
fn hits(output: &Array, labels: &[i64]) -> (usize, usize) {
    let v = output.to_f64();
    if let [label] = labels {
        return (usize::from(argmax(v.into_iter()) == *label), 1);
    }
    let anchors = labels.len();
    let classes = v.len() / anchors - 4;
    let mut correct = (0, 0);
    for (a, &label) in labels.iter().enumerate() {
        if label >= 0 {
            let scores = (0..classes).map(|c| v[(4 + c) * anchors + a]);
            correct.0 += usize::from(argmax(scores) == label);
            correct.1 += 1;
        }
    }
    correct
}

/// Top-1 accuracy in percent: `labels` holds `outputs.len()` equal rows.
fn percent_correct(outputs: &[&Array], labels: &[i64]) -> f64 {
    let per = labels.len() / outputs.len();
    assert_eq!(per * outputs.len(), labels.len(), "labels per sample");
    let (mut correct, mut counted) = (0, 0);
    for (out, rows) in outputs.iter().zip(labels.chunks(per)) {
        let (c, n) = hits(out, rows);
        correct += c;
        counted += n;
    }
    100.0 * correct as f64 / counted as f64
}

#[test]
fn every_trained_model_is_listed() {
    let found: Vec<String> = common::trained_models()
        .iter()
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    let listed: Vec<&str> = MODELS.iter().map(|m| m.0).collect();
    assert_eq!(found, listed);
}

#[test]
fn trained_data_files_fit_their_models() {
    for (stem, tests, per_sample, _) in MODELS {
        let model = onnx::load(&trained(&format!("{stem}.onnx"))).unwrap();
        let inputs = InputSpec::of_graph(&model.graph).unwrap();
        // One symbolic batch dim N on every input, pinned to 1 in the files.
        for spec in &inputs {
            let shape = spec.shape.as_ref().expect("inputs have shapes");
            assert_eq!(
                shape[0],
                whittle::ir::DimValue::Symbol("N".into()),
                "{stem}: {spec}"
            );
        }
        let calib = samples(&trained(&format!("{stem}.calib.npz")), &inputs);
        assert_eq!(calib.samples.len(), CALIB_SAMPLES, "{stem}.calib.npz");
        let test = samples(&trained(&format!("{stem}.test.npz")), &inputs);
        assert_eq!(test.samples.len(), tests, "{stem}.test.npz");
        for sample in calib.samples.iter().chain(&test.samples) {
            assert!(sample.iter().all(|a| a.shape[0] == 1), "{stem}: batch 1");
        }
        let labels = npz(&trained(&format!("{stem}.labels.npz")));
        let keys: Vec<&str> = labels.keys().map(String::as_str).collect();
        if per_sample == 1 {
            assert_eq!(keys, ["calib_labels", "labels"], "{stem}.labels.npz");
        } else {
            // The detector's digit boxes beside the classes.
            let boxes = ["boxes", "calib_boxes", "calib_labels", "labels"];
            assert_eq!(keys, boxes, "{stem}.labels.npz");
        }
        let count = ints(&labels["labels"]).len();
        assert_eq!(count, tests * per_sample, "{stem}: labels");
        let count = ints(&labels["calib_labels"]).len();
        assert_eq!(count, CALIB_SAMPLES * per_sample, "{stem}: calib_labels");
    }
}

#[test]
fn trained_models_match_onnxruntime_and_their_stated_accuracy_in_tract() {
    for (stem, _, _, stated) in MODELS {
        let path = trained(&format!("{stem}.onnx"));
        let model = onnx::load(&path).unwrap();
        let inputs = InputSpec::of_graph(&model.graph).unwrap();
        let test = samples(&trained(&format!("{stem}.test.npz")), &inputs);
        let reference = npz(&trained(&format!("{stem}.ref.npz")));
        let runner = Runner::from_model(stem, &model, path.parent()).unwrap();
        let outputs = exec::run_samples(&runner, &test.samples, 2).unwrap();
        for (k, name) in runner.outputs().iter().enumerate() {
            let expected = &reference[name];
            assert_eq!(expected.shape[0], outputs.len(), "{stem}: {name}");
            for (i, out) in outputs.iter().enumerate() {
                if let Some(d) =
                    common::allclose(&out[k], &expected.index_first_axis(i), 1e-3, 1e-5)
                {
                    panic!("{stem}: output {name:?}, sample {i}: {d}");
                }
            }
        }
        let labels = ints(&npz(&trained(&format!("{stem}.labels.npz")))["labels"]);
        // onnxruntime's accuracy (from the reference) is the README's to its
        // printed digits; tract's is within half a percent of it.
        let ort_rows: Vec<Array> = (0..outputs.len())
            .map(|i| reference[&runner.outputs()[0]].index_first_axis(i))
            .collect();
        let ort = percent_correct(&ort_rows.iter().collect::<Vec<_>>(), &labels);
        assert!(
            (ort - stated).abs() < 0.006,
            "{stem}: onnxruntime {ort:.3}% vs README {stated}%"
        );
        let ours = percent_correct(&outputs.iter().map(|o| &o[0]).collect::<Vec<_>>(), &labels);
        assert!(
            (ours - stated).abs() <= 0.5,
            "{stem}: tract {ours:.2}% vs README {stated}%"
        );
    }
}
