"""Interop tier: whittle's distill-head graph trained by onnxruntime-training.

Run through scripts/test-interop (it builds the pinned venv and whittle). Steps:
 1. the student (fixtures/trained/digits_student.onnx) is channel-pruned by whittle's `prune`
    pass to `--macs` (default 0.5) of its Conv/Gemm MACs (`target: { macs: ... }`, l1
    importance, no reconstruction): filters and the matching input channels are removed;
 2. `whittle run` folds the student's BatchNormalization (`fold-batchnorm`) and grafts the
    teacher (digits_cnn) with `distill-head` (alpha = 1, so the labels
    are never read; temperature 4), and, for the comparison, a cross-entropy-only head
    (alpha = 0 with labels) on the same pruned student;
 3. onnxruntime.training's generate_artifacts(loss=None, requires_grad=..., frozen_params=...)
    builds training artifacts from each graph with the lists whittle wrote in metadata_props
    (the graph's first output, `loss`, is where backpropagation starts), AdamW;
 4. a few epochs on the training inputs, then top-1 against labels on held-out inputs.

Data: the fixture's calibration inputs (64) and the first half of its test inputs (180) train;
the other half of the test inputs (180) evaluates. Prints a markdown table and
`interop: N passed, M failed`; exits 1 when training fails to run or to improve on the pruned
student, 0 otherwise.
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper
from onnxruntime.training import artifacts
from onnxruntime.training.api import CheckpointState, Module, Optimizer

ROOT = Path(__file__).resolve().parents[2]
TRAINED = ROOT / "fixtures" / "trained"


def load_data():
    calib = np.load(TRAINED / "digits_student.calib.npz")["x"][:, 0]
    test = np.load(TRAINED / "digits_student.test.npz")["x"][:, 0]
    labels = np.load(TRAINED / "digits_student.labels.npz")
    half = len(test) // 2
    train_x = np.concatenate([calib, test[:half]])
    train_y = np.concatenate([labels["calib_labels"], labels["labels"][:half]])
    return train_x, train_y, test[half:], labels["labels"][half:]


def top1(model_bytes, x, y):
    s = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    logits = s.run(["logits"], {"x": x})[0]
    return float((logits.argmax(1) == y).mean())


def prune_channels(whittle, work, student, macs):
    """whittle's channel pruning to `macs` of the MACs; returns (pruned path, MACs before, after)."""
    pipeline = work / "prune.yaml"
    pipeline.write_text(f"version: 1\npasses:\n  - prune: {{ target: {{ macs: {macs} }} }}\n")
    out = work / "student_pruned.onnx"
    report = work / "prune.report.json"
    subprocess.run(
        [whittle, "run", str(pipeline), "--input", str(student), "--output", str(out), "--report", str(report)],
        check=True,
    )
    counters = next(p for p in json.loads(report.read_text())["passes"] if p["name"] == "prune")["report"]["counters"]
    return out, counters["macs_before"], counters["macs_after"]


def graft(whittle, work, student, name, options):
    pipeline = work / f"{name}.yaml"
    # BatchNormalization folds into the student's Convs first: the trainable graph is then
    # Conv/Gemm only (inference-mode BatchNormalization has no gradient in onnxruntime).
    pipeline.write_text(f"version: 1\npasses:\n  - fold-batchnorm\n  - distill-head: {options}\n")
    out = work / f"{name}.onnx"
    report = work / f"{name}.report.json"
    subprocess.run(
        [whittle, "run", str(pipeline), "--input", str(student), "--output", str(out), "--report", str(report)],
        check=True,
    )
    m = onnx.load(out)
    meta = {p.key: p.value for p in m.metadata_props}
    return out, json.loads(meta["whittle.requires_grad"]), json.loads(meta["whittle.frozen_params"])


