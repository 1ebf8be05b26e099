"""Reading an uploaded or stored image (PNG, JPEG, ..., DICOM) within a chest film's limits.

Training, evaluation, the app and ``load_classifier``'s users read every file through
``open_image``; what happens to the pixels next is ``pneumonia.pixels`` (inference) or
``pneumonia.training_transform`` (training).
"""
from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pneumonia.pixels import HIGH_BIT_MODES as _HIGH_BIT_MODES

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
