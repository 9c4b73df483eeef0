"""Triton kernels of sparsemax, entmax-1.5 and alpha-entmax over the rows of ``[N, K]`` scores.

Each program holds a tile of ``ROWS`` rows in registers as a ``[ROWS, BLOCK]`` block (``BLOCK``
a power of two >= K; the padding and ``-inf`` keys are loaded as ``-inf``), shifts every row by
its maximum and finds the threshold ``tau`` without sorting, in float32 whatever the dtype of
the scores:

* sparsemax: support iteration (Michelot 1986) from a lower bound of ``tau``: ``tau = (sum_S x -
  1) / |S|`` on ``S = {x > tau}``, repeated while ``S`` shrinks; ``tau`` rises monotonically and
  is exact once ``S`` stops changing (at most K + 1 passes, ~3-8 in practice);
* entmax-1.5 (``y = x / 2``): on the candidate support ``S = {y > tau}`` of a lower bound
  ``tau``, the smaller root of ``sum_S (y - t)^2 = 1``; when every key of ``S`` lies above it, it
  is the exact threshold. Else a Newton step on ``||(y - tau)_+||_2 - 1`` (convex, decreasing:
  the step stays left of the root and shrinks ``S``) and again;
* alpha-entmax (one alpha per row): safeguarded Newton steps on ``||((alpha - 1) x -
  tau)_+||_beta - 1`` inside the bracket ``[-1, -(1/K)^(alpha - 1)]`` (bisection when Newton
  leaves it), until a step is below ``tol``; the weights are normalised to sum to one.

The loops are capped by ``max_iter`` (a runtime argument). The backward kernels are closed
form on the saved float32 weights. This module imports triton: ``triton_functions`` loads it
lazily, on the first use of a kernel.
"""

from __future__ import annotations

import triton
import triton.language as tl

# The smallest normal float32: guards 0 / 0 on empty rows (globals of kernels are constexpr).
_TINY = tl.constexpr(1.1754943508222875e-38)


@triton.jit
def _tile(n_rows, n_cols, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    """The rows ``[ROWS]`` of this program, the offsets and mask of its ``[ROWS, BLOCK]`` tile."""
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)  # [ROWS]
    cols = tl.arange(0, BLOCK)  # [BLOCK]
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)  # [ROWS, BLOCK]
    offs = rows[:, None].to(tl.int64) * n_cols + cols[None, :]  # [ROWS, BLOCK]
    return rows, offs, mask


@triton.jit
def _load_shifted(ptr, offs, mask):
    """Scores minus their row maximum in float32 (``-inf`` stays), the row count of finite keys
    and whether the row has one."""
    z = tl.load(ptr + offs, mask=mask, other=float("-inf")).to(tl.float32)  # [ROWS, BLOCK]
    top = tl.max(z, axis=1)  # [ROWS]
    valid = top > float("-inf")
    x = z - tl.where(valid, top, 0.0)[:, None]  # [ROWS, BLOCK]
    finite = x > float("-inf")
    count = tl.sum(finite.to(tl.float32), axis=1)  # [ROWS]
    mean = tl.sum(tl.where(finite, x, 0.0), axis=1) / tl.maximum(count, 1.0)  # [ROWS]
    return x, valid, count, mean


@triton.jit
def _pow(x, e):
    """``x ** e`` for ``x >= 0``, with ``0 ** e = 0`` (also for ``e = 0``: keys off the support)."""
    return tl.where(x > 0, tl.exp(e * tl.log(tl.maximum(x, _TINY))), 0.0)


@triton.jit
def sparsemax_forward(
    z_ptr, p_ptr, n_rows, n_cols, max_iter, ROWS: tl.constexpr, BLOCK: tl.constexpr
):
    _, offs, mask = _tile(n_rows, n_cols, ROWS, BLOCK)
    x, _, count, mean = _load_shifted(z_ptr, offs, mask)
    # Lower bounds: the top key alone (-1); all finite keys on the support (mean - 1 / count).
    tau = tl.maximum(mean - 1.0 / tl.maximum(count, 1.0), -1.0)  # [ROWS]
    size = tl.full([ROWS], -1.0, tl.float32)
    it = tl.zeros([], tl.int32)
    pending = tl.full([], 1, tl.int32)
    while pending > 0:
        on = x > tau[:, None]  # [ROWS, BLOCK]
        new_size = tl.sum(on.to(tl.float32), axis=1)  # [ROWS]
        total = tl.sum(tl.where(on, x, 0.0), axis=1)  # [ROWS]
        moved = new_size != size  # an unchanged support: tau is the exact fixed point
        tau = tl.where(moved, (total - 1.0) / tl.maximum(new_size, 1.0), tau)
        size = new_size
        it += 1
        pending = tl.where(it < max_iter, tl.max(moved.to(tl.int32), axis=0), 0)
    tl.store(p_ptr + offs, tl.maximum(x - tau[:, None], 0.0), mask=mask)


