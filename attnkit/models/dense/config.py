"""Typed configuration of the dense family (``model.name: dense``): encoder x decoder x attention.

Each part is chosen on its own line: ``model.encoder.name`` (``swin`` or ``mit``) with its
``variant``, ``model.decoder.name`` (``segformer``), and ``model.attention.normalizer`` for every
attention of the encoder. The defaults are a small Swin with the SegFormer head for the synthetic
height maps on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from attnkit.config.constraints import (
    DropoutRate,
    ImageSize,
    NonNegativeFloat,
    PositiveInt,
    rule,
)
from attnkit.config.types import AlphaInit, NormalizerName

ENCODER_VARIANTS = {
    "swin": ("tiny", "small", "base"),
    "mit": ("b0", "b1", "b2", "b3", "b4", "b5"),
}
"""The named variants of each encoder (``SWIN_VARIANTS``, ``MIT_VARIANTS``)."""

__all__ = [
    "DenseAttentionConfig",
    "DenseBlockConfig",
    "DenseConfig",
    "DenseDecoderConfig",
    "DenseEncoderConfig",
]


@dataclass
class DenseEncoderConfig:
    """``name``: ``swin`` or ``mit``; ``variant``: ``tiny`` / ``small`` / ``base`` (Swin),
    ``b0`` ... ``b5`` (MiT). ``embed_dim`` / ``depths`` / ``num_heads`` (Swin) or ``embed_dims``
    / ``depths`` (MiT), when given, replace the variant's; ``window`` is Swin's window side."""

    name: Literal["swin", "mit"] = "swin"
    variant: str = "tiny"
    embed_dim: PositiveInt | None = None
    embed_dims: list[PositiveInt] | None = None
    depths: list[PositiveInt] | None = None
    num_heads: list[PositiveInt] | None = None
    window: PositiveInt = 7
    drop_path_rate: DropoutRate = 0.1

    CHECKS: ClassVar = (
        rule(
            ("name", "variant"),
            lambda m: m.variant in ENCODER_VARIANTS[m.name],
            "'{p}variant' must be a variant of the encoder: swin: tiny, small, base; "
            "mit: b0 ... b5",
        ),
    )


@dataclass
class DenseDecoderConfig:
    """``segformer``: the all-MLP head, ``embed_dim`` wide (256 in SegFormer-b0), ``dropout``
    before its prediction. ``swin_unet``: Swin blocks with patch expanding and skips, as deep and
    with as many heads per level as the encoder's stages, in windows of ``window``."""

    name: Literal["segformer", "swin_unet"] = "segformer"
    embed_dim: PositiveInt = 256
    dropout: DropoutRate = 0.1
    window: PositiveInt = 7


@dataclass
class DenseAttentionConfig:
    """``mechanism`` of every encoder block: ``native`` (Swin's (shifted) windows, MiT's spatial
    reduction), ``full``, ``window`` (never shifted), ``shifted_window`` (always),  ``grid``,
    ``spatial_reduction`` or ``efficient`` (linear; forms no attention matrix, so softmax only).
    ``normalizer`` of every attention matrix (decoder blocks too)."""

    mechanism: Literal[
        "native", "full", "window", "shifted_window", "grid", "spatial_reduction", "efficient"
    ] = "native"
    normalizer: NormalizerName = "softmax"
    alpha_init: AlphaInit = 1.5
    tvmax_lambda: NonNegativeFloat = 0.05

    CHECKS: ClassVar = (
        rule(
            ("mechanism", "normalizer"),
            lambda m: m.mechanism != "efficient" or m.normalizer == "softmax",
            "'{p}normalizer' must be softmax with '{p}mechanism: efficient': efficient "
            "attention forms no attention matrix for a normalizer to act on",
        ),
    )


@dataclass
class DenseBlockConfig:
    """``ffn`` of every encoder block: ``native`` (Swin: MLP, MiT: Mix-FFN), ``mlp`` or
    ``mix_ffn`` (a depthwise 3x3 conv between the linear layers)."""

    ffn: Literal["native", "mlp", "mix_ffn"] = "native"


@dataclass
class DenseConfig:
    """A dense predictor: ``encoder`` stage maps -> ``decoder`` at 1/4 -> bilinear to the input.

    ``img_size`` is the size the encoder plans its windows for; any input size runs.
    ``out_channels``: 1 for a height map.
    """

    name: Literal["dense"] = "dense"
    img_size: ImageSize = field(default_factory=lambda: [64, 64])
    in_chans: PositiveInt = 3
    out_channels: PositiveInt = 1
    encoder: DenseEncoderConfig = field(default_factory=DenseEncoderConfig)
    decoder: DenseDecoderConfig = field(default_factory=DenseDecoderConfig)
    attention: DenseAttentionConfig = field(default_factory=DenseAttentionConfig)
    block: DenseBlockConfig = field(default_factory=DenseBlockConfig)
