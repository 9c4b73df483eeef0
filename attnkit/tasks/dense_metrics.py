"""Streamed dense-regression metrics over valid pixels: MAE, RMSE, R^2, bias, per-bin errors.

`update(pred, target, valid)` reduces each batch, in float64 on the inputs' device, to a few
sums that are then added on the CPU, so the validation set is never held in memory. The target
variance for R^2 is merged batch by batch with Chan et al.'s pairwise update (count, mean and
centred sum of squares) rather than as `sum(y^2) - sum(y)^2 / n`, which loses digits to
cancellation when the targets' mean is large next to their spread.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from attnkit.tasks.dense_loss import dense_inputs


class DenseRegressionMetrics:
    """MAE, RMSE, R^2 and bias (mean of prediction - target) over every valid pixel seen.

    With `bins` (strictly increasing edges `b0 < ... < bn`) the errors are also split by the
    TARGET value into the half-open bins (-inf, b0), [b0, b1), ..., [bn, inf).
    """

    def __init__(self, bins: Sequence[float] | None = None) -> None:
        if bins is not None:
            edges = [float(b) for b in bins]
            if not edges:
                raise ValueError("bins must hold at least one edge (or be None)")
            if any(not math.isfinite(b) for b in edges):
                raise ValueError(f"bin edges must be finite, got {edges}")
            if any(a >= b for a, b in zip(edges, edges[1:])):
                raise ValueError(f"bin edges must be strictly increasing, got {edges}")
            self.bins: list[float] | None = edges
        else:
            self.bins = None
        self.reset()

    def reset(self) -> None:
        """Forget every batch seen so far."""
        self._n = 0
        self._mean_y = 0.0  # running mean of the targets
        self._m2_y = 0.0  # running sum of squared deviations of the targets from their mean
        # [sum |e|, sum e^2, sum e] with e = pred - target
        self._err = torch.zeros(3, dtype=torch.float64)
        nbins = 0 if self.bins is None else len(self.bins) + 1
        self._bin_count = torch.zeros(nbins, dtype=torch.int64)
        self._bin_err = torch.zeros(3, nbins, dtype=torch.float64)  # rows as in _err

    @property
    def num_pixels(self) -> int:
        """How many valid pixels `update` has seen since the last `reset`."""
        return self._n

    @torch.no_grad()
    def update(
        self, pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None
    ) -> None:
        """Add one batch: `pred` and `target` [B, 1, H, W] or [B, H, W], `valid` a bool mask of
        the same spatial shape (None: the finite target pixels). Invalid pixels are dropped
        before any arithmetic, so NaN there is harmless.
        """
        p, t, v = dense_inputs(pred.detach(), target.detach(), valid)
        y = t[v].to(torch.float64)  # [N] valid targets
        e = p[v].to(torch.float64) - y  # [N] errors
        n_b = int(y.numel())
        if n_b == 0:
            return

        err = torch.stack([e.abs().sum(), e.square().sum(), e.sum()]).cpu()  # [3]
        mean_b = y.mean()
        m2_b = (y - mean_b).square().sum()
        mean_b, m2_b = float(mean_b), float(m2_b)

        n_a = self._n
        n = n_a + n_b
        delta = mean_b - self._mean_y
        self._mean_y += delta * n_b / n
        self._m2_y += m2_b + delta * delta * n_a * n_b / n
        self._n = n
        self._err += err

        if self.bins is not None:
            edges = torch.tensor(self.bins, dtype=torch.float64, device=y.device)  # [nb - 1]
            # right=True: edges[i-1] <= y < edges[i] -> index i, i.e. bins are [lo, hi).
            idx = torch.bucketize(y, edges, right=True)  # [N] in 0..nb-1
            nb = len(self.bins) + 1
            self._bin_count += torch.bincount(idx, minlength=nb).cpu()
            parts = torch.stack([e.abs(), e.square(), e])  # [3, N]
            sums = torch.zeros(3, nb, dtype=torch.float64, device=y.device)
            sums.index_add_(1, idx, parts)  # [3, nb]
            self._bin_err += sums.cpu()

    def compute(self) -> dict[str, float | int | list]:
        """The metrics over every valid pixel since the last `reset`.

        Keys: `mae`, `rmse`, `r2` (1 - SS_res / SS_tot; NaN when the targets are constant),
        `bias`, `num_pixels`, and with bins `per_bin`: one dict per bin with `lo`, `hi`,
        `count`, `mae`, `rmse`, `bias` (NaN for an empty bin). Everything is NaN when empty.
        """
        n = self._n
        abs_sum, sq_sum, err_sum = self._err.tolist()
        out: dict[str, float | int | list] = {
            "mae": abs_sum / n if n else math.nan,
            "rmse": math.sqrt(sq_sum / n) if n else math.nan,
            "r2": 1.0 - sq_sum / self._m2_y if n and self._m2_y > 0 else math.nan,
            "bias": err_sum / n if n else math.nan,
            "num_pixels": n,
        }
        if self.bins is not None:
            los = [-math.inf, *self.bins]
            his = [*self.bins, math.inf]
            per_bin = []
            for i, (lo, hi) in enumerate(zip(los, his)):
                c = int(self._bin_count[i])
                a, s, b = self._bin_err[:, i].tolist()
                per_bin.append(
                    {
                        "lo": lo,
                        "hi": hi,
                        "count": c,
                        "mae": a / c if c else math.nan,
                        "rmse": math.sqrt(s / c) if c else math.nan,
                        "bias": b / c if c else math.nan,
                    }
                )
            out["per_bin"] = per_bin
        return out
