"""low-rank: onnxruntime latency (1 thread) before → after on MatMul-heavy models (issue 15,
must-show 4), beside the parameters and MACs whittle's report counts, and what onnxruntime's
graph optimizer makes of the split (its optimized graph's op counts).

Run from the repository root with the export venv, after `cargo build`:

    .venv-export/bin/python bench/low_rank/latency.py [--whittle target/debug/whittle] \
        [--rounds 15] [--runs 20] [--batches 1 32] [--models digits_transformer bert_tiny transformer_bench]

Models: the trained fixtures digits_transformer and bert_tiny (fixtures/trained/, calibrated on
their calib.npz, checked on their test.npz), and the quantize bench's transformer_bench (4
layers, d_model 128, FFN 256, 64 tokens; seeded weights from bench/quantize/models.py, so its
spectra are flat; calibration: seeded normal inputs). For each pipeline (`fold-batchnorm`, then
`low-rank` with the options of the row), on every result: `onnx.checker` (full check), tract
runs it against the original (`whittle validate`), onnxruntime runs it (output SQNR against the
original's outputs), then the latency. Latency: onnxruntime, 1 intra- and 1 inter-op thread,
all graph optimizations (the default), batch B of the test inputs; original and split model are
timed in alternating blocks (`--rounds` blocks of `--runs` runs each, after a warm-up) so that
load changes hit both alike; the median over all runs is printed, with the load average before
and after. "ort nodes" counts the nodes of onnxruntime's optimized graph (MatMul-like ops:
MatMul, FusedMatMul, Gemm, MatMulNBits...).
"""

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ort_timing import timed  # noqa: E402  (bench/ort_timing.py)

ROOT = Path(__file__).resolve().parents[2]
TRAINED = ROOT / "fixtures" / "trained"
sys.path.insert(0, str(ROOT / "bench" / "quantize"))

MATMUL_LIKE = {"MatMul", "FusedMatMul", "Gemm", "MatMulInteger", "QGemm", "Attention", "MultiHeadAttention"}


def session(path, optimized=None):
    o = ort.SessionOptions()
    o.intra_op_num_threads = 1
    o.inter_op_num_threads = 1
    o.log_severity_level = 3
    if optimized:
        o.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])


def sqnr(ref, got):
    ref = np.concatenate([r.ravel() for r in ref]).astype(np.float64)
    got = np.concatenate([g.ravel() for g in got]).astype(np.float64)
    noise = np.sum((ref - got) ** 2)
    return float("inf") if noise == 0 else 10 * np.log10(np.sum(ref**2) / noise)


def model_set(name, work):
    """(model path, calib npz or None, test npz)."""
    if name == "transformer_bench":
        import models  # noqa: PLC0415  (bench/quantize/models.py: torch, export venv)

        path, _ = models.build_bench_model(name, work)
        rng = np.random.default_rng(15)
        calib, test = work / f"{name}.calib.npz", work / f"{name}.test.npz"
        np.savez(calib, x=rng.standard_normal((64, 1, 64, 128)).astype(np.float32))
        np.savez(test, x=rng.standard_normal((64, 1, 64, 128)).astype(np.float32))
        return path, calib, test
    base = TRAINED / name
    return base.with_suffix(".onnx"), Path(f"{base}.calib.npz"), Path(f"{base}.test.npz")


def feed_of(test, batch):
    z = np.load(test)
    return {k: z[k][:batch].reshape(-1, *z[k].shape[2:]) for k in z.files}


def ort_ops(path, work):
    opt = work / (Path(path).stem + ".ort-opt.onnx")
    session(path, optimized=opt)
    g = onnx.load(str(opt)).graph
    c = collections.Counter(n.op_type for n in g.node)
    return c, sum(c.values())




