"""onnxruntime as an independent oracle for whittle's int8 (QDQ) models.

Usage:
    python ort_quant_check.py LIST.txt [--min-kernel-share 0.9] [--max-steps 1]
                              [--float-tolerance T]

LIST.txt holds one case a line, `MODEL<TAB>DATA.npz<TAB>TRACT_OUTPUTS.npz`:

- MODEL is a QDQ model (QuantizeLinear/DequantizeLinear pairs around float ops),
  possibly with dynamically scaled ConvInteger/MatMulInteger nodes;
- DATA.npz holds the inputs, one array per graph input, samples first (as the
  fixtures' `.data.npz`);
- TRACT_OUTPUTS.npz holds tract's outputs of MODEL on DATA, one array per graph
  output, samples first; `-` skips the numeric check (kernel check only).

Two checks per case:

1. Integer kernels. onnxruntime optimizes MODEL at ORT_ENABLE_EXTENDED (the
   level of its QDQ fusions, below its hardware-specific NCHWc/NHWC layout
   rewrites) and saves the result. The quantized compute nodes of MODEL (Conv,
   ConvTranspose, MatMul, Gemm whose first input a DequantizeLinear produces)
   must have become integer kernels (QLinearConv, QLinearMatMul, QGemm,
   MatMulIntegerToFloat, ...) for at least --min-kernel-share of them. Below
   it, the compute nodes that stayed float in the optimized model are named,
   with the likely reason when it is one of onnxruntime 1.32's known fusion
   conditions (see why_float). The summary also counts quantized compute nodes
   whose weight is float: onnxruntime quantizes a float Conv/Gemm weight itself
   when the node sits between DequantizeLinear and QuantizeLinear, so those
   pass the kernel count.
2. tract against onnxruntime. onnxruntime runs MODEL (default optimizations,
   hence its integer kernels; one thread) on DATA one sample at a time; every
   value of every output must match tract's within --max-steps quantization
   steps: |ort - tract| <= max_steps * step + 1e-6 * |ort|, where step is the
   scale of the DequantizeLinear producing the output (per tensor, or per axis
   broadcast along its axis). An integer output may differ by max_steps codes.
   An output no DequantizeLinear produces has no step: it fails unless
   --float-tolerance gives an absolute tolerance (in place of the step).

Integer kernels and a float simulation of the same QDQ graph (onnxruntime at
ORT_DISABLE_ALL runs each op in float between its Q and DQ) round differently
now and then: a tie, an accumulation order, a lookup table. That is one step at
one op, and it compounds through later layers. Measured with onnxruntime 1.32's
own quantizer on the fixtures (optimized vs ORT_DISABLE_ALL): conv_bn_relu, mlp
and resnet_tiny 0 steps at the outputs; transformer_tiny 2 steps (3 with
per-tensor weights), all from QLinearSoftmax (DQ->Softmax->Q), and 0 steps when
Softmax's input stays float (the scores MatMul then becomes
MatMulIntegerToFloat, still an integer kernel).

Prints a line per case, `ok` or `FAIL` (then one line per problem and the
summary): the kernel count and, per output, the largest difference in steps and
how many values are more than one step apart. Last line:
`ort-quant: N passed, M failed`; exits 1 on any failure.
"""

import argparse
import os
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

# Ops whose inputs a QDQ model quantizes and that onnxruntime can turn into an
# integer kernel.
COMPUTE_OPS = {"Conv", "ConvTranspose", "MatMul", "Gemm"}

