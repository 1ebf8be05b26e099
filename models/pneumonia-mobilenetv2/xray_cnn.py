"""The basic CNN preset as a timm model: 3 convolutions and 3 poolings, alternating.

Registered with timm so that it saves, loads (``local-dir:``/``hf-hub:``) and publishes
exactly like the pretrained backbones.
"""
from __future__ import annotations

import torch
from torch import nn
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model


class PneumoniaCNN(nn.Module):
    def __init__(
        self,
        num_classes: int = 2,
        in_chans: int = 3,
        widths: tuple[int, ...] = (32, 64, 128),
        hidden: int = 64,
        drop_rate: float = 0.3,
        global_pool: str = "avg",
    ):
        super().__init__()
        if len(widths) != 3:
            raise ValueError(f"widths must hold 3 channel counts, got {widths}")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.global_pool = global_pool
        blocks, prev = [], in_chans
        for width in widths:
            # BatchNorm keeps the from-scratch training stable at a high learning rate.
            blocks += [
                nn.Conv2d(prev, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            prev = width
        self.features = nn.Sequential(*blocks)
        # timm's description of where each block's activations are (Grad-CAM uses the last).
        self.feature_info = [
            {"num_chs": width, "reduction": 2**i, "module": f"features.{4 * i + 2}"} for i, width in enumerate(widths)
        ]
        self.num_features = self.head_hidden_size = prev
        self.pool = nn.AdaptiveAvgPool2d(1)  # size-agnostic, unlike the original Flatten
        self.pre_logits = nn.Sequential(
            nn.Flatten(), nn.Dropout(drop_rate), nn.Linear(prev, hidden), nn.ReLU(inplace=True)
        )
        self.hidden = hidden
        self.head = nn.Sequential(nn.Dropout(drop_rate), nn.Linear(hidden, num_classes))

    def get_classifier(self) -> nn.Module:
        return self.head[-1]

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head[-1] = nn.Linear(self.hidden, num_classes) if num_classes else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pre_logits(self.pool(x))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# timm's register_model reads this module-level table.
default_cfgs = generate_default_cfgs({"pneumonia_cnn": {
    "url": "",
    "num_classes": 2,
    "input_size": (3, 224, 224),
    "pool_size": None,
    "interpolation": "bilinear",
    # X-rays are grayscale copied to 3 channels: a neutral normalisation, not ImageNet's.
    "mean": (0.5, 0.5, 0.5),
    "std": (0.5, 0.5, 0.5),
    "crop_pct": 1.0,
    "crop_mode": "squash",
    "first_conv": "features.0",
    "classifier": "head.1",
    "license": "apache-2.0",
}})


@register_model
def pneumonia_cnn(pretrained: bool = False, **kwargs) -> PneumoniaCNN:
    return build_model_with_cfg(PneumoniaCNN, "pneumonia_cnn", pretrained, **kwargs)
