"""Tasks: detection, classification, dense regression (losses, evaluators, collate).

``TASKS`` maps a task name to its :class:`~attnkit.tasks.base.Task`; a family names its task,
and :func:`task_of` finds the task of an experiment config through the family registry.
"""

from __future__ import annotations

import importlib

from attnkit.tasks.base import Evaluator, Task

__all__ = ["TASK_MODULES", "Evaluator", "Task", "build_criterion", "get_task", "task_of"]

TASK_MODULES = {
    "detection": "attnkit.tasks.detection:DetectionTask",
    "classification": "attnkit.tasks.classification:ClassificationTask",
    "dense_regression": "attnkit.tasks.dense:DenseRegressionTask",
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


def task_of(cfg) -> Task:
    """The task of an experiment config's family."""
    from attnkit.models.registry import family_of

    return get_task(family_of(cfg).task)


def build_criterion(cfg):
    """The loss module of ``cfg``'s task with ``cfg.loss`` (``criterion(outputs, targets)``)."""
    return task_of(cfg).build_criterion(cfg)
