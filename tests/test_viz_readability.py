"""Figures that read well: screen dpi, box labels that neither overlap nor leave the image, step
axes whose tick labels do not run together, coinciding curves that stay visible, and where a
standalone notebook writes."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from attnkit.analysis.inspect import ImageInspection
from attnkit.viz import alpha, curves, sparsity, style
from attnkit.viz.attention import plot_detections, plot_detections_row, shown_queries
from attnkit.viz.axes import StepLocator, coinciding, step_axis, step_text
from attnkit.viz.box_labels import LABEL_GID, select_boxes
from attnkit.viz.dataset import draw_boxes
from attnkit.viz.matching import plot_matching
from attnkit.viz.overlay import image_grid

matplotlib.use("Agg")


@pytest.fixture(autouse=True)
def _restore_style():
    with matplotlib.rc_context():
        yield
    plt.close("all")


# ------------------------------------------------------------------ screen dpi, saved files


def _pdf_page_inches(path) -> tuple[float, float]:
    box = re.search(rb"/MediaBox\s*\[\s*0 0 ([\d.]+) ([\d.]+)\s*\]", path.read_bytes())
    return float(box.group(1)) / 72, float(box.group(2)) / 72


def _text_width_figure():
    fig = plt.figure(figsize=style.figsize(1.0))
    ax = fig.add_axes((0.1, 0.12, 0.89, 0.78))  # content across the width, at any dpi
    ax.plot([0, 1], [0, 1])
    ax.set_title("a title")
    return fig


def test_screen_dpi_in_a_kernel_and_unchanged_files(tmp_path, monkeypatch):
    style.use_thesis_style(screen=True)
    assert matplotlib.rcParams["figure.dpi"] == style.SCREEN_DPI == 200
    assert matplotlib.rcParams["savefig.dpi"] == style.SAVE_DPI == 200
    # a text-width figure shows about 1260 px wide on screen
    assert style.TEXT_WIDTH_IN * matplotlib.rcParams["figure.dpi"] == pytest.approx(1260)
    screen = style.save_figure(_text_width_figure(), "screen", tmp_path)
    style.use_thesis_style(screen=False)
    assert matplotlib.rcParams["figure.dpi"] == style.PRINT_DPI
    assert matplotlib.rcParams["savefig.dpi"] == style.SAVE_DPI
    printed = style.save_figure(_text_width_figure(), "print", tmp_path)
    w, h = _pdf_page_inches(screen[0])
    assert (w, h) == pytest.approx(_pdf_page_inches(printed[0]), abs=1e-3)
    assert 0.9 * style.TEXT_WIDTH_IN < w <= style.TEXT_WIDTH_IN + 0.05  # tight, at text width
    assert Image.open(screen[1]).size == Image.open(printed[1]).size
    assert Image.open(screen[1]).size[0] == pytest.approx(w * style.SAVE_DPI, abs=2)
    monkeypatch.setattr(style, "in_kernel", lambda: True)
    style.use_thesis_style()
    assert matplotlib.rcParams["figure.dpi"] == style.SCREEN_DPI
    monkeypatch.setattr(style, "in_kernel", lambda: False)
    style.use_thesis_style()
    assert matplotlib.rcParams["figure.dpi"] == style.PRINT_DPI


# ------------------------------------------------------------------ box labels


def _label_extents(fig, ax):
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = [t for t in ax.texts if t.get_gid() == LABEL_GID]
    for t in texts:  # the text lies inside its background box
        box, text = t.get_bbox_patch().get_window_extent(renderer), t.get_window_extent(renderer)
        assert box.contains((text.x0 + text.x1) / 2, (text.y0 + text.y1) / 2)
    return [t.get_bbox_patch().get_window_extent(renderer) for t in texts]


def _assert_clear_and_inside(fig, ax, expected: int) -> None:
    """The labels' background boxes, as drawn, overlap no other label and stay in the image."""
    extents = _label_extents(fig, ax)
    assert len(extents) == expected
    left, right, bottom, top = ax.images[0].get_extent()
    (x0, y1), (x1, y0) = ax.transData.transform([(left, top), (right, bottom)])
    tol = 0.6  # px: anti-aliasing and rounding of the renderer
    for i, a in enumerate(extents):
        assert a.x0 >= x0 - tol and a.x1 <= x1 + tol and a.y0 >= y0 - tol and a.y1 <= y1 + tol
        for b in extents[i + 1 :]:
            overlap_w = min(a.x1, b.x1) - max(a.x0, b.x0)
            overlap_h = min(a.y1, b.y1) - max(a.y0, b.y0)
            assert overlap_w <= tol or overlap_h <= tol, (a, b)


