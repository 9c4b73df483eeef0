"""DETR's fixed 2-D sine position encoding, normalised to each image's unpadded extent."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["PositionEmbeddingSine"]


class PositionEmbeddingSine(nn.Module):
    """Sine/cosine encoding of the row and column of each feature-map cell (Carion et al. 2020).

    Coordinates are counted with a cumulative sum over the unpadded cells, so padding at the
    bottom and right never shifts them, and (``normalize=True``) scaled to ``(0, scale]`` by the
    image's own unpadded height and width: an image gets the same encoding alone and in a batch
    with larger images. The first ``num_pos_feats`` channels encode the row (y), the last
    ``num_pos_feats`` the column (x), as official DETR, whose checkpoints rely on this layout.

    Args:
        num_pos_feats: channels per axis; DETR uses ``hidden_dim // 2``.
        temperature: base of the geometric frequency progression.
        normalize: scale coordinates by the unpadded extent (DETR: True).
        scale: the range of the normalised coordinates (DETR: 2 pi).
    """

    def __init__(
        self,
        num_pos_feats: int = 128,
        temperature: float = 10000.0,
        normalize: bool = True,
        scale: float = 2 * math.pi,
    ) -> None:
        super().__init__()
        if num_pos_feats % 2:
            raise ValueError(f"num_pos_feats must be even, got {num_pos_feats}")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = scale

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        """``mask [B, h, w]`` (True on padding) -> encoding ``[B, 2 * num_pos_feats, h, w]``."""
        not_mask = ~mask
        y = not_mask.cumsum(1, dtype=torch.float32)  # [B, h, w], 1-based row among valid rows
        x = not_mask.cumsum(2, dtype=torch.float32)  # [B, h, w]
        if self.normalize:
            eps = 1e-6
            y = y / (y[:, -1:, :] + eps) * self.scale  # last row holds the unpadded height
            x = x / (x[:, :, -1:] + eps) * self.scale
        i = torch.arange(self.num_pos_feats, dtype=torch.float32, device=mask.device)
        freq = self.temperature ** (2 * torch.div(i, 2, rounding_mode="floor") / self.num_pos_feats)
        pos_x = x[..., None] / freq  # [B, h, w, F]
        pos_y = y[..., None] / freq  # [B, h, w, F]
        # Even channels take the sine, odd ones the cosine, interleaved (sin0, cos1, sin2, ...).
        pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)  # [B, 2F, h, w]

    def extra_repr(self) -> str:
        return (
            f"num_pos_feats={self.num_pos_feats}, temperature={self.temperature}, "
            f"normalize={self.normalize}"
        )