# Integer kernels onnxruntime's CPU provider emits for quantized Conv, MatMul
# and Gemm, by (domain, op type); "" is the default ONNX domain. At
# ORT_ENABLE_EXTENDED onnxruntime 1.32 fuses DQ->Conv->Q into QLinearConv (default
# domain), DQ->MatMul->Q into QLinearMatMul, DQ->MatMul (float out) into
# com.microsoft MatMulIntegerToFloat and DQ->Gemm(->Q) into com.microsoft QGemm;
# at ORT_ENABLE_ALL QLinearConv moves to com.microsoft (NHWC). The rest are
# listed so that a model already holding integer ops, or another release's
# choice of kernel, counts too.
INTEGER_KERNELS = {
    ("", "QLinearConv"),
    ("", "QLinearMatMul"),
    ("", "ConvInteger"),
    ("", "MatMulInteger"),
    ("com.microsoft", "QLinearConv"),
    ("com.microsoft", "QLinearConvTranspose"),
    ("com.microsoft", "QGemm"),
    ("com.microsoft", "MatMulIntegerToFloat"),
    ("com.microsoft", "DynamicQuantizeMatMul"),
    ("com.microsoft", "MatMulInteger16"),
    ("com.microsoft", "QAttention"),
    ("com.ms.internal.nhwc", "QLinearConv"),
    ("com.ms.internal.nhwc", "QLinearConvTranspose"),
}

# Float compute ops as they may appear in an optimized model: the ONNX ops and
# onnxruntime's float fusions of them (Conv+activation, MatMul+Transpose/scale,
# Gemm+activation, NCHWc Conv).
FLOAT_COMPUTE = {("", op) for op in COMPUTE_OPS} | {
    ("com.microsoft", "FusedConv"),
    ("com.microsoft", "FusedMatMul"),
    ("com.microsoft", "FusedGemm"),
    ("com.microsoft", "NhwcFusedConv"),
    ("com.microsoft.nchwc", "Conv"),
}

# Tolerance relative to the magnitude of onnxruntime's value, on top of the steps.
REL = 1e-6

INTEGER_TYPES = {
    onnx.TensorProto.INT8,
    onnx.TensorProto.UINT8,
    onnx.TensorProto.INT16,
    onnx.TensorProto.UINT16,
    onnx.TensorProto.INT4,
    onnx.TensorProto.UINT4,
}


def _domain(node):
    return "" if node.domain in ("", "ai.onnx") else node.domain


