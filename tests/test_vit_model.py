"""The ViT family: timm equivalence, the self-attention record protocol, sparse normalizers and
the loader's refusals of other architectures."""

from __future__ import annotations

import pytest
import timm
import torch
from timm.models.vision_transformer import VisionTransformer as TimmViT

from attnkit.analysis.recorder import AttentionRecorder
from attnkit.attention import SelfAttention
from attnkit.attention.sparsemax import sparsemax
from attnkit.attention.tvmax import prox_tv2d
from attnkit.models.vit import ViTConfig, build_vit, load_timm_vit, vit_variant

SMALL = {"patch_size": 4, "embed_dim": 96, "depth": 3, "num_heads": 3, "num_classes": 10}


def _timm_small(img_size=(32, 32), **kw) -> torch.nn.Module:
    return TimmViT(img_size=img_size, **SMALL, **kw).eval()


def _small(normalizer="softmax", img_size=(32, 32), **kw):
    cfg = ViTConfig(img_size=list(img_size), **{**SMALL, **kw})
    cfg.attention.normalizer = normalizer
    return build_vit(cfg)


def _same_logits(ref: torch.nn.Module, model: torch.nn.Module, x: torch.Tensor) -> float:
    """Load ``ref``'s weights into ``model``, assert equal logits, return the max difference."""
    report = load_timm_vit(model, ref.state_dict())
    assert report.missing == []
    model.eval()
    with torch.no_grad():
        expected, got = ref(x), model(x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    return (got - expected).abs().max().item()


def test_tiny_matches_timm_vit_tiny_patch16_224():
    torch.manual_seed(0)
    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False).eval()
    model = build_vit(vit_variant("tiny"))
    assert set(model.state_dict()) == set(ref.state_dict())
    diff = _same_logits(ref, model, torch.randn(2, 3, 224, 224))
    print(f"vit_tiny_patch16_224 max |logit diff| {diff:.3g}")


@pytest.mark.parametrize(("pool", "class_token"), [("token", True), ("avg", False), ("avg", True)])
def test_small_matches_timm(pool, class_token):
    torch.manual_seed(1)
    ref = _timm_small(global_pool=pool, class_token=class_token)
    model = _small(global_pool=pool, class_token=class_token)
    assert set(model.state_dict()) == set(ref.state_dict())
    diff = _same_logits(ref, model, torch.randn(2, 3, 32, 32))
    print(f"32x32 {pool} class_token={class_token} max |logit diff| {diff:.3g}")


def test_non_square_matches_timm_and_checks_input_size():
    torch.manual_seed(2)
    ref = _timm_small(img_size=(32, 48))
    model = _small(img_size=(32, 48))
    assert model.grid_size == ref.patch_embed.grid_size == (8, 12)
    diff = _same_logits(ref, model, torch.randn(2, 3, 32, 48))
    print(f"32x48 max |logit diff| {diff:.3g}")
    with pytest.raises(ValueError, match=r"32 x 48.*\[2, 3, 48, 32\]"):
        model(torch.randn(2, 3, 48, 32))


def test_recording_path_matches_timm():
    """With a recorder active every block takes the explicit (non-fused) path."""
    torch.manual_seed(3)
    ref = _timm_small()
    model = _small()
    load_timm_vit(model, ref.state_dict())
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), AttentionRecorder(model):
        got = model(x)
    torch.testing.assert_close(got, ref(x).detach(), atol=1e-5, rtol=1e-5)


def test_self_attention_fused_equals_explicit():
    torch.manual_seed(4)
    attn = SelfAttention(48, 4).eval()
    x = torch.randn(2, 1 + 6 * 5, 48)
    fused, none = attn(x, key_grid=(6, 5), prefix_tokens=1)
    explicit, weights = attn(x, key_grid=(6, 5), prefix_tokens=1, need_weights=True)
    assert none is None
    assert weights.shape == (2, 4, 31, 31)
    torch.testing.assert_close(fused, explicit, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 31))
    with pytest.raises(ValueError, match="prefix_tokens"):
        attn(x, key_grid=(6, 5))


def test_self_attention_qkv_layout_is_timms():
    """Same weights in timm's Attention and ours: same output, also with a padding mask."""
    torch.manual_seed(5)
    ref = timm.layers.Attention(48, num_heads=4, qkv_bias=True).eval()
    attn = SelfAttention(48, 4).eval()
    attn.load_state_dict(ref.state_dict())
    x = torch.randn(2, 10, 48)
    torch.testing.assert_close(attn(x)[0], ref(x), atol=1e-6, rtol=1e-5)
    pad = torch.zeros(2, 10, dtype=torch.bool)
    pad[1, 7:] = True
    _, weights = attn(x, key_padding_mask=pad, need_weights=True)
    assert (weights[1, ..., 7:] == 0).all()


def test_recorder_captures_every_block_with_its_grid():
    torch.manual_seed(6)
    model = _small().eval()
    with torch.no_grad(), AttentionRecorder(model) as rec:
        model(torch.randn(2, 3, 32, 32))
    assert rec.names == [f"blocks.{i}.attn" for i in range(3)]
    for name in rec.names:
        (record,) = rec.records[name]
        assert record.weights.shape == (2, 3, 65, 65)
        assert record.key_grid == (8, 8)
        assert record.meta["prefix_tokens"] == 1
        torch.testing.assert_close(record.weights.sum(-1), torch.ones(2, 3, 65))


