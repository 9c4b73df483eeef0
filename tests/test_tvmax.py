"""TVmax (Martins et al. 2020): sparsemax after a 2-D total-variation prox over the key grid.

The reference is independent of attnkit: the TV prox is solved as its dual box-constrained QP
``min_u 0.5 ||z - D^T u||^2, |u| <= lam`` with scipy's L-BFGS-B on an explicit numpy incidence
matrix (a quasi-Newton method, not the FISTA + polishing of attnkit), and sparsemax is the
``entmax`` package's.
"""

from __future__ import annotations

import warnings

import entmax
import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from attnkit.attention.normalizers import get_normalizer
from attnkit.attention.tv_prox import prox_tv2d_solve
from attnkit.attention.tvmax import TVMax, prox_tv2d, tvmax

NEG_INF = float("-inf")


def grid_edges(h: int, w: int, valid: np.ndarray) -> list[tuple[int, int]]:
    """Horizontal and vertical neighbour pairs of the row-major (h, w) grid, both unmasked."""
    edges = []
    for r in range(h):
        for c in range(w):
            i = r * w + c
            if c + 1 < w and valid[i] and valid[i + 1]:
                edges.append((i, i + 1))
            if r + 1 < h and valid[i] and valid[i + w]:
                edges.append((i, i + w))
    return edges


def reference_prox(z: np.ndarray, lam: float, h: int, w: int) -> np.ndarray:
    """Exact 2-D TV prox of one row-major grid by L-BFGS-B on the dual QP (float64)."""
    z = np.asarray(z, dtype=np.float64).ravel()
    valid = np.isfinite(z)
    zf = np.where(valid, z, 0.0)
    edges = grid_edges(h, w, valid)
    if not edges or lam == 0:
        return z.copy()
    d = np.zeros((len(edges), z.size))
    for e, (i, j) in enumerate(edges):
        d[e, i], d[e, j] = -1.0, 1.0

    def objective(u):
        y = zf - d.T @ u
        return 0.5 * y @ y, -(d @ y)

    res = minimize(
        objective,
        np.zeros(len(edges)),
        jac=True,
        method="L-BFGS-B",
        bounds=[(-lam, lam)] * len(edges),
        options={"maxiter": 100_000, "ftol": 1e-16, "gtol": 1e-13, "maxcor": 50},
    )
    y = zf - d.T @ res.x
    y[~valid] = -np.inf
    return y


def reference_tvmax(scores: torch.Tensor, lam: float, h: int, w: int) -> torch.Tensor:
    rows = scores.detach().double().reshape(-1, h * w).numpy()
    prox = np.stack([reference_prox(r, lam, h, w) for r in rows])
    return entmax.sparsemax(torch.from_numpy(prox), dim=-1).reshape(scores.shape)


def components(y: np.ndarray, h: int, w: int, tol: float) -> list[set[int]]:
    """Connected groups of grid neighbours with equal values (|difference| <= tol)."""
    valid = np.isfinite(y)
    adj: dict[int, list[int]] = {i: [] for i in range(h * w)}
    for i, j in grid_edges(h, w, valid):
        if abs(y[i] - y[j]) <= tol:
            adj[i].append(j)
            adj[j].append(i)
    seen, groups = set(), []
    for s in range(h * w):
        if s in seen or not valid[s]:
            continue
        stack, group = [s], {s}
        while stack:
            for j in adj[stack.pop()]:
                if j not in group:
                    group.add(j)
                    stack.append(j)
        seen |= group
        groups.append(group)
    return groups


