"""Every attention mechanism of the dense line with every normalizer that applies to it: rows of
weights on the simplex over the keys the mechanism lets a query see, gradients to every
projection and to the normalizer's own parameters, and one clear error where none applies."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch

from attnkit.analysis import AttentionRecorder
from attnkit.attention.mixers import MECHANISMS, WITHOUT_ATTENTION_MATRIX, map_attention

NORMALIZERS = ["softmax", "sparsemax", "entmax15", "alpha_entmax", "tvmax"]
PAIRS = [(m, n) for m in MECHANISMS for n in NORMALIZERS if m not in WITHOUT_ATTENTION_MATRIX] + [
    (m, "softmax") for m in WITHOUT_ATTENTION_MATRIX
]


@pytest.mark.parametrize(("mechanism", "normalizer"), PAIRS)
def test_mechanism_with_normalizer_attends_and_learns(mechanism, normalizer):
    torch.manual_seed(0)
    layer = map_attention(mechanism, 16, 2, normalizer, window=(4, 4), sr_ratio=2, pool_size=3)
    x = torch.randn(2, 9, 11, 16, requires_grad=True)  # no side a multiple of the window
    silent = mechanism in WITHOUT_ATTENTION_MATRIX  # nothing to record, and the recorder says so
    with (
        pytest.warns(UserWarning, match="nothing will be recorded") if silent else nullcontext(),
        AttentionRecorder(layer) as rec,
    ):
        out = layer(x)
    assert out.shape == x.shape and torch.isfinite(out).all()
    out.square().mean().backward()
    grads = {n: p.grad for n, p in layer.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values()), grads.keys()
    assert x.grad.abs().sum() > 0
    if normalizer == "alpha_entmax":
        assert any(n.endswith("pre_alpha") and g.abs().sum() > 0 for n, g in grads.items())
    if mechanism in WITHOUT_ATTENTION_MATRIX:
        assert not rec.names
        return
    record = rec.last(rec.names[0])
    weights = record.weights  # [N, H, Q, K]
    rows = weights.sum(-1)
    real = rows > 0  # padded queries are zeroed rows
    assert real.any() and torch.allclose(rows[real], torch.ones(()), atol=1e-5)
    assert (weights >= 0).all()
    if normalizer in ("sparsemax", "tvmax"):
        assert (weights[real.unsqueeze(-1).expand_as(weights)] == 0).any()  # exact zeros


def test_a_normalizer_for_a_mechanism_without_an_attention_matrix_is_refused():
    for mechanism in WITHOUT_ATTENTION_MATRIX:
        with pytest.raises(ValueError, match="forms no attention matrix"):
            map_attention(mechanism, 16, 2, "sparsemax")
