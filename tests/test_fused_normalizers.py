"""The fused CPU kernels of sparsemax, entmax-1.5 and alpha-entmax against their PyTorch path
and the ``entmax`` package: values and gradients at (small versions of) the shapes of the
models, edge cases, exactness with masked keys, the backend switch and the fallback when the
kernels cannot be built, and the range of alpha.

The kernels compile once per machine (into ``$ATTNKIT_KERNEL_CACHE``, here ``~/.cache/attnkit/
kernels`` unless set): the first run of this file takes ~20 s longer.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings

import entmax
import pytest
import torch

from attnkit.attention import get_normalizer
from attnkit.attention.alpha_entmax import alpha_entmax
from attnkit.attention.entmax15 import entmax15
from attnkit.attention.kernels import _build, fused_ops, use_fused
from attnkit.attention.sparsemax import sparsemax

pytestmark = pytest.mark.skipif(
    fused_ops() is None, reason="the fused kernels could not be built on this machine"
)

HEAD_ALPHAS = torch.tensor([1.05, 1.3, 1.6, 2.0])


def _ours(name: str, backend: str):
    if name == "sparsemax":
        return lambda z: sparsemax(z, backend=backend)
    if name == "entmax15":
        return lambda z: entmax15(z, backend=backend)
    if name == "alpha1.3":
        return lambda z: alpha_entmax(z, 1.3, backend=backend)
    alphas = HEAD_ALPHAS.view(-1, 1, 1)  # one alpha per head of [B, H, Q, K]
    return lambda z: alpha_entmax(
        z, alphas.to(torch.promote_types(z.dtype, torch.float32)), backend=backend
    )


def _package(name: str):
    if name == "sparsemax":
        return lambda z: entmax.sparsemax(z, -1)
    if name == "entmax15":
        return lambda z: entmax.entmax15(z, -1)
    if name == "alpha1.3":
        return lambda z: entmax.entmax_bisect(z, 1.3, -1, n_iter=100)
    return lambda z: entmax.entmax_bisect(z, HEAD_ALPHAS.view(-1, 1, 1).to(z.dtype), -1, n_iter=100)


NAMES = ["sparsemax", "entmax15", "alpha1.3", "alpha_heads"]
SHAPES = {  # small versions of DETR cross-attention, windows and pixels
    "detr": (1, 4, 6, 850),
    "window": (3, 4, 49, 49),
    "pixels": (1, 4, 12, 256),
}


def _out_grad(fn, scores: torch.Tensor, upstream: torch.Tensor):
    scores = scores.detach().requires_grad_()
    out = fn(scores)
    (grad,) = torch.autograd.grad(out, scores, upstream.to(out.dtype))
    return out.detach(), grad


@pytest.mark.parametrize("sigma", [0.15, 1.0], ids=["init", "trained"])
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("name", NAMES)
def test_fused_equals_torch_and_package(name, shape, sigma):
    gen = torch.Generator().manual_seed(10 * NAMES.index(name) + list(SHAPES).index(shape))
    scores = (torch.randn(SHAPES[shape], generator=gen, dtype=torch.float64) * sigma).float()
    upstream = torch.randn(scores.shape, generator=gen, dtype=torch.float64)
    exact = _out_grad(_package(name), scores.double(), upstream)
    fused64 = _out_grad(_ours(name, "fused"), scores.double(), upstream)
    for ours, ref in zip(fused64, exact):
        torch.testing.assert_close(ours, ref, atol=1e-10, rtol=0)
    fused = _out_grad(_ours(name, "fused"), scores, upstream)
    torch_path = _out_grad(_ours(name, "torch"), scores, upstream)
    pkg = _out_grad(_package(name), scores, upstream)
    for ours, other, package, ref in zip(fused, torch_path, pkg, exact):
        torch.testing.assert_close(ours.double(), ref, atol=1e-5, rtol=0)
        torch.testing.assert_close(ours, other, atol=1e-5, rtol=0)
        # The package's own float32 error (gradients near the support boundary for alpha
        # near 2 are ill-conditioned) comes on top.
        own_error = (package.double() - ref).abs().max().item()
        torch.testing.assert_close(ours, package, atol=1e-5 + own_error, rtol=0)


def _edge_cases() -> dict[str, torch.Tensor]:
    """Scores [1, 4, Q, K] (4 heads for the per-head alphas), exact in float32."""
    gen = torch.Generator().manual_seed(0)

    def randn(q, k, scale=1.0):
        return torch.randn(1, 4, q, k, generator=gen, dtype=torch.float64) * scale

    masked = randn(3, 70)
    masked[..., ::3] = float("-inf")
    dead = randn(2, 9)
    dead[0, 2, 1] = float("-inf")
    cases = {
        "k1": randn(2, 1),
        "ties": torch.randint(-2, 3, (1, 4, 2, 37), generator=gen).double(),
        "all_equal": torch.zeros(1, 4, 2, 20, dtype=torch.float64),
        "masked": masked,
        "dead_row": dead,
        "large": 1e3 + randn(2, 300),
        "huge_spread": randn(2, 40, scale=1e4),
    }
    return {name: scores.float().double() for name, scores in cases.items()}


@pytest.mark.parametrize("case", list(_edge_cases()))
@pytest.mark.parametrize("name", NAMES)
def test_edge_cases(name, case):
    scores = _edge_cases()[case]
    finite = torch.isfinite(scores)
    dead = ~finite.any(-1, keepdim=True)
    low = scores.masked_fill(~finite, float("inf")).amin(-1, keepdim=True) - 1e4
    low = low.masked_fill(dead, 0.0)
    reference = _package(name)(torch.where(finite, scores, low))  # the package needs no -inf
    reference = reference.masked_fill(dead | ~finite, 0.0)
    for dtype, atol in ((torch.float64, 1e-10), (torch.float32, 2e-6)):
        out = _ours(name, "fused")(scores.to(dtype))
        assert not out.isnan().any()
        torch.testing.assert_close(out.double(), reference, atol=atol, rtol=0)
        assert (out[~finite] == 0).all()
        torch.testing.assert_close(out, _ours(name, "torch")(scores.to(dtype)), atol=atol, rtol=0)


def test_key_at_the_threshold_gives_no_nan():
    # A float32 row (found by a sweep) where one key sits exactly at the threshold of the
    # last pass and the final step moves left past it: the weights were all NaN (0 * inf).
    row = (torch.randn(3200, 850, generator=torch.Generator().manual_seed(5)) * 0.15)[870:871]
    alpha = torch.tensor(1.5)
    out = alpha_entmax(row, alpha, backend="fused")
    reference = entmax.entmax_bisect(row.double(), 1.5, -1, n_iter=100)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), reference, atol=1e-6, rtol=0)


@pytest.mark.parametrize("alpha", [2.0, 1.5])
def test_wide_supports_where_the_start_bounds_are_tight(alpha):
    # At alpha = 2 the power-mean and subset bounds equal the threshold when their keys are the
    # support; rounded float sums must not lift them above it, and the mass of thousands of
    # weights must be summed in double (found by a review: errors of 2e-5 to 8e-2 before).
    for n, far in ((3000, 64), (8000, 0)):
        row = torch.full((1, n + far), -100.0)
        row[0, 0], row[0, 1:n] = 0.0, -0.9
        out = alpha_entmax(row, alpha, backend="fused")
        reference = entmax.entmax_bisect(row.double(), alpha, -1, n_iter=100)
        torch.testing.assert_close(out.double(), reference, atol=2e-6, rtol=0)


@pytest.mark.parametrize("k", [7, 49, 256])
def test_float32_rows_agree_with_float64_over_alphas_and_spreads(k):
    # Float32 rows take rough passes (low-precision powers) towards the threshold before the
    # exact ones; float64 rows take exact passes only. The weights must not depend on the path.
    gen = torch.Generator().manual_seed(k)
    for sigma in (0.05, 1.0, 20.0):
        scores = torch.randn(4, 6000 // k, k, generator=gen) * sigma
        alphas = torch.tensor([1.01, 1.1, 1.5, 1.99]).view(-1, 1, 1)
        single = alpha_entmax(scores, alphas, backend="fused")
        double = alpha_entmax(scores.double(), alphas.double(), backend="fused")
        assert torch.isfinite(single).all()
        torch.testing.assert_close(single.double(), double, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_fully_masked_rows_have_zero_gradient(name):
    scores = torch.randn(1, 4, 3, 12, dtype=torch.float64)
    scores[0, 1, 2] = float("-inf")
    scores.requires_grad_()
    out = _ours(name, "fused")(scores)
    (grad,) = torch.autograd.grad(out, scores, torch.randn_like(out))
    assert (out[0, 1, 2] == 0).all() and (grad[0, 1, 2] == 0).all() and not grad.isnan().any()


@pytest.mark.parametrize("k", [2, 7, 8, 9, 15, 16, 17, 31, 32, 33, 49, 63, 64, 65, 100])
@pytest.mark.parametrize("name", NAMES)
def test_trailing_masked_keys_change_no_bit(name, k):
    # Key padding: the row with -inf keys appended gives bit for bit the row without them.
    gen = torch.Generator().manual_seed(k)
    for dtype in (torch.float32, torch.float64):
        scores = torch.randn(2, 4, 5, k, generator=gen).to(dtype)
        padded = torch.cat([scores, torch.full((2, 4, 5, 11), float("-inf"), dtype=dtype)], -1)
        fn = _ours(name, "fused")
        out, out_padded = fn(scores), fn(padded)
        assert torch.equal(out_padded[..., :k], out)
        assert (out_padded[..., k:] == 0).all()


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck_float64(name):
    gen = torch.Generator().manual_seed(3)
    for k in (7, 40):
        scores = torch.randn(1, 4, 3, k, generator=gen, dtype=torch.float64) * 1.5
        assert torch.autograd.gradcheck(_ours(name, "fused"), (scores.requires_grad_(),))


def test_gradcheck_learned_alphas():
    module = get_normalizer("alpha_entmax", num_heads=3).double()
    with torch.no_grad():
        module.pre_alpha.copy_(torch.tensor([-1.5, 0.0, 1.0]))
    scores = torch.randn(2, 3, 4, 33, dtype=torch.float64, requires_grad=True)

    def fn(z, pre):
        alpha = (1 + torch.sigmoid(pre)).clamp(1.01, 2).view(1, 3, 1, 1)
        return alpha_entmax(z, alpha, backend="fused")

    assert torch.autograd.gradcheck(fn, (scores, module.pre_alpha.detach().requires_grad_()))


def test_alpha_gradient_equals_torch_path():
    gen = torch.Generator().manual_seed(4)
    scores = torch.randn(2, 4, 8, 96, generator=gen) * 0.8
    upstream = torch.randn(scores.shape, generator=gen)
    grads = {}
    for backend in ("fused", "torch"):
        z = scores.clone().requires_grad_()
        alpha = HEAD_ALPHAS.view(1, -1, 1, 1).clone().requires_grad_()
        (alpha_entmax(z, alpha, backend=backend) * upstream).sum().backward()
        grads[backend] = (z.grad, alpha.grad)
    torch.testing.assert_close(grads["fused"][0], grads["torch"][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(grads["fused"][1], grads["torch"][1], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", NAMES)
def test_half_precision_is_computed_in_float32(name, dtype):
    scores = torch.randn(1, 4, 6, 50).to(dtype)
    out = _ours(name, "fused")(scores)
    assert out.dtype == dtype
    torch.testing.assert_close(out, _ours(name, "fused")(scores.float()).to(dtype))


def test_threads_and_layout_change_nothing():
    scores = torch.randn(4, 4, 30, 130)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = [_ours(n, "fused")(scores) for n in NAMES]
        torch.set_num_threads(2)
        two = [_ours(n, "fused")(scores) for n in NAMES]
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(one, two))
    strided = scores.transpose(-1, -2).contiguous().transpose(-1, -2)  # not contiguous
    assert all(torch.equal(_ours(n, "fused")(strided), a) for n, a in zip(NAMES, one))


def test_backend_choice(monkeypatch):
    scores = torch.randn(2, 5)
    assert use_fused(scores) and not use_fused(scores, "torch")
    with pytest.raises(ValueError, match="backend"):
        sparsemax(scores, backend="triton")
    with pytest.raises(ValueError, match="CPU float"):
        use_fused(scores.long(), "fused")
    monkeypatch.setenv("ATTNKIT_NO_FUSED", "1")
    assert not use_fused(scores)
    with pytest.raises(RuntimeError, match="unavailable"):
        sparsemax(scores, backend="fused")
    torch.testing.assert_close(sparsemax(scores), sparsemax(scores, backend="torch"))


def test_failed_build_warns_once_and_falls_back(monkeypatch):
    monkeypatch.setattr(_build, "_state", {})

    def broken(flags):
        raise OSError("no compiler here")

    monkeypatch.setattr(_build, "_build", broken)
    scores = torch.randn(3, 4, 10)
    with pytest.warns(RuntimeWarning, match="no compiler here"):
        out = entmax15(scores)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = entmax15(scores)
    torch.testing.assert_close(out, entmax15(scores, backend="torch"))
    assert torch.equal(out, again) and not use_fused(scores)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 1.005, 2.25, 3.0, float("nan")])
def test_alpha_outside_the_range_is_refused_everywhere(alpha):
    scores = torch.randn(2, 3, 4, 8)
    for backend in ("fused", "torch"):
        with pytest.raises(ValueError, match=r"\[1\.01, 2\.0\]"):
            alpha_entmax(scores, alpha, backend=backend)
        with pytest.raises(ValueError, match=r"\[1\.01, 2\.0\]"):
            alpha_entmax(scores, torch.tensor([1.5, alpha, 1.2]).view(1, 3, 1, 1), backend=backend)
    with pytest.raises(ValueError, match=r"\[1\.01, 2\.0\]"):
        get_normalizer("alpha_entmax", alpha=alpha)


def test_range_bounds_are_accepted():
    scores = torch.randn(2, 3, 4, 8)
    bounds = torch.tensor([1.01, 2.0]).view(1, 2, 1, 1)  # 1.01 as float32 is 1.00999999
    out = alpha_entmax(scores[:, :2], bounds)
    torch.testing.assert_close(out[:, 1], sparsemax(scores[:, 1]))


@pytest.mark.slow
def test_two_processes_build_a_clean_cache_together(tmp_path):
    # From an empty cache, two processes compile at once: one builds, the other waits and loads.
    code = (
        "import torch; from attnkit.attention.kernels import fused_ops; "
        "assert fused_ops() is not None; "
        "from attnkit.attention.sparsemax import sparsemax; print(sparsemax(torch.ones(1, 3)))"
    )
    env = {**os.environ, "ATTNKIT_KERNEL_CACHE": str(tmp_path), "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert all("0.3333" in out for out in outs)
    assert len(list(tmp_path.glob("sparse_rows_*/*.so"))) == 1


def test_stale_builds_of_other_digests_are_pruned(tmp_path):
    now = time.time()
    keep, recent, old, other = (
        tmp_path / n for n in ("sparse_rows_a", "sparse_rows_b", "sparse_rows_c", "data")
    )
    for folder, age_days in ((keep, 90), (recent, 3), (old, 45), (other, 90)):
        folder.mkdir()
        (folder / "x.so").write_bytes(b"0")
        os.utime(folder, (now - age_days * 86400,) * 2)
    removed = _build.prune_stale_builds(keep, days=30)
    assert removed == [old]
    assert keep.exists() and recent.exists() and other.exists() and not old.exists()
