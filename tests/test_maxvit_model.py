"""MaxViT: identical to timm's ``maxvit_*_tf_224`` on the same weights, the paper's sizes, the
relative position bias against its formula, and the timm loader's refusals and table resizing."""

from __future__ import annotations

import pytest
import timm
import torch

from attnkit.attention.partition import PartitionAttention
from attnkit.attention.relative_bias import RelativePositionBias, resize_bias_table
from attnkit.models.maxvit.config import maxvit_variant
from attnkit.models.maxvit.model import MaxViT
from attnkit.models.maxvit.timm_weights import load_timm_maxvit, timm_to_attnkit

PAPER_PARAMS = {"tiny": 30.92e6, "small": 68.93e6, "base": 119.47e6, "large": 211.79e6}


def _timm_reference(name: str, seed: int = 0) -> torch.nn.Module:
    """A timm MaxViT with random weights, non-trivial BN statistics and bias tables of std 1
    (at timm's std 0.02 a table read in the wrong layout would hardly change the output)."""
    torch.manual_seed(seed)
    ref = timm.create_model(name, pretrained=False).eval()
    with torch.no_grad():
        for name_, p in ref.named_parameters():
            if name_.endswith("relative_position_bias_table"):
                p.normal_(0, 1.0)
        for m in ref.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return ref


@pytest.fixture(scope="module")
def tiny_pair():
    ref = _timm_reference("maxvit_tiny_tf_224")
    ours = MaxViT(maxvit_variant("tiny")).eval()
    assert load_timm_maxvit(ours, ref.state_dict()) == []
    return ref, ours


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> bool:
    """Equal to ``tol`` relative to the reference's largest magnitude (features grow with
    depth: the last stage reaches ~100 in fp32)."""
    return float((a - b).abs().max()) <= tol * max(1.0, float(a.abs().max()))


def test_tiny_logits_and_stage_features_equal_timm(tiny_pair):
    ref, ours = tiny_pair
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert _close(ref(x), ours(x))
        theirs = ref.forward_intermediates(x, intermediates_only=True)  # stem + 4 stages
        mine = ours.forward_features(x)
    assert len(theirs) == len(mine) == 5
    for a, b in zip(theirs, mine):
        assert a.shape == b.shape
        assert _close(a, b)


def test_loading_the_table_without_the_flip_gives_another_model(tiny_pair):
    """Pitfall 12: timm indexes by key - query; copying the table as is must not pass."""
    ref, ours = tiny_pair
    state = timm_to_attnkit(ref.state_dict())
    for key in state:
        if key.endswith("relative_bias.table"):
            state[key] = state[key].flip(-2, -1)  # undo the loader's flip
    wrong = MaxViT(maxvit_variant("tiny")).eval()
    wrong.load_state_dict(state)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert not _close(ref(x), wrong(x), tol=1e-3)


def test_small_equals_timm_at_224():
    ref = _timm_reference("maxvit_small_tf_224", seed=3)
    ours = MaxViT(maxvit_variant("small")).eval()
    load_timm_maxvit(ours, ref.state_dict())
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert _close(ref(x), ours(x))


@pytest.mark.parametrize("variant", sorted(PAPER_PARAMS))
def test_parameter_counts_are_the_papers(variant):
    with torch.device("meta"):
        model = MaxViT(maxvit_variant(variant))
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - PAPER_PARAMS[variant]) < 0.005e6, count


def test_heads_have_32_channels_and_follow_the_width():
    """Pitfall 10: head dim 32 (not 32 heads everywhere), x4 MBConv expansion."""
    with torch.device("meta"):
        model = MaxViT(maxvit_variant("tiny"))
    attns = [m for m in model.modules() if isinstance(m, PartitionAttention)]
    assert len(attns) == 2 * (2 + 2 + 5 + 2)
    assert {(a.dim, a.num_heads) for a in attns} == {(64, 2), (128, 4), (256, 8), (512, 16)}
    assert all(a.head_dim == 32 for a in attns)
    conv = model.stages[1].blocks[0].conv
    assert conv.conv1_1x1.out_channels == 4 * 128  # expansion x4 of the output width
    assert conv.se.fc1.out_channels == 128 // 4  # SE reduces to a quarter of the output width


