"""When a model folder answers: its two cut-offs per level of answered accuracy, chosen on shifted
validation by rule 7 of docs/choices.md, and what they cost in coverage.

    python -m train.evaluate.uncertain runs/resnet18_half   # training runs this itself

A film is answered NORMAL when its calibrated P(PNEUMONIA) <= l, PNEUMONIA when P >= u, and
"uncertain: needs a radiologist's read" in between. For each level (95, 97, 99% answered
accuracy), each side's cut-off is the widest for which that side's answered shifted validation
films are wrong at most (1 - level) of the time, by the exact binomial test at 95% confidence
per side, searched in a fixed sequence (Learn-then-Test). From the folder's predictions.csv this
writes ``answer_cutoffs`` and ``answer_level`` into config.json (the app and
``Classifier.read`` apply them) and, per split and level, coverage and accuracy among answered
films, overall and per side, into metrics.json; the card draws risk_coverage.png.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from pneumonia import folder_json
from train.export.card import SPLIT_TITLES, write_card
from train.export.folder import read_predictions
from train.metrics import (ANSWER_LEVELS, ANSWER_RULE, DEFAULT_ANSWER_LEVEL, SIDE_CONFIDENCE, choose_cutoffs,
                           coverage_tradeoff, selective_metrics)

CHOSEN_ON = "shifted_validation"


def write_answer_cutoffs(folder: Path) -> dict:
    """Choose the cut-offs from predictions.csv; write them to config.json, their figures to
    metrics.json. Returns metrics.json's "answering"."""
    folder = Path(folder)
    predictions = read_predictions(folder / "predictions.csv")
    threshold = float(json.loads((folder / "config.json").read_text())["threshold"])
    levels = [choose_cutoffs(*predictions[CHOSEN_ON], threshold, level) for level in ANSWER_LEVELS]

    def with_cutoffs(config: dict) -> None:
        config.pop("uncertain_band", None)  # the symmetric band these replace
        config.update(answer_level=DEFAULT_ANSWER_LEVEL, answer_cutoffs=[cutoffs.to_config() for cutoffs in levels])

    folder_json.rewrite(folder / "config.json", with_cutoffs)

    found = {f"{cutoffs.level:g}": {split: selective_metrics(labels, p, cutoffs) for split, (labels, p) in predictions.items()}
             for cutoffs in levels}
    answering = {"rule": ANSWER_RULE, "chosen_on": CHOSEN_ON, "side_confidence": SIDE_CONFIDENCE,
                 "default_level": DEFAULT_ANSWER_LEVEL, "levels": found,
                 "tradeoff": coverage_tradeoff(*predictions[CHOSEN_ON], threshold)}

    def with_figures(metrics: dict) -> None:
        for split, numbers in found[f"{DEFAULT_ANSWER_LEVEL:g}"].items():
            metrics.setdefault(split, {}).update(numbers)  # the default level's figures beside each split's metrics
        for stale in ("uncertain_band", "uncertain_rule"):
            metrics.pop(stale, None)
        metrics["answering"] = answering

    folder_json.rewrite(folder / "metrics.json", with_figures)
    return answering


def print_report(answering: dict) -> None:
    for level, splits in answering["levels"].items():
        normal, pneumonia = next(iter(splits.values()))["cutoffs"]
        print(f"level {level}{' (default)' if float(level) == answering['default_level'] else ''}: "
              f"NORMAL when P <= {_cut(normal)}, PNEUMONIA when P >= {_cut(pneumonia)}")
        for split, m in splits.items():
            sides = ", ".join(f"{name} {m[name]['answered']} answered, {m[name]['accuracy']:.3f} right "
                              f"(bound on error {m[name]['error_bound']:.3f})" for name in ("normal", "pneumonia"))
            print(f"  {SPLIT_TITLES.get(split, split)}: coverage {m['coverage']:.3f}, accuracy among answered "
                  f"{m['answered_accuracy']:.3f} ({m['uncertain']} uncertain); {sides}")
    print(f"coverage on {SPLIT_TITLES[CHOSEN_ON]} by allowed error per side (rows) and confidence per side (columns):")
    confidences = sorted({row["confidence"] for row in answering["tradeoff"]})
    print("  error  " + "  ".join(f"{c:>5.0%}" for c in confidences))
    for error in sorted({row["error"] for row in answering["tradeoff"]}):
        cells = {row["confidence"]: row["coverage"] for row in answering["tradeoff"] if row["error"] == error}
        print(f"  {error:>5.0%}  " + "  ".join(f"{cells[c]:>5.3f}" for c in confidences))


def _cut(value: float | None) -> str:
    return "(none: no film)" if value is None else f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path, help="a model folder written by `python -m train` (with predictions.csv)")
    args = parser.parse_args()
    answering = write_answer_cutoffs(args.folder)
    if (args.folder / "README.md").is_file():  # the card shows the cut-offs, their coverage and the risk-coverage plot
        write_card(args.folder)
    print_report(answering)


if __name__ == "__main__":
    main()
