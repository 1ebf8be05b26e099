"""The out-of-distribution gate: is an upload a child's frontal chest X-ray, like the films the
model was trained on? Three outcomes: answer, answer with a caution (an adult's film), refuse
(not a frontal chest X-ray, with what it looks like where the gate can tell).

Stored in the model folder (``config.json["ood"]`` and ``ood.safetensors``):

* cheap checks on the image itself: a colour photo (Hasler-Süsstrunk colourfulness) or a
  blank, near-constant image is refused before the model's opinion is asked;
* features from every stage of the network: per channel, the mean of its feature map and the
  gap between the means of the map's left and right halves (a frontal film's halves look
  alike, a side view's do not);
* a Mahalanobis distance (Lee et al., NeurIPS 2018: class-conditional Gaussians with one shared,
  Ledoit-Wolf shrunk covariance, after PCA) of those features to the training films: far from
  them is refused whatever else is said;
* linear heads on the whitened features, fitted with real images the model must not judge
  (``train/gate/scope.py``: CT and MRI slices, other body parts, side views) and adult frontal films:
  P(not a frontal chest film), P(an adult's film) and which kind of image it is.

The cut-offs are set on validation (see ``train/gate/fit.py``). Fitting uses scikit-learn;
scoring is numpy, so it also runs on ONNX Runtime's output, which exports the same features
beside the logits. A folder fitted before the heads existed (gate version 1: two stages, means
only) still loads and refuses by distance alone.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

GATE_FILE = "ood.safetensors"
INT8_GATE_FILE = "ood.onnx-int8.safetensors"  # the int8 ONNX model's own calibration
MAX_COLOURFULNESS = 20.0  # Hasler-Süsstrunk M: a grey film is 0, "slightly colourful" 15, "moderately" 33
MIN_GREY_SPREAD = 2.0     # standard deviation of the grey levels (0-255) below which an image is blank
PASS_SHARE = 0.99         # share of clean validation films the cut-off lets through
MAX_DIMS = 256            # PCA dimensions per block of features
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
    from pneumonia.pixels import to_model_mode

    return float(np.asarray(to_model_mode(_thumbnail(image)).convert("L"), dtype=np.float64).std())


def _thumbnail(image: Image.Image) -> Image.Image:
    if max(image.size) <= CHECK_SIDE:
        return image
    small = image.copy()
    # PIL's reduce() step, which thumbnail uses by default, has no 16-bit ("I;16") support
    small.thumbnail((CHECK_SIDE, CHECK_SIDE), reducing_gap=None if image.mode.startswith("I;16") else 2.0)
    return small


def image_check(image: Image.Image) -> tuple[str, float] | None:
    """Why the image itself cannot be an X-ray, as (kind, value): ("colour", colourfulness) or
    ("blank", spread of its grey levels); None when it passes."""
    image = _thumbnail(image)  # once: a full-resolution film is 10-20 megapixels
    colour = colourfulness(image)
    if colour > MAX_COLOURFULNESS:
        return "colour", colour
    spread = grey_spread(image)
    return ("blank", spread) if spread < MIN_GREY_SPREAD else None


KINDS = ("ct", "mri", "other_radiograph", "lateral", "photo_or_document")  # what the kind head tells apart
# Why an upload is refused, in the plain words the page shows (scores go to the log and the API).
REASONS = {
    "colour": "it is a colour image, not an X-ray (a photo?)",
    "blank": "it is blank",
    "unlike": "it does not look like an X-ray this model knows (a photo, a document or a drawing?)",
    "ct": "it looks like a CT slice, not a plain X-ray film",
    "mri": "it looks like an MRI slice, not an X-ray",
    "other_radiograph": "it looks like an X-ray of another part of the body",
    "lateral": "it looks like a side view (lateral) of the chest, and the model reads frontal films only",
    "photo_or_document": "it looks like a photo or a document, not an X-ray",
    "not_frontal_chest": "it does not look like a frontal chest X-ray",  # refused, but the kind is not clear
    # refused as far from the training films, though the refusal head takes it for a frontal chest film,
    # and P(adult) above its cut-off
    "adult": "it looks like an adult's chest X-ray, and unlike the children's films (aged 1 to 5) this model "
             "was trained on",
}
UPLOAD_INSTEAD = "upload a frontal chest X-ray of a child (PNG, JPEG or DICOM)"


@dataclass
class Verdict:
    """The gate's word on one image: "answer", "caution" (kind "adult") or "refuse" (kind: a
    REASONS key, "adult" among them), with the scores behind it."""

    outcome: str = "answer"
    kind: str | None = None
    scores: dict[str, float] = field(default_factory=dict)


def image_verdict(image: Image.Image) -> Verdict | None:
    """A refusal from the cheap image checks alone, or None."""
    found = image_check(image)
    return Verdict("refuse", found[0], {found[0] if found[0] == "blank" else "colourfulness": round(found[1], 2)}) if found else None


@dataclass
class FeatureGaussians:
    """One block of features: ``f -> (f - center) @ whiten`` makes the shared class covariance
    the identity; the distance is the squared distance to the nearest class mean there."""

    center: np.ndarray       # (D,)
    whiten: np.ndarray       # (D, k): PCA components @ Cholesky factor of the precision
    class_means: np.ndarray  # (classes, k), whitened
    scale: float             # this block's 99th percentile on clean validation: distances are in its units

    @classmethod
    def fit(cls, features: np.ndarray, labels: np.ndarray) -> "FeatureGaussians":
        from sklearn.covariance import LedoitWolf
        from sklearn.decomposition import PCA

        features = np.asarray(features, dtype=np.float64)  # float32 loses the small directions of wide-ranged features
        pca = PCA(min(MAX_DIMS, *features.shape), random_state=0).fit(features)
        # Directions along which the films do not vary at all (a channel int8 rounds to a constant,
        # say) carry no distance: without them the covariance stays invertible.
        varying = pca.explained_variance_ > 1e-9 * max(pca.explained_variance_.max(initial=0.0), 1e-30)
        components = pca.components_[varying]
        reduced = (features - pca.mean_) @ components.T
        if not varying.any():
            return cls(pca.mean_, np.zeros((features.shape[1], 1)), np.zeros((len(np.unique(labels)), 1)), 1.0)
        means = np.stack([reduced[labels == c].mean(axis=0) for c in np.unique(labels)])
        precision = LedoitWolf().fit(reduced - means[np.searchsorted(np.unique(labels), labels)]).precision_
        factor = _square_root(precision)  # precision = L L^T, so d^2 = |(z - mu) L|^2
        return cls(pca.mean_, components.T @ factor, means @ factor, 1.0)

    def whitened(self, features: np.ndarray) -> np.ndarray:
        return (features - self.center) @ self.whiten

    def distances(self, features: np.ndarray) -> np.ndarray:
        whitened = self.whitened(features)
        return ((whitened[:, None, :] - self.class_means[None]) ** 2).sum(axis=-1).min(axis=1) / self.scale


@dataclass
class LinearHeads:
    """Logistic heads on the gate's whitened features (standardisation folded in): P(not a frontal
    chest film), P(an adult's film), and which kind of image (softmax over KINDS)."""

    refuse: tuple[np.ndarray, float]
    adult: tuple[np.ndarray, float]
    kind: tuple[np.ndarray, np.ndarray]  # (len(KINDS), d), (len(KINDS),)

    def probabilities(self, inputs: np.ndarray) -> dict[str, np.ndarray]:
        def sigmoid(weights_bias):
            return 0.5 * (1 + np.tanh(0.5 * (inputs @ weights_bias[0] + weights_bias[1])))  # no overflow

        logits = inputs @ self.kind[0].T + self.kind[1]
        kinds = np.exp(logits - logits.max(axis=1, keepdims=True))
        return {"not_frontal_chest": sigmoid(self.refuse), "adult": sigmoid(self.adult),
                "kind": kinds / kinds.sum(axis=1, keepdims=True)}

    def tensors(self) -> dict[str, np.ndarray]:
        return {"head.refuse.weight": self.refuse[0], "head.refuse.bias": np.array([self.refuse[1]]),
                "head.adult.weight": self.adult[0], "head.adult.bias": np.array([self.adult[1]]),
                "head.kind.weight": self.kind[0], "head.kind.bias": self.kind[1]}

    @classmethod
    def from_tensors(cls, t: dict[str, np.ndarray]) -> "LinearHeads":
        return cls((t["head.refuse.weight"], float(t["head.refuse.bias"][0])),
                   (t["head.adult.weight"], float(t["head.adult.bias"][0])), (t["head.kind.weight"], t["head.kind.bias"]))


@dataclass
class OodGate:
    layers: list[str]
    widths: list[int]                 # channels per layer
    parts: list[FeatureGaussians]     # one per block: each layer's means, then (halves) all halves gaps
    cutoff: float                     # on the distance: above it an image is refused whatever the heads say
    halves: bool = True               # the features carry the halves gaps (version 2)
    heads: LinearHeads | None = None  # version 2, fitted with real out-of-scope images
    cuts: dict[str, float] = field(default_factory=dict)  # on the heads: "refuse", "adult", "kind" (to name it)
    pass_share: float = PASS_SHARE    # share of clean validation inside the distance cut-off
    budgets: dict = field(default_factory=dict)  # what the cuts may refuse / caution of each validation split

    @property
    def feature_width(self) -> int:
        return sum(self.widths) * (2 if self.halves else 1)

    @property
    def blocks(self) -> list[int]:
        return self.widths + ([sum(self.widths)] if self.halves else [])

    @classmethod
    def fit(cls, layers: list[str], widths: list[int], train: tuple[np.ndarray, np.ndarray],
            validation: np.ndarray, halves: bool = True, pass_share: float = PASS_SHARE) -> "OodGate":
        """Gaussians from training features and labels; each block's scale at 99% of clean
        validation, and the distance cut-off where ``pass_share`` of clean validation passes."""
        gate = cls(list(layers), list(widths), [], 1.0, halves)
        gate.parts = [FeatureGaussians.fit(block, train[1]) for block in _split(train[0], gate.blocks)]
        for part, block in zip(gate.parts, _split(validation, gate.blocks)):
            part.scale = max(float(np.quantile(part.distances(block), PASS_SHARE)), 1e-12)
        gate.cutoff = float(np.quantile(gate.scores(validation), pass_share, method="inverted_cdf"))
        gate.pass_share = pass_share
        return gate

    def scores(self, features: np.ndarray) -> np.ndarray:
        """Distance per image to the training films: the largest block's, in units of its scale."""
        features = np.asarray(features, dtype=np.float64)
        return np.max([part.distances(block) for part, block in zip(self.parts, _split(features, self.blocks))], axis=0)

    def head_inputs(self, features: np.ndarray) -> np.ndarray:
        """What the heads read: every block's whitened coordinates and the log distance."""
        features = np.asarray(features, dtype=np.float64)
        whitened = [part.whitened(block) for part, block in zip(self.parts, _split(features, self.blocks))]
        return np.concatenate([*whitened, np.log(np.maximum(self.scores(features), 1e-12))[:, None]], axis=1)

    def verdicts(self, features: np.ndarray) -> list[Verdict]:
        distances = self.scores(features)
        if self.heads is None:
            return [Verdict("refuse", "unlike", {"distance": float(d)}) if d > self.cutoff
                    else Verdict("answer", None, {"distance": float(d)}) for d in distances]
        p = self.heads.probabilities(self.head_inputs(features))
        found = []
        for i, distance in enumerate(distances):
            scores = {"distance": float(distance), "not_frontal_chest": float(p["not_frontal_chest"][i]),
                      "adult": float(p["adult"][i])}
            adult = p["adult"][i] > self.cuts["adult"]
            if p["not_frontal_chest"][i] > self.cuts["refuse"]:  # named only where the kind head is sure
                sure = p["kind"][i].max() >= self.cuts.get("kind", 0.0)
                found.append(Verdict("refuse", KINDS[int(p["kind"][i].argmax())] if sure else "not_frontal_chest", scores))
            elif distance > self.cutoff:  # a frontal chest film to the refusal head, far from the children's films
                found.append(Verdict("refuse", "adult" if adult else "unlike", scores))
            elif adult:
                found.append(Verdict("caution", "adult", scores))
            else:
                found.append(Verdict("answer", None, scores))
        return found

    def to_config(self) -> dict:
        return {"file": GATE_FILE, "version": 2 if self.heads else 1, "method": "mahalanobis" + ("+heads" if self.heads else ""),
                "layers": self.layers, "widths": self.widths, "halves": self.halves, "cutoff": self.cutoff,
                "cuts": self.cuts, "kinds": list(KINDS), "max_colourfulness": MAX_COLOURFULNESS,
                "min_grey_spread": MIN_GREY_SPREAD, "pass_share": self.pass_share,
                **({"budgets": self.budgets} if self.budgets else {})}

    def save(self, folder: Path, name: str = GATE_FILE) -> None:
        from safetensors.numpy import save_file

        tensors = {}
        for block, part in zip(self._block_names(), self.parts):
            tensors |= {f"{block}.center": part.center, f"{block}.whiten": part.whiten,
                        f"{block}.class_means": part.class_means, f"{block}.scale": np.array([part.scale])}
        tensors |= self.heads.tensors() if self.heads else {}
        path = folder / name
        save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}, str(path))
        path.chmod(0o644)  # safetensors writes 0600; a Space or a colleague's account must read it

    @classmethod
    def load(cls, path: Path, config: dict) -> "OodGate":
        from safetensors.numpy import load_file

        tensors = {k: v.astype(np.float64) for k, v in load_file(str(path)).items()}
        gate = cls(list(config["layers"]), list(config["widths"]), [], float(config["cutoff"]),
                   bool(config.get("halves", False)), cuts=dict(config.get("cuts", {})),
                   pass_share=float(config.get("pass_share", PASS_SHARE)), budgets=dict(config.get("budgets", {})))
        gate.parts = [FeatureGaussians(tensors[f"{b}.center"], tensors[f"{b}.whiten"], tensors[f"{b}.class_means"],
                                       float(tensors[f"{b}.scale"][0])) for b in gate._block_names()]
        gate.heads = LinearHeads.from_tensors(tensors) if "head.refuse.weight" in tensors else None
        return gate

    def _block_names(self) -> list[str]:
        return self.layers + (["halves"] if self.halves else [])


def _square_root(precision: np.ndarray) -> np.ndarray:
    """L with precision = L L^T: the Cholesky factor, or, where rounding left the precision not quite
    positive definite (VGG16's features, without batch norm, span many orders of magnitude), the
    eigenvectors scaled by the square roots of the eigenvalues, floored."""
    try:
        return np.linalg.cholesky(precision)
    except np.linalg.LinAlgError:
        values, vectors = np.linalg.eigh((precision + precision.T) / 2)
        return vectors * np.sqrt(np.clip(values, max(values.max(), 1e-300) * 1e-12, None))


def _split(features: np.ndarray, widths: list[int]) -> list[np.ndarray]:
    return np.split(features, np.cumsum(widths)[:-1], axis=1)
