"""The Mix Transformer encoder of SegFormer (Xie et al. 2021), MiT-b0 ... b5.

Four stages, each an overlapping patch embedding (a 7x7 conv of stride 4, then 3x3 convs of
stride 2, each with padding and LayerNorm), blocks of spatial-reduction attention
(:class:`attnkit.attention.spatial_reduction.SpatialReductionAttention`) and Mix-FFN (linear,
depthwise 3x3 conv, GELU, linear; the conv gives the position information, so there is no
position encoding), and a LayerNorm. :meth:`MiTEncoder.forward_features` returns every stage's
map ``[B, C_i, H / 4 / 2^i, W / 4 / 2^i]``; any input size runs (the convolutions pad).

MiT is timm's ``PyramidVisionTransformerV2`` with MLP ratios 4 (PVTv2 uses 8, 8, 4, 4): module
names are timm's, so its state dicts load as they are (:func:`load_timm_mit`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from timm.layers import DropPath, Mlp
from torch import nn

from attnkit.attention.mixers import map_attention
from attnkit.attention.spatial_reduction import SpatialReductionAttention
from attnkit.models.dense.encoders.loading import load_checked
from attnkit.models.dense.encoders.mix_ffn import MixFFN
from attnkit.models.vit.timm_weights import read_state_dict

__all__ = ["MIT_VARIANTS", "MiTEncoder", "load_timm_mit", "mit_encoder"]

_HEADS, _SR = (1, 2, 5, 8), (8, 4, 2, 1)
MIT_VARIANTS = {
    "b0": {"embed_dims": (32, 64, 160, 256), "depths": (2, 2, 2, 2)},
    "b1": {"embed_dims": (64, 128, 320, 512), "depths": (2, 2, 2, 2)},
    "b2": {"embed_dims": (64, 128, 320, 512), "depths": (3, 4, 6, 3)},
    "b3": {"embed_dims": (64, 128, 320, 512), "depths": (3, 4, 18, 3)},
    "b4": {"embed_dims": (64, 128, 320, 512), "depths": (3, 8, 27, 3)},
    "b5": {"embed_dims": (64, 128, 320, 512), "depths": (3, 6, 40, 3)},
}
"""SegFormer's encoders; all have heads 1, 2, 5, 8 and reductions 8, 4, 2, 1."""


