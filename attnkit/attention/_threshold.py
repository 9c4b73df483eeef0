"""Shared machinery of the sparse normalizers: dtype handling, max-shift, row-wise iteration.

Every sparse normalizer (sparsemax, entmax-1.5, alpha-entmax) maps scores ``z`` to
``p = ((alpha - 1) z - tau)_+ ** (1 / (alpha - 1))`` with the threshold ``tau`` chosen so that
``p`` sums to one. The solvers work on the scores shifted by their row maximum, so that ``tau``
lies in ``[-1, 0)`` whatever the magnitude of the scores (scores ~1e3 keep full float32
precision near the top of the row, where the support is). They iterate on all rows at once and
retire the rows that have converged (:func:`solve_rows`), so that a few slow rows do not make
every row pay for their extra passes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = [
    "Workspace",
    "compute_dtype",
    "initial_threshold",
    "newton_tol",
    "shift_by_max",
    "solve_rows",
    "tiny",
]

# The starting threshold comes from the row restricted to the maxima of this many interleaved
# column groups (a multiple of 16: the group maximum then vectorises well on CPU). When the
# support falls in distinct groups, the sub-vector's threshold is already the exact one.
_NUM_GROUPS = 128
_GROUP_MAX_STEPS = 12

# Costs, in elementwise passes over the rows concerned, of the row bookkeeping of solve_rows:
# gathering rows (index_select) and scattering them into an output (index_copy_, which is much
# slower on CPU). A solver expects about this many more steps when some rows are done.
_GATHER_COST = 1.0
_SCATTER_COST = 4.0
_FUTURE_STEPS = 1.5


class Workspace:
    """Scratch tensors shaped like the rows of one call, reused from step to step.

    A fresh multi-megabyte tensor costs page faults on first touch, which on CPU can cost more
    than the elementwise pass that fills it; reusing a few buffers keeps the memory traffic of
    a call to the passes themselves.
    """

    def __init__(self, like: torch.Tensor) -> None:
        self._like = like  # [N, K]
        self._buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str, rows: int) -> torch.Tensor:
        """An uninitialised contiguous ``[rows, K]`` scratch tensor, one per ``name``."""
        buf = self._buffers.get(name)
        if buf is None or buf.shape[0] < rows:
            buf = self._like.new_empty((rows, self._like.shape[1]))
            self._buffers[name] = buf
        return buf[:rows]

    def forget(self) -> None:
        """Hand the current buffers over to the caller: later ``get`` calls allocate anew."""
        self._buffers.clear()


# One step of a row-wise solver: (scores [n, K], state {name: [n, 1]}, workspace) -> (done [n]
# bool, next state, finish). finish(rows) returns the final tensors ([m, ...] each) of the
# selected rows (indices [m], or None for all rows) at the point where ``done`` was evaluated.
# They may live in the workspace, and finish(None) may overwrite ``scores`` (it is called last
# or after the rows still to solve have been gathered).
Step = Callable[
    [torch.Tensor, dict[str, torch.Tensor], Workspace],
    tuple[torch.Tensor, dict[str, torch.Tensor], Callable[[torch.Tensor | None], tuple]],
]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the normalizers compute in: float32 for half precision, else the input's."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def tiny(dtype: torch.dtype) -> float:
    """Smallest positive normal number of ``dtype``, used to guard 0 / 0 on empty rows."""
    return torch.finfo(dtype).tiny


def newton_tol(dtype: torch.dtype) -> float:
    """Newton step size below which the entmax solvers stop iterating a row.

    The thresholds live in ``[-1, 0)``. After the last step the solvers recompute the weights
    at the updated threshold, whose error is about the square of the step (Newton converges
    quadratically), so a step of 1e-5 leaves float32 round-off as the only error; float64 gets
    a much tighter tolerance for ``gradcheck``.
    """
    return 1e-12 if dtype == torch.float64 else 1e-5


def shift_by_max(scores: torch.Tensor) -> torch.Tensor:
    """Subtract the row maximum, in the compute dtype.

    The result ``[..., K]`` has maximum 0 in every row that has a finite entry, and ``-inf``
    where the scores were ``-inf`` (so a fully masked row stays all ``-inf``).
    """
    dtype = compute_dtype(scores.dtype)
    top = scores.amax(dim=-1, keepdim=True).to(dtype)  # [..., 1]
    top = top.masked_fill(top == float("-inf"), 0.0)
    return torch.sub(scores, top)  # [..., K], promoted to the compute dtype


def solve_rows(
    scores: torch.Tensor,
    state: dict[str, torch.Tensor],
    step: Step,
    max_steps: int,
    step_cost: float,
    finish_cost: float,
) -> tuple[torch.Tensor, ...]:
    """Run ``step`` on the rows of ``scores [N, K]`` until every row is done.

    When some rows are done, three ways on are priced (``step_cost`` and ``finish_cost`` are
    the costs of a step and of ``finish`` in elementwise passes over the rows) and the cheapest
    is taken: keep stepping all rows (the done ones stay done); finish all rows now and keep
    stepping only the others, to be overwritten later; or finish and copy out the done rows
    alone. One host sync per step (the number of done rows). Returns the tensors of ``finish``
    for all ``N`` rows, in row order.
    """
    num_rows = scores.shape[0]
    workspace = Workspace(scores)
    rows = None  # indices of the active rows into the outputs; None while all rows are active
    outputs: tuple[torch.Tensor, ...] = ()
    gather_to = "rows_b"
    for it in range(max_steps):
        done, next_state, finish = step(scores, state, workspace)
        num_active = scores.shape[0]
        num_done = int(done.sum())
        if num_done == num_active or it == max_steps - 1:
            finals = finish(None)
            if rows is None:
                return finals
            for out, final in zip(outputs, finals):
                out.index_copy_(0, rows, final)
            return outputs
        share = num_done / num_active
        keep_cost = step_cost * share * _FUTURE_STEPS
        rest = 1 - share
        all_now_cost = (finish_cost + _GATHER_COST + _SCATTER_COST) * rest
        done_only_cost = _SCATTER_COST * share + (_GATHER_COST + _SCATTER_COST) * rest
        if num_done > 0 and min(all_now_cost, done_only_cost) < keep_cost:
            all_now = all_now_cost <= done_only_cost
            keep = (~done).nonzero().squeeze(-1)  # [n - d]
            done_idx = None if all_now else done.nonzero().squeeze(-1)  # [d]
            # Gather the rows still to solve first: finish may overwrite ``scores``. Two gather
            # buffers alternate, the source of a gather being the previous one.
            gather_to = "rows_b" if gather_to == "rows_a" else "rows_a"
            buffer = workspace.get(gather_to, keep.numel())
            remaining = torch.index_select(scores, 0, keep, out=buffer)
            finals = finish(done_idx)
            if rows is None:
                rows = torch.arange(num_rows, device=scores.device)
                if all_now:
                    outputs = finals  # full-size already: nothing to copy
                    workspace.forget()  # the outputs live there now
                else:
                    outputs = tuple(f.new_empty((num_rows, *f.shape[1:])) for f in finals)
            if outputs is not finals:
                target = rows if all_now else rows.index_select(0, done_idx)
                for out, final in zip(outputs, finals):
                    out.index_copy_(0, target, final)
            scores, rows = remaining, rows.index_select(0, keep)
            next_state = {key: value.index_select(0, keep) for key, value in next_state.items()}
        state = next_state
    raise AssertionError("unreachable: the last step always returns")


def initial_threshold(shifted: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """A lower bound of the entmax threshold of each row, usually close to it.

    ``shifted [N, K]`` has row maximum 0 (``-inf`` allowed) and ``scale = alpha - 1`` is a
    float or ``[N, 1]``. The threshold ``tau`` of ``x = scale * shifted`` solves
    ``sum_i (x_i - tau)_+ ** beta = 1`` with ``beta = 1 / scale``. Three lower bounds, the
    largest wins:

    * ``-1``: the top key alone gets at most 1;
    * ``mean(x) - K ** -scale``: by the power-mean inequality on the support, good for dense
      rows (``-inf`` keys make it ``-inf``);
    * the threshold of a sub-vector, the maxima of interleaved column groups: fewer terms in
      the sum can only lower the threshold. Newton steps from the left approach it from below;
      it is usually within a pass or two of the full row's threshold, often equal to it.
    """
    num_rows, num_keys = shifted.shape
    mean = shifted.sum(dim=-1, keepdim=True) * (scale / num_keys)  # [N, 1]
    tau = torch.clamp_min(mean - num_keys ** (-scale), -1.0)  # [N, 1]
    if num_keys < 2 * _NUM_GROUPS:
        return tau
    per_group = num_keys // _NUM_GROUPS
    used = per_group * _NUM_GROUPS
    sub = shifted[:, :used].view(num_rows, per_group, _NUM_GROUPS).amax(dim=1)  # [N, G]
    if used < num_keys:
        rest = num_keys - used
        sub[:, :rest] = torch.maximum(sub[:, :rest], shifted[:, used:])
    if not isinstance(scale, float) or scale != 1.0:
        sub = sub * scale  # [N, G]
    power = 1 / scale - 1  # beta - 1
    mask_zeros = torch.is_tensor(power) and bool((power == 0).any())
    sub_mean = sub.sum(dim=-1, keepdim=True) / _NUM_GROUPS  # [N, 1]
    sub_tau = torch.clamp_min(sub_mean - _NUM_GROUPS ** (-scale), -1.0)  # [N, 1]
    tol = 1e-12 if shifted.dtype == torch.float64 else 1e-5
    for _ in range(_GROUP_MAX_STEPS):
        gap = torch.sub(sub, sub_tau).clamp_min_(0)  # [N, G]
        mass, deriv = _power_sums(gap, power, mask_zeros)  # [N, 1] each
        step = (mass - mass.pow(1 - scale)) / deriv.clamp_min(tiny(gap.dtype))  # Newton
        step = torch.where(mass > 0, step, 0.0)  # empty rows stay put
        sub_tau = sub_tau + step
        if bool((step.abs() <= tol).all()):
            break
    return torch.maximum(tau, sub_tau)


def _power_sums(
    gap: torch.Tensor, power: float | torch.Tensor, mask_zeros: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row sums of ``gap ** (power + 1)`` and ``gap ** power``, ``[N, 1]`` each, with ``0 ** 0
    = 0`` (keys off the support do not count; ``mask_zeros`` when a tensor power has zeros)."""
    if isinstance(power, float) and power == 0:  # sparsemax
        return gap.sum(dim=-1, keepdim=True), torch.sign(gap).sum(dim=-1, keepdim=True)
    if isinstance(power, float) and power == 1:  # entmax-1.5
        norm = torch.linalg.vector_norm(gap, dim=-1, keepdim=True)
        return norm * norm, gap.sum(dim=-1, keepdim=True)
    slope = gap.pow(power)
    if mask_zeros:
        slope.mul_(torch.sign(gap))
    return torch.linalg.vecdot(slope, gap).unsqueeze(-1), slope.sum(dim=-1, keepdim=True)
