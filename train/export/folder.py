"""Write a finished run as a Hub-ready timm model folder."""
from __future__ import annotations

import copy
import csv
from pathlib import Path

import numpy as np
import timm.models
from torch import nn

from pneumonia import folder_json
from pneumonia.hub_code import add_transformers_code
from pneumonia.presets import LABEL_NAMES, POSITIVE_LABEL, PRESETS
from train import tflite_weights
from train.config import TrainConfig, save_config


def write_model_folder(
    model: nn.Module, output_dir: Path, config: TrainConfig, operating_point: dict, metrics: dict
) -> None:
    """config.json (timm format + labels, threshold, temperature, preprocessing), weights, metrics, config."""
    if config.weights_dtype == "float16":
        model = copy.deepcopy(model).half()
    timm.models.save_for_hf(
        model,
        output_dir,
        model_config={
            "label_names": list(LABEL_NAMES),
            "positive_label": POSITIVE_LABEL,
            **operating_point,
            "preset": config.model,
            "base_model": _base_model(config),
            "initial_weights": tflite_weights.provenance(config.pretrained_file)
            if tflite_weights.is_tflite(config.pretrained_file) else None,
        },
        safe_serialization=True,
    )
    folder_json.rewrite(output_dir / "config.json", own_metadata)  # timm wrote it; the project's keys join
    add_transformers_code(output_dir)  # pipeline(..., trust_remote_code=True) gives the same probabilities
    folder_json.write(output_dir / "metrics.json", metrics)
    save_config(config, output_dir / "training_config.json")


# What pretrained_cfg says about this model: how to feed it. timm copies the rest (tag, paper,
# origin, licence, test-time size, pool size at 224 px) from the ImageNet checkpoint it is named after.
OWN_PRETRAINED_CFG = ("input_size", "interpolation", "crop_pct", "crop_mode", "mean", "std", "num_classes",
                      "first_conv", "classifier", "fixed_input_size")
LICENSE = "cc-by-4.0"  # the weights learned from CC BY 4.0 data; the card says the same


def own_metadata(config: dict) -> dict:
    """config.json describing this model, not the ImageNet checkpoint of its architecture; and
    ``num_classes`` once (in ``model_args`` too, transformers passes it twice and fails)."""
    config = copy.deepcopy(config)
    pretrained = config.get("pretrained_cfg", {})
    config["pretrained_cfg"] = {key: pretrained[key] for key in OWN_PRETRAINED_CFG if key in pretrained}
    config["pretrained_cfg"]["license"] = LICENSE
    config.get("model_args", {}).pop("num_classes", None)
    return config


def _base_model(config: TrainConfig) -> str | None:
    """The timm ImageNet checkpoint the run started from, if any."""
    if not (config.pretrained or config.pretrained_file) or tflite_weights.is_tflite(config.pretrained_file):
        return None  # from scratch, or weights that are not a Hub checkpoint (``initial_weights`` says what)
    return f"timm/{PRESETS[config.model].timm_name}"


def write_predictions(path: Path, rows: dict[str, tuple[list[str], np.ndarray, np.ndarray]]) -> None:
    """Per-image calibrated P(PNEUMONIA) for each split: for error analysis and parity checks."""
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["split", "file", "label", "p_pneumonia"])
        for split, (files, labels, p_positive) in rows.items():
            for name, label, p in zip(files, labels, p_positive):
                out.writerow([split, name, LABEL_NAMES[int(label)], f"{p:.6f}"])


def read_predictions(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """predictions.csv -> {split: (labels as 0/1, calibrated P(PNEUMONIA))}, in the file's order."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    splits = dict.fromkeys(row["split"] for row in rows)
    return {split: (np.array([r["label"] == POSITIVE_LABEL for r in rows if r["split"] == split], dtype=int),
                    np.array([float(r["p_pneumonia"]) for r in rows if r["split"] == split]))
            for split in splits}
