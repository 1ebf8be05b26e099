"""Load a trained model folder (local or ``hf-hub:``) and turn images into probabilities."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import timm
import torch
from PIL import Image
from torch import nn

from pneumonia import backends
from pneumonia.gradcam import grad_cam
from pneumonia.ood import GATE_FILE, REASONS, OodGate, Verdict, WithGateFeatures, image_verdict
from pneumonia.presets import LABEL_NAMES, POSITIVE_LABEL, UsageError
from pneumonia.preprocessing import XrayPreprocessing, build_transform, data_config_of


def probabilities(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Calibrated class probabilities: softmax of temperature-scaled logits."""
    return torch.softmax(logits.float() / temperature, dim=-1)


@dataclass
class Reading:
    """What the model makes of one image: its calibrated probabilities and the out-of-distribution
    gate's outcome: "answer", "caution" (``kind`` "adult": answered, with a caution) or "refuse"
    (``kind`` says what it looks like, see ``pneumonia.ood.REASONS``; the probabilities then mean
    nothing). ``scores`` are the gate's numbers behind the outcome, for the log and the API."""

    probabilities: dict[str, float]
    outcome: str = "answer"
    kind: str | None = None
    scores: dict[str, float] = field(default_factory=dict)

    @property
    def refused(self) -> bool:
        return self.outcome == "refuse"

    @property
    def reason(self) -> str | None:
        """Why it was refused, in plain words; None when it was answered."""
        return REASONS[self.kind] if self.refused else None