def _crowded_inspection(n_det: int = 14) -> ImageInspection:
    """Detections piled on 5 objects, some at the image edges, as a duplicating DETR makes."""
    W, H = 240, 200
    gt = torch.tensor(
        [
            [0, 0, 60, 50],
            [150, 140, 240, 200],
            [90, 60, 150, 120],
            [5, 150, 50, 195],
            [180, 0, 240, 40],
        ],
        dtype=torch.float32,
    )
    g = torch.Generator().manual_seed(0)
    which = torch.arange(n_det) % len(gt)
    boxes = gt[which] + torch.randint(-6, 7, (n_det, 4), generator=g).float()
    scores = torch.linspace(0.95, 0.55, n_det)
    labels = which % 3
    image = Image.new("RGB", (W, H), (120, 140, 160))
    return ImageInspection(
        index=0,
        image_id=1,
        image=image,
        layers=[0],
        attention=torch.zeros(1, 1, n_det, 2, 2),
        scores=scores,
        labels=labels,
        boxes=boxes,
        gt_boxes=gt,
        gt_labels=torch.arange(len(gt)) % 3,
        match_queries=torch.arange(len(gt)),
        match_targets=torch.arange(len(gt)),
        costs={},
        cost_weights={},
        categories={0: "circle", 1: "square", 2: "triangle"},
        model_name="sparsemax",
    )


@pytest.mark.parametrize("screen", [False, True])
def test_detection_labels_are_clear_of_each_other_and_inside_the_image(screen):
    style.use_thesis_style(screen=screen)
    ins = _crowded_inspection()
    fig = plot_detections(ins)
    ax = fig.axes[0]
    _assert_clear_and_inside(fig, ax, expected=14 + 5)
    row = plot_detections_row({"a": ins, "b": _crowded_inspection(9)}, nms_iou=0.5, top_k=6)
    for ax, n in zip(row.axes, (14, 9)):
        shown = shown_queries(_crowded_inspection(n), nms_iou=0.5, top_k=6)
        assert 3 <= len(shown) <= 6
        _assert_clear_and_inside(row, ax, expected=5 + len(shown))


def test_matching_and_sample_labels_are_clear_and_inside():
    style.use_thesis_style(screen=False)
    ins = _crowded_inspection()
    fig = plot_matching(ins)
    _assert_clear_and_inside(fig, fig.axes[0], expected=2 * 5)
    fig, axes = image_grid(1, 1, (200, 240), 3.0)
    axes[0, 0].imshow(np.zeros((200, 240, 3)))
    draw_boxes(axes[0, 0], ins.boxes.numpy(), [f"box {k}" for k in range(14)])
    _assert_clear_and_inside(fig, axes[0, 0], expected=14)


