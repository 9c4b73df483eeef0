"""The MiT encoder (SegFormer) of the dense family: identical to timm's PyramidVisionTransformerV2
built with MiT's settings, SegFormer's encoder sizes, spatial-reduction attention against its
formula, and any input size with any normalizer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from timm.models.pvt_v2 import PyramidVisionTransformerV2

from attnkit.analysis import AttentionRecorder
from attnkit.attention.spatial_reduction import SpatialReductionAttention
from attnkit.models.dense.encoders.mit import MIT_VARIANTS, load_timm_mit, mit_encoder

ENCODER_PARAMS = {
    "b0": 3.32e6,
    "b1": 13.15e6,
    "b2": 24.20e6,
    "b3": 44.07e6,
    "b4": 60.84e6,
    "b5": 81.44e6,
}


def test_b0_stage_maps_equal_timm_pvt_v2_with_mit_settings():
    torch.manual_seed(0)
    ref = PyramidVisionTransformerV2(
        depths=(2, 2, 2, 2),
        embed_dims=(32, 64, 160, 256),
        num_heads=(1, 2, 5, 8),
        sr_ratios=(8, 4, 2, 1),
        mlp_ratios=(4, 4, 4, 4),
    ).eval()
    enc = mit_encoder("b0").eval()
    assert load_timm_mit(enc, ref.state_dict()) == []
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs = ref.forward_intermediates(x, intermediates_only=True)
        mine = enc.forward_features(x)
    assert [m.shape[1:] for m in mine] == [(32, 56, 56), (64, 28, 28), (160, 14, 14), (256, 7, 7)]
    for a, b in zip(theirs, mine):
        assert float((a - b).abs().max()) <= 1e-5 * float(a.abs().max())
    # SegFormer's block and stage norms have eps 1e-6 (patch embeddings and the reduction: 1e-5)
    assert enc.stages[0].blocks[0].norm1.eps == enc.stages[3].norm.eps == 1e-6


@pytest.mark.parametrize("variant", sorted(MIT_VARIANTS))
def test_encoder_sizes_are_segformers(variant):
    with torch.device("meta"):
        enc = mit_encoder(variant)
    count = sum(p.numel() for p in enc.parameters())
    assert abs(count - ENCODER_PARAMS[variant]) < 0.005e6, count


def test_spatial_reduction_attention_equals_its_formula():
    torch.manual_seed(2)
    attn = SpatialReductionAttention(8, 2, sr_ratio=2).eval()
    x = torch.randn(1, 6 * 4, 8)  # a 6x4 grid
    with torch.no_grad(), AttentionRecorder(attn) as rec:
        out = attn(x, (6, 4))
        grid = x.transpose(1, 2).reshape(1, 8, 6, 4)
        reduced = F.conv2d(grid, attn.sr.weight, attn.sr.bias, stride=2)  # [1, 8, 3, 2]
        keys_in = F.layer_norm(
            reduced.flatten(2).transpose(1, 2), (8,), attn.norm.weight, attn.norm.bias
        )
        q = attn.q(x).reshape(1, 24, 2, 4).transpose(1, 2)  # [1, H, 24, 4]
        k, v = attn.kv(keys_in).reshape(1, 6, 2, 2, 4).permute(2, 0, 3, 1, 4)  # [1, H, 6, 4] each
        w = (q @ k.transpose(-2, -1) / 2.0).softmax(-1)  # head dim 4: scale 1/2
        expected = attn.proj((w @ v).transpose(1, 2).reshape(1, 24, 8))
    assert torch.allclose(out, expected, atol=1e-6)
    record = rec.last("")
    assert record.weights.shape == (1, 2, 24, 6) and record.key_grid == (3, 2)


def test_any_size_and_sparse_attention_trains():
    enc = mit_encoder("b0", normalizer="sparsemax")
    x = torch.randn(2, 3, 50, 75)
    maps = enc.forward_features(x)
    assert [tuple(m.shape[-2:]) for m in maps] == [(13, 19), (7, 10), (4, 5), (2, 3)]
    maps[-1].square().mean().backward()
    grads = [p.grad for n, p in enc.named_parameters() if n.endswith("attn.q.weight")]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_loader_refuses_another_variant_naming_the_key():
    with torch.device("meta"):
        b0, b1 = mit_encoder("b0"), mit_encoder("b1")
    with pytest.raises(
        ValueError, match=r"timm PVTv2 weights do not fit this encoder at patch_embed"
    ):
        load_timm_mit(b0, b1.state_dict())
