"""The ablation table of rule 6 (docs/choices.md): recipes for the bundled model, each row with its
cost beside its validation and shifted-validation figures. Test figures are not read here.

    python -m train.evaluate.ablation runs/ablation/resnet18_half_128 runs/ablation/resnet18_half_224 \
        --tta runs/ablation/resnet18_half_224 --ensemble runs/ablation/resnet18_half_128 runs/ablation/resnet18_half_128_seed43

A row is a finished run folder; ``--tta FOLDER`` adds the row "FOLDER with flip test-time
augmentation" (mean of the calibrated P of each film and its mirror); ``--ensemble A B ...`` adds
"the mean of their calibrated P". Costs: training minutes (metrics.json), int8 ONNX milliseconds
per film on this machine (median of 50 single-film runs, one thread each, the way the app's
single uploads run), and MB of the files the app loads (weights, int8 ONNX, gate).
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import ImageOps
from sklearn.metrics import roc_auc_score

from train.config import split_seed_of
from train.export.folder import read_predictions
from train.metrics import DEFAULT_ANSWER_LEVEL, choose_cutoffs, selective_metrics

SHIPPED = ("model.safetensors", "model.int8.onnx", "ood.safetensors", "ood.onnx-int8.safetensors")
VALIDATION = ("validation", "shifted_validation")


@dataclass
class Row:
    name: str
    p: dict[str, np.ndarray]       # calibrated P(PNEUMONIA) per validation split
    labels: dict[str, np.ndarray]
    threshold: float
    train_minutes: float
    int8_ms: float
    megabytes: float

    def figures(self) -> dict:
        auc = {split: roc_auc_score(self.labels[split], self.p[split]) for split in VALIDATION}
        shifted = self.labels["shifted_validation"], self.p["shifted_validation"]
        cutoffs = choose_cutoffs(*shifted, self.threshold, DEFAULT_ANSWER_LEVEL)  # rule 7, at the default level
        at_cutoffs = selective_metrics(*shifted, cutoffs)
        return {"val": auc["validation"], "shifted": auc["shifted_validation"],
                "mean": (auc["validation"] + auc["shifted_validation"]) / 2,
                "gap": auc["validation"] - auc["shifted_validation"], "cutoffs": cutoffs, "coverage": at_cutoffs["coverage"]}


def run_row(folder: Path) -> Row:
    predictions = read_predictions(folder / "predictions.csv")
    metrics = json.loads((folder / "metrics.json").read_text())
    return Row(folder.name, {s: predictions[s][1] for s in VALIDATION}, {s: predictions[s][0] for s in VALIDATION},
               json.loads((folder / "config.json").read_text())["threshold"], metrics["train_seconds"] / 60,
               int8_milliseconds(folder), megabytes(folder))


def tta_row(folder: Path) -> Row:
    """The run's films and their mirrors, calibrated, averaged (fp32 ONNX when the folder has it: faster)."""
    import pneumonia

    row = run_row(folder)
    classifier = pneumonia.load_classifier(str(folder), backend="onnx-fp32" if (folder / "model.onnx").is_file() else "pytorch")
    for split, films in validation_films(folder).items():
        both = [classifier.predict_proba(batch)[:, 1] for batch in _batches(films + [ImageOps.mirror(f) for f in films])]
        both = np.concatenate(both)
        if len(both) != 2 * len(row.p[split]):
            raise SystemExit(f"{folder}: {len(films)} {split} films, but predictions.csv has {len(row.p[split])}")
        row.p[split] = (both[:len(films)] + both[len(films):]) / 2
    row.threshold = _rebalanced_threshold(row)
    row.name, row.int8_ms = f"{folder.name} + flip TTA", 2 * row.int8_ms
    return row