class OverlapPatchEmbed(nn.Module):
    """``[B, C_in, H, W]`` -> ``[B, ceil(H / s), ceil(W / s), C]``: a k x k conv of stride s with
    padding k // 2, then LayerNorm."""

    def __init__(self, in_chans: int, dim: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel, stride=stride, padding=kernel // 2)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))  # [B, h, w, C]


class MiTBlock(nn.Module):
    """Pre-norm spatial-reduction attention and Mix-FFN on tokens ``[B, N, C]`` of an ``(h, w)``
    grid, or another ``mechanism`` and ``ffn`` (``mlp``: a plain MLP)."""

    def __init__(
        self, dim, heads, sr, mlp_ratio, drop_path, normalizer, kw, mechanism="native", ffn="native"
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)  # SegFormer's (and timm's) block norms
        self.on_map = mechanism not in ("native", "spatial_reduction", "pooled_reduction")
        if self.on_map:
            self.attn = map_attention(mechanism, dim, heads, normalizer, kw, sr_ratio=sr)
        else:  # timm's PVTv2 names; pooled: PVTv2-Li's linear spatial reduction to 7 x 7 keys
            pool = 7 if mechanism == "pooled_reduction" else None
            self.attn = SpatialReductionAttention(dim, heads, sr, normalizer, kw, pool_size=pool)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mix = ffn in ("native", "mix_ffn")
        hidden = int(dim * mlp_ratio)
        self.mlp = MixFFN(dim, hidden) if self.mix else Mlp(dim, hidden)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        B, N, C = x.shape
        y = self.norm1(x)
        if self.on_map:
            y = self.attn(y.reshape(B, *hw, C)).reshape(B, N, C)
        else:
            y = self.attn(y, hw)
        x = x + self.drop_path1(y)  # [B, N, C]
        y = self.norm2(x)
        return x + self.drop_path2(self.mlp(y, hw) if self.mix else self.mlp(y))


class MiTStage(nn.Module):
    def __init__(self, in_dim: int, dim: int, blocks: list[MiTBlock], first: bool) -> None:
        super().__init__()
        self.downsample = None if first else OverlapPatchEmbed(in_dim, dim, 3, 2)
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, h, w, C_in]`` -> ``[B, C, h', w']``."""
        if self.downsample is not None:
            x = self.downsample(x.permute(0, 3, 1, 2))  # [B, h', w', C]
        B, h, w, C = x.shape
        x = x.reshape(B, h * w, C)
        for block in self.blocks:
            x = block(x, (h, w))
        return self.norm(x).reshape(B, h, w, C).permute(0, 3, 1, 2)  # [B, C, h, w]


class MiTEncoder(nn.Module):
    """MiT stages; ``forward_features(images) -> [stage maps [B, C_i, h_i, w_i]]``.

    ``mechanism``: ``native`` (spatial reduction) or another of
    :data:`attnkit.attention.mixers.MECHANISMS`; ``ffn``: ``native`` / ``mix_ffn`` or ``mlp``.
    """

    def __init__(
        self,
        in_chans: int = 3,
        embed_dims: Sequence[int] = (32, 64, 160, 256),
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = _HEADS,
        sr_ratios: Sequence[int] = _SR,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.1,
        normalizer: str = "softmax",
        normalizer_kw: dict | None = None,
        mechanism: str = "native",
        ffn: str = "native",
    ) -> None:
        super().__init__()
        self.patch_embed = OverlapPatchEmbed(in_chans, embed_dims[0], 7, 4)
        n = sum(depths)
        rates = [drop_path_rate * i / max(n - 1, 1) for i in range(n)]
        stages, start = [], 0
        for i, (dim, depth) in enumerate(zip(embed_dims, depths)):
            blocks = [
                MiTBlock(
                    dim,
                    num_heads[i],
                    sr_ratios[i],
                    mlp_ratio,
                    rates[start + j],
                    normalizer,
                    normalizer_kw,
                    mechanism,
                    ffn,
                )
                for j in range(depth)
            ]
            stages.append(MiTStage(embed_dims[i - 1] if i else dim, dim, blocks, first=i == 0))
            start += depth
        self.stages = nn.ModuleList(stages)
        self.channels = list(embed_dims)
        self.depths, self.num_heads = list(depths), list(num_heads)[: len(depths)]

    def forward_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = self.patch_embed(images)  # [B, H/4, W/4, C0]
        maps = []
        for stage in self.stages:
            m = stage(x)  # [B, C_i, h_i, w_i]
            maps.append(m)
            x = m.permute(0, 2, 3, 1)
        return maps


def mit_encoder(variant: str = "b0", **kwargs) -> MiTEncoder:
    """The encoder of a named variant; ``kwargs`` override (``normalizer``, ...)."""
    if variant not in MIT_VARIANTS:
        raise ValueError(f"unknown MiT variant {variant!r}; available: {', '.join(MIT_VARIANTS)}")
    return MiTEncoder(**{**MIT_VARIANTS[variant], **kwargs})


def load_timm_mit(encoder: MiTEncoder, source) -> list[str]:
    """Load a timm ``PyramidVisionTransformerV2`` state dict (MiT settings; dict or local file):
    the names are the same, the classifier head is ignored. Returns the encoder keys left at their
    initial values; a shape mismatch is a ``ValueError`` naming the key."""
    state = {k: v for k, v in read_state_dict(source).items() if not k.startswith("head.")}
    return load_checked(encoder, state, "timm PVTv2")