def walk(graph):
    """Every node of a graph and of its subgraphs (If, Loop, Scan bodies)."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from walk(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from walk(g)


def label(node):
    name = node.name or (f"(unnamed, output {node.output[0]})" if node.output else "(unnamed)")
    domain = _domain(node)
    return f"{name} ({domain + ':' if domain else ''}{node.op_type})"


def quantized_compute_nodes(model):
    """MODEL's Conv/ConvTranspose/MatMul/Gemm nodes fed by a DequantizeLinear,
    and its ConvInteger/MatMulInteger nodes (dynamic activation scaling: the
    input comes from a DynamicQuantizeLinear), each with its graph's producer
    map, consumer map and graph outputs.

    Producers are looked up per graph and its enclosing graphs, so a subgraph's
    compute node may read a DequantizeLinear of the outer graph.
    """
    found = []

    def visit(graph, producers):
        producers = dict(producers)
        consumers = {}
        for node in graph.node:
            for out in node.output:
                producers[out] = node
            for i in node.input:
                consumers.setdefault(i, []).append(node)
        outputs = {o.name for o in graph.output}
        for node in graph.node:
            if _domain(node) == "" and node.op_type in COMPUTE_OPS and node.input:
                src = producers.get(node.input[0])
                if src is not None and src.op_type == "DequantizeLinear":
                    found.append((node, producers, consumers, outputs))
            if _domain(node) == "" and node.op_type in ("ConvInteger", "MatMulInteger"):
                found.append((node, producers, consumers, outputs))
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    visit(attr.g, producers)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for g in attr.graphs:
                        visit(g, producers)

    visit(model.graph, {})
    return found


def _attr(node, name, default):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _elem_type(model, name):
    """Element type of an initializer or typed value of the main graph, else None."""
    for init in model.graph.initializer:
        if init.name == name:
            return init.data_type
    for vi in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
        if vi.name == name and vi.type.HasField("tensor_type"):
            return vi.type.tensor_type.elem_type
    return None


def _quant_type(model, producers, name):
    """Element type of a quantized value: an initializer's, or a QuantizeLinear's
    output (its zero point's type, else output_dtype, else uint8); else None."""
    t = _elem_type(model, name)
    if t is not None:
        return t
    q = producers.get(name)
    if q is None or q.op_type != "QuantizeLinear":
        return None
    if len(q.input) > 2 and q.input[2]:
        t = _elem_type(model, q.input[2])
        if t is not None:
            return t
    return _attr(q, "output_dtype", 0) or onnx.TensorProto.UINT8


def float_weight(entry):
    """True when the compute node's weight (input 1) is not a DequantizeLinear output."""
    node, producers, _, _ = entry
    src = producers.get(node.input[1]) if len(node.input) > 1 else None
    return src is None or src.op_type != "DequantizeLinear"


def why_float(entry, model):
    """A likely reason, from onnxruntime 1.32's QDQ selectors, why a quantized
    compute node did not become an integer kernel; "" when none is known."""
    node, producers, consumers, outputs = entry
    op = node.op_type
    if op == "ConvTranspose":
        return "onnxruntime's CPU provider has no QDQ fusion for ConvTranspose"
    if op == "MatMul" and float_weight(entry):
        return "input B is not a DequantizeLinear output"
    out = node.output[0]
    if out in outputs:
        return "its output is a graph output"
    users = consumers.get(out, [])
    activation = None
    if len(users) == 1 and users[0].op_type in ("Relu", "Clip"):
        # onnxruntime folds a Relu/Clip between the node and its QuantizeLinear
        # when the QuantizeLinear's range makes it redundant.
        if users[0].output[0] not in outputs:
            activation = users[0]
            users = consumers.get(users[0].output[0], [])
    x = producers.get(node.input[0])
    types = [_quant_type(model, producers, x.input[0])]
    types += [
        _quant_type(model, producers, u.output[0]) for u in users if u.op_type == "QuantizeLinear"
    ]
    if onnx.TensorProto.INT8 in types:
        return (
            "int8 activations: onnxruntime on x86 fuses them only after turning each int8 "
            "QuantizeLinear->DequantizeLinear pair into uint8, which needs the QuantizeLinear "
            "to feed exactly one DequantizeLinear and both to have explicit equal scalar zero "
            "points; use uint8 activations"
        )
    if activation is not None and activation.op_type == "Relu" and len(users) == 1:
        q = users[0]
        zp = constant_value(model.graph, q.input[2]) if len(q.input) > 2 and q.input[2] else None
        lowest = {onnx.TensorProto.UINT8: 0, onnx.TensorProto.INT8: -128}
        qtype = _quant_type(model, producers, q.output[0])
        if q.op_type == "QuantizeLinear" and zp is not None and qtype in lowest:
            if int(np.asarray(zp).reshape(-1)[0]) != lowest[qtype]:
                return (
                    "the Relu between it and its QuantizeLinear is not redundant (the "
                    "QuantizeLinear's zero point is not its type's minimum)"
                )
    if op == "Conv" and not (len(users) == 1 and users[0].op_type == "QuantizeLinear"):
        return (
            "its output does not go to exactly one QuantizeLinear "
            "(Conv has no float-output integer kernel)"
        )
    to_q = any(u.op_type == "QuantizeLinear" for u in users)
    if op in ("MatMul", "Gemm") and len(users) > 1 and to_q:
        return "its output goes to a QuantizeLinear and to other nodes"
    if len(node.input) > 2 and node.input[2]:
        b = producers.get(node.input[2])
        if b is not None and b.op_type == "DequantizeLinear":
            if _elem_type(model, b.input[0]) not in (None, onnx.TensorProto.INT32):
                return "its bias is not dequantized from int32"
            x, w = producers.get(node.input[0]), producers.get(node.input[1])
            scales = [
                constant_value(model.graph, n.input[1])
                if n is not None and n.op_type == "DequantizeLinear"
                else None
                for n in (x, w, b)
            ]
            if all(s is not None for s in scales):
                want = scales[0].astype(np.float64) * scales[1].astype(np.float64)
                got = scales[2].astype(np.float64)
                if want.size == got.size or want.size == 1 or got.size == 1:
                    off = float(np.max(np.abs(got / np.where(want == 0, 1, want) - 1)))
                    if off > 1e-3:
                        # onnxruntime 1.32 refuses QLinearConv at x0.95 or x1.05 and fuses
                        # at x0.99 or x1.02, reading the int32 bias at input x weight scale.
                        return (
                            "its int32 bias scale is not input scale x weight scale "
                            f"(off by {off:.1%})"
                        )
    if op == "Gemm":
        dqs = [producers.get(name) for name in node.input[:2]]
        if any(d is not None and (len(d.input) < 3 or not d.input[2]) for d in dqs):
            return "QGemm needs explicit zero points on the DequantizeLinear of inputs A and B"
        if abs(_attr(node, "alpha", 1.0) - 1.0) > 1e-6:
            return "Gemm alpha != 1"
        if len(node.input) > 2 and node.input[2] and abs(_attr(node, "beta", 1.0) - 1.0) > 1e-6:
            return "Gemm beta != 1 with a bias"
    if op == "MatMul":
        w = producers.get(node.input[1])
        scale = constant_value(model.graph, w.input[1]) if w is not None else None
        if scale is not None and scale.size > 1 and _attr(w, "axis", 1) not in (1, -1):
            return "its weight is per-channel along an axis other than the output columns"
    return ""


def optimized(model_path):
    """onnxruntime's ORT_ENABLE_EXTENDED optimization of the model, as a ModelProto."""
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
        options.log_severity_level = 3
        ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
        return onnx.load(options.optimized_model_filepath)


def kernel_check(model_path, model, min_share):
    """Returns (summary, problem or None)."""
    quantized = quantized_compute_nodes(model)
    opt = optimized(model_path)
    kernels = [n for n in walk(opt.graph) if (_domain(n), n.op_type) in INTEGER_KERNELS]
    floats = [n for n in walk(opt.graph) if (_domain(n), n.op_type) in FLOAT_COMPUTE]
    k, q = len(kernels), len(quantized)
    summary = f"kernels {k} of {q} quantized compute nodes"
    if floats:
        summary += f", {len(floats)} float compute nodes remain"
    unquantized_weights = sum(1 for e in quantized if float_weight(e))
    if unquantized_weights:
        # onnxruntime quantizes a float Conv/Gemm weight itself (WeightBiasQuantization),
        # so such nodes still count as kernels: say so.
        summary += f", {unquantized_weights} of them with a float weight"
    if q == 0:
        if min_share <= 0:
            return summary, None
        return summary, (
            "no quantized compute node (Conv/ConvTranspose/MatMul/Gemm fed by a DequantizeLinear)"
        )
    share = min(k, q) / q
    if share + 1e-12 < min_share:
        by_key = {}
        for e in quantized:
            by_key.setdefault(e[0].name, e)
            by_key.setdefault(e[0].output[0], e)
        reasons = {}
        for n in floats:
            # onnxruntime keeps a node's name through its rewrites, or appends to it
            # (MatMul + Add -> Gemm is "<MatMul name>/MatMulAddFusion").
            keys = [n.name, n.name.split("/MatMulAddFusion")[0]] + list(n.output[:1])
            e = next((by_key[key] for key in keys if key and key in by_key), None)
            reason = (why_float(e, model) if e is not None else "") or "no known reason"
            reasons.setdefault(reason, []).append(label(n))
        names = "; ".join(f"{', '.join(nodes)}: {reason}" for reason, nodes in reasons.items())
        names = names or "none (onnxruntime rewrote them into other ops)"
        return summary, (
            f"integer kernels for {k} of {q} quantized compute nodes "
            f"({share:.0%} < {min_share:.0%}); float compute nodes in onnxruntime's "
            f"optimized model: {names}"
        )
    return summary, None


def constant_value(graph, name):
    """The value of an initializer or Constant output of the main graph, else None."""
    for init in graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in graph.node:
        if node.op_type == "Constant" and node.output and node.output[0] == name:
            for attr in node.attribute:
                if attr.name == "value":
                    return numpy_helper.to_array(attr.t)
                if attr.name == "value_float":
                    return np.array(attr.f, dtype=np.float32)
                if attr.name == "value_floats":
                    return np.array(attr.floats, dtype=np.float32)
    return None


def output_steps(model):
    """Per graph output: its step (an array broadcastable to one sample's
    output), the string "integer" for an integer output, or a string saying why
    it has no step."""
    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    steps = {}
    for out in graph.output:
        elem = out.type.tensor_type.elem_type
        node = producers.get(out.name)
        if elem in INTEGER_TYPES:
            steps[out.name] = "integer"
            continue
        if node is None or node.op_type != "DequantizeLinear":
            what = f"{node.op_type} {node.name!r}" if node is not None else "no node"
            steps[out.name] = f"not quantized: produced by {what}, not by a DequantizeLinear"
            continue
        scale = constant_value(graph, node.input[1])
        if scale is None:
            steps[out.name] = f"the scale {node.input[1]!r} of {node.name!r} is not a constant"
            continue
        scale = np.abs(scale.astype(np.float64))
        if scale.size > 1:  # per-axis: broadcast along the DequantizeLinear's axis
            rank = len(out.type.tensor_type.shape.dim)
            if scale.ndim != 1 or rank == 0 or _attr(node, "block_size", 0):
                steps[out.name] = f"the scale of {node.name!r} is blocked: no single step"
                continue
            shape = [1] * rank
            shape[_attr(node, "axis", 1) % rank] = scale.size
            scale = scale.reshape(shape)
        steps[out.name] = np.asarray(scale)
    return steps


def _compare(value, want, unit_info, max_steps):
    """One sample of one output. Returns (largest difference in units, number of
    values more than one unit apart, number of values, and None or (units,
    index, onnxruntime's value, tract's value, unit) for the worst value more
    than max_steps units apart)."""
    unit, rel, _ = unit_info
    a = value.astype(np.float64)
    b = want.astype(np.float64)
    unit = np.broadcast_to(unit, a.shape)
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    nonfinite = (~np.isfinite(a) | ~np.isfinite(b)) & ~same
    if nonfinite.any():
        j = tuple(int(x) for x in np.argwhere(nonfinite)[0])
        worst = (float("inf"), j, a[j], b[j], float(unit[j]))
        return float("inf"), int(nonfinite.sum()), a.size, worst
    diff = np.where(same, 0.0, np.abs(a - b))
    slack = np.where(same, 0.0, rel * np.abs(a))
    in_units = diff / np.where(unit > 0, unit, 1.0)
    n_over_one = int(np.count_nonzero(diff > unit + slack))
    over = diff > max_steps * unit + slack
    bad = None
    if over.any():
        j = np.unravel_index(int(np.argmax(np.where(over, in_units, -1.0))), a.shape)
        index = tuple(int(x) for x in j)
        bad = (float(in_units[j]), index, float(a[j]), float(b[j]), float(unit[j]))
    return float(in_units.max(initial=0.0)), n_over_one, a.size, bad


def numeric_check(model_path, model, data_path, tract_path, float_tolerance, max_steps):
    """Returns (summary, problem or None)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    inputs = np.load(data_path)
    tract = np.load(tract_path)
    missing = [n for n in names if n not in tract.files]
    if missing:
        have = ", ".join(tract.files)
        return "", f"tract outputs have no {', '.join(missing)} (have {have})"
    steps = output_steps(model)
    # Per output: (unit, relative slack, unit name).
    units = {}
    for name in names:
        step = steps[name]
        if not isinstance(step, str):
            units[name] = (step, REL, "steps")
        elif step == "integer":
            units[name] = (np.float64(1.0), 0.0, "codes")
        elif float_tolerance is not None:
            units[name] = (np.float64(float_tolerance), REL, "x tolerance")
        else:
            return "", f"{name}: {step}; give --float-tolerance to compare it"
    samples = len(inputs[inputs.files[0]])
    worst = {name: 0.0 for name in names}
    over_one = {name: 0 for name in names}
    count = {name: 0 for name in names}
    problem, problem_units = None, -1.0
    for i in range(samples):
        feed = {k: np.asarray(inputs[k][i]) for k in inputs.files}
        got = session.run(names, feed)
        for name, value in zip(names, got):
            want = np.asarray(tract[name][i])
            if value.shape != want.shape:
                shapes = f"onnxruntime's shape {value.shape} vs tract's {want.shape}"
                return "", f"{name}: sample {i}: {shapes}"
            with np.errstate(invalid="ignore", over="ignore"):
                largest, n_over_one, size, bad = _compare(value, want, units[name], max_steps)
            worst[name] = max(worst[name], largest)
            over_one[name] += n_over_one
            count[name] += size
            if bad is not None and bad[0] > problem_units:
                problem_units, j, a, b, unit = bad
                problem = (
                    f"{name}: sample {i} at {j}: onnxruntime {a:.6g}, tract {b:.6g}: "
                    f"{problem_units:.3g} {units[name][2]} of {unit:.3g} apart "
                    f"(allowed: {max_steps:g})"
                )
    parts = []
    for n in names:
        part = f"{n}: max {worst[n]:.3g} {units[n][2]}"
        if over_one[n]:
            part += f" ({over_one[n]} of {count[n]} values over 1)"
        parts.append(part)
    return ", ".join(parts), problem


def check(model_path, data_path, tract_path, min_share, float_tolerance, max_steps):
    """Returns (summary, problems)."""
    model = onnx.load(model_path)
    problems, summary = [], []
    s, p = kernel_check(model_path, model, min_share)
    summary.append(s)
    if p:
        problems.append(p)
    if tract_path != "-":
        s, p = numeric_check(model_path, model, data_path, tract_path, float_tolerance, max_steps)
        if s:
            summary.append(s)
        if p:
            problems.append(p)
    return "; ".join(summary), problems


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("list", help="MODEL<TAB>DATA.npz<TAB>TRACT_OUTPUTS.npz (or -) per line")
    parser.add_argument(
        "--min-kernel-share",
        type=float,
        default=0.9,
        help="least share of quantized compute nodes that must become integer kernels (0.9)",
    )
    parser.add_argument(
        "--max-steps",
        type=float,
        default=1.0,
        help="allowed difference between onnxruntime and tract in quantization steps (1)",
    )
    parser.add_argument(
        "--float-tolerance",
        type=float,
        default=None,
        help="absolute tolerance for outputs no DequantizeLinear produces "
        "(default: such an output fails)",
    )
    args = parser.parse_args()
    ort.set_default_logger_severity(3)
    passed = failed = 0
    with open(args.list) as f:
        for line in f:
            if not line.strip():
                continue
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 3:
                failed += 1
                print(f"FAIL {line.strip()}: expected MODEL<TAB>DATA.npz<TAB>TRACT_OUTPUTS.npz")
                continue
            model, data, tract = fields
            try:
                summary, problems = check(
                    model, data, tract, args.min_kernel_share, args.float_tolerance, args.max_steps
                )
            except Exception as e:  # onnxruntime refusing the model is a failure to report
                summary, problems = "", [f"{type(e).__name__}: {e}"]
            if problems:
                failed += 1
                for p in problems:
                    print(f"FAIL {model}: {p}")
                if summary:
                    print(f"     {model}: {summary}")
            else:
                passed += 1
                print(f"ok   {model}: {summary}")
    print(f"ort-quant: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
