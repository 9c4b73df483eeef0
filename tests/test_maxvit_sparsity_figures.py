"""MaxViT's block-against-grid statistics (pooling over a stage's blocks equals the statistics of
the pooled values), site labels and their model order, stage grids against the model's feature
maps (non-square, not a multiple of the stride), the recorded query maps against the block and
grid regions, and the figures of the maxvit notebooks."""

from __future__ import annotations

import math

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.collections import PathCollection
from PIL import Image, ImageStat

from attnkit.analysis import maxvit_sparsity as ms
from attnkit.analysis.metrics import RunningStats, nan_summary
from attnkit.config import load_config
from attnkit.models import build_model
from attnkit.viz import maxvit_figures as mvf
from attnkit.viz import receptive_fields as rf
from attnkit.viz.style import save_figure, use_thesis_style

matplotlib.use("Agg")

LAYERS = {  # module name -> site label, heads
    "stages.0.blocks.0.attn_block.attn": ("stage 1 block 1 block", 2),
    "stages.0.blocks.0.attn_grid.attn": ("stage 1 block 1 grid", 2),
    "stages.1.blocks.0.attn_block.attn": ("stage 2 block 1 block", 4),
    "stages.1.blocks.0.attn_grid.attn": ("stage 2 block 1 grid", 4),
    "stages.1.blocks.1.attn_block.attn": ("stage 2 block 2 block", 4),
    "stages.1.blocks.1.attn_grid.attn": ("stage 2 block 2 grid", 4),
}


@pytest.fixture(autouse=True)
def _style():
    with matplotlib.rc_context():
        use_thesis_style(screen=False)
        yield
    plt.close("all")


def _values(seed: int, heads: int, n: int, sparse: bool) -> torch.Tensor:
    """Per-map values ``[N, heads, Q]`` in [0, 1] (different counts per site)."""
    g = torch.Generator().manual_seed(seed)
    scale = 0.8 if sparse else 0.1
    return (torch.rand(n, heads, 5, generator=g) * scale).clamp(0, 1)


def _summaries(models=("softmax", "sparsemax")):
    """``{model: summary}`` built the way ``attnkit analyze`` builds them, and the raw values."""
    out, raw = {}, {}
    for m, model in enumerate(models):
        stats = RunningStats()
        for i, (name, (_, heads)) in enumerate(LAYERS.items()):
            values = _values(10 * m + i, heads, 3 + i, model == "sparsemax")
            stats.update(("gini", name), values, keep_dim=1)
            raw[(model, name)] = values
        summary = {"gini": {key[1]: stats.result(key) for key in stats.keys()}}  # noqa: SIM118
        summary["meta"] = {"sites": {name: label for name, (label, _) in LAYERS.items()}}
        out[model] = summary
    return out, raw


def test_parse_site_and_with_sites_order_and_filter():
    assert ms.parse_site("stage 2 block 1 grid") == (2, 1, "grid")
    assert ms.parse_site("stage 10 block 3 block") == (10, 3, "block")
    assert ms.parse_site("layer 3") is None and ms.parse_site("stage 2 block 1 cross") is None
    names = [  # alpha_history's order: blocks.0 of stage 3 before blocks.1 of stage 2
        "stages.0.blocks.0.attn_grid.attn",
        "stages.2.blocks.0.attn_block.attn",
        "stages.1.blocks.1.attn_block.attn",
        "stages.0.blocks.0.attn_block.attn",
        "head.fc",
    ]
    frame = pd.DataFrame({"layer": names, "head": [0, 1, 2, 3, 4]})
    got = ms.with_sites(frame)
    assert got["site"].tolist() == [
        "stage 1 block 1 block",
        "stage 1 block 1 grid",
        "stage 2 block 2 block",
        "stage 3 block 1 block",
    ]
    assert got["head"].tolist() == [3, 0, 2, 1]  # rows move with their site
    assert got[["stage", "block"]].dtypes.tolist() == [np.int64, np.int64]
    renamed = ms.with_sites(frame.iloc[:1], {names[0]: "stage 4 block 2 grid"})
    assert renamed[["stage", "block", "kind"]].iloc[0].tolist() == [4, 2, "grid"]