def smooth_scores(*shape: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    """Scores on a grid with plateaus and noise, so that TV fuses sizeable groups."""
    g = torch.Generator().manual_seed(seed)
    *lead, h, w = shape
    base = torch.randn(*lead, (h + 1) // 2, (w + 1) // 2, generator=g, dtype=dtype)
    up = base.repeat_interleave(2, -2).repeat_interleave(2, -1)[..., :h, :w]
    return up + 0.3 * torch.randn(*shape, generator=g, dtype=dtype)


@pytest.mark.parametrize(
    ("h", "w", "lam"),
    [(3, 4, 0.1), (3, 4, 0.6), (4, 5, 0.3), (5, 5, 1.5), (1, 9, 0.4), (6, 2, 0.25)],
)
def test_prox_matches_reference_qp(h, w, lam):
    z = smooth_scores(3, h, w, seed=h * 10 + w)
    ours = prox_tv2d_solve(z, lam, tol=1e-10, max_iter=20_000)
    assert bool(ours.converged.all())
    ref = np.stack([reference_prox(r, lam, h, w) for r in z.reshape(3, -1).numpy()])
    np.testing.assert_allclose(ours.y.reshape(3, -1).numpy(), ref, atol=1e-7)


def test_tvmax_float32_defaults_match_reference():
    h, w = 6, 7
    z = 2 * smooth_scores(4, 3, h, w, seed=5).reshape(4, 3, h * w).float()
    for lam in (0.05, 0.3):
        ours = tvmax(z, (h, w), lam=lam)
        assert ours.dtype == torch.float32
        torch.testing.assert_close(ours.double(), reference_tvmax(z, lam, h, w), atol=1e-5, rtol=0)


def test_lam_zero_is_sparsemax():
    z = torch.randn(2, 3, 5, 20, dtype=torch.float64)
    expected = entmax.sparsemax(z, dim=-1)
    torch.testing.assert_close(tvmax(z, (4, 5), lam=0.0), expected, atol=1e-12, rtol=0)
    # The prox moves each score by at most 4 lam (four edges per key), sparsemax is 1-Lipschitz.
    torch.testing.assert_close(tvmax(z, (4, 5), lam=1e-8), expected, atol=1e-6, rtol=0)


def test_large_lam_gives_uniform_over_unmasked_keys():
    z = torch.randn(3, 30, dtype=torch.float64)
    z[1, 5::6] = NEG_INF  # right column masked: the unmasked keys stay connected
    z[2, 24:] = NEG_INF  # bottom row masked
    out = tvmax(z, (5, 6), lam=100.0, tol=1e-9)
    valid = torch.isfinite(z)
    expected = valid.double() / valid.sum(-1, keepdim=True)
    torch.testing.assert_close(out, expected, atol=1e-9, rtol=0)
    prox = prox_tv2d_solve(z.view(3, 5, 6), 100.0, tol=1e-9).y.view(3, 30)
    means = torch.where(valid, z, 0).sum(-1) / valid.sum(-1)  # the prox is the mean
    torch.testing.assert_close(prox[valid], means.view(3, 1).expand(3, 30)[valid])


def test_distribution_and_contiguous_fused_groups():
    h, w = 6, 8
    z = 3 * smooth_scores(20, h, w, seed=11)
    res = prox_tv2d_solve(z, 0.4, tol=1e-10)
    out = tvmax(z.view(20, -1), (h, w), lam=0.4, tol=1e-10)
    assert bool((out >= 0).all())
    torch.testing.assert_close(out.sum(-1), torch.ones(20, dtype=torch.float64))
    y = res.y.view(20, -1).numpy()
    groups = res.groups.numpy()
    for n in range(20):
        # Groups are the connected equal-value regions of the solution, no more, no less.
        found = {}
        for i, g in enumerate(groups[n]):
            found.setdefault(g, set()).add(i)
        expected = components(y[n], h, w, tol=1e-12)
        assert sorted(map(sorted, found.values())) == sorted(map(sorted, expected))
        assert any(len(g) > 1 for g in expected)  # the test does exercise fusion
        for i, j in grid_edges(h, w, np.ones(h * w, bool)):
            if groups[n, i] != groups[n, j]:
                assert abs(y[n, i] - y[n, j]) > 1e-9


def test_gradcheck_float64():
    h, w = 3, 4
    z = 2 * smooth_scores(3, h, w, seed=3).reshape(3, h * w)
    z[2, 3::4] = NEG_INF  # a padded last column (its numerical derivative is 0)
    z.requires_grad_(True)

    def f(x):
        return tvmax(x, (h, w), lam=0.3, tol=1e-11, max_iter=20_000)

    # TV prox and sparsemax are piecewise affine: away from a change of the fused groups or of
    # the support, finite differences are exact up to rounding.
    assert torch.autograd.gradcheck(f, (z,), eps=1e-6, atol=1e-6)


def test_gradient_matches_finite_differences_of_reference():
    h, w, lam = 4, 4, 0.35
    z = 2 * smooth_scores(h, w, seed=8).reshape(1, h * w)
    probe = torch.randn(1, h * w, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x = z.clone().requires_grad_(True)
    (tvmax(x, (h, w), lam=lam, tol=1e-11) * probe).sum().backward()
    # The map is piecewise affine, so a large step is exact between kinks and keeps the
    # reference solver's ~1e-9 error small in the difference quotient.
    step, fd = 1e-3, torch.zeros(h * w, dtype=torch.float64)
    for i in range(h * w):
        e = torch.zeros_like(z)
        e[0, i] = step
        plus = (reference_tvmax(z + e, lam, h, w) * probe).sum()
        minus = (reference_tvmax(z - e, lam, h, w) * probe).sum()
        fd[i] = (plus - minus) / (2 * step)
    torch.testing.assert_close(x.grad.view(-1), fd, atol=2e-5, rtol=0)


def test_prox_jacobian_is_group_averaging():
    h, w, lam = 5, 6, 0.5
    z = smooth_scores(h, w, seed=21).view(1, h, w).requires_grad_(True)
    g = torch.randn(1, h, w, dtype=torch.float64)
    (prox_tv2d(z, lam, tol=1e-11) * g).sum().backward()
    ref = reference_prox(z.detach().view(-1).numpy(), lam, h, w)
    expected = np.zeros(h * w)
    for group in components(ref, h, w, tol=1e-7):
        idx = sorted(group)
        expected[idx] = g.view(-1)[idx].mean().item()
    np.testing.assert_allclose(z.grad.view(-1).numpy(), expected, atol=1e-12)


def test_detr_padding_equals_cropped_grid():
    h, w, hv, wv = 5, 7, 4, 5  # a valid top-left (4, 5) region, padding bottom and right
    z = 2 * smooth_scores(2, 3, h, w, seed=4)
    pad = torch.ones(h, w, dtype=torch.bool)
    pad[:hv, :wv] = False
    padded = z.masked_fill(pad, NEG_INF).view(2, 3, h * w).requires_grad_(True)
    out = tvmax(padded, (h, w), lam=0.3, tol=1e-10)
    assert bool((out.view(2, 3, h, w)[..., pad] == 0).all())
    cropped = z[..., :hv, :wv].reshape(2, 3, hv * wv).clone().requires_grad_(True)
    out_c = tvmax(cropped, (hv, wv), lam=0.3, tol=1e-10)
    torch.testing.assert_close(out.view(2, 3, h, w)[..., :hv, :wv].reshape(2, 3, -1), out_c)
    probe = torch.randn(2, 3, h, w, dtype=torch.float64)
    (out * probe.view(2, 3, -1)).sum().backward()
    (out_c * probe[..., :hv, :wv].reshape(2, 3, -1)).sum().backward()
    grad = padded.grad.view(2, 3, h, w)
    assert bool((grad[..., pad] == 0).all())
    torch.testing.assert_close(grad[..., :hv, :wv].reshape(2, 3, -1), cropped.grad)


def test_arbitrary_mask_removes_edges():
    h, w, lam = 5, 6, 0.4
    gen = torch.Generator().manual_seed(9)
    z = 2 * smooth_scores(4, h, w, seed=9).reshape(4, h * w)
    mask = torch.rand(4, h * w, generator=gen) < 0.3
    z = z.masked_fill(mask, NEG_INF).requires_grad_(True)
    out = tvmax(z, (h, w), lam=lam, tol=1e-10)
    assert bool((out[mask] == 0).all())
    torch.testing.assert_close(out, reference_tvmax(z, lam, h, w), atol=1e-7, rtol=0)
    out.sum().backward()
    assert bool(torch.isfinite(z.grad).all()) and bool((z.grad[mask] == 0).all())


def test_fully_masked_rows_give_zeros():
    z = torch.randn(3, 12, dtype=torch.float64)
    z[1] = NEG_INF
    z = z.requires_grad_(True)
    out = tvmax(z, (3, 4), lam=0.2)
    assert bool((out[1] == 0).all()) and not bool(out.isnan().any())
    torch.testing.assert_close(out[[0, 2]].sum(-1), torch.ones(2, dtype=torch.float64))
    (out * torch.randn(3, 12, dtype=torch.float64)).sum().backward()
    assert bool(torch.isfinite(z.grad).all()) and bool((z.grad[1] == 0).all())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_computes_in_float32(dtype):
    z = (2 * smooth_scores(2, 4, 5, 6, seed=2)).reshape(2, 4, 30).to(dtype)
    z[0, 0, -6:] = NEG_INF
    x = z.clone().requires_grad_(True)
    out = tvmax(x, (5, 6), lam=0.2)
    assert out.dtype == dtype
    expected = tvmax(z.float(), (5, 6), lam=0.2)
    torch.testing.assert_close(out.float(), expected, atol=1e-2, rtol=0)
    out.float().pow(2).sum().backward()
    assert x.grad.dtype == dtype and bool(torch.isfinite(x.grad.float()).all())


def test_batched_equals_per_slice():
    h, w = 4, 6
    z = 2 * smooth_scores(2, 3, 5, h, w, seed=13).reshape(2, 3, 5, h * w)
    z[1, :, :, -w:] = NEG_INF
    x = z.clone().requires_grad_(True)
    out = tvmax(x, (h, w), lam=0.3, tol=1e-10)
    probe = torch.randn_like(z)
    (out * probe).sum().backward()
    for b in range(2):
        for q in range(5):
            xs = z[b, 1, q].clone().requires_grad_(True)
            single = tvmax(xs, (h, w), lam=0.3, tol=1e-10)
            (single * probe[b, 1, q]).sum().backward()
            torch.testing.assert_close(out[b, 1, q], single, atol=1e-10, rtol=0)
            torch.testing.assert_close(x.grad[b, 1, q], xs.grad, atol=1e-9, rtol=0)


def test_detr_shape_blocks_and_group_ids():
    # 320 problems of K = 850 span two CPU blocks of the solver and its working-set compaction.
    h, w = 25, 34
    z = torch.randn(320, h, w, generator=torch.Generator().manual_seed(0))
    z[160:, 20:, :] = NEG_INF
    res = prox_tv2d_solve(z, 0.05)
    assert bool(res.converged.all())
    rows = torch.arange(320).view(-1, 1)
    assert bool((torch.div(res.groups, h * w, rounding_mode="floor") == rows).all())
    for n in (0, 319):
        single = prox_tv2d_solve(z[n : n + 1], 0.05)
        torch.testing.assert_close(res.y[n], single.y[0], atol=1e-6, rtol=0)
        assert torch.equal(res.groups[n] - n * h * w, single.groups[0])


def test_no_grid_is_a_chain_and_bad_grid_raises():
    z = smooth_scores(3, 1, 10, seed=6).view(3, 10)
    torch.testing.assert_close(tvmax(z, None, lam=0.3), tvmax(z, (1, 10), lam=0.3))
    torch.testing.assert_close(
        tvmax(z, None, lam=0.3, tol=1e-10), reference_tvmax(z, 0.3, 1, 10), atol=1e-7, rtol=0
    )
    with pytest.raises(ValueError, match="does not match"):
        tvmax(z, (3, 4))
    with pytest.raises(ValueError, match="pair"):
        tvmax(z, 10)


def test_unconverged_solver_warns_and_stays_a_distribution():
    z = 2 * smooth_scores(4, 6, 6, seed=17).reshape(4, 36)
    with pytest.warns(RuntimeWarning, match="not certified"):
        out = tvmax(z, (6, 6), lam=2.0, tol=1e-12, max_iter=3)
    assert bool((out >= 0).all())
    torch.testing.assert_close(out.sum(-1), torch.ones(4, dtype=torch.float64))


def test_module_and_registry():
    norm = get_normalizer("tvmax", num_heads=8, lam=0.2, max_iter=500, tol=1e-5)
    assert isinstance(norm, TVMax) and norm.name == "tvmax"
    assert (norm.lam, norm.max_iter, norm.tol, norm.num_heads) == (0.2, 500, 1e-5, 8)
    z = torch.randn(2, 8, 3, 12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(norm(z, key_grid=(3, 4)), tvmax(z, (3, 4), lam=0.2, tol=1e-5))
    with pytest.raises(TypeError, match="lamda"):
        TVMax(lamda=0.1)
    with pytest.raises(ValueError):
        TVMax(lam=-1.0)
