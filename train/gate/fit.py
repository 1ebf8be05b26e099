"""Fit a model folder's out-of-distribution gate: answer, caution (an adult's film) or refuse.

    python -m train.gate runs/cnn [--dataset ../shared/data/chest_xray] [--scope ../shared/data/scope]
    python -m train.gate runs/cnn --compare      # leave-one-source-out figures of each head option

Training runs this at its end; the command fits folders trained before the gate existed (or
refits one). The Gaussians come from the training films under the run's own augmentation; the
heads from those films against the scope images (``train/gate/scope.py``, which also states the
cut-off rule); the cut-offs from clean and shifted validation. Then the gate is scored, once,
on test, on the scope images (in-sample and leave-one-source-out) and on non-X-ray probes. It
writes ``ood.safetensors``, ``config.json["ood"]`` and ``metrics.json["ood"]``, re-exports the
ONNX files the folder has (they carry the gate's features, and int8 gets its own calibration)
and re-renders the card. Without a scope folder the gate refuses by distance alone.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

import datasets
import numpy as np
import torch
from accelerate.utils import set_seed

import pneumonia
from train.augment import Augment
from pneumonia.backends import ONNX_FILES
from pneumonia.ood import OodGate
from pneumonia.torch_model import WithGateFeatures, gate_layers
from pneumonia.preprocessing import XrayPreprocessing
from pneumonia.presets import UsageError
from train import data
from train.gate import scope
from train.config import saved_training_config, split_seed_of
from train.gate.probes import probe_images

SPLITS = ("train", "validation", "shifted_validation", "test")
Forward = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # pixels -> (logits, gate features)


def fit_folder(folder: Path, splits: datasets.DatasetDict, training: dict, batch_size: int = 32,
               num_workers: int = 2, scope_dir: str | None = None) -> dict:
    """Fit, store and report the gate of the model in ``folder``; returns metrics.json's "ood"."""
    classifier = pneumonia.load_classifier(str(folder), backend="pytorch")
    model = classifier.model.to("cuda" if torch.cuda.is_available() else "cpu")
    layers, widths = gate_layers(model)
    scope_set = scope.load_scope(scope_dir or training.get("scope_data"))
    tapped = WithGateFeatures(model, layers)
    try:
        found = collect_features(lambda pixels: tapped(pixels.to(next(model.parameters()).device)), folder, splits,
                                 training, scope_set, batch_size, num_workers)
    finally:
        tapped.remove()
    gate = fit_gate(layers, widths, found)
    gate.save(folder)
    _update_json(folder / "config.json", ood=gate.to_config())
    report = gate_report(gate, found, pneumonia.load_classifier(str(folder), backend="pytorch"), scope_set)
    _update_json(folder / "metrics.json", ood=report)
    return report


def collect_features(forward: Forward, folder: Path, splits: datasets.DatasetDict, training: dict,
                     scope_set: scope.ScopeSet | None, batch_size: int, num_workers: int, draws: int | None = None) -> dict:
    """Gate features from ``forward`` for the four splits (train under the run's augmentation,
    seeded: the same draws on every backend) and the scope images (clean, then augmented draws)."""
    config = json.loads((folder / "config.json").read_text())
    data_config = pneumonia.data_config_of(pneumonia.load_classifier(str(folder), backend="pytorch").model)
    preprocessing = XrayPreprocessing.from_config(config)
    augment = Augment(training["shear"], training["zoom"], training["hflip"], training.get("augment", "original"))
    loaders = data.make_loaders(splits, data_config, preprocessing, augment, batch_size, "none", num_workers,
                                training.get("shift_seed", 2026), check_images=True)
    set_seed(training["seed"])
    found = {name: gate_features(forward, loaders[name]) for name in SPLITS}
    if scope_set is not None:
        draws = max(options["draws"] for options in scope.OPTIONS.values()) if draws is None else draws
        transforms = [pneumonia.build_transform(data_config, preprocessing)]
        transforms += [pneumonia.build_transform(data_config, preprocessing, augment=augment)] * draws
        images = [data.XrayDataset(scope_set.rows(), t, tuple(data_config["input_size"])) for t in transforms]
        found["scope"] = [gate_features(forward, torch.utils.data.DataLoader(d, batch_size=batch_size,
                                                                              num_workers=num_workers)) for d in images]
        found["scope_categories"], found["scope_sources"] = scope_set.categories, scope_set.sources
    return found


