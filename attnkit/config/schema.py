"""Typed schemas of attnkit configs: the root, the training recipe and the task-level sections.

A config is a tree of dataclasses. Every key a YAML file may hold is a field of one, with its
type and default, so a misspelt key or a wrong type is caught when the file is read (see
``attnkit.config.loader``).

The ``model``, ``data`` and ``loss`` sections are *tagged by the family*: ``model.name`` picks a
family from ``attnkit.models.registry.FAMILIES``, whose ``schema`` types ``model``, whose task
types ``data`` (:class:`DetectionDataConfig`, :class:`ClassificationDataConfig`, ...) and whose
loss schema types ``loss``. The task is the family's default one unless the root key ``task``
names another the family offers (``task: dense_segmentation`` for the ``dense`` family). With
no ``model.name`` the family is DETR, and every default is the DETR reference recipe from
DESIGN.md (``configs/detr/base.yaml`` states it again).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal

from attnkit.config.constraints import (
    FINITE,
    ImageSize,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Probability,
    ascending,
    between,
    non_empty,
    not_greater,
)
from attnkit.config.types import NormalizerName as NormalizerName


@dataclass
class DetectionDataConfig:
    """Detection data (the ``detection`` task): where the images come from, DETR's transforms."""

    # "shapes": the embedded synthetic dataset (made once into a cache folder); "coco": a
    # COCO-format folder at ``root`` ({split}2017/ and annotations/instances_{split}2017.json).
    name: Literal["shapes", "coco"] = "shapes"
    root: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    # Synthetic data only: how many images per split, and the seed that makes them.
    num_train: PositiveInt = 512
    num_val: PositiveInt = 128
    seed: int = 0
    # DETR transforms: shorter side drawn from ``train_scales``, longer side capped at ``max_size``;
    # with probability ``crop_prob`` an extra resize + random crop (DETR's RandomSelect branch).
    train_scales: Annotated[list[PositiveInt], non_empty()] = field(
        default_factory=lambda: [480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800]
    )
    val_scale: PositiveInt = 800
    max_size: PositiveInt = 1333
    crop_prob: Probability = 0.5
    crop_resize_scales: Annotated[list[PositiveInt], non_empty()] = field(
        default_factory=lambda: [400, 500, 600]
    )
    crop_min_size: PositiveInt = 384
    crop_max_size: PositiveInt = 600
    hflip_prob: Probability = 0.5
    batch_size: PositiveInt = 2
    num_workers: NonNegativeInt = 2

    CHECKS: ClassVar = (not_greater("crop_min_size", than="crop_max_size"),)


@dataclass
class ClassificationDataConfig:
    """Classification data (the ``classification`` task) and its augmentation."""

    # "synthetic": the embedded 32x32 10-class set (made once into a cache folder); "cifar10":
    # torchvision's cifar-10-batches-py folder at ``root``; "folder": ``root/{train,val}/<class>/``.
    name: Literal["synthetic", "cifar10", "folder"] = "synthetic"
    root: str | None = None
    num_train: PositiveInt = 5000
    num_val: PositiveInt = 1000
    seed: int = 0
    # Folder images are resized to this (H, W); CIFAR and the synthetic set are 32x32 already.
    image_size: ImageSize | None = None
    # The standard CIFAR augmentation: pad by ``pad`` then random crop, horizontal flip.
    pad: NonNegativeInt = 4
    hflip: bool = True
    batch_size: PositiveInt = 128
    num_workers: NonNegativeInt = 2


@dataclass
class DenseDataConfig:
    """Dense regression data (the ``dense_regression`` task): rasters and a nodata mask."""

    # "synthetic": embedded height maps; "folder": ``root/{split}/images`` + ``targets`` rasters.
    name: Literal["synthetic", "folder"] = "synthetic"
    root: str | None = None
    num_train: PositiveInt = 256
    num_val: PositiveInt = 64
    seed: int = 0
    image_size: ImageSize = field(default_factory=lambda: [64, 64])
    nodata: float | None = None  # target value meaning "unknown" (also NaN) in folder rasters
    # Folder images: "imagenet" reads 8-bit grey / RGB as RGB with the ImageNet mean / std;
    # "auto" keeps every band (any dtype) and normalises each with the train split's mean / std,
    # computed once into root/band_stats.json. Synthetic data keeps its own constants.
    band_stats: Literal["imagenet", "auto"] = "imagenet"
    # Training: a random [H, W] window of every raster per sample (smaller ones padded with
    # invalid pixels); null: whole rasters.
    crop_size: ImageSize | None = None
    # Evaluation: predict [H, W] tiles overlapping by ``eval_overlap`` of a tile and blend them;
    # null: the whole image at once.
    eval_window: ImageSize | None = None
    eval_overlap: Annotated[float, between(0, 0.9)] = 0.25
    batch_size: PositiveInt = 16
    num_workers: NonNegativeInt = 2


