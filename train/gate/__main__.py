"""Fit (or refit) a model folder's out-of-distribution gate.

    python -m train.gate runs/cnn [--dataset ../shared/data/chest_xray] [--scope ../shared/data/scope]
    python -m train.gate runs/cnn --compare      # leave-one-dataset-out figures of each head option

Training fits the gate at its end; this fits folders trained before the gate existed, or refits
one. It writes ``ood.safetensors``, ``config.json["ood"]`` and ``metrics.json["ood"]``, re-exports
the ONNX files the folder has (they carry the gate's features, and int8 gets its own
calibration) and re-renders the card. Without a scope folder the gate refuses by distance alone.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pneumonia
from pneumonia.backends import ONNX_FILES
from pneumonia.presets import UsageError
from pneumonia.torch_model import WithGateFeatures, gate_layers
from train import data, sweep
from train.config import saved_training_config, split_seed_of
from train.gate import fit, scope
from train.post_training import complete_folder, loaders


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m train.gate", description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a model folder written by `python -m train`")
    parser.add_argument("--dataset", help="the labelled data it was trained on; default: the one in training_config.json")
    parser.add_argument("--scope", help="the scope images (folder with provenance.csv); default: the one in "
                                        "training_config.json, else ../shared/data/scope")
    parser.add_argument("--compare", nargs="*", choices=list(fit.COMPARE_GRID), metavar="HEAD",
                        help="print the leave-one-dataset-out figures of each option of these heads (default: all) "
                             "and write nothing")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=2)
    args = parser.parse_args(argv)
    try:
        training = saved_training_config(args.folder)
        splits = data.load_data(args.dataset or training["dataset"], training["val_fraction"], split_seed_of(training),
                                training.get("max_train_samples"), training.get("max_eval_samples"))  # as trained
        if args.compare is not None:
            grid = {head: fit.COMPARE_GRID[head] for head in args.compare or fit.COMPARE_GRID}
            for row in compare(args.folder, splits, training, args.scope, args.batch_size, args.num_workers, grid):
                print(json.dumps(row))
            return
        complete_folder(args.folder, splits, training, gate=True, scope_dir=args.scope,
                        onnx=any((args.folder / name).is_file() for name in ONNX_FILES.values()),  # they carry its features
                        batch_size=args.batch_size, num_workers=args.num_workers)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    if (args.folder / "predictions.csv").is_file():
        from train.export.card import write_card

        write_card(args.folder)


def compare(folder: Path, splits, training: dict, scope_dir: str | None, batch_size: int, num_workers: int,
            grid: dict) -> list[dict]:
    classifier = pneumonia.load_classifier(str(folder), backend="pytorch")
    scope_set = scope.load_scope(scope_dir or training.get("scope_data"))
    if scope_set is None:
        raise UsageError("--compare needs the scope images: give --scope FOLDER")
    layers, widths = gate_layers(classifier.model)
    tapped = WithGateFeatures(classifier.model, layers)
    draws = max(max(change.get("draws", 0) for change in changes) for changes in grid.values())
    images = loaders(folder, classifier, splits, scope_set, training, batch_size, num_workers, draws)
    sets = (*(name for name in sweep.SPLITS if name != "test"), "scope")  # choices never read the test split
    found = sweep.sweep({"pytorch": (sweep.torch_runner(tapped), sets)}, images, training["seed"])
    return fit.compare_options(layers, widths, found["pytorch"], scope_set, grid)


if __name__ == "__main__":
    main()
