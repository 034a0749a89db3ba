"""A seeded transformer-shaped model with its weights in external data
(issue 17): `--layers` blocks of width `--dim` (default 13 x 2048: 2.62 GB of
float32 weights, past protobuf's 2 GiB), each block

    x -> LayerNorm -> MatMul(Wq|Wk|Wv) -> scores = q kT -> Softmax -> . v
      -> MatMul(Wo) + bo -> add x -> LayerNorm -> MatMul(W1) + b1 -> Relu
      -> MatMul(W2) + b2 -> add

Input x: float [1, 8, dim]. Node names never equal a value or initializer
name (tract, which quantize's calibration runs, refuses a node named like an
initializer: "duplicate name for node"). The side file is written in one sequential stream
(one weight at a time, never the whole model in memory), 4 KiB aligned.

    .venv/bin/python bench/big/gen_transformer.py --out bench/big/build/big.onnx
"""

import argparse
import os

import numpy as np
import onnx
from onnx import TensorProto, helper


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=13)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--seq", type=int, default=8)
    ap.add_argument("--seed", type=int, default=17)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    d, L = a.dim, a.layers
    rng = np.random.default_rng(a.seed)
    data_name = os.path.basename(a.out) + ".data"
    data_path = os.path.join(os.path.dirname(a.out) or ".", data_name)

    inits, nodes = [], []
    offset = 0
    with open(data_path, "wb") as side:

        def weight(name, shape, scale):
            nonlocal offset
            arr = (rng.standard_normal(shape, dtype=np.float32) * scale).astype(np.float32)
            pad = (-offset) % 4096
            side.write(b"\0" * pad)
            offset += pad
            raw = arr.tobytes()
            side.write(raw)
            t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(shape))
            t.data_location = TensorProto.EXTERNAL
            for k, v in (("location", data_name), ("offset", str(offset)), ("length", str(len(raw)))):
                e = t.external_data.add()
                e.key, e.value = k, v
            offset += len(raw)
            inits.append(t)
            return name

        def small(name, values):
            inits.append(helper.make_tensor(name, TensorProto.FLOAT, [len(values)], values))
            return name

        x = "x"
        for l in range(L):
            p = f"l{l}_"
            ones, zeros = [1.0] * d, [0.0] * d
            s1, b1n = small(p + "ln1_s", ones), small(p + "ln1_b", zeros)
            nodes.append(helper.make_node("LayerNormalization", [x, s1, b1n], [p + "h"], axis=-1, name=p + "ln1"))
            for w in "qkv":
                nodes.append(helper.make_node("MatMul", [p + "h", weight(p + "W" + w, (d, d), d**-0.5)], [p + w], name=p + w))
            nodes.append(helper.make_node("Transpose", [p + "k"], [p + "kT"], perm=[0, 2, 1], name=p + "kT"))
            nodes.append(helper.make_node("MatMul", [p + "q", p + "kT"], [p + "s"], name=p + "scores"))
            nodes.append(helper.make_node("Softmax", [p + "s"], [p + "a"], axis=-1, name=p + "softmax"))
            nodes.append(helper.make_node("MatMul", [p + "a", p + "v"], [p + "av"], name=p + "av"))
            nodes.append(helper.make_node("MatMul", [p + "av", weight(p + "Wo", (d, d), d**-0.5)], [p + "o"], name=p + "o"))
            nodes.append(helper.make_node("Add", [p + "o", small(p + "bo", zeros)], [p + "ob"], name=p + "add_bo"))
            nodes.append(helper.make_node("Add", [x, p + "ob"], [p + "r1"], name=p + "res1"))
            s2, b2n = small(p + "ln2_s", ones), small(p + "ln2_b", zeros)
            nodes.append(helper.make_node("LayerNormalization", [p + "r1", s2, b2n], [p + "h2"], axis=-1, name=p + "ln2"))
            nodes.append(helper.make_node("MatMul", [p + "h2", weight(p + "W1", (d, 4 * d), d**-0.5)], [p + "f1"], name=p + "ff1"))
            nodes.append(helper.make_node("Add", [p + "f1", small(p + "b1", [0.0] * 4 * d)], [p + "f1b"], name=p + "add_b1"))
            nodes.append(helper.make_node("Relu", [p + "f1b"], [p + "f1r"], name=p + "relu"))
            nodes.append(helper.make_node("MatMul", [p + "f1r", weight(p + "W2", (4 * d, d), (4 * d) ** -0.5)], [p + "f2"], name=p + "ff2"))
            nodes.append(helper.make_node("Add", [p + "f2", small(p + "b2", zeros)], [p + "f2b"], name=p + "add_b2"))
            out = "y" if l == L - 1 else p + "out"
            nodes.append(helper.make_node("Add", [p + "r1", p + "f2b"], [out], name=p + "res2"))
            x = out

    g = helper.make_graph(
        nodes,
        "big_transformer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, a.seq, d])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, a.seq, d])],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], producer_name="gen_transformer")
    m.ir_version = 8
    with open(a.out, "wb") as f:
        f.write(m.SerializeToString())
    print(f"{a.out}: {len(nodes)} nodes, {offset / 1e9:.2f} GB of weights in {data_path}")


if __name__ == "__main__":
    main()
