"""Fit a model folder's out-of-distribution gate: answer, caution (an adult's film) or refuse.

The Gaussians come from the training films under the run's own augmentation; the heads from
those films against the scope images (``train/gate/scope.py``, which also states the cut-off
rule); the cut-offs from clean and shifted validation. Then the gate is scored, once, on test,
on the scope images (in-sample and leave-one-dataset-out) and on non-X-ray probes. Everything here
works on features already read (``train.sweep``); ``train.post_training`` reads them and stores
the gate, and ``python -m train.gate`` refits a folder's gate.
"""
from __future__ import annotations

import numpy as np

import pneumonia
from pneumonia.modeling import calibrated_probabilities
from pneumonia.ood import OodGate
from train.gate import scope
from train.gate.probes import probe_images
from train.sweep import Outputs

Found = dict[str, "Outputs | list[Outputs]"]  # one runner's outputs per set (train.sweep.sweep)


def fit_gate(layers: list[str], widths: list[int], found: Found, scope_set: scope.ScopeSet | None,
             options: dict = scope.OPTIONS) -> OodGate:
    """The gate from one runner's features: Gaussians on the training films; with scope images,
    the heads and the rule's cut-offs; without, the distance cut-off at 99% of clean validation."""
    gate = OodGate.fit(layers, widths, (found["train"].features, found["train"].labels), found["validation"].features)
    if scope_set is not None:
        scope.fit_heads(gate, scope_features(found, scope_set), options=options)
    return gate


def scope_features(found: Found, scope_set: scope.ScopeSet) -> scope.Features:
    rows = found["scope_clean"].index
    return scope.Features(found["train"].features, found["shifted_train"].features, found["validation"].features,
                          found["shifted_validation"].features, [draw.features for draw in found["scope"]],
                          scope_set.categories[rows], scope_set.datasets[rows])


def outcome_counts(gate: OodGate, features: np.ndarray, odd: np.ndarray) -> dict:
    """Films, and how many the gate refuses (image checks included) and cautions."""
    verdicts = gate.verdicts(features)
    refused = np.array([v.outcome == "refuse" for v in verdicts]) | odd
    cautioned = np.array([v.outcome == "caution" for v in verdicts]) & ~refused
    return {"films": int(len(refused)), "refused": int(refused.sum()), "cautioned": int(cautioned.sum()),
            "pass_rate": float(1 - refused.mean()), "refused_by_image_checks": int(odd.sum())}


def gate_report(gate: OodGate, found: Found, classifier: pneumonia.Classifier, scope_set: scope.ScopeSet | None,
                leave_one_out: bool = True) -> dict:
    """metrics.json's "ood": the gate's outcomes on each split, on the scope images (in-sample and,
    with ``leave_one_out``, leave-one-dataset-out), on adults' films and on the non-X-ray probes."""
    report = {"fitted_on": {"split": "train", "films": int(len(found["train"].labels))}, "version": 2 if gate.heads else 1,
              "splits": {name: outcome_counts(gate, found[name].features, found[name].odd)
                         for name in ("validation", "shifted_validation", "test")}}
    if gate.heads is not None and scope_set is not None:
        features = scope_features(found, scope_set)
        report["scope"] = {"datasets": sorted(set(features.datasets)), "images": len(features.categories),
                           "drawn_from": scope_set.drawn_from or len(scope_set.images),
                           "sampled": scope_set.drawn_from is not None,  # a quick run's share of them
                           "augmented_draws": len(features.scope) - 1,
                           "in_sample": scope.shares(gate.verdicts(features.scope[0]), features.categories, features.datasets)}
        if leave_one_out:
            report["scope"]["leave_one_dataset_out"] = scope.leave_one_dataset_out(gate, features)
        report["adult_films"] = adult_films(found["scope_clean"], scope_set, classifier)
    report["probes"] = probe_report(classifier)
    return report


