"""Convolutional baselines to contrast attention models with, trained by the same loop.

- ``small``: three conv-BN-ReLU stages (width w, 2w, 4w) with max-pooling, global average
  pooling and a linear classifier: a quick CPU baseline (w = 32: 0.29M parameters).
- ``resnet18``: torchvision's ResNet-18 with the CIFAR stem (3x3 conv, stride 1, no max-pool),
  the baseline of Cordonnier et al. 2020 (11.2M parameters at 10 classes). ``resnet_width``
  scales its stage widths (``w, 2w, 4w, 8w``; 64 is torchvision's): a width-16 ResNet-18 has
  0.70M parameters, small enough to ship trained. Module names stay torchvision's, so a
  torchvision ResNet-18 state dict loads into the width-64 model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torchvision.models import resnet18
from torchvision.models.resnet import BasicBlock

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
    resnet_width: PositiveInt = 64  # resnet18 only: channels of the first stage (64: torchvision)


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


def _resnet_stage(inplanes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    """torchvision's ``_make_layer`` for BasicBlocks at any width."""
    downsample = None
    if stride != 1 or inplanes != planes:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
        )
    layers = [BasicBlock(inplanes, planes, stride, downsample)]
    layers += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def resnet18_cifar(num_classes: int = 10, in_chans: int = 3, width: int = 64) -> nn.Module:
    """ResNet-18 with a 3x3 stride-1 stem and no max-pool (32x32 inputs keep 4x4 at the end);
    ``width`` is the first stage's channels (torchvision's model at 64)."""
    model = resnet18(num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_chans, width, 3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    if width != 64:
        model.bn1 = nn.BatchNorm2d(width)
        widths = [width, 2 * width, 4 * width, 8 * width]
        inplanes = width
        for i, planes in enumerate(widths):
            setattr(model, f"layer{i + 1}", _resnet_stage(inplanes, planes, 2, 1 if i == 0 else 2))
            inplanes = planes
        model.fc = nn.Linear(inplanes, num_classes)
        for m in model.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
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
        return _ImagesOnly(
            resnet18_cifar(model_cfg.num_classes, model_cfg.in_chans, model_cfg.resnet_width)
        )
    return SmallCNN(model_cfg.num_classes, model_cfg.in_chans, model_cfg.width)
