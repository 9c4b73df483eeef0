"""The backward of the entmax family as differentiable PyTorch functions of the weights.

With ``p`` the weights and ``s = p ** (2 - alpha)`` on the support (0 off it), the Jacobian of
alpha-entmax is ``diag(s) - s s^T / sum(s)`` (Peters et al. 2019): alpha = 2 is sparsemax
(``s`` = 1 on the support) and alpha = 1.5 entmax-1.5 (``s = sqrt(p)``). The gradient in alpha
follows from the KKT conditions (Correia et al. 2019).

Every normalizer's backward (the PyTorch path, the fused CPU kernels, the Triton kernels) runs
its own fast code, and falls back to :func:`recorded_backward` when autograd records the
backward itself (``torch.autograd.grad(..., create_graph=True)``: Hessian-vector products,
gradient penalties). Written on the weights that the forward returned, these formulas carry the
second derivatives through the normalizer's own first derivative.
"""

from __future__ import annotations

import torch

from attnkit.attention._threshold import compute_dtype, tiny

__all__ = [
    "alpha_gradient",
    "entmax_vjp",
    "output_for_double_backward",
    "recorded_backward",
    "require_output",
]


def _support_power(weights: torch.Tensor, exponent: float | torch.Tensor) -> torch.Tensor:
    """``weights ** exponent`` on the support, 0 off it, with finite gradients at 0."""
    on_support = weights > 0
    safe = torch.where(on_support, weights, torch.ones_like(weights))
    return torch.where(on_support, safe.pow(exponent), torch.zeros_like(weights))


def entmax_vjp(
    weights: torch.Tensor, grad: torch.Tensor, alpha: float | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(J^T grad, skewed)`` for the weights ``[..., K]`` of alpha-entmax, where ``skewed =
    <grad, s> / sum s`` ``[..., 1]``; ``alpha`` broadcasts to ``weights[..., :1]``."""
    slope = _support_power(weights, 2 - alpha)  # [..., K]
    grad_slope = grad * slope  # [..., K]
    mass = slope.sum(dim=-1, keepdim=True).clamp_min(tiny(weights.dtype))  # [..., 1]
    skewed = grad_slope.sum(dim=-1, keepdim=True) / mass  # [..., 1]
    return grad_slope - slope * skewed, skewed


def alpha_gradient(
    weights: torch.Tensor, grad: torch.Tensor, skewed: torch.Tensor, alpha: torch.Tensor
) -> torch.Tensor:
    """Row-wise ``<grad, d weights / d alpha>`` ``[..., 1]``: with ``s = p log p``, ``H = sum s``
    and ``skewed`` from :func:`entmax_vjp`, ``(<grad, p> - skewed) / (alpha - 1)^2 -
    (<grad, s> - skewed * H) / (alpha - 1)``."""
    # log of the clamped weights: 0 * log(tiny) = 0 off the support, and the log of a normal
    # number is much faster than the special-value path of log(0).
    p_log_p = weights * weights.clamp_min(tiny(weights.dtype)).log()  # [..., K]
    entropy_term = p_log_p.sum(dim=-1, keepdim=True)  # [..., 1]
    g_p = (grad * weights).sum(dim=-1, keepdim=True)  # [..., 1]
    g_plogp = (grad * p_log_p).sum(dim=-1, keepdim=True)  # [..., 1]
    scale = alpha - 1
    return (g_p - skewed) / scale**2 - (g_plogp - skewed * entropy_term) / scale


def output_for_double_backward(result: torch.Tensor, saved: torch.Tensor) -> torch.Tensor | None:
    """What a normalizer's forward saves of its output ``result`` for :func:`recorded_backward`:
    ``result`` when it is in the dtype of the weights the fast backward saves (``saved``; on the
    fused paths the very same values, so in-place changes of the output were refused anyway),
    else None: a half-precision output is a rounded copy that later in-place changes (dropout)
    may still touch; its second derivatives are refused instead (:func:`require_output`)."""
    return result if result.dtype == saved.dtype else None


def require_output(result: torch.Tensor | None) -> torch.Tensor:
    """``result`` for :func:`recorded_backward`, or a one-line error when it was not saved."""
    if result is None:
        raise RuntimeError(
            "second derivatives of the sparse normalizers need float32 or float64 scores "
            "(create_graph=True on half-precision scores is not supported)"
        )
    return result


def recorded_backward(
    weights: torch.Tensor,
    grad: torch.Tensor,
    alpha: float | torch.Tensor,
    want_alpha: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The gradients in the scores (dtype of ``grad``) and, when ``want_alpha``, in the tensor
    ``alpha`` (summed to its shape, dtype and device), as recorded operations on ``weights``,
    the forward's output, and ``alpha``, its input."""
    dtype = compute_dtype(weights.dtype)
    p, g = weights.to(dtype), grad.to(dtype)  # [..., K]
    a = alpha.to(device=p.device, dtype=dtype) if torch.is_tensor(alpha) else alpha
    grad_in, skewed = entmax_vjp(p, g, a)
    grad_alpha = None
    if want_alpha:
        grad_alpha = alpha_gradient(p, g, skewed, a).sum_to_size(alpha.shape)
        grad_alpha = grad_alpha.to(device=alpha.device, dtype=alpha.dtype)
    return grad_in.to(grad.dtype), grad_alpha
