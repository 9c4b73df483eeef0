"""Typed configuration of the dense family (``model.name: dense``): encoder x decoder x attention.

Each part is chosen on its own line: ``model.encoder.name`` (``swin``, ``mit``, ``vit`` or
``maxvit``) with its ``variant``, ``model.decoder.name`` (``segformer``, ``swin_unet`` or ``fpn``),
``model.attention.mechanism`` and ``normalizer`` for every attention of the encoder, and
``model.block.ffn``. The defaults are a small Swin with the SegFormer head for the synthetic
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
    Rule,
    rule,
)
from attnkit.config.types import AlphaInit, NormalizerName

ENCODER_VARIANTS = {
    "swin": ("tiny", "small", "base"),
    "mit": ("b0", "b1", "b2", "b3", "b4", "b5"),
    "vit": ("tiny", "small", "base"),
    "maxvit": ("tiny", "small", "base", "large", "nano", "synth"),
}
"""The named variants of each encoder (``SWIN_VARIANTS``, ``MIT_VARIANTS``, ``VIT_VARIANTS``,
``MAXVIT_VARIANTS``)."""
NATIVE_ONLY = ("maxvit",)
"""Encoders whose blocks are fixed (MaxViT: MBConv, block and grid attention, MLP)."""

__all__ = [
    "DenseAttentionConfig",
    "DenseBlockConfig",
    "DenseConfig",
    "DenseDecoderConfig",
    "DenseEncoderConfig",
]


@dataclass
class DenseEncoderConfig:
    """``name`` and ``variant``: ``swin`` (``tiny`` / ``small`` / ``base``), ``mit`` (``b0`` ...
    ``b5``), ``vit`` (``tiny`` / ``small`` / ``base``) or ``maxvit`` (``tiny`` ... ``large``,
    ``nano``, ``synth``). When given, these replace the variant's: ``embed_dim`` / ``depths`` /
    ``num_heads`` (Swin), ``embed_dims`` / ``depths`` (MiT, MaxViT), ``embed_dim`` / ``depth`` /
    ``num_heads`` (one entry) / ``patch_size`` / ``stage_idx`` (ViT: the four blocks whose
    outputs become the maps). ``window``: the window side of Swin, of MaxViT's block and grid
    attention, and of the partition mechanisms elsewhere (default: each encoder's own, 7 for Swin
    and ViT)."""

    name: Literal["swin", "mit", "vit", "maxvit"] = "swin"
    variant: str = "tiny"
    embed_dim: PositiveInt | None = None
    embed_dims: list[PositiveInt] | None = None
    depths: list[PositiveInt] | None = None
    depth: PositiveInt | None = None
    num_heads: list[PositiveInt] | None = None
    patch_size: PositiveInt | None = None
    stage_idx: list[int] | None = None
    window: PositiveInt | None = None
    drop_path_rate: DropoutRate = 0.1

    CHECKS: ClassVar = (
        rule(
            ("name", "variant"),
            lambda m: m.variant in ENCODER_VARIANTS[m.name],
            "'{p}variant' must be a variant of the encoder: swin: tiny, small, base; "
            "mit: b0 ... b5; vit: tiny, small, base; maxvit: tiny, small, base, large, nano, synth",
        ),
        rule(
            ("name", "patch_size"),
            lambda m: m.patch_size is None or (m.name == "vit" and m.patch_size in (4, 8, 16, 32)),
            "'{p}patch_size' is the ViT encoder's patch side: 4, 8, 16 or 32 (other encoders "
            "have their own stems)",
        ),
        rule(
            ("name", "num_heads"),
            lambda m: m.name != "vit" or m.num_heads is None or len(m.num_heads) == 1,
            "'{p}num_heads' of the ViT encoder has one entry (every block has the same heads)",
        ),
    )


@dataclass
class DenseDecoderConfig:
    """``segformer``: the all-MLP head, ``embed_dim`` wide (256 in SegFormer-b0), ``dropout``
    before its prediction. ``swin_unet``: Swin blocks with patch expanding and skips, as deep and
    with as many heads per level as the encoder's stages, in windows of ``window``. ``fpn``: a
    top-down feature pyramid head, ``embed_dim`` wide, for contrast."""

    name: Literal["segformer", "swin_unet", "fpn"] = "segformer"
    embed_dim: PositiveInt = 256
    dropout: DropoutRate = 0.1
    window: PositiveInt = 7


@dataclass
class DenseAttentionConfig:
    """``mechanism`` of every encoder block: ``native`` (Swin's (shifted) windows, MiT's spatial
    reduction, ViT's full attention, MaxViT's block and grid), ``full``, ``window`` (never
    shifted), ``shifted_window`` (always), ``grid``, ``spatial_reduction`` (strided conv),
    ``pooled_reduction`` (keys pooled to 7 x 7, PVTv2-Li's linear variant) or ``efficient``
    (linear; forms no attention matrix, so softmax only). ``normalizer`` of every attention
    matrix (decoder blocks too)."""

    mechanism: Literal[
        "native",
        "full",
        "window",
        "shifted_window",
        "grid",
        "spatial_reduction",
        "pooled_reduction",
        "efficient",
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

    CHECKS: ClassVar = (
        Rule(
            ("attention.mechanism", "block.ffn", "encoder.name"),
            lambda m: (
                None
                if m.encoder.name not in NATIVE_ONLY
                or (m.attention.mechanism == "native" and m.block.ffn == "native")
                else f"'{{p}}attention.mechanism' and '{{p}}block.ffn' must be native with the "
                f"{m.encoder.name} encoder (its blocks are fixed), got {m.attention.mechanism!r} and "
                f"{m.block.ffn!r}"
            ),
        ),
    )
