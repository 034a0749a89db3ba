"""The onnx package on the same files as whittle (issue 17 bench).

    python onnx_peer.py graph  MODEL OUT   # load + save + checker, seconds
    python onnx_peer.py external MODEL OUT # load + save with external data
Prints one `name seconds` line per step.
"""

import os
import sys
import time

import onnx


def main() -> None:
    kind, model, out = sys.argv[1:4]
    t = time.perf_counter()
    m = onnx.load(model)
    load = time.perf_counter() - t
    t = time.perf_counter()
    if kind == "graph":
        onnx.save(m, out)
    else:
        onnx.save(m, out, save_as_external_data=True, all_tensors_to_one_file=True,
                  location=os.path.basename(out) + ".data", size_threshold=1024)
    save = time.perf_counter() - t
    print(f"load {load:.3f}")
    print(f"save {save:.3f}")
    if kind == "graph":
        t = time.perf_counter()
        onnx.checker.check_model(m)
        print(f"checker {time.perf_counter() - t:.3f}")


if __name__ == "__main__":
    main()