def load():
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--whittle", default=str(ROOT / "target/debug/whittle"))
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--batches", type=int, nargs="*", default=[1, 32])
    ap.add_argument("--models", nargs="*", default=["digits_transformer", "bert_tiny", "transformer_bench"])
    ap.add_argument(
        "--configs",
        nargs="*",
        default=[
            "target: { params: 0.5 }",
            "target: { params: 0.5 }, round_to: 8",
            "ratio: 0.5",
            "ratio: 0.5, round_to: 8",
            "target: { params: 0.5 }, round_to: 8, min_saving: 0.4",
        ],
    )
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="low-rank-latency-"))
    print(f"onnxruntime {ort.__version__}, 1 thread; load average before: {load()}; work dir {work}\n")
    rows = []
    for name in args.models:
        path, calib, test = model_set(name, work)
        ref_sess = session(path)
        feeds = {b: feed_of(test, b) for b in args.batches}
        ref_out = ref_sess.run(None, feeds[max(args.batches)])
        ops0, n0 = ort_ops(path, work)
        for cfg in args.configs:
            pipe = work / "p.yaml"
            pipe.write_text(f"version: 1\npasses:\n  - fold-batchnorm\n  - low-rank: {{ {cfg} }}\n")
            out, rep = work / f"{name}.lr.onnx", work / f"{name}.lr.json"
            cmd = [args.whittle, "run", str(pipe), "--input", str(path), "--output", str(out), "--report", str(rep)]
            if calib:
                cmd += ["--data", str(calib)]
            run = subprocess.run(cmd, capture_output=True, text=True)
            if run.returncode != 0:
                rows.append({"model": name, "cfg": cfg, "error": (run.stderr.strip().splitlines() or ["failed"])[-1]})
                continue
            onnx.checker.check_model(str(out), full_check=True)
            tract = subprocess.run(
                [args.whittle, "validate", str(path), str(out), "--data", str(test), "--threads", "1"],
                capture_output=True,
                text=True,
            )
            lr = next(p for p in json.loads(rep.read_text())["passes"] if p["name"] == "low-rank")
            c = lr["report"]["counters"]
            details = [d for d in lr["report"]["details"] if d.get("split")]
            # Weights of the split layers = their MACs per row (token) for MatMul/Gemm.
            split_w = (sum(d["params"][0] for d in details), sum(d["params"][1] for d in details))
            sess = session(out)
            got = sess.run(None, feeds[max(args.batches)])
            ops1, n1 = ort_ops(out, work)
            lat = {b: timed([ref_sess, sess], feeds[b], args.rounds, args.runs) for b in args.batches}
            rows.append({
                "model": name,
                "cfg": cfg,
                "params": (c["params_before"], c["params_after"]),
                "split": c["layers_split"],
                "kept": c["layers_kept"],
                "ranks": [d["rank"] for d in details],
                "split_w": split_w,
                "sqnr": sqnr(ref_out, got),
                "tract": "yes" if tract.returncode == 0 else "no: " + (tract.stderr.strip().splitlines() or ["?"])[-1],
                "lat": lat,
                "ort": (n0, n1, sum(v for k, v in ops0.items() if k in MATMUL_LIKE), sum(v for k, v in ops1.items() if k in MATMUL_LIKE)),
                "ops1": {k: v for k, v in ops1.items() if k in MATMUL_LIKE or k not in ops0 or ops0[k] != v},
                "ops0": {k: v for k, v in ops0.items() if k in MATMUL_LIKE or k not in ops1 or ops1[k] != v},
            })
    print(f"load average after: {load()}\n")
    bs = args.batches
    head = " | ".join(f"ort ms batch {b} before → after (ratio)" for b in bs)
    print(f"| model | low-rank | split / kept | ranks | params of candidates before → after | weights of the split layers (= MACs per token) | SQNR vs original (dB, ort) | tract | {head} | ort optimized nodes (MatMul-like) before → after |")
    print("|---|---|---|---|---|---|---|---|" + "---|" * len(bs) + "---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['model']} | {r['cfg']} | error: {r['error']} |" + " |" * (7 + len(bs)))
            continue
        p0, p1 = r["params"]
        m = r["split_w"]
        ms = f"{m[0]:,} → {m[1]:,} ({m[1] / max(m[0], 1):.2f})"
        lat = " | ".join(f"{r['lat'][b][0]:.3f} → {r['lat'][b][1]:.3f} ({r['lat'][b][1] / r['lat'][b][0]:.2f})" for b in bs)
        n0, n1, mm0, mm1 = r["ort"]
        print(
            f"| {r['model']} | {r['cfg']} | {r['split']} / {r['kept']} | {','.join(map(str, r['ranks']))} | {p0:,} → {p1:,} ({p1 / max(p0, 1):.2f}) | {ms} "
            f"| {r['sqnr']:.2f} | {r['tract']} | {lat} | {n0} ({mm0}) → {n1} ({mm1}) |"
        )
    print("\nonnxruntime's optimized graph, op types that differ (before → after):")
    for r in rows:
        if "error" not in r:
            print(f"  {r['model']} [{r['cfg']}]: {r['ops0']} → {r['ops1']}")


if __name__ == "__main__":
    main()
