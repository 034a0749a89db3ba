"""Prints the absolute path of the ONNX backend node tests in the installed onnx package.

Each folder under it holds one `model.onnx` and its test data.
"""

from pathlib import Path

import onnx

print(Path(onnx.__file__).resolve().parent / "backend" / "test" / "data" / "node")
