"""SegFormer's all-MLP decoder head (Xie et al. 2021).

Each encoder stage's map is projected to ``E`` channels by a linear layer (a 1x1 conv here),
upsampled bilinearly to the first stage's resolution (1/4 of the input), and the maps are
concatenated deepest first (SegFormer's ``_c4, _c3, _c2, _c1``), fused by a 1x1 conv without bias,
batch norm and ReLU, and mapped to the output channels by a 1x1 conv (after dropout).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SegFormerHead"]


class SegFormerHead(nn.Module):
    """``[maps [B, C_i, h_i, w_i]]`` -> ``[B, out_channels, h_0, w_0]``."""

    output_stride = 4  # predicts at the first stage's resolution (upsampled to the input)

    def __init__(
        self, in_channels: Sequence[int], embed_dim: int = 256, out_channels: int = 1, dropout=0.1
    ) -> None:
        super().__init__()
        self.linear = nn.ModuleList(nn.Conv2d(c, embed_dim, 1) for c in in_channels)
        self.fuse = nn.Sequential(
            nn.Conv2d(len(in_channels) * embed_dim, embed_dim, 1, bias=False),
            nn.BatchNorm2d(embed_dim),
            nn.ReLU(inplace=True),
        )
        self.dropout = nn.Dropout2d(dropout)
        self.predict = nn.Conv2d(embed_dim, out_channels, 1)

    def forward(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        size = maps[0].shape[-2:]
        projected = [
            F.interpolate(proj(m), size=size, mode="bilinear", align_corners=False)
            for proj, m in zip(self.linear, maps)
        ]  # each [B, E, h_0, w_0]
        x = self.fuse(torch.cat(projected[::-1], dim=1))  # [B, E, h_0, w_0]
        return self.predict(self.dropout(x))  # [B, out, h_0, w_0]
