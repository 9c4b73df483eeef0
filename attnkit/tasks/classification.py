"""Image classification: synthetic / CIFAR-10 / folder data, cross-entropy, top-k accuracy."""

from __future__ import annotations

import numpy as np

from attnkit.config import ConfigError
from attnkit.config.schema import ClassificationDataConfig, ClassificationLossConfig
from attnkit.data.classification import build_classification_dataset, collate_classification
from attnkit.errors import DataError
from attnkit.tasks.base import Task
from attnkit.tasks.classification_loss import ClassificationLoss
from attnkit.tasks.classification_metrics import ClassificationMetrics

__all__ = ["ClassificationEvaluator", "ClassificationTask"]


class ClassificationEvaluator:
    """Streams logits and labels into top-1 / top-5, per-class accuracy and the confusion."""

    def __init__(self, num_classes: int):
        self.metrics = ClassificationMetrics(num_classes)

    def update(self, outputs, batch) -> None:
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs  # [B, C]
        self.metrics.update(logits, batch.labels)

    def compute(self) -> dict:
        return self.metrics.compute()

    def artifacts(self) -> dict:
        return {}


class ClassificationTask(Task):
    """Images to one of ``model.num_classes`` labels."""

    name = "classification"
    data_schema = ClassificationDataConfig
    loss_schema = ClassificationLossConfig
    key_metric = "top1"

    def build_dataset(self, cfg, split, train=None):
        data = cfg.data
        return build_classification_dataset(
            data.name,
            split,
            train=split == "train" if train is None else train,
            root=data.root,
            num_train=data.num_train,
            num_val=data.num_val,
            seed=data.seed,
            image_size=data.image_size,
            pad=data.pad,
            hflip=data.hflip,
        )

    def collate(self, samples):
        return collate_classification(samples)

    def build_criterion(self, cfg):
        return ClassificationLoss(label_smoothing=cfg.loss.label_smoothing)

    def build_evaluator(self, cfg, dataset):
        return ClassificationEvaluator(cfg.model.num_classes)

    def check(self, cfg, dataset) -> None:
        """The model must have one output per class of the data, and every label a class.

        A class count that differs is a ConfigError (the config is wrong); a label outside
        ``0..model.num_classes - 1`` is a DataError (the data is), since cross-entropy would
        crash on it mid-epoch or, on some devices, train on garbage.
        """
        classes = getattr(dataset, "num_classes", None)
        if classes is not None and classes != cfg.model.num_classes:
            raise ConfigError(
                f"model.num_classes is {cfg.model.num_classes} but data.name "
                f"'{cfg.data.name}' has {classes} classes: set model.num_classes={classes}"
            )
        labels = getattr(dataset, "labels", None)  # in-memory datasets; folders label by folder
        if labels is None or len(labels) == 0:
            return
        labels, num_classes = np.asarray(labels), cfg.model.num_classes
        outside = np.flatnonzero((labels < 0) | (labels >= num_classes))
        if outside.size:
            where = getattr(dataset, "source", None) or f"data.name '{cfg.data.name}'"
            more = f" (and {outside.size - 1} more)" if outside.size > 1 else ""
            if labels.min() < 0:
                fix = "make every label >= 0"
            else:
                fix = f"fix the labels or set model.num_classes to at least {labels.max() + 1}"
            raise DataError(
                f"{where}: image {outside[0]} has label {labels[outside[0]]}{more} outside "
                f"0..{num_classes - 1} of model.num_classes={num_classes}: {fix}"
            )
