"""Benchmarks whittle's `quantize` pass against onnxruntime's `quantize_static`.

From the repository root, after `cargo build --release`:

    .venv-export/bin/python bench/quantize/run.py --whittle target/release/whittle

For every model (two seeded PyTorch exports, four committed fixtures and five trained models
from PyPI packages, see models.py and fetch.py) it quantizes the float model to int8 QDQ with

- onnxruntime: quantize_static(QDQ, per-channel int8 weights, uint8 activations, MinMax
  calibration over calib.npz), timed around the call, without quant_pre_process;
- whittle: `whittle run int8[-METHOD].yaml --input M --output M' --data calib.npz`, one
  subprocess per calibration method (minmax, percentile, entropy, mse), timed around the
  subprocess, and the same with every other pipeline file given to --whittle-configs (by
  default every other bench/quantize/int8-NAME.yaml, as the row `whittle NAME`);

A model whittle cannot quantize as shipped has a prelude (models.py's PRELUDES): passes run
before every whittle pipeline for it, e.g. for the silero_vad models a `specialize` pass that
pins `sr` to 16000 and fixes the input shapes, so that their If nodes fold away. For such a
model, each whittle row runs a composed pipeline file, the prelude's passes followed by the
config's, written to build/out/<model>/whittle-NAME.pipeline.yaml (and copied into the row's
.log); whittle calibrates on calib.whittle.npz, calib.npz without the pinned inputs, and its
int8 model is run on the held-out samples without them (every model is fed exactly the inputs
it declares). The data is checked to hold the pinned values. onnxruntime's quantize_static
and the float reference get the model as shipped and all inputs.

then runs the float model and every int8 model in onnxruntime (CPU provider, default graph
optimizations, one thread) over heldout.npz and reports, per (model, quantizer): quantization
time, file size, SQNR of the first output against the float model, top-1 agreement (when the
output is class scores), single-sample latency, and how many of the float model's
Conv/MatMul/Gemm became integer kernels in onnxruntime's optimized graph, and for whittle the
share of MACs its report counts as int8. The table goes to
stdout and to --out (default bench/quantize/results.md). A quantizer that fails on a model
gets its error in the row; the script exits 1 at the end if anything failed.
"""

import argparse
import datetime
import json
import logging
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
import models as bench_models  # noqa: E402

# whittle calibration method -> pipeline file (they differ only in calibration.method).
WHITTLE_PIPELINES = {
    "minmax": HERE / "int8.yaml",
    "percentile": HERE / "int8-percentile.yaml",
    "entropy": HERE / "int8-entropy.yaml",
    "mse": HERE / "int8-mse.yaml",
}
# Every other int8-NAME.yaml beside this script: an extra whittle row, `whittle NAME`.
EXTRA_PIPELINES = {
    path.stem.removeprefix("int8-"): path
    for path in sorted(HERE.glob("int8-*.yaml"))
    if path not in WHITTLE_PIPELINES.values()
}
ORT_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "percentile": CalibrationMethod.Percentile,
    "entropy": CalibrationMethod.Entropy,
}
# onnxruntime's quantize_dynamic rows (no calibration data): its default (per-tensor weights)
# and per_channel=True. Both int8 weights, uint8 per-run activations (DynamicQuantizeLinear).
ORT_DYNAMIC = {"dynamic": False, "dynamic-pc": True}
# Float ops whose integer counterparts the "int kernels" column counts.
FLOAT_KERNELS = {"Conv", "MatMul", "Gemm"}
INTEGER_KERNELS = {"QLinearConv", "QLinearMatMul", "MatMulIntegerToFloat", "ConvInteger", "QGemm", "MatMulInteger", "DynamicQuantizeMatMul"}
# Quantization nodes: the static pairs and the per-run quantizer of dynamic scaling.
QDQ_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}


# ---------------------------------------------------------------------------------------------
# Quantizers


class NpzReader(CalibrationDataReader):
    """Feeds onnxruntime's calibrator one sample at a time from a sample-first .npz."""

    def __init__(self, path):
        with np.load(path) as archive:
            self.arrays = {name: archive[name] for name in archive.files}
        self.count = len(next(iter(self.arrays.values())))
        self.index = 0

    def get_next(self):
        if self.index >= self.count:
            return None
        sample = {name: np.asarray(array[self.index]) for name, array in self.arrays.items()}
        self.index += 1
        return sample

    def rewind(self):
        self.index = 0

    def __len__(self):
        return self.count


