"""Fit a model folder's out-of-distribution gate ("does this look like a chest X-ray it was trained on?").

    python -m train.fit_gate runs/cnn [--dataset ../shared/data/chest_xray]

Training runs this at its end; the command fits folders trained before the gate existed
(or refits one). The Gaussians come from the training films under the run's own augmentation,
the cut-off from clean validation (99% of its films pass); then the gate is scored, once, on
shifted validation and test, and on non-X-ray images (photos, documents, noise, blank). It
writes ``ood.safetensors``, ``config.json["ood"]`` and ``metrics.json["ood"]``, re-exports the
ONNX files the folder has (they carry the gate's features) and re-renders the card.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import datasets
import numpy as np
import torch
from accelerate.utils import set_seed

import pneumonia
from pneumonia.augment import Augment
from pneumonia.backends import ONNX_FILES
from pneumonia.ood import OodGate, WithGateFeatures, gate_layers
from pneumonia.preprocessing import XrayPreprocessing
from pneumonia.presets import UsageError
from train import data
from train.config import saved_training_config
from train.ood_probes import probe_images

SPLITS = ("train", "validation", "shifted_validation", "test")


def fit_folder(folder: Path, splits: datasets.DatasetDict, training: dict, batch_size: int = 32,
               num_workers: int = 2) -> dict:
    """Fit, store and report the gate of the model in ``folder``; returns metrics.json's "ood"."""
    classifier = pneumonia.load_classifier(str(folder), backend="pytorch")
    model = classifier.model.to("cuda" if torch.cuda.is_available() else "cpu")
    layers, widths = gate_layers(model)
    loaders = data.make_loaders(
        splits, pneumonia.data_config_of(model), XrayPreprocessing.from_config(classifier.config),
        Augment(training["shear"], training["zoom"], training["hflip"], training.get("augment", "original")),
        batch_size, "none", num_workers, training.get("shift_seed", 2026), check_images=True,
    )
    set_seed(training["seed"])  # the same augmented draws, so the same gate, on every run
    tapped = WithGateFeatures(model, layers)
    try:
        found = {name: gate_features(tapped, loaders[name]) for name in SPLITS}
    finally:
        tapped.remove()
    gate = OodGate.fit(layers, widths, found["train"][:2], found["validation"][0])  # the image checks aside
    gate.save(folder)
    _update_json(folder / "config.json", ood=gate.to_config())
    report = {"fitted_on": {"split": "train", "films": int(len(found["train"][1])),
                            "augmentation": training.get("augment", "original")}}
    report["splits"] = {name: pass_counts(gate, *found[name][:3]) for name in SPLITS[1:]}
    report["probes"] = probe_report(pneumonia.load_classifier(str(folder), backend="pytorch"))
    _update_json(folder / "metrics.json", ood=report)
    return report


@torch.no_grad()
def gate_features(tapped: WithGateFeatures, loader) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(gate features, labels, refused by the image checks, row index) of the readable films of ``loader``."""
    device = next(tapped.model.parameters()).device
    tapped.eval()
    parts = []
    for batch in loader:
        readable = batch["readable"]
        _, features = tapped(batch["pixel_values"].to(device))
        parts.append(tuple(column[readable].numpy() for column in
                           (features.cpu(), batch["labels"], batch["odd"], batch["index"])))
    return tuple(np.concatenate(column) for column in zip(*parts))


def pass_counts(gate: OodGate, features: np.ndarray, labels: np.ndarray, odd: np.ndarray) -> dict:
    passed = (gate.scores(features) <= gate.cutoff) & ~odd
    return {"films": int(len(passed)), "refused": int((~passed).sum()), "pass_rate": float(passed.mean()),
            "refused_by_image_checks": int(odd.sum())}


def probe_report(classifier: pneumonia.Classifier) -> list[dict]:
    """The gate's verdict on each non-X-ray probe image."""
    probes = probe_images()
    readings = classifier.read([image for _, _, image in probes])
    return [{"name": name, "kind": kind, "refused": reading.refused, "why": reading.problem,
             "p_pneumonia": reading.probabilities[pneumonia.POSITIVE_LABEL]}
            for (name, kind, _), reading in zip(probes, readings)]


def summary(report: dict) -> str:
    lines = [f"gate: {s['pass_rate']:.1%} of {s['films']} {name.replace('_', ' ')} films pass ({s['refused']} refused)"
             for name, s in report["splits"].items()]
    refused = [p for p in report["probes"] if p["refused"]]
    lines.append(f"gate: refuses {len(refused)} of {len(report['probes'])} non-X-ray probes; passes: "
                 + (", ".join(p["name"] for p in report["probes"] if not p["refused"]) or "none"))
    return "\n".join(lines)


def _update_json(path: Path, **entries) -> None:
    found = json.loads(path.read_text())
    found.update(entries)
    path.write_text(json.dumps(found, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m train.fit_gate", description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a model folder written by `python -m train`")
    parser.add_argument("--dataset", help="the labelled data it was trained on; default: the one in training_config.json")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=2)
    args = parser.parse_args(argv)
    try:
        training = saved_training_config(args.folder)
        splits = data.load_data(args.dataset or training["dataset"], training["val_fraction"], training["seed"],
                                training.get("max_train_samples"), training.get("max_eval_samples"))  # as trained
        report = fit_folder(args.folder, splits, training, args.batch_size, args.num_workers)
        print(summary(report))
        if any((args.folder / name).is_file() for name in ONNX_FILES.values()):
            _export_onnx(args.folder, splits, training, args)  # the ONNX files must carry the gate's features
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    if (args.folder / "predictions.csv").is_file():
        from train.card import write_card

        write_card(args.folder)


def _export_onnx(folder: Path, splits, training: dict, args) -> None:
    from train.export_onnx import export_from_splits, parity_summary

    found = export_from_splits(folder, splits, training["seed"], args.batch_size, args.num_workers)
    print(parity_summary(found))


if __name__ == "__main__":
    main()
