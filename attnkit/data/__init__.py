"""Data: the embedded synthetic shapes dataset, COCO-format loading, DETR transforms."""

from attnkit.data.build import build_dataset, dataset_root
from attnkit.data.coco import Batch, CocoDetection, DatasetError, collate_detection
from attnkit.data.synthetic import ensure_shapes_dataset, make_shapes_coco

__all__ = [
    "Batch",
    "CocoDetection",
    "DatasetError",
    "build_dataset",
    "collate_detection",
    "dataset_root",
    "ensure_shapes_dataset",
    "make_shapes_coco",
]
