"""Labels and the model presets: short rows in one table, not files of near-copies."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import timm
from torch import nn

import pneumonia.cnn  # noqa: F401  (registers pneumonia_cnn with timm)
from pneumonia.labels import LABEL_NAMES, POSITIVE_LABEL, UsageError  # noqa: F401  (re-exported)


@dataclass(frozen=True)
class Preset:
    title: str          # what people call the architecture (model cards)
    timm_name: str      # timm architecture.tag; the tag names the ImageNet weights
    image_size: int     # square input side in pixels
    lr: float           # AdamW peak learning rate
    batch_size: int     # per process
    has_imagenet_weights: bool = True
    zero_head: bool = False  # start the classifier at zero: every film at P = 0.5
    model_args: dict = field(default_factory=dict)  # architecture changes (saved in config.json)


PRESETS: dict[str, Preset] = {
    "cnn": Preset("small CNN (3 convolutions, 3 poolings)", "pneumonia_cnn", 224, 1e-3, 32, has_imagenet_weights=False),
    "vgg16": Preset("VGG16", "vgg16.tv_in1k", 224, 1e-4, 16),
    "resnet50": Preset("ResNet-50", "resnet50.a1_in1k", 224, 3e-4, 16),
    "inception_v3": Preset("Inception v3", "inception_v3.tv_in1k", 299, 3e-4, 16),
    # Small enough to train from scratch on a CPU and to ship in the repository (5.4 MiB in
    # float16), deep enough to see the whole chest rather than local texture.
    "resnet18_half": Preset(
        "ResNet-18 at half width", "resnet18", 224, 1e-3, 32, has_imagenet_weights=False,
        model_args={"channels": (32, 64, 128, 256), "stem_width": 32},
    ),
    # TensorFlow's "SAME" padding: Google's ImageNet weights (a TFLite file, train/tflite_weights.py)
    # were trained with it; timm's own Hub weights load into it too.
    # timm's EfficientNet-family init draws a 2-class head from U(+-0.71) (1 / sqrt(classes)),
    # which starts the logits near +-10 and lets the first steps' gradients wreck ImageNet features.
    # 160 px: it beat 224 px on validation (docs/choices.md, rule 8), at half the cost.
    "mobilenetv2": Preset("MobileNetV2 1.0", "mobilenetv2_100.ra_in1k", 160, 5e-4, 32, zero_head=True,
                          model_args={"pad_type": "same"}),
}

# Whole-image resize (X-rays of any aspect become the model's square input, as in the
# training data) instead of the ImageNet centre crop, which would cut off lung fields.
_XRAY_INPUT = {"crop_pct": 1.0, "crop_mode": "squash"}


def preset_named(name: str) -> Preset:
    if name not in PRESETS:
        raise UsageError(f"unknown model {name!r}: choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def create_model(
    name: str,
    *,
    pretrained: bool = False,
    pretrained_file: str | None = None,
    image_size: int | None = None,
    cnn_width: int | None = None,
    normalization: tuple[float, float] | None = None,
) -> nn.Module:
    """A fresh 2-class model of preset ``name``, optionally from ImageNet weights. ``normalization``
    (mean, std for every channel) replaces the architecture's ImageNet ones, for weights trained
    on other input scaling; config.json carries it to every reader."""
    preset = preset_named(name)
    size = image_size or preset.image_size
    overlay = {**_XRAY_INPUT, "input_size": (3, size, size)}
    if normalization:
        overlay |= {"mean": (normalization[0],) * 3, "std": (normalization[1],) * 3}
    if (pretrained or pretrained_file) and not preset.has_imagenet_weights:
        raise UsageError(f"model {name!r} trains from scratch: drop --pretrained/--pretrained-file")
    # timm records these in config.json's model_args, so the saved folder rebuilds the same shape.
    shape = dict(preset.model_args)
    if cnn_width is not None:
        if name != "cnn" or cnn_width < 1:
            raise UsageError(f"--cnn-width {cnn_width}: only the cnn preset takes a width, a positive channel count")
        shape["widths"] = (cnn_width, 2 * cnn_width, 4 * cnn_width)
    if pretrained_file:
        if not Path(pretrained_file).is_file():
            raise UsageError(f"--pretrained-file {pretrained_file}: no such file; give the path of a weights file")
        overlay["file"] = str(pretrained_file)
    load = bool(pretrained or pretrained_file)
    try:
        model = timm.create_model(
            preset.timm_name, pretrained=load, pretrained_cfg_overlay=overlay, num_classes=len(LABEL_NAMES), **shape
        )
    except Exception as err:  # timm raises several kinds for a failed download or a bad file
        if pretrained_file:
            raise UsageError(
                f"could not load weights from {pretrained_file} into {preset.timm_name}: {err}; "
                "give a timm/torchvision state dict for that architecture"
            ) from err
        raise UsageError(
            f"could not download ImageNet weights for {preset.timm_name} ({type(err).__name__}); "
            "you may be offline: pass --pretrained-file PATH with a local weights file, "
            "or leave out --pretrained to train from scratch"
        ) from err
    if preset.zero_head:
        nn.init.zeros_(model.get_classifier().weight)
        nn.init.zeros_(model.get_classifier().bias)
    return model
