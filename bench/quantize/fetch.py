"""Fetches the trained models of the quantize benchmark from PyPI, at pinned versions.

Run from the repository root with the export venv:

    .venv-export/bin/python bench/quantize/fetch.py [--build bench/quantize/build]

The models are not committed: they come out of the wheels of two public packages, downloaded
with `pip download --no-deps` (no install, no dependencies) at the versions pinned below,
checked against the wheel's pinned SHA-256, and unzipped member by member:

    rapidocr-onnxruntime  PP-OCRv4 text detection (DB), the PP-OCR v2.0 mobile text direction
                          classifier (0 / 180 degrees) and PP-OCRv4 text recognition (CTC)
    silero-vad            the voice-activity detector: `silero_vad.onnx`, what
                          `load_silero_vad(onnx=True)` loads (the 8 and 16 kHz networks are
                          the two branches of one `If` on `sr`, weights in Constant nodes),
                          and `silero_vad_16k_op15.onnx`, what `opset_version=15` loads
                          (16 kHz only, the convolutions in the main graph)

Wheels are cached in build/wheels/, models land in build/models/<name>.onnx. Each model is
opened in onnxruntime and its inputs and outputs printed.
"""

import argparse
import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_BUILD = HERE / "build"

# package -> (pinned version, SHA-256 of its py3-none-any wheel). The newest on PyPI when pinned.
PACKAGES = {
    "rapidocr-onnxruntime": ("1.4.4", "971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf"),
    "silero-vad": ("6.2.3", "7b7f5436cfcb02fae583a05b512ea96467fd449fe54cb49a5e4f06c51a1e43b8"),
}
# bench model name -> (package, member of the wheel)
MODELS = {
    "ppocr_det": ("rapidocr-onnxruntime", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx"),
    "ppocr_cls": ("rapidocr-onnxruntime", "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx"),
    "ppocr_rec": ("rapidocr-onnxruntime", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx"),
    "silero_vad": ("silero-vad", "silero_vad/data/silero_vad.onnx"),
    "silero_vad_op15": ("silero-vad", "silero_vad/data/silero_vad_16k_op15.onnx"),
}


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def wheel(package, wheels_dir, log=print):
    """The pinned wheel of `package`, downloaded into wheels_dir unless already there."""
    version, expected = PACKAGES[package]
    stem = f"{package.replace('-', '_')}-{version}-"
    found = sorted(wheels_dir.glob(stem + "*.whl"))
    if not found:
        wheels_dir.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":none:",
                   "--disable-pip-version-check", "--quiet", f"{package}=={version}", "-d", str(wheels_dir)]  # fmt: skip
        log(f"downloading {package}=={version}")
        subprocess.run(command, check=True)
        found = sorted(wheels_dir.glob(stem + "*.whl"))
        if not found:
            raise SystemExit(f"pip download left no {stem}*.whl in {wheels_dir}")
    actual = sha256(found[0])
    if actual != expected:
        raise SystemExit(f"{found[0]}: SHA-256 {actual}, expected {expected} (pinned for {package}=={version})")
    return found[0]


def fetch(name, models_dir, wheels_dir, log=print):
    """Extracts one model from its package's wheel into models_dir/<name>.onnx; returns the path."""
    package, member = MODELS[name]
    path = models_dir / f"{name}.onnx"
    if not path.is_file():
        models_dir.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel(package, wheels_dir, log)) as archive:
            path.write_bytes(archive.read(member))
    return path


def describe(path):
    """`name [dims] type` of every input and output, as onnxruntime sees them."""
    import onnxruntime as ort  # noqa: PLC0415

    options = ort.SessionOptions()
    options.log_severity_level = 3
    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    show = lambda v: f"{v.name} {v.shape} {v.type}"  # noqa: E731
    return [f"in  {show(v)}" for v in sess.get_inputs()] + [f"out {show(v)}" for v in sess.get_outputs()]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--build", type=Path, default=DEFAULT_BUILD, help="output folder (default: %(default)s)")
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    args = parser.parse_args()
    for name in args.models:
        path = fetch(name, args.build / "models", args.build / "wheels")
        package, member = MODELS[name]
        print(f"{name}: {path} ({path.stat().st_size} bytes, {package}=={PACKAGES[package][0]} {member})")
        for line in describe(path):
            print("  " + line)


if __name__ == "__main__":
    main()
