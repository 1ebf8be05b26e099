"""Load a trained model folder (local or ``hf-hub:``) and turn images into probabilities."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from pneumonia import backends
from pneumonia.answering import PNEUMONIA, UNCERTAIN, Cutoffs, levels_from_config
from pneumonia.labels import LABEL_NAMES, POSITIVE_LABEL, UsageError
from pneumonia.ood import GATE_FILE, REASONS, OodGate, Verdict, image_verdict
from pneumonia.pixels import data_config_from, preprocess
from pneumonia.training_transform import XrayPreprocessing


def calibrated_probabilities(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Calibrated class probabilities: softmax of temperature-scaled logits, in float64. The one
    definition: training, the app, the evaluation and the card all use it."""
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    exp = np.exp(scaled - scaled.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)


UNCERTAIN_REASON = "P(PNEUMONIA) lies between the model's two answer cut-offs: it needs a radiologist's read"


@dataclass
class Reading:
    """What the model makes of one image: its calibrated probabilities and one of four outcomes:
    "answer"; "caution" (``kind`` "adult": answered, with a caution); "uncertain" (P(PNEUMONIA)
    between the cut-offs of ``level``: no decision, it needs a radiologist's read; ``kind`` is still
    "adult" for an adult's film); or "refuse" (the out-of-distribution gate's: ``kind`` says what it
    looks like, see ``pneumonia.ood.REASONS``; the probabilities then mean nothing). ``decision``
    is the answered side (None when uncertain or refused); ``level`` the answered accuracy whose
    cut-offs decided (None for folders without levels). ``scores`` are the gate's numbers behind
    the outcome, for the log and the API."""

    probabilities: dict[str, float]
    outcome: str = "answer"
    kind: str | None = None
    scores: dict[str, float] = field(default_factory=dict)
    decision: str | None = None
    level: float | None = None

    @property
    def refused(self) -> bool:
        return self.outcome == "refuse"

    @property
    def uncertain(self) -> bool:
        return self.outcome == "uncertain"

    @property
    def adult(self) -> bool:
        """The gate took it for an adult's film and answered it with a caution (or held it as uncertain)."""
        return self.kind == "adult" and not self.refused

    @property
    def reason(self) -> str | None:
        """Why it was refused or held back, in plain words; None when it was answered."""
        if self.refused:
            return REASONS[self.kind]
        return UNCERTAIN_REASON if self.uncertain else None


