"""onnxruntime as an independent runtime: load each model, run it on the
fixture data and compare with the fixture's reference outputs.

Usage: python ort_check.py LIST.txt, one `MODEL<TAB>DATA.npz<TAB>REF.npz` per line.
Prints one line per failure and `ort: N passed, M failed`; exits 1 on failure.
"""

import sys

import numpy as np
import onnxruntime as ort

RTOL, ATOL = 1e-3, 1e-4


def check(model, data, ref):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    inputs = np.load(data)
    outputs = np.load(ref)
    samples = len(next(iter(inputs.values())))
    names = [o.name for o in session.get_outputs()]
    for i in range(samples):
        feed = {k: np.asarray(inputs[k][i]) for k in inputs.files}
        got = session.run(names, feed)
        for name, value in zip(names, got):
            want = outputs[name][i]
            if value.shape != want.shape:
                return f"{name}: shape {value.shape} vs reference {want.shape}"
            if not np.allclose(value, want, rtol=RTOL, atol=ATOL):
                worst = float(np.max(np.abs(value.astype(np.float64) - want)))
                return f"{name}: sample {i} differs from the reference by up to {worst:.3g}"
    return None


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: ort_check.py LIST.txt")
    passed = failed = 0
    with open(sys.argv[1]) as f:
        for line in f:
            if not line.strip():
                continue
            model, data, ref = line.rstrip("\n").split("\t")
            try:
                problem = check(model, data, ref)
            except Exception as e:  # onnxruntime refusing the model is a failure to report
                problem = f"onnxruntime: {e}"
            if problem:
                failed += 1
                print(f"FAIL {model}: {problem}")
            else:
                passed += 1
    print(f"ort: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
