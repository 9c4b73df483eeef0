"""``tiny_cnn``: a small VGG-style backbone for the synthetic data, cheap on a CPU.

ResNet and RegNet stems reduce the image by 4 in their first two layers, which erases the thin
outlines and the corners that tell the small synthetic shapes apart; trained from scratch they
classify them slowly. This body keeps full resolution in its first convolution: four stages of
two 3x3 convolutions (batch norm, ReLU), the second with stride 2, so the output is
``[B, 128, H/16, W/16]``. About 0.3 M parameters and 30 MMAC per 192x256 image; pre-trained on
crops of the shapes (:mod:`attnkit.train.pretrain_backbone`) it tells them apart with about 90 %
accuracy after two minutes on a CPU, where a ResNet-18 or RegNetX body reaches 30-60 %.

Built from torchvision's ``Conv2dNormActivation``; sub-module names ``stages.<i>.<j>``.
"""

from __future__ import annotations

from torch import nn
from torchvision.ops.misc import Conv2dNormActivation

TINY_CNN_WIDTHS = (16, 32, 64, 128)
"""Channels of the four stages; the output has the last."""


class TinyCNN(nn.Module):
    """Images ``[B, 3, H, W]`` -> features ``[B, C, ceil(H/16), ceil(W/16)]`` (C = last width)."""

    def __init__(self, widths: tuple[int, ...] = TINY_CNN_WIDTHS) -> None:
        super().__init__()
        stages, channels = [], 3
        for width in widths:
            stages.append(
                nn.Sequential(
                    Conv2dNormActivation(channels, width, kernel_size=3),
                    Conv2dNormActivation(width, width, kernel_size=3, stride=2),
                )
            )
            channels = width
        self.stages = nn.Sequential(*stages)
        self.num_channels = channels

    def forward(self, images):
        return self.stages(images)
