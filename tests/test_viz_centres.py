"""Gaussian attention centres (Cordonnier et al. 2020): heads read off a model, mass ellipses
against hand-computed geometry, the centre history of a training log, the relative average
attention against a direct loop, and the figures' panels, artists and legends."""

from __future__ import annotations

import json
import math

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.image import AxesImage
from matplotlib.patches import Ellipse
from torch import nn

from attnkit.models.sa_conv.gaussian import GaussianSelfAttention
from attnkit.viz import centres
from attnkit.viz.style import use_thesis_style

matplotlib.use("Agg")


@pytest.fixture(autouse=True)
def _style():
    with matplotlib.rc_context():
        use_thesis_style(screen=False)
        yield
    plt.close("all")


class _Block(nn.Module):
    def __init__(self, heads: int, kind: str):
        super().__init__()
        self.attention = GaussianSelfAttention(8, heads, kind=kind)


class _Model(nn.Module):
    def __init__(self, heads: int = 3):
        super().__init__()
        self.layers = nn.ModuleList([_Block(heads, "isotropic"), _Block(heads, "anisotropic")])


def _visible_axes(fig):
    return [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]


def _legend_labels(fig) -> list[str]:
    return [t.get_text() for legend in fig.legends for t in legend.get_texts()]


# ------------------------------------------------------------------ heads of a model


def test_gaussian_heads_reads_the_parameters_of_real_attention_modules():
    torch.manual_seed(0)
    model = _Model(heads=3)
    iso, aniso = (block.attention.positional for block in model.layers)
    with torch.no_grad():
        iso.centre.copy_(torch.tensor([[1.0, -2.0], [0.0, 0.0], [-1.5, 0.5]]))
        iso.log_alpha.copy_(torch.log(torch.tensor([0.5, 1.0, 2.0])))
        aniso.spread.copy_(torch.tensor([[2.0, 0.0], [1.0, 1.0]]).expand(3, 2, 2))
    model.layers[1].attention.site = "block 2 gaussian"
    heads = centres.gaussian_heads(model)
    assert [h["name"] for h in heads] == [
        "layers.0.attention.positional",
        "layers.1.attention.positional",
    ]
    assert [h["layer"] for h in heads] == ["layer 1", "block 2 gaussian"]  # site wins
    np.testing.assert_allclose(heads[0]["centre"], [[1, -2], [0, 0], [-1.5, 0.5]], atol=1e-6)
    # isotropic: 2 alpha I
    np.testing.assert_allclose(heads[0]["precision"][:, 0, 0], [1.0, 2.0, 4.0], rtol=1e-6)
    np.testing.assert_allclose(heads[0]["precision"][:, 0, 1], 0.0, atol=1e-12)
    # anisotropic: S S^T with S = [[2, 0], [1, 1]] -> [[4, 2], [2, 2]]
    np.testing.assert_allclose(heads[1]["precision"][2], [[4, 2], [2, 2]], rtol=1e-6)
    np.testing.assert_allclose(heads[1]["centre"], aniso.centre.detach().numpy(), rtol=1e-6)
    assert heads[1]["centre"].shape == (3, 2) and heads[1]["precision"].shape == (3, 2, 2)
    # a bare attention module: no layer number in the name, so its rank
    alone = centres.gaussian_heads(GaussianSelfAttention(8, 4))
    assert [(h["name"], h["layer"]) for h in alone] == [("positional", "layer 1")]


# ------------------------------------------------------------------ mass ellipses


def test_mass_radius_is_the_chi2_quantile_with_two_degrees_of_freedom():
    assert centres.mass_radius2(0.5) == pytest.approx(1.386294, abs=1e-6)
    assert centres.mass_radius2(0.9) == pytest.approx(4.605170, abs=1e-6)
    rng = np.random.default_rng(0)
    precision = np.array([[2.0, 0.6], [0.6, 0.5]])
    d = rng.multivariate_normal([0, 0], np.linalg.inv(precision), size=40_000)
    inside = np.einsum("ni,ij,nj->n", d, precision, d) <= centres.mass_radius2(0.9)
    assert inside.mean() == pytest.approx(0.9, abs=0.01)
    with pytest.raises(ValueError):
        centres.mass_radius2(1.0)


def test_isotropic_ellipse_is_a_circle_of_radius_sqrt_r2_over_2_alpha():
    alpha = 0.8
    w, h, _ = centres.mass_ellipse([1.0, 2.0], 2 * alpha * np.eye(2), 0.5)
    radius = math.sqrt(1.386294 / (2 * alpha))
    assert w == pytest.approx(2 * radius, rel=1e-5) and h == pytest.approx(2 * radius, rel=1e-5)


