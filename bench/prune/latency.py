"""Channel pruning: onnxruntime latency (1 thread) before → after beside the MACs ratio
(issue 14, must-show 3), and where the time goes (onnxruntime's optimized graph and profile).

Run from the repository root with the export venv, after `cargo build`:

    .venv-export/bin/python bench/prune/latency.py [--whittle target/debug/whittle] [--macs 0.7] \
        [--round-to 1 8] [--rounds 15] [--runs 20] [--models digits_cnn yolo_tiny ppocr_det ppocr_cls ppocr_rec digits_transformer bert_tiny]

Models, inputs and the `specialize` shapes of PP-OCR are channel.py's (its helpers are imported,
not copied); for PP-OCR the "before" model is the specialized one (whittle `specialize` alone),
so that only pruning differs between the two timed models. For each model and each `round_to`, whittle prunes to `target: { macs: M }` (l1
importance, no reconstruction); `onnx.checker` (full check) passes and onnxruntime gives the
original output shapes. Latency: onnxruntime, 1 intra- and 1 inter-op thread, all graph
optimizations, one test input; original and pruned are timed in alternating blocks (`--rounds`
blocks of `--runs` runs each, after a warm-up) so that load changes hit both alike; the median
over all runs is printed, with the load average before and after. Then, per model, the op types
of onnxruntime's optimized graph that differ (with their domain: `com.microsoft.nchwc:Conv` is the
blocked-layout Conv of onnxruntime's NCHWc transformer), and from onnxruntime's profiler (`--profile-runs`
runs each, after 5 warm-up runs) the kernel time per op type before → after (per node the median over the runs, summed) (the op types that take ≥ 5%).
"""

import argparse
import collections
import itertools
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
import channel  # bench/prune/channel.py: models, inputs, the PP-OCR prelude, onnxruntime session

PROFILES = itertools.count()
MODELS = ["digits_cnn", "yolo_tiny", "ppocr_det", "ppocr_cls", "ppocr_rec", "digits_transformer", "bert_tiny"]


def load():
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def model_path(name, work):
    if name in channel.BUILT:
        return channel.build_resnext_tiny(work / f"{name}.onnx")
    path = channel.TRAINED / f"{name}.onnx"
    if path.is_file():
        return path
    from fetch import fetch  # noqa: PLC0415  (bench/quantize/fetch.py; channel.py put it on sys.path)

    return fetch(name, channel.FETCHED, channel.FETCHED.parent / "wheels", log=lambda *_: None)


def specialized(whittle, name, path, sample, work):
    pipe, out = work / f"{name}.spec.yaml", work / f"{name}.spec.onnx"
    pipe.write_text(f"version: 1\npasses:\n  - specialize: {{ shapes: {{ x: {channel.PPOCR_DIMS[name]['shape']} }} }}\n")
    cmd = [whittle, "run", str(pipe), "--input", str(path), "--output", str(out)]
    for k, v in channel.dims_of(path, sample).items():
        cmd += ["--dim", f"{k}={v}"]
    subprocess.run(cmd, check=True, capture_output=True)
    return out


def prune(whittle, name, path, macs, round_to, sample, work):
    pipe = work / f"{name}.yaml"
    pipe.write_text(f"version: 1\npasses:\n  - prune:\n      target: {{ macs: {macs} }}\n      round_to: {round_to}\n")
    out, rep = work / f"{name}.r{round_to}.onnx", work / f"{name}.r{round_to}.json"
    cmd = [whittle, "run", str(pipe), "--input", str(path), "--output", str(out), "--report", str(rep)]
    for k, v in channel.dims_of(path, sample).items():
        cmd += ["--dim", f"{k}={v}"]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError((run.stderr.strip().splitlines() or ["failed"])[-1])
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    c = next(p["report"]["counters"] for p in json.loads(rep.read_text())["passes"] if p["name"] == "prune")
    return out, c


def optimized_ops(path, work):
    o = ort.SessionOptions()
    o.intra_op_num_threads = 1
    o.log_severity_level = 3
    o.optimized_model_filepath = str(work / (Path(path).stem + ".ort.onnx"))
    ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])
    return collections.Counter((n.domain + ":" if n.domain else "") + n.op_type for n in onnx.load(o.optimized_model_filepath).graph.node)


