"""Write a finished run as a Hub-ready timm model folder."""
from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import numpy as np
import timm.models
from torch import nn

from pneumonia.presets import LABEL_NAMES, POSITIVE_LABEL, PRESETS
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
        },
        safe_serialization=True,
    )
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    save_config(config, output_dir / "training_config.json")


def _base_model(config: TrainConfig) -> str | None:
    """The timm ImageNet checkpoint the run started from, if any."""
    if not (config.pretrained or config.pretrained_file):
        return None
    return f"timm/{PRESETS[config.model].timm_name}"


def write_predictions(path: Path, rows: dict[str, tuple[list[str], np.ndarray, np.ndarray]]) -> None:
    """Per-image calibrated P(PNEUMONIA) for each split: for error analysis and parity checks."""
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["split", "file", "label", "p_pneumonia"])
        for split, (files, labels, p_positive) in rows.items():
            for name, label, p in zip(files, labels, p_positive):
                out.writerow([split, name, LABEL_NAMES[int(label)], f"{p:.6f}"])
