"""Semantic-segmentation loss: per-pixel cross-entropy over the pixels not marked ignored.

The mean is taken over the kept pixels (weighted by their class weights when given), as
`torch.nn.functional.cross_entropy` does, except that a batch with no kept pixel at all (a
nodata tile, padding only) gives a zero loss that still has a grad_fn instead of 0 / 0 = NaN, so
such a batch neither stops training nor poisons the weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SegmentationLoss"]


class SegmentationLoss(nn.Module):
    """Cross-entropy of logits ``[B, K, H, W]`` against class ids ``[B, H, W]``.

    ``ignore_index``: the label of pixels left out; ``label_smoothing`` in [0, 1) as in
    `torch.nn.functional.cross_entropy`; ``class_weights``: K non-negative weights, or None.
    """

    def __init__(
        self,
        ignore_index: int = 255,
        label_smoothing: float = 0.0,
        class_weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= float(label_smoothing) < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.ignore_index = int(ignore_index)
        self.label_smoothing = float(label_smoothing)
        weight = None
        if class_weights is not None:
            weight = torch.tensor([float(w) for w in class_weights], dtype=torch.float32)
            if weight.dim() != 1 or weight.numel() == 0 or bool((weight < 0).any()):
                raise ValueError(f"class_weights must be K weights >= 0, got {class_weights}")
        self.register_buffer("weight", weight, persistent=False)

    def forward(
        self,
        outputs: torch.Tensor | dict[str, torch.Tensor],
        targets: dict[str, torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        """``outputs``: logits ``[B, K, H, W]`` or a dict holding them under "logits";
        ``targets``: a dict with "labels" ``[B, H, W]`` (integer class ids).

        Returns ``loss`` and ``loss_ce`` (the same tensor) and ``pixel_acc``, the detached
        share of kept pixels whose argmax is right (0 when none is kept).
        """
        if isinstance(outputs, dict):
            if "logits" not in outputs:
                raise KeyError(f"outputs dict has no 'logits' key (keys: {sorted(outputs)})")
            outputs = outputs["logits"]
        if "labels" not in targets:
            raise KeyError(f"targets dict has no 'labels' key (keys: {sorted(targets)})")
        logits, labels = outputs, targets["labels"]
        if (
            logits.dim() != 4
            or labels.dim() != 3
            or labels.shape != logits.shape[:1] + logits.shape[2:]
        ):
            raise ValueError(
                f"logits [B, K, H, W] and labels [B, H, W] must agree, got "
                f"{tuple(logits.shape)} and {tuple(labels.shape)}"
            )
        k = logits.shape[1]
        if self.weight is not None and self.weight.numel() != k:
            raise ValueError(f"{self.weight.numel()} class weights for {k} classes")
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise TypeError(f"labels must hold integer class ids, got {labels.dtype}")
        labels = labels.to(device=logits.device, dtype=torch.int64)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # no fp16 overflow
        weight = None if self.weight is None else self.weight.to(logits.dtype)

        per_pixel = F.cross_entropy(
            logits,
            labels,
            weight=weight,
            ignore_index=self.ignore_index,
            reduction="none",
            label_smoothing=self.label_smoothing,
        )  # [B, H, W], 0 at ignored pixels
        keep = labels != self.ignore_index  # [B, H, W]
        if weight is None:
            denom = keep.sum().to(logits.dtype)
        else:  # the weight of each kept pixel's own class, as F.cross_entropy's "mean"
            denom = weight[torch.where(keep, labels, 0)].masked_fill(~keep, 0).sum()
        # No kept pixel: the sum is an exact zero (with a grad_fn); divide it by 1, not by 0.
        loss = per_pixel.sum() / torch.where(denom > 0, denom, torch.ones_like(denom))
        with torch.no_grad():
            right = ((logits.argmax(dim=1) == labels) & keep).sum()
            pixel_acc = right.to(torch.float32) / keep.sum().clamp(min=1)
        return {"loss": loss, "loss_ce": loss, "pixel_acc": pixel_acc}

    def extra_repr(self) -> str:
        weights = "" if self.weight is None else f", class_weights={self.weight.tolist()}"
        return f"ignore_index={self.ignore_index}, label_smoothing={self.label_smoothing}{weights}"