def ensemble_row(folders: list[Path]) -> Row:
    rows = [run_row(folder) for folder in folders]
    for row in rows[1:]:
        if any(len(row.labels[s]) != len(rows[0].labels[s]) or (row.labels[s] != rows[0].labels[s]).any() for s in VALIDATION):
            raise SystemExit(f"{row.name}: not the same validation films as {rows[0].name} (train them with one --split-seed)")
    ensemble = Row(" + ".join(r.name for r in rows), {s: np.mean([r.p[s] for r in rows], axis=0) for s in VALIDATION},
                   rows[0].labels, 0.5, sum(r.train_minutes for r in rows), sum(r.int8_ms for r in rows),
                   sum(r.megabytes for r in rows))
    ensemble.threshold = _rebalanced_threshold(ensemble)
    return ensemble


def _rebalanced_threshold(row: Row) -> float:
    """A new P needs its own threshold, by the bundled rule (best balanced accuracy on both validations)."""
    from train.metrics import choose_threshold

    return choose_threshold(np.concatenate([row.labels[s] for s in VALIDATION]),
                            np.concatenate([row.p[s] for s in VALIDATION]), "balanced")


def validation_films(folder: Path) -> dict[str, list]:
    """The run's validation films, clean and shifted, in predictions.csv's order."""
    from pneumonia.image_files import open_image
    from train.data import load_splits
    from train.shift import shifted_film

    training = json.loads((folder / "training_config.json").read_text())
    rows = load_splits(training["dataset"], training["val_fraction"], split_seed_of(training))["validation"]
    clean = [open_image(rows[i]["image"]) for i in range(len(rows))]
    names = [Path(rows[i]["image"]["path"]).name for i in range(len(rows))]
    return {"validation": clean,
            "shifted_validation": [shifted_film(film, name, training["shift_seed"]) for film, name in zip(clean, names)]}


def _batches(films: list, size: int = 32):
    for start in range(0, len(films), size):
        yield films[start:start + size]


def int8_milliseconds(folder: Path, repeats: int = 50) -> float:
    from pneumonia.backends import OnnxLogits

    if not (folder / "model.int8.onnx").is_file():
        return float("nan")
    session = OnnxLogits(folder / "model.int8.onnx", threads=1)
    size = json.loads((folder / "config.json").read_text())["pretrained_cfg"]["input_size"]
    pixels = np.random.default_rng(0).standard_normal((1, *size)).astype(np.float32)
    session.run(pixels)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        session.run(pixels)
        times.append(time.perf_counter() - started)
    return 1000 * float(np.median(times))


def megabytes(folder: Path) -> float:
    return sum((folder / name).stat().st_size for name in SHIPPED if (folder / name).is_file()) / 1e6


def table(rows: list[Row]) -> str:
    lines = [f"Machine: {platform.processor() or platform.machine()}, {_cpu_name()}",
             "| recipe | val ROC-AUC | shifted val ROC-AUC | mean | gap | answer cut-offs (shifted val, 97%) | coverage there "
             "| train min | int8 ms/film | MB |", "|" + "---|" * 10]
    for row in rows:
        f = row.figures()
        lines.append(f"| {row.name} | {f['val']:.4f} | {f['shifted']:.4f} | {f['mean']:.4f} | {f['gap']:.4f} | "
                     f"{_cut(f['cutoffs'].normal_at_most)} / {_cut(f['cutoffs'].pneumonia_at_least)} | {f['coverage']:.3f} | {row.train_minutes:.0f} | {row.int8_ms:.1f} | {row.megabytes:.1f} |")
    return "\n".join(lines)


def _cpu_name() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="*", type=Path, help="finished run folders, a row each")
    parser.add_argument("--tta", nargs="*", type=Path, default=[], help="run folders to read with flip TTA too")
    parser.add_argument("--ensemble", nargs="+", type=Path, action="append", default=[], help="run folders to average")
    args = parser.parse_args()
    rows = [run_row(f) for f in args.runs] + [tta_row(f) for f in args.tta] + [ensemble_row(fs) for fs in args.ensemble]
    print(table(rows))


def _cut(value: float | None) -> str:
    return "none" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    main()
