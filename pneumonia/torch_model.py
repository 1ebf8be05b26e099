"""The PyTorch side of a model folder: the timm model, its logits and the gate's features.

Only the pytorch backend, Grad-CAM and training import this; the ONNX backends run without torch.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


def load_model(source: str) -> nn.Module:
    """The timm model of a ``local-dir:`` or ``hf-hub:`` folder, in eval mode."""
    import timm

    import pneumonia.cnn  # noqa: F401  (registers pneumonia_cnn with timm)

    return timm.create_model(source, pretrained=True).eval()


class TorchLogits:
    """Logits and the gate's features (NumPy) of a preprocessed batch, from the PyTorch model."""

    def __init__(self, model: nn.Module, tapped: "WithGateFeatures | None"):
        self.model, self.tapped = model, tapped

    @torch.inference_mode()
    def run(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        batch = torch.from_numpy(pixels)
        logits, features = self.tapped(batch) if self.tapped else (self.model(batch), None)
        return logits.float().numpy(), None if features is None else features.numpy()


def gate_layers(model: nn.Module, version: int = 2) -> tuple[list[str], list[int]]:
    """The feature maps the gate reads and their channels: every stage of the model's
    ``feature_info`` but the stem (version 1: its middle stage and its last)."""
    stages = model.feature_info
    if version == 1:
        chosen = [stages[i] for i in sorted({len(stages) // 2, len(stages) - 1})]
    else:
        chosen = stages[1:] if len(stages) > 3 else stages
    return [info["module"] for info in chosen], [info["num_chs"] for info in chosen]


class WithGateFeatures(nn.Module):
    """The model, returning (logits, gate features): per channel of each gate layer, the mean of
    its feature map, then (``halves``) the gap between the means of the map's left and right
    halves. Means, not spreads: int8 ONNX Runtime moves a spread several times more than a mean.
    The forward hooks stay on the model, so any forward pass (Grad-CAM's too) leaves the
    features of its batch in ``last_features()``."""

    def __init__(self, model: nn.Module, layers: list[str], halves: bool = True):
        super().__init__()
        self.model, self.layers, self.halves = model, list(layers), halves
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
        maps = [self._maps[name].float() for name in self.layers]
        features = [m.mean(dim=(2, 3)) for m in maps]
        if self.halves:
            features += [_halves_gap(m) for m in maps]
        return torch.cat(features, dim=1)


def _halves_gap(maps: torch.Tensor) -> torch.Tensor:
    half = max(maps.shape[-1] // 2, 1)  # an odd middle column belongs to neither half
    return (maps[..., :half].mean(dim=(2, 3)) - maps[..., -half:].mean(dim=(2, 3))).abs()


def _store_output(store: dict, name: str):
    def hook(module, inputs, output):
        store[name] = output
    return hook
