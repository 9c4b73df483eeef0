"""Semantic segmentation: a class for every pixel, scored by mean IoU.

The model maps images ``[B, 3, H, W]`` to logits ``[B, K, H, W]`` (the dense family with
``model.out_channels = K``); batches carry ``targets = {"labels": [B, H, W] int64}`` with
``data.ignore_index`` on pixels that count nowhere (nodata, padding). The loss is cross-entropy
over the other pixels; the evaluator streams a confusion matrix and reads mIoU, per-class IoU,
pixel accuracy and mean class accuracy off it. With ``data.eval_window`` it predicts each image
as overlapping tiles with blended logits (:mod:`attnkit.tasks.sliding_window`) instead of whole.
"""

from __future__ import annotations

from attnkit.errors import ConfigError, DataError
from attnkit.tasks.base import Task
from attnkit.tasks.segmentation_config import SegmentationDataConfig, SegmentationLossConfig
from attnkit.tasks.segmentation_loss import SegmentationLoss
from attnkit.tasks.segmentation_metrics import SegmentationMetrics

__all__ = ["SegmentationEvaluator", "SegmentationTask", "SlidingWindowSegmentationEvaluator"]

ARTIFACT = "segmentation.json"
"""The file ``attnkit eval`` writes with the confusion matrix and the per-class scores."""


class SegmentationEvaluator:
    """Streams logits and labels into a confusion matrix: mIoU, per-class IoU, accuracies."""

    def __init__(self, class_names, ignore_index: int = 255):
        self.class_names = [str(n) for n in class_names]
        self.ignore_index = int(ignore_index)
        self.metrics = SegmentationMetrics(len(self.class_names), self.ignore_index)

    def update(self, outputs, batch) -> None:
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs  # [B, K, H, W]
        self.metrics.update(logits, batch.targets["labels"])

    def compute(self) -> dict:
        return self.metrics.compute()

    def artifacts(self) -> dict:
        """``segmentation.json``: class names, the confusion matrix (rows: target class,
        columns: predicted) and one row per class (IoU / accuracy null where undefined)."""
        return {
            ARTIFACT: {
                "class_names": self.class_names,
                "ignore_index": self.ignore_index,
                "confusion": self.metrics.confusion.cpu().tolist(),
                "per_class": self.metrics.class_scores(self.class_names),
            }
        }


class SlidingWindowSegmentationEvaluator(SegmentationEvaluator):
    """:class:`SegmentationEvaluator` whose ``predict`` runs the model on overlapping ``window``
    tiles of each batch and blends their logits (``data.eval_window`` / ``eval_overlap``)."""

    def __init__(self, class_names, ignore_index: int, window, overlap: float):
        super().__init__(class_names, ignore_index)
        self.window, self.overlap = list(window), float(overlap)

    def predict(self, model, batch):
        """The logits ``[B, K, H, W]`` for ``batch``, tile by tile."""
        from attnkit.tasks.sliding_window import tiled_prediction

        return tiled_prediction(model, batch, self.window, self.overlap, "logits")


class SegmentationTask(Task):
    """Images to a same-sized map of class ids; per-pixel cross-entropy, mean IoU."""

    name = "dense_segmentation"
    data_schema = SegmentationDataConfig
    loss_schema = SegmentationLossConfig
    key_metric = "miou"
    higher_is_better = True

    def build_dataset(self, cfg, split, train=None):
        from attnkit.data.segmentation import build_segmentation_dataset

        train = split == "train" if train is None else train
        classes = getattr(cfg.model, "out_channels", None)
        return build_segmentation_dataset(cfg.data, split, train, num_classes=classes)

    def collate(self, samples):
        from attnkit.data.segmentation import collate_segmentation

        return collate_segmentation(samples)

    def build_criterion(self, cfg):
        return SegmentationLoss(
            ignore_index=cfg.data.ignore_index,
            label_smoothing=cfg.loss.label_smoothing,
            class_weights=cfg.loss.class_weights,
        )

    def build_evaluator(self, cfg, dataset):
        names = getattr(dataset, "class_names", None) or cfg.data.class_names
        if names is None:
            names = [str(i) for i in range(cfg.model.out_channels)]
        if cfg.data.eval_window:
            return SlidingWindowSegmentationEvaluator(
                names, cfg.data.ignore_index, cfg.data.eval_window, cfg.data.eval_overlap
            )
        return SegmentationEvaluator(names, cfg.data.ignore_index)

    def check(self, cfg, dataset) -> None:
        """The model must output one channel per class of the data, and the settings that
        count classes (``data.class_names``, ``loss.class_weights``) must agree with it; an
        ignore index that is a class id would silently drop that class."""
        if len(dataset) == 0:
            where = getattr(dataset, "folder", None) or cfg.data.root or cfg.data.name
            raise DataError(f"{where}: the split has no images; give it at least one")
        classes = getattr(dataset, "class_names", None) or cfg.data.class_names
        k = len(classes) if classes is not None else cfg.model.out_channels
        names = f" ({', '.join(classes)})" if classes is not None else ""
        if cfg.model.out_channels != k:
            raise ConfigError(
                f"model.out_channels is {cfg.model.out_channels} but data.name "
                f"'{cfg.data.name}' has {k} classes{names}: set model.out_channels={k}"
            )
        given = cfg.data.class_names
        if given is not None and len(given) != k:
            raise ConfigError(
                f"data.class_names has {len(given)} names but data.name '{cfg.data.name}' has "
                f"{k} classes{names}: give {k} names or leave data.class_names unset"
            )
        weights = cfg.loss.class_weights
        if weights is not None and len(weights) != k:
            raise ConfigError(
                f"loss.class_weights has {len(weights)} weights for {k} classes: give one per "
                f"class (model.out_channels={k})"
            )
        if 0 <= cfg.data.ignore_index < k:
            raise ConfigError(
                f"data.ignore_index={cfg.data.ignore_index} is a class id (0..{k - 1}): set it "
                f"to an unused value such as 255"
            )
