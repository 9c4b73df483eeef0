"""TVmax: sparsemax after 2-D total-variation smoothing of the scores over the key grid.

``tvmax(z) = sparsemax(prox_TV(z))`` with ``prox_TV(z) = argmin_y 0.5 ||y - z||^2 + lam *
sum_{grid neighbours i ~ j} |y_i - y_j|`` (anisotropic TV: horizontal and vertical neighbours),
from Martins, Farinhas, Treviso, Niculae, Aguiar, Figueiredo, "Sparse and Structured Visual
Attention" (ICIP 2021, arXiv:2002.05556). The TV step pulls neighbouring keys to equal scores,
so the sparse attention selects contiguous regions of the image instead of scattered pixels.

The keys of ``scores [..., K]`` lie row-major on ``key_grid = (h, w)`` (key ``row * w + col``,
``K = h * w``), as DETR flattens its feature map. Without a grid the keys form a 1-D chain
(``key_grid = (1, K)``; TVmax then reduces to fusedmax of Niculae & Blondel 2017). Keys masked
with ``-inf`` (the padding of DETR's feature map, or any other mask) get exactly zero weight and
are removed from the TV graph together with their edges; a fully masked row gives zeros.

Every leading dim is batched: all ``B * H * Q`` problems are solved together by the vectorised
solver of :mod:`attnkit.attention.tv_prox`. The backward pass is exact (group averaging of the
TV Jacobian, then the sparsemax Jacobian), not a backpropagation through solver iterations.
Half-precision scores are computed in float32 and returned in their own dtype.
"""

from __future__ import annotations

import torch
from torch import nn

from attnkit.attention._threshold import compute_dtype
from attnkit.attention.sparsemax import sparsemax
from attnkit.attention.tv_prox import group_mean, prox_tv2d_solve

__all__ = ["TVMax", "prox_tv2d", "tvmax"]

DEFAULT_LAM = 0.05
"""TV weight: the ``alpha = 0.1`` of the TVmax reference code used for DETR, whose 2-D TV prox
(``step_size = alpha / 2``) is this ``lam``."""


class _ProxTV2D(torch.autograd.Function):
    """``prox_TV`` whose backward pass averages the gradient over each fused group."""

    @staticmethod
    def forward(ctx, z, lam, tol, max_iter, check_every):
        res = prox_tv2d_solve(z.detach(), lam, tol, max_iter, check_every)
        ctx.save_for_backward(res.groups, res.group_size, z == float("-inf"))
        return res.y

    @staticmethod
    def backward(ctx, grad):
        groups, size, masked = ctx.saved_tensors
        g = grad.masked_fill(masked, 0.0).reshape(groups.shape)  # [N, K]
        g = group_mean(g, groups, size.to(g.dtype)).view_as(grad).masked_fill_(masked, 0.0)
        return g, None, None, None, None


def prox_tv2d(
    z: torch.Tensor,
    lam: float,
    tol: float = 1e-5,
    max_iter: int = 1000,
    check_every: int = 10,
) -> torch.Tensor:
    """Differentiable 2-D TV prox of ``z [N, h, w]`` (``-inf`` = masked, kept as ``-inf``).

    The backward pass averages the incoming gradient over each fused group of the solution
    (the Jacobian of the prox) and gives zero gradient to masked keys. Arguments as in
    :func:`attnkit.attention.tv_prox.prox_tv2d_solve`.
    """
    return _ProxTV2D.apply(z, float(lam), float(tol), int(max_iter), int(check_every))


def _grid(key_grid: tuple[int, int] | None, num_keys: int) -> tuple[int, int]:
    """Validate ``key_grid`` against ``K``; ``None`` means a 1-D chain ``(1, K)``."""
    if key_grid is None:
        return 1, num_keys
    try:
        h, w = (int(s) for s in key_grid)
    except (TypeError, ValueError):
        raise ValueError(f"key_grid must be a pair (h, w), got {key_grid!r}") from None
    if h < 1 or w < 1 or h * w != num_keys:
        raise ValueError(
            f"key_grid {(h, w)} does not match the {num_keys} keys of the scores (h * w != K)"
        )
    return h, w


def tvmax(
    scores: torch.Tensor,
    key_grid: tuple[int, int] | None = None,
    lam: float = DEFAULT_LAM,
    tol: float = 1e-5,
    max_iter: int = 1000,
) -> torch.Tensor:
    """TVmax over the last dim of ``scores [..., K]`` (see the module docstring).

    Args:
        scores: attention scores ``[..., K]``; ``-inf`` marks masked keys.
        key_grid: ``(h, w)`` with ``h * w == K``, or ``None`` for a 1-D chain of keys.
        lam: TV weight; ``0`` gives sparsemax. A large value makes the scores constant over
            each connected region of unmasked keys, hence the uniform distribution over the
            unmasked keys when they are connected (DETR's padding keeps them connected).
        tol: accuracy of the TV prox, certified per row by a duality gap: Euclidean distance
            to the exact prox (raised to what float32 can certify for half/float32 scores;
            see :func:`attnkit.attention.tv_prox.prox_tv2d_solve`).
        max_iter: iteration budget of the TV solver (a ``RuntimeWarning`` when exceeded).

    Returns:
        Weights ``[..., K]`` in the dtype of ``scores``: nonnegative, summing to one per row
        (zero for a fully masked row).
    """
    if lam < 0:
        raise ValueError(f"lam must be >= 0, got {lam}")
    num_keys = scores.shape[-1]
    h, w = _grid(key_grid, num_keys)
    z = scores.to(compute_dtype(scores.dtype)).reshape(-1, h, w)  # [N, h, w]
    if lam > 0:
        z = prox_tv2d(z, lam, tol, max_iter)  # [N, h, w], -inf stays at masked keys
    weights = sparsemax(z.reshape(scores.shape))  # [..., K]
    return weights.to(scores.dtype)


class TVMax(nn.Module):
    """TVmax normalizer: ``forward(scores [..., K], key_grid=None) -> weights [..., K]``.

    Args:
        num_heads: accepted for the registry's uniform signature; TVmax has no per-head
            parameters.
        lam: TV weight (default :data:`DEFAULT_LAM`).
        max_iter: iteration budget of the TV solver.
        tol: accuracy of the TV prox (see :func:`tvmax`).
        **kw: rejected with a ``TypeError`` that names the unknown option (a misspelt option
            must not silently fall back to a default).
    """

    name = "tvmax"

    def __init__(
        self,
        num_heads: int | None = None,
        lam: float = DEFAULT_LAM,
        max_iter: int = 1000,
        tol: float = 1e-5,
        **kw,
    ) -> None:
        super().__init__()
        if kw:
            raise TypeError(
                f"TVMax got unknown option(s) {', '.join(sorted(kw))}; "
                "valid options: num_heads, lam, max_iter, tol"
            )
        if lam < 0 or max_iter < 1 or tol <= 0:
            raise ValueError(
                f"TVMax needs lam >= 0, max_iter >= 1, tol > 0; got {lam}, {max_iter}, {tol}"
            )
        self.num_heads = num_heads
        self.lam = float(lam)
        self.max_iter = int(max_iter)
        self.tol = float(tol)

    def forward(
        self, scores: torch.Tensor, key_grid: tuple[int, int] | None = None
    ) -> torch.Tensor:
        return tvmax(scores, key_grid, self.lam, self.tol, self.max_iter)

    def extra_repr(self) -> str:
        return f"lam={self.lam}, max_iter={self.max_iter}, tol={self.tol}"
