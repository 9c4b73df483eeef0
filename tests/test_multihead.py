"""attnkit MultiheadAttention and the functional core against torch and hand computation."""

from __future__ import annotations

import entmax
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attnkit.attention import MultiheadAttention, get_normalizer
from attnkit.attention.core import attend, key_padding_to_mask, merge_masks

NORMALIZERS = ["softmax", "sparsemax", "entmax15", "alpha_entmax", "tvmax"]
E, H, D = 16, 4, 4
B, Q, GRID = 2, 5, (2, 3)
K = GRID[0] * GRID[1]


def _randn(*shape, seed=0, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def _inputs(kdim=E, vdim=E):
    return _randn(B, Q, E, seed=1), _randn(B, K, kdim, seed=2), _randn(B, K, vdim, seed=3)


def _padding():
    kpm = torch.zeros(B, K, dtype=torch.bool)
    kpm[1, -2:] = True  # image 1 is narrower: its last two keys are padding
    return kpm


def _bool_mask():
    mask = _randn(Q, K, seed=4) > 0.5
    mask[:, 0] = False  # no fully masked row: torch gives NaN there
    return mask


def _pair(**kw):
    """torch's MHA and ours, with torch's weights loaded into ours."""
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(E, H, batch_first=True, **kw).eval()
    ours = MultiheadAttention(E, H, **kw).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def _heads(x):
    return x.view(x.shape[0], x.shape[1], H, D).transpose(1, 2)  # [B, H, N, D]


def _manual(mha, query, key, value, scores_bias, normalize):
    """Multi-head attention written out: projections, scaled scores + bias, normalize, merge."""
    wq, wk, wv = mha.in_proj_weight.chunk(3)
    bq, bk, bv = mha.in_proj_bias.chunk(3)
    q, k, v = _heads(query @ wq.T + bq), _heads(key @ wk.T + bk), _heads(value @ wv.T + bv)
    scores = q @ k.transpose(-2, -1) / D**0.5 + scores_bias  # [B, H, Q, K]
    weights = normalize(scores)
    out = (weights @ v).transpose(1, 2).reshape(B, Q, E)
    return mha.out_proj(out), weights


@pytest.fixture
def sdpa_calls(monkeypatch):
    """Count calls of F.scaled_dot_product_attention (the fused path)."""
    calls = []
    real = F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append(kwargs.get("attn_mask"))
        return real(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    return calls


@pytest.mark.parametrize("kw", [{}, {"bias": False}, {"kdim": 10, "vdim": 12}])
def test_initialisation_and_parameter_names_match_torch(kw):
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(E, H, batch_first=True, **kw)
    torch.manual_seed(0)
    ours = MultiheadAttention(E, H, **kw)
    ref_sd, ours_sd = ref.state_dict(), ours.state_dict()
    assert list(ours_sd) == list(ref_sd)
    for name, value in ref_sd.items():
        assert torch.equal(ours_sd[name], value), name
    assert type(ours.out_proj) is nn.Linear


@pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")
@pytest.mark.parametrize(
    "masks",
    [
        "none",
        "padding",
        "bool",
        "bool+padding",
        "float[B*H]",
        "float[H]+padding",
        "float[B,H]",
        "float-padding",
    ],
)
def test_outputs_and_weights_match_torch(masks):
    ref, ours = _pair()
    query, key, value = _inputs()
    kpm = _padding() if "padding" in masks else None
    if masks == "float-padding":
        kpm = _randn(B, K, seed=13).masked_fill(_padding(), float("-inf"))
    bias = _randn(B, H, Q, K, seed=5)
    ours_mask = ref_mask = None
    if masks.startswith("bool"):
        ours_mask = ref_mask = _bool_mask()
    elif masks.startswith("float[B*H]"):
        ours_mask = ref_mask = bias.reshape(B * H, Q, K)
    elif masks.startswith("float[H]"):
        ours_mask, ref_mask = bias[0], bias[0].repeat(B, 1, 1)
    elif masks.startswith("float[B,H]"):
        ours_mask, ref_mask = bias, bias.reshape(B * H, Q, K)
    ref_out, ref_w = ref(
        query, key, value, key_padding_mask=kpm, attn_mask=ref_mask, average_attn_weights=False
    )
    out, w = ours(query, key, value, key_padding_mask=kpm, attn_mask=ours_mask, need_weights=True)
    fused, none = ours(query, key, value, key_padding_mask=kpm, attn_mask=ours_mask)
    assert none is None
    assert w.shape == (B, H, Q, K)
    torch.testing.assert_close(w, ref_w, atol=1e-5, rtol=0)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=0)
    torch.testing.assert_close(fused, ref_out, atol=1e-5, rtol=0)


def test_kdim_vdim_match_torch():
    ref, ours = _pair(kdim=10, vdim=12)
    query, key, value = _inputs(kdim=10, vdim=12)
    ref_out, ref_w = ref(query, key, value, key_padding_mask=_padding(), average_attn_weights=False)
    out, w = ours(query, key, value, key_padding_mask=_padding(), need_weights=True)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=0)
    torch.testing.assert_close(w, ref_w, atol=1e-5, rtol=0)


