"""Batched proximal operator of 2-D anisotropic total variation on a key grid, and its groups.

For scores ``z`` laid out row-major on an ``(h, w)`` grid (key ``row * w + col``),

    prox_TV(z) = argmin_y 0.5 * ||y - z||^2 + lam * sum_{(i, j) in E} |y_i - y_j|,

where ``E`` holds the horizontal and vertical grid neighbours whose keys are both unmasked
(a key is masked when its score is ``-inf``; it keeps ``-inf`` and is left out of the graph).
This is the structured step of TVmax (Martins, Farinhas, Treviso, Niculae, Aguiar, Figueiredo,
"Sparse and Structured Visual Attention", 2020, arXiv:2002.05556).

Solver. All problems of the batch are solved together, with no loop over problems:

1. FISTA with adaptive (gradient) restart (Beck & Teboulle 2009; O'Donoghue & Candes 2015) on
   the dual, ``min_u 0.5 ||z - D^T u||^2`` subject to ``|u_e| <= lam`` (``u_e = 0`` on removed
   edges), where ``D`` is the edge difference operator, and ``y = z - D^T u``. An iteration is
   about fifteen in-place elementwise operations on ``[N, 2, h, w]`` tensors, on CPU or GPU.
2. Every ``check_every`` iterations, the problems whose iterate moved by less than ``tol``
   are *polished* (with an exponential back-off after failures): the fused groups
   (grid-connected keys whose values differ by less than four times that motion) are found by
   label propagation, and the TV problem is solved exactly on that group structure,
   ``y_g = mean_{i in g}(z_i - (D^T s)_i)`` with ``s_e = lam * sign(y_j - y_i)`` on the edges
   between groups.
3. The polished ``y_p`` is certified, in float64, by the duality gap against the current dual
   point ``u``: ``gap = 0.5 ||y_p - (z - D^T u)||^2 + sum_e (lam |D y_p|_e - u_e (D y_p)_e)``
   bounds ``0.5 ||y_p - y*||^2``. Inside a group ``D y_p`` is exactly 0 and on saturated edges
   ``u_e = +-lam`` exactly, so this gap has no cancellation (the plain gap at a float32 FISTA
   iterate has, and stalls far above useful tolerances). A problem stops, and leaves the
   working set, once ``sqrt(2 gap) <= tol``, i.e. ``||y_p - y*||_2 <= tol``. With the right
   groups the polished values are exact, so in practice ``y_p`` is ``y*`` to rounding.

Why not alternate exact 1-D proxes along rows and columns (Condat's taut string, as proxTV and
the TVmax reference code do)? Those solvers are sequential along each row and do not vectorise
over a batch; the dual step is plain tensor arithmetic, and polishing supplies the exact group
structure that first-order iterations only approach. The cost: inside very large groups (``lam``
large against the score differences) the dual converges like gradient descent on the group's
Laplacian, in hundreds of iterations.

Jacobian. At the solution, ``prox_TV`` is locally ``y = A z + c`` with ``A`` the averaging over
each fused group (Niculae & Blondel 2017, Martins et al. 2020); the solver returns the groups
for that backward pass (:func:`attnkit.attention.tvmax.prox_tv2d`). The polished forward is
exactly that affine map of ``z``, so forward and backward agree.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import torch

__all__ = ["ProxTVResult", "fused_groups", "group_mean", "prox_tv2d_solve"]


class ProxTVResult(NamedTuple):
    """Output of :func:`prox_tv2d_solve` for ``N`` problems on an ``(h, w)`` grid."""

    y: torch.Tensor  # [N, h, w], the TV prox (``-inf`` at masked keys)
    groups: torch.Tensor  # [N, h * w] int64, each key's fused-group id in [0, N * h * w)
    group_size: torch.Tensor  # [N, h * w], the size of each key's group (in y's dtype)
    converged: torch.Tensor  # [N] bool, certified ||y - y*||_2 <= tol
    iterations: int  # FISTA iterations of the slowest problem


def _primal(z: torch.Tensor, uh: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """``y = z - D^T u``: an edge ``(i, j)`` with flow ``u`` adds ``u`` to ``y_i``, ``-u`` to
    ``y_j``."""
    y = z.clone()  # [N, h, w]
    y[:, :, :-1] += uh
    y[:, :, 1:] -= uh
    y[:, :-1, :] += uv
    y[:, 1:, :] -= uv
    return y


def _diffs(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``D y``: right-minus-left ``[N, h, w-1]`` and bottom-minus-top ``[N, h-1, w]``."""
    return y[:, :, 1:] - y[:, :, :-1], y[:, 1:, :] - y[:, :-1, :]


