"""Grad-CAM (Selvaraju et al., 2017): which regions raised the PNEUMONIA score, for any preset."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import nn

from pneumonia.labels import LABEL_NAMES, POSITIVE_LABEL


def target_layer(model: nn.Module) -> nn.Module:
    """The deepest feature map timm (or our cnn) declares in ``feature_info``."""
    return model.get_submodule(model.feature_info[-1]["module"])


def grad_cam(model: nn.Module, pixels: torch.Tensor, label: str = POSITIVE_LABEL) -> tuple[torch.Tensor, np.ndarray]:
    """One forward pass over a preprocessed batch (N, 3, H, W): the logits (N, classes) and
    a Grad-CAM map per image (N, H, W) in [0, 1] at the input's resolution."""
    captured: dict[str, torch.Tensor] = {}
    handle = target_layer(model).register_forward_hook(lambda module, inputs, output: captured.update(maps=output))
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            logits = model(pixels.detach().requires_grad_(True))  # a graph even when the weights are frozen
            # In eval mode the images don't interact, so the sum's gradient is each image's own.
            score = logits[:, LABEL_NAMES.index(label)].sum()
            # autograd.grad, not backward(): the weights' .grad stay as they were
            (gradients,) = torch.autograd.grad(score, captured["maps"])
    finally:
        handle.remove()
        model.train(was_training)
    weights = gradients.mean(dim=(2, 3), keepdim=True)  # one weight per channel
    cams = torch.relu((weights * captured["maps"]).sum(dim=1, keepdim=True))
    cams = nn.functional.interpolate(cams, size=pixels.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peaks = cams.amax(dim=(1, 2), keepdim=True)
    cams = torch.where(peaks > 0, cams / peaks.clamp_min(1e-12), cams)
    # Under mixed precision (bf16 autocast on a GPU) the maps are bf16, which numpy has no type for.
    return logits.detach().float(), cams.detach().float().cpu().numpy()


def overlay(image: Image.Image, cam: np.ndarray, alpha: float = 0.45, max_side: int = 512) -> Image.Image:
    """The heat map in colour over the X-ray (at most ``max_side`` pixels a side), as RGB."""
    from matplotlib import colormaps  # only the app draws heat maps: a light install lacks it

    scale = min(1.0, max_side / max(image.size))
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    base = np.asarray(image.convert("L").resize(size, Image.BILINEAR), dtype=np.float32) / 255.0
    cam = np.asarray(Image.fromarray(cam.astype(np.float32), mode="F").resize(size, Image.BILINEAR))
    heat = colormaps["jet"](np.clip(cam, 0, 1))[..., :3]
    blended = (1 - alpha) * base[..., None] + alpha * heat
    return Image.fromarray(np.uint8(np.clip(blended, 0, 1) * 255), "RGB")


# The central chest region (x 20-80%, y 10-85% of the film): where the lungs are.
CHEST_BOX = (0.2, 0.1, 0.8, 0.85)


def central_share(cams: np.ndarray, box: tuple[float, float, float, float] = CHEST_BOX) -> np.ndarray:
    """Per map (N, H, W): the share of its mass inside ``box`` (left, top, right, bottom as
    fractions). A uniform map scores the box's area, 0.45; a map on the lungs scores more."""
    height, width = cams.shape[-2:]
    left, top, right, bottom = box
    inside = cams[:, round(top * height):round(bottom * height), round(left * width):round(right * width)]
    total = cams.sum(axis=(1, 2))
    return np.where(total > 0, inside.sum(axis=(1, 2)) / np.maximum(total, 1e-12), np.nan)
