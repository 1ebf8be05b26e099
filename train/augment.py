"""Training augmentation: the original Keras recipe, and a family aimed at acquisition shift.

``original`` is the baseline (shear 0.2, zoom 0.2, horizontal flip). ``shift`` adds what
differs between scanners and sites, at moderate strengths: resolution loss, blur and
sharpening, gamma, contrast, brightness, random resized crops, and erasing near the film's
edges (where side markers and body edges sit). The shifted validation (``train/shift.py``)
draws the kinds it shares with these from ``TRAIN_RANGES``' complement, so it measures
robustness beyond the augmentation, not the augmentation itself.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch
from PIL import Image, ImageEnhance, ImageFilter
from torchvision import transforms as T

# Strength ranges the ``shift`` family draws from. Blur sigma is in pixels of a 224 px film
# (scaled to the image's size); resolution is the downscale factor before scaling back up.
TRAIN_RANGES: dict[str, tuple[float, float]] = {
    "blur_sigma": (0.2, 1.0),
    "sharpness": (1.3, 2.0),
    "resolution": (0.6, 0.95),
    "gamma": (0.8, 1.25),
    "contrast": (0.85, 1.15),
    "brightness": (0.85, 1.15),
}
EDGE_ERASE_SHARE = (0.04, 0.12)  # width of the erased strip, as a share of the side
CROP_SCALE = (0.75, 1.0)         # random resized crop: share of the area kept
CROP_RATIO = (0.85, 1.18)        # and its width / height


@dataclass(frozen=True)
class Augment:
    """Training-only random steps; ``family="original"`` is the Keras recipe alone."""

    shear: float = 0.2  # shear angle range in radians (Keras' unit), both directions
    zoom: float = 0.2   # scale drawn from [1 - zoom, 1 + zoom]
    hflip: float = 0.5  # probability of a horizontal flip
    family: str = "original"  # "original" | "shift"

    def image_steps(self, size: int) -> list:
        """PIL steps at the model's input size, before intensity standardisation."""
        steps = []
        if self.family == "shift":
            steps.append(T.RandomResizedCrop(size, scale=CROP_SCALE, ratio=CROP_RATIO, antialias=True))
        steps += [
            T.RandomAffine(degrees=0, shear=math.degrees(self.shear), scale=(1 - self.zoom, 1 + self.zoom)),
            T.RandomHorizontalFlip(self.hflip),
        ]
        if self.family == "shift":
            steps += [T.RandomApply([ResolutionLoss()], p=0.3), T.RandomChoice([Blur(), Sharpen()]), Photometric()]
        return steps

    def tensor_steps(self) -> list:
        """Steps on the normalised tensor."""
        return [EdgeErasing(p=0.5)] if self.family == "shift" else []


def _draw(name: str) -> float:
    low, high = TRAIN_RANGES[name]
    return random.uniform(low, high)


class ResolutionLoss:
    """Down-scale, then back up: a detector or a copy with less resolution."""

    def __call__(self, image: Image.Image) -> Image.Image:
        factor = _draw("resolution")
        small = (max(8, round(image.width * factor)), max(8, round(image.height * factor)))
        return image.resize(small, Image.BILINEAR).resize(image.size, Image.BILINEAR)


class Blur:
    def __init__(self, p: float = 0.3):
        self.p = p

    def __call__(self, image: Image.Image) -> Image.Image:
        if random.random() >= self.p:
            return image
        return image.filter(ImageFilter.GaussianBlur(_draw("blur_sigma") * min(image.size) / 224))


class Sharpen:
    def __init__(self, p: float = 0.3):
        self.p = p

    def __call__(self, image: Image.Image) -> Image.Image:
        return ImageEnhance.Sharpness(image).enhance(_draw("sharpness")) if random.random() < self.p else image


class Photometric:
    """Gamma, contrast and brightness, each applied half the time, in random order."""

    def __call__(self, image: Image.Image) -> Image.Image:
        steps = [("gamma", apply_gamma), ("contrast", adjust_contrast), ("brightness", adjust_brightness)]
        random.shuffle(steps)
        for name, step in steps:
            if random.random() < 0.5:
                image = step(image, _draw(name))
        return image


def apply_gamma(image: Image.Image, gamma: float) -> Image.Image:
    table = [round(255 * (i / 255) ** gamma) for i in range(256)]
    return image.point(table * len(image.getbands()))


def adjust_contrast(image: Image.Image, factor: float) -> Image.Image:
    return ImageEnhance.Contrast(image).enhance(factor)


def adjust_brightness(image: Image.Image, factor: float) -> Image.Image:
    return ImageEnhance.Brightness(image).enhance(factor)


class EdgeErasing:
    """Erase a strip along one edge of the film (to zero, the normalised mean), where
    side markers, labels and body edges are: cues that are not lung."""

    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        if random.random() >= self.p:
            return pixels
        pixels = pixels.clone()
        height, width = pixels.shape[-2:]
        side = random.choice(("top", "bottom", "left", "right"))
        share = random.uniform(*EDGE_ERASE_SHARE)
        across = height if side in ("top", "bottom") else width
        depth = max(1, round(share * across))
        along = width if side in ("top", "bottom") else height
        start = random.randrange(0, max(1, along // 2))
        stop = start + random.randint(along // 3, along)
        if side == "top":
            pixels[..., :depth, start:stop] = 0
        elif side == "bottom":
            pixels[..., -depth:, start:stop] = 0
        elif side == "left":
            pixels[..., start:stop, :depth] = 0
        else:
            pixels[..., start:stop, -depth:] = 0
        return pixels
