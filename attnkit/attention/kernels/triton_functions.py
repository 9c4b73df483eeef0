"""Autograd functions over the Triton kernels of ``triton_rows``, and the choice of them.

The normalizers run these for CUDA tensors (``backend="auto"``) when triton can be imported,
the rows have at most :data:`MAX_KEYS` keys and ``$ATTNKIT_NO_TRITON`` is unset; else their
PyTorch path. Each function flattens the scores to contiguous rows ``[N, K]`` (in their own
dtype: the kernels load half precision and compute in float32), saves the float32 weights and
runs the closed-form backward kernel. Triton is imported lazily, on the first use of a kernel:
importing attnkit never needs it.

Under Triton's interpreter the kernels run on CPU tensors, and ``backend="triton"`` accepts
them: this is how they are tested on machines without a GPU. ``TRITON_INTERPRET=1`` must be set
before triton is imported (``triton.jit`` decides at decoration time, also for triton's own
``tl.max`` and the like), so the tests run such checks in a subprocess.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from types import ModuleType

import torch

from attnkit.attention.entmax_vjp import (
    output_for_double_backward,
    recorded_backward,
    require_output,
)
from attnkit.attention.kernels.functions import BACKENDS

__all__ = [
    "MAX_KEYS",
    "TRITON_ENV",
    "TritonAlphaEntmax",
    "TritonEntmax15",
    "TritonSparsemax",
    "triton_available",
    "triton_disabled",
    "use_triton",
]

TRITON_ENV = "ATTNKIT_NO_TRITON"
MAX_KEYS = 16384  # rows held in registers: longer rows take the PyTorch path
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_KERNELS = "attnkit.attention.kernels.triton_rows"
# Iteration caps of the solvers (see triton_rows); sparsemax's is K + 2, always enough.
_ENTMAX15_STEPS, _ENTMAX15_TOL = 50, 1e-6
_ALPHA_STEPS, _ALPHA_TOL = 60, 1e-6

_available: list[bool] = []


def triton_disabled() -> bool:
    """True when ``$ATTNKIT_NO_TRITON`` asks for the PyTorch path (any value but '', '0')."""
    return os.environ.get(TRITON_ENV, "") not in ("", "0")


def triton_available() -> bool:
    """Whether triton can be imported (tried once per process)."""
    if not _available:
        try:
            import triton  # noqa: F401
        except Exception:  # ImportError, or a broken install failing in its own import
            _available.append(False)
        else:
            _available.append(True)
    return _available[0]


def interpreting() -> bool:
    """Whether ``triton.jit`` builds interpreted functions now (``TRITON_INTERPRET=1``)."""
    if not triton_available():
        return False
    import triton

    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0") == "1"  # triton < 3.4


def use_triton(scores: torch.Tensor, backend: str = "auto") -> bool:
    """Whether a normalizer should run the Triton kernels on ``scores [..., K]``.

    ``backend``: ``"auto"`` (CUDA tensors of float32 / float16 / bfloat16 with ``K <=
    MAX_KEYS`` when triton is importable and ``$ATTNKIT_NO_TRITON`` unset), ``"triton"`` (the
    kernels or an error; CPU tensors only under ``TRITON_INTERPRET=1``), ``"fused"`` or
    ``"torch"`` (never).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend in ("fused", "torch"):
        return False
    num_keys = scores.shape[-1] if len(scores.shape) else 0
    if backend == "auto":
        eligible = scores.device.type == "cuda" and scores.dtype in _DTYPES
        eligible = eligible and 0 < num_keys <= MAX_KEYS
        return eligible and not triton_disabled() and triton_available()
    if scores.dtype not in _DTYPES or not 0 < num_keys <= MAX_KEYS:
        raise ValueError(
            f"the triton backend takes float32 / float16 / bfloat16 rows of 1 to {MAX_KEYS}"
            f" keys, got {scores.dtype} rows of {num_keys}"
        )
    if scores.device.type != "cuda" and not interpreting():
        raise ValueError(
            f"the triton backend takes CUDA tensors (CPU ones only under TRITON_INTERPRET=1),"
            f" got one on {scores.device}"
        )
    if triton_disabled() or not triton_available():
        raise RuntimeError(
            f"the triton kernels are unavailable ({TRITON_ENV} is set or triton cannot be imported)"
        )
    return True


def kernels() -> ModuleType:
    """The module of the kernels (imported, with triton, on first use)."""
    return importlib.import_module(_KERNELS)