class CollectLogs(logging.Handler):
    """Keeps the messages onnxruntime's quantizer logs, to print them once after the table."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def quantize_with_ort(model, calib, output, method):
    """Runs quantize_static with the comparison's settings, or quantize_dynamic for the methods
    of ORT_DYNAMIC (default options but per_channel); returns (seconds, logged messages)."""
    handler = CollectLogs()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        start = time.perf_counter()
        if method in ORT_DYNAMIC:
            quantize_dynamic(str(model), str(output), per_channel=ORT_DYNAMIC[method], weight_type=QuantType.QInt8)
        else:
            quantize_static(
                str(model),
                str(output),
                NpzReader(calib),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=ORT_METHODS[method],
            )
        seconds = time.perf_counter() - start
    finally:
        root.removeHandler(handler)
    return seconds, handler.messages


def flow_yaml(value):
    """A JSON-like value as one line of YAML flow style: `{ sr: 16000, shapes: { x: [1, 576] } }`."""
    if isinstance(value, dict):
        items = ", ".join(f"{flow_key(key)}: {flow_yaml(item)}" for key, item in value.items())
        return f"{{ {items} }}" if items else "{}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(flow_yaml(item) for item in value) + "]"
    return json.dumps(value)  # numbers, booleans (true/false), null and quoted strings are YAML too


def flow_key(key):
    return key if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", key) else json.dumps(key)


def prelude_items(prelude):
    """The prelude's passes as `passes:` list items (without indentation), one line each."""
    return [
        f"- {next(iter(spec))}: {flow_yaml(next(iter(spec.values())))}" if isinstance(spec, dict) else f"- {spec}"
        for spec in prelude
    ]


def compose_pipeline(config, prelude, model_name):
    """The text of `config` (a pipeline file) with the prelude's passes first in its `passes:` list.

    The config's text is kept as written (comments included); the prelude's items go right
    after its block-style `passes:` line, at the indentation of its first item. Raises
    RuntimeError for a `passes:` the bench cannot extend (flow style, or none).
    """
    lines = Path(config).read_text().splitlines()
    at = next((i for i, line in enumerate(lines) if re.fullmatch(r"passes:\s*(#.*)?", line)), None)
    if at is None:
        raise RuntimeError(f"{shown_path(config)}: no block-style `passes:` line to put the prelude of {model_name} in")
    following = next((line for line in lines[at + 1 :] if line.strip() and not line.lstrip().startswith("#")), "")
    indent = re.match(r"\s*", following).group() if following.lstrip().startswith("-") else "  "
    inserted = [f"{indent}# prelude of {model_name} (bench/quantize/models.py PRELUDES)"]
    inserted += [indent + item for item in prelude_items(prelude)]
    inserted += [f"{indent}# {shown_path(config)}"]
    head = [f"# composed by bench/quantize/run.py: the prelude of {model_name}, then {shown_path(config)}"]
    return "\n".join(head + lines[: at + 1] + inserted + lines[at + 1 :]) + "\n"


def quantize_with_whittle(whittle, pipeline, model, calib, output, timeout):
    """Runs `whittle run`; returns seconds, or raises RuntimeError with whittle's last error line.

    The full stdout and stderr go to OUTPUT.log beside the output model (after the pipeline
    file's text when the bench composed it, OUTPUT.pipeline.yaml), and the run report to
    OUTPUT.report.json.
    """
    command = [
        str(whittle), "run", str(pipeline), "--input", str(model), "--output", str(output),
        "--data", str(calib), "--report", str(output.with_suffix(".report.json")),
    ]  # fmt: skip
    if not Path(whittle).is_file():
        raise RuntimeError(f"no whittle binary at {whittle}")
    output.unlink(missing_ok=True)
    output.with_suffix(".report.json").unlink(missing_ok=True)
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired as timed_out:
        raise RuntimeError(f"timed out after {timeout} s") from timed_out
    seconds = time.perf_counter() - start
    composed = ""
    if Path(pipeline) == output.with_suffix(".pipeline.yaml"):
        composed = f"$ cat {pipeline}\n{Path(pipeline).read_text()}"
    output.with_suffix(".log").write_text(f"{composed}$ {shlex.join(command)}\n{done.stdout}{done.stderr}")
    if done.returncode != 0 or not output.is_file():
        lines = [line.strip() for line in done.stderr.splitlines() if line.strip()] or [f"exit code {done.returncode}"]
        raise RuntimeError(next((line for line in lines if line.startswith("error")), lines[-1]))
    return seconds


