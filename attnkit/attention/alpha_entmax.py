"""Alpha-entmax (Peters, Niculae & Martins 2019; Correia et al. 2019) with a fixed or learned alpha.

``alpha_entmax(z) = ((alpha - 1) z - tau)_+ ** (1 / (alpha - 1))`` with ``tau`` such that the
weights sum to one; alpha -> 1 approaches softmax, alpha = 2 is sparsemax. The threshold is found
with safeguarded Newton steps on ``F(tau) = ||((alpha - 1) z - tau)_+||_beta - 1`` (``beta =
1 / (alpha - 1)``): F is convex, decreasing and nearly linear, so a few steps from the left (from
the threshold of the row's group maxima, see ``initial_threshold``) reach float precision where
bisection needs ~50 passes. The weights are renormalised to sum to
one. The backward pass is closed form, including the gradient with respect to alpha (so a
per-head alpha can be learned, Correia et al. 2019).

alpha must lie in [1.01, 2] (:func:`check_alpha`): below, the weights are dense and tend to
softmax; above 2 the solver's bounds do not hold. Every entry point refuses other values with
the same error rather than returning wrong weights. On CPU the same exact alpha-entmax runs by
default in the fused kernel of ``attnkit.attention.kernels``, and on CUDA in its Triton kernels
(rows of up to 16384 keys); this PyTorch path is the fallback (``ATTNKIT_NO_FUSED=1`` or
``ATTNKIT_NO_TRITON=1``, no compiler, no triton, longer rows) and is tested equal to them.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from attnkit.attention._threshold import (
    Workspace,
    compute_dtype,
    initial_threshold,
    newton_tol,
    shift_by_max,
    solve_rows,
    tiny,
)
from attnkit.attention.entmax_vjp import (
    alpha_gradient,
    output_for_double_backward,
    recorded_backward,
    require_output,
)
from attnkit.attention.kernels.functions import FusedAlphaEntmax, use_fused
from attnkit.attention.kernels.triton_functions import TritonAlphaEntmax, use_triton

__all__ = [
    "ALPHA_MAX",
    "ALPHA_MIN",
    "AlphaEntmax",
    "alpha_entmax",
    "alpha_entmax_threshold",
    "check_alpha",
]

_MAX_STEPS = 100
ALPHA_MIN = 1.01
ALPHA_MAX = 2.0
_ALPHA_SLACK = 1e-6  # float32 rounding of the bounds (1.01 in float32 is 1.00999999)


def check_alpha(alpha: float | torch.Tensor) -> None:
    """Raise ``ValueError`` unless every alpha lies in ``[ALPHA_MIN, ALPHA_MAX] = [1.01, 2]``."""
    if torch.is_tensor(alpha):
        values = alpha.detach()
        if values.numel() == 0:
            return
        low, high = values.min().item(), values.max().item()
    else:
        low = high = float(alpha)
    low_ok = low >= ALPHA_MIN - _ALPHA_SLACK  # False for NaN too
    if not (low_ok and high <= ALPHA_MAX + _ALPHA_SLACK):
        bad = high if low_ok else low
        raise ValueError(
            f"alpha must lie in [{ALPHA_MIN}, {ALPHA_MAX}] for attnkit's alpha-entmax (alpha -> 1"
            f" is softmax, alpha = 2 is sparsemax), got {bad}"
        )


def alpha_entmax_threshold(
    shifted: torch.Tensor, alpha: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Alpha-entmax of max-shifted scores (row maximum 0, or all ``-inf`` for an empty row).

    ``alpha`` broadcasts against ``shifted[..., :1]`` and lies in ``[1.01, 2]``. Returns
    ``(weights [..., K], slope [..., K])`` with ``slope = weights ** (2 - alpha)``, the diagonal
    of the Jacobian that the backward pass needs. ``shifted`` is consumed: its memory may be
    reused for the weights.
    """
    num_keys = shifted.shape[-1]
    flat = shifted.reshape(-1, num_keys)  # [N, K]
    alpha = alpha.expand(*shifted.shape[:-1], 1).reshape(-1, 1)  # [N, 1]
    scale = alpha - 1  # [N, 1]
    lo = initial_threshold(flat, scale)  # [N, 1], left of the root
    state = {
        "tau": lo,
        "lo": lo,
        "hi": -((1.0 / num_keys) ** scale),  # uniform weights: right of the root
        "scale": scale,
        "power": (1 / scale - 1).clamp_min(0),  # beta - 1 (0 for sparsemax)
    }
    # 0 ** 0 = 1 must not count the keys off the support when some alpha is exactly 2.
    mask_zeros = bool((state["power"] == 0).any())
    tol = newton_tol(shifted.dtype)

    def step(x, st, ws):
        return _newton_step(x, st, ws, tol, mask_zeros)

    weights, slope = solve_rows(flat, state, step, _MAX_STEPS, step_cost=25.0, finish_cost=25.0)
    return weights.view(shifted.shape), slope.view(shifted.shape)


