"""Classification loss: cross-entropy (optionally label-smoothed) with a detached batch accuracy.

The returned dict follows the criterion convention of the training loop: `loss` is what gets
back-propagated, the other entries are logged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ClassificationLoss(nn.Module):
    """Cross-entropy over `[B, C]` logits and `[B]` integer labels.

    `label_smoothing` in [0, 1) is passed to `torch.nn.functional.cross_entropy`: the target
    becomes `(1 - eps) * one_hot + eps / C`, so the loss is
    `(1 - eps) * CE + eps * mean_c(-log p_c)`.
    """

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        label_smoothing = float(label_smoothing)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = label_smoothing

    def forward(
        self, outputs: torch.Tensor | dict[str, torch.Tensor], targets: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """`outputs`: logits [B, C] or a dict holding them under "logits"; `targets`: labels [B].

        Returns `loss` and `loss_ce` (the same tensor) and `accuracy`, the batch's top-1
        accuracy as a detached 0-dim tensor.
        """
        if isinstance(outputs, dict):
            if "logits" not in outputs:
                raise KeyError(f"outputs dict has no 'logits' key (keys: {sorted(outputs)})")
            logits = outputs["logits"]
        else:
            logits = outputs
        if logits.dim() != 2:
            raise ValueError(f"logits must have shape [B, C], got {tuple(logits.shape)}")
        if targets.dim() != 1 or targets.shape[0] != logits.shape[0]:
            raise ValueError(
                f"targets must have shape [{logits.shape[0]}] to match logits "
                f"{tuple(logits.shape)}, got {tuple(targets.shape)}"
            )
        targets = targets.to(device=logits.device, dtype=torch.int64)
        ce = F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)
        with torch.no_grad():
            accuracy = (logits.argmax(dim=1) == targets).to(torch.float32).mean()
        return {"loss": ce, "loss_ce": ce, "accuracy": accuracy.detach()}

    def extra_repr(self) -> str:
        return f"label_smoothing={self.label_smoothing}"
