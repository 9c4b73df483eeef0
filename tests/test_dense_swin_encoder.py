"""The Swin encoder of the dense family: identical to timm's ``swin_tiny_patch4_window7_224`` per
stage, the variants' parameter counts, Swin's shifted-window mask, and any input size."""

from __future__ import annotations

import pytest
import timm
import torch

from attnkit.attention.partition import PartitionAttention, shift_region_mask
from attnkit.models.dense.encoders.swin import SWIN_VARIANTS, load_timm_swin, swin_encoder

PARAMS_WITH_HEAD = {"tiny": 28.29e6, "small": 49.61e6, "base": 87.77e6}  # DESIGN.md, timm


def test_tiny_stage_maps_equal_timm():
    torch.manual_seed(0)
    ref = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.endswith("relative_position_bias_table"):
                p.normal_()  # at timm's std 0.02 a wrong table layout would hardly show
    enc = swin_encoder("tiny").eval()
    assert load_timm_swin(enc, ref.state_dict()) == []
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs = ref.forward_intermediates(x, norm=True, intermediates_only=True)
        mine = enc.forward_features(x)
    assert [m.shape[1:] for m in mine] == [(96, 56, 56), (192, 28, 28), (384, 14, 14), (768, 7, 7)]
    for a, b in zip(theirs, mine):
        assert float((a - b).abs().max()) <= 1e-5 * float(a.abs().max())


@pytest.mark.parametrize("variant", sorted(SWIN_VARIANTS))
def test_parameter_counts_are_timms(variant):
    with torch.device("meta"):
        enc = swin_encoder(variant)
    head = enc.channels[-1] * 1000 + 1000  # timm's classifier, not part of the encoder
    count = sum(p.numel() for p in enc.parameters()) + head
    assert abs(count - PARAMS_WITH_HEAD[variant]) < 0.005e6, count


def test_shift_region_mask_by_hand():
    """A 4x4 map, windows of 2, shifted by 1: after the roll the last row and column come from
    the other side, so each window but the first mixes regions."""
    mask = shift_region_mask((4, 4), (2, 2), (1, 1))  # [4 windows, 4, 4]
    assert not mask[0].any()  # top-left window: one region
    # bottom-right window: tokens (2,2) (2,3) (3,2) (3,3) of regions 4, 5, 7, 8: all apart
    assert torch.equal(mask[3], ~torch.eye(4, dtype=torch.bool))
    # top-right window: (0,2), (0,3), (1,2), (1,3): columns 2 and 3 are different regions
    assert torch.equal(mask[1][0], torch.tensor([False, True, False, True]))


def test_shifted_windows_do_not_depend_on_the_padding():
    torch.manual_seed(2)
    attn = PartitionAttention(16, 8, "block", (4, 4), normalizer="entmax15", shift=(2, 2)).eval()
    x = torch.randn(2, 10, 9, 16)
    garbage = torch.randn(2, 12, 12, 16) * 100
    garbage[:, :10, :9] = x
    pad = torch.ones(2, 12, 12, dtype=torch.bool)
    pad[:, :10, :9] = False
    with torch.no_grad():
        assert torch.allclose(attn(x), attn(garbage, padding_mask=pad)[:, :10, :9], atol=1e-5)


def test_any_size_and_a_sparse_normalizer():
    enc = swin_encoder("tiny", embed_dim=24, depths=(2, 2), num_heads=(1, 2), img_size=(64, 64))
    sparse = swin_encoder(
        "tiny", embed_dim=24, depths=(2, 2), num_heads=(1, 2), normalizer="sparsemax"
    )
    sparse.load_state_dict(enc.state_dict())
    x = torch.randn(2, 3, 50, 75, requires_grad=True)
    maps = sparse.forward_features(x)
    assert [tuple(m.shape) for m in maps] == [(2, 24, 13, 19), (2, 48, 7, 10)]
    maps[-1].sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_loader_refuses_another_variant_naming_the_key():
    with torch.device("meta"):
        tiny = swin_encoder("tiny")
        base = swin_encoder("base")
    timm_like = {
        k.replace("relative_bias.table", "relative_position_bias_table"): (
            v.flatten(1).t() if k.endswith("relative_bias.table") else v
        )
        for k, v in base.state_dict().items()
    }
    with pytest.raises(
        ValueError, match=r"timm Swin weights do not fit this encoder at patch_embed"
    ):
        load_timm_swin(tiny, timm_like)