def test_select_boxes_thresholds_suppresses_per_class_and_keeps_the_best():
    boxes = torch.tensor(
        [[0, 0, 10, 10], [1, 0, 11, 10], [0, 0, 10, 10], [50, 50, 60, 60], [0, 1, 10, 11]]
    ).float()
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.3])
    labels = torch.tensor([0, 0, 1, 0, 0])
    assert select_boxes(boxes, scores, labels) == [0, 1, 2, 3, 4]
    assert select_boxes(boxes, scores, labels, score_threshold=0.5) == [0, 1, 2, 3]
    # box 1 and 4 duplicate box 0 (same class); box 2 is the same place, another class
    assert select_boxes(boxes, scores, labels, nms_iou=0.5) == [0, 2, 3]
    assert select_boxes(boxes, scores, None, nms_iou=0.5) == [0, 3]
    assert select_boxes(boxes, scores, labels, nms_iou=0.5, top_k=2) == [0, 2]
    ins = _crowded_inspection()
    assert shown_queries(ins) == list(range(14))  # sorted by score, which decreases with q
    assert len(shown_queries(ins, nms_iou=0.3)) <= 5 * 3
    assert shown_queries(ins, top_k=3) == [0, 1, 2]
    # nothing detected (random init): every matched query, one per ground truth, unthinned
    assert shown_queries(ins, score_threshold=0.99, nms_iou=0.1, top_k=1) == [0, 1, 2, 3, 4]


# ------------------------------------------------------------------ step axes


def _assert_tick_labels_apart(fig, ax) -> list[str]:
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    lo, hi = sorted(ax.get_xlim())
    shown = [
        (t, lab)
        for t, lab in zip(ax.get_xticks(), ax.get_xticklabels())
        if lo <= t <= hi and lab.get_visible() and lab.get_text()
    ]
    extents = [lab.get_window_extent(renderer) for _, lab in shown]
    assert len(extents) >= 2, "a step axis needs at least two labelled ticks"
    for a, b in zip(extents, extents[1:]):
        assert b.x0 - a.x1 > 2, f"tick labels touch: {[lab.get_text() for _, lab in shown]}"
    assert isinstance(ax.xaxis.get_major_locator(), StepLocator)
    return [lab.get_text() for _, lab in shown]


def test_step_text():
    assert [step_text(v) for v in (0, 250, 1000, 1500, 10000, 12500, 2_500_000)] == [
        "0", "250", "1k", "1.5k", "10k", "12.5k", "2.5M"
    ]  # fmt: skip


def _long_alpha_history(layers: int = 3, heads: int = 8, steps: int = 10240, every: int = 16):
    rows = [
        (s, f"transformer.decoder.layers.{k}.multihead_attn", h, 1.5 + 1e-5 * s * (h - 3))
        for k in range(layers)
        for h in range(heads)
        for s in range(0, steps + 1, every)
    ]
    return pd.DataFrame(rows, columns=["step", "layer", "head", "alpha"])


def _long_records(steps: int = 10240, every: int = 16, coincide: bool = True) -> list[dict]:
    out = []
    for s in range(every, steps + 1, every):
        other = 30 + 10 * np.sin(s / 500)
        pre = 1e-3 * other
        out.append(
            {
                "kind": "train",
                "step": s,
                "epoch": s // 256,
                "loss": 3 - s / steps,
                "loss_ce": 1 - s / (2 * steps),
                "grad_norm/pre_alpha": pre,
                "grad_norm/other": other,
                "grad_norm/total": float(np.hypot(other, pre)) if coincide else 2 * other,
                "lr/default": 2e-4 if s < 8192 else 2e-5,
            }
        )
    return out


@pytest.mark.parametrize("screen", [False, True])
def test_long_step_axes_have_tick_labels_that_do_not_run_together(screen):
    style.use_thesis_style(screen=screen)
    history = _long_alpha_history()
    fig = alpha.plot_alpha_curves(history, [8192])
    for ax in fig.axes:
        labels = _assert_tick_labels_apart(fig, ax)
    assert "10k" in labels or "5k" in labels
    fig = alpha.plot_alpha_heatmap(history, [8192])
    _assert_tick_labels_apart(fig, fig.axes[0])
    records = _long_records()
    fig = alpha.plot_grad_norms(records)
    _assert_tick_labels_apart(fig, fig.axes[1])
    fig = curves.plot_loss_curves({"alpha_entmax": records}, components=("loss", "loss_ce"))
    for ax in fig.axes:
        _assert_tick_labels_apart(fig, ax)
    narrow, axes = plt.subplots(1, 8, figsize=style.figsize(1.0, 0.2))
    for ax in axes:
        ax.plot([0, 10240], [0, 1])
        step_axis(ax)
    narrow.tight_layout()
    for ax in axes:
        _assert_tick_labels_apart(narrow, ax)


