"""Compare finished runs, one row each: the command, validation, shifted validation and test.

    python -m train.evaluate.compare runs/* [--output comparison.md] [--threshold-rule f1]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from train.checkpoints import RUN_CONTROL
from train.config import TrainConfig, resolve
from train.export.folder import read_predictions
from train.metrics import THRESHOLD_RULES, binary_metrics, choose_threshold

TEST_COLUMNS = {"precision": "precision", "recall": "recall", "specificity": "specificity", "f1": "F1",
                "roc_auc": "ROC-AUC", "accuracy": "accuracy", "ece": "ECE"}
_NOT_RECIPE = RUN_CONTROL | {"dataset", "output_dir"}


def command_of(config: dict) -> str:
    """The `python -m train` flags that differ from the defaults (dataset and output left out)."""
    defaults = dataclasses.asdict(resolve(TrainConfig(model=config["model"])))
    flags = [f"--model {config['model']}"]
    for key, value in config.items():
        if key in _NOT_RECIPE or key == "model" or key not in defaults or value == defaults[key]:
            continue
        flag = "--" + key.replace("_", "-")
        flags.append((flag if value else f"--no-{flag[2:]}") if isinstance(value, bool) else f"{flag} {value}")
    return " ".join(flags)


def balanced_accuracy(found: dict) -> float:
    return (found["recall"] + found["specificity"]) / 2


def rethresholded(folder: Path, rule: str) -> dict:
    """The run's metrics.json with every split's numbers at the threshold ``rule`` picks on
    validation, from its predictions.csv (calibrated as trained). What-if, never a choice on test."""
    metrics = json.loads((folder / "metrics.json").read_text())
    split = read_predictions(folder / "predictions.csv")
    chosen_on = ["validation", "shifted_validation"] if rule == "balanced" else ["validation"]
    threshold = choose_threshold(np.concatenate([split[n][0] for n in chosen_on]),
                                 np.concatenate([split[n][1] for n in chosen_on]), rule)
    found = {name: binary_metrics(labels, p, threshold) for name, (labels, p) in split.items() if len(labels)}
    return {**metrics, **found, "threshold": threshold, "threshold_rule": rule}


def comparison_table(folders: list[Path], threshold_rule: str | None = None) -> str:
    header = ["run", "flags", "train time", "val ROC-AUC", "shifted val ROC-AUC", "mean", "shifted val bal. acc.",
              "Grad-CAM in chest box (val: all / PNEUMONIA)", "threshold", *[f"test {title}" for title in TEST_COLUMNS.values()]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for folder in folders:
        metrics = rethresholded(folder, threshold_rule) if threshold_rule else json.loads((folder / "metrics.json").read_text())
        config = json.loads((folder / "training_config.json").read_text())
        clean, shifted = metrics["validation"]["roc_auc"], metrics.get("shifted_validation", {}).get("roc_auc")
        shares = metrics.get("gradcam_central_share", {})
        share = _maybe(shares.get("validation"), "{:.0%}") + " / " + _maybe(shares.get("validation_PNEUMONIA"), "{:.0%}")
        cells = [
            folder.name, f"`{command_of(config)}`", f"{metrics['train_seconds'] / 60:.0f} min", f"{clean:.3f}",
            _maybe(shifted), _maybe(None if shifted is None else (clean + shifted) / 2),
            _maybe(balanced_accuracy(metrics["shifted_validation"]) if "shifted_validation" in metrics else None),
            share, f"{metrics['threshold']:.3f}",
            *[f"{metrics['test'][c]:.3f}" for c in TEST_COLUMNS],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _maybe(value: float | None, form: str = "{:.3f}") -> str:
    return "–" if value is None else form.format(value)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m train.evaluate.compare", description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="output folders of `python -m train`")
    parser.add_argument("--output", type=Path, help="also write the table to this Markdown file")
    parser.add_argument("--threshold-rule", choices=tuple(THRESHOLD_RULES),
                        help="show every split at the threshold this rule picks on validation instead of the run's own")
    args = parser.parse_args(argv)
    unfinished = [str(f) for f in args.folders if not (f / "metrics.json").is_file()]
    if unfinished:
        print(f"error: not finished runs (no metrics.json): {', '.join(unfinished)}; train them or leave them out", file=sys.stderr)
        sys.exit(2)
    write_comparison(args.folders, args.output, args.threshold_rule)


def write_comparison(folders: list[Path], output: Path | None, threshold_rule: str | None = None) -> None:
    table = comparison_table(folders, threshold_rule)
    print(table, end="")
    if output:
        output.write_text(table)


if __name__ == "__main__":
    main()