@dataclass
class ClassificationLossConfig:
    """Cross-entropy, optionally with label smoothing."""

    label_smoothing: Annotated[float, between(0, 1, hi_open=True)] = 0.0


@dataclass
class DenseLossConfig:
    """A pixel-wise loss over the valid (not nodata) pixels."""

    kind: Literal["l1", "l2", "smooth_l1"] = "l1"
    beta: PositiveFloat = 1.0  # smooth_l1: where the quadratic part ends
    # Error per target-value bin in the evaluation (edges; empty: no bins).
    bins: list[Annotated[float, FINITE]] = field(default_factory=list)

    CHECKS: ClassVar = (ascending("bins"),)


@dataclass
class TrainConfig:
    """Optimisation: the DETR reference recipe by default, and what ViT / CNN recipes need.

    Learning rates: ``lr`` for every parameter, except those whose name starts with
    ``backbone.`` (``lr_backbone``, DETR's convention), those matching a prefix of ``lr_mult``
    (``lr`` x the multiplier of the longest matching prefix) and alpha-entmax's ``pre_alpha``
    (``alpha_lr_mult`` x lr, never weight decay). The schedule is stepped every optimiser step.
    """

    epochs: PositiveInt = 300
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: PositiveFloat = 1e-4
    lr_backbone: NonNegativeFloat = 1e-5  # 0: a frozen backbone
    lr_mult: dict[str, NonNegativeFloat] = field(default_factory=dict)
    weight_decay: NonNegativeFloat = 1e-4
    # No weight decay for 1-D parameters (norm weights, biases: the timm / CIFAR convention) and
    # for parameters whose name contains one of ``no_weight_decay`` (position / bias tables).
    no_weight_decay_1d: bool = False
    no_weight_decay: list[str] = field(default_factory=list)
    momentum: Annotated[float, between(0, 1, hi_open=True)] = 0.9  # sgd only
    nesterov: bool = False  # sgd only
    # "step": x lr_drop_factor from epoch lr_drop on (DETR); "cosine": from lr down to
    # lr x min_lr_factor at the last step of the last epoch. Either after ``warmup_steps`` steps of
    # linear warm-up.
    schedule: Literal["step", "cosine"] = "step"
    lr_drop: NonNegativeInt = 200
    lr_drop_factor: Annotated[float, between(0, 1, lo_open=True)] = 0.1
    min_lr_factor: Probability = 0.0
    warmup_steps: NonNegativeInt = 0
    # alpha-entmax: ``pre_alpha`` trains at ``alpha_lr_mult`` x lr without weight decay.
    alpha_lr_mult: NonNegativeFloat = 10.0
    alpha_keep_lr: bool = False
    clip_max_norm: NonNegativeFloat = 0.1  # 0: no clipping
    amp: Literal["none", "bf16", "fp16"] = "none"
    grad_accum_steps: PositiveInt = 1
    max_steps: PositiveInt | None = None
    # Fine-tuning: start from the weights of another run (a checkpoint or run folder) instead of
    # a fresh initialisation, e.g. a softmax DETR into a sparsemax one as the thesis did from the
    # official weights. Normalizer parameters the source lacks (pre_alpha) keep their init.
    init_from: str | None = None
    checkpoint_every_steps: PositiveInt | None = None
    eval_every_epochs: NonNegativeInt = 1  # 0: never
    log_every_steps: PositiveInt = 10
    device: str = "auto"


def _detr_model() -> Any:
    from attnkit.models.detr.config import DETRConfig

    return DETRConfig()


def _detr_loss() -> Any:
    from attnkit.models.detr.config import LossConfig

    return LossConfig()


@dataclass
class ExperimentConfig:
    """The root of every experiment config."""

    name: str = "experiment"
    seed: int = 42
    # The task to train the family's model for: null is the family's default task (``Family.task``:
    # ``dense_regression`` for ``dense``); any other must be one the family offers
    # (``Family.tasks``, e.g. ``dense_segmentation``). It types ``data`` and ``loss``.
    task: str | None = None
    # The family-tagged sections (see the module docstring); DETR's defaults.
    data: Any = field(default_factory=DetectionDataConfig)
    model: Any = field(default_factory=_detr_model)
    loss: Any = field(default_factory=_detr_loss)
    train: TrainConfig = field(default_factory=TrainConfig)


FAMILY_SECTIONS = ("model", "data", "loss")
"""Root sections whose schema the family decides (``model.name``)."""
DEFAULT_FAMILY = "detr"