@triton.jit
def sparsemax_backward(
    p_ptr, g_ptr, gi_ptr, n_rows, n_cols, ROWS: tl.constexpr, BLOCK: tl.constexpr
):
    _, offs, mask = _tile(n_rows, n_cols, ROWS, BLOCK)
    p = tl.load(p_ptr + offs, mask=mask, other=0.0)  # [ROWS, BLOCK]
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    on = p > 0
    size = tl.sum(on.to(tl.float32), axis=1)  # [ROWS]
    mean = tl.sum(tl.where(on, g, 0.0), axis=1) / tl.maximum(size, 1.0)  # [ROWS]
    tl.store(gi_ptr + offs, tl.where(on, g - mean[:, None], 0.0), mask=mask)


@triton.jit
def entmax15_forward(
    z_ptr, p_ptr, n_rows, n_cols, max_iter, tol, ROWS: tl.constexpr, BLOCK: tl.constexpr
):
    _, offs, mask = _tile(n_rows, n_cols, ROWS, BLOCK)
    x, valid, count, mean = _load_shifted(z_ptr, offs, mask)
    y = x * 0.5  # [ROWS, BLOCK]
    # Lower bounds: -1 (the top key alone), mean - count ** -1/2 (power means on all keys).
    tau = tl.maximum(0.5 * mean - 1.0 / tl.sqrt_rn(tl.maximum(count, 1.0)), -1.0)  # [ROWS]
    thr = tau  # the final threshold of the rows done
    done = valid == 0  # empty rows: all weights 0 at any threshold
    it = tl.zeros([], tl.int32)
    pending = tl.full([], 1, tl.int32)
    while pending > 0:
        u = y - tau[:, None]  # [ROWS, BLOCK]
        on = u > 0
        size = tl.sum(on.to(tl.float32), axis=1)  # [ROWS]
        s1 = tl.sum(tl.where(on, u, 0.0), axis=1)
        s2 = tl.sum(tl.where(on, u * u, 0.0), axis=1)
        # t = tau + d solves sum_S (u - d)^2 = 1 (smaller root, cancellation-free form).
        excess = tl.maximum(s2 - 1.0, 0.0)
        disc = s1 * s1 - size * excess
        d = excess / tl.maximum(s1 + tl.sqrt_rn(tl.maximum(disc, 0.0)), _TINY)
        lowest = tl.min(tl.where(on, u, float("inf")), axis=1)
        exact = (disc >= 0) & (lowest >= d)  # every key of S stays on: t is the threshold
        norm = tl.sqrt_rn(s2)
        step = norm * (norm - 1.0) / tl.maximum(s1, _TINY)  # Newton on the 2-norm
        finished = exact | (step <= tol)
        thr = tl.where(done, thr, tau + d)
        tau = tl.where(done | finished, tau, tau + step)
        done = done | finished
        it += 1
        pending = tl.where(it < max_iter, tl.max((done == 0).to(tl.int32), axis=0), 0)
    root = tl.maximum(y - thr[:, None], 0.0)  # [ROWS, BLOCK]
    tl.store(p_ptr + offs, root * root, mask=mask)


@triton.jit
def entmax15_backward(
    p_ptr, g_ptr, gi_ptr, n_rows, n_cols, ROWS: tl.constexpr, BLOCK: tl.constexpr
):
    _, offs, mask = _tile(n_rows, n_cols, ROWS, BLOCK)
    p = tl.load(p_ptr + offs, mask=mask, other=0.0)  # [ROWS, BLOCK]
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    root = tl.sqrt_rn(p)  # the diagonal of the Jacobian
    gr = tl.where(p > 0, g * root, 0.0)
    mass = tl.maximum(tl.sum(root, axis=1), _TINY)  # [ROWS]
    mean = tl.sum(gr, axis=1) / mass  # [ROWS]
    tl.store(gi_ptr + offs, gr - root * mean[:, None], mask=mask)


