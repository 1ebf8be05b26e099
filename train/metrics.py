"""Metrics with PNEUMONIA as the positive class, calibration, and the operating threshold.

scikit-learn, not `evaluate`: `evaluate.load` fetches metric code from the Hub at run
time, which fails offline (and on the CI machine).
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.stats import beta, binom
from sklearn import metrics as skm

from pneumonia.answering import NORMAL, PNEUMONIA, UNCERTAIN, Cutoffs
from pneumonia.modeling import calibrated_probabilities

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


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T minimising validation NLL of softmax(logits / T) (Guo et al., 2017)."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels).astype(int)

    def nll(log_t: float) -> float:
        probs = calibrated_probabilities(logits, np.exp(log_t))
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


# Rule 7 of docs/choices.md: the levels of answered accuracy a folder carries cut-offs for, the
# default one, and the confidence of each side's guarantee.
ANSWER_LEVELS = (0.95, 0.97, 0.99)
DEFAULT_ANSWER_LEVEL = 0.97
SIDE_CONFIDENCE = 0.95
CUTOFF_STEP = 0.005
TRADEOFF_ERRORS = (0.01, 0.02, 0.03, 0.04, 0.05)
TRADEOFF_CONFIDENCES = (0.80, 0.90, 0.95, 0.99)
ANSWER_RULE = ("each side's cut-off is the widest on a 0.005 grid, searched from the side's extreme toward the "
               "threshold in a fixed sequence (starting at the first candidate answering enough films to pass), "
               "whose answered shifted validation films are wrong at most (1 - level) of the time by the exact "
               "binomial test (Clopper-Pearson) at the side's confidence")


def binomial_p_value(wrong: int, answered: int, max_error: float) -> float:
    """P(Binomial(answered, max_error) <= wrong), the exact one-sided test of "the error exceeds
    max_error": at most 1 - c exactly when the Clopper-Pearson upper bound at confidence c is at
    most max_error. 1 when nothing is answered."""
    return float(binom.cdf(wrong, answered, max_error)) if answered else 1.0


def error_upper_bound(wrong: int, answered: int, confidence: float = SIDE_CONFIDENCE) -> float:
    """The one-sided Clopper-Pearson upper bound on the error rate; 1 when nothing is answered."""
    return float(beta.ppf(confidence, wrong + 1, answered - wrong)) if wrong < answered else 1.0


def side_candidates(side: int, threshold: float, step: float = CUTOFF_STEP) -> np.ndarray:
    """Rule 7's candidate cut-offs for one side, in the order they are tested: from the side's
    extreme inward to the threshold (PNEUMONIA: 1 - step down to the lowest grid point at or above
    t; NORMAL: step up to the highest grid point below t)."""
    scale = round(1 / step)
    nearest = int(np.ceil(threshold * scale - 1e-9))  # the lowest grid point at or above t
    if side == PNEUMONIA:
        return np.round(np.arange(scale - 1, nearest - 1, -1) / scale, 6)
    return np.round(np.arange(1, nearest) / scale, 6)


def fewest_to_pass(max_error: float, confidence: float = SIDE_CONFIDENCE) -> int:
    """The fewest answered films with which the binomial test passes at all (none of them wrong)."""
    return int(np.ceil(np.log(1 - confidence) / np.log(1 - max_error) - 1e-9))


def choose_side_cutoff(labels: np.ndarray, p_positive: np.ndarray, side: int, level: float, threshold: float,
                       confidence: float = SIDE_CONFIDENCE) -> float | None:
    """Fixed-sequence testing (Learn-then-Test) over ``side_candidates``: candidates answering too
    few films to pass even with no error are skipped (a count of P alone, never of labels); from
    the first that could pass, the last cut-off before the first whose answered films fail the
    binomial test. None when that first one fails, or none could pass."""
    labels, p_positive = np.asarray(labels).astype(int), np.asarray(p_positive, dtype=float)
    error, chosen = 1 - level, None
    for cut in side_candidates(side, threshold):
        answered = p_positive >= cut if side == PNEUMONIA else p_positive <= cut
        if chosen is None and answered.sum() < fewest_to_pass(error, confidence):
            continue
        if binomial_p_value(int((labels[answered] != side).sum()), int(answered.sum()), error) > 1 - confidence:
            break
        chosen = float(cut)
    return chosen


def choose_cutoffs(labels: np.ndarray, p_positive: np.ndarray, threshold: float, level: float,
                   confidence: float = SIDE_CONFIDENCE) -> Cutoffs:
    """Rule 7 on one split (the shifted validation): each side's cut-off at ``level``."""
    return Cutoffs(choose_side_cutoff(labels, p_positive, NORMAL, level, threshold, confidence),
                   choose_side_cutoff(labels, p_positive, PNEUMONIA, level, threshold, confidence), level)


def selective_metrics(labels: np.ndarray, p_positive: np.ndarray, cutoffs: Cutoffs,
                      confidence: float = SIDE_CONFIDENCE) -> dict:
    """Coverage (the share of films answered) and accuracy among answered films, overall and per
    side, with each side's Clopper-Pearson upper bound on its error at ``confidence``."""
    labels, p_positive = np.asarray(labels).astype(int), np.asarray(p_positive, dtype=float)
    sides = cutoffs.sides(p_positive)
    kept = sides != UNCERTAIN
    found = {"level": cutoffs.level, "cutoffs": cutoffs.band,
             "coverage": float(kept.mean()) if len(kept) else float("nan"),
             "answered_accuracy": float((sides[kept] == labels[kept]).mean()) if kept.any() else float("nan"),
             "uncertain": int((~kept).sum())}
    for side, name in ((NORMAL, "normal"), (PNEUMONIA, "pneumonia")):
        on_side = sides == side
        answered, wrong = int(on_side.sum()), int((labels[on_side] != side).sum())
        found[name] = {"answered": answered, "coverage": answered / len(labels) if len(labels) else float("nan"),
                       "accuracy": 1 - wrong / answered if answered else float("nan"),
                       "error_bound": error_upper_bound(wrong, answered, confidence)}
    return found


def coverage_tradeoff(labels: np.ndarray, p_positive: np.ndarray, threshold: float) -> list[dict]:
    """What a stricter guarantee costs: rule 7's coverage for each allowed error and confidence."""
    return [{"error": error, "confidence": confidence,
             "coverage": selective_metrics(labels, p_positive, choose_cutoffs(labels, p_positive, threshold,
                                                                              1 - error, confidence))["coverage"]}
            for error in TRADEOFF_ERRORS for confidence in TRADEOFF_CONFIDENCES]


def risk_coverage(labels: np.ndarray, p_positive: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(coverage, accuracy among answered) as more films are answered, those most likely right
    first: by the calibrated probability of the threshold's decision (P at or above t, else 1 - P)."""
    labels, p_positive = np.asarray(labels).astype(int), np.asarray(p_positive, dtype=float)
    predicted = (p_positive >= threshold).astype(int)
    order = np.argsort(-np.where(predicted == 1, p_positive, 1 - p_positive), kind="stable")
    correct = (predicted == labels)[order]
    kept = np.arange(1, len(order) + 1)
    return kept / len(order), np.cumsum(correct) / kept
