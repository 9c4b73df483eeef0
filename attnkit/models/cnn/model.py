"""Convolutional baselines to contrast attention models with, trained by the same loop.

- ``small``: three conv-BN-ReLU stages (width w, 2w, 4w) with max-pooling, global average
  pooling and a linear classifier: a quick CPU baseline (w = 32: 0.29M parameters).
- ``resnet18``: torchvision's ResNet-18 with the CIFAR stem (3x3 conv, stride 1, no max-pool),
  the baseline of Cordonnier et al. 2020 (11.2M parameters at 10 classes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torchvision.models import resnet18

from attnkit.config.constraints import PositiveInt

__all__ = ["CNNConfig", "SmallCNN", "build_cnn", "resnet18_cifar"]


@dataclass
class CNNConfig:
    """A convolutional classifier (``model.name: cnn``)."""

    name: Literal["cnn"] = "cnn"
    arch: Literal["small", "resnet18"] = "small"
    num_classes: PositiveInt = 10
    in_chans: PositiveInt = 3
    width: PositiveInt = 32  # small only: channels of the first stage


def _stage(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """Three conv stages with 2x2 max-pooling between them, mean pooling, a linear head."""

    def __init__(self, num_classes: int = 10, in_chans: int = 3, width: int = 32):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            _stage(in_chans, w),
            nn.MaxPool2d(2),
            _stage(w, 2 * w),
            nn.MaxPool2d(2),
            _stage(2 * w, 4 * w),
        )
        self.head = nn.Linear(4 * w, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.features(images)  # [B, 4w, H/4, W/4]
        return self.head(x.mean(dim=(2, 3)))  # [B, num_classes]


def resnet18_cifar(num_classes: int = 10, in_chans: int = 3) -> nn.Module:
    """ResNet-18 with a 3x3 stride-1 stem and no max-pool (32x32 inputs keep 4x4 at the end)."""
    model = resnet18(num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_chans, 64, 3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


class _ImagesOnly(nn.Module):
    """Calls a torchvision classifier as ``model(images=...)`` (the family contract)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)  # [B, num_classes]


def build_cnn(model_cfg: CNNConfig) -> nn.Module:
    if model_cfg.arch == "resnet18":
        return _ImagesOnly(resnet18_cifar(model_cfg.num_classes, model_cfg.in_chans))
    return SmallCNN(model_cfg.num_classes, model_cfg.in_chans, model_cfg.width)
