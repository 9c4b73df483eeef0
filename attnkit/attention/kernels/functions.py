"""Autograd functions over the fused CPU kernels, and the choice between them and PyTorch.

Each function flattens the scores to contiguous rows ``[N, K]`` in the compute dtype (float32
for half precision, as the PyTorch path), runs the kernel's forward, and saves what the
kernel's closed-form backward needs: the weights (sparsemax, entmax-1.5: the Jacobian's
diagonal is 1 or sqrt(p) on the support) or the weights and ``p ** (2 - alpha)`` (alpha-entmax,
whose kernel also returns the per-row gradient of alpha). A backward that autograd records
(``create_graph=True``) runs the differentiable formulas of ``entmax_vjp`` instead.
"""

from __future__ import annotations

import torch

from attnkit.attention.entmax_vjp import (
    output_for_double_backward,
    recorded_backward,
    require_output,
)
from attnkit.attention.kernels._build import fused_ops

__all__ = ["BACKENDS", "FusedAlphaEntmax", "FusedEntmax15", "FusedSparsemax", "use_fused"]

BACKENDS = ("auto", "fused", "torch", "triton")
_FUSED_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def use_fused(scores: torch.Tensor, backend: str = "auto") -> bool:
    """Whether a normalizer should run the fused kernel on ``scores``.

    ``backend``: ``"auto"`` (the kernel for CPU tensors of float dtypes when it is available,
    else PyTorch or, for CUDA tensors, Triton: see ``triton_functions.use_triton``), ``"fused"``
    (the kernel or an error), ``"torch"`` (the PyTorch path) or ``"triton"`` (never this kernel).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend in ("torch", "triton"):
        return False
    eligible = scores.device.type == "cpu" and scores.dtype in _FUSED_DTYPES
    if backend == "auto":
        return eligible and fused_ops() is not None
    if not eligible:
        raise ValueError(
            f"the fused kernels take CPU float tensors, got {scores.dtype} on {scores.device}"
        )
    if fused_ops() is None:
        raise RuntimeError(
            "the fused kernels are unavailable (ATTNKIT_NO_FUSED is set or the build failed)"
        )
    return True


def _rows(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t.to(dtype).reshape(-1, t.shape[-1]).contiguous()  # [N, K]


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _fused_map(op: str, alpha: float, doc: str) -> type[torch.autograd.Function]:
    """The autograd function of a parameter-free fused map ``op`` (``sparsemax``, ``entmax15``:
    alpha-entmax at ``alpha``): ``torch.ops.<ns>.<op>_forward(rows)`` and ``<op>_backward(out,
    grad)``."""

    def forward(ctx, scores: torch.Tensor) -> torch.Tensor:
        kernel = getattr(fused_ops(), f"{op}_forward")
        out = kernel(_rows(scores, _compute_dtype(scores.dtype)))  # [N, K]
        result = out.view(scores.shape).to(scores.dtype)
        ctx.save_for_backward(out, output_for_double_backward(result, out))
        ctx.scores_dtype = scores.dtype
        return result

    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        out, result = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: the kernel's backward is not differentiable
            return recorded_backward(require_output(result), grad, alpha)[0]
        grad_in = getattr(fused_ops(), f"{op}_backward")(out, _rows(grad, out.dtype))
        return grad_in.view(grad.shape).to(ctx.scores_dtype)

    members = {"forward": staticmethod(forward), "backward": staticmethod(backward), "__doc__": doc}
    return type(f"Fused_{op}", (torch.autograd.Function,), members)


FusedSparsemax = _fused_map("sparsemax", 2.0, "Sparsemax over the last dim by the fused kernel.")
FusedEntmax15 = _fused_map("entmax15", 1.5, "Entmax-1.5 over the last dim by the fused kernel.")


class FusedAlphaEntmax(torch.autograd.Function):
    """Alpha-entmax over the last dim by the fused kernel; ``alpha`` broadcasts to
    ``scores[..., :1]`` and gets a gradient (summed over the rows that share it)."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        dtype = _compute_dtype(scores.dtype)
        # One alpha per row, exactly as the compute dtype holds it (float32 for float32 rows).
        alpha_rows = alpha.detach().to(dtype).expand(*scores.shape[:-1], 1)
        alpha_rows = alpha_rows.to(torch.float64).reshape(-1).contiguous()  # [N]
        want_slope = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        out, slope = fused_ops().entmax_forward(_rows(scores, dtype), alpha_rows, want_slope)
        result = out.view(scores.shape).to(scores.dtype)
        kept = output_for_double_backward(result, out)
        ctx.save_for_backward(out, slope, alpha_rows, kept, alpha)
        ctx.scores_dtype, ctx.alpha_dtype = scores.dtype, alpha.dtype
        ctx.alpha_shape, ctx.row_shape = alpha.shape, (*scores.shape[:-1], 1)
        return result

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        out, slope, alpha_rows, result, alpha = ctx.saved_tensors
        want_alpha = ctx.needs_input_grad[1]
        if torch.is_grad_enabled():  # create_graph: the kernel's backward is not differentiable
            return recorded_backward(require_output(result), grad, alpha, want_alpha)
        grad_in, grad_alpha_rows = fused_ops().entmax_backward(
            out, slope, _rows(grad, out.dtype), alpha_rows, want_alpha
        )
        grad_alpha = None
        if want_alpha:
            grad_alpha = grad_alpha_rows.view(ctx.row_shape).sum_to_size(ctx.alpha_shape)
            grad_alpha = grad_alpha.to(ctx.alpha_dtype)
        return grad_in.view(grad.shape).to(ctx.scores_dtype), grad_alpha