@dataclass
class Classifier:
    model: nn.Module
    transform: Callable[[Image.Image], torch.Tensor]
    label_names: tuple[str, ...]
    threshold: float     # on calibrated P(PNEUMONIA), chosen on validation
    temperature: float   # fitted on validation
    config: dict         # the folder's config.json
    metrics: dict        # the folder's metrics.json ({} when absent)
    backend: str = "pytorch"                                       # where predict's logits come from
    onnx_logits: backends.OnnxLogits | None = None  # ONNX Runtime, when backend is onnx-*
    gate: OodGate | None = None  # the out-of-distribution gate; None for folders fitted without one

    def __post_init__(self):
        # Hooks on the model give the gate its features from any forward pass, Grad-CAM's included.
        self.tapped = WithGateFeatures(self.model, self.gate.layers, self.gate.halves) if self.gate else None
        if self.onnx_logits and self.gate and self.onnx_logits.feature_width != self.gate.feature_width:
            self.onnx_logits.has_features = False  # exported before this gate: its features come from PyTorch

    def pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """The model's input batch (N, 3, H, W), preprocessed as in training's evaluation."""
        return torch.stack([self.transform(image) for image in images])

    @torch.inference_mode()
    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits, and the gate's features when there is a gate, from the chosen backend."""
        if self.onnx_logits:
            logits, features = self.onnx_logits.run(pixels)
            if features is None and self.tapped:  # an ONNX file exported before the gate existed
                features = self.tapped(pixels)[1]
            return logits, features
        return self.tapped(pixels) if self.tapped else (self.model(pixels), None)

    def predict_proba(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Calibrated probabilities (N, classes), ungated: see ``read`` for the gate's verdict."""
        return probabilities(self.forward(self.pixels(images))[0], self.temperature)

    def read(self, images: Sequence[Image.Image]) -> list[Reading]:
        """Probabilities and the out-of-distribution gate's verdict per image, from one forward pass."""
        logits, features = self.forward(self.pixels(images))
        return self._readings(images, probabilities(logits, self.temperature), features)

    def _readings(self, images, probs: torch.Tensor, features: torch.Tensor | None) -> list[Reading]:
        if self.gate is None:
            return [Reading(self._by_label(p)) for p in probs]
        verdicts = self.gate.verdicts(features.detach().cpu().numpy())
        return [_reading(self._by_label(p), image_verdict(image) or verdict)
                for image, p, verdict in zip(images, probs, verdicts)]

    def predict(self, image: Image.Image) -> dict[str, float]:
        return self._by_label(self.predict_proba([image])[0])

    def explain(self, images: Sequence[Image.Image]) -> tuple[list[Reading], np.ndarray]:
        """Readings and a Grad-CAM map (N, H, W) per image, from one forward and one backward
        pass of the PyTorch model (whatever the backend). It hooks the model: callers sharing
        it serialise their calls."""
        logits, cams = grad_cam(self.model, self.pixels(images))
        features = self.tapped.last_features() if self.tapped else None
        return self._readings(images, probabilities(logits, self.temperature), features), cams

    def _by_label(self, probs: torch.Tensor) -> dict[str, float]:
        return {name: float(p) for name, p in zip(self.label_names, probs)}

    def decide(self, probs: dict[str, float]) -> str:
        return POSITIVE_LABEL if probs[POSITIVE_LABEL] >= self.threshold else self._negative_label

    @property
    def _negative_label(self) -> str:
        return next(name for name in self.label_names if name != POSITIVE_LABEL)


def _reading(probabilities: dict[str, float], verdict: Verdict) -> Reading:
    return Reading(probabilities, verdict.outcome, verdict.kind, verdict.scores)


def _file(source: str, name: str) -> Path | None:
    """A file of a local model folder or an ``hf-hub:`` repo (downloaded); None when it has none."""
    if source.startswith("hf-hub:"):
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError

        try:
            return Path(hf_hub_download(source.removeprefix("hf-hub:"), name))
        except EntryNotFoundError:
            return None
    path = Path(source.removeprefix("local-dir:")) / name
    return path if path.is_file() else None


def _read_json(source: str, name: str) -> dict | None:
    path = _file(source, name)
    return json.loads(path.read_text()) if path else None


def _onnx_backend(source: str, backend: str) -> tuple[str, Path | None]:
    """The backend to use and its ONNX file: the best available one for ``auto``."""
    for candidate in backends.candidates(backend):
        path = _file(source, backends.ONNX_FILES[candidate])
        if path:
            return candidate, path
    if backend in backends.ONNX_FILES:
        raise UsageError(f"{source} has no {backends.ONNX_FILES[backend]}: export it with "
                         f"`python -m train.export_onnx FOLDER`, or use the pytorch backend")
    return "pytorch", None


def load_classifier(source: str, backend: str = "pytorch") -> Classifier:
    """A model folder written by training (local path, ``local-dir:`` or ``hf-hub:``), ready to
    predict. ``backend``: pytorch, onnx-int8, onnx-fp32, or auto (int8, else fp32 ONNX, else PyTorch)."""
    if not source.startswith("hf-hub:"):
        source = f"local-dir:{source.removeprefix('local-dir:')}"
    config = _read_json(source, "config.json")
    if config is None:
        raise UsageError(f"{source}: no config.json there; give a trained model folder or an hf-hub:USER/REPO id")
    model = timm.create_model(source, pretrained=True).eval()
    chosen, onnx_file = _onnx_backend(source, backend)
    gate = _gate(source, config, chosen)
    return Classifier(
        model=model,
        transform=build_transform(data_config_of(model), XrayPreprocessing.from_config(config)),
        label_names=tuple(config.get("label_names") or LABEL_NAMES),
        threshold=float(config.get("threshold", 0.5)),
        temperature=float(config.get("temperature", 1.0)),
        config=config,
        metrics=_read_json(source, "metrics.json") or {},
        backend=chosen,
        onnx_logits=backends.OnnxLogits(onnx_file) if onnx_file else None,
        gate=gate,
    )


def _gate(source: str, config: dict, backend: str) -> OodGate | None:
    """The folder's out-of-distribution gate, calibrated on ``backend``'s own features where the
    folder has such a calibration (int8 ONNX does); None for a folder trained before gates existed."""
    if "ood" not in config:
        return None
    settings = config["ood"].get("backends", {}).get(backend, config["ood"])
    path = _file(source, settings.get("file", GATE_FILE))
    if path is None:
        raise UsageError(f"{source}: config.json has an out-of-distribution gate but {settings.get('file', GATE_FILE)} "
                         "is missing; copy it beside config.json, or fit it again with `python -m train.fit_gate FOLDER`")
    return OodGate.load(path, settings)
