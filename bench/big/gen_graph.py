"""A seeded long graph for issue 17: N nodes (default 100,000) in one chain.

Ops cycle through Add / Mul (with one of 64 small shared constants), Relu,
Identity (eliminate-dead bypasses them) and, every 16th node, a dead side
branch (a Neg nothing reads). Input x: float [1, 16]; output y.

    .venv/bin/python bench/big/gen_graph.py --nodes 100000 --out bench/big/build/long.onnx
"""

import argparse
import random

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def build(nodes: int, seed: int) -> onnx.ModelProto:
    rng = random.Random(seed)
    consts = [
        numpy_helper.from_array(
            np.asarray([rng.uniform(0.5, 1.5) for _ in range(16)], dtype=np.float32),
            name=f"c{i}",
        )
        for i in range(64)
    ]
    out, cur = [], "x"
    i = 0
    while len(out) < nodes:
        nxt = f"v{i}"
        if i % 16 == 15 and len(out) < nodes - 1:
            out.append(helper.make_node("Neg", [cur], [f"dead{i}"], name=f"dead{i}"))
        kind = rng.randrange(4)
        if kind == 0:
            n = helper.make_node("Add", [cur, f"c{rng.randrange(64)}"], [nxt], name=f"n{i}")
        elif kind == 1:
            n = helper.make_node("Mul", [cur, f"c{rng.randrange(64)}"], [nxt], name=f"n{i}")
        elif kind == 2:
            n = helper.make_node("Relu", [cur], [nxt], name=f"n{i}")
        else:
            n = helper.make_node("Identity", [cur], [nxt], name=f"n{i}")
        out.append(n)
        cur = nxt
        i += 1
    out.append(helper.make_node("Identity", [cur], ["y"], name="out"))
    g = helper.make_graph(
        out,
        "long",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])],
        consts,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], producer_name="gen_graph")
    m.ir_version = 8
    return m


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=17)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    m = build(a.nodes, a.seed)
    onnx.save(m, a.out)
    print(f"{a.out}: {len(m.graph.node)} nodes")


if __name__ == "__main__":
    main()
