"""Entmax-1.5 (Peters, Niculae & Martins 2019): alpha-entmax with alpha = 1.5.

``entmax15(z) = (z / 2 - tau)_+ ** 2`` with ``tau`` such that the weights sum to one. Instead of
the full sort of the reference implementation, the threshold is found with Newton steps on
``F(tau) = ||(z / 2 - tau)_+||_2 - 1``, which is convex and decreasing, so the steps started
left of the root (from the threshold of the row's group maxima, see ``initial_threshold``) stay
left of it and the candidate support ``{z / 2 > tau}`` only shrinks. Once the steps are small
the support is final and ``tau`` is solved exactly on it from ``sum_S (z / 2 - tau)^2 = 1`` (a
quadratic): keys outside the support get exact zeros. The backward pass is closed form (no
graph through the iterations).

On CPU the same exact entmax-1.5 runs by default in the fused kernel of
``attnkit.attention.kernels``, and on CUDA in its Triton kernels (rows of up to 16384 keys); this
PyTorch path is the fallback (``ATTNKIT_NO_FUSED=1`` or ``ATTNKIT_NO_TRITON=1``, no compiler, no
triton, longer rows) and is tested equal to them."""

from __future__ import annotations

import torch
from torch import nn

from attnkit.attention._threshold import (
    Workspace,
    initial_threshold,
    shift_by_max,
    solve_rows,
    tiny,
)
from attnkit.attention.entmax_vjp import (
    output_for_double_backward,
    recorded_backward,
    require_output,
)
from attnkit.attention.kernels.functions import FusedEntmax15, use_fused
from attnkit.attention.kernels.triton_functions import TritonEntmax15, use_triton

__all__ = ["Entmax15", "entmax15", "entmax15_threshold"]

_MAX_STEPS = 100
# Newton stops when its step is below this. The exact solve on the final support then leaves an
# error of about (number of extra keys) * step ** 2, so a loose tolerance is enough.
_STEP_TOL = 1e-4
_STEP_TOL_FLOAT64 = 1e-9


def entmax15_threshold(shifted: torch.Tensor) -> torch.Tensor:
    """Square root of entmax-1.5 of max-shifted scores (row maximum 0, or all ``-inf``).

    Returns ``root [..., K]`` with ``root ** 2`` the entmax-1.5 weights: the root is what the
    backward pass needs, and squaring it is cheap.
    """
    num_keys = shifted.shape[-1]
    flat = shifted.reshape(-1, num_keys)  # [N, K]
    state = {"tau": initial_threshold(flat, 0.5)}  # [N, 1], left of the root
    tol = _STEP_TOL_FLOAT64 if shifted.dtype == torch.float64 else _STEP_TOL
    (root,) = solve_rows(
        flat,
        state,
        lambda z, st, ws: _newton_step(z, st, ws, tol),
        _MAX_STEPS,
        step_cost=4.0,
        finish_cost=4.0,
    )
    return root.view(shifted.shape)


def _newton_step(
    scores: torch.Tensor, state: dict[str, torch.Tensor], workspace: Workspace, tol: float
):
    """One Newton step on ``||(z / 2 - tau)_+||_2 - 1``; a row is done when the step is tiny."""
    tau = state["tau"]  # [n, 1]
    root = workspace.get("root", scores.shape[0])
    torch.add(-tau, scores, alpha=0.5, out=root).clamp_min_(0)  # [n, K], (z / 2 - tau)_+
    total = root.sum(dim=-1, keepdim=True)  # [n, 1]
    norm = torch.linalg.vector_norm(root, dim=-1, keepdim=True)  # [n, 1]
    step = norm * (norm - 1) / total.clamp_min(tiny(total.dtype))  # [n, 1]
    done = (step.abs() <= tol).squeeze(-1)  # [n]

    def finish(rows):
        # Exact threshold on the final support S: sum_S (root - delta)^2 = 1, smaller root.
        # delta >= 0 in exact arithmetic (tau is left of the root); the clamp keeps rounding
        # from lifting keys off the support above zero. The support size is counted in place
        # and the root recomputed (cheaper than a second full-size buffer).
        if rows is None:
            z, t, q, shift, r = scores, total, norm, -tau, root
        else:
            z, t, q, shift, r = (v.index_select(0, rows) for v in (scores, total, norm, -tau, root))
        size = r.sign_().sum(dim=-1, keepdim=True)  # [m, 1]
        torch.add(shift, z, alpha=0.5, out=r).clamp_min_(0)  # [m, K]
        disc = (t * t - size * (q * q - 1)).clamp_min(0)
        delta = ((t - disc.sqrt()) / size.clamp_min(1)).clamp_min(0)  # [m, 1]
        return (r.sub_(delta).clamp_min_(0),)

    return done, {"tau": tau + step}, finish


class _Entmax15Function(torch.autograd.Function):
    """Entmax-1.5 over the last dim with the closed-form backward of Peters et al. (2019)."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor) -> torch.Tensor:
        shifted = shift_by_max(scores)  # [..., K]
        root = entmax15_threshold(shifted)  # [..., K]
        # The shifted scores are spent: reuse their memory for the output when dtypes agree.
        if shifted.dtype == scores.dtype:
            result = torch.mul(root, root, out=shifted)
        else:
            result = (root * root).to(scores.dtype)
        ctx.save_for_backward(root, output_for_double_backward(result, root))
        return result

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        root, result = ctx.saved_tensors  # sqrt of the weights: the diagonal of the Jacobian
        if torch.is_grad_enabled():  # create_graph: a backward that is itself differentiable
            return recorded_backward(require_output(result), grad, 1.5)[0]
        grad_in = grad.to(root.dtype) * root  # [..., K]
        mass = root.sum(dim=-1, keepdim=True).clamp_min(tiny(root.dtype))  # [..., 1]
        grad_in.addcmul_(root, grad_in.sum(dim=-1, keepdim=True) / mass, value=-1.0)
        return grad_in.to(grad.dtype)


def entmax15(scores: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Entmax-1.5 over the last dim of ``scores [..., K]``.

    ``-inf`` entries get exactly zero weight; a row of only ``-inf`` gives zeros (and zero
    gradient). Half-precision input is computed in float32 and returned in its own dtype.
    ``backend``: ``"auto"`` (the fused kernel on CPU, Triton on CUDA, when available), ``"fused"``,
    ``"triton"`` or ``"torch"``.
    """
    if scores.numel() == 0:
        return scores.clone()
    if use_fused(scores, backend):
        return FusedEntmax15.apply(scores)
    if use_triton(scores, backend):
        return TritonEntmax15.apply(scores)
    return _Entmax15Function.apply(scores)


class Entmax15(nn.Module):
    """Entmax-1.5 normalizer module (see :func:`entmax15`); ``key_grid`` is ignored."""

    name = "entmax15"

    def forward(
        self, scores: torch.Tensor, key_grid: tuple[int, int] | None = None
    ) -> torch.Tensor:
        return entmax15(scores)
