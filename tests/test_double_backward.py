"""Second derivatives of the normalizers (``create_graph=True``: Hessian-vector products,
gradient penalties): the backward of every path (PyTorch, fused CPU kernels) is itself
differentiable, in the scores and in a learned alpha, checked against finite differences of the
first derivative (``gradgradcheck``, float64) and against a hand-computed Hessian of sparsemax.
"""

from __future__ import annotations

import pytest
import torch

from attnkit.attention.alpha_entmax import alpha_entmax
from attnkit.attention.entmax15 import entmax15
from attnkit.attention.kernels import fused_ops
from attnkit.attention.sparsemax import sparsemax

BACKENDS = [
    "torch",
    pytest.param(
        "fused",
        marks=pytest.mark.skipif(fused_ops() is None, reason="the fused kernels are unavailable"),
    ),
]


def _normalizers(backend: str):
    return {
        "sparsemax": lambda z: sparsemax(z, backend=backend),
        "entmax15": lambda z: entmax15(z, backend=backend),
        "alpha1.3": lambda z: alpha_entmax(z, 1.3, backend=backend),
    }


@pytest.mark.parametrize("name", ["sparsemax", "entmax15", "alpha1.3"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_second_derivatives_in_the_scores(backend, name):
    scores = torch.randn(3, 9, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    fn = _normalizers(backend)[name]
    assert torch.autograd.gradgradcheck(fn, (scores.requires_grad_(),))


@pytest.mark.parametrize("backend", BACKENDS)
def test_second_derivatives_in_a_learned_alpha(backend):
    gen = torch.Generator().manual_seed(2)
    scores = torch.randn(2, 3, 8, generator=gen, dtype=torch.float64).requires_grad_()
    alpha = torch.tensor([1.15, 1.5, 1.85], dtype=torch.float64).view(3, 1).requires_grad_()
    fn = lambda z, a: alpha_entmax(z, a, backend=backend)  # noqa: E731
    assert torch.autograd.gradgradcheck(fn, (scores, alpha))


@pytest.mark.parametrize("backend", BACKENDS)
def test_sparsemax_hessian_vector_product_is_zero_in_the_scores(backend):
    # Sparsemax is piecewise linear: away from support changes its Hessian is zero, so the
    # gradient of <v, J^T u> in the scores vanishes while its gradient in u is J v.
    scores = torch.tensor([[0.9, 0.5, -1.0, 0.3]], dtype=torch.float64, requires_grad=True)
    u = torch.tensor([[1.0, -2.0, 0.5, 3.0]], dtype=torch.float64, requires_grad=True)
    v = torch.tensor([[0.3, 1.0, -1.0, 2.0]], dtype=torch.float64)
    out = sparsemax(scores, backend=backend)
    (vjp,) = torch.autograd.grad(out, scores, u, create_graph=True)
    d_scores, d_u = torch.autograd.grad(vjp, (scores, u), v)
    support = out.detach() > 0  # {0, 1, 3}: J = diag(s) - s s^T / |S|
    assert support.sum() == 3
    s = support.double()
    expected = s * v - s * (s * v).sum() / s.sum()
    torch.testing.assert_close(d_u, expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(d_scores, torch.zeros_like(scores), atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", ["sparsemax", "entmax15", "alpha1.3"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_half_precision_outputs_may_change_in_place_and_refuse_second_derivatives(backend, name):
    scores = torch.randn(4, 16, generator=torch.Generator().manual_seed(3)).bfloat16()
    scores.requires_grad_()
    if (backend, name) != ("torch", "sparsemax"):  # (that one saves its half output)
        weights = _normalizers(backend)[name](scores)
        torch.nn.functional.dropout(weights, 0.1, training=True, inplace=True)
        weights.float().sum().backward()  # the weights the backward needs are kept apart
        assert scores.grad is not None and torch.isfinite(scores.grad).all()
    weights = _normalizers(backend)[name](scores)
    if (backend, name) == ("torch", "sparsemax"):  # its saved output is all it needs
        torch.autograd.grad(weights.float().sum(), scores, create_graph=True)
        return
    with pytest.raises(RuntimeError, match="need float32 or float64 scores"):
        torch.autograd.grad(weights.float().sum(), scores, create_graph=True)
