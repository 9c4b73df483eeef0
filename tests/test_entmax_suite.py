"""The checks of the ``entmax`` package's own ``test_root_finding.py`` and ``test_mask.py``, run
against attnkit's normalizers through a thin adapter (the package's function names, ``dim``
moved to the last axis), for the fused kernels and for the PyTorch path.

attnkit defines alpha-entmax on alpha in [1.01, 2] only (see ``attnkit.attention.alpha_entmax``):
where the package's tests use alphas outside it (0.2 ... 0.75, 2.25, random alphas in
[0.05, 2.55]), the adapted test checks that attnkit refuses them with its ValueError, and runs
the same check on alphas drawn inside the range.
"""

from __future__ import annotations

from functools import partial
from itertools import product

import entmax
import pytest
import torch
from torch.autograd import gradcheck

from attnkit.attention.alpha_entmax import alpha_entmax as ak_alpha_entmax
from attnkit.attention.entmax15 import entmax15 as ak_entmax15
from attnkit.attention.kernels import fused_ops
from attnkit.attention.sparsemax import sparsemax as ak_sparsemax

BACKENDS = [
    "torch",
    pytest.param(
        "fused", marks=pytest.mark.skipif(fused_ops() is None, reason="fused kernels unavailable")
    ),
]
RANGE_ERROR = r"alpha must lie in \[1\.01, 2\.0\]"


