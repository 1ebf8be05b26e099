"""Evaluate a trained model on any labelled chest X-rays: how a hospital checks it on its own films.

    python -m train.evaluate runs/cnn ../shared/data/chest_xray            # a Kaggle-layout folder (--split test)
    python -m train.evaluate hf-hub:USER/pneumonia-vgg16 films.csv         # file,label rows: PNG, JPEG or DICOM
    python -m train.evaluate runs/cnn data/chest-xray-pneumonia --card     # the parquet dataset; add it to the card
    python -m train.evaluate runs/cnn ../shared/data/scope/ct --outcomes   # any folder of images: outcome shares only

The model's own preprocessing, temperature and threshold are applied, as in the app. The
metrics are the ones training reports; an unreadable file is named, counted and skipped. The
out-of-distribution gate's outcomes (answer, caution, refuse) are counted and named too.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from pathlib import Path

import datasets
import numpy as np
import torch
from accelerate import Accelerator

import pneumonia
from pneumonia import folder_json
from pneumonia.presets import LABEL_NAMES, UsageError
from train.export.card import plot_confusion_matrix, plot_roc, write_card
from train.data import XrayDataset, file_names, load_splits
from train.predict import gathered_logits, gradcam_central_share, p_positive
from train.export.folder import write_predictions
from train.sweep import gate_features
from train.metrics import binary_metrics, selective_metrics

OUTCOMES = ("answer", "caution", "refuse")
_LABELS = {name.lower(): index for index, name in enumerate(LABEL_NAMES)} | {"0": 0, "1": 1}
_DATA_HINT = ("give a CSV of file,label rows, a folder holding NORMAL/ and PNEUMONIA/ (or SPLIT/NORMAL, "
              "SPLIT/PNEUMONIA), a folder written by dataset_script/, or a Hub dataset id")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.ERROR)
    try:
        evaluate(args)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m train.evaluate", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("model", help="a model folder written by `python -m train`, or hf-hub:USER/REPO")
    parser.add_argument("data", help="labelled images: CSV (file,label), class folders, dataset_script/ folder, or Hub id")
    parser.add_argument("--split", default="test", help="which split of a folder or dataset with several")
    parser.add_argument("--name", help="what to call the data in the report and the card; default: its file or folder name")
    parser.add_argument("--output-dir", type=Path, help="where to write the report; default: evaluations/NAME")
    parser.add_argument("--card", action="store_true", help="add the result to the local model folder's metrics.json and card")
    parser.add_argument("--outcomes", action="store_true", help="any folder of images, unlabelled: count the gate's "
                                                                 "outcomes (answer, caution, refuse) and nothing else")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=2)
    return parser.parse_args(argv)


def evaluate(args: argparse.Namespace) -> dict:
    card_folder = _card_folder(args.model) if args.card else None  # refuse before the work, not after
    name = args.name or Path(args.data.rstrip("/")).stem
    output_dir = args.output_dir or Path("evaluations") / name
    if args.outcomes:
        return count_outcomes(pneumonia.load_classifier(args.model), _any_images(Path(args.data)), name, output_dir,
                              args.batch_size, args.num_workers)
    rows = load_labelled(args.data, args.split)
    classifier = pneumonia.load_classifier(args.model)
    found = score(classifier, rows, name, output_dir, args.batch_size, args.num_workers)
    if card_folder:
        add_to_card(card_folder, name, found)
    return found


def load_labelled(source: str, split: str) -> datasets.Dataset:
    """Rows with ``image`` (undecoded: path or bytes) and ``label`` (NORMAL=0, PNEUMONIA=1)."""
    path = Path(source)
    if path.suffix.lower() == ".csv":
        return _from_csv(path)
    for root in (path, path / split):
        if all((root / label).is_dir() for label in LABEL_NAMES):
            return _from_class_folders(root)
    if path.is_file():
        raise UsageError(f"{source}: not a CSV; {_DATA_HINT}")
    splits = load_splits(source, val_fraction=0.15, seed=42)  # parquet from dataset_script/, or a Hub id
    if split not in splits:
        raise UsageError(f"{source} has no split {split!r} (it has {', '.join(splits)}); pick one with --split")
    return splits[split].select_columns(["image", "label"])


def _any_images(folder: Path) -> datasets.Dataset:
    """Every file below ``folder``, unlabelled (label 0 stands in); unreadable ones are skipped later."""
    if not folder.is_dir():
        raise UsageError(f"{folder}: --outcomes needs a folder of images")
    files = sorted(str(p) for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")
                   and p.suffix.lower() not in (".csv", ".md", ".txt", ".json"))
    if not files:
        raise UsageError(f"{folder}: no files in it")
    return _from_files(files, [0] * len(files))


def _from_files(files: list[str], labels: list[int]) -> datasets.Dataset:
    features = datasets.Features(image=datasets.Image(decode=False), label=datasets.ClassLabel(names=list(LABEL_NAMES)))
    return datasets.Dataset.from_dict({"image": [{"path": f, "bytes": None} for f in files], "label": labels}, features)


def _from_class_folders(root: Path) -> datasets.Dataset:
    """Every file under NORMAL/ and PNEUMONIA/, DICOMs and broken files included (skipped later)."""
    files, labels = [], []
    for index, label in enumerate(LABEL_NAMES):
        found = sorted(p for p in (root / label).rglob("*") if p.is_file() and not p.name.startswith("."))
        files += [str(p) for p in found]
        labels += [index] * len(found)
    if not files:
        raise UsageError(f"{root}: NORMAL/ and PNEUMONIA/ hold no files; {_DATA_HINT}")
    return _from_files(files, labels)


def _from_csv(path: Path) -> datasets.Dataset:
    """``file,label`` rows; relative paths are relative to the CSV's folder."""
    if not path.is_file():
        raise UsageError(f"{path}: no such file; {_DATA_HINT}")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if not {"file", "label"} <= set(reader.fieldnames or ()):
            raise UsageError(f"{path}: needs the columns file,label (it has {', '.join(reader.fieldnames or ()) or 'none'})")
        rows = list(reader)
    bad = [f"line {n} ({row['label']!r})" for n, row in enumerate(rows, start=2)
           if (row["label"] or "").strip().lower() not in _LABELS]
    if bad:
        raise UsageError(f"{path}: labels must be NORMAL or PNEUMONIA (or 0/1); not so on {', '.join(bad[:10])}")
    if not rows:
        raise UsageError(f"{path}: no rows")
    files = [str((path.parent / row["file"].strip()).resolve()) for row in rows]
    return _from_files(files, [_LABELS[row["label"].strip().lower()] for row in rows])


