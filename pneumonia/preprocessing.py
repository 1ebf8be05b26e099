"""Reading any uploaded or stored image (PNG, JPEG, ..., DICOM) within a chest film's limits, and
training's transform (timm + torchvision, with augmentation) to the model's input tensor.

The numbers (size, interpolation, mean/std) come from the model's timm data config, which
is saved in its ``config.json``; the pixel steps themselves live in ``pneumonia.pixels``.
"""
from __future__ import annotations

import io
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pneumonia.pixels import HIGH_BIT_MODES as _HIGH_BIT_MODES
from pneumonia.pixels import INTENSITY_CHOICES, crop_borders, standardise_intensity, to_model_mode

if TYPE_CHECKING:
    from torch import nn

_GREY_CONVERTIBLE = {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "HSV"}


class UnreadableImage(ValueError):
    """The bytes or file are not an image PIL can decode."""


# What a chest film can be: checked from the file's header, before any pixel is decoded, so
# a decompression bomb (a 20000 x 20000 PNG of a few KB) costs nothing. The largest flat-panel
# detectors give about 4300 x 4300 (18 MP); a chest film is about 1:1.25, a cropped one 1:2.
MIN_SIDE = 64
MAX_ASPECT_RATIO = 3.0
MAX_PIXELS = 64_000_000


class ImageOutOfLimits(UnreadableImage):
    """A readable image no chest film looks like: too small, too thin or too large."""

    def __init__(self, source, problem: str):
        super().__init__(f"{_describe(source)}: {problem}")
        self.problem = problem  # the message without the (often temporary) file path


def check_limits(source, width: int, height: int) -> None:
    """Raise ImageOutOfLimits unless a width x height image can be a chest X-ray."""
    size = f"{width}x{height} px"
    if width * height > MAX_PIXELS:
        raise ImageOutOfLimits(source, f"{size} ({width * height / 1e6:.0f} megapixels) is over the "
                                       f"{MAX_PIXELS / 1e6:.0f}-megapixel limit: upload a downscaled copy of the film")
    if min(width, height) < MIN_SIDE:
        raise ImageOutOfLimits(source, f"{size} is too small: the shorter side must be at least {MIN_SIDE} px; "
                                       "upload the film at its original resolution")
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise ImageOutOfLimits(source, f"{size} is {max(width, height) / min(width, height):.0f} times longer than "
                                       f"wide, no chest film's shape (at most {MAX_ASPECT_RATIO:.0f}:1): upload "
                                       "the whole film, uncropped")


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


def open_image(source: str | Path | bytes | dict | Image.Image) -> Image.Image:
    """Decode a path, raw bytes, a ``datasets`` Image dict or a PIL image (PNG, JPEG, ..., DICOM), fully loaded."""
    try:
        if isinstance(source, Image.Image):
            image = source
        elif isinstance(source, dict):  # datasets.Image(decode=False): {"bytes", "path"}
            return open_image(source["bytes"] if source.get("bytes") else source["path"])
        elif is_dicom(source):
            return _read_dicom(source)
        elif isinstance(source, (bytes, bytearray)):
            image = Image.open(io.BytesIO(source))
        else:
            image = Image.open(source)
        if not isinstance(source, Image.Image):
            check_limits(source, *image.size)  # from the header: nothing decoded yet
        image.load()  # decode now, so a truncated file fails here and not in a transform
        return _with_grey_conversion(ImageOps.exif_transpose(image))
    except UnreadableImage:
        raise
    except Image.DecompressionBombError as err:  # PIL's own limit, above ours, hit while reading the header
        claimed = re.search(r"\((\d+) pixels\)", str(err))
        size = f"{int(claimed.group(1)) / 1e6:.0f} megapixels" if claimed else "the image"
        raise ImageOutOfLimits(source, f"{size} is over the {MAX_PIXELS / 1e6:.0f}-megapixel limit: upload a "
                                       "downscaled copy of the film") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise UnreadableImage(f"{_describe(source)}: not a readable image ({err})") from err


def _with_grey_conversion(image: Image.Image) -> Image.Image:
    """The image in a mode PIL can turn into grey: e.g. a LAB TIFF goes through RGB first."""
    if image.mode in _HIGH_BIT_MODES or image.mode in _GREY_CONVERTIBLE:
        return image
    try:
        image.convert("L")
    except ValueError:
        return image.convert("RGB")  # LAB: PIL converts it to RGB, and RGB to grey, but not LAB to grey
    return image


def is_dicom(source: str | Path | bytes) -> bool:
    """DICOM files carry "DICM" after a 128-byte preamble; some bare ones only a .dcm name."""
    if isinstance(source, (bytes, bytearray)):
        return source[128:132] == b"DICM"
    path = Path(source)
    if path.suffix.lower() == ".dcm":
        return True
    with path.open("rb") as f:
        return f.read(132)[128:132] == b"DICM"


def _read_dicom(source: str | Path | bytes) -> Image.Image:
    """The displayed image: modality rescale and VOI window applied, MONOCHROME1 inverted."""
    try:
        import pydicom
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError as err:
        raise UnreadableImage(f"{_describe(source)}: reading DICOM needs pydicom ({err}): "
                              'pip install "pneumonia-xray[dicom]", or upload a PNG or JPEG of the film') from err

    try:
        dataset = pydicom.dcmread(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source, force=True)
        if "PixelData" not in dataset:
            raise UnreadableImage(f"{_describe(source)}: DICOM file without pixel data (a report or structured document?)")
        check_limits(source, int(dataset.get("Columns", 0)), int(dataset.get("Rows", 0)))  # before decoding
        pixels = apply_voi_lut(apply_modality_lut(dataset.pixel_array, dataset), dataset).astype(np.float32)
    except UnreadableImage:
        raise
    except Exception as err:  # pydicom raises many kinds for broken or unsupported files
        raise UnreadableImage(f"{_describe(source)}: unreadable DICOM ({type(err).__name__}: {err})") from err
    if pixels.ndim == 3 and pixels.shape[-1] not in (3, 4):
        pixels = pixels[0]  # a multi-frame file: its first frame
    if pixels.ndim == 3:
        return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    if dataset.get("PhotometricInterpretation") == "MONOCHROME1":  # high values are dark: invert
        pixels = pixels.max() - pixels
    return Image.fromarray(pixels, mode="F")


def _describe(source) -> str:
    if isinstance(source, dict):
        return str(source.get("path") or "image bytes")
    return str(source) if isinstance(source, (str, Path)) else "image bytes"


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
