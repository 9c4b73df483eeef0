"""Typed configuration of the MaxViT family (``model.name: maxvit``).

The defaults are the ``synth`` variant, a MaxViT small enough to train on the 32x32 synthetic
set on a CPU. :data:`MAXVIT_VARIANTS` holds the paper's T / S / B / L (timm's
``maxvit_*_tf_224``) and the CPU-sized ones as overrides of :class:`MaxViTConfig`, so
``maxvit_variant("tiny")`` builds the model timm's ``maxvit_tiny_tf_224`` weights load into.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Annotated, ClassVar, Literal

from attnkit.config.constraints import (
    DropoutRate,
    ImageSize,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    length,
    rule,
)
from attnkit.config.types import AlphaInit, NormalizerName

__all__ = [
    "MAXVIT_VARIANTS",
    "MaxViTAttentionConfig",
    "MaxViTConfig",
    "PartitionNormalizerConfig",
    "maxvit_variant",
]

PartitionSize = Annotated[list[PositiveInt], length(2)]


@dataclass
class PartitionNormalizerConfig:
    """The normalizer of one attention type (block or grid) in every MaxViT block.

    ``alpha_init``: alpha-entmax's initial alpha (one learned alpha per head and site);
    ``tvmax_lambda``: TVmax's smoothing over the window's (or partition's) ``P x P`` keys.
    """

    normalizer: NormalizerName = "softmax"
    alpha_init: AlphaInit = 1.5
    tvmax_lambda: NonNegativeFloat = 0.05


@dataclass
class MaxViTAttentionConfig:
    """Normalizers of block (local window) and grid (dilated, global) attention, separately."""

    block: PartitionNormalizerConfig = field(default_factory=PartitionNormalizerConfig)
    grid: PartitionNormalizerConfig = field(default_factory=PartitionNormalizerConfig)


@dataclass
class MaxViTConfig:
    """MaxViT (Tu et al. 2022): a conv stem, then stages of MBConv -> block -> grid attention.

    ``img_size`` is the size the model is built and benchmarked at; any other input size also
    runs (feature maps are padded to the window / grid multiple inside attention, the padded
    tokens masked out). ``window`` ``[ph, pw]`` is block attention's window, ``grid``
    ``[gh, gw]`` grid attention's partition (both 7 at 224 in the paper: 224 / 32). Heads have
    ``head_dim`` channels (32 in the paper), so a stage of width C has C / 32 heads.
    ``drop_path_rate`` rises linearly over the blocks, the same within a stage (timm's
    ``stagewise`` rule); ``head_hidden`` adds the paper's Linear + tanh before the classifier.
    """

    name: Literal["maxvit"] = "maxvit"
    img_size: ImageSize = field(default_factory=lambda: [32, 32])
    in_chans: PositiveInt = 3
    num_classes: PositiveInt = 10
    stem_width: PositiveInt = 32
    embed_dims: list[PositiveInt] = field(default_factory=lambda: [32, 64, 128])
    depths: list[PositiveInt] = field(default_factory=lambda: [1, 2, 1])
    head_dim: PositiveInt = 16
    window: PartitionSize = field(default_factory=lambda: [4, 4])
    grid: PartitionSize = field(default_factory=lambda: [4, 4])
    mlp_ratio: PositiveFloat = 4.0
    mbconv_expand: PositiveFloat = 4.0
    se_ratio: PositiveFloat = 0.25
    head_hidden: bool = True
    drop_rate: DropoutRate = 0.0
    attn_drop_rate: DropoutRate = 0.0
    proj_drop_rate: DropoutRate = 0.0
    drop_path_rate: DropoutRate = 0.0
    bn_eps: PositiveFloat = 1e-3
    ln_eps: PositiveFloat = 1e-5
    attention: MaxViTAttentionConfig = field(default_factory=MaxViTAttentionConfig)

    CHECKS: ClassVar = (
        rule(
            ("embed_dims", "depths"),
            lambda m: len(m.embed_dims) == len(m.depths) > 0,
            "'{p}embed_dims' and '{p}depths' need one entry per stage (same length)",
        ),
        rule(
            ("embed_dims", "head_dim"),
            lambda m: all(d % m.head_dim == 0 for d in m.embed_dims),
            "every '{p}embed_dims' entry must be a multiple of '{p}head_dim' (heads = width / head_dim)",
        ),
    )


_TF_224 = {
    "img_size": [224, 224],
    "num_classes": 1000,
    "head_dim": 32,
    "window": [7, 7],
    "grid": [7, 7],
}

MAXVIT_VARIANTS: dict[str, dict] = {
    # timm maxvit_{tiny,small,base,large}_tf_224 (the port of the official TF weights); the
    # drop-path rates of the official ImageNet-1k recipe.
    "tiny": {
        **_TF_224,
        "stem_width": 64,
        "embed_dims": [64, 128, 256, 512],
        "depths": [2, 2, 5, 2],
        "drop_path_rate": 0.2,
    },
    "small": {
        **_TF_224,
        "stem_width": 64,
        "embed_dims": [96, 192, 384, 768],
        "depths": [2, 2, 5, 2],
        "drop_path_rate": 0.3,
    },
    "base": {
        **_TF_224,
        "stem_width": 64,
        "embed_dims": [96, 192, 384, 768],
        "depths": [2, 6, 14, 2],
        "drop_path_rate": 0.4,
    },
    "large": {
        **_TF_224,
        "stem_width": 128,
        "embed_dims": [128, 256, 512, 1024],
        "depths": [2, 6, 14, 2],
        "drop_path_rate": 0.6,
    },
    # A four-stage MaxViT for 64x64 images (P = G = 4 at the first stage's 16x16 map).
    "nano": {
        "img_size": [64, 64],
        "num_classes": 10,
        "stem_width": 32,
        "embed_dims": [32, 64, 128, 256],
        "depths": [1, 1, 2, 1],
        "head_dim": 16,
        "window": [4, 4],
        "grid": [4, 4],
        "drop_path_rate": 0.1,
    },
    # The defaults of MaxViTConfig: 32x32 synthetic images, three stages (8x8, 4x4, 2x2 maps).
    "synth": {
        "img_size": [32, 32],
        "num_classes": 10,
        "stem_width": 32,
        "embed_dims": [32, 64, 128],
        "depths": [1, 2, 1],
        "head_dim": 16,
        "window": [4, 4],
        "grid": [4, 4],
        "drop_path_rate": 0.0,
    },
}
"""Named MaxViT architectures as overrides of :class:`MaxViTConfig`."""


def maxvit_variant(variant: str, **overrides) -> MaxViTConfig:
    """The :class:`MaxViTConfig` of a named variant, with further field overrides.

    ``maxvit_variant("tiny", num_classes=10)``; an unknown variant or field is a ``ValueError``
    that lists the valid ones. ``attention`` may be given as a dict, e.g.
    ``{"block": {"normalizer": "sparsemax"}}``.
    """
    if variant not in MAXVIT_VARIANTS:
        raise ValueError(
            f"unknown MaxViT variant {variant!r}; available: {', '.join(MAXVIT_VARIANTS)}"
        )
    names = {f.name for f in fields(MaxViTConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"unknown MaxViTConfig field(s) {unknown}; valid: {sorted(names)}")
    values = {**MAXVIT_VARIANTS[variant], **overrides}
    attention = values.get("attention")
    if isinstance(attention, dict):
        values["attention"] = MaxViTAttentionConfig(
            **{k: PartitionNormalizerConfig(**v) for k, v in attention.items()}
        )
    for key in ("img_size", "embed_dims", "depths", "window", "grid"):
        if key in values:
            values[key] = list(values[key])
    return replace(MaxViTConfig(), **values)
