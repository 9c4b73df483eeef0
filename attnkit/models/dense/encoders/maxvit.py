"""MaxViT (:mod:`attnkit.models.maxvit`) as a dense encoder: its stages' maps at strides 4 ... 32.

The stem (stride 2) and every stage of :class:`~attnkit.models.maxvit.MaxViT` run as in the
classifier; the classifier head is not built. Sub-module names stay the classifier's (``stem``,
``stages.<i>``), so a MaxViT classifier's state dict (attnkit's, or timm's ``maxvit_*_tf`` mapped
by :func:`~attnkit.models.maxvit.timm_weights.timm_to_attnkit`) loads into ``encoder.model``
without its head. Block and grid attention take one normalizer (the dense config's
``model.attention.normalizer``); any input size runs (MaxViT pads its partitions and masks the
padded keys).
"""

from __future__ import annotations

import torch
from torch import nn

from attnkit.errors import ConfigError
from attnkit.models.maxvit.config import maxvit_variant
from attnkit.models.maxvit.model import MaxViT

__all__ = ["MaxViTEncoder", "maxvit_encoder"]


class MaxViTEncoder(nn.Module):
    """``forward_features(images) -> [stage maps [B, C_i, ceil(H / 2^(i+2)), ...]]``."""

    def __init__(self, model: MaxViT) -> None:
        super().__init__()
        model.head = nn.Identity()  # no classifier in a dense encoder
        self.model = model
        cfg = model.cfg
        self.channels = list(cfg.embed_dims)
        self.depths = list(cfg.depths)
        self.num_heads = [d // cfg.head_dim for d in cfg.embed_dims]

    def forward_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        return self.model.forward_features(images)[1:]  # the stem's stride-2 map left out


def maxvit_encoder(
    variant: str = "nano",
    normalizer: str = "softmax",
    normalizer_kw: dict | None = None,
    **overrides,
) -> MaxViTEncoder:
    """The encoder of a named MaxViT variant (``MAXVIT_VARIANTS``) with ``normalizer`` in block
    and grid attention; ``overrides`` are :class:`MaxViTConfig` fields (``embed_dims``, ...)."""
    kw = normalizer_kw or {}
    part = {"normalizer": normalizer}
    if "alpha_init" in kw:
        part["alpha_init"] = kw["alpha_init"]
    if "lam" in kw:
        part["tvmax_lambda"] = kw["lam"]
    cfg = maxvit_variant(variant, attention={"block": part, "grid": dict(part)}, **overrides)
    if len(cfg.embed_dims) != len(cfg.depths):
        raise ConfigError(
            f"MaxViT {variant}: model.encoder.embed_dims {cfg.embed_dims} and depths "
            f"{cfg.depths} need one entry per stage (give both, or neither for the variant's)"
        )
    return MaxViTEncoder(MaxViT(cfg))
