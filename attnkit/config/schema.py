"""Typed schemas of attnkit configs.

A config is a tree of dataclasses. Every key a YAML file may hold is a field here, with its
type and default, so a misspelt key or a wrong type is caught when the file is read (see
``attnkit.config.loader``). The defaults are the DETR reference hyper-parameters from
DESIGN.md; ``configs/detr/base.yaml`` states them again so a run's config can be diffed against
the reference.

Sections whose fields depend on a ``name`` (``model``) are *tagged*: the ``name`` value picks
the dataclass from :data:`MODEL_SCHEMAS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

NormalizerName = Literal["softmax", "sparsemax", "entmax15", "alpha_entmax", "tvmax"]


@dataclass
class DataConfig:
    """Where the images come from and how they are transformed."""

    # "shapes": the embedded synthetic dataset (made once into a cache folder); "coco": a
    # COCO-format folder at ``root`` ({split}2017/ and annotations/instances_{split}2017.json).
    name: Literal["shapes", "coco"] = "shapes"
    root: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    # Synthetic data only: how many images per split, and the seed that makes them.
    num_train: int = 512
    num_val: int = 128
    seed: int = 0
    # DETR transforms: shorter side drawn from ``train_scales``, longer side capped at ``max_size``;
    # with probability ``crop_prob`` an extra resize + random crop (DETR's RandomSelect branch).
    train_scales: list[int] = field(
        default_factory=lambda: [480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800]
    )
    val_scale: int = 800
    max_size: int = 1333
    crop_prob: float = 0.5
    crop_resize_scales: list[int] = field(default_factory=lambda: [400, 500, 600])
    crop_min_size: int = 384
    crop_max_size: int = 600
    hflip_prob: float = 0.5
    batch_size: int = 2
    num_workers: int = 2


@dataclass
class AttentionConfig:
    """The normalizer at each attention location of DETR."""

    encoder: NormalizerName = "softmax"
    decoder_self: NormalizerName = "softmax"
    cross: NormalizerName = "softmax"
    # alpha_entmax: initial alpha (learnable per head) and TVmax strength.
    alpha_init: float = 1.5
    tvmax_lambda: float = 0.05  # the TVmax reference: alpha=0.1 with a step of alpha / 2


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
    hidden_dim: int = 256
    num_heads: int = 8
    enc_layers: int = 6
    dec_layers: int = 6
    dim_feedforward: int = 2048
    dropout: float = 0.1
    num_queries: int = 100
    pre_norm: bool = False
    aux_loss: bool = True
    num_classes: int = 91
    attention: AttentionConfig = field(default_factory=AttentionConfig)


MODEL_SCHEMAS: dict[str, type] = {"detr": DETRConfig}


@dataclass
class LossConfig:
    """Hungarian matcher costs and set-criterion weights (DETR reference values)."""

    cost_class: float = 1.0
    cost_bbox: float = 5.0
    cost_giou: float = 2.0
    class_weight: float = 1.0
    bbox_weight: float = 5.0
    giou_weight: float = 2.0
    eos_coef: float = 0.1


@dataclass
class TrainConfig:
    """Optimisation: the DETR reference recipe by default."""

    epochs: int = 300
    lr: float = 1e-4
    lr_backbone: float = 1e-5
    weight_decay: float = 1e-4
    lr_drop: int = 200
    lr_drop_factor: float = 0.1
    # alpha-entmax: ``pre_alpha`` trains at ``alpha_lr_mult`` x lr without weight decay.
    alpha_lr_mult: float = 10.0
    alpha_keep_lr: bool = False
    clip_max_norm: float = 0.1
    amp: Literal["none", "bf16", "fp16"] = "none"
    grad_accum_steps: int = 1
    max_steps: int | None = None
    # Fine-tuning: start from the weights of another run (a checkpoint or run folder) instead of
    # a fresh initialisation, e.g. a softmax DETR into a sparsemax one as the thesis did from the
    # official weights. Normalizer parameters the source lacks (pre_alpha) keep their init.
    init_from: str | None = None
    checkpoint_every_steps: int | None = None
    eval_every_epochs: int = 1
    log_every_steps: int = 10
    device: str = "auto"


@dataclass
class ExperimentConfig:
    """The root of every experiment config."""

    name: str = "experiment"
    seed: int = 42
    data: DataConfig = field(default_factory=DataConfig)
    model: DETRConfig = field(default_factory=DETRConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


TAGGED_SECTIONS: dict[str, dict[str, type]] = {"model": MODEL_SCHEMAS}
