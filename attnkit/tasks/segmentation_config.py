"""Config schemas of the ``dense_segmentation`` task: its ``data`` and ``loss`` sections.

They live beside the task rather than in :mod:`attnkit.config.schema` because only the task
refers to them (through ``SegmentationTask.data_schema`` / ``loss_schema``); the config loader
finds them through the task a config names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, ClassVar, Literal

from attnkit.config.constraints import (
    NON_NEGATIVE,
    ImageSize,
    NonNegativeInt,
    PositiveInt,
    between,
    non_empty,
    rule,
)

__all__ = ["SEGMENTATION_CLASSES", "SegmentationDataConfig", "SegmentationLossConfig"]

SEGMENTATION_CLASSES = ("ground", "building", "tree")
"""The classes of the synthetic scenes, in label order (0 ground, 1 building, 2 tree)."""


@dataclass
class SegmentationDataConfig:
    """Segmentation data: images with a map of integer class ids of the same size.

    ``name``: "synthetic" renders the height-map scenes of :mod:`attnkit.data.heightmaps` with
    their class maps (ground, building, tree; height nodata -> ``ignore_index``); "folder" reads
    ``root/{split}/images/<stem>.png|jpg|tif`` and ``root/{split}/labels/<stem>.png|npy``.
    """

    name: Literal["synthetic", "folder"] = "synthetic"
    root: str | None = None
    num_train: PositiveInt = 256
    num_val: PositiveInt = 64
    seed: int = 0
    image_size: ImageSize = field(default_factory=lambda: [64, 64])  # synthetic only
    # Label value of pixels that count nowhere (loss, metrics): unknown, or padding in a batch.
    ignore_index: NonNegativeInt = 255
    # The names of the classes (folder data; the synthetic set has its own three). Their number
    # is the number of classes and must equal model.out_channels; null: model.out_channels
    # classes named by their ids.
    class_names: Annotated[list[str], non_empty()] | None = None
    # Training on folder data: a random [H, W] window of every image per sample (smaller ones
    # padded with ignore_index labels); null: whole images.
    crop_size: ImageSize | None = None
    # Evaluation: predict [H, W] tiles overlapping by ``eval_overlap`` of a tile and blend their
    # logits; null: the whole image at once.
    eval_window: ImageSize | None = None
    eval_overlap: Annotated[float, between(0, 0.9)] = 0.25
    batch_size: PositiveInt = 16
    num_workers: NonNegativeInt = 2

    CHECKS: ClassVar = (
        rule(
            ("crop_size", "name"),
            lambda d: d.crop_size is None or d.name == "folder",
            "'{p}crop_size' crops folder images; the synthetic scenes are drawn at "
            "'{p}image_size': set that instead",
        ),
        rule(
            ("class_names", "ignore_index"),
            lambda d: d.class_names is None or d.ignore_index >= len(d.class_names),
            "'{p}ignore_index' must not be a class id: make it >= the number of "
            "'{p}class_names' (255 is usual)",
        ),
    )


@dataclass
class SegmentationLossConfig:
    """Per-pixel cross-entropy over the pixels not labelled ``data.ignore_index``."""

    label_smoothing: Annotated[float, between(0, 1, hi_open=True)] = 0.0
    # A weight per class (as many as model.out_channels), e.g. to lift rare classes; null: 1 each.
    class_weights: Annotated[list[Annotated[float, NON_NEGATIVE]], non_empty()] | None = None