def test_self_attention_shared_input_matches_torch():
    ref, ours = _pair()
    x = _randn(B, K, E, seed=6)
    torch.testing.assert_close(ours(x, x, x)[0], ref(x, x, x)[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["softmax", "sparsemax"])
def test_additive_bias_equals_manual_computation(name):
    torch.manual_seed(0)
    mha = MultiheadAttention(E, H, normalizer=name).eval()
    query, key, value = _inputs()
    bias = _randn(H, Q, K, seed=7, scale=3.0)  # a relative position bias per head
    normalize = (lambda s: s.softmax(-1)) if name == "softmax" else entmax.sparsemax
    ref_out, ref_w = _manual(mha, query, key, value, bias, normalize)
    out, w = mha(query, key, value, attn_mask=bias, need_weights=True)
    torch.testing.assert_close(w, ref_w, atol=1e-6, rtol=0)
    torch.testing.assert_close(out, ref_out, atol=1e-6, rtol=0)
    torch.testing.assert_close(
        mha(query, key, value, attn_mask=bias)[0], ref_out, atol=1e-6, rtol=0
    )


@pytest.mark.parametrize("masks", ["none", "padding", "bool+padding", "bias+bool"])
def test_fused_path_is_taken_and_equals_explicit_path(masks, sdpa_calls):
    torch.manual_seed(0)
    mha = MultiheadAttention(E, H).eval()
    query, key, value = _inputs()
    kw = {"key_padding_mask": _padding() if "padding" in masks else None}
    if "bool" in masks:
        kw["attn_mask"] = _bool_mask()
    if "bias" in masks:
        kw["attn_mask"] = _randn(H, Q, K, seed=8).masked_fill(_bool_mask(), float("-inf"))
    explicit, w = mha(query, key, value, need_weights=True, **kw)
    assert len(sdpa_calls) == 0 and w is not None
    fused, none = mha(query, key, value, **kw)
    assert len(sdpa_calls) == 1 and none is None
    torch.testing.assert_close(fused, explicit, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", NORMALIZERS[1:])
def test_sparse_normalizers_never_take_the_fused_path(name, sdpa_calls):
    mha = MultiheadAttention(E, H, normalizer=name)
    mha(*_inputs(), key_grid=GRID)
    assert sdpa_calls == []


@pytest.mark.parametrize("name", NORMALIZERS)
@pytest.mark.parametrize("need_weights", [False, True])
def test_fully_masked_rows_give_zeros(name, need_weights):
    torch.manual_seed(0)
    mha = MultiheadAttention(E, H, normalizer=name)
    query, key, value = (x.requires_grad_() for x in _inputs())
    kpm = torch.zeros(B, K, dtype=torch.bool)
    kpm[1] = True  # image 1: every key is padding
    mask = torch.zeros(Q, K, dtype=torch.bool)
    mask[2] = True  # query 2 of every image: every key masked
    kw = {"key_padding_mask": kpm, "attn_mask": mask, "key_grid": GRID}
    out, w = mha(query, key, value, need_weights=need_weights, **kw)
    dead = torch.zeros(B, Q, dtype=torch.bool)
    dead[1], dead[:, 2] = True, True
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[dead], mha.out_proj.bias.expand(int(dead.sum()), E))
    if need_weights:
        assert (w.permute(0, 2, 1, 3)[dead] == 0).all()
        alive = w.permute(0, 2, 1, 3)[~dead]  # [n, H, K]
        torch.testing.assert_close(alive.sum(-1), torch.ones(len(alive), H))
    out.sum().backward()
    for p in [query, key, value, *mha.parameters()]:
        assert torch.isfinite(p.grad).all()
    assert (key.grad[1] == 0).all() and (value.grad[1] == 0).all()


def test_attend_fully_masked_rows_with_infinite_bias_give_zeros():
    q, k, v = _randn(1, 2, 3, 4, seed=9), _randn(1, 2, 5, 4, seed=10), _randn(1, 2, 5, 4, seed=11)
    bias = torch.zeros(3, 5)
    bias[1] = float("-inf")  # query 1 sees no key
    softmax = get_normalizer("softmax")
    fused, _ = attend(q, k, v, softmax, bias=bias)
    explicit, w = attend(q, k, v, softmax, bias=bias, need_weights=True)
    assert (fused[:, :, 1] == 0).all() and (explicit[:, :, 1] == 0).all()
    assert (w[:, :, 1] == 0).all()
    torch.testing.assert_close(fused, explicit, atol=1e-6, rtol=0)


def test_mask_helpers():
    kpm = torch.tensor([[False, True, False]])
    m = key_padding_to_mask(kpm)
    assert m.shape == (1, 1, 1, 3) and m[0, 0, 0].tolist() == [False, True, False]
    causal = torch.ones(3, 3, dtype=torch.bool).triu(1)
    merged = merge_masks(None, causal, m)
    assert merged.shape == (1, 1, 3, 3)
    assert merged[0, 0].tolist() == [[False, True, True], [False, True, True], [False, True, False]]
    assert merge_masks(None, None) is None
    with pytest.raises(TypeError):
        key_padding_to_mask(kpm.float())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("need_weights", [False, True])
def test_low_precision_inputs(dtype, need_weights):
    torch.manual_seed(0)
    mha = MultiheadAttention(E, H).eval()
    query, key, value = _inputs()
    kw = {"key_padding_mask": _padding(), "attn_mask": _randn(H, Q, K, seed=12)}
    ref, ref_w = mha(query, key, value, need_weights=True, **kw)
    low = mha.to(dtype)
    out, w = low(query.to(dtype), key.to(dtype), value.to(dtype), need_weights=need_weights, **kw)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), ref, atol=5e-2, rtol=0)
    if need_weights:
        torch.testing.assert_close(w.float(), ref_w, atol=2e-2, rtol=0)