def _newton_step(
    x: torch.Tensor,
    state: dict[str, torch.Tensor],
    workspace: Workspace,
    tol: float,
    mask_zeros: bool,
):
    """A safeguarded Newton step on ``||(x - tau)_+||_beta - 1``; done when the step is small.

    A row's final weights are computed at the threshold after its last step (``finish``),
    which, Newton converging quadratically, is far more accurate than the step size.
    """
    tau, lo, hi, scale, power = (state[k] for k in ("tau", "lo", "hi", "scale", "power"))
    rows = x.shape[0]
    gap, slope = workspace.get("gap", rows), workspace.get("slope", rows)
    mass, deriv = _powers(x, scale, tau, power, gap, slope, mask_zeros)  # [n, 1] each
    left = mass >= 1  # F(tau) >= 0: tau is left of the root
    lo = torch.where(left, tau, lo)
    hi = torch.where(left, hi, tau)
    deriv = deriv.clamp_min(tiny(x.dtype))
    target = tau + (mass - mass.pow(1 - scale)) / deriv  # Newton on the beta-norm
    inside = (target >= lo) & (target <= hi)
    target = torch.where(inside, target, (lo + hi) / 2)  # bisect if Newton leaves the bracket
    done = ((target - tau).abs() <= tol).squeeze(-1)  # [n]

    def finish(rows):
        tensors = (x, scale, target, power)
        if rows is None:  # x may be overwritten: the weights go there
            x_f, scale_f, tau_f, power_f = tensors
            weights = x
        else:
            x_f, scale_f, tau_f, power_f = (t.index_select(0, rows) for t in tensors)
            weights = x_f
        slope_f = workspace.get("slope", x_f.shape[0])
        mass_f, _ = _powers(x_f, scale_f, tau_f, power_f, weights, slope_f, mask_zeros)
        mass_f = mass_f.clamp_min(tiny(x.dtype))  # [m, 1]
        # weights = gap ** beta / mass, and weights ** (2 - alpha) = slope * mass ** (alpha - 2).
        return weights.div_(mass_f), slope_f.mul_(mass_f.pow(scale_f - 1))

    return done, {"tau": target, "lo": lo, "hi": hi, "scale": scale, "power": power}, finish


def _powers(
    x: torch.Tensor,
    scale: torch.Tensor,
    tau: torch.Tensor,
    power: torch.Tensor,
    gap: torch.Tensor,
    slope: torch.Tensor,
    mask_zeros: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fill ``slope = gap ** (beta - 1)`` and then ``gap`` with ``gap ** beta``, where ``gap =
    ((alpha - 1) x - tau)_+`` (``gap`` may be ``x`` itself); return their row sums ``[n, 1]``.
    """
    torch.addcmul(-tau, x, scale, out=gap).clamp_min_(0)  # [n, K]
    torch.pow(gap, power, out=slope)  # [n, K]
    if mask_zeros:
        slope.mul_(torch.sign(gap))
    gap.mul_(slope)  # [n, K], gap ** beta
    return gap.sum(dim=-1, keepdim=True), slope.sum(dim=-1, keepdim=True)


class _AlphaEntmaxFunction(torch.autograd.Function):
    """Alpha-entmax over the last dim, differentiable in the scores and in alpha."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        shifted = shift_by_max(scores)  # [..., K]
        alpha_c = alpha.to(shifted.dtype)
        weights, slope = alpha_entmax_threshold(shifted, alpha_c)
        result = weights.to(scores.dtype)
        kept = output_for_double_backward(result, weights)
        ctx.save_for_backward(weights, slope, alpha_c, kept, alpha)
        ctx.alpha_shape = alpha.shape
        ctx.alpha_dtype = alpha.dtype
        ctx.scores_dtype = scores.dtype
        return result

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        weights, slope, alpha, result, alpha_in = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: a backward that is itself differentiable
            return recorded_backward(
                require_output(result), grad, alpha_in, ctx.needs_input_grad[1]
            )
        grad = grad.to(weights.dtype)  # [..., K]
        grad_in = grad * slope  # [..., K]
        slope_mass = slope.sum(dim=-1, keepdim=True).clamp_min(tiny(weights.dtype))  # [..., 1]
        skewed = grad_in.sum(dim=-1, keepdim=True) / slope_mass  # [..., 1]
        grad_alpha = None
        if ctx.needs_input_grad[1]:
            grad_alpha = alpha_gradient(weights, grad, skewed, alpha)
            grad_alpha = grad_alpha.sum_to_size(ctx.alpha_shape).to(ctx.alpha_dtype)
        grad_in.addcmul_(slope, skewed, value=-1.0)
        return grad_in.to(ctx.scores_dtype), grad_alpha


def alpha_entmax(
    scores: torch.Tensor, alpha: float | torch.Tensor, backend: str = "auto"
) -> torch.Tensor:
    """Alpha-entmax over the last dim of ``scores [..., K]``.

    ``alpha`` is a float or a tensor broadcastable to ``scores[..., :1]`` (e.g. ``[1, H, 1, 1]``
    for one alpha per head), with values in ``[1.01, 2]`` (else ``ValueError``); gradients flow
    to a tensor alpha. ``backend``: ``"auto"`` (the fused kernel on CPU, Triton on CUDA, when
    available), ``"fused"``, ``"triton"`` or ``"torch"``.
    """
    check_alpha(alpha)
    return _alpha_entmax(scores, alpha, backend)


def _alpha_entmax(
    scores: torch.Tensor, alpha: float | torch.Tensor, backend: str = "auto"
) -> torch.Tensor:
    """:func:`alpha_entmax` without the range check (for alphas in range by construction)."""
    if not torch.is_tensor(alpha):
        alpha = torch.tensor(float(alpha), dtype=compute_dtype(scores.dtype), device=scores.device)
    if scores.numel() == 0:
        return scores.clone()
    if use_fused(scores, backend):
        return FusedAlphaEntmax.apply(scores, alpha)
    if use_triton(scores, backend):
        return TritonAlphaEntmax.apply(scores, alpha)
    return _AlphaEntmaxFunction.apply(scores, alpha)


def _logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)


