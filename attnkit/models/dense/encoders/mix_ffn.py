"""MiT's Mix-FFN (SegFormer): an MLP with a depthwise 3x3 conv between its linear layers, which
gives the tokens their position (MiT has no position encoding)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MixFFN"]


class MixFFN(nn.Module):
    """Linear, depthwise 3x3 conv over the token grid, GELU, linear: ``[B, N, C] -> [B, N, C]``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        x = self.fc1(x)  # [B, N, hidden]
        B, N, C = x.shape
        x = self.dwconv(x.transpose(1, 2).reshape(B, C, *hw)).flatten(2).transpose(1, 2)
        return self.fc2(self.act(x))  # [B, N, C]