def score(classifier: pneumonia.Classifier, rows: datasets.Dataset, name: str, output_dir: Path,
          batch_size: int, num_workers: int) -> dict:
    """Predict every readable film; write the metrics, plots and per-film probabilities."""
    accelerator = Accelerator()
    images = XrayDataset(rows, classifier.transform, tuple(classifier.data_config["input_size"]))
    loader = torch.utils.data.DataLoader(images, batch_size=batch_size, num_workers=num_workers)
    model, loader = accelerator.prepare(classifier.model, loader)
    logits, labels, index = gathered_logits(model, loader, accelerator)
    skipped = file_names(rows, sorted(set(range(len(rows))) - set(index.tolist())))
    if skipped:
        print(f"skipped {len(skipped)} unreadable file(s): {', '.join(skipped[:20])}{' ...' if len(skipped) > 20 else ''}")
    if len(labels) == 0:
        raise UsageError(f"{name}: none of its {len(rows)} files is a readable image")
    p = p_positive(logits, classifier.temperature)
    found = {
        **binary_metrics(labels, p, classifier.threshold),
        **selective_metrics(labels, p, classifier.cutoffs()),  # answered or "uncertain", at the default level
        "skipped_unreadable": len(skipped),
        "threshold": classifier.threshold,
        "gradcam_central_share": gradcam_central_share(accelerator.unwrap_model(model), images),  # all, and per label
    }
    outcomes = gate_outcomes(classifier, rows, batch_size, num_workers)
    if outcomes is not None:  # the app would refuse these films, or answer them with a caution
        found["ood_outcomes"] = {outcome: len(files) for outcome, files in outcomes.items()}
        found["ood_refused"] = len(outcomes["refuse"])
        print(outcome_line(outcomes, "films") + " (the metrics include them all)")
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "metrics.json").write_text(json.dumps({"data": name, **found, "skipped_files": skipped,
                                                         "ood_files": outcomes}, indent=2) + "\n")
    write_predictions(output_dir / "predictions.csv", {name: (file_names(rows, index), labels, p)})
    plot_confusion_matrix(found["confusion_matrix"], output_dir / "confusion_matrix.png", title=name)
    plot_roc(output_dir / "predictions.csv", output_dir / "roc_curve.png", splits=(name,))
    print(report(name, found) + f" -> {output_dir}")
    return found


