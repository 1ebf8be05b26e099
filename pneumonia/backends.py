"""Where a classifier's logits come from: ONNX Runtime here, without torch (int8; fp16 weights
computed in fp32, for a network whose int8 file missed the parity bar; or fp32); the PyTorch model
in ``pneumonia.torch_model``.

The ONNX files sit beside ``model.safetensors`` in a model folder (``train.export.onnx``
writes them). Grad-CAM always runs on the PyTorch model: it needs gradients.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pneumonia.labels import UsageError

BACKENDS = ("auto", "onnx", "onnx-int8", "onnx-fp16", "onnx-fp32", "pytorch")  # onnx: int8, else fp16, else fp32
ONNX_FILES = {"onnx-int8": "model.int8.onnx", "onnx-fp16": "model.fp16.onnx", "onnx-fp32": "model.onnx"}
COMPACT = ("onnx-int8", "onnx-fp16")  # the files small enough for a browser: at most one is kept


class OnnxLogits:
    """Logits (N, classes) of a preprocessed batch, and the gate's features, from an ONNX Runtime CPU session."""

    def __init__(self, path: str | Path, threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise UsageError(f"the ONNX backends need ONNX Runtime ({err}): pip install \"pneumonia-xray[onnx]\", "
                             'or read with backend="pytorch"') from err

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or int(os.environ.get("PNEUMONIA_ONNX_THREADS", "0"))
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

        outputs = self.session.get_outputs()
        self.has_features = len(outputs) > 1  # exported with the gate's features
        self.feature_width = outputs[1].shape[-1] if self.has_features else 0

    def run(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Logits, and the out-of-distribution gate's features when the file exports them."""
        outputs = self.session.run(None, {self.input_name: np.ascontiguousarray(pixels, dtype=np.float32)})
        return outputs[0], outputs[1] if self.has_features else None


def candidates(backend: str) -> list[str]:
    """The ONNX backends to try, best first, for a requested ``backend``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return list(ONNX_FILES) if onnxruntime_installed() else []
    if backend == "onnx":
        return list(ONNX_FILES)
    return [backend] if backend in ONNX_FILES else []


def onnxruntime_installed() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True