def test_stage_pooling_equals_the_statistics_of_the_pooled_values():
    summaries, raw = _summaries()
    sites = ms.site_frame(summaries, "gini")
    assert len(sites) == 2 * len(LAYERS) and set(sites["kind"]) == {"block", "grid"}
    stages = ms.stage_frame(summaries, "gini")
    assert stages[["model", "stage", "kind"]].values.tolist()[:4] == [
        ["softmax", 1, "block"],
        ["softmax", 1, "grid"],
        ["softmax", 2, "block"],
        ["softmax", 2, "grid"],
    ]
    heads = ms.stage_frame(summaries, "gini", per_head=True)
    for model in ("softmax", "sparsemax"):
        names = ["stages.1.blocks.0.attn_grid.attn", "stages.1.blocks.1.attn_grid.attn"]
        pooled = torch.cat([raw[(model, n)] for n in names])  # both blocks of stage 2
        want = nan_summary(pooled)
        row = stages[(stages.model == model) & (stages.stage == 2) & (stages.kind == "grid")]
        assert row["mean"].item() == pytest.approx(want["mean"], abs=1e-12)
        assert row["std"].item() == pytest.approx(want["std"], abs=1e-12)
        assert row["count"].item() == want["count"]
        per_head = nan_summary(pooled, keep_dim=1)
        sel = heads[(heads.model == model) & (heads.stage == 2) & (heads.kind == "grid")]
        assert sel["head"].tolist() == [0, 1, 2, 3]
        np.testing.assert_allclose(sel["mean"], per_head["per_head"], atol=1e-12)
        np.testing.assert_allclose(sel["std"], per_head["per_head_std"], atol=1e-12)


def test_pool_stats_skips_missing_rows():
    frame = pd.DataFrame(
        {"g": ["a", "a", "a"], "mean": [1.0, math.nan, 3.0], "std": [0.0, 1.0, 0.0]}
    ).assign(count=[1, 5, 1])
    out = ms.pool_stats(frame, ["g"])
    assert out["mean"].item() == 2.0 and out["std"].item() == 1.0 and out["count"].item() == 2


def test_block_vs_grid_table_cells():
    summaries, _ = _summaries()
    table = ms.block_vs_grid_table(summaries, ["gini"], precision=2, labels={"gini": "Gini"})
    assert table.index.tolist() == [
        ("softmax", "stage 1"),
        ("softmax", "stage 2"),
        ("sparsemax", "stage 1"),
        ("sparsemax", "stage 2"),
    ]
    assert table.columns.tolist() == [("Gini", "block"), ("Gini", "grid")]
    stages = ms.stage_frame(summaries, "gini")
    first = stages.iloc[0]
    assert table.iloc[0, 0] == f"{first['mean']:.2f} ± {first['std']:.2f}"


@pytest.fixture(scope="module")
def synth(repo_root):
    path = repo_root / "configs" / "maxvit" / "synth_sparsemax.yaml"
    cfg = load_config(path, {"data.num_train": 8, "data.num_val": 4})
    torch.manual_seed(0)
    return build_model(cfg).eval(), cfg


