"""A plain ViT as a dense encoder: one token map, resampled into four scales (ViTDet / DPT style).

A ViT has no stages: every block sees the same ``h x w`` token grid (``h = H / p`` for patch
``p``). For a dense decoder that wants maps at strides 4, 8, 16 and 32, the outputs of four blocks
(``stage_idx``, by default the ends of the four quarters of the depth, as DPT's "reassemble") are
layer-normed, put back on the grid and resampled to stride ``4 * 2^i``: a 1x1 conv to the level's
width, then a transposed conv (up by ``p / s``), nothing, or 3x3 convs of stride 2 (down). Widths
double per level up to ``embed_dim`` (``C / 8, C / 4, C / 2, C``: 96 ... 768 for ViT-B, DPT's),
so Swin-Unet's decoder, which halves the width per level up, fits too.

**Any size.** Images are padded at the bottom and right to a multiple of the patch; every token
still holds real pixels, so no key needs masking. The learned position embedding is planned for
``img_size`` and resized bicubically to other grids. Each output map is cropped to
``ceil(H / s)`` x ``ceil(W / s)``, the size a strided conv stack would give, so decoders line
maps up as with the hierarchical encoders.

Blocks are the dense line's map blocks (:class:`~attnkit.models.dense.encoders.swin.SwinBlock`)
with full self-attention by default, or any ``mechanism`` of
:data:`attnkit.attention.mixers.MECHANISMS`, and an MLP or Mix-FFN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from attnkit.models.dense.encoders.swin import SwinBlock

__all__ = ["VIT_VARIANTS", "ViTEncoder", "vit_encoder"]

VIT_VARIANTS = {
    "tiny": {"embed_dim": 192, "depth": 12, "num_heads": 3},
    "small": {"embed_dim": 384, "depth": 12, "num_heads": 6},
    "base": {"embed_dim": 768, "depth": 12, "num_heads": 12},
}
"""ViT-Ti / S / B (patch 16 by default)."""

STRIDES = (4, 8, 16, 32)


def resample(dim: int, out: int, factor: float) -> nn.Module:
    """A map of ``dim`` channels -> ``out`` channels, ``factor`` times finer (2, 4, ...) or
    coarser (1/2, 1/4, ...): a 1x1 conv, then a transposed conv or stride-2 3x3 convs."""
    layers: list[nn.Module] = [nn.Conv2d(dim, out, 1)]
    if factor > 1:
        up = int(factor)
        layers.append(nn.ConvTranspose2d(out, out, up, stride=up))
    else:
        for _ in range(round(math.log2(1 / factor))):
            layers.append(nn.Conv2d(out, out, 3, stride=2, padding=1))
    return nn.Sequential(*layers)


class ViTEncoder(nn.Module):
    """``forward_features(images [B, C_in, H, W]) -> 4 maps [B, C_i, ceil(H / s_i), ...]``.

    Args:
        img_size: the size the position embedding is planned for.
        patch_size: a power of two from 4 to 32.
        embed_dim, depth, num_heads: the transformer; ``mlp_ratio`` its MLP width.
        stage_idx: the four blocks (0-based) whose outputs become the maps, shallowest first;
            default the last block of each quarter of the depth.
        mechanism: ``native`` (full self-attention) or another of ``MECHANISMS``; ``window``
            its side for the partition mechanisms; ``ffn``: ``native`` / ``mlp`` or ``mix_ffn``.
    """

    def __init__(
        self,
        img_size: Sequence[int] = (64, 64),
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 192,
        depth: int = 12,
        num_heads: int = 3,
        mlp_ratio: float = 4.0,
        stage_idx: Sequence[int] | None = None,
        drop_path_rate: float = 0.1,
        normalizer: str = "softmax",
        normalizer_kw: dict | None = None,
        mechanism: str = "native",
        ffn: str = "native",
        window: int = 7,
    ) -> None:
        super().__init__()
        if patch_size not in (4, 8, 16, 32):
            raise ValueError(f"patch_size must be 4, 8, 16 or 32, got {patch_size}")
        if embed_dim % 8:
            raise ValueError(
                f"embed_dim must be a multiple of 8 (level widths C/8..C), got {embed_dim}"
            )
        if stage_idx is None:
            stage_idx = [depth * (i + 1) // 4 - 1 for i in range(4)]
        stage_idx = [int(i) for i in stage_idx]
        if (
            len(stage_idx) != 4
            or sorted(set(stage_idx)) != stage_idx
            or not (stage_idx[0] >= 0 and stage_idx[-1] < depth)
        ):
            raise ValueError(
                f"stage_idx must be 4 increasing block indices in 0..{depth - 1}, got {stage_idx}"
            )
        self.patch_size, self.stage_idx = patch_size, stage_idx
        self.plan = tuple(-(-int(s) // patch_size) for s in img_size)  # the planned token grid
        self.patch_embed = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, *self.plan, embed_dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        mechanism = "full" if mechanism == "native" else mechanism
        ffn = "mlp" if ffn == "native" else ffn
        win = (window, window)
        self.blocks = nn.ModuleList(
            SwinBlock(
                embed_dim,
                num_heads,
                win,
                (0, 0),
                mlp_ratio,
                drop_path_rate * i / max(depth - 1, 1),
                normalizer,
                normalizer_kw,
                mechanism,
                ffn,
                sr_ratio=2,
            )
            for i in range(stage_idx[-1] + 1)  # blocks after the last tapped one are not needed
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.channels = [embed_dim // 2 ** (3 - i) for i in range(4)]
        head_dim = embed_dim // num_heads
        self.num_heads = [max(1, c // head_dim) for c in self.channels]
        self.depths = [2, 2, 2, 2]  # what a mirroring decoder (Swin-Unet) builds per level
        self.resample = nn.ModuleList(
            resample(embed_dim, c, patch_size / s) for c, s in zip(self.channels, STRIDES)
        )
        self.apply(_init_linear)

    def position(self, h: int, w: int) -> torch.Tensor:
        """The position embedding ``[1, h, w, C]`` for an ``h x w`` token grid."""
        if (h, w) == self.plan:
            return self.pos_embed
        pos = self.pos_embed.permute(0, 3, 1, 2)  # [1, C, h0, w0]
        pos = F.interpolate(pos, size=(h, w), mode="bicubic", align_corners=False)
        return pos.permute(0, 2, 3, 1)  # [1, h, w, C]

    def forward_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        H, W = images.shape[-2:]
        p = self.patch_size
        images = F.pad(images, (0, -W % p, 0, -H % p))  # [B, C_in, p h, p w]
        x = self.patch_embed(images).permute(0, 2, 3, 1)  # [B, h, w, C]
        x = x + self.position(*x.shape[1:3])
        taps = []
        for i, block in enumerate(self.blocks):
            x = block(x)  # [B, h, w, C]
            if i in self.stage_idx:
                taps.append(self.norm(x).permute(0, 3, 1, 2))  # [B, C, h, w]
        maps = []
        for tap, layer, s in zip(taps, self.resample, STRIDES):
            m = layer(tap)  # [B, C_i, h p / s, w p / s] (rounded up when coarser)
            maps.append(m[..., : -(-H // s), : -(-W // s)])
        return maps


def _init_linear(module: nn.Module) -> None:
    """Truncated normal (std 0.02) for linear layers and zero biases, as timm's ViT."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def vit_encoder(variant: str = "tiny", **kwargs) -> ViTEncoder:
    """The encoder of a named variant; ``kwargs`` override (``img_size``, ``depth``, ...)."""
    if variant not in VIT_VARIANTS:
        raise ValueError(f"unknown ViT variant {variant!r}; available: {', '.join(VIT_VARIANTS)}")
    return ViTEncoder(**{**VIT_VARIANTS[variant], **kwargs})