def profile(path, feed, runs, work):
    """Summed kernel microseconds per op type over `runs` runs (onnxruntime's profiler)."""
    o = ort.SessionOptions()
    o.intra_op_num_threads = 1
    o.inter_op_num_threads = 1
    o.log_severity_level = 3
    o.enable_profiling = True
    o.profile_file_prefix = str(work / f"{Path(path).stem}.{next(PROFILES)}")
    s = ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])
    warm = 5
    for _ in range(warm + runs):
        s.run(None, feed)
    file = Path(s.end_profiling())
    for _ in range(20):  # the file can still be being flushed
        try:
            trace = json.loads(file.read_text())
            break
        except json.JSONDecodeError:
            time.sleep(0.5)
    else:
        raise RuntimeError(f"unreadable profile {file}")
    # Only the runs after the warm-up ones (the first runs allocate).
    starts = sorted(e["ts"] for e in trace if e.get("name") == "model_run")
    start = starts[warm] if len(starts) > warm else 0
    # Per node the median over the runs (a shared machine preempts single runs), summed by op type.
    durs, ops = collections.defaultdict(list), {}
    for e in trace:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and e["ts"] >= start:
            durs[e["name"]].append(e["dur"])
            ops[e["name"]] = e["args"]["op_name"]
    per = collections.Counter()
    for node, d in durs.items():
        per[ops[node]] += float(np.median(d))
    return per




def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--whittle", default=str(channel.ROOT / "target" / "debug" / "whittle"))
    ap.add_argument("--macs", type=float, default=0.7)
    ap.add_argument("--round-to", type=int, nargs="*", default=[1, 8])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--profile-runs", type=int, default=20)
    ap.add_argument("--models", nargs="*", default=MODELS)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="prune-latency-"))
    print(f"target: {{ macs: {args.macs} }}, importance l1; onnxruntime {ort.__version__}, 1 thread; load average before: {load()}\n")
    rows, notes = [], []
    for name in args.models:
        path = model_path(name, work)
        feed = channel.samples_of(name, path, 1)[0]
        if name in channel.PPOCR_DIMS:
            # The baseline is the prelude's output (specialize alone): only pruning differs.
            path = specialized(args.whittle, name, path, feed, work)
        ref = channel.session(path)
        ops0, prof0 = optimized_ops(path, work), profile(path, feed, args.profile_runs, work)
        for r in args.round_to:
            try:
                out, c = prune(args.whittle, name, path, args.macs, r, feed, work)
            except RuntimeError as e:
                rows.append(f"| {name} | {r} | error: {e} | | | |")
                continue
            sess = channel.session(out)
            for x, y in zip(ref.run(None, feed), sess.run(None, feed)):
                assert x.shape == y.shape, f"{name}: {y.shape} vs {x.shape}"
            before, after = timed([ref, sess], feed, args.rounds, args.runs)
            m0, m1 = c["macs_before"], c["macs_after"]
            rows.append(
                f"| {name} | {r} | {m0:,} → {m1:,} ({m1 / max(m0, 1):.3f}) | {before:.3f} → {after:.3f} ({after / before:.3f}) "
                f"| {c.get('groups_pruned', '?')} / {c.get('groups_whole', '?')} | {load()} |"
            )
            ops1, prof1 = optimized_ops(out, work), profile(out, feed, args.profile_runs, work)
            diff = {k: f"{ops0.get(k, 0)} → {ops1.get(k, 0)}" for k in sorted(set(ops0) | set(ops1)) if ops0.get(k, 0) != ops1.get(k, 0)}
            t0, t1 = sum(prof0.values()), sum(prof1.values())
            big = sorted((k for k in set(prof0) | set(prof1) if max(prof0.get(k, 0) / max(t0, 1), prof1.get(k, 0) / max(t1, 1)) >= 0.05), key=lambda k: -prof0.get(k, 0))
            per = ", ".join(f"{k} {prof0.get(k, 0):.0f} → {prof1.get(k, 0):.0f}" for k in big)
            notes.append(f"- {name}, round_to {r}: optimized graph {diff or 'same op counts'}; kernel µs/run {t0:.0f} → {t1:.0f} ({per})")
    print(f"load average after: {load()}\n")
    print("| model | round_to | MACs before → after (ratio) | ort latency ms before → after (ratio) | groups pruned / whole | load average at the end |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    print("\nonnxruntime's optimized graph (op types that differ) and profile (kernel time per op type):")
    print("\n".join(notes))


if __name__ == "__main__":
    main()
