"""Swin-Unet's decoder (Cao et al. 2022): Swin blocks with patch expanding and skip connections.

From the bottleneck (the last encoder stage, layer-normed) each level up: patch expanding (a
linear layer doubling the channels, then each token's channels spread over a 2x2 patch: the
``(p1 p2 c)`` order of the original's ``rearrange``, not PixelShuffle's ``(c p1 p2)``), the skip of
the encoder stage at that resolution concatenated and projected back by a linear layer, and as
many Swin blocks as the encoder stage had (the decoder mirrors the encoder). A final x4 expansion
(a linear layer to 16 C, spread over 4x4) and a 1x1 conv without bias give the prediction at the
input resolution. The skips are the encoder stages' outputs (``forward_features``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from attnkit.models.dense.encoders.swin import SwinBlock

__all__ = ["PatchExpand", "SwinUnetDecoder", "spread_channels"]


def spread_channels(x: torch.Tensor, p: int) -> torch.Tensor:
    """``[B, h, w, p * p * c]`` -> ``[B, p h, p w, c]``, channels read as ``(p1 p2 c)``: channel
    ``(i * p + j) * c + k`` of a token goes to row ``i``, column ``j`` of its patch."""
    B, h, w, C = x.shape
    c = C // (p * p)
    x = x.reshape(B, h, w, p, p, c).permute(0, 1, 3, 2, 4, 5)  # [B, h, p1, w, p2, c]
    return x.reshape(B, h * p, w * p, c)


class PatchExpand(nn.Module):
    """``[B, h, w, C]`` -> ``[B, s h, s w, C * s^2 / scale_channels]``: a linear layer without
    bias, :func:`spread_channels`, LayerNorm. ``scale=2``: to ``C / 2`` channels (Swin-Unet's
    ``PatchExpand``); ``scale=4``: to ``C`` channels (its ``FinalPatchExpand_X4``)."""

    def __init__(self, dim: int, scale: int = 2) -> None:
        super().__init__()
        self.scale = scale
        out = dim // 2 if scale == 2 else dim
        self.expand = nn.Linear(dim, out * scale * scale, bias=False)
        self.norm = nn.LayerNorm(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(spread_channels(self.expand(x), self.scale))


class SwinUnetDecoder(nn.Module):
    """``[maps [B, C_i, h_i, w_i]]`` (strides 4, 8, ...; the last layer-normed) ->
    ``[B, out_channels, 4 h_0, 4 w_0]``.

    Args:
        channels: the encoder stages' widths (each the double of the one before).
        depths, num_heads: Swin blocks and heads per level, as the encoder's stages.
        window: window side; ``plan_hw``: the first stage's map size the windows are planned for
            (no shift where a level's map is no larger than the window, as in the encoder).
    """

    output_stride = 1  # predicts at the input resolution (cropped to the input)

    def __init__(
        self,
        channels: Sequence[int],
        depths: Sequence[int],
        num_heads: Sequence[int],
        out_channels: int = 1,
        window: int = 7,
        plan_hw: Sequence[int] = (56, 56),
        mlp_ratio: float = 4.0,
        normalizer: str = "softmax",
        normalizer_kw: dict | None = None,
    ) -> None:
        super().__init__()
        n = len(channels)
        self.expand = nn.ModuleList(PatchExpand(channels[k]) for k in range(n - 1, 0, -1))
        self.merge = nn.ModuleList()
        self.levels = nn.ModuleList()
        for k in range(n - 2, -1, -1):  # the levels from the deepest skip up
            dim = channels[k]
            res = [-(-int(s) // 2**k) for s in plan_hw]
            win = tuple(min(window, r) for r in res)
            shift = tuple(0 if r <= window else window // 2 for r in res)
            self.merge.append(nn.Linear(2 * dim, dim))
            self.levels.append(
                nn.Sequential(
                    *(
                        SwinBlock(
                            dim,
                            num_heads[k],
                            win,
                            shift if j % 2 else (0, 0),
                            mlp_ratio,
                            0.0,
                            normalizer,
                            normalizer_kw,
                        )
                        for j in range(depths[k])
                    )
                )
            )
        self.norm_up = nn.LayerNorm(channels[0])
        self.up = PatchExpand(channels[0], scale=4)
        self.output = nn.Conv2d(channels[0], out_channels, 1, bias=False)

    def forward(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        skips = [m.permute(0, 2, 3, 1) for m in maps]  # [B, h_i, w_i, C_i] each
        x = skips[-1]
        for expand, merge, level, skip in zip(self.expand, self.merge, self.levels, skips[-2::-1]):
            x = expand(x)[:, : skip.shape[1], : skip.shape[2]]  # [B, h_k, w_k, C_k]
            x = level(merge(torch.cat([x, skip], dim=-1)))  # [B, h_k, w_k, C_k]
        x = self.up(self.norm_up(x))  # [B, 4 h_0, 4 w_0, C_0]
        return self.output(x.permute(0, 3, 1, 2))  # [B, out, 4 h_0, 4 w_0]
