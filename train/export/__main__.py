"""Export a trained model folder to ONNX: fp32, and static int8 checked for parity with PyTorch.

    python -m train.export runs/cnn [--dataset ../shared/data/chest_xray] [--calibration-images 256]

Writes ``model.onnx`` and, when it meets the parity bar, ``model.int8.onnx`` into the folder
(``train.export.onnx`` says how), records their parity in ``metrics.json`` and re-renders the card.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pneumonia.presets import UsageError
from train.config import saved_training_config, split_seed_of
from train.data import load_data
from train.export.onnx import CALIBRATION_IMAGES
from train.post_training import complete_folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m train.export", description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a model folder written by `python -m train`")
    parser.add_argument("--dataset", help="the labelled data (train split for calibration, test for parity); "
                                          "default: the dataset the model was trained on")
    parser.add_argument("--calibration-images", type=int, default=CALIBRATION_IMAGES, help="training films to calibrate int8 on")
    parser.add_argument("--num-workers", type=int, default=2)
    args = parser.parse_args(argv)
    try:
        training = saved_training_config(args.folder)
        splits = load_data(args.dataset or training["dataset"], training["val_fraction"], split_seed_of(training),
                           training.get("max_train_samples"), training.get("max_eval_samples"))  # as trained
        complete_folder(args.folder, splits, training, gate=False, onnx=True, num_workers=args.num_workers,
                        calibration_images=args.calibration_images)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    if (args.folder / "predictions.csv").is_file():
        from train.export.card import write_card

        write_card(args.folder)


if __name__ == "__main__":
    main()
