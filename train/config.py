"""Every training setting in one typed block; the command line is generated from it."""
from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from pneumonia.pixels import INTENSITY_CHOICES
from pneumonia.presets import PRESETS, UsageError


def _opt(default, help: str, choices: tuple | None = None):
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class TrainConfig:
    # what to train, on what, where to write it
    model: str = _opt("cnn", "model preset", tuple(PRESETS))
    dataset: str = _opt("", "Kaggle-layout folder, folder saved by dataset_script/, or Hub dataset id")
    output_dir: str = _opt("", "folder for the Hub-ready model (and its checkpoints/)")
    pretrained: bool = _opt(False, "start from timm's ImageNet weights (downloads them)")
    pretrained_file: str | None = _opt(None, "start from ImageNet weights in this local file instead: a timm/torchvision "
                                       "state dict, or (mobilenetv2) Google's MobileNetV2 .tflite file")
    image_size: int | None = _opt(None, "square input side; default: the preset's")
    cnn_width: int | None = _opt(None, "cnn only: channels of its first convolution, doubled at each block; default 32")
    # optimisation
    epochs: int = _opt(12, "training epochs")
    freeze_epochs: int = _opt(0, "warm-up epochs that train only the classifier (backbone frozen)")
    layer_decay: float = _opt(1.0, "per-layer learning rates: each layer's LR is this times the next deeper one's "
                              "(timm's layer groups; 1 = the same LR everywhere)")
    freeze_bn: bool | None = _opt(None, "keep batch-norm layers in eval mode (running statistics fixed); default: on for "
                                  "weights with batch norm folded into the convolutions (a .tflite file), else off")
    batch_size: int | None = _opt(None, "images per step per process; default: the preset's")
    grad_accum: int = _opt(1, "gradient accumulation steps")
    lr: float | None = _opt(None, "peak learning rate (AdamW); default: the preset's")
    weight_decay: float = _opt(1e-4, "AdamW weight decay")
    warmup_ratio: float = _opt(0.05, "fraction of steps with linear LR warm-up, then cosine decay")
    balance: str = _opt("loss", "class imbalance: weighted loss, weighted sampler, or none", ("loss", "sampler", "none"))
    mixed_precision: str = _opt("auto", "auto = bf16 on a GPU that has it, else fp32", ("auto", "no", "bf16", "fp16"))
    seed: int = _opt(42, "seed for initialisation, order and augmentation")
    split_seed: int = _opt(42, "seed of the patient-level train/validation split; keep it to compare runs (ensembles)")
    # data
    val_fraction: float = _opt(0.15, "share of train patients held out for validation")
    augment: str = _opt(
        "shift", "augmentation: the original Keras recipe (shear, zoom, flip), or it plus the shift family "
        "(blur/sharpen, resolution, gamma/contrast/brightness, resized crops, edge erasing)", ("original", "shift"),
    )
    shear: float = _opt(0.2, "augmentation: shear range in radians (Keras shear_range)")
    zoom: float = _opt(0.2, "augmentation: zoom range (Keras zoom_range)")
    hflip: float = _opt(0.5, "augmentation: horizontal flip probability")
    intensity: str = _opt("equalize", "intensity standardisation of every input (saved with the model)", INTENSITY_CHOICES)
    crop_borders: bool = _opt(False, "crop uniform black/white film margins from every input (saved with the model)")
    label_smoothing: float = _opt(0.0, "label smoothing of the training loss")
    shift_seed: int = _opt(2026, "seed of the shifted validation's perturbations (the same films for every run)")
    num_workers: int = _opt(2, "data loader worker processes")
    max_train_samples: int | None = _opt(None, "use a stratified subset of train (quick runs, tests)")
    max_eval_samples: int | None = _opt(None, "use a stratified subset of validation and test")
    # model selection and the operating point, all on validation
    select_metric: str = _opt(
        "mean_roc_auc", "validation metric that picks the best epoch: mean of clean and shifted ROC-AUC, or one of them",
        ("mean_roc_auc", "roc_auc", "shifted_roc_auc", "f1", "loss"),
    )
    threshold_rule: str = _opt(
        "balanced", "operating threshold: best balanced accuracy on clean + shifted validation, best F1 on "
        "validation, or best specificity with sensitivity >= 0.95 on validation", ("balanced", "f1", "sensitivity95"),
    )
    export_onnx: bool = _opt(True, "also write model.onnx and a parity-checked model.int8.onnx (train.export.onnx)")
    ood_gate: bool = _opt(True, "fit the out-of-distribution gate that refuses what is not a child's frontal chest "
                          "film and cautions on adults' films (train.gate.fit)")
    scope_data: str | None = _opt(None, "images the gate learns to refuse or caution on (a folder with provenance.csv, "
                                  "see train/gate/scope.py); default: ../shared/data/scope beside the checkout, when there")
    weights_dtype: str = _opt("float32", "dtype of model.safetensors; float16 halves the file", ("float32", "float16"))
    # run control
    resume: bool = _opt(False, "continue the run in --output-dir from its last checkpoint")
    overwrite: bool = _opt(False, "replace a finished or different run in --output-dir")
    stop_after_epochs: int | None = _opt(None, "end this job after N epochs (time-boxed jobs); continue with --resume")
    # publishing
    push_to_hub: str | None = _opt(None, "when done, push the model folder and its card to this Hub repo (USER/NAME)")
    hub_private: bool = _opt(False, "create the --push-to-hub repo as private")


def _base_type(hint) -> type:
    """`int | None` -> int; `bool` -> bool."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return next(arg for arg in typing.get_args(hint) if arg is not type(None))
    return hint


class _OneLineErrors(argparse.ArgumentParser):
    def error(self, message: str):
        self.exit(2, f"error: {message}; see {self.prog} --help\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineErrors(
        prog="python -m train",
        description="Fine-tune a timm model on chest X-rays and write a Hub-ready model folder.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        kind = _base_type(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=f.metadata["help"])
        else:
            parser.add_argument(flag, type=kind, default=f.default, choices=f.metadata["choices"], help=f.metadata["help"])
    return parser


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    """Parse the command line; unknown flags and bad values exit with argparse's one-line error."""
    args = build_parser().parse_args(argv)
    for required in ("dataset", "output_dir"):
        if not getattr(args, required):
            build_parser().error(f"--{required.replace('_', '-')} is required")
    return resolve(TrainConfig(**vars(args)))


def saved_training_config(folder: Path) -> dict:
    """The settings a model folder was trained with (its training_config.json)."""
    path = folder / "training_config.json"
    if not (folder / "config.json").is_file() or not path.is_file():
        raise UsageError(f"{folder} is not a model folder written by `python -m train` (no config.json or "
                         "training_config.json)")
    return json.loads(path.read_text())


def split_seed_of(training: dict) -> int:
    """The seed of a saved run's train/validation split (runs from before --split-seed split by --seed)."""
    return training.get("split_seed", training["seed"])


def save_config(config: TrainConfig, path: Path) -> None:
    path.write_text(json.dumps(dataclasses.asdict(config), indent=2) + "\n")


def resolve(config: TrainConfig) -> TrainConfig:
    """Fill the settings left to the preset, so the saved config says what actually ran."""
    preset = PRESETS[config.model]
    folded_bn = str(config.pretrained_file or "").endswith(".tflite")
    return dataclasses.replace(
        config,
        freeze_bn=folded_bn if config.freeze_bn is None else config.freeze_bn,
        image_size=config.image_size or preset.image_size,
        batch_size=config.batch_size or preset.batch_size,
        lr=config.lr or preset.lr,
    )
