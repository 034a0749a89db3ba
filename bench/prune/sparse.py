"""Bench of `prune` at granularity unstructured and n:m: whittle's magnitude, Wanda and
SparseGPT beside onnxsim 0.8.x's `pruning` module (the same three methods) on the same
trained ONNX models and the same calibration data, in one table.

Run from the repository root with the export venv, after building whittle:

    cargo build
    .venv-export/bin/python bench/prune/sparse.py [--whittle target/debug/whittle] [--out DIR]

For every model (fixtures/trained/: digits_cnn, digits_transformer; with `--models` also
ppocr_det and ppocr_rec, fetched by bench/quantize/fetch.py, pinned to channel.py's input shape by
whittle `specialize` first so both tools get the same fixed-shape model, with 32 calibration and
16 held-out synthetic images from bench/quantize/synth.py and no labels) and every setting
(unstructured 50%, 2:4), each tool prunes the model with its calibration inputs
(`<model>.calib.npz`, the first `--samples` of them for onnxsim); onnxruntime (1 thread,
graph optimizations off) then runs the original and every pruned model on the held-out
test inputs (`<model>.test.npz`). Printed per row: the share of zeros over the weights the
tool pruned, the output SQNR of the logits against the original model's (dB, over all
test samples), and top-1 accuracy against the test labels (`<model>.labels.npz`). At 50%
whittle's Wanda runs twice: with its default comparison group (the layer) and with
`comparison: output` (each output row, the paper's LLM setting; onnxsim's Wanda is per row).
Every whittle method also runs with `bias_correction: false` (rows marked so): whittle's default
with `--data` adds the zeroed weights' mean output shift ΔW·E[x] to each layer's bias.
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parents[2]
TRAINED = ROOT / "fixtures" / "trained"
MODELS = ["digits_cnn", "digits_transformer"]
sys.path.insert(0, str(ROOT / "bench" / "prune"))
sys.path.insert(0, str(ROOT / "fixtures"))  # synth.py imports make_fixtures
SETTINGS = {
    "50%": ("granularity: unstructured\n      sparsity: 0.5", dict(sparsity=0.5)),
    "2:4": ('granularity: "n:m"\n      pattern: "2:4"', dict(n=2, m=4)),
}
METHODS = ["magnitude", "wanda", "sparsegpt"]
# whittle only, unstructured only: Wanda compared within each output row (the default is per layer).
WANDA_OUTPUT = "wanda (comparison: output)"
# whittle only: every method again without bias correction (on by default with --data).
NO_BC = ", bias_correction: false"


def run_ort(path, inputs):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = s.get_outputs()[0].name
    n = len(next(iter(inputs.values())))
    return np.concatenate([s.run([name], {k: v[i] for k, v in inputs.items()})[0] for i in range(n)])


def sqnr_db(ref, got):
    err = np.sum((ref.astype(np.float64) - got) ** 2)
    return float("inf") if err == 0 else 10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / err)


def sparsity(path):
    """Zeros over the Conv/MatMul/Gemm constant weights that have any zero."""
    m = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    zeros = total = 0
    for n in m.graph.node:
        if n.op_type in ("Conv", "MatMul", "Gemm") and len(n.input) > 1 and n.input[1] in inits:
            w = inits[n.input[1]]
            if (w == 0).any():
                zeros += int((w == 0).sum())
                total += w.size
    return zeros / max(total, 1)


def whittle(binary, model, calib, setting, method, out):
    cfg = out.with_suffix(".yaml")
    options = "method: wanda\n      comparison: output" if method.startswith(WANDA_OUTPUT) else f"method: {method.split(' ')[0].rstrip(',')}"
    if method.endswith(NO_BC):
        options += "\n      bias_correction: false"
    cfg.write_text(f"version: 1\npasses:\n  - prune:\n      {setting}\n      {options}\n")
    t = time.perf_counter()
    subprocess.run(
        [binary, "run", str(cfg), "--input", str(model), "--output", str(out), "--data", str(calib)],
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - t


def onnxsim_prune(model, calib, kwargs, method, out, samples):
    from onnxsim import pruning

    data = np.load(calib)
    cal = [{k: data[k][i] for k in data.files} for i in range(min(samples, len(data[data.files[0]])))]
    t = time.perf_counter()
    if method == "magnitude":
        m = pruning.apply_magnitude_pruning(str(model), **kwargs)
    elif method == "wanda":
        m = pruning.apply_wanda_pruning(str(model), calibration_data=cal, num_samples=len(cal), **kwargs)
    else:
        m = pruning.apply_sparsegpt_pruning(str(model), calibration_data=cal, num_samples=len(cal), **kwargs)
    onnx.save(m, str(out))
    return time.perf_counter() - t


def fetched(binary, name, out):
    """PP-OCR: (specialized model, calib npz, test npz), the data drawn by synth.py."""
    import channel  # noqa: PLC0415  (bench/prune/channel.py: fetched dir, input shapes; puts bench/quantize on sys.path)
    from fetch import fetch  # noqa: PLC0415
    import synth  # noqa: PLC0415

    path = fetch(name, channel.FETCHED, channel.FETCHED.parent / "wheels", log=lambda *_: None)
    shape = channel.PPOCR_DIMS[name]["shape"]
    model, cfg = out / f"{name}.specialized.onnx", out / f"{name}.specialize.yaml"
    cfg.write_text(f"version: 1\npasses:\n  - specialize: {{ shapes: {{ x: {shape} }} }}\n")
    subprocess.run([binary, "run", str(cfg), "--input", str(path), "--output", str(model)], check=True, capture_output=True)
    calib, test = out / f"{name}.calib.npz", out / f"{name}.test.npz"
    for split, n, f in (("calib", 32, calib), ("heldout", 16, test)):
        data = synth.ocr_inputs(name, split, n)
        if name == "ppocr_det":  # synth draws det pages at 320×320: crop to the pinned shape
            data = {"x": data["x"][..., : shape[2], : shape[3]]}
        np.savez(f, **{k: v.astype(np.float32) for k, v in data.items()})
    return model, calib, test


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--whittle", default=str(ROOT / "target" / "debug" / "whittle"))
    ap.add_argument("--out", default=None)
    ap.add_argument("--samples", type=int, default=64, help="calibration samples given to onnxsim")
    ap.add_argument("--models", nargs="*", default=MODELS)
    ap.add_argument("--tools", nargs="*", default=["whittle", "onnxsim"])
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="prune-sparse-"))
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.models:
        if (TRAINED / f"{name}.onnx").is_file():
            model, calib, test = TRAINED / f"{name}.onnx", TRAINED / f"{name}.calib.npz", TRAINED / f"{name}.test.npz"
            labels = np.load(TRAINED / f"{name}.labels.npz")["labels"]
        else:
            model, calib, test = fetched(args.whittle, name, out)
            labels = None
        test = dict(np.load(test))
        ref = run_ort(model, test)
        top1 = lambda y: float("nan") if labels is None else float((y.reshape(len(labels), -1).argmax(1) == labels).mean())  # noqa: E731
        rows.append((name, "-", "original", "-", 0.0, float("inf"), top1(ref), 0.0))
        for setting, (yaml, kwargs) in SETTINGS.items():
            for tool in args.tools:
                extra = [WANDA_OUTPUT] if tool == "whittle" and setting == "50%" else []
                methods = METHODS[:2] + extra + METHODS[2:]
                if tool == "whittle":
                    methods = methods + [m + NO_BC for m in methods]
                for method in methods:
                    tag = method.split(" ")[0].rstrip(",") + ("-output" if method.startswith(WANDA_OUTPUT) else "")
                    tag += "-nobc" if method.endswith(NO_BC) else ""
                    p = out / f"{name}.{setting.replace(':', '-').replace('%', 'pct')}.{tool}.{tag}.onnx"
                    try:
                        if tool == "whittle":
                            secs = whittle(args.whittle, model, calib, yaml, method, p)
                        else:
                            secs = onnxsim_prune(model, calib, kwargs, method, p, args.samples)
                        y = run_ort(p, test)
                        rows.append((name, setting, tool, method, sparsity(p), sqnr_db(ref, y), top1(y), secs))
                    except Exception as e:  # noqa: BLE001 (one failing row must not hide the others)
                        msg = getattr(e, "stderr", b"") or str(e).encode()
                        print(f"{name} {setting} {tool} {method}: failed: {msg[-300:]!r}", file=sys.stderr)
                        rows.append((name, setting, tool, method, float("nan"), float("nan"), float("nan"), 0.0))
    print("| model | setting | tool | method | zeros | output SQNR (dB) | top-1 | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for name, setting, tool, method, z, db, acc, secs in rows:
        print(f"| {name} | {setting} | {tool} | {method} | {z:.1%} | {db:.2f} | {acc:.3f} | {secs:.2f} |")


if __name__ == "__main__":
    main()