def adult_films(scope_clean: Outputs, scope_set: scope.ScopeSet, classifier: pneumonia.Classifier) -> dict | None:
    """How the model reads healthy adults' frontal films (the caution quotes it), from their logits."""
    rows = scope_clean.index
    films = (scope_set.categories[rows] == "adult_frontal") & (scope_set.findings[rows] == "normal")
    if not films.any():
        return None
    p = calibrated_probabilities(scope_clean.logits[films], classifier.temperature)[:, 1]
    return {"films": int(films.sum()), "finding": "normal",  # called PNEUMONIA at the operating threshold
            "called_pneumonia": float(np.mean(p >= classifier.threshold))}


def probe_report(classifier: pneumonia.Classifier) -> list[dict]:
    """The gate's verdict on each non-X-ray probe image."""
    probes = probe_images()
    readings = classifier.read([image for _, _, image in probes])
    return [{"name": name, "kind": kind, "refused": reading.refused, "why": reading.reason, "scores": reading.scores,
             "p_pneumonia": reading.probabilities[pneumonia.POSITIVE_LABEL]}
            for (name, kind, _), reading in zip(probes, readings)]


def summary(report: dict) -> str:
    lines = [f"gate: {s['pass_rate']:.1%} of {s['films']} {name.replace('_', ' ')} films pass ({s['refused']} refused, "
             f"{s['cautioned']} cautioned)" for name, s in report["splits"].items()]
    if "scope" in report:
        scope_read = report["scope"]
        lines.append(f"gate: fitted with {scope_read['images']} of the {scope_read['drawn_from']} scope images, "
                     f"{scope_read['augmented_draws']} augmented draws of each (in proportion to the run's training films)")
    for category, found in report.get("scope", {}).get("leave_one_dataset_out", {}).items():
        lines.append(f"gate: {category}: {found['refused']:.1%} refused ({found['refused_as_adult']:.1%} as an adult's "
                     f"film), {found['cautioned']:.1%} cautioned of {found['images']} (leave-one-dataset-out)")
        for name, held in found.get("by_dataset", {}).items():
            lines.append(f"gate:   {name}: {held['answered']:.1%} answered without a caution, {held['cautioned']:.1%} "
                         f"cautioned, {held['refused_as_adult']:.1%} refused as an adult's film of {held['images']}")
    refused = [p for p in report["probes"] if p["refused"]]
    lines.append(f"gate: refuses {len(refused)} of {len(report['probes'])} non-X-ray probes; passes: "
                 + (", ".join(p["name"] for p in report["probes"] if not p["refused"]) or "none"))
    return "\n".join(lines)


def compare_options(layers: list[str], widths: list[int], found: Found, scope_set: scope.ScopeSet,
                    grid: dict) -> list[dict]:
    """Leave-one-dataset-out shares per category for each row of ``grid`` (nothing is written):
    a row changes some options of one head from ``scope.OPTIONS``; the head "both" changes the
    refusal and the adult head together."""
    gate, features, rows = fit_gate(layers, widths, found, None), scope_features(found, scope_set), []
    for head, changes in grid.items():
        for change in changes:
            changed = ("refuse", "adult") if head == "both" else (head,)
            options = {**scope.OPTIONS, **{h: {**scope.OPTIONS[h], **change} for h in changed}}
            rows.append({"head": head, **change, **scope.leave_one_dataset_out(gate, features, options)})
    return rows


def _budgets(*pairs: tuple[float, float]) -> list[dict]:
    return [{"validation": clean, "shifted_validation": shifted} for clean, shifted in pairs]


COMPARE_GRID = {
    "refuse": [{"C": c} for c in (0.001, 0.01, 0.1, 1.0)] + [{"draws": d} for d in (0, 4)],
    "adult": [{"C": c} for c in (0.001, 0.01, 0.1, 1.0)] + [{"draws": d} for d in (0, 4)]
             + [{"children": children, "caution_budget": budget} for children in ("augmented", "shifted")
                for budget in _budgets((0.01, 0.02), (0.005, 0.01), (0.0025, 0.005))],
    "both": [{"children": "shifted"}],
    "kind": [{"C": c} for c in (0.01, 0.1, 1.0)] + [{"draws": d} for d in (0, 4)],
}