@dataclass
class Classifier:
    """A model folder ready to read films. The ONNX backends run on NumPy and ONNX Runtime alone;
    the PyTorch model is loaded when the pytorch backend, Grad-CAM or ``.model`` asks for it."""

    source: str          # local-dir:PATH or hf-hub:USER/REPO
    label_names: tuple[str, ...]
    threshold: float     # on calibrated P(PNEUMONIA), chosen on validation (the metrics' operating point)
    temperature: float   # fitted on validation
    config: dict         # the folder's config.json
    metrics: dict        # the folder's metrics.json ({} when absent)
    data_config: dict    # resize and normalisation (timm's data config, from config.json)
    preprocessing: XrayPreprocessing
    levels: dict[float | None, Cutoffs] = field(default_factory=dict)  # answer cut-offs by level (answering.py)
    level: float | None = None  # the default level; None for folders without levels
    backend: str = "pytorch"                        # where read's logits come from
    onnx_logits: backends.OnnxLogits | None = None  # ONNX Runtime, when backend is onnx-*
    gate: OodGate | None = None  # the out-of-distribution gate; None for folders fitted without one
    _model: object = field(default=None, repr=False)
    _tapped: object = field(default=None, repr=False)

    def __post_init__(self):
        if self.onnx_logits and self.gate and self.onnx_logits.feature_width != self.gate.feature_width:
            self.onnx_logits.has_features = False  # exported before this gate: its features come from PyTorch

    @property
    def model(self):
        """The timm model (torch.nn.Module), loaded on first use."""
        if self._model is None:
            try:
                from pneumonia.torch_model import load_model
            except ImportError as err:
                raise UsageError(f"the pytorch backend and the heat map need PyTorch and timm ({err}): "
                                 'pip install "pneumonia-xray[torch]", or read with backend="onnx" '
                                 '(pip install "pneumonia-xray[onnx]")') from err
            self._model = load_model(self.source)
        return self._model

    @property
    def tapped(self):
        """The model with hooks that leave the gate's features of every forward pass; None without a gate."""
        if self._tapped is None and self.gate:
            from pneumonia.torch_model import WithGateFeatures

            self._tapped = WithGateFeatures(self.model, self.gate.layers, self.gate.halves)
        return self._tapped

    def pixel_array(self, images: Sequence[Image.Image]) -> np.ndarray:
        """The model's input batch (N, 3, H, W), float32: ``pneumonia.pixels.preprocess`` of each image."""
        return np.stack([self._preprocess(image) for image in images])

    def _preprocess(self, image: Image.Image) -> np.ndarray:
        return preprocess(image, self.data_config, self.preprocessing.intensity, self.preprocessing.crop_borders)

    @property
    def transform(self) -> Callable:
        """Image -> its input as a torch tensor (3, H, W), for PyTorch data loaders (picklable)."""
        return partial(_as_tensor, data_config=self.data_config, intensity=self.preprocessing.intensity,
                       crop=self.preprocessing.crop_borders)

    def pixels(self, images: Sequence[Image.Image]):
        """``pixel_array`` as a torch tensor, for the PyTorch model and Grad-CAM."""
        import torch

        return torch.from_numpy(self.pixel_array(images))

    def run(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Logits, and the gate's features when there is a gate, from the chosen backend."""
        if self.onnx_logits:
            logits, features = self.onnx_logits.run(pixels)
            if features is None and self.gate:  # an ONNX file exported before the gate existed
                features = self._torch_logits().run(pixels)[1]
            return logits, features
        return self._torch_logits().run(pixels)

    def _torch_logits(self):
        from pneumonia.torch_model import TorchLogits

        return TorchLogits(self.model, self.tapped)

    def forward(self, pixels):
        """``run`` for torch tensors: (logits, features or None) as tensors."""
        import torch

        logits, features = self.run(pixels.numpy())
        return torch.from_numpy(logits), None if features is None else torch.from_numpy(features)

    def predict_proba(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Calibrated probabilities (N, classes), ungated: see ``read`` for the gate's verdict."""
        return calibrated_probabilities(self.run(self.pixel_array(images))[0], self.temperature)

    def read(self, images: Sequence[Image.Image], level: float | None = None) -> list[Reading]:
        """Probabilities, the out-of-distribution gate's verdict and the answer at ``level`` (the
        folder's default when None; see ``cutoffs``) per image, from one forward pass."""
        cutoffs = self.cutoffs(level)
        logits, features = self.run(self.pixel_array(images))
        return self._readings(images, calibrated_probabilities(logits, self.temperature), features, cutoffs)

    def cutoffs(self, level: float | None = None) -> Cutoffs:
        """The answer cut-offs at ``level`` of answered accuracy; the default level's when None."""
        if level is None:
            return self.levels[self.level]
        if level not in self.levels:
            offered = ", ".join(f"{known:g}" for known in self.levels if known is not None)
            raise UsageError(f"answer level {level!r}: this model answers at "
                             + (f"{offered}; pass one of those, or none for its default {self.level:g}" if offered
                                else "one level only (its folder predates levels); pass none"))
        return self.levels[level]

    def _readings(self, images, probs: np.ndarray, features: np.ndarray | None, cutoffs: Cutoffs) -> list[Reading]:
        if self.gate is None:
            verdicts = [Verdict()] * len(probs)
        else:
            gated = self.gate.verdicts(np.asarray(features, dtype=np.float64))
            verdicts = [image_verdict(image) or verdict for image, verdict in zip(images, gated)]
        sides = cutoffs.sides(probs[:, self.label_names.index(POSITIVE_LABEL)])
        return [self._reading(self._by_label(p), verdict, side, cutoffs.level)
                for p, verdict, side in zip(probs, verdicts, sides)]

    def _reading(self, probabilities: dict[str, float], verdict: Verdict, side: int, level: float | None) -> Reading:
        if verdict.outcome == "refuse":
            return Reading(probabilities, "refuse", verdict.kind, verdict.scores, None, level)
        if side == UNCERTAIN:
            return Reading(probabilities, "uncertain", verdict.kind, verdict.scores, None, level)
        decision = POSITIVE_LABEL if side == PNEUMONIA else self._negative_label
        return Reading(probabilities, verdict.outcome, verdict.kind, verdict.scores, decision, level)

    def probabilities(self, image: Image.Image) -> dict[str, float]:
        """Calibrated probability per label of one image, ungated and undecided: ``read`` gives the
        gate's verdict and the answer."""
        return self._by_label(self.predict_proba([image])[0])

    def explain(self, images: Sequence[Image.Image], level: float | None = None) -> tuple[list[Reading], np.ndarray]:
        """Readings and a Grad-CAM map (N, H, W) per image, from one forward and one backward
        pass of the PyTorch model (whatever the backend). It hooks the model: callers sharing
        it serialise their calls. Needs torch and timm (``pip install "pneumonia-xray[torch]"``)."""
        model, tapped = self.model, self.tapped  # loads torch (or says what to install); hooks on before the pass
        from pneumonia.gradcam import grad_cam

        logits, cams = grad_cam(model, self.pixels(images))
        features = tapped.last_features().detach().numpy() if tapped else None
        probs = calibrated_probabilities(logits.detach().numpy(), self.temperature)
        return self._readings(images, probs, features, self.cutoffs(level)), cams

    def _by_label(self, probs: np.ndarray) -> dict[str, float]:
        return {name: float(p) for name, p in zip(self.label_names, probs)}

    @property
    def _negative_label(self) -> str:
        return next(name for name in self.label_names if name != POSITIVE_LABEL)


def _as_tensor(image: Image.Image, **settings):
    import torch

    return torch.from_numpy(preprocess(image, **settings))


def model_file(source: str, name: str) -> Path | None:
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
    path = model_file(source, name)
    return json.loads(path.read_text()) if path else None


def _onnx_backend(source: str, backend: str) -> tuple[str, Path | None]:
    """The backend to use and its ONNX file: the best available one for ``auto``."""
    for candidate in backends.candidates(backend):
        path = model_file(source, backends.ONNX_FILES[candidate])
        if path:
            return candidate, path
    if backend in backends.ONNX_FILES or backend == "onnx":
        wanted = " or ".join(backends.ONNX_FILES[name] for name in backends.candidates(backend))
        raise UsageError(f"{source} has no {wanted}: export it with "
                         f"`python -m train.export FOLDER`, or use the pytorch backend")
    return "pytorch", None


def load_classifier(source: str, backend: str = "pytorch") -> Classifier:
    """A model folder written by training (local path, ``local-dir:`` or ``hf-hub:``), ready to
    predict. ``backend``: pytorch, onnx-int8, onnx-fp16, onnx-fp32, onnx (int8, else fp16, else fp32),
    or auto (the same ONNX order, else PyTorch). The ONNX backends need onnxruntime, not torch."""
    if not source.startswith("hf-hub:"):
        source = f"local-dir:{source.removeprefix('local-dir:')}"
    config = _read_json(source, "config.json")
    if config is None:
        raise UsageError(f"{source}: no config.json there; give a trained model folder or an hf-hub:USER/REPO id")
    chosen, onnx_file = _onnx_backend(source, backend)
    levels, default_level = levels_from_config(config)
    classifier = Classifier(
        source=source,
        label_names=tuple(config.get("label_names") or LABEL_NAMES),
        threshold=float(config.get("threshold", 0.5)),
        temperature=float(config.get("temperature", 1.0)),
        levels=levels,
        level=default_level,
        config=config,
        metrics=_read_json(source, "metrics.json") or {},
        data_config=data_config_from(config),
        preprocessing=XrayPreprocessing.from_config(config),
        backend=chosen,
        onnx_logits=backends.OnnxLogits(onnx_file) if onnx_file else None,
        gate=_gate(source, config, chosen),
    )
    if chosen == "pytorch":
        classifier.model  # noqa: B018  (load it now: a broken folder fails here, not at the first film)
    return classifier


def gate_settings(config: dict, backend: str) -> dict | None:
    """``config.json``'s gate settings for ``backend``: its own calibration where the folder has one
    (int8 ONNX does), else the folder's; None for a folder trained before gates existed."""
    if "ood" not in config:
        return None
    return config["ood"].get("backends", {}).get(backend, config["ood"])


def _gate(source: str, config: dict, backend: str) -> OodGate | None:
    """The folder's out-of-distribution gate, calibrated on ``backend``'s own features where the
    folder has such a calibration (int8 ONNX does); None for a folder trained before gates existed."""
    settings = gate_settings(config, backend)
    if settings is None:
        return None
    path = model_file(source, settings.get("file", GATE_FILE))
    if path is None:
        raise UsageError(f"{source}: config.json has an out-of-distribution gate but {settings.get('file', GATE_FILE)} "
                         "is missing; copy it beside config.json, or fit it again with `python -m train.gate FOLDER`")
    return OodGate.load(path, settings)