@triton.jit
def alpha_entmax_forward(
    z_ptr,
    alpha_ptr,
    p_ptr,
    n_rows,
    n_cols,
    max_iter,
    tol,
    ROWS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    rows, offs, mask = _tile(n_rows, n_cols, ROWS, BLOCK)
    x, valid, count, mean = _load_shifted(z_ptr, offs, mask)
    scale = tl.load(alpha_ptr + rows, mask=rows < n_rows, other=2.0) - 1.0  # [ROWS], alpha - 1
    power = tl.maximum(1.0 / scale - 1.0, 0.0)  # beta - 1
    xs = x * scale[:, None]  # [ROWS, BLOCK]
    n_keys = tl.maximum(count, 1.0)
    # Bracket: left, the top key alone (-1) and power means; right, uniform weights.
    lo = tl.maximum(scale * mean - tl.exp(-scale * tl.log(n_keys)), -1.0)  # [ROWS]
    hi = -tl.exp(-scale * tl.log(n_keys))
    tau = lo
    done = valid == 0
    it = tl.zeros([], tl.int32)
    pending = tl.full([], 1, tl.int32)
    while pending > 0:
        gap = tl.maximum(xs - tau[:, None], 0.0)  # [ROWS, BLOCK]
        slope = _pow(gap, power[:, None])  # gap ** (beta - 1)
        mass = tl.sum(slope * gap, axis=1)  # [ROWS], sum gap ** beta
        deriv = tl.maximum(tl.sum(slope, axis=1), _TINY)
        left = mass >= 1.0
        lo = tl.where(left, tau, lo)
        hi = tl.where(left, hi, tau)
        target = tau + (mass - _pow(mass, 1.0 - scale)) / deriv  # Newton on the beta-norm
        target = tl.where((target >= lo) & (target <= hi), target, 0.5 * (lo + hi))
        finished = tl.abs(target - tau) <= tol
        tau = tl.where(done, tau, target)
        done = done | finished
        it += 1
        pending = tl.where(it < max_iter, tl.max((done == 0).to(tl.int32), axis=0), 0)
    gap = tl.maximum(xs - tau[:, None], 0.0)
    weight = _pow(gap, power[:, None]) * gap  # [ROWS, BLOCK]
    mass = tl.maximum(tl.sum(weight, axis=1), _TINY)
    tl.store(p_ptr + offs, weight / mass[:, None], mask=mask)


@triton.jit
def alpha_entmax_backward(
    p_ptr,
    g_ptr,
    alpha_ptr,
    gi_ptr,
    ga_ptr,
    n_rows,
    n_cols,
    WANT_ALPHA: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    rows, offs, mask = _tile(n_rows, n_cols, ROWS, BLOCK)
    p = tl.load(p_ptr + offs, mask=mask, other=0.0)  # [ROWS, BLOCK]
    g = tl.where(p > 0, tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32), 0.0)
    scale = tl.load(alpha_ptr + rows, mask=rows < n_rows, other=2.0) - 1.0  # [ROWS]
    slope = _pow(p, 1.0 - scale[:, None])  # p ** (2 - alpha), the Jacobian's diagonal
    gs = g * slope
    skewed = tl.sum(gs, axis=1) / tl.maximum(tl.sum(slope, axis=1), _TINY)  # [ROWS]
    tl.store(gi_ptr + offs, gs - slope * skewed[:, None], mask=mask)
    if WANT_ALPHA:
        # Correia et al. (2019): (<g, p> - skewed) / (alpha - 1)^2
        #   - (<g, p log p> - skewed * sum p log p) / (alpha - 1)
        p_log_p = p * tl.log(tl.maximum(p, _TINY))
        entropy = tl.sum(p_log_p, axis=1)  # [ROWS]
        g_p = tl.sum(g * p, axis=1)
        g_plogp = tl.sum(g * p_log_p, axis=1)
        grad = (g_p - skewed) / (scale * scale) - (g_plogp - skewed * entropy) / scale
        tl.store(ga_ptr + rows, grad, mask=rows < n_rows)
