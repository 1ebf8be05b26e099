"""Make a model folder readable by ``transformers.pipeline("image-classification", trust_remote_code=True)``.

transformers 5 reads a timm folder through ``TimmWrapper``, which gives silently different
answers here (no X-ray intensity standardisation, no calibration temperature, float16 compute).
So the folder gets its own small transformers code (``pneumonia_xray.py``, with ``xray_pixels.py``
and ``xray_cnn.py``, verbatim copies of this package's standalone files) and a ``model_type``
transformers does not know: without ``trust_remote_code`` loading fails instead of answering.

Standard library only: training and export import this without transformers.
"""
from __future__ import annotations

import copy
from pathlib import Path

from pneumonia import folder_json

PACKAGE = Path(__file__).resolve().parents[1]
MODEL_TYPE = "pneumonia_xray"
CODE_MODULE = "pneumonia_xray"
# What the folder's code needs beside it, under the names its relative imports use.
CODE_FILES = {
    f"{CODE_MODULE}.py": Path(__file__).with_name(f"{CODE_MODULE}.py"),
    "xray_pixels.py": PACKAGE / "pixels.py",  # the one inference preprocessing
    "xray_cnn.py": PACKAGE / "cnn.py",        # the from-scratch ``pneumonia_cnn`` architecture, for timm
}
AUTO_MAP = {
    "AutoConfig": f"{CODE_MODULE}.PneumoniaXrayConfig",
    "AutoModelForImageClassification": f"{CODE_MODULE}.PneumoniaXrayForImageClassification",
    "AutoImageProcessor": f"{CODE_MODULE}.PneumoniaXrayImageProcessor",
}
# Our pipeline for the task: it reads a file in its own mode, where transformers' would make a
# 16-bit film 8-bit RGB (clipped to white) before the image processor sees it.
CUSTOM_PIPELINES = {"image-classification": {
    "impl": f"{CODE_MODULE}.PneumoniaXrayPipeline", "pt": ["AutoModelForImageClassification"], "type": "image",
}}


def add_transformers_code(folder: Path) -> None:
    """Copy the transformers code into a model folder and point its ``config.json`` at it.

    Everything timm and ``load_classifier`` read stays as it was; running it twice changes nothing.
    """
    folder = Path(folder)
    for name, source in CODE_FILES.items():
        _write_if_changed(folder / name, source.read_text())
    folder_json.rewrite(folder / "config.json", transformers_config)


def transformers_config(config: dict) -> dict:
    """``config`` with what transformers needs added, nothing timm or the project reads taken away."""
    updated = dict(config)
    # TimmWrapper passes num_classes itself: a second one in model_args fails model creation with
    # "got multiple values for keyword argument 'num_classes'"; timm reads the top-level one.
    updated["model_args"] = {key: value for key, value in config.get("model_args", {}).items() if key != "num_classes"}
    updated["model_type"] = MODEL_TYPE
    updated["architectures"] = ["PneumoniaXrayForImageClassification"]
    updated["auto_map"] = dict(AUTO_MAP)
    updated["custom_pipelines"] = copy.deepcopy(CUSTOM_PIPELINES)
    updated["dtype"] = "float32"  # the weights are stored in float16; the project computes in float32
    if "temperature" in config:
        updated["temperature"] = float(config["temperature"])
    return updated


def _write_if_changed(path: Path, text: str) -> None:
    """Leave a file untouched (its modification time too) when it already holds ``text``."""
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)
