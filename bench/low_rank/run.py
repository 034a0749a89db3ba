"""low-rank on trained models: whittle's data-aware split (SVD-LLM whitening) beside plain SVD,
the global target allocation beside a uniform per-layer ratio, and two peers computed in numpy
on the same weights and data at the same ranks per layer: plain truncated SVD, and SVD-LLM's
truncation-aware data whitening (Wang et al. 2024).

Run from the repository root with the export venv, after `cargo build`:

    .venv-export/bin/python bench/low_rank/run.py [--whittle target/debug/whittle] [--fraction 0.5] \
        [--models digits_cnn digits_transformer bert_tiny ppocr_rec]

For each model a prelude (`fold-batchnorm`; for PP-OCR rec first `specialize` to its [1, 3, 48,
320] input) writes the base model every method starts from. Then, for `ratio: F` and
`target: { params: F }`:
- whittle `low-rank` with `data_aware: true` (calibration inputs) and with `data_aware: false`
  (each allocates its own ranks);
- numpy, at the ranks whittle's data-aware run chose per layer, on the same weights:
  "numpy SVD" (truncated `numpy.linalg.svd` of W) and "numpy SVD-LLM": `H = Σ xᵀx` of the
  layer's input rows (onnxruntime runs the base model on the same calibration inputs; im2col
  patches for Conv), `H = L Lᵀ` by Cholesky in float64 (when it fails, shifted by
  `(1e-6 − λ_min)·I`, as SVD-LLM does), SVD of `Lᵀ W` truncated to r, factors
  `A = L⁻ᵀ U_r √Σ_r`, `B = √Σ_r V_rᵀ`. The factors are written into the base model the way whittle
  writes them: MatMul → two MatMuls, Gemm → two Gemms (bias on the second), Conv → a Conv with r
  filters (same kernel, strides, pads, dilations) then a 1×1 Conv with the bias.
Every result passes `onnx.checker` (full check) and runs in onnxruntime (1 thread) on the held-out
inputs: output SQNR against the base model's outputs, top-1 against the labels where the model
has them (PP-OCR rec has none: SQNR only), and whether tract (`whittle validate`) runs it.
Prints a markdown table.
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
from onnx import helper, numpy_helper

ROOT = Path(__file__).resolve().parents[2]
TRAINED = ROOT / "fixtures" / "trained"
FETCHED = ROOT / "bench" / "quantize" / "build" / "models"
sys.path.insert(0, str(ROOT / "bench" / "quantize"))
sys.path.insert(0, str(ROOT / "fixtures"))  # synth.py imports make_fixtures
MODELS = ["digits_cnn", "digits_transformer", "bert_tiny", "ppocr_rec"]
PRELUDE = {"ppocr_rec": "  - specialize: { shapes: { x: [1, 3, 48, 320] } }\n"}


def session(path, outputs=()):
    o = ort.SessionOptions()
    o.intra_op_num_threads = 1
    o.inter_op_num_threads = 1
    o.log_severity_level = 3
    if outputs:
        m = onnx.load(str(path))
        have = {v.name for v in m.graph.output}
        m.graph.output.extend(helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in outputs if n not in have)
        return ort.InferenceSession(m.SerializeToString(), o, providers=["CPUExecutionProvider"])
    return ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])


def samples(npz):
    z = np.load(npz)
    return [{k: z[k][i] for k in z.files} for i in range(len(z[z.files[0]]))]


def run_all(path, feeds):
    s = session(path)
    return [s.run(None, f) for f in feeds]


def sqnr(ref, got):
    r = np.concatenate([o.ravel() for outs in ref for o in outs]).astype(np.float64)
    g = np.concatenate([o.ravel() for outs in got for o in outs]).astype(np.float64)
    noise = np.sum((r - g) ** 2)
    return float("inf") if noise == 0 else 10 * np.log10(np.sum(r * r) / noise)


def top1(outs, labels):
    if labels is None:
        return None
    return float(np.mean([int(np.argmax(o[0])) == int(l) for o, l in zip(outs, labels)]))


def whittle_run(whittle, pipeline, model, out, calib, work):
    pipe, rep = work / "p.yaml", work / "r.json"
    pipe.write_text(f"version: 1\npasses:\n{pipeline}")
    cmd = [whittle, "run", str(pipe), "--input", str(model), "--output", str(out), "--report", str(rep)]
    if calib is not None:
        cmd += ["--data", str(calib)]
    subprocess.run(cmd, check=True, capture_output=True)
    return json.loads(rep.read_text())


# ---- the numpy peers --------------------------------------------------------------------------


def attr(node, name, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def weight_matrix(node, inits):
    """The K×N matrix the split factors (y = x·W), as whittle reshapes it."""
    w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
    if node.op_type == "MatMul":
        return w
    if node.op_type == "Gemm":
        return w.T if attr(node, "transB", 0) else w
    return w.reshape(w.shape[0], -1).T  # Conv: W[(c,i,j), o] = w[o,c,i,j]


def rows_of(node, x):
    """The layer's input rows (im2col patches for a Conv), float64."""
    x = x.astype(np.float64)
    if node.op_type != "Conv":
        return x.reshape(-1, x.shape[-1])
    if attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
        raise SystemExit(f"{node.name}: auto_pad SAME is not handled by the numpy peer")
    kh, kw = attr(node, "kernel_shape", None)
    sh, sw = attr(node, "strides", [1, 1])
    dh, dw = attr(node, "dilations", [1, 1])
    t, l, b, r = attr(node, "pads", [0, 0, 0, 0])
    x = np.pad(x, [(0, 0), (0, 0), (t, b), (l, r)])
    oh = (x.shape[2] - dh * (kh - 1) - 1) // sh + 1
    ow = (x.shape[3] - dw * (kw - 1) - 1) // sw + 1
    cols = np.stack(
        [x[:, :, i * dh : i * dh + sh * (oh - 1) + 1 : sh, j * dw : j * dw + sw * (ow - 1) + 1 : sw] for i in range(kh) for j in range(kw)],
        axis=2,
    )  # N, C, kh·kw, OH, OW
    return cols.transpose(0, 3, 4, 1, 2).reshape(-1, x.shape[1] * kh * kw)


