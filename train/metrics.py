"""Metrics with PNEUMONIA as the positive class, calibration, and the operating threshold.

scikit-learn, not `evaluate`: `evaluate.load` fetches metric code from the Hub at run
time, which fails offline (and on the CI machine).
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from sklearn import metrics as skm

ECE_BINS = 15


def expected_calibration_error(labels: np.ndarray, p_positive: np.ndarray, bins: int = ECE_BINS) -> float:
    """Mean |accuracy - confidence| of the predicted class over equal-width confidence bins."""
    predicted = (p_positive >= 0.5).astype(int)
    confidence = np.where(predicted == 1, p_positive, 1 - p_positive)
    correct = (predicted == labels).astype(float)
    edges = np.linspace(0.5, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    gap = 0.0
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            gap += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(gap)


def binary_metrics(labels: np.ndarray, p_positive: np.ndarray, threshold: float) -> dict:
    """Accuracy, precision, recall (sensitivity), specificity, F1, ROC-AUC, ECE, confusion matrix."""
    labels = np.asarray(labels).astype(int)
    p_positive = np.asarray(p_positive, dtype=float)
    predicted = (p_positive >= threshold).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(labels, predicted, labels=[0, 1]).ravel().tolist()
    both_classes = len(set(labels.tolist())) == 2
    return {
        "n": int(len(labels)),
        "accuracy": float(skm.accuracy_score(labels, predicted)),
        "precision": float(skm.precision_score(labels, predicted, zero_division=0)),
        "recall": float(skm.recall_score(labels, predicted, zero_division=0)),
        "specificity": tn / (tn + fp) if tn + fp else 0.0,
        "f1": float(skm.f1_score(labels, predicted, zero_division=0)),
        "roc_auc": float(skm.roc_auc_score(labels, p_positive)) if both_classes else float("nan"),
        "ece": expected_calibration_error(labels, p_positive),
        "confusion_matrix": {"tn": tn, "fp": fp, "fn": fn, "tp": tp},
    }


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T minimising validation NLL of softmax(logits / T) (Guo et al., 2017)."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels).astype(int)

    def nll(log_t: float) -> float:
        probs = _softmax(logits / np.exp(log_t))
        return float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)).mean())

    best = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(best.x))


THRESHOLD_RULES = {
    "balanced": "best balanced accuracy on clean + shifted validation",
    "f1": "best F1 on validation",
    "sensitivity95": "best specificity with sensitivity >= 0.95 on validation",
}


def choose_threshold(labels: np.ndarray, p_positive: np.ndarray, rule: str) -> float:
    """Operating threshold on P(PNEUMONIA), chosen on validation.

    ``balanced``: the best balanced accuracy (sensitivity + specificity) / 2, which does not
    depend on the share of pneumonia in the films. ``f1``: the best F1. ``sensitivity95``:
    among thresholds that catch >= 95% of pneumonia cases, the one with the best specificity.
    """
    labels = np.asarray(labels).astype(int)
    if rule == "balanced":
        fpr, tpr, thresholds = skm.roc_curve(labels, p_positive)
        return float(min(thresholds[int(np.argmax(tpr - fpr))], 1.0))
    if rule == "f1":
        precision, recall, thresholds = skm.precision_recall_curve(labels, p_positive)
        f1 = 2 * precision[:-1] * recall[:-1] / np.clip(precision[:-1] + recall[:-1], 1e-12, None)
        return float(thresholds[int(np.argmax(f1))])
    if rule == "sensitivity95":
        fpr, tpr, thresholds = skm.roc_curve(labels, p_positive)
        ok = np.flatnonzero(tpr >= 0.95)
        best = ok[np.argmin(fpr[ok])]
        return float(min(thresholds[best], 1.0))
    raise ValueError(f"unknown threshold rule {rule!r}")


ANSWERED_ACCURACY_TARGET = 0.97  # docs/choices.md rule 6
BAND_STEP = 0.005


def answered(p_positive: np.ndarray, threshold: float, band: float) -> np.ndarray:
    """Which films are answered: calibrated P outside the uncertain band [t - band, t + band]
    (``pneumonia.modeling.Classifier.is_uncertain`` is the same rule)."""
    return np.abs(np.asarray(p_positive, dtype=float) - threshold) > band


def selective_metrics(labels: np.ndarray, p_positive: np.ndarray, threshold: float, band: float) -> dict:
    """Coverage (the share of films answered, not called uncertain) and the accuracy among them."""
    labels, p_positive = np.asarray(labels).astype(int), np.asarray(p_positive, dtype=float)
    kept = answered(p_positive, threshold, band)
    correct = (p_positive >= threshold).astype(int) == labels
    return {"uncertain_band": band, "coverage": float(kept.mean()) if len(kept) else float("nan"),
            "answered_accuracy": float(correct[kept].mean()) if kept.any() else float("nan"),
            "uncertain": int((~kept).sum())}


def choose_uncertain_band(labels: np.ndarray, p_positive: np.ndarray, threshold: float,
                          target: float = ANSWERED_ACCURACY_TARGET, step: float = BAND_STEP) -> float:
    """The narrowest band [t - w, t + w], w on a grid of ``step``, outside which the films reach
    ``target`` accuracy (rule 6, on shifted validation). Where no band does, the one with the best
    answered accuracy that still answers a film."""
    widest = float(np.abs(np.asarray(p_positive, dtype=float) - threshold).max()) if len(p_positive) else 0.0
    best, best_accuracy = 0.0, -1.0
    for w in np.round(np.arange(0.0, widest, step), 6):
        accuracy = selective_metrics(labels, p_positive, threshold, float(w))["answered_accuracy"]
        if accuracy >= target:
            return float(w)
        if accuracy > best_accuracy:
            best, best_accuracy = float(w), accuracy
    return best


def risk_coverage(labels: np.ndarray, p_positive: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(coverage, accuracy among answered) as the band widens: films answered most confident
    first, confidence being the distance of P from the threshold."""
    labels, p_positive = np.asarray(labels).astype(int), np.asarray(p_positive, dtype=float)
    order = np.argsort(-np.abs(p_positive - threshold), kind="stable")
    correct = ((p_positive >= threshold).astype(int) == labels)[order]
    kept = np.arange(1, len(order) + 1)
    return kept / len(order), np.cumsum(correct) / kept
