"""Training's transform: a PIL image to the model's input tensor with timm and torchvision,
augmentation among its steps; and ``XrayPreprocessing``, the deterministic steps a model folder
saves in its ``config.json``.

The numbers (size, interpolation, mean/std) come from the model's timm data config; the pixel
steps themselves live in ``pneumonia.pixels``, which inference runs without torch.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, Protocol

from pneumonia.pixels import INTENSITY_CHOICES, crop_borders, standardise_intensity, to_model_mode

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class XrayPreprocessing:
    """Deterministic steps every input gets (training, evaluation, the app), beyond timm's
    resize and normalisation; saved in ``config.json`` so a loaded model applies the same.

    ``intensity`` standardises the grey levels at the model's input size, so films from
    another scanner (darker, flatter, another gamma) reach the model alike: ``equalize``
    (global histogram equalisation, PIL), ``clahe`` (contrast-limited adaptive equalisation,
    OpenCV) or ``percentile`` (the 1st..99th percentile stretched to the full range).
    ``crop_borders`` cuts uniform black or white margins off the film before resizing.
    """

    intensity: str = "none"
    crop_borders: bool = False

    CONFIG_KEY = "xray_preprocessing"

    def __post_init__(self):
        if self.intensity not in INTENSITY_CHOICES:
            raise ValueError(f"intensity {self.intensity!r}: choose one of {', '.join(INTENSITY_CHOICES)}")

    def to_config(self) -> dict:
        return {self.CONFIG_KEY: {"intensity": self.intensity, "crop_borders": self.crop_borders}}

    @classmethod
    def from_config(cls, config: dict) -> "XrayPreprocessing":
        """From a model folder's config.json; folders trained before it existed get none."""
        return cls(**config.get(cls.CONFIG_KEY, {}))


def data_config_of(model: nn.Module) -> dict[str, Any]:
    """The model's preprocessing numbers, from the timm pretrained config it carries."""
    import timm.data

    return timm.data.resolve_model_data_config(model)


class Augmentation(Protocol):
    """Random training steps (``train.augment.Augment``): PIL steps at the input size, then tensor steps."""

    def image_steps(self, size: int) -> list[Callable]: ...

    def tensor_steps(self) -> list[Callable]: ...


def build_transform(
    data_config: dict[str, Any], preprocessing: XrayPreprocessing = XrayPreprocessing(), *,
    augment: Augmentation | None = None,
) -> Callable:
    """PIL image of any mode -> normalised tensor; with ``augment``, the training variant.

    Order: mode -> border crop -> timm resize -> [augmentation] -> intensity standardisation
    -> tensor, normalise -> [erasing]. Standardising after the random intensity changes
    lets the model see what every input will look like once standardised. Without ``augment``
    it gives the pixels of ``pneumonia.pixels.preprocess``, bit for bit (a test holds them).
    """
    from torchvision import transforms as T

    fixed, rest = transform_steps(data_config, preprocessing, augment=augment)
    return T.Compose([*fixed, *rest])


def transform_steps(
    data_config: dict[str, Any], preprocessing: XrayPreprocessing = XrayPreprocessing(), *,
    augment: Augmentation | None = None,
) -> tuple[list[Callable], list[Callable]]:
    """``build_transform``'s steps in two parts: the fixed ones up to the resized image (mode,
    border crop, resize), the same with or without ``augment``, and the rest. Several draws of one
    image decode and resize it once."""
    import timm.data

    steps = list(timm.data.create_transform(**data_config, is_training=False).transforms)
    to_tensor = next(i for i, s in enumerate(steps) if type(s).__name__ in ("MaybeToTensor", "ToTensor"))
    image_steps = augment.image_steps(data_config["input_size"][-1]) if augment else []
    if preprocessing.intensity != "none":
        image_steps.append(partial(standardise_intensity, method=preprocessing.intensity))
    rest = [*image_steps, *steps[to_tensor:], *(augment.tensor_steps() if augment else [])]
    first = [to_model_mode] + ([crop_borders] if preprocessing.crop_borders else [])
    return [*first, *steps[:to_tensor]], rest
