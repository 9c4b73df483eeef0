"""Typed configuration of the self-attention-versus-convolution family (``model.name: sa_conv``).

Two architectures:

* ``arch: transformer`` (default): Cordonnier et al.'s image transformer. A ``downsample x
  downsample`` space-to-depth turns a 32x32 RGB image into 16x16 tokens of 12 channels, a linear
  layer lifts them to ``hidden_dim``, ``depth`` post-norm layers (attention, then an FFN of width
  ``ffn_dim``) follow, and the mean token is classified linearly. ``model.attention.kind`` picks
  the attention: ``gaussian`` (quadratic positional), ``learned2d`` (learned relative offsets) or
  ``content`` (plain multi-head self-attention with learned absolute positions, the ViT-style
  baseline). ``share_layers`` (the hierarchical variants) ties every layer to the first one.
  ``pool``: ``mean`` (the paper) or ``max`` over the tokens before the classifier; on the
  synthetic set (small shapes on textured backgrounds) mean pooling keeps these models at chance
  for hundreds of steps, max pooling learns at once.
* ``arch: san``: Zhao et al.'s SAN (pairwise / patchwise self-attention over a k x k footprint);
  its options are ``model.san``, with ``img_size``, ``in_chans``, ``num_classes``,
  ``share_layers`` (the blocks of a stage share weights) and ``attention.normalizer`` /
  ``alpha_init`` / ``tvmax_lambda``; the transformer's other fields do not apply.

The defaults are a CPU-sized model for the synthetic 32x32 set; ``configs/sa_conv/`` holds the
paper's sizes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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

__all__ = ["SAConvAttentionConfig", "SAConvConfig", "SANConfig"]


@dataclass
class SAConvAttentionConfig:
    """The attention of every transformer layer.

    ``kind``: ``gaussian`` | ``learned2d`` | ``content``. ``content`` adds ``q . k`` to a
    positional kind (learned2d: with the query-dependent relative term of the paper).
    ``value_dim`` null lets every head read the input itself, as the paper's code (the output
    projection maps ``num_heads * hidden_dim`` back); ``content_dim`` is the per-head query/key
    width (null: the value width, or ``hidden_dim / num_heads`` for ``kind: content``).
    ``pos_dim``: width of learned2d's offset embeddings without content (null: hidden_dim).
    """

    kind: Literal["gaussian", "learned2d", "content"] = "gaussian"
    num_heads: PositiveInt = 9
    spread: Literal["isotropic", "anisotropic"] = "isotropic"
    content: bool = False
    value_dim: PositiveInt | None = None
    content_dim: PositiveInt | None = None
    pos_dim: PositiveInt | None = None
    init_centre_std: NonNegativeFloat = 2.0
    normalizer: NormalizerName = "softmax"
    alpha_init: AlphaInit = 1.5
    tvmax_lambda: NonNegativeFloat = 0.05
    dropout: DropoutRate = 0.1


@dataclass
class SANConfig:
    """SAN options (``arch: san``): ``mode`` pairwise | patchwise, a named stage ``layout``
    (``attnkit.models.sa_conv.san_net.SAN_LAYOUTS``: ``san10``, ``san15``, ``san19``, ``tiny``) and
    ``share_planes``, the channels sharing one attention weight (null: the layout's)."""

    mode: Literal["pairwise", "patchwise"] = "pairwise"
    layout: Literal["san10", "san15", "san19", "tiny"] = "tiny"
    share_planes: PositiveInt | None = None


@dataclass
class SAConvConfig:
    """A classifier of the self-attention-versus-convolution line (see the module docstring)."""

    name: Literal["sa_conv"] = "sa_conv"
    arch: Literal["transformer", "san"] = "transformer"
    img_size: ImageSize = field(default_factory=lambda: [32, 32])
    in_chans: PositiveInt = 3
    num_classes: PositiveInt = 10
    downsample: PositiveInt = 2
    hidden_dim: PositiveInt = 96
    depth: PositiveInt = 4
    ffn_dim: PositiveInt = 128
    dropout: DropoutRate = 0.1
    layer_norm_eps: PositiveFloat = 1e-12
    share_layers: bool = False
    position_embedding: bool = False
    pool: Literal["mean", "max"] = "mean"
    max_grid: ImageSize | None = None
    attention: SAConvAttentionConfig = field(default_factory=SAConvAttentionConfig)
    san: SANConfig = field(default_factory=SANConfig)

    CHECKS: ClassVar = (
        divisible("img_size", by="downsample"),
        rule(
            ("attention.kind", "hidden_dim", "attention.num_heads", "attention.content_dim"),
            lambda m: (
                m.attention.kind != "content"
                or m.attention.content_dim is not None
                or m.hidden_dim % m.attention.num_heads == 0
            ),
            "'{p}attention.kind: content' needs hidden_dim divisible by attention.num_heads "
            "(or set attention.content_dim)",
        ),
        rule(
            ("max_grid", "img_size", "downsample"),
            lambda m: (
                m.max_grid is None
                or all(g >= s // m.downsample for g, s in zip(m.max_grid, m.img_size))
            ),
            "'{p}max_grid' must cover the token grid img_size / downsample",
        ),
    )

    def token_grid(self) -> tuple[int, int]:
        """``(h, w)`` tokens after the space-to-depth."""
        return self.img_size[0] // self.downsample, self.img_size[1] // self.downsample
