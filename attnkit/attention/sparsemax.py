"""Sparsemax (Martins & Astudillo 2016): the Euclidean projection of the scores onto the simplex.

``sparsemax(z) = (z - tau)_+`` with ``tau`` such that the weights sum to one. Instead of the
full sort of the reference implementation, the threshold is found by exact support iteration
(Michelot 1986): from a lower bound of ``tau`` (so a superset ``S`` of the support),
``tau = (sum_S z - 1) / |S|`` and ``S = {z > tau}`` are repeated until ``S`` stops shrinking.
Each pass is a Newton step on ``f(tau) = sum (z - tau)_+ - 1`` from the left, so ``tau`` rises
monotonically to the exact threshold. The start is the threshold of the row's group maxima
(see ``initial_threshold``), usually already exact, and a row whose weights then sum to one is
done after a single pass. The backward pass is closed form (no graph through the iterations).

On CPU the same exact sparsemax runs by default in the fused kernel of
``attnkit.attention.kernels`` (one or two passes per row held in cache), and on CUDA in its
Triton kernels (rows of up to 16384 keys); this PyTorch path is the fallback (``ATTNKIT_NO_FUSED=1``
or ``ATTNKIT_NO_TRITON=1``, no compiler, no triton, longer rows) and is tested equal to them."""

from __future__ import annotations

import torch
from torch import nn

from attnkit.attention._threshold import Workspace, initial_threshold, shift_by_max, solve_rows
from attnkit.attention.entmax_vjp import recorded_backward
from attnkit.attention.kernels.functions import FusedSparsemax, use_fused
from attnkit.attention.kernels.triton_functions import TritonSparsemax, use_triton

__all__ = ["Sparsemax", "sparsemax", "sparsemax_threshold"]

# A row whose weights sum to one within this is done without a confirming pass: its threshold
# is within tol / |S| of the exact one (the usual case when the initial threshold was exact).
_SUM_TOL = 1e-6
_SUM_TOL_FLOAT64 = 1e-13


def sparsemax_threshold(shifted: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparsemax of max-shifted scores (row maximum 0, or all ``-inf`` for an empty row).

    Returns ``(weights [..., K], support_size [..., 1])`` in the dtype of ``shifted``.
    ``shifted`` is consumed: its memory may be reused for the weights.
    """
    num_keys = shifted.shape[-1]
    flat = shifted.reshape(-1, num_keys)  # [N, K]
    tau = initial_threshold(flat, 1.0)  # [N, 1], a lower bound (any start would do)
    state = {"tau": tau, "size": torch.full_like(tau, -1.0)}
    tol = _SUM_TOL_FLOAT64 if shifted.dtype == torch.float64 else _SUM_TOL

    def step(z, st, ws):
        return _michelot_step(z, st, ws, tol)

    weights, size = solve_rows(flat, state, step, num_keys + 2, step_cost=5.0, finish_cost=0.0)
    return weights.view(shifted.shape), size.view(*shifted.shape[:-1], 1)


def _michelot_step(
    scores: torch.Tensor, state: dict[str, torch.Tensor], workspace: Workspace, tol: float
):
    """One support-iteration pass; a row is done when its support did not change (then tau
    is the exact fixed point) or when its weights already sum to one (tau was exact)."""
    tau, size_prev = state["tau"], state["size"]  # [n, 1] each
    buffer = workspace.get("weights", scores.shape[0])
    torch.sub(scores, tau, out=buffer).clamp_min_(0)  # [n, K], (z - tau)_+
    excess = buffer.sum(dim=-1, keepdim=True) - 1  # [n, 1]
    size = buffer.sign_().sum(dim=-1, keepdim=True)  # [n, 1], |{z > tau}|; buffer now spent
    done = ((size == size_prev) | (excess.abs() <= tol)).squeeze(-1)  # [n]

    def finish(rows):
        # The weights at this step's tau, recomputed (cheaper than keeping a second buffer).
        if rows is None:
            return torch.sub(scores, tau, out=scores).clamp_min_(0), size
        z, t = scores.index_select(0, rows), tau.index_select(0, rows)
        return z.sub_(t).clamp_min_(0), size.index_select(0, rows)

    return done, {"tau": tau + excess / size.clamp_min(1), "size": size}, finish


class _SparsemaxFunction(torch.autograd.Function):
    """Sparsemax over the last dim with the closed-form backward ``g - mean_S(g)`` on ``S``."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor) -> torch.Tensor:
        shifted = shift_by_max(scores)  # [..., K]
        weights, size = sparsemax_threshold(shifted)
        out = weights.to(scores.dtype)
        ctx.save_for_backward(out, size)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        out, size = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: a backward that is itself differentiable
            return recorded_backward(out, grad, 2.0)[0]
        # A float 0/1 mask: elementwise ops on bool tensors are several times slower on CPU.
        on_support = torch.sign(out).to(size.dtype)  # [..., K]
        grad_in = grad.to(size.dtype) * on_support  # [..., K]
        mean = grad_in.sum(dim=-1, keepdim=True) / size.clamp_min(1)  # [..., 1]
        return grad_in.addcmul_(on_support, mean, value=-1.0).to(grad.dtype)


def sparsemax(scores: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Sparsemax over the last dim of ``scores [..., K]``.

    ``-inf`` entries get exactly zero weight; a row of only ``-inf`` gives zeros (and zero
    gradient). Half-precision input is computed in float32 and returned in its own dtype.
    ``backend``: ``"auto"`` (the fused kernel on CPU, Triton on CUDA, when available), ``"fused"``,
    ``"triton"`` or ``"torch"``.
    """
    if scores.numel() == 0:
        return scores.clone()
    if use_fused(scores, backend):
        return FusedSparsemax.apply(scores)
    if use_triton(scores, backend):
        return TritonSparsemax.apply(scores)
    return _SparsemaxFunction.apply(scores)


class Sparsemax(nn.Module):
    """Sparsemax normalizer module (see :func:`sparsemax`); ``key_grid`` is ignored."""

    name = "sparsemax"

    def forward(
        self, scores: torch.Tensor, key_grid: tuple[int, int] | None = None
    ) -> torch.Tensor:
        return sparsemax(scores)
