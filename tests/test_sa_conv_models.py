"""The sa_conv family: learned 2-D relative attention against direct evaluations of its formulas,
the post-norm transformer, shared (hierarchical) layers, every normalizer in every attention, and
the paper-size parameter counts against Cordonnier et al.'s Table 1."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from attnkit.analysis.recorder import AttentionRecorder
from attnkit.attention.normalizers import NORMALIZER_NAMES
from attnkit.config import load_config
from attnkit.models import build_model
from attnkit.models.sa_conv.config import SAConvAttentionConfig, SAConvConfig
from attnkit.models.sa_conv.learned2d import Learned2DSelfAttention
from attnkit.models.sa_conv.transformer import SAConvTransformer, SpaceToDepth


def _positions(h, w):
    return [(i // w, i % w) for i in range(h * w)]


def _randomise(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)


@torch.no_grad()
def test_learned2d_without_content_matches_the_formula():
    layer = Learned2DSelfAttention(6, num_heads=3, max_grid=(4, 5), pos_dim=4)
    _randomise(layer)
    h, w = 3, 4
    pos, P = _positions(h, w), layer.positional
    x = torch.randn(2, h * w, 6)
    out, weights = layer(x, (h, w), need_weights=True)
    expected_w = torch.zeros(3, h * w, h * w)
    for head in range(3):
        for q, (qr, qc) in enumerate(pos):
            scores = torch.stack(
                [
                    P.head_keys_row.weight[head] @ P.row_embeddings.weight[kr - qr + 4 - 1]
                    + P.head_keys_col.weight[head] @ P.col_embeddings.weight[kc - qc + 5 - 1]
                    for kr, kc in pos
                ]
            )
            expected_w[head, q] = torch.softmax(scores, 0)
    torch.testing.assert_close(weights, expected_w.expand(2, -1, -1, -1), atol=1e-5, rtol=1e-5)
    # every head reads the input itself; the heads are concatenated and projected
    heads = torch.einsum("hqk,bkc->bqhc", expected_w, x).reshape(2, h * w, 18)
    torch.testing.assert_close(out, layer.proj(heads), atol=1e-5, rtol=1e-5)
    offsets = P.offset_scores(1, 2)  # [H, 3, 5], centre = offset (0, 0)
    assert offsets.shape == (3, 3, 5)
    torch.testing.assert_close(offsets[:, 1, 2], P((h, w))[:, 0, 0])  # offset 0: query = key


def test_learned2d_with_content_matches_the_formula():
    layer = Learned2DSelfAttention(6, num_heads=2, max_grid=(3, 4), content=True, content_dim=4)
    _randomise(layer, seed=1)
    h, w, D = 3, 4, 4
    pos, P = _positions(h, w), layer.positional
    x = torch.randn(1, h * w, 6)
    _, weights = layer(x, (h, w), need_weights=True)
    q, k = layer.qk(x).view(1, h * w, 2, 2, D).permute(2, 0, 3, 1, 4).unbind(0)
    for head in range(2):
        for i, (qr, qc) in enumerate(pos):
            qi = q[0, head, i]
            scores = torch.stack(
                [
                    qi @ k[0, head, j]
                    + qi[:2] @ P.row_embeddings.weight[kr - qr + 3 - 1]
                    + qi[2:] @ P.col_embeddings.weight[kc - qc + 4 - 1]
                    for j, (kr, kc) in enumerate(pos)
                ]
            ) / math.sqrt(D)
            torch.testing.assert_close(
                weights[0, head, i], torch.softmax(scores, 0), atol=1e-5, rtol=1e-5
            )


def test_a_grid_larger_than_the_learned_offsets_is_refused():
    layer = Learned2DSelfAttention(4, num_heads=2, max_grid=(2, 2))
    with pytest.raises(ValueError, match="exceeds the learned offsets"):
        layer(torch.randn(1, 9, 4), (3, 3))


def test_space_to_depth_keeps_each_2x2_patch_in_one_token():
    image = torch.arange(2 * 4 * 4, dtype=torch.float32).view(1, 2, 4, 4)
    tokens = SpaceToDepth(2)(image)  # [1, 4, 8]
    assert tokens.shape == (1, 4, 8)
    # token 1 is the patch rows 0-1, cols 2-3; channel-major, then row, then column
    assert tokens[0, 1].tolist() == [2, 3, 6, 7, 18, 19, 22, 23]


def _tiny(**attention) -> SAConvConfig:
    return SAConvConfig(
        hidden_dim=12,
        depth=2,
        ffn_dim=16,
        dropout=0.0,
        downsample=8,
        attention=SAConvAttentionConfig(num_heads=3, dropout=0.0, **attention),
    )


def test_a_post_norm_layer_is_computed_as_the_paper():
    cfg = _tiny(kind="gaussian", spread="anisotropic")
    model = SAConvTransformer(cfg).eval()
    _randomise(model, seed=3)
    images = torch.randn(2, 3, 32, 32)
    x = model.embed(SpaceToDepth(8)(images))  # [2, 16, 12]
    for layer in model.layers:
        a, _ = layer.attention(x, (4, 4))
        x = F.layer_norm(x + layer.dense(a), (12,), layer.norm1.weight, layer.norm1.bias, 1e-12)
        ffn = layer.fc2(F.gelu(layer.fc1(x)))
        x = F.layer_norm(x + ffn, (12,), layer.norm2.weight, layer.norm2.bias, 1e-12)
    torch.testing.assert_close(model(images), model.head(x.mean(1)), atol=1e-5, rtol=1e-5)
    model.pool = "max"  # the synthetic-set configs' pooling
    torch.testing.assert_close(model(images), model.head(x.amax(1)), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "attention",
    [
        dict(kind="gaussian"),
        dict(kind="learned2d"),
        dict(kind="learned2d", content=True, content_dim=4),
        dict(kind="content", content_dim=4),
    ],
    ids=["gaussian", "learned2d", "learned2d+content", "content"],
)
def test_shared_layers_equal_one_layer_applied_depth_times(attention):
    cfg = _tiny(**attention)
    cfg.share_layers = True
    shared = SAConvTransformer(cfg).eval()
    _randomise(shared, seed=4)
    plain = SAConvTransformer(_tiny(**attention)).eval()
    state = shared.state_dict()
    plain.load_state_dict(state)  # every layer gets the same weights
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(shared(images), plain(images), atol=1e-5, rtol=1e-5)
    n_shared = sum(p.numel() for p in shared.parameters())
    n_plain = sum(p.numel() for p in plain.parameters())
    n_layer = sum(p.numel() for p in plain.layers[0].parameters())
    assert n_plain - n_shared == n_layer  # one layer's parameters, counted once
    shared(images).sum().backward()
    assert shared.layers[1].fc1.weight.grad is shared.layers[0].fc1.weight.grad


def test_shared_layers_compute_the_positional_scores_once():
    cfg = _tiny(kind="gaussian")
    cfg.share_layers, cfg.depth = True, 4
    model = SAConvTransformer(cfg)
    calls = []
    model.layers[0].attention.positional.register_forward_hook(lambda *a: calls.append(1))
    model(torch.randn(1, 3, 32, 32))
    assert len(calls) == 1


@pytest.mark.parametrize("normalizer", NORMALIZER_NAMES)
@pytest.mark.parametrize(
    "attention",
    [
        dict(kind="gaussian", spread="isotropic"),
        dict(kind="gaussian", spread="anisotropic", content=True),
        dict(kind="learned2d"),
        dict(kind="learned2d", content=True, content_dim=4),
        dict(kind="content", content_dim=4),
    ],
    ids=["gauss-iso", "gauss-aniso+content", "learned2d", "learned2d+content", "content"],
)
def test_every_normalizer_trains_and_records_in_every_attention(normalizer, attention):
    torch.manual_seed(0)
    model = SAConvTransformer(_tiny(normalizer=normalizer, **attention))
    images = torch.randn(2, 3, 32, 32)
    with AttentionRecorder(model) as rec:
        logits = model(images)
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    assert len(rec.records) == 2  # one site per layer
    for (record,) in rec.records.values():
        assert record.weights.shape == (2, 3, 16, 16)
        torch.testing.assert_close(record.weights.sum(-1), torch.ones(2, 3, 16), atol=1e-4, rtol=0)
    F.cross_entropy(logits, torch.tensor([1, 2])).backward()
    grads = [p.grad for p in model.layers[0].attention.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


PAPER_TABLE = {  # Cordonnier et al. 2020, Table 1 (millions of parameters)
    "cifar10_resnet18": 11.2,
    "cifar10_gaussian_isotropic": 12.1,
    "cifar10_learned2d_nocontent_9heads": 12.3,
    "cifar10_learned2d_withcontent_9heads": 29.5,
}


@pytest.mark.parametrize("name", sorted(PAPER_TABLE))
def test_paper_size_configs_have_the_paper_parameter_counts(repo_root, name):
    model = build_model(load_config(repo_root / "configs" / "sa_conv" / f"{name}.yaml"))
    millions = sum(p.numel() for p in model.parameters()) / 1e6
    assert millions == pytest.approx(PAPER_TABLE[name], rel=0.10)
    assert millions == pytest.approx(PAPER_TABLE[name], abs=0.1)  # in fact to the printed digit


def test_the_site_labels_name_layers_and_san_blocks():
    from attnkit.models.sa_conv.family import site_label

    assert site_label("layers.2.attention") == "layer 3"
    assert site_label("layer1.0.sam") == "stage 2 block 1"
    assert site_label("head") is None


def test_san_builds_from_a_config_with_its_normalizer():
    cfg = SAConvConfig(arch="san")
    cfg.attention.normalizer = "alpha_entmax"
    model = build_model(type("Cfg", (), {"model": cfg})())
    assert model(images=torch.randn(2, 3, 32, 32)).shape == (2, 10)  # model(**batch.inputs)
    alphas = [m.normalizer for n, m in model.named_modules() if n.endswith("sam")]
    assert alphas and all(a.pre_alpha.numel() > 0 for a in alphas)


def test_a_narrow_resnet18_is_torchvisions_with_every_width_scaled():
    from torchvision.models import resnet18

    from attnkit.models.cnn.model import resnet18_cifar

    reference = resnet18(num_classes=10).state_dict()
    narrow = resnet18_cifar(10, 3, width=16).state_dict()
    assert set(narrow) == set(reference)  # torchvision's module names
    for key, tensor in reference.items():
        if key == "conv1.weight":
            assert narrow[key].shape == (16, 3, 3, 3)  # the CIFAR stem
        elif key == "fc.weight":
            assert narrow[key].shape == (10, 128)
        elif tensor.dim() >= 1 and key != "fc.bias":
            expected = [s // 4 if s >= 64 else s for s in tensor.shape[:2]] + list(tensor.shape[2:])
            assert list(narrow[key].shape) == expected, key


def test_hierarchical_san_shares_each_stages_blocks(repo_root):
    from attnkit.models.sa_conv.san_build import build_san_from_config

    cfg = SAConvConfig(arch="san")
    cfg.san.layout = "tiny"
    plain = build_san_from_config(cfg)
    cfg.share_layers = True
    cfg.san.layout = "san10"  # stages of 2, 1, 2, 4, 1 blocks
    shared = build_san_from_config(cfg)
    stage = shared.layer3  # four blocks, one set of weights
    assert all(b.sam.conv1.weight is stage[0].sam.conv1.weight for b in stage)
    per_block = sum(p.numel() for p in stage[0].parameters())
    unshared = build_san_from_config(
        load_config(repo_root / "configs/sa_conv/cifar10_san_pairwise.yaml").model
    )
    saved = sum(p.numel() for p in unshared.parameters()) - sum(
        p.numel() for p in shared.parameters()
    )
    assert saved >= 3 * per_block  # layer3's three copies (and layer0's, layer2's one each) gone
    assert plain(images=torch.randn(1, 3, 32, 32)).shape == (1, 10)
