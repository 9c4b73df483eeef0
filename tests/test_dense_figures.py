"""The dense notebooks' helpers on values: variant names, nodata painting, data statistics, the
final-metrics and per-bin tables, stage pooling of analysis summaries, one query's attention put
back on the image for every mechanism (against the recorded rows and the model's own masks), and
what the figures draw."""

from __future__ import annotations

import json
import math

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.colors import Normalize, to_rgba

from attnkit.analysis import dense_sparsity as ds
from attnkit.analysis.recorder import AttentionRecorder
from attnkit.config import load_config
from attnkit.data.dense import DenseArrayDataset
from attnkit.models import build_model
from attnkit.viz import dense_attention as datt
from attnkit.viz import dense_figures as dfig
from attnkit.viz.style import use_thesis_style

matplotlib.use("Agg")


@pytest.fixture(autouse=True)
def _style():
    with matplotlib.rc_context():
        use_thesis_style(screen=False)
        yield
    plt.close("all")


def _model(repo_root, name: str, **overrides):
    variant = dfig.parse_variant(name)
    path = repo_root / "configs" / "dense" / f"{variant.config}.yaml"
    cfg = load_config(path, variant.overrides | overrides)
    torch.manual_seed(0)
    return build_model(cfg).eval()


# --------------------------------------------------------------------------- names and styles


def test_variant_names_give_the_config_and_the_overrides():
    v = dfig.parse_variant("swin_segformer_spatial_reduction_sparsemax")
    assert v.config == "synth_swin_segformer"
    assert v.overrides == {
        "model.attention.mechanism": "spatial_reduction",
        "model.attention.normalizer": "sparsemax",
    }
    assert v.label == "Swin + SegFormer (spatial reduction, sparsemax)"
    assert dfig.parse_variant("swin_unet").overrides == {}
    assert dfig.parse_variant("mit_segformer_alpha_entmax").overrides == {
        "model.attention.normalizer": "alpha_entmax"
    }
    assert dfig.parse_variant("swin_segformer_shifted_window").overrides == {
        "model.attention.mechanism": "shifted_window"
    }
    for bad in ("swin", "swin_unet_sparsemx", "vit_segformer", "swin_unet_sparsemax_window"):
        with pytest.raises(ValueError, match="unknown dense variant"):
            dfig.parse_variant(bad)


def test_variants_build_with_their_configs(repo_root):
    for name in ("swin_segformer_window", "mit_segformer_sparsemax", "swin_unet_efficient"):
        variant = dfig.parse_variant(name)
        cfg = load_config(repo_root / "configs/dense" / f"{variant.config}.yaml", variant.overrides)
        assert cfg.model.attention.mechanism == variant.overrides.get(
            "model.attention.mechanism", "native"
        )


def test_styles_colour_architectures_and_hatch_sparse_normalizers():
    mixed = dfig.model_styles(["swin_unet_softmax", "swin_unet_sparsemax", "mit_segformer"])
    assert mixed["swin_unet_softmax"]["color"] == mixed["swin_unet_sparsemax"]["color"]
    assert mixed["swin_unet_softmax"]["color"] != mixed["mit_segformer"]["color"]
    assert [s["hatch"] for s in mixed.values()] == [None, dfig.SPARSE_HATCH, None]
    same = dfig.model_styles(["swin_unet", "swin_unet_sparsemax"])
    assert same["swin_unet_sparsemax"] == {"color": "#DD8452", "hatch": None}


def test_normalizer_pairs_put_softmax_first():
    names = ["swin_unet_sparsemax", "mit_segformer", "swin_unet", "swin_unet_entmax15"]
    assert datt.normalizer_pairs(names) == [
        ("swin_unet", "swin_unet_sparsemax"),
        ("swin_unet", "swin_unet_entmax15"),
    ]


# --------------------------------------------------------------------------- data


def _dataset():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 8, 6, 3), dtype=np.uint8)
    targets = rng.uniform(0, 30, (3, 8, 6)).astype(np.float32)
    targets[0, :2] = np.nan  # 12 of 48 pixels
    targets[2, 0, 0] = np.nan  # 1 of 48
    return DenseArrayDataset(images, targets, (0.5, 0.4, 0.3), (0.2, 0.2, 0.1)), images, targets


