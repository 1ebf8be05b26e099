"""Grad-CAM (Selvaraju et al., 2017): which regions raised the PNEUMONIA score, for any preset."""
from __future__ import annotations

import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image
from torch import nn

from pneumonia.presets import LABEL_NAMES, POSITIVE_LABEL


def target_layer(model: nn.Module) -> nn.Module:
    """The deepest feature map timm (or our cnn) declares in ``feature_info``."""
    return model.get_submodule(model.feature_info[-1]["module"])


def grad_cam(model: nn.Module, pixels: torch.Tensor, label: str = POSITIVE_LABEL) -> np.ndarray:
    """A (H, W) map in [0, 1] at the input's resolution for one preprocessed image (3, H, W)."""
    captured: dict[str, torch.Tensor] = {}
    handle = target_layer(model).register_forward_hook(lambda module, inputs, output: captured.update(maps=output))
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            batch = pixels.unsqueeze(0).requires_grad_(True)  # a graph even when the weights are frozen
            score = model(batch)[0, LABEL_NAMES.index(label)]
            # autograd.grad, not backward(): the weights' .grad stay as they were
            (gradients,) = torch.autograd.grad(score, captured["maps"])
    finally:
        handle.remove()
        model.train(was_training)
    weights = gradients.mean(dim=(2, 3), keepdim=True)  # one weight per channel
    cam = torch.relu((weights * captured["maps"]).sum(dim=1, keepdim=True))
    cam = nn.functional.interpolate(cam, size=pixels.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    cam = cam.detach().numpy()
    return cam / cam.max() if cam.max() > 0 else cam


def overlay(image: Image.Image, cam: np.ndarray, alpha: float = 0.45, max_side: int = 512) -> Image.Image:
    """The heat map in colour over the X-ray (at most ``max_side`` pixels a side), as RGB."""
    scale = min(1.0, max_side / max(image.size))
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    base = np.asarray(image.convert("L").resize(size, Image.BILINEAR), dtype=np.float32) / 255.0
    cam = np.asarray(Image.fromarray(cam.astype(np.float32), mode="F").resize(size, Image.BILINEAR))
    heat = colormaps["jet"](np.clip(cam, 0, 1))[..., :3]
    blended = (1 - alpha) * base[..., None] + alpha * heat
    return Image.fromarray(np.uint8(np.clip(blended, 0, 1) * 255), "RGB")
