"""DETR's Hungarian matcher: a one-to-one assignment of predictions to ground-truth objects.

The cost of assigning query q to target t (DESIGN.md) is

    cost_class * (-p_q(class_t)) + cost_bbox * L1(box_q, box_t) + cost_giou * (-GIoU(box_q, box_t))

with boxes in normalised cxcywh for the L1 term and xyxy for the GIoU. The costs of the whole
batch are computed at once on the device (every query against every target of the batch); the
per-image blocks then go to the CPU once for ``scipy.optimize.linear_sum_assignment``.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn
from torchvision.ops import box_convert, generalized_box_iou

__all__ = ["HungarianMatcher", "cost_terms"]


def _batch_costs(
    outputs: dict, targets: list[dict]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
    """The unweighted class, L1 and GIoU costs ``[B, Q, T]`` against all T targets of the batch.

    Also returns the number of targets of each image (the column blocks of each image).
    """
    logits = outputs["pred_logits"]  # [B, Q, C + 1]
    B, Q = logits.shape[:2]
    prob = logits.flatten(0, 1).float().softmax(-1)  # [B*Q, C + 1]
    boxes = outputs["pred_boxes"].flatten(0, 1).float()  # [B*Q, 4]
    sizes = [len(t["boxes"]) for t in targets]
    tgt_ids = torch.cat([t["labels"] for t in targets]).to(logits.device)  # [T]
    tgt_boxes = torch.cat([t["boxes"] for t in targets]).to(boxes)  # [T, 4]
    cost_class = -prob[:, tgt_ids]  # [B*Q, T]
    cost_bbox = torch.cdist(boxes, tgt_boxes, p=1)  # [B*Q, T]
    cost_giou = -generalized_box_iou(
        box_convert(boxes, "cxcywh", "xyxy"), box_convert(tgt_boxes, "cxcywh", "xyxy")
    )  # [B*Q, T]
    T = tgt_ids.shape[0]
    return (
        cost_class.view(B, Q, T),
        cost_bbox.view(B, Q, T),
        cost_giou.view(B, Q, T),
        sizes,
    )


def _per_image(cost: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    """Each image's own block ``[Q, T_i]`` of a batch cost ``[B, Q, T]``."""
    return [block[i] for i, block in enumerate(cost.split(sizes, dim=-1))]


@torch.no_grad()
def cost_terms(outputs: dict, targets: list[dict]) -> list[dict[str, torch.Tensor]]:
    """The three unweighted matching costs per image, for plotting.

    Returns one dict per image with ``"class"`` (``-p(class)``), ``"bbox"`` (L1 of cxcywh) and
    ``"giou"`` (``-GIoU``), each ``[Q, T_i]``; the matcher's cost is their weighted sum.
    """
    cost_class, cost_bbox, cost_giou, sizes = _batch_costs(outputs, targets)
    per_image = zip(
        _per_image(cost_class, sizes), _per_image(cost_bbox, sizes), _per_image(cost_giou, sizes)
    )
    return [{"class": c, "bbox": b, "giou": g} for c, b, g in per_image]


class HungarianMatcher(nn.Module):
    """Match each image's targets to its queries at minimal total cost (DETR).

    Args:
        cost_class: weight of ``-p(class)``.
        cost_bbox: weight of the L1 distance of the normalised cxcywh boxes.
        cost_giou: weight of ``-GIoU``.
    """

    def __init__(self, cost_class: float = 1.0, cost_bbox: float = 5.0, cost_giou: float = 2.0):
        super().__init__()
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("the matcher needs at least one non-zero cost")
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou

    def _cost(self, outputs: dict, targets: list[dict]) -> tuple[torch.Tensor, list[int]]:
        """The weighted cost ``[B, Q, T]`` against all targets of the batch, and ``T_i``."""
        cost_class, cost_bbox, cost_giou, sizes = _batch_costs(outputs, targets)
        cost = (
            self.cost_class * cost_class + self.cost_bbox * cost_bbox + self.cost_giou * cost_giou
        )  # [B, Q, T]
        return cost, sizes

    @torch.no_grad()
    def cost_matrices(self, outputs: dict, targets: list[dict]) -> list[torch.Tensor]:
        """The weighted matching cost of each image, ``[Q, T_i]`` (on the outputs' device)."""
        return _per_image(*self._cost(outputs, targets))

    @torch.no_grad()
    def forward(
        self, outputs: dict, targets: list[dict]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Assign queries to targets.

        Args:
            outputs: ``{"pred_logits": [B, Q, C + 1], "pred_boxes": [B, Q, 4]}``.
            targets: per image ``{"labels": [T_i], "boxes": [T_i, 4]}`` (normalised cxcywh).

        Returns:
            Per image ``(query_idx, target_idx)``, int64 CPU tensors of length
            ``min(Q, T_i)``: query ``query_idx[k]`` is matched to target ``target_idx[k]``.
        """
        cost, sizes = self._cost(outputs, targets)
        indices = []
        for block in _per_image(cost.cpu(), sizes):  # the one host transfer of the batch
            rows, cols = linear_sum_assignment(block.numpy())
            indices.append(
                (
                    torch.as_tensor(rows.astype(np.int64)),
                    torch.as_tensor(cols.astype(np.int64)),
                )
            )
        return indices

    def extra_repr(self) -> str:
        return (
            f"cost_class={self.cost_class}, cost_bbox={self.cost_bbox}, cost_giou={self.cost_giou}"
        )