def test_dense_arrays_undo_the_normalisation_and_mark_nodata():
    dataset, images, targets = _dataset()
    pixels, heights = dfig.dense_arrays(dataset, [0, 2])
    np.testing.assert_allclose(pixels, images[[0, 2]] / 255.0, atol=1e-6)
    np.testing.assert_array_equal(np.isnan(heights), np.isnan(targets[[0, 2]]))
    np.testing.assert_allclose(heights[~np.isnan(heights)], targets[[0, 2]][~np.isnan(heights)])


def test_data_statistics_count_nodata_per_image_and_keep_valid_heights():
    dataset, images, targets = _dataset()
    stats = dfig.data_statistics(dataset, max_images=None)
    np.testing.assert_allclose(stats["nodata"], [12 / 48, 0, 1 / 48])
    assert stats["heights"].size == 3 * 48 - 13
    np.testing.assert_allclose(stats["heights"].mean(), np.nanmean(targets), rtol=1e-5)
    table = stats["table"]["value"]
    assert table["images"] == "3" and table["size (H x W)"] == "8x6"
    assert table["R mean ± std (0-1)"] == f"{images[..., 0].mean() / 255:.3f} ± " + (
        f"{(images[..., 0] / 255).std():.3f}"
    )
    assert len(dfig.data_statistics(dataset, max_images=1)["nodata"]) == 1


def test_colored_paints_values_with_the_colormap_and_nodata_striped_grey():
    values = np.array([[0.0, 5.0, np.nan, np.nan], [10.0, np.nan, np.nan, 2.5]])
    norm = Normalize(0, 10)
    rgba = dfig.colored(values, norm)
    cmap = plt.get_cmap(dfig.HEIGHT_CMAP)
    for r, c in [(0, 0), (0, 1), (1, 0), (1, 3)]:
        np.testing.assert_allclose(rgba[r, c], cmap(norm(values[r, c])))
    grey, white = to_rgba(dfig.NODATA_COLOR), (1.0, 1.0, 1.0, 1.0)
    for r, c in [(0, 2), (0, 3), (1, 1), (1, 2)]:  # stripes where (r + c) % 4 == 0
        np.testing.assert_allclose(rgba[r, c], white if (r + c) % dfig.STRIPE == 0 else grey)
    assert (rgba[np.isfinite(values)] != grey).any(axis=1).all()


# --------------------------------------------------------------------------- tables


def _records():
    per_bin = [
        {"lo": -math.inf, "hi": 2.0, "count": 0, "mae": math.nan, "rmse": math.nan},
        {"lo": 2.0, "hi": 5.0, "count": 30, "mae": 1.5, "rmse": 2.0, "bias": 0.1},
        {"lo": 5.0, "hi": math.inf, "count": 10, "mae": 4.0, "rmse": 5.0, "bias": -1.0},
    ]
    return [
        {"kind": "train", "step": 1, "loss": 3.0},
        {"kind": "train", "step": 2, "loss": 2.5},
        {"kind": "eval", "step": 2, "mae": 2.2, "rmse": 3.0, "r2": 0.4, "bias": 0.2},
        {"kind": "train", "step": 3, "loss": 2.0},
        {"kind": "eval", "step": 4, "mae": 2.0, "rmse": 2.9, "r2": 0.5, "bias": -0.1,
         "per_bin": per_bin},
    ]  # fmt: skip


def test_final_metrics_take_the_last_evaluation_and_its_bins(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in _records()) + "\n")
    table = dfig.final_metrics_table({"a": run, "b": _records()[:2]})
    row = table.loc["a"]
    assert row["steps"] == 4 and row["final loss"] == 2.0
    assert (row["MAE"], row["RMSE"], row["R²"], row["bias"]) == (2.0, 2.9, 0.5, -0.1)
    assert row["MAE 2–5 m"] == 1.5 and row["MAE ≥ 5 m"] == 4.0 and math.isnan(row["MAE < 2 m"])
    assert table.loc["b", "steps"] == 2 and math.isnan(table.loc["b", "MAE"])


def test_bin_frame_shares_and_labels():
    metrics = {"m": _records()[-1]}
    frame = ds.bin_frame(metrics)
    assert list(frame["bin"]) == ["< 2 m", "2–5 m", "≥ 5 m"]
    np.testing.assert_allclose(frame["share"], [0.0, 0.75, 0.25])
    np.testing.assert_allclose(frame["mae"].iloc[1:], [1.5, 4.0])
    assert ds.bin_label(10, 20) == "10–20 m"