def gate_outcomes(classifier: pneumonia.Classifier, rows: datasets.Dataset, batch_size: int,
                  num_workers: int) -> dict[str, list[str]] | None:
    """The readable films by the gate's outcome, {"answer": [...], "caution": [...], "refuse": [...]};
    None without a gate."""
    if classifier.gate is None:
        return None
    images = XrayDataset(rows, classifier.transform, tuple(classifier.data_config["input_size"]),
                         check_images=True)
    loader = torch.utils.data.DataLoader(images, batch_size=batch_size, num_workers=num_workers)
    features, _, odd, index = gate_features(classifier.tapped, loader)
    outcomes = np.array(["refuse" if o else v.outcome for o, v in zip(odd, classifier.gate.verdicts(features))])
    return {outcome: file_names(rows, index[outcomes == outcome]) for outcome in OUTCOMES}


def outcome_line(outcomes: dict[str, list[str]], what: str) -> str:
    total = sum(len(files) for files in outcomes.values())
    parts = [f"{outcome} {len(files)} ({len(files) / max(total, 1):.1%})" for outcome, files in outcomes.items()]
    named = {o: files for o, files in outcomes.items() if o != "answer" and files}
    names = "; ".join(f"{o}: {', '.join(f[:10])}{' ...' if len(f) > 10 else ''}" for o, f in named.items())
    return f"the out-of-distribution gate, of {total} {what}: {', '.join(parts)}" + (f" [{names}]" if names else "")


def count_outcomes(classifier: pneumonia.Classifier, rows: datasets.Dataset, name: str, output_dir: Path,
                   batch_size: int, num_workers: int) -> dict:
    """The gate's outcome shares for a folder of unlabelled images, written to outcomes.json."""
    if classifier.gate is None:
        raise UsageError("this model folder has no out-of-distribution gate: fit one with `python -m train.gate FOLDER`")
    outcomes = gate_outcomes(classifier, rows, batch_size, num_workers)
    readable = sum(len(files) for files in outcomes.values())
    found = {"data": name, "images": readable, "skipped_unreadable": len(rows) - readable,
             "shares": {o: len(files) / max(readable, 1) for o, files in outcomes.items()}, "files": outcomes}
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "outcomes.json").write_text(json.dumps(found, indent=2) + "\n")
    print(outcome_line(outcomes, "images") + f" -> {output_dir}")
    return found


def report(name: str, found: dict) -> str:
    return (f"{name}: {found['n']} films at threshold {found['threshold']:.3f}: ROC-AUC {found['roc_auc']:.3f}  "
            f"accuracy {found['accuracy']:.3f}  sensitivity {found['recall']:.3f}  specificity {found['specificity']:.3f}  "
            f"F1 {found['f1']:.3f}  ECE {found['ece']:.3f}; answered {found['coverage']:.1%} (the rest uncertain), "
            f"accuracy among them {found['answered_accuracy']:.3f}")


def _card_folder(model: str) -> Path:
    folder = Path(model.removeprefix("local-dir:"))
    if model.startswith("hf-hub:") or not (folder / "metrics.json").is_file():
        raise UsageError(f"--card needs a local model folder with its metrics.json, not {model}: "
                         "download the repo first (hf download USER/REPO --local-dir DIR) and pass DIR")
    return folder


def add_to_card(folder: Path, name: str, found: dict) -> None:
    """Record the result under "external" in metrics.json (publish re-renders from it) and re-render the card."""
    folder_json.rewrite(folder / "metrics.json", lambda metrics: metrics.setdefault("external", {}).update({name: found}))
    if (folder / "predictions.csv").is_file():
        write_card(folder)


if __name__ == "__main__":
    main()
