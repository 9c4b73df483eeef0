"""What a task is: data, batches, a criterion and a streamed evaluator behind one interface.

A family names its task (``detection``, ``classification``, ``dense_regression``); the
training loop, ``attnkit eval`` and ``attnkit analyze`` talk only to this interface:

- ``task.build_dataset(cfg, split, train)`` and ``task.collate(samples) -> batch``, where every
  batch has ``inputs`` (a dict: the model is called as ``model(**batch.inputs)``), ``targets``
  (whatever the criterion and evaluator take), ``to(device)`` and ``len()``;
- ``task.build_criterion(cfg)``: ``criterion(outputs, batch.targets)`` returns a dict of scalar
  tensors with ``"loss"`` (the one to minimise) among them;
- ``task.build_evaluator(cfg, dataset)``: an :class:`Evaluator` that streams over the validation
  set (``update`` per batch, ``compute`` once) and keeps no per-image tensors it does not need.
"""

from __future__ import annotations

from typing import Any, Protocol

from torch import nn
from torch.utils.data import Dataset

__all__ = ["Evaluator", "Task"]


class Evaluator(Protocol):
    """Streamed task metrics over one pass of a loader.

    Optional: a method ``predict(model, batch) -> outputs``. When an evaluator has it,
    ``run_evaluation`` calls it instead of ``model(**batch.inputs)`` (sliding-window prediction
    of large rasters, test-time augmentation), so no shared code branches on a task.
    """

    def update(self, outputs: Any, batch: Any) -> None:
        """Add one batch: the model's outputs and the batch they came from."""

    def compute(self) -> dict[str, Any]:
        """The metrics (floats, or lists for per-class tables) over every batch so far."""

    def artifacts(self) -> dict[str, Any]:
        """Extra JSON files ``attnkit eval`` writes (``{"detections.json": [...]}``), or {}."""


class Task:
    """Base class of the tasks; subclasses set the class attributes and the four builders."""

    name: str = ""
    data_schema: type
    loss_schema: type
    key_metric: str = "loss"  # the metric progress lines and summaries lead with
    higher_is_better: bool = True

    def build_dataset(self, cfg, split: str, train: bool | None = None) -> Dataset:
        """The dataset of ``split`` ("train" / "val" or a named split) with the task's transforms."""
        raise NotImplementedError

    def collate(self, samples: list) -> Any:
        """A batch (``inputs``, ``targets``, ``to``, ``len``) from a list of dataset items."""
        raise NotImplementedError

    def build_criterion(self, cfg) -> nn.Module:
        """The loss module: ``criterion(outputs, batch.targets) -> {"loss": ..., ...}``."""
        raise NotImplementedError

    def build_evaluator(self, cfg, dataset: Dataset) -> Evaluator:
        """A fresh :class:`Evaluator` over ``dataset`` (the unwrapped dataset, for metadata)."""
        raise NotImplementedError

    def check(self, cfg, dataset: Dataset) -> None:
        """Raise a ``ConfigError`` when ``cfg``'s model cannot serve ``dataset`` (default: ok)."""