def launch_config(num_keys: int) -> tuple[int, int, int]:
    """``(BLOCK, ROWS, num_warps)`` for rows of ``num_keys``: a power-of-two block holding a
    row (at least 16), a few rows per program for short rows, more warps for bigger tiles."""
    block = max(16, 1 << (num_keys - 1).bit_length())
    rows = max(1, min(16, 2048 // block))
    warps = max(1, min(16, rows * block // 256))
    return block, rows, warps


def _launch(kernel, num_rows: int, num_keys: int, *args, **constexprs) -> None:
    block, rows, warps = launch_config(num_keys)
    grid = (-(-num_rows // rows),)
    kernel[grid](
        *args, ROWS=rows, BLOCK=block, num_warps=warps, enable_fp_fusion=True, **constexprs
    )


def _on_device(t: torch.Tensor):
    """Launches go to the device of ``t``, not only the current one."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _rows(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, t.shape[-1]).contiguous()  # [N, K]


def _triton_map(op: str, alpha: float, doc: str, extra) -> type[torch.autograd.Function]:
    """The autograd function of the parameter-free map ``op`` (``sparsemax``, ``entmax15``:
    alpha-entmax at ``alpha``):
    kernels ``<op>_forward(z, p, N, K, *extra(K))`` and ``<op>_backward(p, g, grad_in, N, K)``."""

    def forward(ctx, scores: torch.Tensor) -> torch.Tensor:
        rows = _rows(scores)  # [N, K]
        num_rows, num_keys = rows.shape
        out = torch.empty(rows.shape, dtype=torch.float32, device=rows.device)  # [N, K]
        with _on_device(rows):
            kernel = getattr(kernels(), f"{op}_forward")
            _launch(kernel, num_rows, num_keys, rows, out, num_rows, num_keys, *extra(num_keys))
        result = out.view(scores.shape).to(scores.dtype)
        ctx.save_for_backward(out, output_for_double_backward(result, out))
        ctx.scores_dtype = scores.dtype
        return result

    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        out, result = ctx.saved_tensors  # [N, K] float32, the output
        if torch.is_grad_enabled():  # create_graph: the kernels' backward is not differentiable
            return recorded_backward(require_output(result), grad, alpha)[0]
        num_rows, num_keys = out.shape
        grad_in = torch.empty(out.shape, dtype=ctx.scores_dtype, device=out.device)  # [N, K]
        with _on_device(out):
            kernel = getattr(kernels(), f"{op}_backward")
            _launch(kernel, num_rows, num_keys, out, _rows(grad), grad_in, num_rows, num_keys)
        return grad_in.view(grad.shape)

    members = {"forward": staticmethod(forward), "backward": staticmethod(backward), "__doc__": doc}
    return type(f"Triton_{op}", (torch.autograd.Function,), members)


TritonSparsemax = _triton_map(
    "sparsemax", 2.0, "Sparsemax over the last dim by the Triton kernels.", lambda k: (k + 2,)
)
TritonEntmax15 = _triton_map(
    "entmax15",
    1.5,
    "Entmax-1.5 over the last dim by the Triton kernels.",
    lambda k: (_ENTMAX15_STEPS, _ENTMAX15_TOL),
)


class TritonAlphaEntmax(torch.autograd.Function):
    """Alpha-entmax over the last dim by the Triton kernels; ``alpha`` broadcasts to
    ``scores[..., :1]`` and gets a gradient (summed over the rows that share it)."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        rows = _rows(scores)  # [N, K]
        num_rows, num_keys = rows.shape
        alpha_rows = alpha.detach().to(device=rows.device, dtype=torch.float32)
        alpha_rows = alpha_rows.expand(*scores.shape[:-1], 1).reshape(-1).contiguous()  # [N]
        out = torch.empty(rows.shape, dtype=torch.float32, device=rows.device)  # [N, K]
        with _on_device(rows):
            _launch(
                kernels().alpha_entmax_forward,
                num_rows,
                num_keys,
                rows,
                alpha_rows,
                out,
                num_rows,
                num_keys,
                _ALPHA_STEPS,
                _ALPHA_TOL,
            )
        result = out.view(scores.shape).to(scores.dtype)
        ctx.save_for_backward(out, alpha_rows, output_for_double_backward(result, out), alpha)
        ctx.scores_dtype, ctx.alpha_dtype, ctx.alpha_device = (
            scores.dtype,
            alpha.dtype,
            alpha.device,
        )
        ctx.alpha_shape, ctx.row_shape = alpha.shape, (*scores.shape[:-1], 1)
        return result

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        out, alpha_rows, result, alpha = ctx.saved_tensors  # [N, K], [N], output, input
        num_rows, num_keys = out.shape
        want_alpha = ctx.needs_input_grad[1]
        if torch.is_grad_enabled():  # create_graph: the kernels' backward is not differentiable
            return recorded_backward(require_output(result), grad, alpha, want_alpha)
        grad_in = torch.empty(out.shape, dtype=ctx.scores_dtype, device=out.device)  # [N, K]
        grad_alpha_rows = torch.empty(num_rows if want_alpha else 1, device=out.device)  # [N]
        with _on_device(out):
            _launch(
                kernels().alpha_entmax_backward,
                num_rows,
                num_keys,
                out,
                _rows(grad),
                alpha_rows,
                grad_in,
                grad_alpha_rows,
                num_rows,
                num_keys,
                WANT_ALPHA=want_alpha,
            )
        grad_alpha = None
        if want_alpha:
            grad_alpha = grad_alpha_rows.view(ctx.row_shape).sum_to_size(ctx.alpha_shape)
            grad_alpha = grad_alpha.to(device=ctx.alpha_device, dtype=ctx.alpha_dtype)
        return grad_in.view(grad.shape), grad_alpha
