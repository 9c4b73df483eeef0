"""Batched proximal operator of 2-D anisotropic total variation on a key grid, with its Jacobian.

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
   about twenty in-place elementwise operations on ``[N, h, w]`` tensors, on CPU or GPU.
2. Every ``check_every`` iterations, the problems whose iterate moved by less than ``tol``
   are *polished*: the fused groups (grid-connected keys whose values differ by less than four
   times that motion) are found by label propagation, and the TV problem is solved exactly on
   that group structure, ``y_g = mean_{i in g}(z_i - (D^T s)_i)`` with ``s_e = lam * sign(y_j -
   y_i)`` on the edges between groups.
3. The polished ``y_p`` is certified, in float64, by the duality gap against the current dual
   point ``u``: ``gap = 0.5 ||y_p - (z - D^T u)||^2 + sum_e (lam |D y_p|_e - u_e (D y_p)_e)``
   bounds ``0.5 ||y_p - y*||^2``. Inside a group ``D y_p`` is exactly 0 and on saturated edges
   ``u_e = +-lam`` exactly, so this gap has no cancellation (the plain gap at a float32 FISTA
   iterate has, and stalls far above useful tolerances). A problem stops, and leaves the
   working set, once ``sqrt(2 gap) <= tol``, i.e. ``||y_p - y*||_2 <= tol``. With the right
   groups the polished values are exact, so in practice ``y_p`` is ``y*`` to rounding.

A direct 1-D solver (Condat's taut string, as in proxTV or the TVmax reference code, which
alternates exact row and column proxes) is sequential along each row and cannot be vectorised
over a batch without a Python loop; the dual FISTA step is plain tensor arithmetic, and the
polishing step supplies the exact group structure that first-order iterations only approach.

Jacobian. At the solution, ``prox_TV`` is locally ``y = A z + c`` with ``A`` the averaging over
each fused group (Niculae & Blondel 2017, Martins et al. 2020), so the backward pass returns the
group mean of the incoming gradient. The polished forward is exactly that affine map of ``z``,
so forward and backward agree (``gradcheck`` holds wherever the groups are locally stable).
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import torch

__all__ = ["ProxTVResult", "fused_groups", "group_mean", "prox_tv2d", "prox_tv2d_solve"]


class ProxTVResult(NamedTuple):
    """Output of :func:`prox_tv2d_solve` for ``N`` problems on an ``(h, w)`` grid."""

    y: torch.Tensor  # [N, h, w], the TV prox (``-inf`` at masked keys)
    groups: torch.Tensor  # [N, h * w] int64, each key's fused-group id in [0, N * h * w)
    group_size: torch.Tensor  # [N, h * w], the size of each key's group (in y's dtype)
    converged: torch.Tensor  # [N] bool, certified ||y - y*||_2 <= tol
    iterations: int  # FISTA iterations of the slowest problem


def _primal(z: torch.Tensor, uh: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """``y = z - D^T u``: edge ``(i, j)`` with flow ``u`` adds ``u`` to ``y_i``, ``-u`` to ``y_j``."""
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
) -> tuple[torch.Tensor, ...]:
    """Exact TV solution on the group structure read off ``y`` (edges fused when ``|D y| <=
    eps``): ``(y_polished [N, h, w], groups [N, K], group_size [N, K], fh, fv, sh, sv)`` with
    the fused-edge masks ``f`` and the dual ``s`` (``+-lam`` on group borders, else 0)."""
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
    yp = group_mean(shifted, groups, size).view(n, h, w)
    return yp, groups, size, fh, fv, sh, sv


def _group_flow(r, fh, fv, iters):
    """Flow ``q`` on the fused edges with ``D^T q = r`` (``r`` sums to 0 over each group).

    The potential flow ``q = D phi`` with ``L phi = r``, ``L`` the Laplacian of the fused
    edges, by batched conjugate gradients: with the border duals it completes a dual point
    for the polished solution far faster than the FISTA iterations, whose convergence inside
    large groups is that of gradient descent on this Laplacian.
    """
    mh, mv = fh.to(r.dtype), fv.to(r.dtype)

    def laplacian(phi):
        gh, gv = _diffs(phi)
        return -_primal(torch.zeros_like(phi), gh * mh, gv * mv)  # D^T (m * D phi)

    phi, res = torch.zeros_like(r), r.clone()
    p, rs = r.clone(), r.square().sum((1, 2), keepdim=True)  # [c, 1, 1]
    floor = 1e-30 + 1e-28 * rs
    for i in range(iters):
        ap = laplacian(p)
        alpha = rs / (p * ap).sum((1, 2), keepdim=True).clamp_min(1e-300)
        phi.add_(alpha * p)
        res.sub_(alpha * ap)
        rs_next = res.square().sum((1, 2), keepdim=True)
        if i % 8 == 7 and bool((rs_next <= floor).all()):
            break
        p = res + (rs_next / rs.clamp_min(1e-300)) * p
        rs = rs_next
    gh, gv = _diffs(phi)
    return gh * mh, gv * mv


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
    """FISTA state of the problems still being solved (all tensors share the leading dim)."""

    def __init__(self, z, valid, rows, tol, scale):
        n, h, w = z.shape
        self.z, self.rows = z, rows  # [n, h, w], [n]
        unit = torch.finfo(z.dtype).eps * scale  # [n], rounding level of the scores
        self.floor = 32 * unit  # smallest fusion threshold
        self.tol = (16 * math.sqrt(h * w) * unit).clamp_min(tol)  # [n], reachable tolerance
        self.eh = self.ev = None  # edge weights (1 kept, 0 removed), None when nothing masked
        if not bool(valid.all()):
            self.eh = (valid[:, :, 1:] & valid[:, :, :-1]).to(z.dtype)  # [n, h, w-1]
            self.ev = (valid[:, 1:, :] & valid[:, :-1, :]).to(z.dtype)  # [n, h-1, w]
        self.uh, self.nh, self.gh, self.ph = (z.new_zeros(n, h, w - 1) for _ in range(4))
        self.uv, self.nv, self.gv, self.pv = (z.new_zeros(n, h - 1, w) for _ in range(4))
        self.y = torch.empty_like(z)
        self.y_prev = z.clone()  # the primal iterate at the last check (u = 0)
        self.t = z.new_ones(n, 1, 1)

    def keep(self, mask: torch.Tensor) -> None:
        for name, value in vars(self).items():
            if isinstance(value, torch.Tensor):
                setattr(self, name, value[mask])

    def steps(self, lam: float, step: float, count: int) -> None:
        """``count`` FISTA iterations on the dual, in place, with gradient restart."""
        n = self.z.shape[0]
        for _ in range(count):
            y = self.y
            y.copy_(self.z)
            y[:, :, :-1] += self.ph
            y[:, :, 1:] -= self.ph
            y[:, :-1, :] += self.pv
            y[:, 1:, :] -= self.pv
            uphill = self.z.new_zeros(n)
            for u, nxt, g, p, edges, diff in (
                (self.uh, self.nh, self.gh, self.ph, self.eh, (y[:, :, 1:], y[:, :, :-1])),
                (self.uv, self.nv, self.gv, self.pv, self.ev, (y[:, 1:, :], y[:, :-1, :])),
            ):
                torch.sub(*diff, out=nxt)  # D y at the extrapolated point
                torch.add(p, nxt, alpha=step, out=nxt).clamp_(-lam, lam)  # projected ascent
                if edges is not None:
                    nxt.mul_(edges)
                torch.sub(nxt, u, out=g)  # momentum direction u_next - u
                p.sub_(nxt)  # p - u_next, the (scaled) gradient mapping
                uphill += torch.linalg.vecdot(p.view(n, -1), g.view(n, -1))
            # Gradient restart (O'Donoghue & Candes 2015): drop momentum that points uphill.
            t = torch.where(uphill.view(-1, 1, 1) > 0, 1.0, self.t)
            t_next = 0.5 * (1.0 + torch.sqrt(1.0 + 4.0 * t * t))
            beta = (t - 1.0) / t_next  # [n, 1, 1]
            torch.addcmul(self.nh, self.gh, beta, out=self.ph)
            torch.addcmul(self.nv, self.gv, beta, out=self.pv)
            self.uh, self.nh = self.nh, self.uh
            self.uv, self.nv = self.nv, self.uv
            self.t = t_next


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
    set of the iterations stays in cache (several times faster than one huge batch there); on
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
            ws = _Working(zs[rows], valid[rows], rows, tol, scale[rows])
            its = _solve_block(ws, lam, max_iter, check_every, out)
            iterations = max(iterations, its)
        _warn_unconverged(int((~out.converged).sum()), n, tol, max_iter)
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
        cand = ~finished & ((moved <= ws.tol) | last)  # [n]
        if bool(cand.any()):
            certified, yp, grp, size = _polish_and_certify(ws, cand, y, moved, lam, last)
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
    """Polish the candidate problems and certify them, in float64.

    The polished solution is certified against the better of two dual points: the FISTA
    iterate, and the border duals completed by a flow inside the groups (:func:`_group_flow`).
    The completed dual also warm-starts the iterations of the problems it does not certify,
    when it is better. Returns ``(certified [c], y [c, h, w], groups [c, K], group_size [c,
    K])``; at ``last``, an uncertified candidate gets the better of its polished and its raw
    iterate.
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
    yp, grp, size, fh, fv, sh, sv = _polish(z, y, lam, eh, ev, eps)
    gap = _certified_gap(z, yp, uh, uv, lam, eh, ev)  # [c]
    certified = (2.0 * gap.clamp_min(0)).sqrt() <= tol
    if not bool(certified.all()):
        qh, qv = _group_flow(_primal(z, sh, sv) - yp, fh, fv, 2 * sum(z.shape[1:]))
        ch, cv = (sh + qh).clamp_(-lam, lam), (sv + qv).clamp_(-lam, lam)  # [c, ...]
        if eh is not None:
            ch, cv = ch * eh, cv * ev
        gap2 = _certified_gap(z, yp, ch, cv, lam, eh, ev)
        certified |= (2.0 * gap2.clamp_min(0)).sqrt() <= tol
        # Warm start where the completed dual has the better dual objective.
        better = _primal(z, ch, cv).square().sum((1, 2)) < _primal(z, uh, uv).square().sum((1, 2))
        idx = cand.nonzero().view(-1)[better & ~certified]
        if idx.numel():
            sel = (better & ~certified).view(-1)
            for name, value in (("uh", ch), ("uv", cv), ("ph", ch), ("pv", cv)):
                getattr(ws, name)[idx] = value[sel].to(ws.z.dtype)
            ws.t[idx] = 1.0
    if last:
        raw = _certified_gap(z, y, uh, uv, lam, eh, ev)
        yp = torch.where((raw < gap).view(-1, 1, 1), y, yp)
    return certified, yp.to(ws.z.dtype), grp, size.to(ws.z.dtype)


def _warn_unconverged(count: int, n: int, tol: float, max_iter: int) -> None:
    if count:
        warnings.warn(
            f"prox_tv2d: {count} of {n} problems not certified within tol={tol:g} after "
            f"max_iter={max_iter}; raise max_iter (or tol)",
            RuntimeWarning,
            stacklevel=4,
        )


def _regroup(groups: torch.Tensor, rows: torch.Tensor, k: int) -> torch.Tensor:
    """Renumber batch-global group ids of a working subset ``[m, K]`` to the rows ``rows``."""
    base = torch.div(groups[:, :1], k, rounding_mode="floor") * k  # [m, 1], old row offset
    return groups - base + rows.view(-1, 1) * k


class _ProxTV2D(torch.autograd.Function):
    """``prox_TV`` with the group-averaging Jacobian (see the module docstring)."""

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

    The backward pass averages the incoming gradient over each fused group of the solution and
    gives zero gradient to masked keys. See :func:`prox_tv2d_solve` for the arguments.
    """
    return _ProxTV2D.apply(z, float(lam), float(tol), int(max_iter), int(check_every))
