"""Checks of the Triton kernels of sparsemax, entmax-1.5 and alpha-entmax (``backend="triton"``)
against the ``entmax`` package in float64: values, gradients (scores and per-head alphas),
masked keys, fully masked rows, half precision, the ends of alpha's range.

Not collected by itself (no ``test_`` prefix): they run on a CUDA device, or on CPU tensors
under Triton's interpreter, which must be switched on before triton is imported, so
``test_triton_normalizers.py`` runs this file in a subprocess with ``TRITON_INTERPRET=1``.
By hand: ``TRITON_INTERPRET=1 pytest tests/triton_checks.py -p no:xdist`` (CPU), or
``pytest tests/triton_checks.py`` on a machine with a GPU.
"""

from __future__ import annotations

import entmax
import pytest
import torch

pytest.importorskip("triton")

from attnkit.attention.alpha_entmax import alpha_entmax  # noqa: E402
from attnkit.attention.entmax15 import entmax15  # noqa: E402
from attnkit.attention.kernels.triton_functions import interpreting  # noqa: E402
from attnkit.attention.sparsemax import sparsemax  # noqa: E402

if interpreting():
    DEVICE = torch.device("cpu")
elif torch.cuda.is_available():
    DEVICE = torch.device("cuda")
else:
    pytest.skip("needs a CUDA device or TRITON_INTERPRET=1", allow_module_level=True)

HEAD_ALPHAS = torch.tensor([1.05, 1.3, 1.6, 2.0])
NAMES = ["sparsemax", "entmax15", "alpha1.3", "alpha_heads"]


def _alphas(like: torch.Tensor) -> torch.Tensor:
    dtype = torch.promote_types(like.dtype, torch.float32)
    return HEAD_ALPHAS.view(-1, 1, 1).to(device=like.device, dtype=dtype)  # [H, 1, 1]


def _ours(name: str):
    if name == "sparsemax":
        return lambda z: sparsemax(z, backend="triton")
    if name == "entmax15":
        return lambda z: entmax15(z, backend="triton")
    if name == "alpha1.3":
        return lambda z: alpha_entmax(z, 1.3, backend="triton")
    return lambda z, a: alpha_entmax(z, a, backend="triton")


def _package(name: str):
    if name == "sparsemax":
        return lambda z: entmax.sparsemax(z, -1)
    if name == "entmax15":
        return lambda z: entmax.entmax15(z, -1)
    if name == "alpha1.3":
        return lambda z: entmax.entmax_bisect(z, 1.3, -1, n_iter=100)
    return lambda z, a: entmax.entmax_bisect(z, a, -1, n_iter=100)


def _run(name: str, fn, scores: torch.Tensor, upstream: torch.Tensor, device=DEVICE):
    """``(weights, grad of the scores, grad of the alphas or None)`` of ``<fn(scores), up>``,
    computed on ``device`` and returned on the CPU."""
    scores = scores.detach().to(device).requires_grad_()
    inputs = [scores]
    if name == "alpha_heads":
        inputs.append(_alphas(scores).requires_grad_())
    out = fn(*inputs)
    grads = torch.autograd.grad(out, inputs, upstream.to(device=device, dtype=out.dtype))
    grad_alpha = grads[1].cpu() if len(grads) > 1 else None
    return out.detach().cpu(), grads[0].cpu(), grad_alpha