@pytest.mark.parametrize("image_hw", [(32, 32), (30, 22)])
def test_stages_of_matches_the_feature_maps(synth, image_hw):
    model, _ = synth
    with torch.no_grad():
        maps = model.forward_features(torch.randn(1, 3, *image_hw))
    stages = mvf.stages_of(model, image_hw, (image_hw[0] - 1, 5))
    assert [s.token_hw for s in stages] == [tuple(m.shape[-2:]) for m in maps[1:]]
    assert [s.module for s in stages] == ["stages.0", "stages.1", "stages.2"]
    assert [s.depth for s in stages] == [1, 2, 1]
    for s in stages:
        assert s.query == ((image_hw[0] - 1) // s.reduction, 5 // s.reduction)
        assert all(0 <= q < n for q, n in zip(s.query, s.token_hw))
    with pytest.raises(ValueError, match="outside"):
        mvf.stages_of(model, image_hw, (image_hw[0], 0))


def test_sample_images_and_query_maps_lie_in_their_regions(synth):
    model, cfg = synth
    images, pixels, labels = mvf.sample_images(cfg, 2)
    assert images.shape == (2, 3, 32, 32) and pixels.shape == (2, 32, 32, 3)
    assert labels.shape == (2,) and float(pixels.min()) >= 0 and float(pixels.max()) <= 1
    query = (12, 20)
    maps = mvf.query_maps_by_site(model, images[0], query)
    assert list(maps) == [
        "stage 1 block 1 block",
        "stage 1 block 1 grid",
        "stage 2 block 1 block",
        "stage 2 block 1 grid",
        "stage 2 block 2 block",
        "stage 2 block 2 grid",
        "stage 3 block 1 block",
        "stage 3 block 1 grid",
    ]
    stages = mvf.stages_of(model, (32, 32), query)
    for site, m in maps.items():
        stage = stages[int(site.split()[1]) - 1]
        assert m.shape == (2 ** (stage.index + 1), 32, 32)  # heads of 16 channels
        kind = site.split()[-1]
        region = (
            rf.block_attention_region(stage.token_hw, cfg.model.window, stage.query)
            if kind == "block"
            else rf.grid_attention_region(stage.token_hw, cfg.model.grid, stage.query)
        )
        outside = ~rf.upsample_to_image(region, (32, 32))
        assert float(m[:, outside].abs().sum()) == 0.0, site
        per_token = stage.reduction**2  # pixels of one token: the weights sum to 1 per head
        np.testing.assert_allclose(m.sum(dim=(1, 2)) / per_token, 1.0, atol=1e-5)
    chosen = mvf.query_maps_by_site(model, images[0], query, ["stage 3 block 1 grid"])
    assert list(chosen) == ["stage 3 block 1 grid"]
    torch.testing.assert_close(chosen["stage 3 block 1 grid"], maps["stage 3 block 1 grid"])
    with pytest.raises(KeyError, match="stage 9"):
        mvf.query_maps_by_site(model, images[0], query, ["stage 9 block 1 grid"])


def _not_blank(fig, tmp_path, name) -> None:
    png = [p for p in save_figure(fig, name, tmp_path) if p.suffix == ".png"][0]
    with Image.open(png) as img:
        assert max(ImageStat.Stat(img.convert("L")).stddev) > 5


def test_block_vs_grid_figures(tmp_path):
    summaries, _ = _summaries()
    baseline, _ = _summaries()
    fig = mvf.plot_block_vs_grid(summaries, ["gini"], baseline)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["stage 1", "stage 2"]
    assert len(ax.patches) == 2 * 2 * 2  # models x kinds x stages
    hatched = [p for p in ax.patches if p.get_hatch()]
    assert len(hatched) == 4  # grid attention
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert {"softmax", "sparsemax", "block attention", "grid attention", "random init"} <= set(
        labels
    )
    _not_blank(fig, tmp_path, "bars")
    fig = mvf.plot_head_block_vs_grid(summaries, "gini", baseline)
    panels = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in panels] == ["stage 1", "stage 2"]
    assert [ax.images[0].get_array().shape for ax in panels] == [(8, 2), (8, 4)]
    _not_blank(fig, tmp_path, "heads")


def test_alpha_block_vs_grid_figure(tmp_path):
    rows = [
        (name, h, 1.5 + 0.1 * h * (1 if "grid" in name else -1))
        for name, (_, heads) in LAYERS.items()
        for h in range(heads)
    ]
    final = ms.with_sites(pd.DataFrame(rows, columns=["layer", "head", "alpha"]))
    fig = mvf.plot_alpha_block_vs_grid(final)
    ax = fig.axes[0]
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks == ["stage 1\nblock 1", "stage 2\nblock 1", "stage 2\nblock 2"]
    dots = [c for c in ax.collections if isinstance(c, PathCollection)]
    points = sum(len(c.get_offsets()) for c in dots)
    assert points == len(final)
    _not_blank(fig, tmp_path, "alpha")
    with pytest.raises(ValueError, match="no alphas"):
        mvf.plot_alpha_block_vs_grid(final.iloc[:0])


def test_site_support_is_the_query_window_or_grid_partition_on_the_image():
    from attnkit.models.maxvit.config import maxvit_variant
    from attnkit.models.maxvit.model import MaxViT
    from attnkit.viz.maxvit_figures import site_support, stages_of

    model = MaxViT(maxvit_variant("synth"))
    stages = stages_of(model, (32, 32), (12, 20))  # stage 1: 8x8 tokens of 4 px, query (3, 5)
    block = site_support("stage 1 block 1 block", stages, [4, 4], [4, 4], (32, 32))
    assert block.sum() == 16 * 16 and block[0:16, 16:32].all()  # window rows 0-3, cols 4-7
    grid = site_support("stage 1 block 1 grid", stages, [4, 4], [4, 4], (32, 32))
    rows = torch.arange(32) // 4 % 2 == 1  # token rows 1, 3, 5, 7 (stride 2, residue 1)
    cols = torch.arange(32) // 4 % 2 == 1  # token cols with residue 5 % 2 = 1
    assert torch.equal(grid, rows[:, None] & cols[None, :])