def fused_groups(fh: torch.Tensor, fv: torch.Tensor) -> torch.Tensor:
    """Connected components of the grid graph restricted to the fused edges.

    Args:
        fh: ``[N, h, w-1]`` bool, horizontal edge ``(r, c)-(r, c+1)`` is fused.
        fv: ``[N, h-1, w]`` bool, vertical edge ``(r, c)-(r+1, c)`` is fused.

    Returns:
        ``[N, h * w]`` int64: ``n * h * w + m`` for every key of problem ``n`` whose component's
        smallest key index is ``m`` (a batch-global id, ready for ``index_add``).

    Labels are propagated by alternating exact minima over fused runs along rows and along
    columns (one ``scatter_reduce`` each), plus pointer jumping, until nothing changes; the
    number of rounds grows with the number of turns of a group, not with its size.
    """
    n, h, w1 = fh.shape
    w = w1 + 1
    k = h * w
    dev = fh.device
    # A new run starts at each row's first key and after every unfused edge.
    start_h = torch.ones(n, h, w, dtype=torch.long, device=dev)
    start_h[:, :, 1:] = (~fh).long()
    row_base = torch.arange(n * h, device=dev).view(n, h, 1) * w
    run_h = (start_h.cumsum(2) - 1 + row_base).view(n, k)  # [N, K], global row-run ids
    start_v = torch.ones(n, h, w, dtype=torch.long, device=dev)
    start_v[:, 1:, :] = (~fv).long()
    col_base = torch.arange(n * w, device=dev).view(n, 1, w) * h
    run_v = (start_v.cumsum(1) - 1 + col_base).view(n, k)  # [N, K], global column-run ids
    run_h, run_v = run_h.view(-1), run_v.view(-1)  # [N * K]

    labels = torch.arange(k, device=dev).repeat(n)  # [N * K], local key index
    fill = torch.full((n * k,), k, dtype=torch.long, device=dev)
    for _ in range(k + 1):
        prev = labels
        for run in (run_h, run_v):
            low = fill.scatter_reduce(0, run, labels, reduce="amin")  # [N * K] per run
            labels = low[run]
        labels = labels.view(n, k).gather(1, labels.view(n, k)).view(-1)  # pointer jumping
        if torch.equal(labels, prev):
            break
    offset = torch.arange(n, device=dev).repeat_interleave(k) * k
    return (labels + offset).view(n, k)


