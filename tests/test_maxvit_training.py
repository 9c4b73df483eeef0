"""MaxViT with every normalizer in block and grid attention: it trains, records and is analysed."""

from __future__ import annotations

import pytest
import torch

from attnkit.analysis import AttentionRecorder
from attnkit.analysis.analyze import AttentionAnalysis
from attnkit.config import load_config
from attnkit.errors import ConfigError
from attnkit.models import build_model
from attnkit.models.maxvit.config import maxvit_variant
from attnkit.models.maxvit.model import MaxViT

NORMALIZERS = ["softmax", "sparsemax", "entmax15", "alpha_entmax", "tvmax"]


def _batch(n: int = 8, size=(32, 32), seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, *size, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize("normalizer", NORMALIZERS)
def test_every_normalizer_trains_in_block_and_grid(normalizer):
    torch.manual_seed(0)
    attention = {"block": {"normalizer": normalizer}, "grid": {"normalizer": normalizer}}
    model = MaxViT(maxvit_variant("synth", attention=attention))
    images, labels = _batch()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(6):
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        opt.zero_grad()
        loss.backward()
        losses.append(loss.item())
        opt.step()
    assert losses[-1] < losses[0] - 0.05, losses
    for name, p in model.named_parameters():
        if name.endswith(("qkv.weight", "relative_bias.table", "pre_alpha")):
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_block_and_grid_normalizers_are_chosen_separately():
    cfg = maxvit_variant("synth", attention={"block": {"normalizer": "sparsemax"}})
    model = MaxViT(cfg)
    block = model.stages[0].blocks[0].attn_block.attn.normalizer
    grid = model.stages[0].blocks[0].attn_grid.attn.normalizer
    assert (block.name, grid.name) == ("sparsemax", "softmax")


def test_recorder_gets_window_and_grid_layouts_on_padded_maps(repo_root):
    cfg = load_config(repo_root / "configs/maxvit/synth_sparsemax.yaml")
    model = build_model(cfg).eval()
    images, _ = _batch(2, size=(40, 24))  # stage maps 10x6, 5x3, 3x2: all padded
    with torch.no_grad(), AttentionRecorder(model) as rec:
        model(images)
    names = rec.names
    assert len(names) == 2 * sum(cfg.model.depths)
    first = rec.last("stages.0.blocks.0.attn_block.attn")
    layout = first.meta["layout"]
    assert (layout.kind, layout.grid, layout.part) == ("windows", (12, 8), (4, 4))
    assert first.weights.shape == (2 * 3 * 2, 2, 16, 16)  # 6 windows per image, 2 heads
    assert first.site == "stage 1 block 1 block"
    grid = rec.last("stages.0.blocks.0.attn_grid.attn")
    assert grid.meta["layout"].kind == "dilated" and grid.site == "stage 1 block 1 grid"
    pad = first.key_padding_mask  # [N, 16]
    w = first.weights
    assert torch.all(w.masked_select(pad[:, None, None, :]) == 0)  # no weight on padded keys
    rows = w.sum(-1)  # [N, H, Q]
    query_pad = pad[:, None, :].expand(-1, 2, -1)  # [N, H, Q]
    assert torch.all(rows[query_pad] == 0)  # padded query rows are empty
    real = rows[~query_pad]
    assert torch.allclose(real, torch.ones_like(real), atol=1e-5)


def test_analysis_scores_block_and_grid_sites_without_the_padding(repo_root):
    cfg = load_config(repo_root / "configs/maxvit/synth_sparsemax.yaml")
    model = build_model(cfg).eval()
    images, labels = _batch(2, size=(40, 24))

    class Batch:
        inputs = {"images": images}

        def __len__(self):
            return 2

    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "qkv"):
                m.qkv.weight.mul_(10)  # sharper scores: sparsemax leaves zeros at random init
    analysis = AttentionAnalysis(model)
    analysis.update(Batch())
    with (
        torch.no_grad(),
        AttentionRecorder(model, include=["stages.0.blocks.0.attn_block.attn"]) as rec,
    ):
        model(images)
    record = rec.last("stages.0.blocks.0.attn_block.attn")
    pad = record.key_padding_mask  # [N, K]
    w = record.weights  # [N, H, Q, K]
    real_rows = ~pad[:, None, :].expand(w.shape[:3])  # [N, H, Q]: queries are the keys
    zeros_per_row = ((w == 0) & ~pad[:, None, None, :]).sum(-1) / (~pad).sum(-1)[:, None, None]
    expected = zeros_per_row[real_rows].mean().item()
    summary = analysis.summary()
    sites = set(analysis.sites.values())
    assert "stage 3 block 1 grid" in sites and "stage 1 block 1 block" in sites
    gini = summary["gini"]["stages.2.blocks.0.attn_grid.attn"]
    assert 0.0 <= gini["mean"] <= 1.0
    zeros = summary["zeros_ratio"]["stages.0.blocks.0.attn_block.attn"]["mean"]
    assert 0.0 < zeros < 1.0
    assert zeros == pytest.approx(expected, rel=1e-5)  # padded keys and queries left out


def test_config_errors_name_the_key(repo_root, tmp_path):
    path = repo_root / "configs/maxvit/synth_softmax.yaml"
    with pytest.raises(ConfigError, match="model.attention.blok"):
        load_config(path, ["model.attention.blok.normalizer=sparsemax"])
    with pytest.raises(ConfigError, match="embed_dims"):
        load_config(path, ["model.depths=[1,1]"])
    with pytest.raises(ConfigError, match="head_dim"):
        load_config(path, ["model.head_dim=24"])


def test_attention_distance_uses_the_real_token_size_on_padded_maps(repo_root):
    """The last stage's 2x2 map is padded to the 4x4 grid: each real token covers 16x16 pixels
    of a 32x32 image, not 8x8."""
    from attnkit.analysis.analyze import _distance

    model = build_model(load_config(repo_root / "configs/maxvit/synth_softmax.yaml")).eval()
    site = "stages.2.blocks.0.attn_block.attn"
    with torch.no_grad(), AttentionRecorder(model, include=[site]) as rec:
        model(_batch(1)[0])
    record = rec.last(site)
    assert record.meta["layout"].real_grid == (2, 2) and record.meta["layout"].grid == (4, 4)
    w = record.weights[0, :, :, :]  # [H, 16, 16], one window: the whole padded map
    pos = torch.tensor([(r, c) for r in range(4) for c in range(4)], dtype=torch.float64) * 16
    dist = torch.cdist(pos, pos)  # [16, 16] pixels
    expected = (w.double() * dist).sum(-1)  # [H, Q]: rows sum to 1 on real queries
    got = _distance(record.weights, record, (32, 32))[0]
    real = [0, 1, 4, 5]  # the 2x2 real tokens of the 4x4 grid
    assert torch.allclose(got[:, real].double(), expected[:, real], atol=1e-4)
    assert got[:, real].max() <= 16 * 2**0.5 + 1e-4  # never farther than the 2x2 map's diagonal