def target_detail(report_path):
    """The `kind: target` detail of the (last) quantize pass in a run report, or None."""
    try:
        passes = json.loads(Path(report_path).read_text())["passes"]
        details = [p for p in passes if p["name"] == "quantize"][-1]["report"]["details"]
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None
    return next((d for d in details if d.get("kind") == "target"), None)


def first_samples(path, count, into):
    """The first `count` samples of the .npz at `path`, written to `into` (the samples a target
    search used when `target.holdout` kept the last ones out); `path` itself when that is all."""
    with np.load(path) as archive:
        arrays = {name: archive[name] for name in archive.files}
    if all(len(a) == count for a in arrays.values()):
        return Path(path)
    bench_models.write_npz(into, {name: a[:count] for name, a in arrays.items()})
    return into


def check_target(whittle, original, output, calib, report_path):
    """Must-shows 1 and 2 of issue 13 for a row whose pipeline has a target: the final figure the
    report gives (the written model on the samples the search used), `whittle validate ORIGINAL
    OUTPUT --data SAME_SAMPLES --json` on those samples, and the report's own verdict. `original`
    is the pass's input model (the model as shipped, or the prelude's output). Returns a dict,
    empty when the row has no target."""
    detail = target_detail(report_path)
    if detail is None or "written_model" not in detail:
        return {}
    written = detail["written_model"]
    found = {
        "target": detail["target"],
        "met": detail["met"],
        "reported_sqnr": written.get("sqnr_db"),
        "reported_samples": written.get("samples"),
        "report_heldout_sqnr": (detail.get("held_out") or {}).get("sqnr_db"),
        "search_sqnr": detail["search"].get("sqnr_db"),
        "search_lower_bound": detail["search"].get("sqnr_db_lower_bound"),
    }
    data = first_samples(calib, written["samples"], output.with_suffix(".search-samples.npz"))
    verdict = output.with_suffix(".validate.json")
    command = [str(whittle), "validate", str(original), str(output), "--data", str(data), "--json", str(verdict)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0 or not verdict.is_file():
        found["validate_error"] = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        return found
    outputs = json.loads(verdict.read_text())["outputs"]
    values = [o["sqnr_db"] for o in outputs]
    found["validate_sqnr"] = min((float("inf") if v is None else v) for v in values)
    found["validate_command"] = shlex.join(os.path.relpath(c, ROOT) if c.startswith(str(ROOT)) else c for c in command)
    match = re.search(r"SQNR >= ([0-9.]+) dB", detail["target"])
    found["min_sqnr"] = float(match.group(1)) if match else None
    return found


def int8_mac_share(report_path):
    """macs_int8 / macs_total from the (last) quantize pass's counters in a run report, or None.

    (An `int8_mac_share` counter, if the report has one instead, is taken as is.) The quantize
    pass is found by name: a prelude's passes come first.
    """
    try:
        passes = json.loads(Path(report_path).read_text())["passes"]
        counters = [p for p in passes if p["name"] == "quantize"][-1]["report"]["counters"]
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None
    if "int8_mac_share" in counters:
        return float(counters["int8_mac_share"])
    if counters.get("macs_total") and "macs_int8" in counters:
        return counters["macs_int8"] / counters["macs_total"]
    return None


# ---------------------------------------------------------------------------------------------
# Measurements


def session(path, level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL, optimized_path=None):
    """A one-thread CPU session (default optimization level unless told otherwise)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = level
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def load_samples(path):
    """The .npz as a list of feeds, one per sample."""
    with np.load(path) as archive:
        arrays = {name: archive[name] for name in archive.files}
    count = len(next(iter(arrays.values())))
    return [{name: np.asarray(array[i]) for name, array in arrays.items()} for i in range(count)]


def feed_for(sess, sample):
    """The sample's arrays for the inputs the session's model declares (a specialized model
    lacks its pinned inputs); raises if the sample lacks one of them."""
    names = [value.name for value in sess.get_inputs()]
    missing = [name for name in names if name not in sample]
    if missing:
        raise RuntimeError(f"the model wants inputs {missing} the data does not have")
    return {name: sample[name] for name in names}


def first_outputs(sess, samples):
    """The first output for every sample, stacked: [samples, *output shape]."""
    name = sess.get_outputs()[0].name
    return np.stack([sess.run([name], feed_for(sess, feed))[0] for feed in samples]).astype(np.float64)


def latencies_ms(sessions, sample, runs, warmup, chunk=10):
    """Median single-sample run time of every session, in ms, measured interleaved.

    Each session first runs `warmup` times untimed; then the sessions take turns, `chunk`
    timed runs each, until each has `runs`. Interleaving spreads any load from other
    processes over all of them alike, so the rows of one model stay comparable. Each session
    gets the sample's arrays for the inputs its model declares.
    """
    feeds = [feed_for(sess, sample) for sess in sessions]
    for sess, feed in zip(sessions, feeds):
        for _ in range(warmup):
            sess.run(None, feed)
    times = [[] for _ in sessions]
    while len(times[0]) < runs:
        for sess, feed, mine in zip(sessions, feeds, times):
            for _ in range(min(chunk, runs - len(mine))):
                start = time.perf_counter()
                sess.run(None, feed)
                mine.append(time.perf_counter() - start)
    return [1000 * statistics.median(mine) for mine in times]


def sqnr_db(reference, outputs):
    """10 log10(sum ref^2 / sum (ref - x)^2) over every sample and element."""
    noise = float(np.sum((reference - outputs) ** 2))
    signal = float(np.sum(reference**2))
    return float("inf") if noise == 0 else 10 * np.log10(signal / noise)


def cosine(reference, outputs):
    """a.b / (|a| |b|) over every sample and element (`whittle validate`'s cosine); 1 for two zeros."""
    a, b = reference.ravel(), outputs.ravel()
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    return 1.0 if norms == 0 else float(np.dot(a, b)) / norms


def looks_like_scores(reference):
    """Class scores: each sample's output is [1, classes] with at least two classes."""
    return reference.ndim == 3 and reference.shape[1] == 1 and reference.shape[2] >= 2


def top1_agreement(reference, outputs):
    return float(np.mean(np.argmax(reference, axis=-1) == np.argmax(outputs, axis=-1)))


def tensors_of(graph):
    """Every TensorProto in a graph: initializers and node attributes, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from tensors_of(attribute.g)
            for subgraph in attribute.graphs:
                yield from tensors_of(subgraph)


def file_bytes(path):
    """Bytes on disk of a model: the .onnx file plus every external data file it names."""
    model = onnx.load(str(path), load_external_data=False)
    files = {Path(path)}
    for tensor in tensors_of(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            location = next(entry.value for entry in tensor.external_data if entry.key == "location")
            files.add(Path(path).parent / location)
    return sum(f.stat().st_size for f in files)


def op_counts(path):
    counts = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def integer_kernels(path, optimized_path):
    """Integer kernels in onnxruntime's EXTENDED-optimized graph of `path` (saved to optimized_path)."""
    session(path, ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, optimized_path)
    counts = op_counts(optimized_path)
    return sum(n for op, n in counts.items() if op in INTEGER_KERNELS)


def measure(path, samples, reference, optimized_path, pinned=(), labels=None):
    """Every column of one row but latency, for a model that exists; also its session and outputs.

    `pinned`: the inputs the model is expected to lack (those a prelude pinned); any other
    input of the data it lacks is an error, as is a pinned input it still has. `labels`: the
    held-out samples' classes, if the model has them (top-1 vs labels, also of fp32).
    """
    sess = session(path)
    declared = {value.name for value in sess.get_inputs()}
    dropped = set(samples[0]) - declared
    if dropped != set(pinned):
        raise RuntimeError(f"the model's inputs are {sorted(declared)}; the data has {sorted(samples[0])}, pinned: {sorted(pinned)}")
    outputs = first_outputs(sess, samples)
    counts = op_counts(path)
    row = {
        "size_kb": file_bytes(path) / 1000,
        "qdq": sum(n for op, n in counts.items() if op in QDQ_OPS),
        "int_kernels": integer_kernels(path, optimized_path),
    }
    if reference is not None and row["qdq"] == 0:
        row["note"] = "nothing quantized: no QuantizeLinear/DequantizeLinear/DynamicQuantizeLinear in the model"
    if reference is not None:
        row["sqnr"] = sqnr_db(reference, outputs)
        row["cosine"] = cosine(reference, outputs)
        if looks_like_scores(reference):
            row["top1"] = top1_agreement(reference, outputs)
    if labels is not None and looks_like_scores(outputs):
        row["accuracy"] = float(np.mean(np.argmax(outputs[:, 0], axis=-1) == labels))
    return row, outputs, sess


# ---------------------------------------------------------------------------------------------
# One model


def prelude_pipeline(prelude, model_name):
    """A pipeline file's text with only the prelude's passes (the `whittle prelude` row)."""
    items = "\n".join("  " + item for item in prelude_items(prelude))
    return f"# composed by bench/quantize/run.py: the prelude of {model_name} alone\nversion: 1\npasses:\n{items}\n"


def bench_model(name, paths, args, log):
    """All rows of one model: fp32, onnxruntime's int8 and whittle's int8 per method.

    A model with a prelude gets one more row first, `whittle prelude`: the float model after
    the prelude's passes alone. Its Conv/MatMul/Gemm count is the "int kernels" denominator of
    the whittle rows (a specialized graph has the taken branch's kernels in its main graph).
    """
    out_dir = args.build / "out" / name
    out_dir.mkdir(parents=True, exist_ok=True)
    samples = load_samples(paths["heldout"])
    model = paths["model"]
    prelude = paths["prelude"]
    pinned = bench_models.pinned_inputs(prelude)
    floats = sum(n for op, n in op_counts(model).items() if op in FLOAT_KERNELS)
    whittle_floats = floats  # the prelude's output's count once the `whittle prelude` row has it
    rows = []

    labels = paths.get("labels")
    fp32, reference, sess = measure(model, samples, None, out_dir / "fp32.ort-opt.onnx", labels=labels)
    rows.append({"model": name, "quantizer": "fp32", "floats": floats, "scores": looks_like_scores(reference), **fp32})
    sessions = [(rows[0], sess)]
    log(f"{name}: fp32 measured")

    variants = [(f"onnxruntime {m}", f"ort-{m}", m) for m in args.ort_methods]
    variants += [("whittle prelude", "whittle-prelude", None)] if prelude else []
    variants += [(f"whittle {m}", f"whittle-{m}", WHITTLE_PIPELINES[m]) for m in args.methods]
    variants += [(f"whittle {n}", f"whittle-{n}", path) for n, path in args.whittle_configs.items()]
    for label, stem, method in variants:
        row = {"model": name, "quantizer": label, "floats": floats if label.startswith("onnxruntime") else whittle_floats}
        output = out_dir / f"{stem}.onnx"
        try:
            if label.startswith("onnxruntime"):
                times = []
                for _ in range(args.repeat):
                    seconds, messages = quantize_with_ort(model, paths["calib"], output, method)
                    times.append(seconds)
                row["time_s"] = statistics.median(times)
                args.ort_messages.update(dict.fromkeys(messages))
            else:  # `method` is the pipeline file
                pipeline = method
                if prelude:
                    pipeline = output.with_suffix(".pipeline.yaml")
                    text = prelude_pipeline(prelude, name) if method is None else compose_pipeline(method, prelude, name)
                    pipeline.write_text(text)
                    log(f"{name}: {label}: pipeline {shown_path(pipeline)} (prelude + {shown_path(method) if method else 'nothing'}), data {shown_path(paths['whittle_calib'])}")
                row["time_s"] = statistics.median(
                    quantize_with_whittle(args.whittle, pipeline, model, paths["whittle_calib"], output, args.timeout)
                    for _ in range(args.repeat)
                )
                row["int8_macs"] = int8_mac_share(output.with_suffix(".report.json"))
                if method is not None:
                    original = out_dir / "whittle-prelude.onnx" if prelude else model
                    row["target"] = check_target(args.whittle, original, output, paths["whittle_calib"], output.with_suffix(".report.json"))
        except Exception as error:  # noqa: BLE001  (any failure becomes the row's note)
            row["error"] = f"{label.split()[0]} failed: {error}"
            rows.append(row)
            log(f"{name}: {label}: {row['error']}")
            continue
        try:
            expected_missing = pinned if label.startswith("whittle") else {}
            measured, _, sess = measure(output, samples, reference, out_dir / f"{stem}.ort-opt.onnx", expected_missing, labels)
            row.update(measured)
            sessions.append((row, sess))
            if method is None:  # the `whittle prelude` row
                whittle_floats = sum(n for op, n in op_counts(output).items() if op in FLOAT_KERNELS)
                row["floats"] = whittle_floats
                row["note"] = "float: the prelude's passes only, no quantize"
        except Exception as error:  # noqa: BLE001
            row["error"] = f"onnxruntime could not run the int8 model: {error}"
        rows.append(row)
        log(f"{name}: {label}: " + (row.get("error") or f"{row['sqnr']:.2f} dB in {row['time_s']:.2f} s"))
    measured = latencies_ms([sess for _, sess in sessions], samples[0], args.latency_runs, args.warmup)
    for (row, _), milliseconds in zip(sessions, measured):
        row["latency_ms"] = milliseconds
    log(f"{name}: latency measured")
    return rows


# ---------------------------------------------------------------------------------------------
# Report


def cpu_model():
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def git_revision():
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True)
        return head.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")
    except OSError:
        return "unknown"


def whittle_version(whittle):
    try:
        done = subprocess.run([str(whittle), "--version"], capture_output=True, text=True, timeout=30)
        return done.stdout.strip() or "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return f"not found at {whittle}"


def versions():
    import torch  # noqa: PLC0415  (models.py imported it already)

    return f"onnxruntime {ort.__version__}, onnx {onnx.__version__}, torch {torch.__version__}, numpy {np.__version__}, Python {platform.python_version()}"


def reproduce_command():
    python = os.path.relpath(sys.executable, ROOT) if sys.executable.startswith(str(ROOT)) else sys.executable
    return shlex.join([python, os.path.relpath(Path(__file__).resolve(), ROOT), *sys.argv[1:]])


def shown_path(path):
    """A path relative to the repository root when it is inside it, else absolute."""
    return os.path.relpath(path, ROOT) if Path(path).is_relative_to(ROOT) else str(path)


def prelude_lines(prepared):
    """One header line per model with a prelude: its passes, as in the composed pipeline files."""
    return [
        f"- prelude of `{name}` (before every whittle pipeline; whittle gets `{shown_path(paths['whittle_calib'])}`): "
        + "; ".join(f"`{item[2:]}`" for item in prelude_items(paths["prelude"]))
        for name, paths in prepared.items()
        if paths["prelude"]
    ]


def header(args, load_before, load_after, prepared):
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join([
        "# whittle quantize vs onnxruntime quantize_static",
        "",
        f"- date: {date}; whittle: {whittle_version(args.whittle)} at git {git_revision()}",
        f"- machine: {cpu_model()}, {os.cpu_count()} cores ({len(os.sched_getaffinity(0))} usable), Linux {platform.release()}",
        f"- load average (1 min) before / after: {load_before:.2f} / {load_after:.2f} (the machine may be shared)",
        f"- versions: {versions()}",
        f"- samples: {args.calib_samples} calibration, {args.heldout_samples} held-out (disjoint seeded draws, batch 1)",
        f"- quantization time: median of {args.repeat} runs per quantizer\n"
        f"- latency: median of {args.latency_runs} single-sample runs after {args.warmup} warm-up runs, "
        "the variants of a model interleaved; onnxruntime CPU provider, default optimizations (ORT_ENABLE_ALL), 1 thread",
        "- settings: QDQ, int8 per-channel weights, uint8 activations; onnxruntime without quant_pre_process",
        *[f"- row `whittle {name}`: `{shown_path(path)}`" for name, path in args.whittle_configs.items()],
        *prelude_lines(prepared),
        f"- reproduce (from the repository root): `{reproduce_command()}`",
        "",
    ])  # fmt: skip


def shorten(note, limit=300):
    """A note fit for one table cell: one line, pipes escaped, at most `limit` characters."""
    note = " ".join(note.split()).replace("|", "\\|")
    return note if len(note) <= limit else note[: limit - 1] + "…"


def cell(value, fmt):
    return "—" if value is None else fmt.format(value)


def table(rows):
    lines = [
        "| model | quantizer | time (s) | size (KB) | SQNR (dB) | cosine | top-1 | top-1 vs labels | latency (ms) | int kernels | int8 MACs | Q/DQ nodes | notes |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for row in rows:
        is_ref = row["quantizer"] == "fp32"
        failed = "error" in row
        kernels = None if failed else f"{row['int_kernels']}/{row['floats']}"
        lines.append("| " + " | ".join([
            row["model"],
            row["quantizer"],
            cell(row.get("time_s"), "{:.2f}"),
            cell(row.get("size_kb"), "{:.1f}"),
            "ref" if is_ref else cell(row.get("sqnr"), "{:.2f}"),
            "ref" if is_ref else cell(row.get("cosine"), "{:.6f}"),
            ("ref" if row["scores"] else "—") if is_ref else cell(row.get("top1"), "{:.1%}"),
            cell(row.get("accuracy"), "{:.1%}"),
            cell(row.get("latency_ms"), "{:.3f}"),
            cell(kernels, "{}"),
            "" if row.get("int8_macs") is None else f"{row['int8_macs']:.1%}",
            cell(row.get("qdq"), "{}"),
            shorten(row.get("error", row.get("note", ""))),
        ]) + " |")  # fmt: skip
    return "\n".join(lines)


def target_table(rows):
    """Issue 13, must-shows 1 and 2: for every row with a target, the figure the report gives,
    `whittle validate` on the same samples, their difference, and the held-out SQNR
    (onnxruntime, heldout.npz) against the target."""
    lines = [
        "| model | quantizer | target | search: SQNR, 95% lower bound | reported: SQNR (samples) | `whittle validate` same samples | Δ | report: met | report: held-out part | held-out SQNR (onnxruntime) | met on held-out | int8 MACs |",
        "|---|---|---|--:|--:|--:|--:|---|--:|--:|---|--:|",
    ]
    for row in rows:
        t = row.get("target") or {}
        if not t:
            continue
        delta = None
        if t.get("validate_sqnr") is not None and t.get("reported_sqnr") is not None:
            delta = t["validate_sqnr"] - t["reported_sqnr"]
        held = row.get("sqnr")
        met_held = "—" if held is None or t.get("min_sqnr") is None else ("yes" if held >= t["min_sqnr"] else "**no**")
        lines.append("| " + " | ".join([
            row["model"],
            row["quantizer"],
            t["target"],
            f"{cell(t.get('search_sqnr'), '{:.2f}')}, {cell(t.get('search_lower_bound'), '{:.2f}')}",
            f"{cell(t.get('reported_sqnr'), '{:.2f}')} ({t.get('reported_samples')})",
            t.get("validate_error") or cell(t.get("validate_sqnr"), "{:.2f}"),
            cell(delta, "{:+.3f}"),
            "met" if t["met"] else "**NOT met**",
            cell(t.get("report_heldout_sqnr"), "{:.2f}"),
            cell(held, "{:.2f}"),
            met_held,
            "" if row.get("int8_macs") is None else f"{row['int8_macs']:.1%}",
        ]) + " |")  # fmt: skip
    return "\n".join(lines) if len(lines) > 2 else ""


def best_methods(rows):
    """Per model: the quantized whittle row with the highest SQNR, and its dB difference vs onnxruntime minmax."""
    lines = []
    for model in dict.fromkeys(row["model"] for row in rows):
        ran = [r for r in rows if r["model"] == model and r["quantizer"].startswith("whittle") and "sqnr" in r]
        mine = [r for r in ran if r["qdq"] > 0]  # an unquantized model's inf dB wins nothing
        ort_row = next((r for r in rows if r["model"] == model and r["quantizer"] == "onnxruntime minmax"), None)
        if not mine:
            lines.append(f"- {model}: " + ("no whittle row quantized anything" if ran else "no whittle result"))
            continue
        best = max(mine, key=lambda r: r["sqnr"])
        text = f"- {model}: best whittle row {best['quantizer'].split()[1]}, {best['sqnr']:.2f} dB"
        if ort_row is not None and "sqnr" in ort_row and np.isfinite(best["sqnr"] - ort_row["sqnr"]):
            text += f", {best['sqnr'] - ort_row['sqnr']:+.2f} dB vs onnxruntime minmax ({ort_row['sqnr']:.2f} dB)"
        lines.append(text)
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------


def whittle_config(spec, parser):
    """NAME=PATH -> (NAME, absolute PATH), PATH relative to the working directory."""
    name, _, path = spec.partition("=")
    if not name or not path or " " in name:
        parser.error(f"--whittle-configs: {spec!r} is not NAME=PATH")
    if name in WHITTLE_PIPELINES:
        parser.error(f"--whittle-configs: {name!r} is a calibration method already (see --methods)")
    if name == "prelude":
        parser.error("--whittle-configs: 'prelude' names the row of a model's prelude alone")
    path = Path(path).resolve()
    if not path.is_file():
        parser.error(f"--whittle-configs: no file {path}")
    return name, path


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--whittle", type=Path, default=Path("target/release/whittle"), help="whittle binary (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=HERE / "results.md", help="markdown output (default: bench/quantize/results.md)")
    parser.add_argument("--build", type=Path, default=bench_models.DEFAULT_BUILD, help="models, data and outputs (default: bench/quantize/build)")
    parser.add_argument("--models", nargs="*", help="only these models (default: all)")
    parser.add_argument("--methods", nargs="*", default=list(WHITTLE_PIPELINES), choices=list(WHITTLE_PIPELINES), help="whittle calibration methods (default: all)")
    parser.add_argument(
        "--whittle-configs", nargs="*", default=[f"{n}={p}" for n, p in EXTRA_PIPELINES.items()], metavar="NAME=PATH",
        help="more whittle pipeline files, one row `whittle NAME` each (default: every bench/quantize/int8-NAME.yaml "
        "that is not one of the four method files; the option without values: none)",
    )
    parser.add_argument("--ort-methods", nargs="*", default=["minmax"], choices=[*ORT_METHODS, *ORT_DYNAMIC], help="onnxruntime calibration methods of quantize_static, or dynamic / dynamic-pc for quantize_dynamic (default / per_channel=True) (default: minmax, the comparison's)")
    parser.add_argument("--calib-samples", type=int, default=bench_models.CALIB_SAMPLES)
    parser.add_argument("--heldout-samples", type=int, default=bench_models.HELDOUT_SAMPLES)
    parser.add_argument("--latency-runs", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3, help="quantize each model this many times; the median time is reported (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds allowed per whittle run")
    args = parser.parse_args()
    args.whittle = args.whittle if args.whittle.is_absolute() else Path.cwd() / args.whittle
    args.build = args.build.resolve()
    args.whittle_configs = dict(whittle_config(spec, parser) for spec in args.whittle_configs)
    args.ort_messages = {}  # an ordered set of onnxruntime's log messages
    return args


def main():
    args = parse_args()
    ort.set_default_logger_severity(3)  # the session's own warnings (e.g. unused initializers)
    load_before = os.getloadavg()[0]
    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    prepared = bench_models.prepare(args.build, args.calib_samples, args.heldout_samples, args.models, log)
    rows = []
    for name, paths in prepared.items():
        rows += bench_model(name, paths, args, log)
    report = "\n".join([
        header(args, load_before, os.getloadavg()[0], prepared),
        table(rows),
        "",
        "Best whittle row per model (highest SQNR):",
        "",
        best_methods(rows),
        "",
    ])  # fmt: skip
    targets = target_table(rows)
    if targets:
        report += "\n".join([
            "",
            "Rows with an accuracy target: the figure the report gives for the written model on the samples the",
            "search used, `whittle validate ORIGINAL OUTPUT --data SAME_SAMPLES --json` on them (ORIGINAL: the",
            "pass's input model; the commands are in the rows' .validate.json folders), and the held-out SQNR:",
            "",
            targets,
            "",
        ])  # fmt: skip
    print(report)
    args.out.write_text(report)
    if args.ort_messages:
        log("onnxruntime's quantizer logged:\n  " + "\n  ".join(args.ort_messages))
    failures = [row for row in rows if "error" in row]
    if failures:
        log(f"{len(failures)} of {len(rows)} rows failed")
        sys.exit(1)


if __name__ == "__main__":
    main()
