"""The Swin Transformer encoder (Liu et al. 2021), identical to timm's ``swin_*_patch4_window7``.

Patch embedding (4x4 conv + LayerNorm), then stages of blocks that alternate window attention
(W-MSA) and shifted-window attention (SW-MSA, windows shifted by half a window, Swin's region
mask), each with a per-head relative position bias, pre-norm, an MLP and stochastic depth; a patch
merging layer (2x2 neighbours concatenated, LayerNorm, linear 4C -> 2C) starts every stage but the
first. :meth:`SwinEncoder.forward_features` returns each stage's map ``[B, C_i, H/4/2^i, W/4/2^i]``
(the last one after the final LayerNorm).

Any input size runs: the patch embedding pads to a multiple of the patch, patch merging pads odd
maps, and window attention pads to the window multiple and masks the padding out
(:class:`attnkit.attention.partition.PartitionAttention`; the padding comes before the shift, as in
Swin's detection code, where timm shifts first). As in timm, a stage whose map (at ``img_size``)
is no larger than the window attends over the whole map without shifting.

Module names are timm's (``patch_embed``, ``layers.i.downsample``, ``layers.i.blocks.j``,
``norm``) except the bias tables, which :func:`load_timm_swin` reshapes from timm's flat
``[(2W - 1)^2, H]`` (both index by query - key).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp
from torch import nn

from attnkit.attention.mixers import map_attention
from attnkit.attention.partition import PartitionAttention
from attnkit.models.dense.encoders.loading import load_checked
from attnkit.models.dense.encoders.mix_ffn import MixFFN
from attnkit.models.vit.timm_weights import read_state_dict

__all__ = ["SWIN_VARIANTS", "SwinEncoder", "load_timm_swin", "swin_encoder"]

SWIN_VARIANTS = {
    "tiny": {"embed_dim": 96, "depths": (2, 2, 6, 2), "num_heads": (3, 6, 12, 24)},
    "small": {"embed_dim": 96, "depths": (2, 2, 18, 2), "num_heads": (3, 6, 12, 24)},
    "base": {"embed_dim": 128, "depths": (2, 2, 18, 2), "num_heads": (4, 8, 16, 32)},
}
"""timm's ``swin_{tiny,small,base}_patch4_window7_224`` without their classifier."""


class PatchEmbed(nn.Module):
    """``[B, C_in, H, W]`` -> ``[B, H / p, W / p, C]``: a p x p conv of stride p, LayerNorm."""

    def __init__(self, in_chans: int, dim: int, patch: int) -> None:
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(in_chans, dim, patch, stride=patch)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch
        x = F.pad(x, (0, (-x.shape[-1]) % p, 0, (-x.shape[-2]) % p))
        return self.norm(self.proj(x).permute(0, 2, 3, 1))  # [B, H/p, W/p, C]


class PatchMerging(nn.Module):
    """``[B, h, w, C]`` -> ``[B, h/2, w/2, 2C]``: 2x2 neighbours concatenated in timm's order
    ((0, 0), (1, 0), (0, 1), (1, 1)), LayerNorm, a linear map without bias."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, h, w, C = x.shape
        x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        h, w = x.shape[1:3]
        x = x.reshape(B, h // 2, 2, w // 2, 2, C).permute(0, 1, 3, 4, 2, 5).flatten(3)
        return self.reduction(self.norm(x))  # [B, h/2, w/2, 2C]


class SwinBlock(nn.Module):
    """Pre-norm attention and FFN on ``[B, h, w, C]``: Swin's (shifted) window attention and MLP,
    or another ``mechanism`` (:func:`attnkit.attention.mixers.map_attention`) and ``ffn``
    (``mix_ffn``: MiT's Mix-FFN, a depthwise 3x3 conv between the linear layers)."""

    def __init__(
        self,
        dim,
        heads,
        window,
        shift,
        mlp_ratio,
        drop_path,
        normalizer,
        kw,
        mechanism: str = "window",
        ffn: str = "mlp",
        sr_ratio: int = 1,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        if mechanism == "window":
            self.attn = PartitionAttention(
                dim, dim // heads, "block", window, normalizer, kw, shift=shift
            )
        else:
            self.attn = map_attention(mechanism, dim, heads, normalizer, kw, window, None, sr_ratio)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mix = ffn == "mix_ffn"
        self.mlp = MixFFN(dim, hidden) if self.mix else Mlp(dim, hidden)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x)))  # [B, h, w, C]
        y = self.norm2(x)
        if self.mix:
            B, h, w, C = y.shape
            y = self.mlp(y.reshape(B, h * w, C), (h, w)).reshape(B, h, w, C)
        else:
            y = self.mlp(y)
        return x + self.drop_path2(y)


