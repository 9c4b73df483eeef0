"""Streamed semantic-segmentation metrics from one confusion matrix: mIoU, per-class IoU, pixel
accuracy and mean class accuracy.

`update(pred, target)` adds each batch's pixels to a ``[K, K]`` int64 confusion matrix (rows:
the target class, columns: the predicted one) with one `torch.bincount` on the inputs' device,
so neither the predictions nor the targets are kept and there is no host sync beyond a range
check. Pixels labelled ``ignore_index`` are left out of everything. Every metric is then read
off the matrix in `compute`:

- IoU of class k = TP_k / (TP_k + FP_k + FN_k), NaN for a class that appears neither in the
  targets nor in the predictions (nothing to score); mIoU is the mean over the other classes;
- pixel accuracy = sum TP / all counted pixels;
- class accuracy of k = TP_k / (pixels of class k), NaN for a class absent from the targets;
  mean class accuracy is the mean over the classes present.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["SegmentationMetrics", "confusion_scores"]


def _nanmean(values: torch.Tensor) -> float:
    """The mean of the non-NaN entries, NaN when there are none."""
    kept = values[~values.isnan()]
    return float(kept.mean()) if kept.numel() else math.nan


def confusion_scores(confusion: torch.Tensor) -> dict[str, float | list[float]]:
    """Every metric of a ``[K, K]`` confusion matrix (rows target, columns prediction).

    Returns ``miou``, ``pixel_acc``, ``mean_class_acc`` (floats, NaN when nothing was counted)
    and ``iou_per_class`` / ``acc_per_class`` (lists of K floats, NaN where undefined).
    """
    cm = confusion.detach().to("cpu", torch.float64)  # [K, K]
    tp = cm.diagonal()  # [K]
    in_target, in_pred = cm.sum(dim=1), cm.sum(dim=0)  # [K] each
    union = in_target + in_pred - tp  # [K]
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.nan)  # [K]
    acc = torch.where(in_target > 0, tp / in_target.clamp(min=1), torch.nan)  # [K]
    total = float(cm.sum())
    return {
        "miou": _nanmean(iou),
        "pixel_acc": float(tp.sum()) / total if total else math.nan,
        "mean_class_acc": _nanmean(acc),
        "iou_per_class": iou.tolist(),
        "acc_per_class": acc.tolist(),
    }


class SegmentationMetrics:
    """A streamed confusion matrix over ``num_classes`` classes and the metrics read off it.

    ``ignore_index`` is the target label that counts nowhere (nodata, batch padding).
    """

    def __init__(self, num_classes: int, ignore_index: int | None = 255) -> None:
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        """Forget every batch seen so far."""
        self._confusion: torch.Tensor | None = None  # [K, K] int64 on the first batch's device

    @property
    def confusion(self) -> torch.Tensor:
        """The ``[K, K]`` int64 confusion matrix so far (rows target, columns prediction)."""
        if self._confusion is None:
            return torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)
        return self._confusion

    @property
    def num_pixels(self) -> int:
        """How many (not ignored) pixels `update` has counted since the last `reset`."""
        return int(self.confusion.sum())

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Count one batch: ``pred`` logits ``[B, K, H, W]`` (argmax over K) or class ids
        ``[B, H, W]``; ``target`` class ids ``[B, H, W]`` (``ignore_index`` where unknown).

        A target id outside ``0..K-1`` that is not ``ignore_index`` is a ValueError.
        """
        k = self.num_classes
        if pred.dim() == 4:
            if pred.shape[1] != k:
                raise ValueError(
                    f"prediction has {pred.shape[1]} channels but there are {k} classes "
                    f"(shape {tuple(pred.shape)})"
                )
            pred = pred.argmax(dim=1)  # [B, K, H, W] -> [B, H, W]
        if pred.shape != target.shape:
            raise ValueError(
                f"prediction shape {tuple(pred.shape)} (classes dropped) does not match target "
                f"shape {tuple(target.shape)}"
            )
        if target.dtype.is_floating_point or target.dtype == torch.bool:
            raise TypeError(f"target must hold integer class ids, got {target.dtype}")
        target = target.to(device=pred.device, dtype=torch.int64)
        pred = pred.to(torch.int64)
        keep = torch.ones_like(target, dtype=torch.bool)
        if self.ignore_index is not None:
            keep = target != self.ignore_index  # [B, H, W]
        t, p = target[keep], pred[keep]  # [N] each, the counted pixels
        bad, bad_pred = (t < 0) | (t >= k), (p < 0) | (p >= k)
        if bool(bad.any() | bad_pred.any()):  # one host sync per batch
            if bool(bad.any()):
                raise ValueError(
                    f"target class id {int(t[bad][0])} is outside 0..{k - 1} and is not the "
                    f"ignore index {self.ignore_index}"
                )
            raise ValueError(f"predicted class id {int(p[bad_pred][0])} is outside 0..{k - 1}")
        counts = torch.bincount(t * k + p, minlength=k * k)  # [K * K]
        counts = counts.view(k, k)  # [K, K]
        if self._confusion is None:
            self._confusion = counts.clone()
        else:
            self._confusion += counts.to(self._confusion.device)

    def compute(self) -> dict[str, float | int | list[float]]:
        """``miou``, ``pixel_acc``, ``mean_class_acc``, ``iou_per_class``, ``acc_per_class``
        (see :func:`confusion_scores`) and ``num_pixels``, over every batch since `reset`."""
        return {**confusion_scores(self.confusion), "num_pixels": self.num_pixels}

    def class_scores(self, names: Sequence[str] | None = None) -> list[dict]:
        """One JSON-able row per class: name, IoU and accuracy (None where undefined), and
        the pixels of the class in the targets and in the predictions."""
        names = list(names) if names is not None else [str(i) for i in range(self.num_classes)]
        scores = confusion_scores(self.confusion)
        cm = self.confusion.cpu()

        def finite(x: float) -> float | None:
            return None if math.isnan(x) else x

        return [
            {
                "class": names[i],
                "iou": finite(scores["iou_per_class"][i]),
                "accuracy": finite(scores["acc_per_class"][i]),
                "target_pixels": int(cm[i].sum()),
                "predicted_pixels": int(cm[:, i].sum()),
            }
            for i in range(self.num_classes)
        ]
