"""Alpha-entmax with one learned alpha per head: the parameter, its gradient, the alphas.

The thesis's alpha did not learn (pitfall 8): the gradient must reach ``pre_alpha``, agree
with ``entmax.entmax_bisect`` (which differentiates in alpha), and the alphas must be loggable.
"""

from __future__ import annotations

import math

import entmax
import pytest
import torch

from attnkit.attention import get_normalizer
from attnkit.attention.alpha_entmax import AlphaEntmax, alpha_entmax


def _alphas(pre_alpha: torch.Tensor) -> torch.Tensor:
    return (1 + torch.sigmoid(pre_alpha)).clamp(1.01, 2.0)


def test_parameter_shape_and_init():
    module = get_normalizer("alpha_entmax", num_heads=8)
    assert isinstance(module, AlphaEntmax)
    assert [name for name, _ in module.named_parameters()] == ["pre_alpha"]
    assert module.pre_alpha.shape == (8,)
    assert torch.equal(module.pre_alpha.detach(), torch.zeros(8))
    torch.testing.assert_close(module.alpha(), torch.full((8,), 1.5))
    custom = get_normalizer("alpha_entmax", num_heads=2, alpha_init=1.2)
    torch.testing.assert_close(custom.alpha(), torch.full((2,), 1.2))


def test_alpha_is_clamped():
    module = get_normalizer("alpha_entmax", num_heads=3)
    with torch.no_grad():
        module.pre_alpha.copy_(torch.tensor([-20.0, 0.0, 40.0]))
    torch.testing.assert_close(module.alpha(), torch.tensor([1.01, 1.5, 2.0]))


def test_fixed_alpha_has_no_parameter_and_any_shape():
    module = get_normalizer("alpha_entmax", alpha=1.3)
    assert list(module.parameters()) == []
    torch.testing.assert_close(module.alpha(), torch.tensor(1.3))
    scores = torch.randn(5, 17, dtype=torch.float64)
    torch.testing.assert_close(module(scores), entmax.entmax_bisect(scores, 1.3, -1))


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_heads"):
        get_normalizer("alpha_entmax")
    with pytest.raises(ValueError, match="alpha"):
        get_normalizer("alpha_entmax", alpha=2.5)
    with pytest.raises(ValueError, match="heads"):
        get_normalizer("alpha_entmax", num_heads=4)(torch.randn(2, 3, 5, 7))


def test_each_head_uses_its_alpha():
    module = get_normalizer("alpha_entmax", num_heads=3).double()
    with torch.no_grad():
        module.pre_alpha.copy_(torch.tensor([-2.0, 0.5, 3.0]))
    scores = torch.randn(2, 3, 4, 50, dtype=torch.float64)
    out = module(scores)
    for head, alpha in enumerate(module.alpha().tolist()):
        torch.testing.assert_close(out[:, head], entmax.entmax_bisect(scores[:, head], alpha, -1))


def test_gradient_reaches_pre_alpha():
    torch.manual_seed(0)
    module = get_normalizer("alpha_entmax", num_heads=4)
    scores = torch.randn(2, 4, 10, 30)
    target = torch.softmax(torch.randn(2, 4, 10, 30), -1)
    loss = ((module(scores) - target) ** 2).sum()
    loss.backward()
    assert module.pre_alpha.grad is not None
    assert (module.pre_alpha.grad.abs() > 0).all()


@pytest.mark.parametrize("scale", [0.3, 1.0, 4.0])
def test_alpha_gradient_matches_package(scale):
    torch.manual_seed(1)
    heads = 4
    alpha = torch.tensor([1.05, 1.3, 1.6, 1.95], dtype=torch.float64).view(1, heads, 1, 1)
    scores = torch.randn(2, heads, 6, 40, dtype=torch.float64) * scale
    upstream = torch.randn(2, heads, 6, 40, dtype=torch.float64)
    grads = []
    for fn in (alpha_entmax, lambda z, a: entmax.entmax_bisect(z, a, -1)):
        z = scores.clone().requires_grad_()
        a = alpha.clone().requires_grad_()
        (fn(z, a) * upstream).sum().backward()
        grads.append((z.grad, a.grad))
    (z_ours, a_ours), (z_ref, a_ref) = grads
    assert a_ours.shape == alpha.shape
    torch.testing.assert_close(a_ours, a_ref, atol=1e-9, rtol=1e-7)
    torch.testing.assert_close(z_ours, z_ref, atol=1e-9, rtol=0)


def test_pre_alpha_gradient_by_chain_rule():
    torch.manual_seed(2)
    module = get_normalizer("alpha_entmax", num_heads=3).double()
    with torch.no_grad():
        module.pre_alpha.copy_(torch.tensor([-1.0, 0.2, 1.5]))
    scores = torch.randn(2, 3, 5, 20, dtype=torch.float64)
    upstream = torch.randn(2, 3, 5, 20, dtype=torch.float64)
    (module(scores) * upstream).sum().backward()
    alpha = _alphas(module.pre_alpha.detach()).view(1, 3, 1, 1).requires_grad_()
    (entmax.entmax_bisect(scores, alpha, -1) * upstream).sum().backward()
    sig = torch.sigmoid(module.pre_alpha.detach())
    expected = alpha.grad.view(3) * sig * (1 - sig)  # d alpha / d pre_alpha
    torch.testing.assert_close(module.pre_alpha.grad, expected, atol=1e-9, rtol=1e-7)


def test_gradcheck_scores_and_pre_alpha():
    torch.manual_seed(3)
    scores = torch.randn(2, 3, 4, 9, dtype=torch.float64, requires_grad=True)
    pre_alpha = torch.tensor([-1.5, 0.0, 1.0], dtype=torch.float64, requires_grad=True)

    def fn(z, pre):
        return alpha_entmax(z, _alphas(pre).view(1, 3, 1, 1))

    assert torch.autograd.gradcheck(fn, (scores, pre_alpha))


def test_alpha_near_one_approaches_softmax():
    scores = torch.randn(3, 40, dtype=torch.float64)
    out = alpha_entmax(scores, 1.01)
    # alpha-entmax of z is ((alpha-1) z - tau)_+^(1/(alpha-1)) -> softmax(z) as alpha -> 1.
    assert (out - torch.softmax(scores, -1)).abs().max() < 0.02
    assert math.isclose(out.sum().item(), 3.0, rel_tol=1e-12)
