"""One read of a run's films and of the scope images, through every model that needs them.

What follows training needs the same images several times: the gate's features on PyTorch (to
fit the gate) and on int8 ONNX (int8's own gate calibration), and the probabilities of PyTorch,
fp32 and int8 ONNX (their parity). Here each image is decoded, resized and augmented once, and
each batch goes through every runner that asked for its set. A scope image is read once for all
its augmented draws.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Collection

import datasets
import numpy as np
import torch
from accelerate.utils import set_seed
from torchvision import transforms as T

from pneumonia.training_transform import XrayPreprocessing, transform_steps
from train import data
from train.augment import Augment

SPLITS = ("train", "validation", "shifted_validation", "test", "shifted_train")
# What a runner may ask for: a split, every draw of the scope images, or their clean draw only.
SETS = (*SPLITS, "scope", "scope_clean")
# pixels (N, C, H, W) float32 -> (logits, gate features), as NumPy
Runner = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass
class Outputs:
    """One runner's outputs on the readable images of one set (one draw of the scope images)."""

    logits: np.ndarray
    features: np.ndarray
    labels: np.ndarray
    odd: np.ndarray    # refused by the gate's image checks (colour, blank)
    index: np.ndarray  # row in the set


class Draws:
    """An image under several transforms that share their fixed first steps (mode, crop, resize):
    decoded and resized once, then stacked (draws, C, H, W)."""

    def __init__(self, fixed: list[Callable], rests: list[list[Callable]]):
        self.fixed, self.rests = T.Compose(fixed), [T.Compose(rest) for rest in rests]

    def __call__(self, image):
        resized = self.fixed(image)
        return torch.stack([rest(resized) for rest in self.rests])


def loaders(splits: datasets.DatasetDict, scope_rows: list[dict] | None, data_config: dict,
            preprocessing: XrayPreprocessing, augment: Augment, draws: int, batch_size: int, num_workers: int,
            shift_seed: int) -> dict[str, torch.utils.data.DataLoader]:
    """Ordered loaders of ``SPLITS`` (train under the run's augmentation, the eval splits with the
    image checks, the training films under the shift perturbations) and of the scope images (clean,
    then ``draws`` augmented draws)."""
    found = data.make_loaders(splits, data_config, preprocessing, augment, batch_size, "none", num_workers,
                              shift_seed, check_images=True, shuffle_train=False)
    if scope_rows is not None:
        input_size = tuple(data_config["input_size"])
        fixed, clean = transform_steps(data_config, preprocessing)
        _, augmented = transform_steps(data_config, preprocessing, augment=augment)
        images = data.XrayDataset(scope_rows, Draws(fixed, [clean] + [augmented] * draws), (1 + draws, *input_size))
        found["scope"] = torch.utils.data.DataLoader(images, batch_size=batch_size, num_workers=num_workers)
    return found


def sweep(runners: dict[str, tuple[Runner, Collection[str]]], loaders: dict[str, torch.utils.data.DataLoader],
          seed: int) -> dict[str, dict[str, Outputs | list[Outputs]]]:
    """{runner: {set: Outputs}} (for "scope": a list, one per draw) for the sets each runner asks
    for; every loader that some runner needs is read once, seeded so that the augmented draws
    are the same on every call."""
    set_seed(seed)
    found = {name: {} for name in runners}
    for set_name, loader in loaders.items():
        wanted = {name: sets for name, (_, sets) in runners.items()
                  if set_name in sets or (set_name == "scope" and "scope_clean" in sets)}
        if not wanted:
            continue
        parts = {name: [] for name in wanted}
        for batch in data.logged_batches(loader):
            readable = batch["readable"].numpy()
            if not readable.any():  # ONNX Runtime takes no empty batch
                continue
            pixels = batch["pixel_values"].numpy()[readable]
            kept = [batch[key].numpy()[readable] for key in ("labels", "odd", "index")]
            for name, sets in wanted.items():
                draws = [pixels] if set_name != "scope" else [
                    pixels[:, d] for d in range(pixels.shape[1] if "scope" in sets else 1)]
                parts[name].append([(*runners[name][0](np.ascontiguousarray(p)), *kept) for p in draws])
        for name, batches in parts.items():
            per_draw = [Outputs(*(np.concatenate(column) for column in zip(*(b[d] for b in batches))))
                        for d in range(len(batches[0]))] if batches else [_nothing()]
            if set_name != "scope":
                found[name][set_name] = per_draw[0]
                continue
            found[name]["scope_clean"] = per_draw[0]
            if "scope" in runners[name][1]:
                found[name]["scope"] = per_draw
    return found


def _nothing() -> Outputs:
    return Outputs(np.zeros((0, 2), np.float32), np.zeros((0, 0), np.float32), *(np.zeros(0, int) for _ in range(3)))


def torch_runner(tapped: torch.nn.Module) -> Runner:
    """A ``pneumonia.torch_model.WithGateFeatures`` model as a runner, on its own device."""
    device = next(tapped.parameters()).device

    @torch.inference_mode()
    def run(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, features = tapped(torch.from_numpy(pixels).to(device))
        return logits.float().cpu().numpy(), features.float().cpu().numpy()

    return run


@torch.no_grad()
def gate_features(forward, loader) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(gate features, labels, refused by the image checks, row index) of the readable images of ``loader``."""
    parts = []
    for batch in data.logged_batches(loader):
        readable = batch["readable"]
        _, features = forward(batch["pixel_values"])
        parts.append(tuple(column[readable].numpy() for column in
                           (features.cpu().float(), batch["labels"], batch["odd"], batch["index"])))
    return tuple(np.concatenate(column) for column in zip(*parts))
