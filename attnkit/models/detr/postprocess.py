"""Turn DETR outputs into scored detections in original-image pixels (for COCO evaluation)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_convert

__all__ = ["PostProcess"]


class PostProcess(nn.Module):
    """Per query: the most probable real class (softmax, "no object" dropped) and its box.

    Boxes become absolute ``(x0, y0, x1, y1)`` in each image's original size, since the
    predictions are normalised to the image and the resize kept its aspect ratio.
    """

    @torch.no_grad()
    def forward(
        self, outputs: dict, target_sizes: torch.Tensor | list[dict]
    ) -> list[dict[str, torch.Tensor]]:
        """``outputs`` of DETR; ``target_sizes`` ``[B, 2]`` (h, w) or the targets (``orig_size``).

        Returns one ``{"scores": [Q], "labels": [Q], "boxes": [Q, 4]}`` per image.
        """
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]  # [B, Q, C+1], [B, Q, 4]
        if isinstance(target_sizes, (list, tuple)):
            target_sizes = torch.stack([torch.as_tensor(t["orig_size"]) for t in target_sizes])
        target_sizes = target_sizes.to(boxes.device)
        if target_sizes.shape != (logits.shape[0], 2):
            raise ValueError(
                f"target_sizes must be [B={logits.shape[0]}, 2] (h, w), "
                f"got {tuple(target_sizes.shape)}"
            )
        prob = F.softmax(logits.float(), -1)  # [B, Q, C+1]
        scores, labels = prob[..., :-1].max(-1)  # [B, Q] each
        h, w = target_sizes.float().unbind(1)  # [B] each
        scale = torch.stack([w, h, w, h], dim=1)  # [B, 4]
        xyxy = box_convert(boxes.float(), "cxcywh", "xyxy") * scale[:, None, :]  # [B, Q, 4]
        return [{"scores": s, "labels": lab, "boxes": b} for s, lab, b in zip(scores, labels, xyxy)]