class Adapter:
    """attnkit under the package's names: ``f(X, [alpha,] dim)`` over any dim."""

    def __init__(self, backend: str) -> None:
        self.backend = backend

    def sparsemax(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        return ak_sparsemax(x.movedim(dim, -1), backend=self.backend).movedim(-1, dim)

    def entmax15(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        return ak_entmax15(x.movedim(dim, -1), backend=self.backend).movedim(-1, dim)

    def entmax_bisect(self, x: torch.Tensor, alpha=1.5, dim: int = -1) -> torch.Tensor:
        if torch.is_tensor(alpha) and alpha.dim() > 0:
            alpha = alpha.movedim(dim, -1)
        out = ak_alpha_entmax(x.movedim(dim, -1), alpha, backend=self.backend)
        return out.movedim(-1, dim)

    def sparsemax_bisect(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        return self.entmax_bisect(x, 2.0, dim)


@pytest.fixture(params=BACKENDS)
def ak(request) -> Adapter:
    return Adapter(request.param)


# ---------------------------------------------------------------- test_root_finding.py


def test_sparsemax(ak):
    x = 0.5 * torch.randn(4, 6, dtype=torch.float32)
    p1 = ak.sparsemax(x, 1)
    p2 = ak.sparsemax_bisect(x)
    assert torch.sum((p1 - p2) ** 2) < 1e-7
    assert torch.sum((p1 - entmax.sparsemax(x, 1)) ** 2) < 1e-7


def test_entmax15(ak):
    x = 0.5 * torch.randn(4, 6, dtype=torch.float32)
    p1 = ak.entmax15(x, 1)
    p2 = ak.entmax_bisect(x, alpha=1.5)
    assert torch.sum((p1 - p2) ** 2) < 1e-7
    assert torch.sum((p2 - entmax.entmax_bisect(x, alpha=1.5)) ** 2) < 1e-7


def test_sparsemax_grad(ak):
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    assert gradcheck(ak.sparsemax_bisect, (x,), eps=1e-5)
    assert gradcheck(ak.sparsemax, (x,), eps=1e-5)


@pytest.mark.parametrize("alpha", (0.2, 0.5, 0.75, 1.2, 1.5, 1.75, 2.25))
def test_entmax_grad(ak, alpha):
    alpha = torch.tensor(alpha, dtype=torch.float64, requires_grad=True)
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    if not 1.01 <= alpha.item() <= 2:
        with pytest.raises(ValueError, match=RANGE_ERROR):
            ak.entmax_bisect(x, alpha)
        return
    assert gradcheck(ak.entmax_bisect, (x, alpha), eps=1e-5)


def _alphas(shape, dtype=torch.float64) -> torch.Tensor:
    """The package draws 0.05 + 2.5 * rand (mostly outside attnkit's range); these stay in it."""
    return 1.01 + 0.99 * torch.rand(shape, dtype=dtype)


def test_entmax_refuses_the_package_alpha_draws(ak):
    x = torch.randn(4, 6, dtype=torch.float64)
    alpha = 0.05 + 2.5 * torch.rand((4, 1), dtype=torch.float64)
    alpha[0] = 0.5  # the draw is random: make sure one alpha is outside
    with pytest.raises(ValueError, match=RANGE_ERROR):
        ak.entmax_bisect(x, alpha)


def test_entmax_correct_multiple_alphas(ak):
    n = 4
    x = torch.randn(n, 6, dtype=torch.float64, requires_grad=True)
    alpha = _alphas((n, 1)).requires_grad_()
    p1 = ak.entmax_bisect(x, alpha)
    p2 = torch.stack(
        [ak.entmax_bisect(x[i].unsqueeze(0), alpha[i].item()).squeeze() for i in range(n)]
    )
    assert torch.allclose(p1, p2)
    assert torch.allclose(p1, entmax.entmax_bisect(x, alpha, n_iter=100))


def test_entmax_grad_multiple_alphas(ak):
    n = 4
    x = torch.randn(n, 6, dtype=torch.float64, requires_grad=True)
    alpha = _alphas((n, 1)).requires_grad_()
    assert gradcheck(ak.entmax_bisect, (x, alpha), eps=1e-5)


@pytest.mark.parametrize("dim", (0, 1, 2, 3))
def test_arbitrary_dimension(ak, dim):
    shape = [3, 4, 2, 5]
    x = torch.randn(*shape, dtype=torch.float64)
    alpha_shape = list(shape)
    alpha_shape[dim] = 1
    alphas = _alphas(alpha_shape)
    p = ak.entmax_bisect(x, alpha=alphas, dim=dim)
    ranges = [list(range(k)) if i != dim else [slice(None)] for i, k in enumerate(shape)]
    for ix in product(*ranges):
        p_true = ak.entmax_bisect(x[ix].unsqueeze(0), alpha=alphas[ix].item(), dim=-1)
        assert torch.allclose(p[ix], p_true)
    assert torch.allclose(p, entmax.entmax_bisect(x, alphas, dim, n_iter=100))


@pytest.mark.parametrize("dim", (0, 1, 2, 3))
def test_arbitrary_dimension_grad(ak, dim):
    shape = [3, 4, 2, 5]
    alpha_shape = list(shape)
    alpha_shape[dim] = 1
    f = partial(ak.entmax_bisect, dim=dim)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    alphas = _alphas(alpha_shape).requires_grad_()
    assert gradcheck(f, (x, alphas), eps=1e-5)


# ---------------------------------------------------------------- test_mask.py

FUNCS = ["sparsemax", "entmax15", "sparsemax_bisect", "entmax_bisect"]


@pytest.mark.parametrize("func", FUNCS)
@pytest.mark.parametrize("dtype", (torch.float32, torch.float64))
def test_mask(ak, func, dtype):
    torch.manual_seed(42)
    x = torch.randn(2, 6, dtype=dtype)
    x[:, 3:] = -float("inf")
    x0 = x[:, :3]
    fn = getattr(ak, func)
    y = fn(x, dim=1)
    y0 = fn(x0, dim=1)
    assert (y[:, 3:] == 0).all()
    if ak.backend == "fused":  # the kernels are bit-exact here (the package is too)
        assert torch.equal(y[:, :3], y0)
    y[:, :3] -= y0
    assert torch.allclose(y, torch.zeros_like(y), atol=_ulp_tolerance(ak, dtype))


def _ulp_tolerance(ak: Adapter, dtype: torch.dtype) -> float:
    """The package's atol (1e-8), or two float32 ulps of 1 for the PyTorch path, whose float32
    reductions over a row with -inf keys may round differently (issue 16)."""
    return 2.5e-7 if ak.backend == "torch" and dtype == torch.float32 else 1e-8


@pytest.mark.parametrize("alpha", (1.25, 1.5, 1.75, 2.25))
def test_mask_alphas(ak, alpha):
    torch.manual_seed(42)
    x = torch.randn(2, 6)
    x[:, 3:] = -float("inf")
    x0 = x[:, :3]
    if alpha > 2:
        with pytest.raises(ValueError, match=RANGE_ERROR):
            ak.entmax_bisect(x, alpha)
        return
    y = ak.entmax_bisect(x, alpha)
    y0 = ak.entmax_bisect(x0, alpha)
    if ak.backend == "fused":
        assert torch.equal(y[:, :3], y0)
    y[:, :3] -= y0
    assert torch.allclose(y, torch.zeros_like(y), atol=_ulp_tolerance(ak, x.dtype))
