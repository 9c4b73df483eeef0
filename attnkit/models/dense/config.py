"""Typed configuration of the dense family (``model.name: dense``): encoder x decoder x attention.

Each part is chosen on its own line: ``model.encoder.name`` (``swin`` or ``mit``) with its
``variant``, ``model.decoder.name`` (``segformer``), and ``model.attention.normalizer`` for every
attention of the encoder. The defaults are a small Swin with the SegFormer head for the synthetic
height maps on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from attnkit.config.constraints import DropoutRate, ImageSize, NonNegativeFloat, PositiveInt
from attnkit.config.types import AlphaInit, NormalizerName

__all__ = ["DenseAttentionConfig", "DenseConfig", "DenseDecoderConfig", "DenseEncoderConfig"]


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


@dataclass
class DenseDecoderConfig:
    """``segformer``: the all-MLP head, ``embed_dim`` wide (256 in SegFormer-b0)."""

    name: Literal["segformer"] = "segformer"
    embed_dim: PositiveInt = 256
    dropout: DropoutRate = 0.1


@dataclass
class DenseAttentionConfig:
    normalizer: NormalizerName = "softmax"
    alpha_init: AlphaInit = 1.5
    tvmax_lambda: NonNegativeFloat = 0.05


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
