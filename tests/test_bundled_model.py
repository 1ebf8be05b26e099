"""The committed default model (what `make demo` serves) matches the numbers it was shipped with."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

import pneumonia
from tests.conftest import BUNDLED_MODEL as BUNDLED
from train.metrics import binary_metrics


def _rows(split: str) -> list[dict]:
    with (BUNDLED / "predictions.csv").open() as f:
        return [row for row in csv.DictReader(f) if row["split"] == split]


def test_bundled_model_reproduces_its_recorded_probabilities(data_dir):
    classifier = pneumonia.load_classifier(str(BUNDLED))
    rows = _rows("test")[::78]  # 8 images across both classes
    images = [pneumonia.open_image(data_dir / "test" / r["label"] / r["file"]) for r in rows]
    p = classifier.predict_proba(images)[:, 1].numpy()
    assert np.allclose(p, [float(r["p_pneumonia"]) for r in rows], atol=1e-5)


def test_bundled_metrics_follow_from_its_predictions():
    metrics = json.loads((BUNDLED / "metrics.json").read_text())
    config = json.loads((BUNDLED / "config.json").read_text())
    assert config["threshold"] == metrics["threshold"] and config["label_names"] == ["NORMAL", "PNEUMONIA"]
    for split in ("validation", "shifted_validation", "test"):
        rows = _rows(split)
        labels = np.array([r["label"] == "PNEUMONIA" for r in rows], dtype=int)
        p = np.array([float(r["p_pneumonia"]) for r in rows])
        recomputed = binary_metrics(labels, p, metrics["threshold"])
        assert recomputed["confusion_matrix"] == metrics[split]["confusion_matrix"]
        assert recomputed["roc_auc"] == pytest.approx(metrics[split]["roc_auc"], abs=1e-4)
    assert metrics["test"]["n"] == 624  # the whole official test split
