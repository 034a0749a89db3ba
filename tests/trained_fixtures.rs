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

/// Each trained model, its held-out sample count, and the top-1 test accuracy
/// (percent, onnxruntime against `labels`) that `fixtures/README.md` states;
/// `None` for the untrained detector, which has no labels.
const MODELS: [(&str, usize, Option<f64>); 5] = [
    ("bert_tiny", 512, Some(98.63)),
    ("digits_cnn", 360, Some(98.89)),
    ("digits_student", 360, Some(98.89)),
    ("digits_transformer", 360, Some(97.78)),
    ("yolo_tiny", 64, None),
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

/// Index of the largest element (the first of equal ones, as numpy's argmax).
fn argmax(a: &Array) -> i64 {
    let v = a.to_f64();
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as i64
}

fn percent_correct(logits: &[&Array], labels: &[i64]) -> f64 {
    assert_eq!(logits.len(), labels.len());
    let hits = logits
        .iter()
        .zip(labels)
        .filter(|(l, &y)| argmax(l) == y)
        .count();
    100.0 * hits as f64 / labels.len() as f64
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
    for (stem, tests, accuracy) in MODELS {
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
        let labels_path = trained(&format!("{stem}.labels.npz"));
        if accuracy.is_none() {
            assert!(!labels_path.exists(), "{stem} is not trained: no labels");
            continue;
        }
        let labels = npz(&labels_path);
        let keys: Vec<&str> = labels.keys().map(String::as_str).collect();
        assert_eq!(keys, ["calib_labels", "labels"], "{stem}.labels.npz");
        assert_eq!(ints(&labels["labels"]).len(), tests, "{stem}: labels");
        assert_eq!(
            ints(&labels["calib_labels"]).len(),
            CALIB_SAMPLES,
            "{stem}: calib_labels"
        );
    }
}

#[test]
fn trained_models_match_onnxruntime_and_their_stated_accuracy_in_tract() {
    for (stem, _, accuracy) in MODELS {
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
        let Some(stated) = accuracy else { continue };
        let labels = ints(&npz(&trained(&format!("{stem}.labels.npz")))["labels"]);
        // onnxruntime's accuracy (from the reference) is the README's to its
        // printed digits; tract's is within half a percent of it.
        let ort_rows: Vec<Array> = (0..labels.len())
            .map(|i| reference["logits"].index_first_axis(i))
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