@pytest.mark.parametrize("num_keys", [1, 7, 49, 100, 850])
@pytest.mark.parametrize("name", NAMES)
def test_values_and_gradients_equal_the_package(name, num_keys):
    gen = torch.Generator().manual_seed(num_keys + 1000 * NAMES.index(name))
    scores = torch.randn(2, 4, 3, num_keys, generator=gen, dtype=torch.float64)
    scores[0] *= 0.15  # near-uniform rows (random init), dense supports
    scores = scores.float()
    upstream = torch.randn(scores.shape, generator=gen, dtype=torch.float64)
    ours = _run(name, _ours(name), scores, upstream)
    exact = _run(name, _package(name), scores.double(), upstream, device="cpu")
    assert ours[0].dtype == torch.float32
    torch.testing.assert_close(ours[0].double(), exact[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(ours[1].double(), exact[1], atol=1e-5, rtol=0)
    if name == "alpha_heads":
        # d/d alpha is ill-conditioned for alpha near 1 (a 1 / (alpha - 1)^2 factor): allow
        # the package's own float32 error on top, as for the fused kernels.
        package = _run(name, _package(name), scores, upstream, device="cpu")
        own_error = (package[2].double() - exact[2]).abs().max().item()
        torch.testing.assert_close(ours[2].double(), exact[2], atol=1e-4 + own_error, rtol=1e-4)
        assert ours[2].shape == HEAD_ALPHAS.view(-1, 1, 1).shape


@pytest.mark.parametrize("name", NAMES)
def test_masked_keys_get_exact_zeros(name):
    gen = torch.Generator().manual_seed(7)
    scores = torch.randn(1, 4, 5, 100, generator=gen)
    scores[..., 60:] = float("-inf")  # a padded tail
    scores[..., 3:60:7] = float("-inf")  # and scattered masked keys
    upstream = torch.randn(scores.shape, generator=gen)
    out, grad, _ = _run(name, _ours(name), scores, upstream)
    masked = scores == float("-inf")
    assert not out.isnan().any() and not grad.isnan().any()
    assert (out[masked] == 0).all() and (grad[masked] == 0).all()
    prefix, _, _ = _run(name, _ours(name), scores[..., :60], upstream[..., :60])
    torch.testing.assert_close(out[..., :60], prefix, atol=1e-7, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_fully_masked_rows_are_zero_with_zero_gradients(name):
    gen = torch.Generator().manual_seed(3)
    scores = torch.randn(2, 4, 3, 33, generator=gen)
    upstream = torch.randn(scores.shape, generator=gen)
    dead = scores.clone()
    dead[0, :, 1] = float("-inf")  # one query of every head sees no key
    out, grad, grad_alpha = _run(name, _ours(name), dead, upstream)
    assert (out[0, :, 1] == 0).all() and (grad[0, :, 1] == 0).all()
    assert not out.isnan().any() and not grad.isnan().any()
    live = torch.ones(2, 4, 3, dtype=torch.bool)
    live[0, :, 1] = False
    ref, ref_grad, _ = _run(name, _ours(name), scores, upstream)
    # Rows are solved independently: the other rows do not change by a bit.
    assert torch.equal(out[live], ref[live]) and torch.equal(grad[live], ref_grad[live])
    if grad_alpha is not None:  # the dead rows add nothing to the alphas' gradient
        upstream_kept = upstream.clone()
        upstream_kept[0, :, 1] = 0.0  # a live row with no upstream gradient adds nothing
        _, _, ref_alpha = _run(name, _ours(name), scores, upstream_kept)
        assert grad_alpha.isfinite().all()
        torch.testing.assert_close(grad_alpha, ref_alpha, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", NAMES)
def test_half_precision_is_computed_in_float32(name, dtype):
    gen = torch.Generator().manual_seed(11)
    scores = torch.randn(1, 4, 6, 49, generator=gen).to(dtype)
    scores[..., 40:] = float("-inf")
    upstream = torch.randn(scores.shape, generator=gen).to(dtype)
    out, grad, _ = _run(name, _ours(name), scores, upstream)
    wide, wide_grad, _ = _run(name, _ours(name), scores.float(), upstream.float())
    assert out.dtype == dtype and grad.dtype == dtype
    # The same float32 results, rounded once. The kernels round the gradient into bfloat16
    # themselves: the interpreter's rounding mode may differ by one unit in the last place.
    torch.testing.assert_close(out, wide.to(dtype), atol=0, rtol=0)
    ulp = 2.0**-7 if dtype == torch.bfloat16 else 0.0
    torch.testing.assert_close(grad, wide_grad.to(dtype), atol=0, rtol=ulp)


def test_extreme_alphas_and_scales():
    """alpha at the ends of its range, tiny and large scores: still the package's weights."""
    gen = torch.Generator().manual_seed(5)
    alphas = torch.tensor([1.01, 1.02, 1.99, 2.0]).view(-1, 1, 1)
    for scale in (1e-3, 30.0):
        scores = (torch.randn(1, 4, 4, 200, generator=gen, dtype=torch.float64) * scale).float()
        ours = alpha_entmax(scores.to(DEVICE), alphas.to(DEVICE), backend="triton").cpu()
        exact = entmax.entmax_bisect(scores.double(), alphas.double(), -1, n_iter=100)
        torch.testing.assert_close(ours.double(), exact, atol=1e-5, rtol=0)
        torch.testing.assert_close(ours.sum(-1), torch.ones(1, 4, 4), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["sparsemax", "entmax15", "alpha1.3"])
def test_non_contiguous_scores(name):
    gen = torch.Generator().manual_seed(13)
    scores = torch.randn(2, 3, 30, 20, generator=gen).transpose(-1, -2)  # [2, 3, 20, 30]
    upstream = torch.randn(scores.shape, generator=gen)
    out = _run(name, _ours(name), scores, upstream)
    ref = _run(name, _ours(name), scores.contiguous(), upstream)
    assert torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1])


@pytest.mark.parametrize("name", NAMES)
def test_double_backward_equals_the_torch_path(name):
    # create_graph=True: the backward runs differentiable formulas on the kernels' weights, so
    # a Hessian-vector product matches the PyTorch path's (to float32 precision of the weights).
    gen = torch.Generator().manual_seed(4)
    scores = torch.randn(2, 4, 5, 40, generator=gen).to(DEVICE)
    upstream = torch.randn(scores.shape, generator=gen).to(DEVICE)
    direction = torch.randn(scores.shape, generator=gen).to(DEVICE)
    results = []
    for backend in ("triton", "torch"):
        z = scores.clone().requires_grad_()
        if name.startswith("alpha_heads"):
            out = alpha_entmax(z, _alphas(z), backend=backend)
        elif name == "alpha1.3":
            out = alpha_entmax(z, 1.3, backend=backend)
        else:
            out = {"sparsemax": sparsemax, "entmax15": entmax15}[name](z, backend=backend)
        (vjp,) = torch.autograd.grad(out, z, upstream, create_graph=True)
        (hvp,) = torch.autograd.grad(vjp, z, direction)
        results.append(hvp)
    torch.testing.assert_close(results[0], results[1], atol=2e-4, rtol=1e-3)