class AlphaEntmax(nn.Module):
    """Alpha-entmax normalizer with one learned alpha per head, or a fixed alpha.

    Learned (``alpha=None``): owns ``pre_alpha [num_heads]``, ``alpha = clamp(1 +
    sigmoid(pre_alpha), 1.01, 2)`` (``pre_alpha = 0`` gives 1.5; ``alpha_init`` sets the start),
    and expects scores ``[B, H, ...]`` with ``H = num_heads`` (alpha broadcasts over dim 1).
    Fixed (``alpha=1.3``): no parameter, any score shape. ``key_grid`` is ignored.
    """

    name = "alpha_entmax"

    def __init__(
        self,
        num_heads: int | None = None,
        alpha: float | None = None,
        alpha_init: float = 1.5,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.fixed_alpha = None if alpha is None else float(alpha)
        if self.fixed_alpha is not None:
            check_alpha(self.fixed_alpha)
            self.pre_alpha = None
            return
        if num_heads is None or num_heads < 1:
            raise ValueError("a learned alpha_entmax needs num_heads (or pass a fixed alpha=)")
        if not ALPHA_MIN < alpha_init < ALPHA_MAX:
            raise ValueError(f"alpha_init must lie in ({ALPHA_MIN}, {ALPHA_MAX}), got {alpha_init}")
        self.pre_alpha = nn.Parameter(torch.full((num_heads,), _logit(alpha_init - 1)))

    def alpha(self) -> torch.Tensor:
        """The current alphas: ``[num_heads]`` when learned, a 0-dim tensor when fixed."""
        if self.pre_alpha is None:
            return torch.tensor(self.fixed_alpha)
        return (1 + torch.sigmoid(self.pre_alpha)).clamp(ALPHA_MIN, ALPHA_MAX)

    def forward(
        self, scores: torch.Tensor, key_grid: tuple[int, int] | None = None
    ) -> torch.Tensor:
        if self.pre_alpha is None:
            return _alpha_entmax(scores, self.fixed_alpha)
        if scores.dim() < 2 or scores.shape[1] != self.num_heads:
            raise ValueError(
                f"alpha_entmax with {self.num_heads} heads expects scores [B, H={self.num_heads},"
                f" ..., K], got {tuple(scores.shape)}"
            )
        alpha = self.alpha().view(-1, *([1] * (scores.dim() - 2)))  # [H, 1, ..., 1]
        return _alpha_entmax(scores, alpha)  # clamped into range: no check (no host sync)

    def extra_repr(self) -> str:
        if self.pre_alpha is None:
            return f"alpha={self.fixed_alpha}"
        return f"num_heads={self.num_heads}"
