"""The peer: Torch-Pruning (DepGraph, torch-pruning 1.6.1) on the same trained PyTorch modules,
at the MACs whittle reached, accuracy against the fixture's labels, beside whittle.

Run from the repository root with the export venv, after `cargo build`:

    .venv-export/bin/python bench/prune/channel_torch_pruning.py [--macs 0.7]

For each trained classifier fixture (fixtures/trained/<name>.onnx and the module that
fixtures/export/train_models.py `load(name)` rebuilds from <name>.state.npz):
1. whittle prunes the ONNX file to `target: { macs: M }` (importance l1, no fine-tuning);
   its MACs ratio is `whittle inspect`'s count after / before;
2. Torch-Pruning prunes the module with `BasePruner` and `GroupMagnitudeImportance(p=1)`
   (global ranking, the classifier head ignored), its `pruning_ratio` bisected until its own
   MAC count (`tp.utils.count_ops_and_params`) is closest to whittle's ratio, no fine-tuning;
3. top-1 accuracy against the test labels of both (whittle's file in onnxruntime, the pruned
   module in PyTorch), and of the unpruned model.
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torch_pruning as tp

ROOT = Path(__file__).resolve().parents[2]
TRAINED = ROOT / "fixtures" / "trained"
sys.path.insert(0, str(ROOT / "fixtures" / "export"))


def macs(whittle, path):
    out = subprocess.run([whittle, "inspect", str(path), "--json"], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)["macs"]


def ort_accuracy(path, inputs, labels):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    hits = 0
    for i in range(len(labels)):
        out = sess.run(None, {n: inputs[n][i] for n in names})[0]
        hits += int(np.argmax(out) == labels[i])
    return hits / len(labels)


def torch_accuracy(module, inputs, labels):
    names = list(inputs.files)
    with torch.no_grad():
        hits = 0
        for i in range(len(labels)):
            args = [torch.from_numpy(inputs[n][i]) for n in names]
            hits += int(torch.argmax(module(*args)).item() == labels[i])
    return hits / len(labels)


def tp_prune(name, example, ratio_goal):
    from train_models import load  # noqa: PLC0415

    base, _ = tp.utils.count_ops_and_params(load(name), example)
    best = None
    lo, hi = 0.0, 0.95
    for _ in range(12):
        r = (lo + hi) / 2
        module = load(name)
        heads = [m for m in module.modules() if isinstance(m, torch.nn.Linear) and m.out_features == 10]
        pruner = tp.pruner.BasePruner(
            module,
            example,
            importance=tp.importance.GroupMagnitudeImportance(p=1),
            global_pruning=True,
            pruning_ratio=r,
            ignored_layers=heads,
        )
        pruner.step()
        m, _ = tp.utils.count_ops_and_params(module, example)
        ratio = m / base
        if best is None or abs(ratio - ratio_goal) < abs(best[0] - ratio_goal):
            best = (ratio, module)
        if ratio > ratio_goal:
            lo = r
        else:
            hi = r
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--whittle", default=str(ROOT / "target" / "debug" / "whittle"))
    parser.add_argument("--macs", type=float, default=0.7)
    parser.add_argument("--models", nargs="*", default=["digits_cnn"])
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="prune-tp-"))
    print(f"target MACs {args.macs}, no fine-tuning; accuracy on the fixtures' test labels\n")
    print("| model | unpruned top-1 | whittle MACs ratio | whittle top-1 | Torch-Pruning MACs ratio | Torch-Pruning top-1 |")
    print("|---|---|---|---|---|---|")
    for name in args.models:
        path = TRAINED / f"{name}.onnx"
        inputs = np.load(TRAINED / f"{name}.test.npz")
        labels = np.load(TRAINED / f"{name}.labels.npz")["labels"]
        pipeline = work / "p.yaml"
        pipeline.write_text(f"version: 1\npasses:\n  - prune:\n      target: {{ macs: {args.macs} }}\n")
        out = work / f"{name}.onnx"
        subprocess.run([args.whittle, "run", str(pipeline), "--input", str(path), "--output", str(out)], check=True, capture_output=True)
        w_ratio = macs(args.whittle, out) / macs(args.whittle, path)
        example = [torch.from_numpy(inputs[n][0]) for n in inputs.files]
        example = example[0] if len(example) == 1 else tuple(example)
        tp_ratio, module = tp_prune(name, example, w_ratio)
        print(
            f"| {name} | {ort_accuracy(path, inputs, labels):.3f} | {w_ratio:.3f} | {ort_accuracy(out, inputs, labels):.3f} "
            f"| {tp_ratio:.3f} | {torch_accuracy(module.eval(), inputs, labels):.3f} |"
        )


if __name__ == "__main__":
    main()