def group_mean(values: torch.Tensor, groups: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """Replace each entry of ``values [N, K]`` by the mean over its group.

    ``groups [N, K]`` holds batch-global group ids, ``size [N, K]`` the size of each entry's
    group (as returned by :func:`prox_tv2d_solve`).
    """
    flat = groups.view(-1)
    sums = torch.zeros(flat.numel(), dtype=values.dtype, device=values.device)
    sums.index_add_(0, flat, values.reshape(-1))
    return sums[flat].view_as(groups) / size


def _polish(
    z: torch.Tensor,
    y: torch.Tensor,
    lam: float,
    eh: torch.Tensor | None,
    ev: torch.Tensor | None,
    eps: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact TV solution on the group structure read off ``y`` (edges fused when ``|D y| <=
    eps``): ``(y_polished [N, h, w], groups [N, K], group_size [N, K])``."""
    n, h, w = z.shape
    dh, dv = _diffs(y)
    fh, fv = dh.abs() <= eps, dv.abs() <= eps
    if eh is not None:
        fh, fv = fh & (eh > 0), fv & (ev > 0)
    groups = fused_groups(fh, fv)  # [N, K]
    sh = torch.sign(dh).masked_fill_(fh, 0.0).mul_(lam)  # [N, h, w-1], dual on group borders
    sv = torch.sign(dv).masked_fill_(fv, 0.0).mul_(lam)  # [N, h-1, w]
    if eh is not None:
        sh.mul_(eh)
        sv.mul_(ev)
    shifted = _primal(z, sh, sv).view(n, h * w)  # [N, K]
    flat = groups.view(-1)
    size = torch.bincount(flat, minlength=flat.numel()).to(z.dtype)[flat].view(n, h * w)
    return group_mean(shifted, groups, size).view(n, h, w), groups, size


def _certified_gap(
    z: torch.Tensor,
    yp: torch.Tensor,
    uh: torch.Tensor,
    uv: torch.Tensor,
    lam: float,
    eh: torch.Tensor | None,
    ev: torch.Tensor | None,
) -> torch.Tensor:
    """Duality gap of primal ``yp`` and dual ``u`` per problem ``[N]``, without cancellation."""
    resid = yp - _primal(z, uh, uv)  # [N, h, w]
    dh, dv = _diffs(yp)
    th = lam * dh.abs() - uh * dh  # [N, h, w-1], >= 0 since |u| <= lam
    tv = lam * dv.abs() - uv * dv
    if eh is not None:
        th, tv = th * eh, tv * ev
    return 0.5 * resid.square().sum((1, 2)) + th.sum((1, 2)) + tv.sum((1, 2))


class _Working:
    """FISTA state of the problems still being solved (all tensors share the leading dim).

    The dual lives in one ``[n, 2, h, w]`` tensor per variable: channel 0 holds the horizontal
    edges in ``[:, :, :w-1]``, channel 1 the vertical edges in ``[:, :h-1, :]``. The padding
    slots start at 0 and every update is linear or a clamp there, so they stay 0; one call per
    update then covers both directions.
    """

    def __init__(self, z, valid, rows, lam, tol, scale):
        n, h, w = z.shape
        self.z, self.rows = z, rows  # [n, h, w], [n]
        unit = torch.finfo(z.dtype).eps * scale  # [n], rounding level of the scores
        self.floor = 32 * unit  # smallest fusion threshold
        self.tol = (16 * math.sqrt(h * w) * unit).clamp_min(tol)  # [n], reachable tolerance
        self.bound = self.eh = self.ev = None  # edge weights (1 kept, 0 removed) when masked
        if not bool(valid.all()):
            self.bound = z.new_zeros(n, 2, h, w)
            self.bound[:, 0, :, :-1] = valid[:, :, 1:] & valid[:, :, :-1]
            self.bound[:, 1, :-1, :] = valid[:, 1:, :] & valid[:, :-1, :]
            self.eh, self.ev = self.bound[:, 0, :, :-1], self.bound[:, 1, :-1, :]
            self.bound = self.bound * lam  # [n, 2, h, w], the box of the dual
        self.u, self.nxt, self.g, self.p = (z.new_zeros(n, 2, h, w) for _ in range(4))
        self.y = torch.empty_like(z)
        self.y_prev = z.clone()  # the primal iterate at the last check (u = 0)
        self.t = z.new_ones(n, 1, 1, 1)
        self.fails = torch.zeros(n, dtype=torch.long, device=z.device)  # failed certificates
        self.wait = torch.zeros_like(self.fails)  # checks to skip before the next attempt

    @property
    def uh(self) -> torch.Tensor:
        return self.u[:, 0, :, :-1]  # [n, h, w-1]

    @property
    def uv(self) -> torch.Tensor:
        return self.u[:, 1, :-1, :]  # [n, h-1, w]

    def keep(self, mask: torch.Tensor) -> None:
        for name, value in vars(self).items():
            if isinstance(value, torch.Tensor):
                setattr(self, name, value[mask])
        if self.bound is not None:
            self.eh = (self.bound[:, 0, :, :-1] > 0).to(self.z.dtype)
            self.ev = (self.bound[:, 1, :-1, :] > 0).to(self.z.dtype)

    def steps(self, lam: float, step: float, count: int) -> None:
        """``count`` FISTA iterations on the dual, in place, with gradient restart."""
        n = self.z.shape[0]
        y, nxt, g, p = self.y, self.nxt, self.g, self.p
        for _ in range(count):
            u = self.u
            y.copy_(self.z)  # y = z - D^T p at the extrapolated point
            y[:, :, :-1] += p[:, 0, :, :-1]
            y[:, :, 1:] -= p[:, 0, :, :-1]
            y[:, :-1, :] += p[:, 1, :-1, :]
            y[:, 1:, :] -= p[:, 1, :-1, :]
            torch.sub(y[:, :, 1:], y[:, :, :-1], out=nxt[:, 0, :, :-1])  # D y
            torch.sub(y[:, 1:, :], y[:, :-1, :], out=nxt[:, 1, :-1, :])
            torch.add(p, nxt, alpha=step, out=nxt)  # ascent step, then projection on the box
            if self.bound is None:
                nxt.clamp_(-lam, lam)
            else:
                torch.clamp(nxt, -self.bound, self.bound, out=nxt)
            torch.sub(nxt, u, out=g)  # momentum direction u_next - u
            p.sub_(nxt)  # p - u_next, the (scaled) gradient mapping
            uphill = torch.linalg.vecdot(p.view(n, -1), g.view(n, -1))  # [n]
            # Gradient restart (O'Donoghue & Candes 2015): drop momentum that points uphill.
            t = torch.where(uphill.view(-1, 1, 1, 1) > 0, 1.0, self.t)
            t_next = 0.5 * (1.0 + torch.sqrt(1.0 + 4.0 * t * t))
            torch.addcmul(nxt, g, (t - 1.0) / t_next, out=p)
            self.u, nxt = nxt, u
            self.t = t_next
        self.nxt = nxt


def prox_tv2d_solve(
    z: torch.Tensor,
    lam: float,
    tol: float = 1e-5,
    max_iter: int = 1000,
    check_every: int = 10,
) -> ProxTVResult:
    """Solve ``N`` grid TV proxes ``z [N, h, w]`` (``-inf`` = masked key), without autograd.

    Args:
        z: scores ``[N, h, w]`` in float32 or float64; ``-inf`` marks masked keys.
        lam: TV weight (``>= 0``).
        tol: a problem stops once its solution is certified within ``tol`` of the exact prox
            (Euclidean norm over its keys). The tolerance is raised, per problem, to what the
            dtype can certify: ``16 sqrt(K) * eps(dtype) * max(1, score range)`` (about
            ``1e-5 * range`` at ``K = 850`` in float32).
        max_iter: FISTA iteration budget; problems not certified by then return their best
            candidate (the one with the smaller certified gap) and a warning is issued.
        check_every: iterations between two checks (a check polishes and certifies the
            problems whose iterate moved by at most their tolerance since the last check).

    Returns:
        A :class:`ProxTVResult`.

    On CPU the problems are solved in blocks of about ``2**18`` scores, so that the working
    set of the iterations stays in cache (markedly faster than one huge batch there); on
    other devices all problems form one block.
    """
    n, h, w = z.shape
    k = h * w
    valid = z != float("-inf")  # [N, h, w]
    alive = valid.flatten(1).any(1).view(n, 1, 1)  # [N, 1, 1], rows with an unmasked key
    # prox_TV(z + c) = prox_TV(z) + c: solve on max-shifted scores for float32 accuracy.
    top = z.amax((1, 2), keepdim=True).masked_fill(~alive, 0.0)  # [N, 1, 1]
    zs = (z - top).masked_fill_(~valid, 0.0)  # [N, h, w]
    out = ProxTVResult(
        zs.clone(),
        torch.arange(n * k, device=z.device).view(n, k),
        zs.new_ones(n, k),
        torch.ones(n, dtype=torch.bool, device=z.device),
        0,
    )
    iterations = 0
    if lam > 0 and k > 1 and n > 0:
        # The dual is clamped to +-lam in z's dtype; certify with exactly that lam.
        lam = float(torch.tensor(lam, dtype=z.dtype))
        scale = (-zs.amin((1, 2))).clamp_min(1.0)  # [N], max(1, score range)
        block = n if z.device.type != "cpu" else max(1, 2**18 // k)
        for lo in range(0, n, block):
            rows = torch.arange(lo, min(n, lo + block), device=z.device)
            ws = _Working(zs[rows], valid[rows], rows, lam, tol, scale[rows])
            its = _solve_block(ws, lam, max_iter, check_every, out)
            iterations = max(iterations, its)
        if not bool(out.converged.all()):
            warnings.warn(
                f"prox_tv2d: {int((~out.converged).sum())} of {n} problems not certified "
                f"within tol={tol:g} after max_iter={max_iter}; raise max_iter (or tol)",
                RuntimeWarning,
                stacklevel=3,
            )
    y = (out.y + top).masked_fill_(~valid, float("-inf"))
    return out._replace(y=y, iterations=iterations)


def _solve_block(
    ws: _Working, lam: float, max_iter: int, check_every: int, out: ProxTVResult
) -> int:
    """Iterate on one block until every problem is certified or ``max_iter``; fill ``out``."""
    h, w = ws.z.shape[1:]
    step = 1.0 / (4.0 if min(h, w) == 1 else 8.0)  # 1 / ||D||^2 bound: 2 * max degree
    finished = torch.zeros(ws.z.shape[0], dtype=torch.bool, device=ws.z.device)
    it = 0
    while True:
        count = min(check_every, max_iter - it)
        ws.steps(lam, step, count)
        it += count
        last = it >= max_iter
        y = _primal(ws.z, ws.uh, ws.uv)  # [n, h, w]
        moved = (y - ws.y_prev).abs().amax((1, 2))  # [n]
        ws.y_prev = y
        ws.wait -= 1
        cand = ~finished & (((moved <= ws.tol) & (ws.wait <= 0)) | last)  # [n]
        if bool(cand.any()):
            certified, yp, grp, size = _polish_and_certify(ws, cand, y, moved, lam, last)
            # Back off exponentially (up to 8 checks) after a failed certificate.
            failed = cand.nonzero().view(-1)[~certified]
            ws.fails[failed] += 1
            ws.wait[failed] = (2 ** ws.fails[failed]).clamp_max(8)
            done = certified | last  # [c]
            rows = ws.rows[cand][done]
            out.y[rows] = yp[done]
            out.groups[rows] = _regroup(grp[done], rows, h * w)
            out.group_size[rows] = size[done]
            if last:
                out.converged[ws.rows[cand][~certified]] = False
            finished[cand.nonzero().view(-1)[done]] = True
        if last or bool(finished.all()):
            return it
        if 4 * int(finished.sum()) >= finished.numel():  # compact once a quarter is done
            ws.keep(~finished)
            finished = finished[~finished]


def _polish_and_certify(ws, cand, y, moved, lam, last):
    """Polish the candidate problems and certify them against the current dual, in float64.

    Returns ``(certified [c], y [c, h, w], groups [c, K], group_size [c, K])`` for the ``c``
    candidates. At ``last``, an uncertified candidate gets the better certified of its polished
    and its raw iterate.
    """
    f64 = torch.float64  # exact enough that the certificate reflects the dual point only
    z, uh, uv = ws.z[cand].to(f64), ws.uh[cand].to(f64), ws.uv[cand].to(f64)
    y = y[cand].to(f64)
    eh = ev = None
    if ws.eh is not None:
        eh, ev = ws.eh[cand].to(f64), ws.ev[cand].to(f64)
    tol = ws.tol[cand]
    # Fuse edges that differ by less than the iterate's recent motion: by then the iterate is
    # that close to the solution, whose fused edges have difference exactly 0.
    eps = torch.maximum(4.0 * moved[cand], ws.floor[cand]).view(-1, 1, 1)  # [c, 1, 1]
    yp, grp, size = _polish(z, y, lam, eh, ev, eps)
    gap = _certified_gap(z, yp, uh, uv, lam, eh, ev)  # [c]
    certified = (2.0 * gap.clamp_min(0)).sqrt() <= tol
    if last:
        raw = _certified_gap(z, y, uh, uv, lam, eh, ev)
        yp = torch.where((raw < gap).view(-1, 1, 1), y, yp)
    return certified, yp.to(ws.z.dtype), grp, size.to(ws.z.dtype)


def _regroup(groups: torch.Tensor, rows: torch.Tensor, k: int) -> torch.Tensor:
    """Renumber batch-global group ids of a working subset ``[m, K]`` to the rows ``rows``."""
    base = torch.div(groups[:, :1], k, rounding_mode="floor") * k  # [m, 1], old row offset
    return groups - base + rows.view(-1, 1) * k
