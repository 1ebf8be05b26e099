"""Model outputs over a loader, and the numbers computed from them: shared by training and
``train.evaluate.score``."""
from __future__ import annotations

import numpy as np
import torch

from pneumonia.gradcam import central_share, grad_cam
from pneumonia.modeling import calibrated_probabilities
from pneumonia.presets import LABEL_NAMES
from train.data import logged_batches
from train.metrics import binary_metrics, choose_threshold, fit_temperature


@torch.no_grad()
def gathered_logits(model, loader, accelerator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(logits, labels, dataset row indices) for every readable image, from all processes."""
    model.eval()
    parts = []
    for batch in logged_batches(loader):
        logits = model(batch["pixel_values"])
        parts.append(accelerator.gather_for_metrics((logits.float(), batch["labels"], batch["index"], batch["readable"])))
    if not parts:
        return np.zeros((0, 2), np.float32), np.zeros(0, int), np.zeros(0, int)
    logits, labels, index, readable = (torch.cat(column).cpu().numpy() for column in zip(*parts))
    return logits[readable], labels[readable], index[readable]


def quick_metrics(logits: np.ndarray, labels: np.ndarray) -> dict:
    """Uncalibrated numbers at threshold 0.5, for choosing the best epoch."""
    probs = calibrated_probabilities(logits)
    nll = float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)).mean())
    found = binary_metrics(labels, probs[:, 1], threshold=0.5)
    return {"loss": nll, "roc_auc": found["roc_auc"], "f1": found["f1"], "accuracy": found["accuracy"]}


def epoch_metrics(clean: tuple[np.ndarray, np.ndarray], shifted: tuple[np.ndarray, np.ndarray]) -> dict:
    """Clean and shifted validation numbers, and the mean ROC-AUC that picks the best epoch."""
    found = quick_metrics(*clean)
    found.update({f"shifted_{k}": v for k, v in quick_metrics(*shifted).items()})
    found["mean_roc_auc"] = (found["roc_auc"] + found["shifted_roc_auc"]) / 2
    return found


def p_positive(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Calibrated P(PNEUMONIA) per image."""
    return calibrated_probabilities(logits, temperature)[:, 1]


def choose_operating_point(clean: tuple, shifted: tuple, rule: str) -> dict:
    """Temperature (NLL of clean + shifted validation) and threshold (by ``rule``) from the
    (logits, labels, ...) outputs of the two validation sets."""
    logits, labels = np.concatenate([clean[0], shifted[0]]), np.concatenate([clean[1], shifted[1]])
    temperature = fit_temperature(logits, labels)
    if rule == "balanced":  # on both: where films from another scanner still fall on the right side
        threshold = choose_threshold(labels, p_positive(logits, temperature), rule)
    else:
        threshold = choose_threshold(clean[1], p_positive(clean[0], temperature), rule)
    return {"threshold": threshold, "temperature": temperature, "threshold_rule": rule}


def gradcam_central_share(model, dataset, limit: int = 120, batch_size: int = 16) -> dict[str, float]:
    """Mean share of the PNEUMONIA Grad-CAM mass inside the central chest box over up to
    ``limit`` readable images spread evenly through ``dataset`` (an XrayDataset): over all of
    them ("all") and per true label (on a NORMAL film the map shows the little evidence there is)."""
    rows = np.linspace(0, len(dataset) - 1, num=min(limit, len(dataset))).round().astype(int)
    shares, labels = [], []
    for start in range(0, len(rows), batch_size):
        items = [item for item in (dataset[int(i)] for i in rows[start:start + batch_size]) if item["readable"]]
        if items:
            pixels = torch.stack([item["pixel_values"] for item in items]).to(next(model.parameters()).device)
            shares.append(central_share(grad_cam(model, pixels)[1]))
            labels += [int(item["labels"]) for item in items]
    shares, labels = (np.concatenate(shares), np.array(labels)) if shares else (np.array([np.nan]), np.array([-1]))
    found = {"all": float(np.nanmean(shares))}
    for index, name in enumerate(LABEL_NAMES):
        if (labels == index).any():
            found[name] = float(np.nanmean(shares[labels == index]))
    return found
