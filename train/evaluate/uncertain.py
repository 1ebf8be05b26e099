"""The "uncertain" outcome of a model folder: its band around the threshold, chosen on shifted
validation by rule 6 of docs/choices.md, and what it costs in coverage.

    python -m train.evaluate.uncertain runs/resnet18_half   # training runs this itself

Films whose calibrated P(PNEUMONIA) lies within [t - w, t + w] are answered "uncertain: needs a
radiologist's read". w is the narrowest on a 0.005 grid for which the films answered on the
shifted validation reach 97% accuracy. From the folder's predictions.csv this writes
``uncertain_band`` into config.json (the app and ``Classifier.read`` apply it), and coverage and
accuracy among answered films per split into metrics.json; the card draws risk_coverage.png.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from train.export.card import SPLIT_TITLES, write_card
from train.export.folder import read_predictions
from train.metrics import ANSWERED_ACCURACY_TARGET, choose_uncertain_band, selective_metrics


def write_uncertain_band(folder: Path) -> dict:
    """Choose the band from predictions.csv, write it to config.json and metrics.json."""
    folder = Path(folder)
    predictions = read_predictions(folder / "predictions.csv")
    config = json.loads((folder / "config.json").read_text())
    threshold = float(config["threshold"])
    band = choose_uncertain_band(*predictions["shifted_validation"], threshold)
    config["uncertain_band"] = band
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    metrics = json.loads((folder / "metrics.json").read_text())
    found = {split: selective_metrics(labels, p, threshold, band) for split, (labels, p) in predictions.items()}
    for split, numbers in found.items():
        metrics.setdefault(split, {}).update(numbers)
    metrics["uncertain_band"] = band
    metrics["uncertain_rule"] = (f"narrowest band around the threshold for which the films answered on shifted "
                                 f"validation reach {ANSWERED_ACCURACY_TARGET:.0%} accuracy")
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path, help="a model folder written by `python -m train` (with predictions.csv)")
    args = parser.parse_args()
    found = write_uncertain_band(args.folder)
    if (args.folder / "README.md").is_file():  # the card shows the band, its coverage and the risk-coverage plot
        write_card(args.folder)
    band = json.loads((args.folder / "config.json").read_text())["uncertain_band"]
    print(f"uncertain band: threshold ± {band:.3f}")
    for split, numbers in found.items():
        print(f"{SPLIT_TITLES.get(split, split)}: coverage {numbers['coverage']:.3f}, "
              f"accuracy among answered {numbers['answered_accuracy']:.3f} ({numbers['uncertain']} uncertain)")


if __name__ == "__main__":
    main()