def test_diagonal_precision_gives_the_semi_axes_along_rows_and_columns():
    r2 = centres.mass_radius2(0.9)
    # precise along rows (4), loose along columns (1): the major axis is the column (x) axis
    w, h, angle = centres.mass_ellipse([0, 0], np.diag([4.0, 1.0]), 0.9)
    assert (w, h, angle) == pytest.approx((2 * math.sqrt(r2), 2 * math.sqrt(r2 / 4), 0.0))
    # loose along rows: the major axis is vertical (the row axis)
    w, h, angle = centres.mass_ellipse([0, 0], np.diag([1.0, 4.0]), 0.9)
    assert (w, h, abs(angle)) == pytest.approx((2 * math.sqrt(r2), 2 * math.sqrt(r2 / 4), 90.0))


def test_rotated_precision_gives_the_angle_and_the_points_lie_on_the_contour():
    # P = [[p, q], [q, p]], q < 0: the loose direction is row = col (down-right in the image)
    p, q = 2.0, -1.5
    w, h, angle = centres.mass_ellipse([0.5, -1.0], [[p, q], [q, p]], 0.5)
    r2 = centres.mass_radius2(0.5)
    assert angle == pytest.approx(45.0)
    assert w == pytest.approx(2 * math.sqrt(r2 / (p + q)))
    assert h == pytest.approx(2 * math.sqrt(r2 / (p - q)))
    # a general rotation, checked through the contour points and the Ellipse it describes
    theta = math.radians(30)
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    precision = rot @ np.diag([0.25, 3.0]) @ rot.T  # (row, col) coordinates
    centre = np.array([2.0, -1.0])
    pts = centres.mass_ellipse(centre, precision, 0.9, points=50)  # [50, 2] (row, col)
    d = pts - centre
    np.testing.assert_allclose(np.einsum("ni,ij,nj->n", d, precision, d), centres.mass_radius2(0.9))
    w, h, angle = centres.mass_ellipse(centre, precision, 0.9)
    patch = Ellipse((centre[1], centre[0]), w, h, angle=angle)
    edge = patch.get_patch_transform().transform(
        np.c_[np.cos(np.linspace(0, 6.2, 40)), np.sin(np.linspace(0, 6.2, 40))]
    )  # (x = col, y = row)
    d = edge[:, ::-1] - centre
    np.testing.assert_allclose(np.einsum("ni,ij,nj->n", d, precision, d), centres.mass_radius2(0.9))


def test_singular_precision_gives_an_infinite_axis():
    w, h, angle = centres.mass_ellipse([0, 0], [[1.0, 0.0], [0.0, 0.0]], 0.5)
    assert math.isinf(w) and math.isfinite(h) and angle == pytest.approx(0.0)  # along columns


# ------------------------------------------------------------------ the training log


def _records():
    mod0, mod1 = "layers.0.attention.positional", "layers.1.attention.positional"
    eye = [[1.0, 0.0], [0.0, 1.0]]
    return [
        {"kind": "train", "step": 10, f"centre/{mod1}": [[9, 9], [9, 9]], "loss": 1.0},
        {"kind": "train", "step": 0, f"centre/{mod1}": [[0, 1], [2, 3]],
         f"centre/{mod0}": [[-1, 0], [0, 1]], f"precision/{mod0}": [eye, [[2, 0.5], [0.5, 1]]]},
        {"kind": "val", "step": 10, f"centre/{mod0}": [[7, 7], [7, 7]]},
        {"kind": "train", "step": 10, f"centre/{mod1}": [[0.5, 1.5], [2.5, 3.5]],
         f"centre/{mod0}": [[-2, 0], [0, 2]], f"precision/{mod0}": [eye, eye]},
        {"kind": "train", "step": 5, "loss": 0.5},
    ]  # fmt: skip


