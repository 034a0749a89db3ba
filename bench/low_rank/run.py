"""low-rank on trained models: data-aware (SVD-LLM whitening) vs plain SVD, and the global
target allocation vs a uniform per-layer ratio, at about the same total parameters.

Run from the repository root with the export venv, after `cargo build`:

    .venv-export/bin/python bench/low_rank/run.py [--whittle target/debug/whittle] [--fraction 0.5]

For each trained fixture (fixtures/trained/, with held-out test inputs and labels) and each of
four pipelines (`fold-batchnorm` then `low-rank` with `ratio: F` or `target: { params: F }`, each
with `data_aware: true` on the calibration inputs or `false`), it runs whittle, checks the result
with onnx.checker, runs it in onnxruntime (1 thread) on the test inputs and prints: parameters
of the split candidates before → after (from whittle's report), output SQNR against onnxruntime's
outputs of the original, top-1 accuracy against the labels, and whether tract (`whittle validate`)
runs it. Prints a markdown table.
"""

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[2]
MODELS = ["digits_cnn", "digits_transformer"]


def run_ort(path, test):
    o = ort.SessionOptions()
    o.intra_op_num_threads = 1
    s = ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    x = test[name]
    return np.concatenate([s.run(None, {name: x[i]})[0] for i in range(len(x))])


def sqnr(ref, got):
    noise = np.sum((ref.astype(np.float64) - got) ** 2)
    return float("inf") if noise == 0 else 10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / noise)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--whittle", default=str(ROOT / "target/debug/whittle"))
    ap.add_argument("--fraction", type=float, default=0.5)
    args = ap.parse_args()
    f = args.fraction
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for m in MODELS:
            base = ROOT / "fixtures/trained" / m
            model, calib = base.with_suffix(".onnx"), Path(f"{base}.calib.npz")
            test = dict(np.load(f"{base}.test.npz"))
            labels = np.load(f"{base}.labels.npz")
            labels = labels[labels.files[0]].reshape(-1)
            ref = run_ort(model, test).reshape(len(labels), -1)
            rows.append((m, "original", "-", "-", float("inf"), float(np.mean(ref.argmax(1) == labels)), "yes"))
            for how in [f"ratio: {f}", f"target: {{ params: {f} }}"]:
                for aware in ["true", "false"]:
                    pipe = tmp / "p.yaml"
                    pipe.write_text(
                        f"version: 1\npasses:\n  - fold-batchnorm\n  - low-rank: {{ {how}, data_aware: {aware} }}\n"
                    )
                    out, rep = tmp / f"{m}.onnx", tmp / "r.json"
                    subprocess.run(
                        [args.whittle, "run", str(pipe), "--input", str(model), "--output", str(out),
                         "--data", str(calib), "--report", str(rep)],
                        check=True, capture_output=True,
                    )
                    onnx.checker.check_model(str(out), full_check=True)
                    report = json.loads(rep.read_text())
                    lr = [p for p in report["passes"] if p["name"] == "low-rank"][0]
                    c = lr["report"]["counters"] if "report" in lr else lr["counters"]
                    got = run_ort(out, test).reshape(len(labels), -1)
                    tract = subprocess.run(
                        [args.whittle, "validate", str(model), str(out), "--data", f"{base}.test.npz"],
                        capture_output=True,
                    )
                    rows.append((
                        m, how + (", whitened" if aware == "true" else ", plain SVD"),
                        c["params_before"], c["params_after"], sqnr(ref, got),
                        float(np.mean(got.argmax(1) == labels)), "yes" if tract.returncode == 0 else "no",
                    ))
    print("| model | low-rank | params before | after | SQNR vs original (dB, ort) | top-1 vs labels | tract runs it |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]:.2f} | {100 * r[5]:.2f}% | {r[6]} |")


if __name__ == "__main__":
    main()
