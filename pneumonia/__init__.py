"""What training and the app share: labels, model presets, preprocessing and loading.

``from pneumonia import load_classifier`` needs only NumPy, Pillow and ONNX Runtime for the ONNX
backends: names are imported on first use, so torch and timm load only for what needs them (the
pytorch backend, Grad-CAM, presets, training's transform). Importing ``pneumonia.presets``
registers the from-scratch ``pneumonia_cnn`` architecture with timm, so
``timm.create_model("local-dir:<folder>")`` can rebuild every preset.
"""
from __future__ import annotations

import importlib

_WHERE = {
    "LABEL_NAMES": "labels", "POSITIVE_LABEL": "labels", "UsageError": "labels",
    "PRESETS": "presets", "Preset": "presets", "create_model": "presets",
    "XrayPreprocessing": "training_transform", "build_transform": "training_transform",
    "data_config_of": "training_transform",
    "open_image": "image_files", "to_model_mode": "pixels",
    "Classifier": "modeling", "Reading": "modeling", "load_classifier": "modeling",
    "calibrated_probabilities": "modeling",
}
__all__ = list(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'pneumonia' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"pneumonia.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