@pytest.mark.parametrize("name", NORMALIZERS)
def test_every_normalizer_forward_and_backward(name):
    torch.manual_seed(0)
    mha = MultiheadAttention(E, H, normalizer=name)
    query, key, value = _inputs()
    key.requires_grad_()
    kpm = _padding()
    out, w = mha(query, key, value, key_padding_mask=kpm, need_weights=True, key_grid=GRID)
    assert w.shape == (B, H, Q, K) and (w >= 0).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(B, H, Q))
    assert (w[1, ..., -2:] == 0).all()  # padded keys get no attention
    _, bk, bv = mha.in_proj_bias.chunk(3)
    _, wk, wv = mha.in_proj_weight.chunk(3)
    v = _heads(value @ wv.T + bv)
    merged = (w @ v).transpose(1, 2).reshape(B, Q, E)
    torch.testing.assert_close(out, mha.out_proj(merged), atol=1e-6, rtol=0)
    fast, _ = mha(query, key, value, key_padding_mask=kpm, key_grid=GRID)
    torch.testing.assert_close(fast, out, atol=1e-6, rtol=0)
    (out**2).sum().backward()
    for grad in [key.grad, mha.in_proj_weight.grad, mha.out_proj.weight.grad]:
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_gradient_reaches_pre_alpha():
    torch.manual_seed(0)
    mha = MultiheadAttention(E, H, normalizer="alpha_entmax")
    assert mha.normalizer.pre_alpha.shape == (H,)
    assert "normalizer.pre_alpha" in mha.state_dict()
    query, key, value = _inputs()
    out, _ = mha(query, key * 3, value)
    (out**2).sum().backward()
    grad = mha.normalizer.pre_alpha.grad
    assert grad is not None and torch.isfinite(grad).all() and (grad != 0).all()


def test_normalizer_module_and_validation():
    sparsemax = get_normalizer("sparsemax")
    mha = MultiheadAttention(E, H, normalizer=sparsemax)
    assert mha.normalizer is sparsemax
    with pytest.raises(TypeError):
        MultiheadAttention(E, H, normalizer=3)
    with pytest.raises(ValueError):
        MultiheadAttention(E, 3)
    query, key, value = _inputs()
    with pytest.raises(ValueError, match="key_grid"):
        mha(query, key, value, key_grid=(4, 4))
    with pytest.raises(ValueError, match="attn_mask"):
        mha(query, key, value, attn_mask=torch.zeros(3, Q, K))


def test_dropout_applies_to_output_not_to_returned_weights():
    torch.manual_seed(0)
    mha = MultiheadAttention(E, H, normalizer="sparsemax", dropout=0.5).train()
    query, key, value = _inputs()
    out1, w = mha(query, key, value, need_weights=True)
    out2, _ = mha(query, key, value)
    torch.testing.assert_close(w.sum(-1), torch.ones(B, H, Q))
    assert not torch.allclose(out1, out2)
    mha.eval()
    torch.testing.assert_close(mha(query, key, value)[0], mha(query, key, value)[0])