def second_moments(base, nodes, calib):
    s = session(base, outputs=[n.input[0] for n in nodes])
    names = [o.name for o in s.get_outputs()]
    h = {n.name: 0.0 for n in nodes}
    for feed in calib:
        outs = dict(zip(names, s.run(None, feed)))
        for n in nodes:
            x = rows_of(n, outs[n.input[0]])
            h[n.name] = h[n.name] + x.T @ x
    return h


def factor(w, r, h=None):
    """(A: K×r, B: r×N), √σ on both; whitened by the Cholesky factor of h when given."""
    if h is None:
        u, s, vt = np.linalg.svd(w, full_matrices=False)
        return u[:, :r] * np.sqrt(s[:r]), np.sqrt(s[:r])[:, None] * vt[:r]
    try:
        chol = np.linalg.cholesky(h)
    except np.linalg.LinAlgError:
        chol = np.linalg.cholesky(h + (1e-6 - np.linalg.eigvalsh(h)[0]) * np.eye(len(h)))
    u, s, vt = np.linalg.svd(chol.T @ w, full_matrices=False)
    a = np.linalg.solve(chol.T, u[:, :r] * np.sqrt(s[:r]))
    return a, np.sqrt(s[:r])[:, None] * vt[:r]


def write_split(base, out, ranks, h):
    """Writes the base model with every node of `ranks` split at its rank by `factor`."""
    m = onnx.load(str(base))
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    nodes = []
    for node in g.node:
        r = ranks.get(node.name)
        if r is None:
            nodes.append(node)
            continue
        a, b = factor(weight_matrix(node, inits), r, None if h is None else h[node.name])
        a, b = a.astype(np.float32), b.astype(np.float32)
        mid, an, bn = node.output[0] + "/peer_t", node.name + "/peer_A", node.name + "/peer_B"
        if node.op_type == "MatMul":
            g.initializer.extend([numpy_helper.from_array(a, an), numpy_helper.from_array(b, bn)])
            nodes += [helper.make_node("MatMul", [node.input[0], an], [mid], name=node.name + "/A"),
                      helper.make_node("MatMul", [mid, bn], list(node.output), name=node.name + "/B")]
        elif node.op_type == "Gemm":
            g.initializer.extend([numpy_helper.from_array(a, an), numpy_helper.from_array(b, bn)])
            ta, al, be = attr(node, "transA", 0), attr(node, "alpha", 1.0), attr(node, "beta", 1.0)
            nodes += [helper.make_node("Gemm", [node.input[0], an], [mid], name=node.name + "/A", transA=ta, alpha=al),
                      helper.make_node("Gemm", [mid, bn, *node.input[2:]], list(node.output), name=node.name + "/B", beta=be)]
        else:  # Conv, channel split
            w = numpy_helper.to_array(inits[node.input[1]])
            g.initializer.extend([numpy_helper.from_array(a.T.reshape(r, *w.shape[1:]).copy(), an),
                                  numpy_helper.from_array(b.T.reshape(w.shape[0], r, 1, 1).copy(), bn)])
            first = helper.make_node("Conv", [node.input[0], an], [mid], name=node.name + "/A")
            first.attribute.extend(node.attribute)
            nodes += [first, helper.make_node("Conv", [mid, bn, *node.input[2:]], list(node.output), name=node.name + "/B")]
    del g.node[:]
    g.node.extend(nodes)
    onnx.save(m, str(out))


