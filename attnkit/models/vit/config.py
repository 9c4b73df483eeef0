"""Typed configuration of the plain ViT classifier family (``model.name: vit``).

The defaults are the ``synth`` variant: a small ViT for 32x32 images of the synthetic data,
trainable on a CPU. :data:`VIT_VARIANTS` holds the timm architectures as config overrides, so a
timm checkpoint of that name loads into ``build_vit(vit_variant("tiny"))``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import ClassVar, Literal

from attnkit.config.constraints import (
    DropoutRate,
    ImageSize,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    divisible,
    rule,
)
from attnkit.config.types import AlphaInit, NormalizerName

__all__ = ["VIT_VARIANTS", "ViTAttentionConfig", "ViTConfig", "vit_variant"]


@dataclass
class ViTAttentionConfig:
    """The normalizer of every self-attention layer.

    ``alpha_init`` is alpha-entmax's initial alpha (one learned alpha per head and layer);
    ``tvmax_lambda`` the TV weight of TVmax, which smooths over the patch grid only.
    """

    normalizer: NormalizerName = "softmax"
    alpha_init: AlphaInit = 1.5
    tvmax_lambda: NonNegativeFloat = 0.05


@dataclass
class ViTConfig:
    """A ViT classifier (Dosovitskiy et al. 2021) with timm's ``VisionTransformer`` layout.

    ``img_size`` is ``[H, W]`` (non-square allowed); both must be multiples of ``patch_size``
    and inputs must have exactly this size. ``global_pool``: ``"token"`` classifies the class
    token (needs ``class_token``), ``"avg"`` the mean of the patch tokens (then the final norm is
    applied after pooling, as timm's ``fc_norm``). ``drop_rate`` is the dropout after the
    position embedding, after each attention and MLP projection and before the head;
    ``attn_drop_rate`` the dropout of the attention weights; ``drop_path_rate`` the stochastic
    depth of the last block (linearly increasing from 0 at the first).
    """

    name: Literal["vit"] = "vit"
    img_size: ImageSize = field(default_factory=lambda: [32, 32])
    patch_size: PositiveInt = 4
    in_chans: PositiveInt = 3
    num_classes: PositiveInt = 10
    embed_dim: PositiveInt = 192
    depth: PositiveInt = 6
    num_heads: PositiveInt = 3
    mlp_ratio: PositiveFloat = 4.0
    qkv_bias: bool = True
    class_token: bool = True
    global_pool: Literal["token", "avg"] = "token"
    drop_rate: DropoutRate = 0.0
    attn_drop_rate: DropoutRate = 0.0
    drop_path_rate: DropoutRate = 0.0
    attention: ViTAttentionConfig = field(default_factory=ViTAttentionConfig)

    CHECKS: ClassVar = (
        divisible("img_size", by="patch_size"),
        divisible("embed_dim", by="num_heads"),
        rule(
            ("global_pool", "class_token"),
            lambda m: m.global_pool != "token" or m.class_token,
            "'{p}global_pool: token' needs '{p}class_token: true' (or use global_pool: avg)",
        ),
    )


_TIMM_224 = {"img_size": [224, 224], "patch_size": 16, "depth": 12, "num_classes": 1000}

VIT_VARIANTS: dict[str, dict] = {
    # timm vit_tiny_patch16_224 / vit_small_patch16_224 / vit_base_patch16_224.
    "tiny": {**_TIMM_224, "embed_dim": 192, "num_heads": 3},
    "small": {**_TIMM_224, "embed_dim": 384, "num_heads": 6},
    "base": {**_TIMM_224, "embed_dim": 768, "num_heads": 12},
    # The defaults of ViTConfig: 32x32 synthetic images, 10 classes.
    "synth": {
        "img_size": [32, 32],
        "patch_size": 4,
        "embed_dim": 192,
        "depth": 6,
        "num_heads": 3,
        "num_classes": 10,
    },
}
"""Named ViT architectures as overrides of :class:`ViTConfig`."""


def vit_variant(variant: str, **overrides) -> ViTConfig:
    """The :class:`ViTConfig` of a named variant, with further field overrides.

    ``vit_variant("tiny", num_classes=10)``; an unknown variant or field is a ``ValueError``
    that lists the valid ones.
    """
    if variant not in VIT_VARIANTS:
        raise ValueError(f"unknown ViT variant {variant!r}; available: {', '.join(VIT_VARIANTS)}")
    names = {f.name for f in fields(ViTConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"unknown ViTConfig field(s) {unknown}; valid: {sorted(names)}")
    values = {**VIT_VARIANTS[variant], **overrides}
    values["img_size"] = list(values["img_size"])
    return replace(ViTConfig(), **values)