def test_centre_history_values_order_and_last_record_per_step(tmp_path):
    history = centres.centre_history(_records())
    assert list(history.columns[:6]) == ["step", "module", "layer", "head", "row", "col"]
    assert history["layer"].tolist() == ["layer 1"] * 4 + ["layer 2"] * 4
    assert history[["step", "head"]].values.tolist() == [[0, 0], [10, 0], [0, 1], [10, 1]] * 2
    assert history["row"].tolist() == [
        -1,
        -2,
        0,
        0,
        0,
        0.5,
        2,
        2.5,
    ]  # not the val, not step 10's first
    assert history["col"].tolist() == [0, 0, 1, 2, 1, 1.5, 3, 3.5]
    first = history[(history.step == 0) & (history.module.str.startswith("layers.0"))]
    assert first[["prec_rr", "prec_rc", "prec_cc"]].values.tolist() == [[1, 0, 1], [2, 0.5, 1]]
    assert history[history.module.str.startswith("layers.1")]["prec_rr"].isna().all()
    # a metrics.jsonl path and its run folder read the same
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in _records()))
    assert centres.centre_history(tmp_path).equals(history)
    assert centres.centre_history(tmp_path / "metrics.jsonl").equals(history)
    assert centres.centre_history([{"kind": "train", "step": 1, "loss": 1}]).empty
    # the heads of a logged step, as gaussian_heads gives them
    heads = centres.heads_from_history(history[history.module.str.startswith("layers.0")], 0)
    np.testing.assert_allclose(heads[0]["precision"][1], [[2, 0.5], [0.5, 1]])
    np.testing.assert_allclose(heads[0]["centre"], [[-1, 0], [0, 1]])
    with pytest.raises(ValueError, match="precision"):
        centres.heads_from_history(history)


# ------------------------------------------------------------------ relative average attention


def _loop_average(weights: np.ndarray, h: int, w: int) -> np.ndarray:
    b, heads = weights.shape[:2]
    sums = np.zeros((heads, 2 * h - 1, 2 * w - 1))
    counts = np.zeros((2 * h - 1, 2 * w - 1))
    for qr, qc, kr, kc in np.ndindex(h, w, h, w):
        dr, dc = kr - qr + h - 1, kc - qc + w - 1
        sums[:, dr, dc] += weights[:, :, qr * w + qc, kr * w + kc].sum(0)
        counts[dr, dc] += b
    return sums / counts


def test_relative_average_attention_equals_a_direct_loop():
    torch.manual_seed(0)
    weights = torch.softmax(torch.randn(2, 3, 12, 12), -1)  # B 2, H 3, a 3 x 4 grid
    out = centres.relative_average_attention(weights, (3, 4))
    assert out.shape == (3, 5, 7)
    np.testing.assert_allclose(out, _loop_average(weights.numpy().astype(float), 3, 4), atol=1e-12)
    np.testing.assert_allclose(
        centres.relative_average_attention(weights[0], (3, 4)),
        _loop_average(weights[:1].numpy().astype(float), 3, 4),
        atol=1e-12,
    )
    # attention that always looks one row down and one column left: 1 there (where it fits)
    one_hot = np.zeros((1, 12, 12))
    for qr, qc in np.ndindex(3, 4):
        kr, kc = min(qr + 1, 2), max(qc - 1, 0)
        one_hot[0, qr * 4 + qc, kr * 4 + kc] = 1.0
    avg = centres.relative_average_attention(one_hot, (3, 4))
    assert avg[0, 2 + 1, 3 - 1] == pytest.approx(1.0)  # every query where the offset fits
    with pytest.raises(ValueError):
        centres.relative_average_attention(weights, (4, 4))


# ------------------------------------------------------------------ figures


def test_head_colours_are_distinct_up_to_twenty_heads():
    for n in (1, 9, 16, 20):
        styles = [centres.head_style(h, n) for h in range(n)]
        assert len(set(styles)) == n
    assert centres.head_style(3, 16)[0] == centres.head_style(3, 16)[0]


def test_plot_gaussian_centres_panels_ellipses_and_legend():
    torch.manual_seed(0)
    heads = centres.gaussian_heads(_Model(heads=4))
    fig = centres.plot_gaussian_centres(heads)
    panels = _visible_axes(fig)
    assert [ax.get_title() for ax in panels] == ["layer 1", "layer 2"]
    assert _legend_labels(fig) == [f"head {h}" for h in range(4)] + [
        "query",
        "50% mass",
        "90% mass",
    ]
    for ax, entry in zip(panels, heads):
        ellipses = [p for p in ax.patches if isinstance(p, Ellipse)]
        assert len(ellipses) == 4 * 2
        c = entry["centre"][1]
        w, h, angle = centres.mass_ellipse(c, entry["precision"][1], 0.9)
        assert ellipses[3].center == pytest.approx((c[1], c[0]))
        assert (ellipses[3].width, ellipses[3].height) == pytest.approx((w, h))
        assert ellipses[3].get_linestyle() == "--" and ellipses[2].get_linestyle() == "-"
        assert ax.yaxis_inverted() and ax.get_aspect() == 1.0
        x0, x1 = ax.get_xlim()
        assert x0 < c[1] - w / 2 and x1 > c[1] + w / 2  # limits fit the ellipses
    # same head, same colour in every panel
    colour = [ax.patches[2].get_edgecolor() for ax in panels]
    assert colour[0] == colour[1]
    fig = centres.plot_gaussian_centres(heads[:1], grid=(8, 6), masses=(0.5,))
    (ax,) = _visible_axes(fig)
    assert ax.get_xlim() == pytest.approx((-5.5, 5.5))
    assert ax.get_ylim() == pytest.approx((7.5, -7.5))  # rows downwards
    assert len(ax.patches) == 4 and "90% mass" not in _legend_labels(fig)


