"""Dense (per-pixel) regression loss over the valid pixels only.

Dense targets such as heights or depths have nodata areas, often stored as NaN. The loss is the
mean over valid pixels; invalid pixels are replaced with zeros by `torch.where` before any
arithmetic, so a NaN there never meets a multiplication (NaN * 0 is NaN, also in the backward
pass) and neither the loss nor its gradient can become NaN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

KINDS = ("l1", "l2", "smooth_l1")


def _squeeze_channel(x: torch.Tensor, name: str) -> torch.Tensor:
    """[B, 1, H, W] or [B, H, W] -> [B, H, W]."""
    if x.dim() == 4:
        if x.shape[1] != 1:
            raise ValueError(f"{name} must have one channel, got shape {tuple(x.shape)}")
        return x[:, 0]  # [B, H, W]
    if x.dim() != 3:
        raise ValueError(f"{name} must have shape [B, 1, H, W] or [B, H, W], got {tuple(x.shape)}")
    return x


def dense_inputs(
    pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Check and flatten a prediction, a target and a validity mask to [B, H, W] each.

    `valid` may be bool or integer (nonzero = valid); None means every finite target pixel is
    valid. Shapes that disagree raise a ValueError naming both.
    """
    p = _squeeze_channel(pred, "prediction")
    t = _squeeze_channel(target, "target")
    if p.shape != t.shape:
        raise ValueError(
            f"prediction shape {tuple(pred.shape)} does not match target shape "
            f"{tuple(target.shape)} (batch and spatial sizes must agree)"
        )
    if valid is None:
        v = torch.isfinite(t)
    else:
        if valid.dtype.is_floating_point or valid.dtype.is_complex:
            raise TypeError(f"valid must be a bool (or integer) mask, got {valid.dtype}")
        v = _squeeze_channel(valid, "valid")
        if v.shape != t.shape:
            raise ValueError(
                f"valid mask shape {tuple(valid.shape)} does not match target shape "
                f"{tuple(target.shape)}"
            )
        v = v.to(device=t.device) != 0
    return p, t.to(p.device), v.to(p.device)


class DenseRegressionLoss(nn.Module):
    """Mean per-pixel L1, L2 or smooth-L1 error over the valid pixels.

    `beta` is smooth-L1's switch point from quadratic to linear (ignored by the other kinds).
    The loss is computed in at least float32 so half-precision predictions do not overflow.
    """

    def __init__(self, kind: str = "l1", beta: float = 1.0) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if not float(beta) > 0.0:
            raise ValueError(f"beta must be > 0, got {beta}")
        self.kind = kind
        self.beta = float(beta)

    def forward(
        self,
        outputs: torch.Tensor | dict[str, torch.Tensor],
        targets: dict[str, torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        """`outputs`: prediction [B, 1, H, W] / [B, H, W] or a dict with "pred"; `targets`: a
        dict with "target" (same shape, float, anything at invalid pixels) and "valid" (bool,
        True where the target is known; if absent, the finite target pixels).

        Returns `loss` and `loss_<kind>` (the same tensor). With no valid pixel the loss is a
        zero that still has a grad_fn, so a training step can back-propagate it.
        """
        if isinstance(outputs, dict):
            if "pred" not in outputs:
                raise KeyError(f"outputs dict has no 'pred' key (keys: {sorted(outputs)})")
            outputs = outputs["pred"]
        if "target" not in targets:
            raise KeyError(f"targets dict has no 'target' key (keys: {sorted(targets)})")
        pred, target, valid = dense_inputs(outputs, targets["target"], targets.get("valid"))

        dtype = torch.promote_types(pred.dtype, torch.float32)
        zero = torch.zeros((), dtype=dtype, device=pred.device)
        # Both sides are zero at invalid pixels, so their difference there is exactly 0.
        p = torch.where(valid, pred.to(dtype), zero)  # [B, H, W]
        t = torch.where(valid, target.to(dtype), zero)  # [B, H, W]
        if self.kind == "l1":
            per_pixel = F.l1_loss(p, t, reduction="none")
        elif self.kind == "l2":
            per_pixel = F.mse_loss(p, t, reduction="none")
        else:
            per_pixel = F.smooth_l1_loss(p, t, reduction="none", beta=self.beta)
        count = valid.sum().clamp(min=1).to(dtype)
        loss = per_pixel.sum() / count
        return {"loss": loss, f"loss_{self.kind}": loss}

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}" + (f", beta={self.beta}" if self.kind == "smooth_l1" else "")