# ------------------------------------------------------------------ coinciding curves


def test_coinciding_finds_curves_drawn_over_earlier_ones():
    x = np.arange(10.0)
    series = {"a": (x, x**2), "b": (x, x**2 + 1e-4), "c": (x, x), "d": (x[:5], x[:5] ** 2)}
    assert coinciding(series) == {"b": "a"}
    assert coinciding({"a": (x, x + 1), "b": (x, (x + 1) * 1.0001)}, log=True) == {"b": "a"}
    assert coinciding({"a": (x, x + 1), "b": (x, (x + 1) * 1.1)}, log=True) == {}


def _legend_texts(fig) -> list[str]:
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes)]
    return [t.get_text() for legend in legends if legend for t in legend.get_texts()]


def test_random_init_entmax15_and_alpha_entmax_are_told_apart_in_the_ecdf():
    rng = np.random.default_rng(0)
    values = rng.uniform(0, 1, 200)
    rows = []
    for model, v in [
        ("entmax15", rng.uniform(0, 1, 200)),
        ("alpha_entmax", rng.uniform(0, 1, 200)),
        ("entmax15 (random init)", values),
        ("alpha_entmax (random init)", values + 1e-7),  # alpha = 1.5 at init: the same maps
    ]:
        for layer in (0, 1):
            name = f"transformer.decoder.layers.{layer}.multihead_attn"
            rows += [{"model": model, "layer": name, "gini": x} for x in v]
    fig = sparsity.plot_metric_distribution(pd.DataFrame(rows), "gini")
    assert "α-entmax (= 1.5-entmax at init)" in _legend_texts(fig)
    fig.canvas.draw()  # the longer legend wraps instead of widening the figure
    assert fig.legends[0].get_window_extent().width <= fig.bbox.width
    for ax in fig.axes:
        later = [line for line in ax.lines if line.get_label() == "α-entmax (random init)"][0]
        assert later.get_marker() == "o" and later.get_zorder() > ax.lines[0].get_zorder()


def test_total_gradient_norm_on_other_parameters_says_so():
    fig = alpha.plot_grad_norms(_long_records(coincide=True))
    assert "total (before clipping) (= other parameters)" in _legend_texts(fig)
    fig = alpha.plot_grad_norms(_long_records(coincide=False))
    assert "total (before clipping)" in _legend_texts(fig)


# ------------------------------------------------------------------ where notebooks write


def test_standalone_notebooks_write_under_runs_notebooks(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the working directory
    monkeypatch.delenv(style.FIGURES_ENV, raising=False)
    run, figures = style.notebook_dirs("detr/02_attention_maps")
    assert run == style.REPO_ROOT / "runs" / "notebooks" / "detr" / "02_attention_maps"
    assert figures == run / "figures"
    run, figures = style.notebook_dirs("detr/01_train", None, None, "sparsemax")
    assert figures == style.REPO_ROOT / "runs/notebooks/detr/01_train/sparsemax/figures"
    assert style.notebook_dirs("vit/02_attention", "r", "f") == (Path("r"), Path("f"))
    monkeypatch.setenv(style.FIGURES_ENV, str(tmp_path / "env"))
    assert style.notebook_dirs("detr/00_dataset")[1] == tmp_path / "env"
    assert style.notebook_dirs("detr/00_dataset", None, "given")[1].name == "given"
    assert style.figures_dir() == tmp_path / "env"
    if shutil.which("git") and (style.REPO_ROOT / ".git").exists():
        path = style.NOTEBOOK_RUNS / "detr" / "00_dataset" / "figures" / "00_samples.png"
        check = subprocess.run(
            ["git", "check-ignore", "-q", str(path)], cwd=style.REPO_ROOT, check=False
        )
        assert check.returncode == 0, f"{path} is not ignored by git"