class SwinStage(nn.Module):
    def __init__(self, dim: int, blocks: list[SwinBlock], merge: bool) -> None:
        super().__init__()
        self.downsample = PatchMerging(dim // 2) if merge else nn.Identity()
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class SwinEncoder(nn.Module):
    """Swin stages; ``forward_features(images) -> [stage maps [B, C_i, h_i, w_i]]``.

    Args:
        img_size: ``(H, W)`` the windows are planned for (a stage no larger than the window
            attends over its whole map, unshifted, as timm builds it).
        embed_dim, depths, num_heads: the variant (:data:`SWIN_VARIANTS`).
        window: the window side (7); ``patch``: the patch side (4).
        normalizer, normalizer_kw: of every window attention (``get_normalizer``).
        mechanism: ``native`` (Swin's windows, every other block shifted) or a mechanism of
            :data:`attnkit.attention.mixers.MECHANISMS` in every block; ``ffn``: ``native`` /
            ``mlp`` (Swin's) or ``mix_ffn`` (MiT's).
    """

    def __init__(
        self,
        img_size: Sequence[int] = (224, 224),
        in_chans: int = 3,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window: int = 7,
        patch: int = 4,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.2,
        normalizer: str = "softmax",
        normalizer_kw: dict | None = None,
        mechanism: str = "native",
        ffn: str = "native",
    ) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch)
        ffn = "mlp" if ffn == "native" else ffn
        n = sum(depths)
        rates = [drop_path_rate * i / max(n - 1, 1) for i in range(n)]  # linear, as timm
        res = [-(-int(s) // patch) for s in img_size]
        stages, self.channels = [], []
        for i, (depth, heads) in enumerate(zip(depths, num_heads)):
            dim = embed_dim * 2**i
            if i:
                res = [-(-r // 2) for r in res]
            win = tuple(min(window, r) for r in res)  # timm: one window over a small map
            shift = tuple(0 if r <= window else window // 2 for r in res)
            blocks = [
                SwinBlock(
                    dim,
                    heads,
                    win,
                    shift if j % 2 and mechanism == "native" else (0, 0),  # "window": never
                    mlp_ratio,
                    rates[sum(depths[:i]) + j],
                    normalizer,
                    normalizer_kw,
                    "window" if mechanism == "native" else mechanism,
                    ffn,
                    sr_ratio=2 ** (len(depths) - 1 - i),  # MiT's 8, 4, 2, 1 over four stages
                )
                for j in range(depth)
            ]
            stages.append(SwinStage(dim, blocks, merge=i > 0))
            self.channels.append(dim)
        self.layers = nn.Sequential(*stages)
        self.norm = nn.LayerNorm(self.channels[-1])
        self.depths, self.num_heads = list(depths), list(num_heads)[: len(depths)]

    def forward_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Every stage's output ``[B, C_i, h_i, w_i]``, the last one layer-normed (timm's
        ``forward_intermediates(norm=True)``; Swin-Unet's bottleneck)."""
        x = self.patch_embed(images)  # [B, H/4, W/4, C]
        maps = []
        for i, stage in enumerate(self.layers):
            x = stage(x)  # [B, h_i, w_i, C_i]
            out = self.norm(x) if i == len(self.layers) - 1 else x
            maps.append(out.permute(0, 3, 1, 2))  # [B, C_i, h_i, w_i]
        return maps


def swin_encoder(variant: str = "tiny", **kwargs) -> SwinEncoder:
    """The encoder of a named variant; ``kwargs`` override (``img_size``, ``normalizer``, ...)."""
    if variant not in SWIN_VARIANTS:
        raise ValueError(f"unknown Swin variant {variant!r}; available: {', '.join(SWIN_VARIANTS)}")
    return SwinEncoder(**{**SWIN_VARIANTS[variant], **kwargs})


def load_timm_swin(encoder: SwinEncoder, source) -> list[str]:
    """Load a timm Swin state dict (dict or local file) into ``encoder``; the classifier head is
    ignored, the flat bias tables ``[(2W - 1)^2, H]`` become ``[H, 2W - 1, 2W - 1]``. Returns the
    encoder keys left at their initial values; a shape mismatch is a ``ValueError`` naming it."""
    state = read_state_dict(source)
    own = encoder.state_dict()
    mapped = {}
    for key, value in state.items():
        if key.startswith("head.") or key.endswith(("relative_position_index", "attn_mask")):
            continue
        if key.endswith("attn.relative_position_bias_table"):
            key = key.replace("relative_position_bias_table", "relative_bias.table")
            heads = value.shape[1]
            side = own[key].shape[-2:] if key in own else None
            value = value.t().reshape(heads, *(side or (-1,)))  # [H, 2W-1, 2W-1]
        mapped[key] = value
    return load_checked(encoder, mapped, "timm Swin")
