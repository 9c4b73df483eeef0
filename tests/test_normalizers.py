"""The normalizer registry and the guarantees every normalizer shares (masks, dtypes, API).

Exactness against the ``entmax`` package is in ``test_normalizers_exact.py``; the learned
alpha of alpha-entmax in ``test_normalizers_alpha.py``.
"""

from __future__ import annotations

import sys
import types

import entmax
import pytest
import torch

from attnkit.attention import NORMALIZER_NAMES, get_normalizer
from attnkit.attention.normalizers import Softmax

DENSE_AND_SPARSE = ["softmax", "sparsemax", "entmax15", "alpha_entmax"]


def _build(name: str, heads: int = 3):
    return get_normalizer(name, num_heads=heads)


def test_names_are_the_contract():
    assert NORMALIZER_NAMES == ("softmax", "sparsemax", "entmax15", "alpha_entmax", "tvmax")


@pytest.mark.parametrize("name", DENSE_AND_SPARSE)
def test_modules_have_name_and_accept_key_grid(name):
    module = _build(name)
    assert module.name == name
    scores = torch.randn(2, 3, 4, 6)
    out = module(scores, key_grid=(2, 3))
    assert torch.equal(out, module(scores))
    assert out.shape == scores.shape
    torch.testing.assert_close(out.sum(-1), torch.ones(2, 3, 4))
    assert (out >= 0).all()


def test_name_is_normalised():
    assert get_normalizer("Alpha-Entmax", num_heads=2).name == "alpha_entmax"
    assert get_normalizer(" SPARSEMAX ").name == "sparsemax"


def test_unknown_name_lists_valid_and_closest():
    with pytest.raises(ValueError) as err:
        get_normalizer("sparsmax")
    message = str(err.value)
    for name in NORMALIZER_NAMES:
        assert name in message
    assert "did you mean 'sparsemax'" in message


def test_unknown_option_is_an_error():
    with pytest.raises(TypeError):
        get_normalizer("sparsemax", alpha=1.5)


def test_tvmax_is_imported_lazily(monkeypatch):
    fake = types.ModuleType("attnkit.attention.tvmax")

    class TVMax(torch.nn.Module):
        name = "tvmax"

        def __init__(self, num_heads=None, lam=1.0):
            super().__init__()
            self.num_heads, self.lam = num_heads, lam

    fake.TVMax = TVMax
    monkeypatch.setitem(sys.modules, "attnkit.attention.tvmax", fake)
    module = get_normalizer("tvmax", num_heads=4, lam=0.5)
    assert isinstance(module, TVMax)
    assert (module.num_heads, module.lam) == (4, 0.5)

    class NoHeads(torch.nn.Module):
        def __init__(self, lam=1.0):
            super().__init__()
            self.lam = lam

    fake.TVMax = NoHeads
    assert get_normalizer("tvmax", num_heads=4).lam == 1.0


def test_softmax_matches_torch():
    scores = torch.randn(3, 5, 9)
    torch.testing.assert_close(Softmax()(scores), torch.softmax(scores, -1))


@pytest.mark.parametrize("name", DENSE_AND_SPARSE)
def test_masked_keys_get_exact_zeros(name):
    torch.manual_seed(0)
    scores = torch.randn(2, 3, 5, 12) * 3
    mask = torch.rand(2, 3, 5, 12) < 0.4
    mask[..., 0] = False  # at least one key per row
    out = _build(name)(scores.masked_fill(mask, float("-inf")))
    assert (out[mask] == 0).all()
    torch.testing.assert_close(out.sum(-1), torch.ones(2, 3, 5))


@pytest.mark.parametrize("name", DENSE_AND_SPARSE)
def test_fully_masked_rows_give_zeros_and_zero_grad(name):
    scores = torch.randn(2, 3, 4, 7, dtype=torch.float64)
    scores[0, 1, 2] = float("-inf")
    scores[1, :, 3] = float("-inf")
    scores.requires_grad_()
    module = _build(name).double()
    out = module(scores)
    dead = torch.zeros(2, 3, 4, dtype=torch.bool)
    dead[0, 1, 2] = True
    dead[1, :, 3] = True
    assert not out.isnan().any()
    assert (out[dead] == 0).all()
    torch.testing.assert_close(out[~dead].sum(-1), torch.ones(int((~dead).sum()), dtype=out.dtype))
    (grad,) = torch.autograd.grad((out * torch.randn_like(out)).sum(), scores)
    assert not grad.isnan().any()
    assert (grad[dead] == 0).all()