def test_evaluate_dense_streams_the_task_metrics():
    dataset, _, targets = _dataset()

    class Plus(torch.nn.Module):  # predicts the target + 1 everywhere it is known
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))
            self.targets = torch.from_numpy(np.nan_to_num(targets))[:, None]

        def forward(self, images):
            return self.targets[: len(images)] + 1.0 + self.w

    metrics = ds.evaluate_dense(Plus(), dataset, [10.0], max_images=2, batch_size=2)
    assert metrics["num_pixels"] == 2 * 48 - 12
    assert metrics["mae"] == pytest.approx(1.0) and metrics["bias"] == pytest.approx(1.0)
    assert sum(b["count"] for b in metrics["per_bin"]) == metrics["num_pixels"]


# --------------------------------------------------------------------------- stages


def _summary(blocks: dict, sites: dict) -> dict:
    """A summary with ``gini`` ``{layer: (mean, std, count, per_head means)}``."""
    gini = {
        layer: {"mean": m, "std": s, "count": n, "per_head": heads,
                "per_head_std": [0.0] * len(heads), "per_head_count": [n // len(heads)] * len(heads)}
        for layer, (m, s, n, heads) in blocks.items()
    }  # fmt: skip
    return {"gini": gini, "meta": {"sites": sites}}


SITES = {"enc.0": "stage 1 block 1", "enc.1": "stage 1 block 2", "dec.0": "up 1 block 1"}
SITES["other"] = "decoder L1 cross"


def test_stage_frame_pools_blocks_like_one_sample():
    a, b = np.array([0.1, 0.3, 0.2, 0.4]), np.array([0.9, 0.7])
    blocks = {
        "dec.0": (0.5, 0.0, 2, [0.5, 0.5]),
        "enc.0": (a.mean(), a.std(), 4, [0.2, 0.3]),
        "enc.1": (b.mean(), b.std(), 2, [0.9, 0.7]),
        "other": (1.0, 0.0, 9, [1.0]),
    }
    summaries = {"m": _summary(blocks, SITES)}
    frame = ds.stage_frame(summaries, "gini")
    assert list(frame["stage"]) == ["stage 1", "up 1"]  # encoder first, other labels dropped
    both = np.concatenate([a, b])
    assert frame["mean"].iloc[0] == pytest.approx(both.mean())
    assert frame["std"].iloc[0] == pytest.approx(both.std())
    assert frame["count"].iloc[0] == 6
    heads = ds.stage_frame(summaries, "gini", per_head=True)
    stage1 = heads[heads.stage == "stage 1"]
    np.testing.assert_allclose(stage1["mean"], [(0.2 * 2 + 0.9) / 3, (0.3 * 2 + 0.7) / 3])
    table = ds.sparsity_table(summaries, ["gini"], precision=2, labels={"gini": "Gini"})
    assert table.loc[("m", "stage 1"), "Gini"] == f"{both.mean():.2f} ± {both.std():.2f}"
    assert table.loc[("m", "up 1"), "Gini"] == "0.50 ± 0.00"


def test_stage_sparsity_bars_are_the_pooled_means():
    summaries = {
        "swin_unet": _summary({"enc.0": (0.2, 0.1, 4, [0.1, 0.3])}, SITES),
        "swin_unet_sparsemax": _summary({"enc.0": (0.8, 0.1, 4, [0.7, 0.9])}, SITES),
    }
    fig = datt.plot_stage_sparsity(summaries, ["gini"], baseline=summaries)
    bars = [p.get_height() for p in fig.axes[0].patches]
    np.testing.assert_allclose(bars, [0.2, 0.8])
    fig = datt.plot_head_sparsity(summaries, "gini")
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts == ["0.10", "0.30", "0.70", "0.90"]


# --------------------------------------------------------------------------- attention maps


def test_query_token_is_the_token_drawn_at_the_pixel():
    assert datt.query_token((30, 22), (64, 64), (16, 16)) == (7, 5)
    assert datt.query_token((63, 0), (64, 48), (8, 6)) == (7, 0)
    assert datt.query_token((49, 49), (50, 50), (13, 13)) == (12, 12)
    with pytest.raises(ValueError, match="outside"):
        datt.query_token((64, 0), (64, 64), (16, 16))


@pytest.mark.parametrize("pixel", [(30, 22), (0, 0), (63, 61)])
def test_window_maps_are_the_recorded_rows_inside_the_unmasked_window(repo_root, pixel):
    model = _model(repo_root, "swin_unet")
    image = torch.randn(3, 64, 64)
    maps = datt.query_maps_by_site(model, image, pixel)
    assert list(maps) == [f"stage {s} block {b}" for s in (1, 2) for b in (1, 2)] + [
        "up 1 block 1",
        "up 1 block 2",
    ]
    for site, m in maps.items():
        stride = 4 if site.startswith(("stage 1", "up")) else 8
        window = 4 * stride  # 4 x 4 tokens
        assert m.kind == ("shifted window" if site.endswith("block 2") else "window")
        assert m.query == (pixel[0] // stride, pixel[1] // stride)
        # softmax: every key the query may attend to has weight > 0, the masked ones exactly 0
        assert (m.maps[:, ~m.support] == 0).all(), site
        assert (m.maps[:, m.support] > 0).all(), site
        # each token covers stride x stride pixels: the row sums to 1
        torch.testing.assert_close(m.maps.sum((1, 2)) / stride**2, torch.ones(len(m.maps)))
        if m.kind == "window":  # an unshifted window is a full aligned window
            assert int(m.support.sum()) == window**2
    corner = maps["stage 1 block 2"]  # shifted by 2 tokens: the query's side of the roll only
    if pixel == (0, 0):
        assert int(corner.support.sum()) == (2 * 4) ** 2 and corner.support[:8, :8].all()


def test_grid_and_full_maps_put_every_key_back(repo_root):
    image = torch.randn(3, 64, 64)
    grid = datt.query_maps_by_site(_model(repo_root, "swin_segformer_grid"), image, (30, 22))
    m = grid["stage 1 block 1"]
    assert m.kind == "grid" and int(m.support.sum()) == 16 * 4**2  # 4 x 4 keys at stride 4
    rows = torch.nonzero(m.support.any(1)).flatten()
    assert sorted({int(r) // 4 % 4 for r in rows}) == [7 % 4]  # the query token's residue
    torch.testing.assert_close(m.maps.sum((1, 2)) / 16, torch.ones(len(m.maps)))
    model = _model(repo_root, "swin_segformer_full")
    full = datt.query_maps_by_site(model, image, (30, 22))
    with AttentionRecorder(model) as rec:
        model(image[None])
    record = rec.last("encoder.layers.0.blocks.0.attn.attn")  # [1, heads, 256, 256]
    m = full["stage 1 block 1"]
    assert m.kind == "full" and m.support.all()
    row = record.weights[0, :, 7 * 16 + 5].reshape(-1, 16, 16)  # [heads, 16, 16]
    torch.testing.assert_close(m.maps[:, ::4, ::4], row)


def test_spatial_reduction_keys_cover_the_tokens_they_summarise(repo_root):
    model = _model(repo_root, "mit_segformer")
    image = torch.randn(3, 64, 64)
    maps = datt.query_maps_by_site(model, image, (30, 22), ["stage 1 block 1", "stage 2 block 2"])
    with AttentionRecorder(model) as rec:
        model(image[None])
    for site, name, ratio, stride in [
        ("stage 1 block 1", "encoder.stages.0.blocks.0.attn", 8, 4),
        ("stage 2 block 2", "encoder.stages.1.blocks.1.attn", 4, 8),
    ]:
        m, record = maps[site], rec.last(name)
        assert m.kind == f"spatial reduction ×{ratio}" and m.support.all()
        qh, qw = record.meta["query_grid"]
        q = m.query[0] * qw + m.query[1]
        side = ratio * stride  # pixels of one key
        keys = record.weights[0, :, q].reshape(len(m.maps), *record.key_grid)
        torch.testing.assert_close(m.maps[:, ::side, ::side], keys)
        torch.testing.assert_close(m.maps.sum((1, 2)) / side**2, torch.ones(len(m.maps)))
    with pytest.raises(KeyError, match="no attention site"):
        datt.query_maps_by_site(model, image, (0, 0), ["up 1 block 1"])


def test_models_without_attention_matrices_have_no_maps(repo_root):
    model = _model(repo_root, "swin_segformer_efficient")
    assert datt.query_maps_by_site(model, torch.randn(3, 32, 32), (3, 3)) == {}


def test_site_comparison_counts_zeros_over_each_rows_support(repo_root):
    image = torch.randn(3, 64, 64)
    maps = datt.query_maps_by_site(_model(repo_root, "swin_unet"), image, (30, 22))
    sparse = datt.query_maps_by_site(
        _model(repo_root, "swin_unet_sparsemax"), image, (30, 22), ["stage 1 block 1"]
    )["stage 1 block 1"]
    rows = {"swin_unet": maps["stage 1 block 1"], "swin_unet_sparsemax": sparse}
    fig = datt.plot_site_comparison(image.sigmoid(), rows, (30, 22), title="stage 1 block 1")
    corners = [
        t.get_text() for ax in fig.axes for t in ax.texts if t.get_text().startswith("zeros")
    ]
    expected = [float((h[sparse.support] == 0).float().mean()) for h in sparse.maps]
    assert corners == ["zeros 0%"] * 2 + [f"zeros {z:.0%}" for z in expected]


# --------------------------------------------------------------------------- figures


def test_height_samples_and_predictions_show_the_painted_maps():
    rng = np.random.default_rng(1)
    pixels = rng.uniform(0, 1, (2, 8, 8, 3))
    heights = rng.uniform(0, 20, (2, 8, 8))
    heights[0, 0, :4] = np.nan
    fig = dfig.plot_height_samples(pixels, heights, pairs_per_row=2)
    shown = [ax.images[0].get_array() for ax in fig.axes if ax.images and ax.get_visible()]
    norm = dfig._height_norm(heights)
    np.testing.assert_allclose(shown[1], dfig.colored(heights[0], norm))
    np.testing.assert_allclose(shown[2], pixels[1])
    pred = heights + 1.0
    fig = dfig.plot_predictions(pixels, heights, np.nan_to_num(pred), title="model")
    error_panel = fig.axes[3].images[0].get_array()
    error = np.nan_to_num(pred) - heights
    assert np.isnan(error[0, 0, 0])
    limit = float(np.nanpercentile(np.abs(error), 99))
    np.testing.assert_allclose(
        error_panel, dfig.colored(error[0], Normalize(-limit, limit), dfig.ERROR_CMAP)
    )
    assert fig.axes[3].texts[0].get_text() == "MAE 1.00 m"


def test_bin_errors_and_learning_curves_draw_the_values():
    metrics = {"a": _records()[-1], "b_sparsemax": {**_records()[-1], "per_bin": []}}
    fig = dfig.plot_bin_errors(ds.bin_frame(metrics))
    heights = [p.get_height() for p in fig.axes[0].patches]
    np.testing.assert_allclose(heights, [np.nan, 1.5, 4.0])
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels == ["< 2 m\n0% of pixels", "2–5 m\n75% of pixels", "≥ 5 m\n25% of pixels"]
    fig = dfig.plot_learning_curves({"run": _records()})
    loss, mae = fig.axes[0].lines[0], fig.axes[1].lines[0]
    np.testing.assert_allclose(loss.get_xydata(), [[1, 3.0], [2, 2.5], [3, 2.0]])
    np.testing.assert_allclose(mae.get_xydata(), [[2, 2.2], [4, 2.0]])


def test_mechanism_profile_plots_the_points_with_their_exponents():
    points = [{"tokens": n, "ms": n**2 / 1e3, "mib": n / 10, "gflops": n * 1e-4} for n in (64, 256)]
    results = {"full": points, "window": points[:1] * 1}
    exps = {"full": {"ms": 2.0, "mib": 1.0, "gflops": 1.0}}
    fig = dfig.plot_mechanism_profile(results, exps)
    time_axis = fig.axes[0]
    np.testing.assert_allclose(time_axis.lines[0].get_xydata(), [[64, 4.096], [256, 65.536]])
    legend = [t.get_text() for t in time_axis.get_legend().get_texts()]
    assert legend == ["full: 2.00", "window"]
    assert [ax.get_xscale() for ax in fig.axes[:3]] == ["log"] * 3
