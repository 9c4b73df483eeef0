"""A simple FPN-style head (Lin et al. 2017), the convolutional contrast to SegFormer's all-MLP head.

Each encoder map is projected to ``E`` channels by a lateral 1x1 conv; from the deepest map down,
the running map is upsampled (nearest, to the next map's size) and added to the next lateral, so
the finest level (stride 4) gathers every deeper level top-down. A 3x3 conv with batch norm and
ReLU smooths it, and a 1x1 conv predicts (after dropout). Unlike SegFormer's head, deep features
reach the output only through repeated addition at growing resolution, and a 3x3 conv mixes
neighbours at the end.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FPNHead"]


class FPNHead(nn.Module):
    """``[maps [B, C_i, h_i, w_i]]`` (finest first) -> ``[B, out_channels, h_0, w_0]``."""

    output_stride = 4  # predicts at the first map's resolution (upsampled to the input)

    def __init__(
        self, in_channels: Sequence[int], embed_dim: int = 256, out_channels: int = 1, dropout=0.1
    ) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, embed_dim, 1) for c in in_channels)
        self.smooth = nn.Sequential(
            nn.Conv2d(embed_dim, embed_dim, 3, padding=1, bias=False),
            nn.BatchNorm2d(embed_dim),
            nn.ReLU(inplace=True),
        )
        self.dropout = nn.Dropout2d(dropout)
        self.predict = nn.Conv2d(embed_dim, out_channels, 1)

    def forward(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        x = self.lateral[-1](maps[-1])  # [B, E, h_n, w_n]
        for lateral, m in zip(self.lateral[-2::-1], maps[-2::-1]):
            x = lateral(m) + F.interpolate(x, size=m.shape[-2:], mode="nearest")  # [B, E, h, w]
        return self.predict(self.dropout(self.smooth(x)))  # [B, out, h_0, w_0]
