"""Loss with class weights, AdamW with an optional frozen-backbone warm-up and per-layer LRs, LR schedule."""
from __future__ import annotations

import math

import datasets
import torch
from torch import nn

from timm.optim import param_groups_layer_decay

from pneumonia.presets import LABEL_NAMES, UsageError
from train.config import TrainConfig


def class_weights(train_rows: datasets.Dataset, balance: str) -> torch.Tensor | None:
    """n / (classes * n_c) per class for ``balance == "loss"``: each class weighs the same in total."""
    if balance != "loss":
        return None
    counts = torch.bincount(torch.tensor(train_rows["label"]), minlength=len(LABEL_NAMES)).float()
    return counts.sum() / (len(LABEL_NAMES) * counts.clamp_min(1))


class WeightedCrossEntropy(nn.Module):
    """Class-weighted mean cross-entropy over the readable images of a batch."""

    def __init__(self, weights: torch.Tensor | None, label_smoothing: float = 0.0):
        super().__init__()
        self.register_buffer("weights", weights if weights is not None else torch.ones(len(LABEL_NAMES)))
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, readable: torch.Tensor) -> torch.Tensor:
        weights = self.weights.to(logits.device)[labels] * readable.float()
        per_image = nn.functional.cross_entropy(
            logits.float(), labels, reduction="none", label_smoothing=self.label_smoothing
        )
        return (per_image * weights).sum() / weights.sum().clamp_min(1e-12)


def make_optimizer(model: nn.Module, config: TrainConfig, lr: float) -> torch.optim.Optimizer:
    """AdamW over parameter groups, each marked ``head`` (the classifier) or not (the backbone),
    so the scheduler can hold the backbone during a frozen warm-up.

    With ``layer_decay`` < 1, each of timm's layer groups (stem, blocks, head) gets the LR of
    the group above it times ``layer_decay``: layers near the input, whose ImageNet features
    are the most general, move the least. timm's grouping also exempts biases and norms from
    weight decay.
    """
    if not 0 < config.layer_decay <= 1:
        raise UsageError(f"--layer-decay {config.layer_decay}: give a factor in (0, 1]; 1 keeps one LR for every layer")
    head = {id(p) for p in model.get_classifier().parameters()}
    if config.layer_decay < 1:
        groups = param_groups_layer_decay(model, weight_decay=config.weight_decay, layer_decay=config.layer_decay)
    else:
        groups = [{"params": [p for p in model.parameters() if id(p) not in head]},
                  {"params": [p for p in model.parameters() if id(p) in head]}]
    for group in groups:
        in_head = {id(p) in head for p in group["params"]}
        if len(in_head) != 1:
            raise AssertionError("a parameter group mixes the classifier with the backbone")
        group |= {"head": in_head.pop(), "lr": lr * group.pop("lr_scale", 1.0)}
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, weight_decay=config.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int):
    """Linear warm-up then cosine decay; the backbone's LR is 0 during ``freeze_epochs``.

    Freezing through the LR (not ``requires_grad``) keeps every parameter in the graph,
    which DDP needs, and AdamW with LR 0 leaves a parameter exactly unchanged.
    """
    total = max(1, config.epochs * steps_per_epoch)
    warmup = round(config.warmup_ratio * total)
    frozen = config.freeze_epochs * steps_per_epoch

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    def backbone(step: int) -> float:
        return 0.0 if step < frozen else schedule(step)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, [schedule if g["head"] else backbone for g in optimizer.param_groups])


def train_mode(model: nn.Module, freeze_bn: bool) -> None:
    """``model.train()``, with batch norm kept in eval mode when ``freeze_bn``: weights whose batch
    norm was folded into the convolutions hold identity norms, and batch statistics would
    re-normalise every activation and undo the pretrained function (chance level after 2 epochs, as
    measured in the weights' README)."""
    model.train()
    if freeze_bn:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
