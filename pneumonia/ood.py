"""The out-of-distribution gate: is an upload a chest X-ray like the ones the model was trained on?

Two parts, both stored in the model folder (``config.json["ood"]`` and ``ood.safetensors``):

* cheap checks on the image itself: a colour photo (Hasler-Süsstrunk colourfulness) or a
  blank, near-constant image is refused before the model's opinion is asked;
* a feature check: the Mahalanobis distance (Lee et al., NeurIPS 2018: class-conditional
  Gaussians with one shared covariance) of the per-channel means of two feature maps, a
  middle stage and the last, to the training films (the middle stage sees texture and
  layout, where a page of text or noise differs; the last sees what the classifier uses).
  Each stage's features are reduced by PCA (at most 256 dimensions) and the covariance is
  Ledoit-Wolf shrunk, so the fit is stable with thousands of films and thousands of channels. Training fits it on its
  films under training augmentation (the gate accepts the variation training taught the
  model), and sets the cut-off so that 99% of the clean validation films pass.

Fitting uses scikit-learn; scoring is a matrix product in numpy (also on ONNX Runtime's
output, which exports the same features beside the logits).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

GATE_FILE = "ood.safetensors"
MAX_COLOURFULNESS = 20.0  # Hasler-Süsstrunk M: a grey film is 0, "slightly colourful" 15, "moderately" 33
MIN_GREY_SPREAD = 2.0     # standard deviation of the grey levels (0-255) below which an image is blank
PASS_SHARE = 0.99         # share of clean validation films the cut-off lets through
MAX_DIMS = 256            # PCA dimensions per feature map
CHECK_SIDE = 256          # the cheap checks look at a thumbnail this large


def colourfulness(image: Image.Image) -> float:
    """Hasler & Süsstrunk (2003) colourfulness of an image; 0 for any grayscale image."""
    if image.mode not in ("RGB", "RGBA", "P", "CMYK", "YCbCr", "LAB", "HSV"):
        return 0.0
    rgb = _thumbnail(image).convert("RGB")
    rgb = np.asarray(rgb, dtype=np.float64)
    rg = rgb[..., 0] - rgb[..., 1]
    yb = 0.5 * (rgb[..., 0] + rgb[..., 1]) - rgb[..., 2]
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


def grey_spread(image: Image.Image) -> float:
    """Standard deviation of the grey levels (0-255) of the image as the model reads it."""
    from pneumonia.preprocessing import to_model_mode  # preprocessing imports nothing from here

    return float(np.asarray(to_model_mode(_thumbnail(image)).convert("L"), dtype=np.float64).std())


def _thumbnail(image: Image.Image) -> Image.Image:
    if max(image.size) <= CHECK_SIDE:
        return image
    small = image.copy()
    # PIL's reduce() step, which thumbnail uses by default, has no 16-bit ("I;16") support
    small.thumbnail((CHECK_SIDE, CHECK_SIDE), reducing_gap=None if image.mode.startswith("I;16") else 2.0)
    return small


def image_problem(image: Image.Image) -> str | None:
    """Why the image itself cannot be a chest X-ray (a colour photo, a blank image), or None."""
    image = _thumbnail(image)  # once: a full-resolution film is 10-20 megapixels
    colour = colourfulness(image)
    if colour > MAX_COLOURFULNESS:
        return f"it is a colour image (colourfulness {colour:.0f}; an X-ray is grey, at most {MAX_COLOURFULNESS:.0f})"
    spread = grey_spread(image)
    if spread < MIN_GREY_SPREAD:
        return f"it is blank (grey levels vary by {spread:.1f} of 255)"
    return None


def gate_layers(model: nn.Module) -> tuple[list[str], list[int]]:
    """The feature maps the gate reads (the middle stage of the model's ``feature_info`` and its
    last) and the feature columns each gives (one mean per channel)."""
    stages = model.feature_info
    chosen = [stages[i] for i in sorted({len(stages) // 2, len(stages) - 1})]
    return [info["module"] for info in chosen], [info["num_chs"] for info in chosen]


class WithGateFeatures(nn.Module):
    """The model, returning (logits, gate features): the per-channel mean of each gate layer's
    feature map, concatenated (not the spread too: int8 ONNX Runtime moves a spread several
    times more than a mean, and the gate's verdicts then disagree with PyTorch's). Its forward
    hooks stay on the model, so any forward pass (Grad-CAM's too) leaves the features of its
    batch in ``last_features()``."""

    def __init__(self, model: nn.Module, layers: list[str]):
        super().__init__()
        self.model, self.layers = model, list(layers)
        self._maps: dict[str, torch.Tensor] = {}
        self._hooks = [model.get_submodule(name).register_forward_hook(_store_output(self._maps, name))
                       for name in self.layers]

    def remove(self) -> None:
        """Take the hooks off the model."""
        for hook in self._hooks:
            hook.remove()

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model(pixels), self.last_features()

    def last_features(self) -> torch.Tensor:
        return torch.cat([self._maps[name].float().mean(dim=(2, 3)) for name in self.layers], dim=1)


def _store_output(store: dict, name: str):
    def hook(module, inputs, output):
        store[name] = output
    return hook


@dataclass
class FeatureGaussians:
    """One feature map's part: ``f -> (f - center) @ whiten`` makes the shared class covariance
    the identity; the score is the squared distance to the nearest class mean there."""

    center: np.ndarray       # (D,)
    whiten: np.ndarray       # (D, k): PCA components @ Cholesky factor of the precision
    class_means: np.ndarray  # (classes, k), whitened
    scale: float             # this map's 99th percentile on clean validation: scores are in its units

    @classmethod
    def fit(cls, features: np.ndarray, labels: np.ndarray) -> "FeatureGaussians":
        from sklearn.covariance import LedoitWolf
        from sklearn.decomposition import PCA

        pca = PCA(min(MAX_DIMS, *features.shape), random_state=0).fit(features)
        reduced = pca.transform(features)
        means = np.stack([reduced[labels == c].mean(axis=0) for c in np.unique(labels)])
        precision = LedoitWolf().fit(reduced - means[np.searchsorted(np.unique(labels), labels)]).precision_
        factor = np.linalg.cholesky(precision)  # precision = L L^T, so d^2 = |(z - mu) L|^2
        return cls(pca.mean_, pca.components_.T @ factor, means @ factor, 1.0)

    def distances(self, features: np.ndarray) -> np.ndarray:
        whitened = (features - self.center) @ self.whiten
        return ((whitened[:, None, :] - self.class_means[None]) ** 2).sum(axis=-1).min(axis=1) / self.scale


@dataclass
class OodGate:
    layers: list[str]
    widths: list[int]        # feature columns per layer (its channels)
    parts: list[FeatureGaussians]
    cutoff: float            # on the combined score: the largest part, in units of each part's scale

    @classmethod
    def fit(cls, layers: list[str], widths: list[int], train: tuple[np.ndarray, np.ndarray],
            validation: np.ndarray) -> "OodGate":
        """Gaussians from training features and labels; scales and cut-off from clean validation."""
        parts = [FeatureGaussians.fit(block, train[1]) for block in _split(train[0], widths)]
        for part, block in zip(parts, _split(validation, widths)):
            part.scale = float(np.quantile(part.distances(block), PASS_SHARE))
        gate = cls(list(layers), widths, parts, 1.0)
        gate.cutoff = float(np.quantile(gate.scores(validation), PASS_SHARE, method="inverted_cdf"))  # at least 99% pass
        return gate

    def scores(self, features: np.ndarray) -> np.ndarray:
        """Combined score per image: above ``cutoff`` is out of distribution."""
        features = np.asarray(features, dtype=np.float64)
        return np.max([part.distances(block) for part, block in zip(self.parts, _split(features, self.widths))], axis=0)

    def problems(self, features: np.ndarray) -> list[str | None]:
        return [None if s <= self.cutoff else f"its features are unlike the training films' (score {s:.1f}; "
                f"cut-off {self.cutoff:.2f}, passed by {PASS_SHARE:.0%} of validation films)" for s in self.scores(features)]

    def to_config(self) -> dict:
        return {"file": GATE_FILE, "method": "mahalanobis", "layers": self.layers, "widths": self.widths,
                "cutoff": self.cutoff, "max_colourfulness": MAX_COLOURFULNESS, "min_grey_spread": MIN_GREY_SPREAD,
                "pass_share": PASS_SHARE}

    def save(self, folder: Path) -> None:
        from safetensors.numpy import save_file

        tensors = {}
        for layer, part in zip(self.layers, self.parts):
            tensors |= {f"{layer}.center": part.center, f"{layer}.whiten": part.whiten,
                        f"{layer}.class_means": part.class_means, f"{layer}.scale": np.array([part.scale])}
        path = folder / GATE_FILE
        save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}, str(path))
        path.chmod(0o644)  # safetensors writes 0600; a Space or a colleague's account must read it

    @classmethod
    def load(cls, path: Path, config: dict) -> "OodGate":
        from safetensors.numpy import load_file

        tensors = {k: v.astype(np.float64) for k, v in load_file(str(path)).items()}
        parts = [FeatureGaussians(tensors[f"{layer}.center"], tensors[f"{layer}.whiten"],
                                  tensors[f"{layer}.class_means"], float(tensors[f"{layer}.scale"][0]))
                 for layer in config["layers"]]
        return cls(list(config["layers"]), list(config["widths"]), parts, float(config["cutoff"]))


def _split(features: np.ndarray, widths: list[int]) -> list[np.ndarray]:
    return np.split(features, np.cumsum(widths)[:-1], axis=1)
