"""Tasks: detection, classification, dense regression and segmentation (losses, evaluators,
collate).

``TASK_MODULES`` maps a task name to its :class:`~attnkit.tasks.base.Task`; a family names its
default task (and any others it can do), and :func:`task_of` finds the task of an experiment
config: its root key ``task`` when set, else its family's default.
"""

from __future__ import annotations

import importlib

from attnkit.tasks.base import Evaluator, Task

__all__ = [
    "TASK_MODULES",
    "Evaluator",
    "Task",
    "build_criterion",
    "get_task",
    "task_name",
    "task_of",
]

TASK_MODULES = {
    "detection": "attnkit.tasks.detection:DetectionTask",
    "classification": "attnkit.tasks.classification:ClassificationTask",
    "dense_regression": "attnkit.tasks.dense:DenseRegressionTask",
    "dense_segmentation": "attnkit.tasks.segmentation:SegmentationTask",
}
"""Task name -> ``module:class``, imported on first use."""
_INSTANCES: dict[str, Task] = {}


def get_task(name: str) -> Task:
    """The task called ``name`` (one of :data:`TASK_MODULES`)."""
    if name not in _INSTANCES:
        if name not in TASK_MODULES:
            raise ValueError(f"unknown task {name!r}: known tasks are {', '.join(TASK_MODULES)}")
        module, _, attr = TASK_MODULES[name].partition(":")
        _INSTANCES[name] = getattr(importlib.import_module(module), attr)()
    return _INSTANCES[name]


def task_name(cfg) -> str:
    """The name of an experiment config's task: ``cfg.task``, or its family's default task.

    Configs read before the root key ``task`` existed (old checkpoints) have none: the default.
    """
    from attnkit.models.registry import family_of

    return getattr(cfg, "task", None) or family_of(cfg).task


def task_of(cfg) -> Task:
    """The task of an experiment config (see :func:`task_name`)."""
    return get_task(task_name(cfg))


def build_criterion(cfg):
    """The loss module of ``cfg``'s task with ``cfg.loss`` (``criterion(outputs, targets)``)."""
    return task_of(cfg).build_criterion(cfg)