# ---- the bench --------------------------------------------------------------------------------


def model_files(name, work):
    """(model, calib npz, test npz, labels or None)."""
    if (TRAINED / f"{name}.onnx").is_file():
        base = TRAINED / name
        z = np.load(f"{base}.labels.npz")
        return base.with_suffix(".onnx"), Path(f"{base}.calib.npz"), Path(f"{base}.test.npz"), z["labels"].reshape(-1)
    from fetch import fetch  # noqa: PLC0415
    import synth  # noqa: PLC0415

    path = fetch(name, FETCHED, FETCHED.parent / "wheels", log=lambda *_: None)
    calib, test = work / f"{name}.calib.npz", work / f"{name}.test.npz"
    np.savez(calib, **{k: v.astype(np.float32) for k, v in synth.ocr_inputs(name, "calib", 32).items()})
    np.savez(test, **{k: v.astype(np.float32) for k, v in synth.ocr_inputs(name, "heldout", 16).items()})
    return path, calib, test, None


def label_of(node):
    return f'{node.op_type} "{node.name}"'


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--whittle", default=str(ROOT / "target/debug/whittle"))
    ap.add_argument("--fraction", type=float, default=0.5)
    ap.add_argument("--models", nargs="*", default=MODELS)
    ap.add_argument(
        "--holdout",
        type=float,
        nargs="*",
        default=[],
        help="also run the global target with these target.holdout fractions",
    )
    args = ap.parse_args()
    f = args.fraction
    rows = []
    work = Path(tempfile.mkdtemp(prefix="low-rank-bench-"))
    for m in args.models:
        model, calib, test, labels = model_files(m, work)
        base = work / f"{m}.base.onnx"
        whittle_run(args.whittle, PRELUDE.get(m, "") + "  - fold-batchnorm\n", model, base, None, work)
        calib_feeds, test_feeds = samples(calib), samples(test)
        ref = run_all(base, test_feeds)
        rows.append((m, "-", "base (fold-batchnorm)", "-", "-", float("inf"), top1(ref, labels), "yes"))
        by_label = {label_of(n): n for n in onnx.load(str(base)).graph.node}
        h = None

        def score(out, what, how, params):
            onnx.checker.check_model(str(out), full_check=True)
            got = run_all(out, test_feeds)
            tract = subprocess.run([args.whittle, "validate", str(base), str(out), "--data", str(test)], capture_output=True)
            rows.append((m, how, what, params[0], params[1], sqnr(ref, got), top1(got, labels), "yes" if tract.returncode == 0 else "no"))

        hows = [f"ratio: {f}", f"target: {{ params: {f} }}"]
        hows += [f"target: {{ params: {f}, holdout: {h} }}" for h in args.holdout]
        for how in hows:
            ranks = {}
            for aware in ["true", "false"]:
                out = work / f"{m}.whittle-{aware}.onnx"
                rep = whittle_run(args.whittle, f"  - low-rank: {{ {how}, data_aware: {aware} }}\n", base, out, calib, work)
                lr = next(p for p in rep["passes"] if p["name"] == "low-rank")["report"]
                c = lr["counters"]
                if aware == "true":
                    ranks = {by_label[d["node"]].name: d["rank"] for d in lr["details"] if d.get("split")}
                    split_params = sum(d["params"][1] for d in lr["details"] if d.get("split"))
                    kept_params = c["params_after"] - split_params
                score(out, "whittle " + ("data-aware" if aware == "true" else "plain SVD"), how, (c["params_before"], c["params_after"]))
            nodes = [n for n in by_label.values() if n.name in ranks]
            if h is None or set(h) != {n.name for n in nodes}:
                h = second_moments(base, nodes, calib_feeds)
            inits = {i.name: i for i in onnx.load(str(base)).graph.initializer}
            peer_params = kept_params + sum(r * sum(weight_matrix(n, inits).shape) for n in nodes for r in [ranks[n.name]])
            for peer, hh in [("numpy SVD", None), ("numpy SVD-LLM", h)]:
                out = work / f"{m}.peer.onnx"
                write_split(base, out, ranks, hh)
                score(out, peer + " (same ranks)", how, (c["params_before"], peer_params))
    print(f"onnxruntime {ort.__version__}, 1 thread; work dir {work}\n")
    print("| model | low-rank | method | params before | after | SQNR vs base (dB, ort) | top-1 vs labels | tract runs it |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        acc = "—" if r[6] is None else f"{100 * r[6]:.2f}%"
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]} | {r[5]:.3f} | {acc} | {r[7]} |")


if __name__ == "__main__":
    main()
