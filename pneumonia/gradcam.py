"""Heat maps of which regions raised the PNEUMONIA score (LayerCAM over three stages, or Grad-CAM), for any preset."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import nn

from pneumonia.labels import LABEL_NAMES, POSITIVE_LABEL


# Which maps the heat map combines, and how (docs/heat-map.md: chosen on validation by the share
# of the map in the central chest, and by eye). LayerCAM (Jiang et al., 2021, as in the grad-cam
# library's LayerCAM) weighs each position by its own positive gradient, which keeps the earlier,
# finer stages meaningful; Grad-CAM (Selvaraju et al., 2017) weighs each channel by its mean gradient.
METHOD = "layercam"
STAGES = (-3, -2, -1)  # feature stages in timm's feature_info: -1 is the last, coarsest map
DESCRIPTION = "LayerCAM over the last three feature stages"


def stage_layers(model: nn.Module, stages: tuple[int, ...] = STAGES) -> list[nn.Module]:
    """The modules of the feature stages timm (or our cnn) declares in ``feature_info`` (as many as it has)."""
    info = model.feature_info
    return [model.get_submodule(info[i]["module"]) for i in dict.fromkeys(max(i, -len(info)) for i in stages)]


def grad_cam(model: nn.Module, pixels: torch.Tensor, label: str = POSITIVE_LABEL, method: str = METHOD,
             stages: tuple[int, ...] = STAGES) -> tuple[torch.Tensor, np.ndarray]:
    """One forward pass over a preprocessed batch (N, 3, H, W): the logits (N, classes) and a
    heat map of ``label``'s score per image (N, H, W) in [0, 1] at the input's resolution: each
    stage's map, scaled to [0, 1], averaged, scaled again (the grad-cam library's aggregation)."""
    layers = stage_layers(model, stages)
    captured: list[torch.Tensor] = [None] * len(layers)

    def keep(index):
        return lambda module, inputs, output: captured.__setitem__(index, output)

    handles = [layer.register_forward_hook(keep(i)) for i, layer in enumerate(layers)]
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            logits = model(pixels.detach().requires_grad_(True))  # a graph even when the weights are frozen
            # In eval mode the images don't interact, so the sum's gradient is each image's own.
            score = logits[:, LABEL_NAMES.index(label)].sum()
            # autograd.grad, not backward(): the weights' .grad stay as they were
            gradients = torch.autograd.grad(score, captured)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    maps = [_stage_map(maps.float(), grads.float(), method, pixels.shape[-2:]) for maps, grads in zip(captured, gradients)]
    cams = _scaled(torch.stack(maps).mean(dim=0))
    # Under mixed precision (bf16 autocast on a GPU) the logits are bf16, which numpy has no type for.
    return logits.detach().float(), cams.detach().cpu().numpy()


def _stage_map(maps: torch.Tensor, gradients: torch.Tensor, method: str, size) -> torch.Tensor:
    if method == "layercam":
        weighted = torch.relu(gradients) * maps
    elif method == "gradcam":
        weighted = gradients.mean(dim=(2, 3), keepdim=True) * maps  # one weight per channel
    else:
        raise ValueError(f"unknown heat map method {method!r}: layercam or gradcam")
    cams = _scaled(torch.relu(weighted.sum(dim=1)))  # scaled, then resized: as the grad-cam library does
    return nn.functional.interpolate(cams[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]


def _scaled(cams: torch.Tensor) -> torch.Tensor:
    """Each map to [0, 1] (min to 0, peak to 1); an all-zero map stays zero."""
    cams = cams - cams.amin(dim=(1, 2), keepdim=True)
    return cams / (cams.amax(dim=(1, 2), keepdim=True) + 1e-7)


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