def _place(kind: str, part, padded, r: int, c: int):
    """(partition, position inside it) of token (r, c) on a map padded to ``padded``."""
    (ph, pw), (Hp, Wp) = part, padded
    if kind == "block":
        return (r // ph, c // pw), (r % ph, c % pw)
    sh, sw = Hp // ph, Wp // pw  # grid stride
    return (r % sh, c % sw), (r // sh, c // sw)


def test_partition_attention_equals_its_formula():
    """Block and grid attention (non-square windows, a map needing padding) against a direct
    evaluation: for each query, softmax over its partition's keys of q.k / sqrt(D) + B[q - k]."""
    torch.manual_seed(0)
    dim, hd, h, w = 16, 8, 5, 7
    x = torch.randn(2, h, w, dim)
    for kind, part in (("block", (2, 4)), ("grid", (3, 2))):
        attn = PartitionAttention(dim, hd, kind, part).eval()
        with torch.no_grad():
            attn.relative_bias.table.normal_()
            out = attn(x)
            (ph, pw), table = part, attn.relative_bias.table
            padded = (-(-h // ph) * ph, -(-w // pw) * pw)
            q, k, v = attn.qkv(x).reshape(2, h, w, 3, 2, hd).unbind(3)  # [B, h, w, H, D]
            expected = torch.zeros(2, h, w, dim)
            for r in range(h):
                for c in range(w):
                    group, (qr, qc) = _place(kind, part, padded, r, c)
                    keys = [
                        (i, j)
                        for i in range(h)
                        for j in range(w)
                        if _place(kind, part, padded, i, j)[0] == group
                    ]
                    offsets = [_place(kind, part, padded, i, j)[1] for i, j in keys]
                    bias = torch.stack(
                        [table[:, qr - kr + ph - 1, qc - kc + pw - 1] for kr, kc in offsets], -1
                    )  # [H, K]
                    kk = torch.stack([k[:, i, j] for i, j in keys], 2)  # [B, H, K, D]
                    vv = torch.stack([v[:, i, j] for i, j in keys], 2)
                    s = (q[:, r, c, :, None, :] * kk).sum(-1) / hd**0.5 + bias  # [B, H, K]
                    o = (s.softmax(-1)[..., None] * vv).sum(2)  # [B, H, D]
                    expected[:, r, c] = attn.proj(o.reshape(2, dim))
        assert torch.allclose(out, expected, atol=1e-5), kind


@pytest.mark.parametrize("kind", ["block", "grid"])
def test_real_tokens_do_not_depend_on_the_padding(kind):
    """The same map padded inside (to the partition multiple) and outside (garbage marked as
    padding) gives the same outputs on its real tokens."""
    torch.manual_seed(1)
    attn = PartitionAttention(16, 8, kind, (4, 4), normalizer="sparsemax").eval()
    x = torch.randn(2, 10, 9, 16)
    garbage = torch.randn(2, 12, 12, 16) * 100
    garbage[:, :10, :9] = x
    mask = torch.ones(2, 12, 12, dtype=torch.bool)
    mask[:, :10, :9] = False
    with torch.no_grad():
        inside = attn(x)
        outside = attn(garbage, padding_mask=mask)[:, :10, :9]
    assert inside.shape == (2, 10, 9, 16)
    assert torch.allclose(inside, outside, atol=1e-6)


@pytest.mark.parametrize("parts", [([4, 4], [4, 4]), ([2, 4], [4, 2])])
def test_any_input_size_and_window_shape_runs(parts):
    window, grid = parts
    model = MaxViT(maxvit_variant("synth", window=window, grid=grid)).eval()
    with torch.no_grad():
        for size in ((32, 32), (40, 56), (31, 45), (17, 96)):
            logits = model(torch.randn(2, 3, *size))
            assert logits.shape == (2, 10) and torch.isfinite(logits).all()


def test_loader_refuses_another_variant_and_names_it():
    with torch.device("meta"):
        ours = MaxViT(maxvit_variant("tiny"))
        other = MaxViT(maxvit_variant("small"))
    timm_like = {
        k.replace(".attn.relative_bias.table", ".attn.rel_pos.relative_position_bias_table"): v
        for k, v in other.state_dict().items()
    }
    with pytest.raises(ValueError, match=r"embed_dims \[96, 192, 384, 768\].*'small'"):
        load_timm_maxvit(ours, timm_like)


def test_tables_are_resized_for_another_window():
    bias = RelativePositionBias(2, (7, 7))
    small = RelativePositionBias(2, (4, 4))
    small.load_state_dict(bias.state_dict())
    assert small.table.shape == (2, 7, 7)
    expected = torch.nn.functional.interpolate(
        bias.table.detach()[None], size=(7, 7), mode="bicubic", align_corners=False
    )[0]
    assert torch.allclose(small.table, expected)
    assert torch.equal(resize_bias_table(bias.table, (13, 13)), bias.table)
    assert resize_bias_table(bias.table.detach(), (23, 23)).shape == (2, 23, 23)
    # a timm window-7 state dict loads into a MaxViT built for window 12 (384 inputs)
    ref = _timm_reference("maxvit_tiny_tf_224")
    ours = MaxViT(maxvit_variant("tiny", window=[12, 12], grid=[12, 12]))
    load_timm_maxvit(ours, ref.state_dict())
    assert ours.stages[0].blocks[0].attn_block.attn.relative_bias.table.shape == (2, 23, 23)


@pytest.mark.parametrize("variant", sorted(PAPER_PARAMS))
def test_imagenet_configs_build_the_paper_variants(repo_root, variant):
    from attnkit.config import load_config
    from attnkit.models import build_model

    cfg = load_config(repo_root / f"configs/maxvit/imagenet_{variant}.yaml")
    with torch.device("meta"):
        model = build_model(cfg)
    assert abs(sum(p.numel() for p in model.parameters()) - PAPER_PARAMS[variant]) < 0.005e6
    assert cfg.model.drop_path_rate == maxvit_variant(variant).drop_path_rate
