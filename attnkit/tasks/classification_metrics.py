"""Streamed classification metrics: top-k accuracy, mean cross-entropy, per-class accuracy.

A validation loop calls `update(logits, labels)` once per batch and `compute()` once at the end.
Only small running sums are kept (hit counts, a float64 loss sum and a `C x C` confusion matrix
on the CPU), so the whole validation set is never held in memory, and uneven batch sizes give
the same result as a single pass over the concatenated data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


class ClassificationMetrics:
    """Top-k accuracy, mean cross-entropy, per-class accuracy and the confusion matrix.

    `topk` lists the k of the top-k accuracies; those larger than `num_classes` are dropped (a
    top-5 accuracy is meaningless with 3 classes). A sample is a top-k hit when its label is
    among the k indices returned by `torch.topk`; among tied logits `torch.topk` decides which
    indices are returned, so ties are not broken in the sample's favour. The top-1 prediction
    of the confusion matrix is the first index of that same `torch.topk` call, so `top1` always
    equals the confusion matrix's trace over its total.
    """

    def __init__(self, num_classes: int, topk: Sequence[int] = (1, 5)) -> None:
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        ks = sorted({int(k) for k in topk})
        if not ks or ks[0] < 1:
            raise ValueError(f"topk must be a non-empty list of integers >= 1, got {topk!r}")
        self.num_classes = int(num_classes)
        self.topk = tuple(k for k in ks if k <= self.num_classes)
        if not self.topk:
            raise ValueError(f"every k in topk={tuple(ks)} exceeds num_classes={num_classes}")
        self.reset()

    def reset(self) -> None:
        """Forget every batch seen so far."""
        self._hits = dict.fromkeys(self.topk, 0)
        self._loss_sum = 0.0  # a Python float is a float64
        self._confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)
        self._num_samples = 0

    @property
    def num_samples(self) -> int:
        """How many samples `update` has seen since the last `reset`."""
        return self._num_samples

    @torch.no_grad()
    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Add one batch: `logits` [B, C] (any float dtype, any device), `labels` [B] integers."""
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(
                f"logits must have shape [B, {self.num_classes}], got {tuple(logits.shape)}"
            )
        if labels.dim() != 1 or labels.shape[0] != logits.shape[0]:
            raise ValueError(
                f"labels must have shape [{logits.shape[0]}] to match logits "
                f"{tuple(logits.shape)}, got {tuple(labels.shape)}"
            )
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise TypeError(f"labels must be an integer tensor, got {labels.dtype}")
        if labels.numel() == 0:
            return
        labels = labels.to(device=logits.device, dtype=torch.int64)
        bad = (labels < 0) | (labels >= self.num_classes)
        if bool(bad.any()):
            label = int(labels[bad][0])
            raise ValueError(
                f"label {label} is out of range for num_classes={self.num_classes} "
                f"(valid labels are 0..{self.num_classes - 1})"
            )

        logits64 = logits.detach().to(torch.float64)  # [B, C]
        self._loss_sum += float(F.cross_entropy(logits64, labels, reduction="sum"))

        top = torch.topk(logits64, self.topk[-1], dim=1).indices  # [B, kmax]
        is_label = top == labels[:, None]  # [B, kmax]
        for k in self.topk:
            self._hits[k] += int(is_label[:, :k].any(dim=1).sum())

        pred = top[:, 0]  # [B]
        flat = labels * self.num_classes + pred  # [B] row = true class, column = predicted
        counts = torch.bincount(flat, minlength=self.num_classes**2)  # [C * C]
        self._confusion += counts.view(self.num_classes, self.num_classes).cpu()
        self._num_samples += int(labels.numel())

    def compute(self) -> dict[str, float | int | list]:
        """The metrics over every batch since the last `reset` (NaN everywhere when empty).

        Keys: `top{k}` for each kept k, `loss` (mean cross-entropy), `per_class_accuracy` (NaN
        for a class absent from the labels), `mean_class_accuracy` (their mean, NaN ignored),
        `confusion` (rows are true classes, columns predicted ones) and `num_samples`.
        """
        n = self._num_samples
        out: dict[str, float | int | list] = {}
        for k in self.topk:
            out[f"top{k}"] = self._hits[k] / n if n else math.nan
        out["loss"] = self._loss_sum / n if n else math.nan

        confusion = self._confusion.to(torch.float64)  # [C, C]
        support = confusion.sum(dim=1)  # [C]
        per_class = torch.where(
            support > 0, confusion.diagonal() / support.clamp(min=1), torch.nan
        )  # [C]
        present = per_class[~per_class.isnan()]
        out["per_class_accuracy"] = per_class.tolist()
        out["mean_class_accuracy"] = float(present.mean()) if present.numel() else math.nan
        out["confusion"] = self._confusion.tolist()
        out["num_samples"] = n
        return out