def test_plot_gaussian_centres_one_head_and_sixteen_heads_five_layers():
    one = [
        {"name": "x", "layer": "layer 1", "centre": np.zeros((1, 2)), "precision": np.eye(2)[None]}
    ]
    fig = centres.plot_gaussian_centres(one)
    assert len(_visible_axes(fig)) == 1 and _legend_labels(fig)[0] == "head 0"
    many = [
        {"layer": f"layer {i + 1}", "centre": np.random.default_rng(i).normal(size=(16, 2)) * 3,
         "precision": np.tile(np.eye(2), (16, 1, 1))}
        for i in range(5)
    ]  # fmt: skip
    fig = centres.plot_gaussian_centres(many)
    panels = _visible_axes(fig)
    assert len(panels) == 5 and len(fig.axes) == 6  # 2 x 3, one cell hidden
    assert all(len(ax.patches) == 32 for ax in panels)
    assert sum(label.startswith("head ") for label in _legend_labels(fig)) == 16
    assert panels[2].get_xlabel() == "column offset"  # above the hidden cell


def test_plot_centre_trajectories_paths_from_first_to_last_step():
    history = centres.centre_history(_records())
    fig = centres.plot_centre_trajectories(history)
    panels = _visible_axes(fig)
    assert [ax.get_title() for ax in panels] == ["layer 1", "layer 2"]
    assert _legend_labels(fig) == ["head 0", "head 1", "query", "step 0", "step 10"]
    lines = panels[0].get_lines()
    assert len(lines) == 1 + 2 * 3  # the query, then per head: path, first, last
    assert lines[0].get_xdata()[0] == 0 and lines[0].get_marker() == "+"
    path, first, last = lines[4:7]  # head 1 of layer 1: (0, 1) -> (0, 2) as (row, col)
    assert path.get_xdata().tolist() == [1, 2] and path.get_ydata().tolist() == [0, 0]
    assert first.get_markerfacecolor() == "white" and first.get_xdata()[0] == 1
    assert last.get_markerfacecolor() != "white" and last.get_xdata()[0] == 2
    x0, x1 = panels[0].get_xlim()
    assert x0 <= -0.5 and x1 >= 3.5 + 0.5  # all logged centres of every layer, and the query


def test_plot_offset_maps_grid_scale_and_labels():
    rng = np.random.default_rng(0)
    maps = rng.random((2, 3, 5, 7))
    fig = centres.plot_offset_maps(maps)
    images = [ax for ax in fig.axes if ax.images and ax.get_label() != "<colorbar>"]
    assert len(images) == 6 and len(fig.axes) == 7  # + one colorbar
    assert [ax.get_title() for ax in images[:3]] == ["head 0", "head 1", "head 2"]
    assert [images[i].get_ylabel() for i in (0, 3)] == ["layer 1", "layer 2"]
    image: AxesImage = images[4].images[0]
    np.testing.assert_allclose(image.get_array(), maps[1, 1])
    assert image.get_clim() == pytest.approx((0.0, maps.max()))  # one scale for all
    marker = images[4].get_lines()[0]
    assert (marker.get_xdata()[0], marker.get_ydata()[0]) == (0, 0)  # the query offset
    assert image.get_extent() == pytest.approx((-3.5, 3.5, 2.5, -2.5))  # offset 0 at the centre
    # diverging: each map minus its mean, symmetric about 0; dict keys as layer labels
    scores = {"layers.0.attention": rng.normal(size=(16, 3, 3)) + 5.0}
    fig = centres.plot_offset_maps(scores, diverging=True)
    images = [ax for ax in fig.axes if ax.images and ax.get_label() != "<colorbar>"]
    assert len(images) == 16 and images[0].get_ylabel() == "layer 1"
    assert images[0].get_title() == "0" and fig.get_suptitle() == "head"
    array = images[5].images[0].get_array()
    assert float(array.mean()) == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(
        array, scores["layers.0.attention"][5] - scores["layers.0.attention"][5].mean()
    )
    lo, hi = images[5].images[0].get_clim()
    assert lo == pytest.approx(-hi) and hi > 0
    fig = centres.plot_offset_maps(rng.random((1, 5, 5)))  # one layer, one head
    assert len(fig.axes) == 2
