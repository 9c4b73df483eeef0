"""MaxViT (Tu et al. 2022) as a classifier and as a multi-scale backbone.

Architecture (the paper's, and timm's ``maxvit_*_tf`` port of the official weights):

- stem: 3x3 conv of stride 2, BN, GELU, 3x3 conv;
- stages, each halving the resolution: blocks of MBConv -> block attention + FFN -> grid
  attention + FFN, every part pre-norm with a residual and stochastic depth;
- head: global average pool, LayerNorm, Linear + tanh, Linear.

Module names mirror timm's (``stem``, ``stages.i.blocks.j.{conv,attn_block,attn_grid}``,
``head``), so :mod:`attnkit.models.maxvit.timm_weights` maps timm state dicts by name (and flips
the relative position tables, which timm indexes by key - query). Any input size runs: the
convolutions use TF ``SAME`` padding and attention pads its map to the partition multiple and
masks the padding (:mod:`attnkit.attention.partition`).
"""

from __future__ import annotations

import torch
from timm.layers import DropPath, Mlp
from torch import nn

from attnkit.attention.partition import PartitionAttention
from attnkit.models.maxvit.config import MaxViTConfig, PartitionNormalizerConfig
from attnkit.models.maxvit.mbconv import MBConv, Stem

__all__ = ["MaxViT", "MaxViTBlock", "PartitionTransformer", "build_maxvit", "drop_path_rates"]


def _normalizer_kw(choice: PartitionNormalizerConfig) -> dict:
    if choice.normalizer == "alpha_entmax":
        return {"alpha_init": choice.alpha_init}
    if choice.normalizer == "tvmax":
        return {"lam": choice.tvmax_lambda}
    return {}


class PartitionTransformer(nn.Module):
    """Pre-norm block or grid attention and FFN on a channels-last map ``[B, h, w, C]``."""

    def __init__(self, dim: int, kind: str, part, cfg: MaxViTConfig, drop_path: float) -> None:
        super().__init__()
        choice = getattr(cfg.attention, kind)
        self.norm1 = nn.LayerNorm(dim, eps=cfg.ln_eps)
        self.attn = PartitionAttention(
            dim,
            cfg.head_dim,
            kind,
            tuple(part),
            normalizer=choice.normalizer,
            normalizer_kw=_normalizer_kw(choice),
            attn_drop=cfg.attn_drop_rate,
            proj_drop=cfg.proj_drop_rate,
        )
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=cfg.ln_eps)
        self.mlp = Mlp(
            dim,
            int(dim * cfg.mlp_ratio),
            act_layer=lambda: nn.GELU(approximate="tanh"),
            drop=cfg.proj_drop_rate,
        )
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x), padding_mask))  # [B, h, w, C]
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class MaxViTBlock(nn.Module):
    """MBConv, then block attention, then grid attention: ``[B, C_in, h, w] -> [B, C, h/s, w/s]``."""

    def __init__(
        self, in_chs: int, out_chs: int, stride: int, cfg: MaxViTConfig, drop_path: float
    ) -> None:
        super().__init__()
        self.conv = MBConv(
            in_chs,
            out_chs,
            stride=stride,
            expand=cfg.mbconv_expand,
            se_ratio=cfg.se_ratio,
            drop_path=drop_path,
            bn_eps=cfg.bn_eps,
        )
        self.attn_block = PartitionTransformer(out_chs, "block", cfg.window, cfg, drop_path)
        self.attn_grid = PartitionTransformer(out_chs, "grid", cfg.grid, cfg, drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x).permute(0, 2, 3, 1)  # [B, h, w, C]
        x = self.attn_grid(self.attn_block(x))
        return x.permute(0, 3, 1, 2)  # [B, C, h, w]


class MaxViTStage(nn.Module):
    """Blocks of one resolution; the first halves the map and changes the width."""

    def __init__(self, in_chs: int, out_chs: int, depth: int, cfg, rates: list[float]) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            *(
                MaxViTBlock(in_chs if i == 0 else out_chs, out_chs, 2 if i == 0 else 1, cfg, r)
                for i, r in zip(range(depth), rates)
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class ClassifierHead(nn.Module):
    """Global average pool, LayerNorm, (Linear + tanh), dropout, Linear: ``[B, C, h, w] -> [B, K]``."""

    def __init__(self, dim: int, num_classes: int, hidden: bool, eps: float, drop: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.hidden = nn.Sequential(nn.Linear(dim, dim), nn.Tanh()) if hidden else nn.Identity()
        self.drop = nn.Dropout(drop)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x.mean(dim=(2, 3)))  # [B, C]
        return self.fc(self.drop(self.hidden(x)))  # [B, K]


def drop_path_rates(rate: float, depths: list[int]) -> list[list[float]]:
    """Stochastic-depth rate of every block: linear from 0 to ``rate`` over all blocks."""
    n = sum(depths)
    flat = [rate * i / (n - 1) if n > 1 else 0.0 for i in range(n)]
    out, start = [], 0
    for d in depths:
        out.append(flat[start : start + d])
        start += d
    return out


class MaxViT(nn.Module):
    """MaxViT from a :class:`MaxViTConfig`; ``model(images [B, 3, H, W]) -> logits [B, K]``.

    :meth:`forward_features` gives the multi-scale maps (stem and every stage) for DETR and
    dense-prediction decoders; :attr:`feature_info` their channels and strides.
    """

    def __init__(self, cfg: MaxViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.stem = Stem(cfg.in_chans, cfg.stem_width, cfg.bn_eps)
        rates = drop_path_rates(cfg.drop_path_rate, cfg.depths)
        stages, in_chs = [], cfg.stem_width
        self.feature_info = [{"num_chs": cfg.stem_width, "reduction": 2, "module": "stem"}]
        for i, (dim, depth) in enumerate(zip(cfg.embed_dims, cfg.depths)):
            stages.append(MaxViTStage(in_chs, dim, depth, cfg, rates[i]))
            self.feature_info.append(
                {"num_chs": dim, "reduction": 2 ** (i + 2), "module": f"stages.{i}"}
            )
            in_chs = dim
        self.stages = nn.Sequential(*stages)
        self.head = ClassifierHead(
            in_chs, cfg.num_classes, cfg.head_hidden, cfg.ln_eps, cfg.drop_rate
        )
        self.apply(_init_weights)

    @property
    def num_features(self) -> int:
        return self.cfg.embed_dims[-1]

    def forward_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """``images [B, C, H, W]`` -> ``[stem, stage 1, ..., stage n]`` maps ``[B, C_i, h_i, w_i]``
        (strides 2, 4, 8, ...)."""
        x = self.stem(images)  # [B, C0, H/2, W/2]
        maps = [x]
        for stage in self.stages:
            x = stage(x)  # [B, C_i, h / 2, w / 2]
            maps.append(x)
        return maps

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(images))  # [B, C, H/2^(n+1), W/2^(n+1)]
        return self.head(x)  # [B, K]


def _init_weights(module: nn.Module) -> None:
    """Truncated normal (std 0.02) for linear layers and zero biases, as timm's MaxViT."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def build_maxvit(cfg: MaxViTConfig) -> MaxViT:
    """The :class:`MaxViT` of a model config section."""
    return MaxViT(cfg)