@torch.no_grad()
def gate_features(forward: Forward, loader) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(gate features, labels, refused by the image checks, row index) of the readable images of ``loader``."""
    parts = []
    for batch in loader:
        readable = batch["readable"]
        _, features = forward(batch["pixel_values"])
        parts.append(tuple(column[readable].numpy() for column in
                           (features.cpu().float(), batch["labels"], batch["odd"], batch["index"])))
    return tuple(np.concatenate(column) for column in zip(*parts))


def fit_gate(layers: list[str], widths: list[int], found: dict) -> OodGate:
    """The gate from collected features: Gaussians on the training films; with scope images,
    the heads and the rule's cut-offs; without, the distance cut-off at 99% of clean validation."""
    gate = OodGate.fit(layers, widths, found["train"][:2], found["validation"][0])  # the image checks aside
    if "scope" in found:
        scope.fit_heads(gate, scope_features(found))
    return gate


def scope_features(found: dict) -> scope.Features:
    clean = found["scope"][0]
    return scope.Features(found["train"][0], found["validation"][0], found["shifted_validation"][0],
                          [draw[0] for draw in found["scope"]], found["scope_categories"][clean[3]],
                          found["scope_sources"][clean[3]])


def outcome_counts(gate: OodGate, features: np.ndarray, odd: np.ndarray) -> dict:
    """Films, and how many the gate refuses (image checks included) and cautions."""
    verdicts = gate.verdicts(features)
    refused = np.array([v.outcome == "refuse" for v in verdicts]) | odd
    cautioned = np.array([v.outcome == "caution" for v in verdicts]) & ~refused
    return {"films": int(len(refused)), "refused": int(refused.sum()), "cautioned": int(cautioned.sum()),
            "pass_rate": float(1 - refused.mean()), "refused_by_image_checks": int(odd.sum())}


def gate_report(gate: OodGate, found: dict, classifier: pneumonia.Classifier, scope_set) -> dict:
    report = {"fitted_on": {"split": "train", "films": int(len(found["train"][1]))}, "version": 2 if gate.heads else 1,
              "splits": {name: outcome_counts(gate, *found[name][0:3:2]) for name in SPLITS[1:]}}
    if gate.heads is not None:
        features = scope_features(found)
        report["scope"] = {"sources": sorted(set(features.sources)),
                           "in_sample": scope.shares(gate.verdicts(features.scope[0]), features.categories),
                           "leave_one_source_out": scope.leave_one_source_out(gate, features)}
        report["adult_films"] = adult_films(classifier, scope_set)
    report["probes"] = probe_report(classifier)
    return report


def adult_films(classifier: pneumonia.Classifier, scope_set: scope.ScopeSet) -> dict | None:
    """How the model reads healthy adults' frontal films (the caution quotes it)."""
    films = [image for image, category, finding in zip(scope_set.images, scope_set.categories, scope_set.findings)
             if category == "adult_frontal" and finding == "normal"]
    if not films:
        return None
    p = [classifier.predict(pneumonia.open_image(image))[pneumonia.POSITIVE_LABEL] for image in films]
    return {"films": len(films), "finding": "normal",  # called PNEUMONIA at the operating threshold
            "called_pneumonia": float(np.mean(np.array(p) >= classifier.threshold))}


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
    for category, found in report.get("scope", {}).get("leave_one_source_out", {}).items():
        lines.append(f"gate: {category}: {found['refused']:.1%} refused, {found['cautioned']:.1%} cautioned of "
                     f"{found['images']} (leave-one-source-out)")
    refused = [p for p in report["probes"] if p["refused"]]
    lines.append(f"gate: refuses {len(refused)} of {len(report['probes'])} non-X-ray probes; passes: "
                 + (", ".join(p["name"] for p in report["probes"] if not p["refused"]) or "none"))
    return "\n".join(lines)


