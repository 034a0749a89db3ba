"""Why Wanda falls below magnitude on the digits CNN at 50% unstructured (issue 14, must-show 1):
the masks recomputed in numpy on the same weights and calibration data, per layer and whole.

Run from the repository root with the export venv (no whittle run needed):

    .venv-export/bin/python bench/prune/wanda_layers.py [--model digits_cnn] [--sparsity 0.5] \
        [--score-on test|calib] [--pattern 2:4]

`--score-on calib` scores the SQNR on the calibration inputs instead of the held-out ones (what
a default is chosen on: never the test set). `--pattern N:M` prunes N:M instead (M − N zeros in
every M consecutive input channels at each kernel position, whittle's order; layers whose
C/g is not a multiple of M are skipped, as whittle leaves them whole): one comparison group
only (the M weights), so the table has magnitude and Wanda, and the spread of ‖X_j‖ *inside*
the groups (median over groups of max/min), which is all Wanda can use there.

Scores, as whittle's `prune` (passes/prune/sparse.rs) defines them: magnitude `|W_ij|`, Wanda
`|W_ij|·‖X_j‖` with `‖X_j‖² = Σ x_j²` over the layer's input rows on the calibration inputs
(im2col patches for a Conv, zero where a patch hangs over the padding). Comparison groups:
"layer" (the smallest scores of the whole weight) or "row" (each output row loses its share,
Wanda's paper). Masks are written into the model as it ships (BatchNormalization unfolded, as
bench/prune/sparse.py prunes it) and run in onnxruntime (1 thread) on the held-out inputs:
output SQNR against the original. Tables: (1) one layer pruned at a time, every method;
(2) all layers; (3) the BatchNormalization scale spread per layer (what a per-layer
comparison of unfolded weights ignores).
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench" / "low_rank"))
from run import attr, rows_of, samples, session, sqnr  # noqa: E402  (bench/low_rank/run.py: im2col rows, ort)

METHODS = [("magnitude", "layer"), ("magnitude", "row"), ("wanda", "row"), ("wanda", "layer")]


def weight_rows(node, w):
    """The weight as output rows × reduction inputs (Conv [O, C·k·k], Gemm/MatMul [N, K])."""
    if node.op_type == "Conv":
        return w.reshape(w.shape[0], -1)
    if node.op_type == "Gemm":
        return w if attr(node, "transB", 0) else w.T
    return w.T


def back(node, rows, shape):
    if node.op_type == "Conv":
        return rows.reshape(shape)
    if node.op_type == "Gemm" and attr(node, "transB", 0):
        return rows
    return rows.T.copy()


def mask(scores, sparsity, group):
    keep = np.ones_like(scores, dtype=bool)
    if group == "layer":
        k = int(round(sparsity * scores.size))
        keep.flat[np.argsort(scores, axis=None, kind="stable")[:k]] = False
    else:
        # The layer's count split as evenly as possible over the rows (as whittle does).
        k, rows = int(round(sparsity * scores.size)), scores.shape[0]
        for r in range(rows):
            share = k * (r + 1) // rows - k * r // rows
            keep[r, np.argsort(scores[r], kind="stable")[:share]] = False
    return keep


def nm_groups(node, w, m):
    """Index groups (into the row view) of M consecutive input channels at each kernel position."""
    if node.op_type == "Conv":
        c, kk = w.shape[1], int(np.prod(w.shape[2:]))
        if c % m:
            return None
        return [[ci * kk + t for ci in range(c0, c0 + m)] for t in range(kk) for c0 in range(0, c, m)]
    k = weight_rows(node, w).shape[1]
    if k % m:
        return None
    return [list(range(k0, k0 + m)) for k0 in range(0, k, m)]


def nm_mask(scores, groups, n, m):
    keep = np.ones_like(scores, dtype=bool)
    for grp in groups:
        idx = np.array(grp)
        low = np.argsort(scores[:, idx], axis=1, kind="stable")[:, : m - n]
        for r in range(scores.shape[0]):
            keep[r, idx[low[r]]] = False
    return keep


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="digits_cnn")
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--score-on", choices=["test", "calib"], default="test")
    ap.add_argument("--pattern", default=None, help="N:M instead of unstructured")
    ap.add_argument(
        "--bias-correct",
        action="store_true",
        help="add ΔW·E[x] to each pruned layer's bias, and score Wanda by the centred norm ‖X_j − E[X_j]‖",
    )
    args = ap.parse_args()
    pattern = tuple(int(v) for v in args.pattern.split(":")) if args.pattern else None
    methods = [("magnitude", "N:M group"), ("wanda", "N:M group")] if pattern else METHODS
    base = ROOT / "fixtures" / "trained" / args.model
    path = base.with_suffix(".onnx")
    calib, test = samples(f"{base}.calib.npz"), samples(f"{base}.test.npz")
    model = onnx.load(str(path))
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    layers = [n for n in g.node if n.op_type in ("Conv", "Gemm", "MatMul") and len(n.input) > 1 and n.input[1] in inits]
    # ‖X_j‖² per layer from the calibration inputs.
    s = session(path, outputs=[n.input[0] for n in layers])
    names = [o.name for o in s.get_outputs()]
    norms = {n.name: 0.0 for n in layers}
    sums = {n.name: 0.0 for n in layers}
    count = {n.name: 0 for n in layers}
    for feed in calib:
        outs = dict(zip(names, s.run(None, feed)))
        for n in layers:
            x = rows_of(n, outs[n.input[0]])
            norms[n.name] = norms[n.name] + (x * x).sum(0)
            sums[n.name] = sums[n.name] + x.sum(0)
            count[n.name] += x.shape[0]
    means = {k: sums[k] / count[k] for k in sums}
    if args.bias_correct:
        # Centred: what dropping W_ij costs once the bias absorbs W_ij·E[x_j].
        norms = {k: np.maximum(norms[k] - count[k] * means[k] ** 2, 0.0) for k in norms}
    consumers_of = {}
    for n in g.node:
        for i in n.input:
            consumers_of.setdefault(i, []).append(n)
    scored = calib if args.score_on == "calib" else test
    ref = [session(path).run(None, f) for f in scored]
    if pattern:
        layers = [n for n in layers if nm_groups(n, numpy_helper.to_array(inits[n.input[1]]), pattern[1])]

    def pruned(which, method, group):
        m = onnx.ModelProto()
        m.CopyFrom(model)
        mi = {i.name: i for i in m.graph.initializer}
        for n in layers:
            if n.name not in which:
                continue
            w = numpy_helper.to_array(mi[n.input[1]])
            rows = weight_rows(n, w).astype(np.float64)
            score = np.abs(rows) * (np.sqrt(norms[n.name])[None, :] if method == "wanda" else 1.0)
            if pattern:
                keep = nm_mask(score, nm_groups(n, w, pattern[1]), *pattern)
            else:
                keep = mask(score, args.sparsity, group)
            new = np.where(keep, rows, 0.0)
            if args.bias_correct:
                add_bias(m, mi, n, (rows - new) @ means[n.name])
            rows = new
            mi[n.input[1]].CopyFrom(numpy_helper.from_array(back(n, rows, w.shape).astype(np.float32), n.input[1]))
        sess = session_of(m)
        return sqnr(ref, [sess.run(None, f) for f in scored])

    def add_bias(m, mi, n, delta):
        """Add delta (one per output) to the layer's bias; a Conv without one gets one."""
        if n.op_type == "MatMul":
            adds = [c for c in consumers_of.get(n.output[0], []) if c.op_type == "Add"]
            names_ = [i for i in adds[0].input if i in mi] if adds else []
            if not names_:
                raise SystemExit(f"{n.name}: no bias Add after the MatMul")
            name = names_[0]
        elif len(n.input) > 2 and n.input[2]:
            name = n.input[2]
        else:
            name = n.name + ".bias"
            node = next(x for x in m.graph.node if x.name == n.name)
            node.input.append(name)
            t = numpy_helper.from_array(np.zeros(delta.shape, np.float32), name)
            m.graph.initializer.append(t)
            mi[name] = m.graph.initializer[-1]
        b = numpy_helper.to_array(mi[name]).astype(np.float64)
        mi[name].CopyFrom(numpy_helper.from_array((b + delta.reshape(b.shape)).astype(np.float32), name))

    def session_of(m):
        import onnxruntime as ort  # noqa: PLC0415

        o = ort.SessionOptions()
        o.intra_op_num_threads = 1
        o.log_severity_level = 3
        return ort.InferenceSession(m.SerializeToString(), o, providers=["CPUExecutionProvider"])

    heads = " | ".join(f"{m} per {grp}" for m, grp in methods)
    what = f"{args.pattern}" if pattern else f"{100 * args.sparsity:.0f}% unstructured"
    where = "calibration" if args.score_on == "calib" else "held-out"
    print(f"{args.model}, {what}; output SQNR (dB) vs the original, onnxruntime, {len(scored)} {where} inputs\n")
    extra = " ‖X_j‖ spread inside the groups (median max/min) |" if pattern else ""
    print(f"| layer pruned | weight | ‖X_j‖ spread (max/min over j) |{extra} {heads} |")
    print("|---|---|---|" + ("---|" if pattern else "") + "---|" * len(methods))
    for n in layers:
        w = numpy_helper.to_array(inits[n.input[1]])
        nz = np.sqrt(norms[n.name])
        spread = nz.max() / max(nz.min(), 1e-30)
        inside = ""
        if pattern:
            sp = [nz[g].max() / max(nz[g].min(), 1e-30) for g in nm_groups(n, w, pattern[1])]
            inside = f" {np.median(sp):.3g} |"
        cells = " | ".join(f"{pruned({n.name}, m, grp):.2f}" for m, grp in methods)
        print(f"| {n.name} | {list(w.shape)} | {spread:.3g} |{inside} {cells} |")
    every = {n.name for n in layers}
    pad = " |" if pattern else ""
    print(f"| all | | |{pad} " + " | ".join(f"{pruned(every, m, grp):.2f}" for m, grp in methods) + " |")
    rest = every - {layers[0].name}
    print(f"| all but {layers[0].name} | | |{pad} " + " | ".join(f"{pruned(rest, m, grp):.2f}" for m, grp in methods) + " |")
    # BatchNormalization after each Conv: the per-row output scale |γ|/√(var+ε).
    consumers = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    print("\n| Conv | BN scale |γ|/√(var+ε): min / median / max |")
    print("|---|---|")
    for n in layers:
        bn = [c for c in consumers.get(n.output[0], []) if c.op_type == "BatchNormalization"]
        if bn:
            gamma, var = (numpy_helper.to_array(inits[bn[0].input[i]]) for i in (1, 4))
            sc = np.abs(gamma) / np.sqrt(var + attr(bn[0], "epsilon", 1e-5))
            print(f"| {n.name} | {sc.min():.3g} / {np.median(sc):.3g} / {sc.max():.3g} |")


if __name__ == "__main__":
    main()
