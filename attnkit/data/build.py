"""Config -> dataset: the synthetic shapes by default, a COCO-format folder when given."""

from __future__ import annotations

from pathlib import Path

from attnkit.data.coco import CocoDetection, DatasetError
from attnkit.data.synthetic import ensure_shapes_dataset
from attnkit.data.transforms import detr_transforms


def dataset_root(data_cfg, split: str | None = None) -> Path:
    """The COCO-format folder a :class:`~attnkit.config.schema.DetectionDataConfig` points at,
    making the synthetic one if needed (only ``split``'s images when one is named)."""
    if data_cfg.root:
        root = Path(data_cfg.root).expanduser()
        if not root.is_dir():
            raise DatasetError(f"data.root does not exist: {root}")
        return root
    if data_cfg.name == "coco":
        raise DatasetError(
            "data.name is 'coco' but data.root is not set: pass data.root=/path/to/coco "
            "(the folder holding train2017/, val2017/ and annotations/)"
        )
    splits = (split,) if split in ("train", "val") else ("train", "val")
    return ensure_shapes_dataset(data_cfg.num_train, data_cfg.num_val, data_cfg.seed, splits=splits)


def build_dataset(data_cfg, split: str, train: bool | None = None) -> CocoDetection:
    """The dataset of ``split`` ("train" / "val" or a config split name) with DETR's transforms."""
    split_name = {"train": data_cfg.train_split, "val": data_cfg.val_split}.get(split, split)
    if train is None:
        train = split == "train"
    root = dataset_root(data_cfg, split_name)
    return CocoDetection(root, split_name, detr_transforms(data_cfg, train))