def compare_options(folder: Path, splits, training: dict, scope_dir: str | None, batch_size: int,
                    num_workers: int, grid: dict) -> list[dict]:
    """Leave-one-source-out shares per category for each head option in ``grid`` (nothing is written)."""
    classifier = pneumonia.load_classifier(str(folder), backend="pytorch")
    layers, widths = gate_layers(classifier.model)
    scope_set = scope.load_scope(scope_dir or training.get("scope_data"))
    if scope_set is None:
        raise UsageError("--compare needs the scope images: give --scope FOLDER")
    tapped = WithGateFeatures(classifier.model, layers)
    try:
        draws = max(value for options in grid.values() for key, value in options if key == "draws")
        found = collect_features(tapped, folder, splits, training, scope_set, batch_size, num_workers, draws)
    finally:
        tapped.remove()
    gate, features, rows = OodGate.fit(layers, widths, found["train"][:2], found["validation"][0]), scope_features(found), []
    for head, values in grid.items():
        for key, value in values:
            options = {**scope.OPTIONS, head: {**scope.OPTIONS[head], key: value}}
            rows.append({"head": head, key: value, **scope.leave_one_source_out(gate, features, options)})
    return rows


def _update_json(path: Path, **entries) -> None:
    found = json.loads(path.read_text())
    found.update(entries)
    path.write_text(json.dumps(found, indent=2) + "\n")


COMPARE_GRID = {"refuse": [("C", 0.001), ("C", 0.01), ("C", 0.1), ("C", 1.0), ("draws", 0), ("draws", 4)],
                "adult": [("C", 0.001), ("C", 0.01), ("C", 0.1), ("draws", 0), ("draws", 4)],
                "kind": [("C", 0.01), ("C", 0.1), ("C", 1.0), ("draws", 0), ("draws", 4)]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m train.gate", description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a model folder written by `python -m train`")
    parser.add_argument("--dataset", help="the labelled data it was trained on; default: the one in training_config.json")
    parser.add_argument("--scope", help="the scope images (folder with provenance.csv); default: the one in "
                                        "training_config.json, else ../shared/data/scope")
    parser.add_argument("--compare", nargs="*", choices=list(COMPARE_GRID), metavar="HEAD",
                        help="print the leave-one-source-out figures of each option of these heads (default: all) "
                             "and write nothing")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=2)
    args = parser.parse_args(argv)
    try:
        training = saved_training_config(args.folder)
        splits = data.load_data(args.dataset or training["dataset"], training["val_fraction"], split_seed_of(training),
                                training.get("max_train_samples"), training.get("max_eval_samples"))  # as trained
        if args.compare is not None:
            grid = {head: COMPARE_GRID[head] for head in args.compare or COMPARE_GRID}
            for row in compare_options(args.folder, splits, training, args.scope, args.batch_size, args.num_workers, grid):
                print(json.dumps(row))
            return
        report = fit_folder(args.folder, splits, training, args.batch_size, args.num_workers, args.scope)
        print(summary(report))
        if any((args.folder / name).is_file() for name in ONNX_FILES.values()):
            _export_onnx(args.folder, splits, training, args)  # the ONNX files must carry the gate's features
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    if (args.folder / "predictions.csv").is_file():
        from train.export.card import write_card

        write_card(args.folder)


def _export_onnx(folder: Path, splits, training: dict, args) -> None:
    from train.export.onnx import export_from_splits, parity_summary

    found = export_from_splits(folder, splits, training["seed"], args.batch_size, args.num_workers)
    print(parity_summary(found))


if __name__ == "__main__":
    main()
