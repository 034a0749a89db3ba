"""Channel pruning bench: whittle `prune` (granularity channel) on real exporter patterns.

Run from the repository root with the export venv, after `cargo build`:

    .venv-export/bin/python bench/prune/channel.py [--whittle target/debug/whittle] [--macs 0.7]

With `--reconstruct` (must-show 4), instead, on the trained fixtures only:

    .venv-export/bin/python bench/prune/channel.py --reconstruct --samples 1000 \
        --models digits_cnn digits_student yolo_tiny digits_transformer bert_tiny

prunes each to `target: { macs: M }` with `--data NAME.calib.npz` for every importance (l1, l2,
activation) with `reconstruct: false` and `true` (the same channels removed: checked from the
reports), and prints the output SQNR against the original and top-1 against the labels on the
test inputs (onnxruntime).

Models: the trained fixtures (fixtures/trained/: digits_cnn, digits_transformer, bert_tiny,
yolo_tiny), `resnext_tiny` (with `--models`: a seeded, untrained ResNeXt-style CNN with grouped
Convs that the bench exports with PyTorch; SQNR only) and PP-OCR det/cls/rec (fetched by bench/quantize/fetch.py into
bench/quantize/build/models/). For each model whittle prunes to `target: { macs: M }`
(default importance l2, no data); then, on the pruned file: `onnx.checker` with full shape inference,
onnxruntime runs original and pruned on the model's test inputs (1 thread) with equal output
shapes, the output SQNR against the original, top-1 accuracy against labels where the fixture
has them, and the median onnxruntime latency (1 thread) before → after. Prints a markdown
table; every number is measured in the run.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[2]
TRAINED = ROOT / "fixtures" / "trained"
FETCHED = ROOT / "bench" / "quantize" / "build" / "models"
sys.path.insert(0, str(ROOT / "bench" / "quantize"))

# name -> (model path, test inputs npz or None, --dim values for symbolic dims)
PPOCR_DIMS = {
    "ppocr_det": {"shape": [1, 3, 224, 224]},
    "ppocr_cls": {"shape": [1, 3, 48, 192]},
    "ppocr_rec": {"shape": [1, 3, 48, 320]},
}


# Built by the bench itself (seeded PyTorch export, untrained): name -> input shape.
BUILT = {"resnext_tiny": [1, 3, 32, 32]}


def build_resnext_tiny(path):
    """A ResNeXt-style CNN (grouped 3x3 Convs, group 4, in two bottleneck residual blocks),
    seeded and untrained, written by PyTorch's TorchScript exporter with its BatchNormalizations."""
    import torch  # noqa: PLC0415
    from torch import nn  # noqa: PLC0415

    torch.manual_seed(0)

    class Block(nn.Module):
        def __init__(self, c, w, g):
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(c, w, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
                nn.Conv2d(w, w, 3, padding=1, groups=g, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
                nn.Conv2d(w, c, 1, bias=False), nn.BatchNorm2d(c),
            )  # fmt: skip

        def forward(self, x):
            return torch.relu(x + self.body(x))

    m = nn.Sequential(
        nn.Conv2d(3, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
        Block(64, 64, 4), Block(64, 64, 4), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
    )  # fmt: skip
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            nn.init.uniform_(mod.weight, 0.5, 1.5)
            nn.init.uniform_(mod.bias, -0.2, 0.2)
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 1.5)
    m.eval()
    x = torch.randn(*BUILT["resnext_tiny"])
    torch.onnx.export(m, (x,), str(path), dynamo=False, input_names=["x"], output_names=["logits"], opset_version=17)
    return path


def session(path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def samples_of(name, model_path, limit):
    """Test samples: the fixture's test inputs, or seeded images of the pinned shape."""
    test = TRAINED / f"{name}.test.npz"
    if test.is_file():
        z = np.load(test)
        n = min(limit, len(z[z.files[0]]))
        return [{k: z[k][i] for k in z.files} for i in range(n)]
    rng = np.random.default_rng(0)
    sess = session(model_path)
    shape = BUILT[name] if name in BUILT else PPOCR_DIMS[name]["shape"]
    return [{sess.get_inputs()[0].name: rng.standard_normal(shape).astype(np.float32)} for _ in range(limit)]


def dims_of(model_path, sample):
    """--dim NAME=VALUE for every symbolic input dim, from the sample's shape."""
    m = onnx.load(str(model_path), load_external_data=False)
    out = {}
    for inp in m.graph.input:
        if inp.name not in sample:
            continue
        for d, v in zip(inp.type.tensor_type.shape.dim, sample[inp.name].shape):
            if d.dim_param:
                out[d.dim_param] = int(v)
    return out


def sqnr(a, b):
    a = np.concatenate([x.ravel() for x in a]).astype(np.float64)
    b = np.concatenate([x.ravel() for x in b]).astype(np.float64)
    noise = np.sum((a - b) ** 2)
    return float("inf") if noise == 0 else 10 * np.log10(np.sum(a * a) / noise)


def latency(sess, feed, runs):
    names = [o.name for o in sess.get_outputs()]
    sess.run(names, feed)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(names, feed)
        times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1000


def inspect_macs(whittle, path):
    out = subprocess.run([whittle, "inspect", str(path), "--json"], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)["macs"]


def bench(name, path, whittle, macs, runs, limit, work):
    samples = samples_of(name, path, limit)
    pipeline = work / f"{name}.yaml"
    prelude = ""
    if name in PPOCR_DIMS:
        # Unnamed input dims: fixed by a specialize prelude (the result is valid for that shape).
        prelude = f"  - specialize: {{ shapes: {{ x: {PPOCR_DIMS[name]['shape']} }} }}\n"
    pipeline.write_text(f"version: 1\npasses:\n{prelude}  - prune:\n      target: {{ macs: {macs} }}\n")
    out = work / f"{name}.pruned.onnx"
    report = work / f"{name}.report.json"
    cmd = [whittle, "run", str(pipeline), "--input", str(path), "--output", str(out), "--report", str(report)]
    for k, v in dims_of(path, samples[0]).items():
        cmd += ["--dim", f"{k}={v}"]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        return {"model": name, "error": run.stderr.strip().splitlines()[-1] if run.stderr else "failed"}
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    a, b = session(path), session(out)
    names = [o.name for o in a.get_outputs()]
    ref, got = [], []
    labels = TRAINED / f"{name}.labels.npz"
    labels = np.load(labels)["labels"] if labels.is_file() else None
    for i, feed in enumerate(samples):
        ra, rb = a.run(names, feed), b.run(names, feed)
        for x, y in zip(ra, rb):
            assert x.shape == y.shape, f"{name}: {y.shape} vs {x.shape}"
        ref += ra
        got += rb
    acc = None
    if labels is not None:
        top = lambda outs: np.mean([int(np.argmax(o)) == labels[i] for i, o in enumerate(outs)])  # noqa: E731
        acc = (top(ref[:: len(names)]), top(got[:: len(names)]))
    counters = json.loads(report.read_text())
    c = next(p["report"]["counters"] for p in counters["passes"] if p["name"] == "prune")
    m0, m1 = c["macs_before"], c["macs_after"]
    return {
        "model": name,
        "macs": (m0, m1),
        "params": (Path(path).stat().st_size, out.stat().st_size),
        "sqnr": sqnr(ref, got),
        "acc": acc,
        "lat": (latency(a, samples[0], runs), latency(b, samples[0], runs)),
        "report": counters,
    }


CLASSIFIERS = ["digits_cnn", "digits_student", "digits_transformer", "bert_tiny"]


def prune_run(whittle, name, path, work, options, data=None):
    """whittle prune with `options` (YAML flow mapping body); (pruned path, prune counters, details)."""
    tag = options.replace(" ", "").replace(":", "_").replace(",", "_").replace("{", "").replace("}", "")
    pipeline = work / f"{name}.{tag}.yaml"
    pipeline.write_text(f"version: 1\npasses:\n  - prune: {{ {options} }}\n")
    out = work / f"{name}.{tag}.onnx"
    report = work / f"{name}.{tag}.json"
    cmd = [whittle, "run", str(pipeline), "--input", str(path), "--output", str(out), "--report", str(report)]
    if data is not None:
        cmd += ["--data", str(data)]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"{name} {options}: {run.stderr.strip()}")
    r = json.loads(report.read_text())
    p = next(p["report"] for p in r["passes"] if p["name"] == "prune")
    return out, p["counters"], p.get("details", [])


def outputs(path, samples):
    sess = session(path)
    names = [o.name for o in sess.get_outputs()]
    return [sess.run(names, feed) for feed in samples]


def top1(outs, labels):
    return float(np.mean([int(np.argmax(o[0])) == int(labels[i]) for i, o in enumerate(outs)]))


def reconstruction(whittle, models, macs, limit, work):
    """Must-show 4: per trained model and importance, at target: { macs }, the output SQNR
    (onnxruntime, test inputs) and top-1 against the labels with reconstruct false / true."""
    rows = []
    for name in models:
        path = TRAINED / f"{name}.onnx"
        calib = TRAINED / f"{name}.calib.npz"
        samples = samples_of(name, path, limit)
        labels = np.load(TRAINED / f"{name}.labels.npz")["labels"] if name in CLASSIFIERS else None
        ref = outputs(path, samples)
        base = top1(ref, labels) if labels is not None else None
        for imp in ["l1", "l2", "activation"]:
            row = {"model": name, "importance": imp, "top1_original": base}
            kept = []
            for rec in ["false", "true"]:
                out, c, details = prune_run(whittle, name, path, work, f"target: {{ macs: {macs} }}, importance: {imp}, reconstruct: {rec}", calib)
                got = outputs(out, samples)
                row[f"sqnr_{rec}"] = sqnr([x for o in ref for x in o], [x for o in got for x in o])
                row[f"top1_{rec}"] = top1(got, labels) if labels is not None else None
                row["macs"] = (c["macs_before"], c["macs_after"])
                row["removed"] = c["channels_removed"]
                row["reconstructed"] = c.get("reconstructed", 0)
                kept.append(sorted((d["group"], d["channels_after"]) for d in details if "group" in d))
            assert kept[0] == kept[1], f"{name} {imp}: reconstruction changed the channels kept"
            rows.append(row)
    print(f"target: {{ macs: {macs} }}, --data fixtures/trained/NAME.calib.npz; scored on NAME.test.npz ({limit} samples max) in onnxruntime {ort.__version__}\n")
    print("| model | importance | MACs ratio | channels removed | consumers re-fitted | SQNR dB, none → reconstruct | top-1 vs labels: original; none → reconstruct |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        m0, m1 = r["macs"]
        acc = "—" if r["top1_original"] is None else f"{r['top1_original']:.3f}; {r['top1_false']:.3f} → {r['top1_true']:.3f}"
        print(f"| {r['model']} | {r['importance']} | {m1 / max(m0, 1):.3f} | {r['removed']} | {r['reconstructed']} | {r['sqnr_false']:.1f} → {r['sqnr_true']:.1f} | {acc} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--whittle", default=str(ROOT / "target" / "debug" / "whittle"))
    parser.add_argument("--macs", type=float, default=0.7)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--models", nargs="*", default=["digits_cnn", "digits_transformer", "bert_tiny", "yolo_tiny", "ppocr_det", "ppocr_cls", "ppocr_rec"])
    parser.add_argument("--reconstruct", action="store_true", help="the reconstruction table (must-show 4) on the trained models instead")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="prune-channel-"))
    if args.reconstruct:
        models = [m for m in args.models if (TRAINED / f"{m}.calib.npz").is_file()]
        reconstruction(args.whittle, models, args.macs, args.samples, work)
        return
    rows = []
    for name in args.models:
        path = TRAINED / f"{name}.onnx"
        if name in BUILT:
            path = build_resnext_tiny(work / f"{name}.onnx")
        elif not path.is_file():
            from fetch import fetch  # noqa: PLC0415

            path = fetch(name, FETCHED, FETCHED.parent / "wheels", log=lambda *_: None)
        rows.append(bench(name, path, args.whittle, args.macs, args.runs, args.samples, work))
    print(f"target: {{ macs: {args.macs} }}, default importance (l2), no --data (no reconstruction); onnxruntime {ort.__version__}, 1 thread\n")
    print("| model | MACs before → after (ratio) | file bytes before → after | output SQNR vs original (dB) | top-1 before → after | ort latency ms before → after | groups pruned / whole | MACs in prunable groups |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['model']} | error: {r['error']} | | | | | | |")
            continue
        m0, m1 = r["macs"]
        acc = f"{r['acc'][0]:.3f} → {r['acc'][1]:.3f}" if r["acc"] else "—"
        c = next((p.get("report", {}).get("counters", {}) for p in r["report"].get("passes", []) if p.get("name") == "prune"), {})
        print(
            f"| {r['model']} | {m0:,} → {m1:,} ({m1 / max(m0, 1):.3f}) | {r['params'][0]:,} → {r['params'][1]:,} | {r['sqnr']:.1f} | {acc} "
            f"| {r['lat'][0]:.3f} → {r['lat'][1]:.3f} | {c.get('groups_pruned', '?')} / {c.get('groups_whole', '?')} | {c.get('macs_in_prunable_groups_permille', 0) / 10:.1f}% |"
        )


if __name__ == "__main__":
    main()
