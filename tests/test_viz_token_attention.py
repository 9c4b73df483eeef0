"""Token attention of classifiers on the image, attention distance, classification figures, and
layer labels with site names: values, not only shapes."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from attnkit.viz import classification as vclass  # noqa: E402
from attnkit.viz import labels  # noqa: E402
from attnkit.viz import token_attention as ta  # noqa: E402

GRID = (4, 6)  # non-square on purpose
N = 1 + GRID[0] * GRID[1]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def one_hot_weights() -> torch.Tensor:
    """Two heads; query patch (1, 2) looks at patch (3, 0) (head 0) or 0.25 cls + 0.75 (0, 5)."""
    w = torch.zeros(2, N, N)
    q = 1 + 1 * GRID[1] + 2
    w[0, q, 1 + 3 * GRID[1] + 0] = 1.0
    w[1, q, 0] = 0.25
    w[1, q, 1 + 0 * GRID[1] + 5] = 0.75
    w[:, 0, 1] = 1.0  # the class token looks at patch (0, 0)
    return w


def test_query_index_counts_the_class_token_first():
    assert ta.query_index("cls", GRID, 1) == 0
    assert ta.query_index((1, 2), GRID, 1) == 1 + 6 + 2
    assert ta.query_index((1, 2), GRID, 0) == 8
    with pytest.raises(ValueError, match="outside"):
        ta.query_index((4, 0), GRID, 1)
    with pytest.raises(ValueError, match="cls"):
        ta.query_index("cls", GRID, 0)


def test_query_maps_split_patch_keys_from_the_class_token():
    maps, prefix = ta.query_maps(one_hot_weights(), GRID, (1, 2), prefix_tokens=1)
    assert maps.shape == (2, *GRID)
    assert maps[0, 3, 0] == 1 and maps[0].sum() == 1
    assert maps[1, 0, 5] == 0.75 and maps[1].sum() == 0.75
    assert prefix.tolist() == [0.0, 0.25]
    cls_maps, _ = ta.query_maps(one_hot_weights(), GRID, "cls")
    assert cls_maps[:, 0, 0].tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="tokens"):
        ta.query_maps(torch.zeros(2, N - 1, N - 1), GRID, "cls")


def test_nearest_upsampling_keeps_all_mass_in_the_right_cell():
    maps, _ = ta.query_maps(one_hot_weights(), GRID, (1, 2))
    up = ta.upsample_grid_map(maps[0], (GRID[0] * 8, GRID[1] * 8), mode="nearest")
    cell = up[3 * 8 : 4 * 8, 0:8]
    assert up.sum() == pytest.approx(64.0) and cell.sum() == pytest.approx(up.sum())
    assert np.all(cell == 1.0)
    bilinear = ta.upsample_grid_map(maps[0], (GRID[0] * 8, GRID[1] * 8), mode="bilinear")
    r, c = np.unravel_index(bilinear.argmax(), bilinear.shape)
    assert 3 * 8 <= r < 4 * 8 and 0 <= c < 8
    with pytest.raises(ValueError, match="mode"):
        ta.upsample_grid_map(maps[0], (8, 8), mode="cubic")


def test_query_figure_marks_the_query_and_colours_only_the_attended_cell():
    image = np.full((32, 48, 3), 128, dtype=np.uint8)  # a flat grey image, 8x8 pixel patches
    fig = ta.plot_query_attention(image, one_hot_weights(), GRID, (1, 2), prefix_tokens=1)
    maps = [ax for ax in fig.axes if ax.images][1:3]  # image, head 1, head 2 (then colourbar)
    assert [ax.get_title() for ax in maps] == ["head 0", "head 1"]
    query_ax = fig.axes[0]
    (box,) = query_ax.patches
    cell = 8 * math.ceil(ta.DISPLAY_SIDE / 48)  # enlarged until the longer side is >= 128 px
    assert box.get_xy() == (2 * cell, 1 * cell) and box.get_width() == cell
    rgb = np.asarray(maps[0].images[0].get_array())  # [H', W', 3] blended over grey
    grey = 0.85 * 128 / 255
    coloured = np.any(np.abs(rgb - grey) > 1e-3, axis=-1)  # [H', W']
    expected = np.zeros(coloured.shape, dtype=bool)
    expected[3 * cell : 4 * cell, 0:cell] = True  # patch (3, 0)
    assert np.array_equal(coloured, expected)
    texts = [t.get_text() for t in maps[1].texts]
    assert texts == ["cls 0.25"]


def test_query_figure_of_several_blocks_has_a_row_per_block():
    w = one_hot_weights()
    fig = ta.plot_query_attention_blocks(
        np.zeros((32, 48, 3)), {"block 1": w, "block 2": w}, GRID, "cls", heads=[1]
    )
    rows = [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()]
    assert rows == ["block 1", "block 2", "attention weight"]  # then the colourbar
    assert len([ax for ax in fig.axes if ax.images]) == 4  # (image + one head) x 2 blocks


def test_query_figure_draws_into_given_axes_without_a_colourbar():
    fig, axes = plt.subplots(1, 3)
    out = ta.plot_query_attention(
        np.zeros((32, 48, 3)), one_hot_weights(), GRID, (1, 2), heads=[1], axes=axes, vmax=0.5
    )
    assert out is fig and len(fig.axes) == 3
    assert [len(ax.images) for ax in axes] == [1, 1, 0]
    assert [t.get_text() for t in axes[1].texts] == ["cls 0.25"]


def summary(means, per_head):
    sites = {f"blocks.{i}.attn": f"block {i + 1}" for i in range(len(means))}
    distance = {
        f"blocks.{i}.attn": {"mean": m, "std": 1.0, "per_head": h}
        for i, (m, h) in enumerate(zip(means, per_head))
    }
    return {"distance": distance, "meta": {"sites": sites}}


def test_distance_plot_draws_the_summary_means_and_heads():
    # 11 blocks: string order would put block 10 after block 1
    means = [float(v) for v in np.linspace(4.0, 14.0, 11)]
    heads = [[m - 1.0, m + 1.0] for m in means]
    soft = summary(means, heads)
    sparse = summary([m / 2 for m in means], [[m / 2, m / 2] for m in means])
    fig = ta.plot_mean_attention_distance({"softmax": soft, "sparsemax": sparse})
    ax = fig.axes[0]
    lines = [line for line in ax.lines if line.get_label() in ("softmax", "sparsemax")]
    assert np.allclose(lines[0].get_ydata(), means)
    assert np.allclose(lines[1].get_ydata(), [m / 2 for m in means])
    assert [t.get_text() for t in ax.get_xticklabels()] == [f"block {i}" for i in range(1, 12)]
    dots = np.asarray(ax.collections[0].get_offsets())  # block 1's heads of softmax
    assert sorted(dots[:, 1].tolist()) == heads[0]
    assert ax.get_ylabel() == "mean attention distance (px)"


def test_block_ticks_are_numbered_where_they_all_name_blocks():
    fig, (a, b) = plt.subplots(1, 2)
    a.set_xticks([0, 1, 2], ["block 1", "block 2", "block 10"])
    b.set_xticks([0, 1], ["layer 1", "block 2"])
    ta.number_block_ticks(fig)
    assert [t.get_text() for t in a.get_xticklabels()] == ["1", "2", "10"]
    assert a.get_xlabel() == "block"
    assert [t.get_text() for t in b.get_xticklabels()] == ["layer 1", "block 2"]
    assert b.get_xlabel() == ""


def test_layer_labels_use_sites_and_keep_blocks_apart():
    detr = [
        "transformer.decoder.layers.2.multihead_attn",
        "transformer.decoder.layers.0.self_attn",
        "transformer.encoder.layers.1.self_attn",
    ]
    assert [labels.layer_label(n) for n in detr] == ["layer 3", "layer 1 self", "enc layer 2"]
    assert labels.layer_labels(detr) == {
        detr[2]: "enc layer 2",
        detr[1]: "layer 1 self",
        detr[0]: "layer 3",
    }
    swin = ["layers.0.blocks.1.attn", "layers.0.blocks.0.attn", "layers.1.blocks.0.attn"]
    assert labels.layer_label(swin[0]) == "layer 1 block 2"  # not "layer 1"
    assert len({labels.layer_label(n) for n in swin}) == 3
    assert labels.sort_layers(swin) == [swin[1], swin[0], swin[2]]
    sites = {swin[1]: "stage 1 block 1", swin[0]: "stage 1 block 2", swin[2]: "stage 2 block 1"}
    assert labels.layer_label(swin[0], sites) == "stage 1 block 2"
    assert list(labels.layer_labels(swin, sites).values()) == list(sites.values())
    vit = [f"blocks.{i}.attn" for i in (10, 2, 0)]
    assert labels.sort_layers(vit) == ["blocks.0.attn", "blocks.2.attn", "blocks.10.attn"]
    assert labels.layer_label("blocks.2.attn") == "block 3"
    assert labels.layer_label("backbone.attn", {"other": "x"}) == "backbone.attn"


def test_confusion_matrix_is_normalised_per_true_class():
    confusion = [[3, 1, 0], [0, 0, 0], [2, 2, 4]]
    frac = vclass.normalized_confusion(confusion)
    assert np.allclose(frac[0], [0.75, 0.25, 0]) and np.allclose(frac[2], [0.25, 0.25, 0.5])
    assert np.isnan(frac[1]).all()  # a class without samples
    fig = vclass.plot_confusion_matrix(confusion, ["a", "b", "c"])
    ax = fig.axes[0]
    assert np.allclose(np.ma.filled(ax.images[0].get_array(), np.nan)[2], frac[2])
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b", "c"]
    assert "75" in [t.get_text() for t in ax.texts]


def test_class_samples_counts_and_accuracy_curves():
    labels_ = np.array([0, 1, 1, 2, 0, 1])
    images = np.stack([np.full((8, 8, 3), 40 * k, dtype=np.uint8) for k in range(6)])
    assert vclass.class_counts(labels_, 4).tolist() == [2, 3, 1, 0]
    fig = vclass.plot_class_samples(images, labels_, ["x", "y", "z"], per_class=2)
    assert [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()] == ["x", "y", "z"]
    shown = [int(ax.images[0].get_array()[0, 0, 0]) for ax in fig.axes if ax.images]
    assert shown == [0, 160, 40, 80, 120]  # class 0: images 0, 4; class 1: 1, 2; class 2: 3
    records = [  # a cosine schedule: lr falls at every step, which is no "lr drop"
        {"kind": "train", "step": 1, "loss": 2.0, "accuracy": 0.1, "lr/default": 1e-3},
        {"kind": "train", "step": 2, "loss": 1.0, "accuracy": 0.3, "lr/default": 5e-4},
        {"kind": "eval", "step": 1, "top1": 0.2, "top5": 0.6, "confusion": [[1]]},
        {"kind": "eval", "step": 2, "top1": 0.4, "top5": 0.9, "confusion": [[2]]},
    ]
    assert vclass.last_eval(records)["confusion"] == [[2]]
    fig = vclass.plot_accuracy_curves({"softmax": records})
    ax = fig.axes[0]
    assert np.allclose(ax.lines[0].get_ydata(), [0.2, 0.4])
    assert ax.get_ylabel() == "val accuracy (softmax)"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["top-1", "top-5"]
    fig = vclass.plot_training_curves({"softmax": records})
    assert [a.get_title() for a in fig.axes] == ["train loss", "train accuracy (batches)"]
    assert np.allclose(fig.axes[1].lines[0].get_ydata(), [0.1, 0.3])
    assert len(fig.axes[0].lines) == 1  # no dashed lr-drop line
    marked = vclass.plot_training_curves({"softmax": records}, lr_drops=True)
    assert len(marked.axes[0].lines) == 2
    with pytest.raises(ValueError, match="no eval"):
        vclass.last_eval(records[:1])
