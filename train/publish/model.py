"""Push a trained model folder to the Hub with its rendered card.

    python -m train.publish runs/vgg16 --repo-id USER/pneumonia-vgg16 [--space-id USER/SPACE] [--private] [--dry-run]

With ``--space-id`` the Space's ``PNEUMONIA_MODEL`` variable is set to the pushed model, so the
Space serves it from its next start.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pneumonia.backends import COMPACT, ONNX_FILES
from pneumonia.hub_code import CODE_FILES, add_transformers_code
from pneumonia.ood import GATE_FILE, INT8_GATE_FILE
from pneumonia.presets import UsageError
from train.export.card import write_card
from train.publish.hub import push_folder, set_space_variable

# What a model repo holds; the rest of a run folder (checkpoints/, optimizer state) stays local.
MODEL_FILES = [
    "README.md", "config.json", "model.safetensors", "metrics.json", "training_config.json",
    "predictions.csv", "train_log.jsonl", "confusion_matrix.png", "roc_curve.png", *CODE_FILES,
]
# pushed when `train.export.onnx` / `train.gate.fit` wrote them, and the plot of the uncertain band
OPTIONAL_FILES = [*ONNX_FILES.values(), GATE_FILE, INT8_GATE_FILE, "risk_coverage.png"]
MODEL_VARIABLE = "PNEUMONIA_MODEL"  # what app.py reads
_NEEDED_TO_RENDER = ["config.json", "model.safetensors", "metrics.json", "training_config.json", "predictions.csv"]


def publish(folder: Path, repo_id: str, *, private: bool = False, dry_run: bool = False,
            space_id: str | None = None, dataset_id: str | None = None) -> str | None:
    """Re-render the card for ``repo_id``, upload the model files (and only those), then point the
    Space ``space_id`` (if given) at the pushed model."""
    missing = [name for name in _NEEDED_TO_RENDER if not (folder / name).is_file()]
    if missing:
        raise UsageError(f"{folder} is not a finished training run (missing {', '.join(missing)}): train it first")
    _restore_fp32_onnx(folder)
    add_transformers_code(folder)  # a folder written before it existed gets it too
    write_card(folder, repo_id=repo_id, space_id=space_id, dataset_id=dataset_id)
    where = push_folder(folder, repo_id, MODEL_FILES, optional=OPTIONAL_FILES, private=private,
                        dry_run=dry_run, commit_message=f"Upload {folder.name} (pneumonia-xray)")
    if space_id:
        set_space_variable(space_id, MODEL_VARIABLE, f"hf-hub:{repo_id}", dry_run=dry_run,
                           description="the model this Space serves (set by python -m train.publish)")
    return where


def _restore_fp32_onnx(folder: Path) -> None:
    """Published folders carry fp32 ``model.onnx`` beside the compact file (int8 or fp16 weights; fp32
    is the exact one for users of ONNX Runtime); a folder that dropped it to save room (the bundled
    one) gets it written again."""
    fp32 = folder / ONNX_FILES["onnx-fp32"]
    if fp32.is_file() or not any((folder / ONNX_FILES[name]).is_file() for name in COMPACT):
        return
    import pneumonia
    from train.export.onnx import export_fp32

    classifier = pneumonia.load_classifier(str(folder), backend="pytorch")
    export_fp32(classifier.model, tuple(classifier.data_config["input_size"]), fp32, classifier.gate)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m train.publish", description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="output folder of `python -m train`")
    parser.add_argument("--repo-id", required=True, help="USER/NAME of the model repo (created if missing)")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument("--dry-run", action="store_true", help="list what would be uploaded, and where; upload nothing")
    parser.add_argument("--space-id", help="USER/SPACE of the demo: the card's gradio_client lines name it, and its "
                                           f"{MODEL_VARIABLE} variable is set to this model")
    parser.add_argument("--dataset-id", help="Hub id of the training dataset, for the card's metadata")
    args = parser.parse_args(argv)
    try:
        publish(args.folder, args.repo_id, private=args.private, dry_run=args.dry_run,
                space_id=args.space_id, dataset_id=args.dataset_id)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
