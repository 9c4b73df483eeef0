"""Gaussian positional attention (Cordonnier et al. 2020): each score against a direct evaluation
of its formula, the conv-equivalence theorem (Lemma 1), every normalizer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attnkit.analysis import AttentionRecorder
from attnkit.attention.normalizers import NORMALIZER_NAMES
from attnkit.models.sa_conv.gaussian import (
    GaussianPositionalScores,
    GaussianSelfAttention,
    conv_equivalent_attention,
)


def _direct_scores(module: GaussianPositionalScores, h: int, w: int) -> torch.Tensor:
    """The formula, one (head, query, key) at a time in float64."""
    centre = module.centre.detach().double()
    out = torch.empty(module.num_heads, h * w, h * w, dtype=torch.float64)
    for head in range(module.num_heads):
        if module.kind == "anisotropic":
            s = module.spread.detach().double()[head]
            precision = s @ s.T
        for q in range(h * w):
            for k in range(h * w):
                delta = torch.tensor(
                    [k // w - q // w, k % w - q % w], dtype=torch.float64
                )  # pos(k) - pos(q), (row, col)
                d = delta - centre[head]
                if module.kind == "isotropic":
                    alpha = module.log_alpha.detach().double()[head].exp()
                    out[head, q, k] = -alpha * (d @ d)
                else:
                    out[head, q, k] = -0.5 * (d @ precision @ d)  # c * mu_2, never c + mu_2
    return out


@pytest.mark.parametrize("kind", ["isotropic", "anisotropic"])
def test_scores_equal_a_direct_evaluation_of_the_quadratic_form(kind):
    torch.manual_seed(0)
    module = GaussianPositionalScores(4, kind)
    with torch.no_grad():  # away from the identity, so a wrong product cannot pass
        if kind == "anisotropic":
            module.spread.copy_(torch.randn(4, 2, 2))
        else:
            module.log_alpha.copy_(torch.randn(4))
    scores = module((3, 5))  # a non-square grid
    assert scores.shape == (4, 15, 15)
    torch.testing.assert_close(scores.double(), _direct_scores(module, 3, 5), atol=1e-5, rtol=1e-5)


def test_isotropic_is_the_anisotropic_form_with_twice_alpha():
    iso = GaussianPositionalScores(3, "isotropic")
    aniso = GaussianPositionalScores(3, "anisotropic")
    with torch.no_grad():
        aniso.centre.copy_(iso.centre)
        aniso.spread.copy_(torch.linalg.cholesky(iso.precision()))
    torch.testing.assert_close(iso((4, 4)), aniso((4, 4)), atol=1e-4, rtol=1e-5)


def _conv_and_image(channels: int = 6, size=(7, 9)):
    torch.manual_seed(1)
    conv = torch.nn.Conv2d(channels, channels, 3, padding=1)
    image = torch.randn(2, channels, *size)
    return conv, image


@pytest.mark.parametrize(
    ("normalizer", "alpha", "tol"), [("softmax", 50.0, 1e-4), ("sparsemax", 1.0, 1e-6)]
)
def test_lemma_1_nine_gaussian_heads_are_a_3x3_convolution(normalizer, alpha, tol):
    conv, image = _conv_and_image()
    layer = conv_equivalent_attention(conv, normalizer, alpha=alpha)
    B, C, H, W = image.shape
    tokens = image.flatten(2).transpose(1, 2)  # [B, H * W, C]
    out, weights = layer(tokens, (H, W), need_weights=True)
    out = out.transpose(1, 2).reshape(B, C, H, W)
    expected = conv(image)
    # the pixels whose 3x3 footprint lies inside the image (the conv sees no padding there)
    torch.testing.assert_close(out[..., 1:-1, 1:-1], expected[..., 1:-1, 1:-1], atol=tol, rtol=0)
    if normalizer == "sparsemax":  # exactly one key per head and query
        assert ((weights > 0).sum(-1) == 1).all()


def test_lemma_1_needs_every_head():
    conv, image = _conv_and_image()
    layer = conv_equivalent_attention(conv, "sparsemax", alpha=1.0)
    with torch.no_grad():
        layer.positional.centre[4] += 1.0  # the centre head looks one row down instead
    B, C, H, W = image.shape
    out, _ = layer(image.flatten(2).transpose(1, 2), (H, W))
    out = out.transpose(1, 2).reshape(B, C, H, W)
    assert (out - conv(image))[..., 1:-1, 1:-1].abs().max() > 1e-2


@pytest.mark.parametrize("normalizer", NORMALIZER_NAMES)
@pytest.mark.parametrize("content", [False, True])
def test_every_normalizer_runs_records_and_learns(normalizer, content):
    torch.manual_seed(2)
    layer = GaussianSelfAttention(12, 3, kind="anisotropic", content=content, normalizer=normalizer)
    x = torch.randn(2, 4 * 5, 12, requires_grad=True)
    with AttentionRecorder(layer) as rec:
        out, weights = layer(x, (4, 5), need_weights=True)
    assert out.shape == (2, 20, 12) and weights.shape == (2, 3, 20, 20)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3, 20), atol=1e-4, rtol=0)
    ((record,),) = rec.records.values()  # one module, one forward call
    torch.testing.assert_close(record.weights, weights.detach())
    assert record.key_grid == (4, 5) and record.meta["layout"].grid == (4, 5)
    out.pow(2).sum().backward()
    assert layer.positional.centre.grad.abs().sum() > 0  # the centres learn through any normalizer


def test_content_term_is_scaled_dot_product():
    torch.manual_seed(3)
    layer = GaussianSelfAttention(8, 2, content=True, content_dim=4)
    x = torch.randn(1, 6, 8)
    _, weights = layer(x, (2, 3), need_weights=True)
    q, k = layer.qk(x).view(1, 6, 2, 2, 4).permute(2, 0, 3, 1, 4).unbind(0)  # [1, H, N, D]
    scores = q @ k.transpose(-1, -2) / 2.0 + layer.positional((2, 3))  # sqrt(4) = 2
    torch.testing.assert_close(weights, F.softmax(scores, -1), atol=1e-5, rtol=1e-5)