@pytest.mark.parametrize("name", DENSE_AND_SPARSE)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_in_and_out(name, dtype):
    torch.manual_seed(0)
    scores = (torch.randn(2, 3, 4, 300) * 2).to(dtype)
    scores[0, 0, 0, :5] = float("-inf")
    module = _build(name)
    out = module(scores.requires_grad_())
    assert out.dtype == dtype
    expected = module(scores.detach().float())  # same (rounded) scores, computed in float32
    torch.testing.assert_close(
        out.float(), expected, atol=1e-2 if dtype == torch.bfloat16 else 2e-3, rtol=0
    )
    (grad,) = torch.autograd.grad(out.float().sum() + (out.float() ** 2).sum(), scores)
    assert grad.dtype == dtype
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("name", DENSE_AND_SPARSE)
def test_single_key_gets_all_the_weight(name):
    scores = torch.randn(2, 3, 4, 1, requires_grad=True)
    out = _build(name)(scores)
    assert torch.equal(out, torch.ones_like(out))
    (grad,) = torch.autograd.grad((out * torch.randn_like(out)).sum(), scores)
    assert torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.parametrize("name", ["sparsemax", "entmax15", "alpha_entmax"])
def test_empty_input(name):
    out = _build(name)(torch.empty(0, 3, 4, 5))
    assert out.shape == (0, 3, 4, 5)


def test_sparsemax_hand_computed():
    scores = torch.tensor([[1.0, 0.8, -1.0], [0.0, 0.0, 0.0], [3.0, 1.0, 0.9]])
    expected = torch.tensor([[0.6, 0.4, 0.0], [1 / 3, 1 / 3, 1 / 3], [1.0, 0.0, 0.0]])
    torch.testing.assert_close(get_normalizer("sparsemax")(scores), expected)


def test_entmax15_hand_computed():
    # Two keys at z and z - 1: (z/2 - tau)^2 + (z/2 - 1/2 - tau)^2 = 1 gives t = z/2 - tau
    # with t^2 + (t - 1/2)^2 = 1, t = (1 + sqrt(7)) / 4.
    t = (1 + 7**0.5) / 4
    scores = torch.tensor([[2.0, 1.0, -5.0]])
    expected = torch.tensor([[t**2, (t - 0.5) ** 2, 0.0]])
    torch.testing.assert_close(get_normalizer("entmax15")(scores), expected)


def test_alpha_two_is_sparsemax_and_one_point_five_is_entmax15():
    torch.manual_seed(0)
    scores = torch.randn(4, 6, 300, dtype=torch.float64)
    sparse = get_normalizer("alpha_entmax", alpha=2.0)(scores)
    torch.testing.assert_close(sparse, get_normalizer("sparsemax")(scores))
    mid = get_normalizer("alpha_entmax", alpha=1.5)(scores)
    torch.testing.assert_close(mid, get_normalizer("entmax15")(scores))


@pytest.mark.parametrize("name", ["sparsemax", "entmax15"])
def test_sparsity_matches_package_on_detr_shape(name):
    # The realistic case: decoder cross-attention [B, H, Q, K] with K = 850 keys.
    torch.manual_seed(0)
    scores = torch.randn(1, 8, 100, 850) * 0.5
    ours = get_normalizer(name)(scores)
    ref = {"sparsemax": entmax.sparsemax, "entmax15": entmax.entmax15}[name](scores, -1)
    assert torch.equal(ours == 0, ref == 0)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", DENSE_AND_SPARSE)
def test_cuda_matches_cpu(name):
    torch.manual_seed(0)
    scores = torch.randn(2, 3, 50, 850) * 0.5
    scores[0, 0, 0] = float("-inf")
    module = _build(name)
    gpu = module.cuda()(scores.cuda()).cpu()
    torch.testing.assert_close(gpu, module.cpu()(scores), atol=1e-5, rtol=0)
