"""What training and the app share: labels, model presets, preprocessing and loading.

Importing this package registers the from-scratch ``pneumonia_cnn`` architecture with
timm, so ``timm.create_model("local-dir:<folder>")`` can rebuild every preset.
"""
from pneumonia.presets import LABEL_NAMES, POSITIVE_LABEL, PRESETS, Preset, UsageError, create_model
from pneumonia.preprocessing import XrayPreprocessing, build_transform, data_config_of, open_image, to_model_mode
from pneumonia.modeling import Classifier, Reading, load_classifier, probabilities

__all__ = [
    "LABEL_NAMES", "POSITIVE_LABEL", "PRESETS", "Preset", "UsageError", "create_model",
    "XrayPreprocessing", "build_transform", "data_config_of", "open_image", "to_model_mode",
    "Classifier", "Reading", "load_classifier", "probabilities",
]