def test_sparsemax_vit_is_sparse_and_trains():
    torch.manual_seed(7)
    model = _small("sparsemax").train()
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([1, 4])
    with AttentionRecorder(model) as rec:
        loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    for name, weights in rec.weights.items():
        assert (weights == 0).float().mean() > 0.1, name
    for i, block in enumerate(model.blocks):
        grad = block.attn.qkv.weight.grad
        assert grad is not None and grad.abs().sum() > 0, i


def test_alpha_entmax_vit_learns_alpha_per_block():
    torch.manual_seed(8)
    model = _small("alpha_entmax").train()
    loss = model(torch.randn(2, 3, 32, 32)).logsumexp(-1).sum()
    loss.backward()
    alphas = [n for n, _ in model.named_parameters() if n.endswith("pre_alpha")]
    assert alphas == [f"blocks.{i}.attn.normalizer.pre_alpha" for i in range(3)]
    for block in model.blocks:
        pre_alpha = block.attn.normalizer.pre_alpha
        assert pre_alpha.shape == (3,)
        assert pre_alpha.grad is not None and pre_alpha.grad.abs().sum() > 0
    # A timm state dict loads into it; pre_alpha keeps its initial value.
    report = load_timm_vit(model, _timm_small().state_dict())
    assert report.missing == alphas


def test_tvmax_smooths_the_grid_keys_only():
    """With a class token TVmax's graph is the patch grid; the class key is an isolated node."""
    torch.manual_seed(9)
    attn = SelfAttention(24, 2, normalizer="tvmax").eval()
    x = torch.randn(1, 1 + 3 * 4, 24)
    _, weights = attn(x, key_grid=(3, 4), prefix_tokens=1, need_weights=True)  # [1, 2, 13, 13]
    q, k, _ = attn.qkv(x).reshape(1, 13, 3, 2, 12).permute(2, 0, 3, 1, 4)
    scores = (q @ k.transpose(-2, -1)) * 12**-0.5  # [1, 2, 13, 13]
    grid = prox_tv2d(scores[..., 1:].reshape(-1, 3, 4), attn.normalizer.lam).view(1, 2, 13, 12)
    expected = sparsemax(torch.cat([scores[..., :1], grid], -1))
    torch.testing.assert_close(weights, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weights.sum(-1), torch.ones(1, 2, 13))
    model = _small("tvmax").eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).isfinite().all()


def _refusal(model, state) -> str:
    with pytest.raises(ValueError) as info:
        load_timm_vit(model, state)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_loader_refuses_other_architectures(tmp_path):
    torch.manual_seed(10)
    model = _small()
    deeper = TimmViT(img_size=32, **{**SMALL, "depth": 4}).state_dict()
    assert "timm state dict has 4 blocks, this ViT 3" in _refusal(model, deeper)
    wider = TimmViT(img_size=32, **{**SMALL, "embed_dim": 192}).state_dict()
    assert "embed_dim 192 vs 96" in _refusal(model, wider)
    larger = TimmViT(img_size=48, **SMALL).state_dict()
    assert "pos_embed [1,145,96] vs [1,65,96]" in _refusal(model, larger)
    patch8 = TimmViT(img_size=32, **{**SMALL, "patch_size": 8}).state_dict()
    assert "patch_size 8 vs 4" in _refusal(model, patch8)
    classes = TimmViT(img_size=32, **{**SMALL, "num_classes": 100}).state_dict()
    assert "timm head has 100 classes, this ViT 10" in _refusal(model, classes)
    avg = TimmViT(img_size=32, **SMALL, global_pool="avg").state_dict()
    assert "fc_norm" in _refusal(model, avg)
    detr = {
        "backbone.0.body.conv1.weight": torch.zeros(64, 3, 7, 7),
        "transformer.encoder.layers.0.self_attn.in_proj_weight": torch.zeros(768, 256),
        "query_embed.weight": torch.zeros(100, 256),
        "class_embed.weight": torch.zeros(92, 256),
    }
    message = _refusal(model, detr)
    assert "not a timm ViT state dict" in message and "backbone." in message
    scaled = TimmViT(img_size=32, **SMALL, init_values=1e-5).state_dict()
    assert "blocks.0.ls1.gamma" in _refusal(model, scaled)


def test_loader_reads_files_and_headless_dicts(tmp_path):
    torch.manual_seed(11)
    ref = _timm_small()
    path = tmp_path / "vit.pth"
    torch.save({"model": ref.state_dict()}, path)
    model = _small().eval()
    report = load_timm_vit(model, path)
    assert report.architecture["depth"] == 3 and report.missing == []
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), atol=1e-5, rtol=1e-5)
    headless = {k: v for k, v in ref.state_dict().items() if not k.startswith("head.")}
    report = load_timm_vit(_small(num_classes=5), headless)
    assert report.missing == ["head.weight", "head.bias"]
    with pytest.raises(FileNotFoundError):
        load_timm_vit(model, tmp_path / "absent.pth")


def test_config_variants_and_refusals():
    assert vit_variant("synth") == ViTConfig()
    tiny = vit_variant("tiny", num_classes=10)
    assert (tiny.img_size, tiny.patch_size, tiny.depth, tiny.num_classes) == (
        [224, 224],
        16,
        12,
        10,
    )
    with pytest.raises(ValueError, match="available"):
        vit_variant("huge")
    with pytest.raises(ValueError, match="class_token"):
        build_vit(ViTConfig(class_token=False))
    with pytest.raises(ValueError, match="multiple of patch_size"):
        build_vit(ViTConfig(img_size=[30, 32]))
