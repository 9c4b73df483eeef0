"""DETR's set loss: Hungarian matching, then classification and box losses on the matched pairs.

For each decoder output (the last layer and, with auxiliary losses, every earlier one, keys
suffixed ``_0``, ``_1``, ...):

* ``loss_ce``: cross-entropy over all queries, unmatched ones labelled "no object", whose class
  weight is ``eos_coef`` (weighted mean, as ``F.cross_entropy`` with ``weight=``);
* ``loss_bbox``: L1 of the matched normalised cxcywh boxes, summed and divided by the number of
  target boxes (averaged over DDP ranks, at least 1);
* ``loss_giou``: ``1 - GIoU`` of the matched boxes, normalised the same way;
* ``class_error`` (last layer only) and ``cardinality_error``: logged, without gradient.

``"loss"`` is the weighted sum of the weighted terms, ready for ``.backward()``. Nothing in here
synchronises with the device except the matcher's one transfer of the cost matrix per output.
"""

from __future__ import annotations

import re

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_convert, generalized_box_iou_loss

from attnkit.models.detr.matcher import HungarianMatcher

__all__ = ["SetCriterion", "LOSS_NAMES"]

LOSS_NAMES = ("labels", "boxes", "cardinality")
_SUFFIX = re.compile(r"_\d+$")


def _num_boxes(sizes: list[int], device: torch.device) -> torch.Tensor:
    """Target boxes per rank (the mean over DDP ranks when distributed), at least 1; a tensor."""
    num = torch.tensor(float(sum(sizes)), device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(num)
        num = num / dist.get_world_size()
    return num.clamp(min=1)


class SetCriterion(nn.Module):
    """The DETR loss of a batch.

    Args:
        num_classes: class ids 0..num_classes-1; the logits' last index is "no object".
        matcher: a :class:`HungarianMatcher`.
        weight_dict: weight per loss name, e.g. ``{"loss_ce": 1, "loss_bbox": 5, "loss_giou":
            2}``; auxiliary terms (``loss_ce_0``) use their base name's weight unless given.
            Terms without a weight are returned but not added to ``"loss"``.
        eos_coef: class weight of "no object" in the cross-entropy.
        losses: which of ``"labels"``, ``"boxes"``, ``"cardinality"`` to compute.
    """

    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMatcher,
        weight_dict: dict[str, float],
        eos_coef: float = 0.1,
        losses: tuple[str, ...] | list[str] = LOSS_NAMES,
    ) -> None:
        super().__init__()
        unknown = sorted(set(losses) - set(LOSS_NAMES))
        if unknown:
            raise ValueError(f"unknown losses {unknown}; choose from {list(LOSS_NAMES)}")
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = dict(weight_dict)
        self.eos_coef = eos_coef
        self.losses = tuple(losses)
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight, persistent=False)

    def weight(self, name: str) -> float | None:
        """The weight of loss ``name`` (``loss_ce_3`` falls back to ``loss_ce``), or None."""
        if name in self.weight_dict:
            return self.weight_dict[name]
        return self.weight_dict.get(_SUFFIX.sub("", name))

    @staticmethod
    def _flat_indices(
        indices: list[tuple[torch.Tensor, torch.Tensor]], sizes: list[int], device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Matched pairs of the whole batch as ``(image, query, target)`` indices ``[M]`` each.

        ``target`` indexes the batch's concatenated targets. Built on the CPU, moved at once.
        """
        counts = torch.tensor([len(q) for q, _ in indices], dtype=torch.int64)
        offsets = torch.tensor([0, *sizes[:-1]], dtype=torch.int64).cumsum(0)  # [B]
        image = torch.repeat_interleave(torch.arange(len(indices)), counts)  # [M]
        query = torch.cat([torch.as_tensor(q, dtype=torch.int64) for q, _ in indices])  # [M]
        target = torch.cat([torch.as_tensor(t, dtype=torch.int64) for _, t in indices])  # [M]
        target = target + offsets[image]  # [M], into the concatenated targets
        flat = torch.stack([image, query, target]).to(device, non_blocking=True)  # [3, M]
        return flat[0], flat[1], flat[2]

    def _layer_losses(
        self,
        outputs: dict,
        targets: list[dict],
        labels: torch.Tensor,
        boxes: torch.Tensor,
        sizes: list[int],
        num_boxes: torch.Tensor,
        log: bool,
    ) -> dict[str, torch.Tensor]:
        """The losses of one decoder output against the batch's concatenated targets."""
        logits = outputs["pred_logits"].float()  # [B, Q, C + 1]
        image, query, target = self._flat_indices(
            self.matcher(outputs, targets), sizes, logits.device
        )  # [M] each
        out = {}
        if "labels" in self.losses:
            classes = torch.full(
                logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device
            )  # [B, Q], "no object" everywhere ...
            classes[image, query] = labels[target]  # ... except at matched queries
            out["loss_ce"] = F.cross_entropy(
                logits.transpose(1, 2), classes, weight=self.empty_weight
            )
            if log:
                with torch.no_grad():
                    if len(target):
                        hits = logits[image, query].argmax(-1) == labels[target]  # [M]
                        out["class_error"] = 100 - 100 * hits.float().mean()
                    else:
                        out["class_error"] = logits.new_tensor(100.0)
        if "cardinality" in self.losses:
            with torch.no_grad():
                predicted = (logits.argmax(-1) != self.num_classes).sum(1)  # [B]
                truth = torch.as_tensor(sizes, device=logits.device)  # [B]
                out["cardinality_error"] = F.l1_loss(predicted.float(), truth.float())
        if "boxes" in self.losses:
            src = outputs["pred_boxes"][image, query].float()  # [M, 4]
            tgt = boxes[target]  # [M, 4]
            out["loss_bbox"] = F.l1_loss(src, tgt, reduction="sum") / num_boxes
            out["loss_giou"] = (
                generalized_box_iou_loss(
                    box_convert(src, "cxcywh", "xyxy"),
                    box_convert(tgt, "cxcywh", "xyxy"),
                    reduction="sum",
                )
                / num_boxes
            )
        return out

    def forward(self, outputs: dict, targets: list[dict]) -> dict[str, torch.Tensor]:
        """Losses of DETR ``outputs`` against ``targets`` (``labels [T_i]``, ``boxes [T_i, 4]``).

        Returns every term (auxiliary ones suffixed ``_i`` for decoder layer i) and ``"loss"``,
        the weighted total.
        """
        device = outputs["pred_logits"].device
        sizes = [len(t["labels"]) for t in targets]
        labels = torch.cat([t["labels"] for t in targets]).to(device)  # [T]
        boxes = torch.cat([t["boxes"] for t in targets]).to(device).float()  # [T, 4]
        num_boxes = _num_boxes(sizes, device)
        losses = self._layer_losses(outputs, targets, labels, boxes, sizes, num_boxes, log=True)
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            layer = self._layer_losses(aux, targets, labels, boxes, sizes, num_boxes, log=False)
            losses.update({f"{k}_{i}": v for k, v in layer.items()})
        total = None
        for name, value in losses.items():
            w = self.weight(name)
            if w is None or not name.startswith("loss_"):
                continue
            total = w * value if total is None else total + w * value
        losses["loss"] = total if total is not None else outputs["pred_logits"].sum() * 0
        return losses
