"""A film's pixels to the model's input, with NumPy and Pillow alone: the one inference preprocessing.

Every reader of a model folder runs this file: ``load_classifier`` on any backend, the app, a
plain-onnxruntime user, and the transformers image processor (export copies this file into the
folder as ``xray_pixels.py``, so it imports nothing of its package). Training builds the same
steps from timm and torchvision (``pneumonia.training_transform.build_transform``), because its
augmentation sits among them; a test holds the two to identical pixels on every test film.

Steps, all read from the folder's ``config.json``: any mode -> 8-bit grey on three channels ->
[border crop] -> resize (``pretrained_cfg``: size, interpolation, crop mode) -> [intensity
standardisation at the model's size] -> float32 / 255 -> (x - mean) / std, channels first.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageOps

HIGH_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}
INTENSITY_CHOICES = ("none", "equalize", "clahe", "percentile")
INTERPOLATIONS = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST,
                  "lanczos": Image.LANCZOS, "box": Image.BOX, "hamming": Image.HAMMING}
DATA_CONFIG_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")


def data_config_from(config: dict) -> dict:
    """The resize and normalisation numbers of a folder's ``config.json`` (its ``pretrained_cfg``),
    as timm's ``resolve_model_data_config`` gives them for the loaded model."""
    pretrained = config.get("pretrained_cfg", {})
    missing = [key for key in ("input_size", "mean", "std") if key not in pretrained]
    if missing:
        raise ValueError(f"config.json's pretrained_cfg lacks {', '.join(missing)}: not a model folder this "
                         "project wrote (python -m train writes them)")
    return {"input_size": tuple(pretrained["input_size"]), "interpolation": pretrained.get("interpolation", "bilinear"),
            "mean": tuple(pretrained["mean"]), "std": tuple(pretrained["std"]),
            "crop_pct": pretrained.get("crop_pct", 0.875), "crop_mode": pretrained.get("crop_mode", "center")}


def model_input(image: Image.Image, config: dict) -> np.ndarray:
    """One image -> the float32 input (3, H, W) of the model whose ``config.json`` is ``config``."""
    xray = config.get("xray_preprocessing", {})
    return preprocess(image, data_config_from(config), xray.get("intensity", "none"), xray.get("crop_borders", False))


def preprocess(image: Image.Image, data_config: dict, intensity: str = "none", crop: bool = False) -> np.ndarray:
    """One decoded image of any mode -> the model's float32 input (3, H, W)."""
    image = to_model_mode(image)
    if crop:
        image = crop_borders(image)
    image = resize(image, data_config)
    image = standardise_intensity(image, intensity)
    scaled = np.asarray(image, dtype=np.float32) / np.float32(255)
    mean, std = (np.asarray(data_config[key], dtype=np.float32) for key in ("mean", "std"))
    return np.ascontiguousarray(((scaled - mean) / std).transpose(2, 0, 1))


def to_model_mode(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB holding the image's grayscale content.

    16-bit and float images are stretched min-to-max into 8 bits; transparent pixels are
    laid on black (an X-ray's background); colour is reduced to luminance, as X-rays are
    grayscale and the model was trained on grayscale copied to three channels.
    """
    if image.mode in HIGH_BIT_MODES:
        values = np.asarray(image, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
        image = Image.fromarray(np.round(scaled).astype(np.uint8), mode="L")
    elif image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    return image.convert("L").convert("RGB")


def crop_borders(image: Image.Image, max_share: float = 0.2) -> Image.Image:
    """The film without uniform black or white margins (at most ``max_share`` of each side)."""
    gray = np.asarray(image.convert("L"))
    extreme = (gray <= 12) | (gray >= 243)
    uniform_rows, uniform_cols = extreme.mean(axis=1) >= 0.97, extreme.mean(axis=0) >= 0.97
    height, width = gray.shape
    top, bottom = (_leading(lines, int(max_share * height)) for lines in (uniform_rows, uniform_rows[::-1]))
    left, right = (_leading(lines, int(max_share * width)) for lines in (uniform_cols, uniform_cols[::-1]))
    if not (top or bottom or left or right):
        return image
    return image.crop((left, top, width - right, height - bottom))


def _leading(flags: np.ndarray, limit: int) -> int:
    """How many of the first ``limit`` flags are set before the first unset one."""
    unset = np.flatnonzero(~flags[:limit])
    return int(unset[0]) if unset.size else limit


def resize(image: Image.Image, data_config: dict) -> Image.Image:
    """timm's evaluation resize and centre crop, as torchvision does them on a PIL image."""
    height, width = data_config["input_size"][-2:]
    interpolation = INTERPOLATIONS[data_config.get("interpolation", "bilinear")]
    crop_pct = data_config.get("crop_pct") or 0.875
    scale = (math.floor(height / crop_pct), math.floor(width / crop_pct))
    mode = data_config.get("crop_mode") or "center"
    if mode == "squash":
        image = image.resize((scale[1], scale[0]), interpolation)
    elif mode == "center":
        if scale[0] == scale[1]:  # the shorter side to the scale size, the aspect ratio kept
            short, long = sorted(image.size)
            new_short, new_long = scale[0], int(scale[0] * long / short)
            size = (new_short, new_long) if image.width <= image.height else (new_long, new_short)
            image = image.resize(size, interpolation) if size != image.size else image
        else:
            image = image.resize((scale[1], scale[0]), interpolation)
    else:
        raise ValueError(f"crop_mode {mode!r} is not supported: use squash or center")
    return _centre_crop(image, height, width)


def _centre_crop(image: Image.Image, height: int, width: int) -> Image.Image:
    if image.size == (width, height):
        return image
    if width > image.width or height > image.height:
        raise ValueError(f"{image.width}x{image.height} px is smaller than the {width}x{height} crop")
    top, left = int(round((image.height - height) / 2.0)), int(round((image.width - width) / 2.0))
    return image.crop((left, top, left + width, top + height))


def standardise_intensity(image: Image.Image, method: str) -> Image.Image:
    """Grey levels brought to a common form; ``image`` is 8-bit grayscale content (L or RGB).

    ``equalize``: PIL's global histogram equalisation (OpenCV's ``equalizeHist`` differs by up
    to 30 grey levels); ``clahe``: OpenCV's contrast-limited adaptive equalisation, clip 2.0,
    8x8 tiles; ``percentile``: the 1st..99th percentile stretched to 0..255.
    """
    if method == "none":
        return image
    gray = image.convert("L")
    if method == "equalize":
        gray = ImageOps.equalize(gray)
    elif method == "clahe":
        import cv2  # opencv-python-headless

        gray = Image.fromarray(cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(np.asarray(gray)))
    elif method == "percentile":
        values = np.asarray(gray, dtype=np.float32)
        low, high = np.percentile(values, (1, 99))
        scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
        gray = Image.fromarray(np.clip(np.round(scaled), 0, 255).astype(np.uint8))
    else:
        raise ValueError(f"unknown intensity standardisation {method!r}: choose one of {', '.join(INTENSITY_CHOICES)}")
    return gray.convert(image.mode)
