"""Channel-pruned models against their originals, in onnxruntime and onnx.

Usage: python prune_check.py LIST.txt, one `ORIGINAL<TAB>PRUNED<TAB>DATA.npz` per line.
For each pair: `onnx.checker.check_model(full_check=True)` (strict shape
inference) passes on the pruned model, onnxruntime runs both on every sample
of DATA and the pruned outputs have the original shapes. Prints one line per
model with its output SQNR (dB) against the original and
`prune: N passed, M failed`; exits 1 on failure.
"""

import sys

import numpy as np
import onnx
import onnxruntime as ort


def session(path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def check(original, pruned, data):
    model = onnx.load(pruned)
    onnx.checker.check_model(model, full_check=True)
    a, b = session(original), session(pruned)
    inputs = np.load(data)
    samples = len(next(iter(inputs.values())))
    names = [o.name for o in a.get_outputs()]
    signal = noise = 0.0
    for i in range(samples):
        feed = {k: np.asarray(inputs[k][i]) for k in inputs.files}
        for want, got in zip(a.run(names, feed), b.run(names, feed)):
            if want.shape != got.shape:
                return None, f"shape {got.shape} vs original {want.shape}"
            w = want.astype(np.float64)
            signal += float(np.sum(w * w))
            noise += float(np.sum((w - got) ** 2))
    sqnr = 10 * np.log10(signal / noise) if noise > 0 else float("inf")
    return sqnr, None


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: prune_check.py LIST.txt")
    passed = failed = 0
    for line in open(sys.argv[1]).read().splitlines():
        if not line.strip():
            continue
        original, pruned, data = line.split("\t")
        try:
            sqnr, error = check(original, pruned, data)
        except Exception as e:  # noqa: BLE001 - any failure is reported
            sqnr, error = None, f"{type(e).__name__}: {e}"
        if error:
            failed += 1
            print(f"FAIL {pruned}: {error}")
        else:
            passed += 1
            print(f"ok {pruned}: {sqnr:.2f} dB")
    print(f"prune: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
