"""DETR's config sections: the ``model`` schema (tagged ``name: detr``) and the ``loss`` schema.

The defaults are the DETR reference hyper-parameters from DESIGN.md; ``configs/detr/base.yaml``
states them again so a run's config can be diffed against the reference.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from attnkit.config.constraints import (
    DropoutRate,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveInt,
    divisible,
    rule,
)
from attnkit.config.types import AlphaInit, NormalizerName

__all__ = ["AttentionConfig", "DETRConfig", "LossConfig"]


@dataclass
class AttentionConfig:
    """The normalizer at each attention location of DETR."""

    encoder: NormalizerName = "softmax"
    decoder_self: NormalizerName = "softmax"
    cross: NormalizerName = "softmax"
    # alpha_entmax: initial alpha (learnable per head) and TVmax strength.
    alpha_init: AlphaInit = 1.5
    tvmax_lambda: NonNegativeFloat = 0.05  # the TVmax reference: alpha=0.1 with a step of alpha / 2


@dataclass
class DETRConfig:
    """DETR (Carion et al. 2020) with a pluggable attention normalizer per location."""

    name: Literal["detr"] = "detr"
    backbone: str = "resnet50"
    dilation: bool = False
    # Which stage's feature map the transformer reads (timm backbones): -1 the last (stride 32),
    # -2 the one before (stride 16: small objects resolved, cheaper than dilation).
    backbone_stage: int = -1
    # A local weights file: a torchvision ResNet state dict or `attnkit pretrain-backbone`'s
    # output; "{checkpoints}" stands for the shipped-checkpoints folder.
    pretrained_backbone: str | None = None
    # Zero the padded area before every backbone convolution, so an image's features do not
    # depend on the larger images of its batch. Off = official DETR (border features see padding).
    backbone_mask_padding: bool = False
    # No pretrained weights: trainable batch norm and all stages trained (synthetic-data models).
    backbone_from_scratch: bool = False
    hidden_dim: PositiveInt = 256
    num_heads: PositiveInt = 8
    enc_layers: NonNegativeInt = 6
    dec_layers: PositiveInt = 6
    dim_feedforward: PositiveInt = 2048
    dropout: DropoutRate = 0.1
    num_queries: PositiveInt = 100
    pre_norm: bool = False
    aux_loss: bool = True
    num_classes: PositiveInt = 91
    attention: AttentionConfig = field(default_factory=AttentionConfig)

    CHECKS: ClassVar = (
        divisible("hidden_dim", by="num_heads"),
        rule(
            ("hidden_dim",),
            lambda m: m.hidden_dim % 2 == 0,
            "'{p}hidden_dim' must be even (the sine position embedding uses half per axis)",
        ),
    )


@dataclass
class LossConfig:
    """Hungarian matcher costs and set-criterion weights (DETR reference values)."""

    cost_class: NonNegativeFloat = 1.0
    cost_bbox: NonNegativeFloat = 5.0
    cost_giou: NonNegativeFloat = 2.0
    class_weight: NonNegativeFloat = 1.0
    bbox_weight: NonNegativeFloat = 5.0
    giou_weight: NonNegativeFloat = 2.0
    eos_coef: NonNegativeFloat = 0.1