def train(graph, requires_grad, frozen, work, name, x, y, use_labels, epochs, batch, lr, seed):
    art = work / f"{name}_artifacts"
    art.mkdir(exist_ok=True)
    artifacts.generate_artifacts(
        onnx.load(graph),
        requires_grad=requires_grad,
        frozen_params=frozen,
        loss=None,
        optimizer=artifacts.OptimType.AdamW,
        artifact_directory=art,
    )
    state = CheckpointState.load_checkpoint(str(art / "checkpoint"))
    module = Module(str(art / "training_model.onnx"), state, str(art / "eval_model.onnx"))
    optimizer = Optimizer(str(art / "optimizer_model.onnx"), module)
    optimizer.set_learning_rate(lr)
    rng = np.random.default_rng(seed)
    module.train()
    losses = []
    for _ in range(epochs):
        order = rng.permutation(len(x))
        epoch = []
        for i in range(0, len(x) - batch + 1, batch):
            idx = order[i : i + batch]
            feed = [x[idx]] + ([y[idx]] if use_labels else [])
            outputs = module(*feed)
            epoch.append(float(outputs[0]))
            optimizer.step()
            module.lazy_reset_grad()
        losses.append(float(np.mean(epoch)))
    out = work / f"{name}_trained.onnx"
    module.export_model_for_inferencing(str(out), ["logits"])
    return out, losses


def main():
    ort.set_default_logger_severity(3)
    ap = argparse.ArgumentParser()
    ap.add_argument("--whittle", required=True)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--macs", type=float, default=0.5, help="fraction of the MACs channel pruning keeps")
    ap.add_argument("--temperature", type=float, default=4.0)
    args = ap.parse_args()

    train_x, train_y, test_x, test_y = load_data()
    teacher, student = TRAINED / "digits_cnn.onnx", TRAINED / "digits_student.onnx"
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        pruned, macs_before, macs_after = prune_channels(args.whittle, work, student, args.macs)
        rows = [
            ("teacher (digits_cnn)", top1(str(teacher), test_x, test_y), "-"),
            ("student (digits_student), before pruning", top1(str(student), test_x, test_y), "-"),
            (f"student, channel-pruned to {macs_after}/{macs_before} MACs ({macs_after / macs_before:.2f})",
             top1(str(pruned), test_x, test_y), "-"),
        ]
        kd_graph, kd_rg, kd_frozen = graft(
            args.whittle, work, pruned, "kd", f"{{ teacher: {teacher}, temperature: {args.temperature}, alpha: 1 }}"
        )
        ce_graph, ce_rg, ce_frozen = graft(
            args.whittle, work, pruned, "ce", f"{{ teacher: {teacher}, alpha: 0, labels: {{ name: labels }} }}"
        )
        for name, graph, rg, fr, labels, what in [
            ("kd", kd_graph, kd_rg, kd_frozen, False, f"distilled (alpha = 1, T = {args.temperature}, no labels)"),
            ("ce", ce_graph, ce_rg, ce_frozen, True, "plain cross-entropy (labels)"),
        ]:
            try:
                trained, losses = train(
                    graph, rg, fr, work, name, train_x, train_y, labels, args.epochs, args.batch, args.lr, 0
                )
                rows.append((f"pruned student, {args.epochs} epochs AdamW, {what}", top1(str(trained), test_x, test_y),
                             f"{losses[0]:.4f} → {losses[-1]:.4f}"))
            except Exception as e:  # a failure to build or train is reported, never hidden
                failures.append(f"{name}: {type(e).__name__}: {e}")
        print(f"\ntrainable {len(kd_rg)} / frozen {len(kd_frozen)} initializers (whittle.requires_grad / frozen_params)")
        print(f"train: {len(train_x)} inputs; test: {len(test_x)} held-out inputs with labels\n")
        print("| model | top-1 (held-out) | training loss, first → last epoch |")
        print("|---|---|---|")
        for what, acc, loss in rows:
            print(f"| {what} | {acc * 100:.1f}% | {loss} |")
        pruned_acc = rows[2][1]
        kd_rows = [r for r in rows if r[0].startswith("pruned student") and "distilled" in r[0]]
        if kd_rows and kd_rows[0][1] + 1e-9 < pruned_acc:
            failures.append(f"distillation lowered top-1 ({pruned_acc:.3f} → {kd_rows[0][1]:.3f})")
    for f in failures:
        print(f"FAIL {f}")
    passed = 2 - min(2, len(failures))
    print(f"interop: {passed} passed, {len(failures)} failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
