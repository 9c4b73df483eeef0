"""Figures of MaxViT's two attentions: block (local windows) against grid (dilated, global).

The notebooks of ``notebooks/maxvit/`` put MaxViT's attention back on the image and compare its
block and grid attention stage by stage. :func:`stages_of` gives each stage's token grid and the
token under a query pixel (the maps of :mod:`attnkit.viz.receptive_fields` live on these grids),
:func:`query_maps_by_site` records one image and returns every site's per-head attention of that
token on the pixels. The plots compare block with grid attention per stage from analysis
summaries (:mod:`attnkit.analysis.maxvit_sparsity`): bars per model and stage, per-head
heatmaps, and the learned alphas of an alpha-entmax MaxViT per head.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.colors import to_rgba
from matplotlib.patches import Patch

from attnkit.analysis.maxvit_sparsity import KINDS, stage_frame
from attnkit.analysis.recorder import AttentionRecorder
from attnkit.viz.alpha import reference_alpha_lines
from attnkit.viz.axes import fit_legend
from attnkit.viz.labels import model_colors, normalizer_label
from attnkit.viz.receptive_fields import (
    block_attention_region,
    grid_attention_region,
    query_maps_from_record,
    upsample_to_image,
)
from attnkit.viz.sparsity import METRIC_LABELS, UNIT_AXIS, with_baseline
from attnkit.viz.style import figsize

__all__ = [
    "KIND_COLORS",
    "Stage",
    "plot_alpha_block_vs_grid",
    "plot_block_vs_grid",
    "plot_head_block_vs_grid",
    "query_maps_by_site",
    "sample_images",
    "site_support",
    "stages_of",
]

KIND_COLORS = {"block": "#00838F", "grid": "#AD1457"}  # darker relatives of the region colours
KIND_MARKERS = {"block": "o", "grid": "s"}
GRID_HATCH = "////"
_STAGE = re.compile(r"(?:^|\.)stages\.(\d+)\.")


@dataclass(frozen=True)
class Stage:
    """One MaxViT stage on an input of a given size: ``module`` (``stages.0``), its token grid
    ``token_hw`` (before padding to the window / grid multiple), the input pixels per token
    ``reduction``, its number of blocks ``depth`` and the token ``query`` under a query pixel."""

    index: int
    module: str
    token_hw: tuple[int, int]
    reduction: int
    depth: int
    query: tuple[int, int] | None = None


def stages_of(model, image_hw: Sequence[int], query_pixel: Sequence[int] | None = None):
    """The :class:`Stage` list of a :class:`~attnkit.models.maxvit.MaxViT` on ``image_hw``
    inputs: every stride-2 layer pads TF-``SAME``, so a stage of reduction r has
    ``ceil(H / r) x ceil(W / r)`` tokens, and pixel ``(row, col)`` lies in token
    ``(row // r, col // r)``."""
    (H, W), stages = (int(image_hw[0]), int(image_hw[1])), []
    if query_pixel is not None and not (0 <= query_pixel[0] < H and 0 <= query_pixel[1] < W):
        raise ValueError(f"query pixel {tuple(query_pixel)} is outside the {H}x{W} image")
    for i, (info, depth) in enumerate(zip(model.feature_info[1:], model.cfg.depths)):
        r = int(info["reduction"])
        hw = (math.ceil(H / r), math.ceil(W / r))
        query = (
            None if query_pixel is None else (int(query_pixel[0]) // r, int(query_pixel[1]) // r)
        )
        stages.append(Stage(i, info["module"], hw, r, int(depth), query))
    return stages


def sample_images(cfg, count: int, split: str = "val"):
    """The first ``count`` images of a classification config's ``split`` (no augmentation):
    ``(images [B, 3, H, W]`` as the model sees them, ``pixels [B, H, W, 3]`` in [0, 1] for
    display, ``labels [B])``."""
    from attnkit.data.classification import classification_stats
    from attnkit.tasks import task_of

    dataset = task_of(cfg).build_dataset(cfg, split, train=False)
    items = [dataset[i] for i in range(min(int(count), len(dataset)))]
    images = torch.stack([x for x, _ in items])  # [B, 3, H, W] normalised
    labels = torch.tensor([int(y) for _, y in items])
    mean, std = (torch.tensor(v)[:, None, None] for v in classification_stats(cfg.data.name))
    pixels = (images * std + mean).clamp(0, 1).permute(0, 2, 3, 1)  # [B, H, W, 3]
    return images, pixels, labels


@torch.no_grad()
def query_maps_by_site(
    model, image: torch.Tensor, query_pixel: Sequence[int], sites: Sequence[str] | None = None
) -> dict[str, torch.Tensor]:
    """``{site label: [heads, H, W]}``: the attention of the token under ``query_pixel`` (its
    stage's token, see :func:`stages_of`) per head, on the pixels of ``image`` ``[3, H, W]``
    (as the model sees it); ``sites``: those labels, in that order (None: every site). The
    model runs in the mode it is in (``load_model`` gives it in eval mode)."""
    device = next(model.parameters()).device
    image_hw = tuple(image.shape[-2:])
    stages = stages_of(model, image_hw, query_pixel)
    with AttentionRecorder(model) as rec:
        model(image[None].to(device))  # records [parts, heads, P, P] per site
    out = {}
    for name in rec.names:
        record = rec.last(name)
        stage = stages[int(_STAGE.search(name).group(1))]
        layout = record.meta["layout"]
        maps = query_maps_from_record(
            record.weights, layout, 0, stage.query, 1, image_hw, stage.token_hw
        )
        out[record.site or name] = maps  # [heads, H, W]
    missing = [s for s in sites or [] if s not in out]
    if missing:
        raise KeyError(f"no attention site {missing}; this model has {list(out)}")
    return out if sites is None else {s: out[s] for s in sites}


def site_support(site: str, stages, window, grid, image_hw: Sequence[int]) -> torch.Tensor:
    """Bool ``[H, W]``: the pixels the query of ``stages`` can attend to at ``site`` (a label
    ``stage S block B block|grid``): its window or grid partition, on the image."""
    stage = stages[int(site.split()[1]) - 1]
    if site.endswith(" grid"):
        region = grid_attention_region(stage.token_hw, tuple(grid), stage.query)
    else:
        region = block_attention_region(stage.token_hw, tuple(window), stage.query)
    return upsample_to_image(region.float(), tuple(image_hw), stage.token_hw) > 0.5


def _kind_bar_style(color, kind: str) -> dict:
    if kind == "block":
        return {"facecolor": color, "edgecolor": color, "linewidth": 0.6}
    return {
        "facecolor": to_rgba(color, 0.3),
        "edgecolor": color,
        "hatch": GRID_HATCH,
        "linewidth": 0.6,
    }


def _block_vs_grid_panel(ax, summaries, metric, baseline, colors) -> None:
    frame, heads = stage_frame(summaries, metric), stage_frame(summaries, metric, per_head=True)
    base = stage_frame(baseline, metric) if baseline else None
    stages = sorted(frame["stage"].unique())
    slots = [(m, k) for m in summaries for k in KINDS]
    bar_w, rng = 0.84 / len(slots), np.random.default_rng(0)
    for i, (model, kind) in enumerate(slots):
        x = np.arange(len(stages)) + (i - (len(slots) - 1) / 2) * bar_w
        pick = (frame.model == model) & (frame.kind == kind)
        mean = frame[pick].set_index("stage").reindex(stages)["mean"].to_numpy(dtype=float)
        ax.bar(x, mean, bar_w * 0.9, zorder=2, **_kind_bar_style(colors[model], kind))
        for xi, stage in zip(x, stages):
            sel = (heads.model == model) & (heads.kind == kind) & (heads.stage == stage)
            vals = heads[sel]["mean"].to_numpy(dtype=float)
            jitter = rng.uniform(-0.25, 0.25, len(vals)) * bar_w
            ax.scatter(xi + jitter, vals, s=3, color="0.15", alpha=0.7, linewidths=0, zorder=3)
        if base is not None:
            ref = base[(base.model == model) & (base.kind == kind)].set_index("stage")
            ref = ref.reindex(stages)["mean"].to_numpy(dtype=float)
            ax.hlines(ref, x - bar_w * 0.45, x + bar_w * 0.45, color="black", lw=1.2, zorder=4)
    ax.set_xticks(np.arange(len(stages)), [f"stage {s}" for s in stages])
    ax.set_title(METRIC_LABELS.get(metric, metric))
    if metric in UNIT_AXIS:
        ax.set_ylim(0, 1.02)


def plot_block_vs_grid(
    summaries: Mapping[str, dict],
    metrics: Sequence[str] = ("gini", "zeros_ratio"),
    baseline: Mapping[str, dict] | None = None,
    width: float = 1.0,
):
    """One panel per metric: x = stage, per model a solid bar (block attention) and a hatched
    one (grid attention), each the mean over every map of the stage's blocks; dots: the heads'
    means; black ticks: the same model at random initialisation (``baseline``)."""
    colors = model_colors(summaries)
    fig, axes = plt.subplots(1, len(metrics), figsize=figsize(width, aspect=0.36), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        _block_vs_grid_panel(ax, summaries, metric, baseline, colors)
    handles = [Patch(color=colors[m]) for m in summaries]
    labels = [normalizer_label(m) for m in summaries]
    handles += [Patch(**_kind_bar_style("0.35", k)) for k in KINDS]
    labels += ["block attention", "grid attention"]
    handles.append(plt.Line2D([], [], marker="o", linestyle="", markersize=2.5, color="0.15"))
    labels.append("per head")
    if baseline:
        handles.append(plt.Line2D([], [], color="black", linewidth=1.2))
        labels.append("random init")
    fit_legend(fig, handles, labels, max_ncol=7, loc="lower center", bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout()
    return fig


def plot_head_block_vs_grid(
    summaries: Mapping[str, dict],
    metric: str,
    baseline: Mapping[str, dict] | None = None,
    annotate: bool | None = None,
    cmap: str = "viridis",
    width: float = 1.0,
):
    """Per-head means of ``metric``, one heatmap per stage (as wide as its heads): rows are
    model x (block, grid), random-init models (``baseline``) below their trained model,
    pooled over the stage's blocks. Cells are annotated when there are few enough."""
    table = with_baseline(summaries, baseline)
    heads = stage_frame(table, metric, per_head=True)
    stages = sorted(heads["stage"].unique())
    widths = [int(heads[heads.stage == s]["head"].max()) + 1 for s in stages]
    rows = [(m, k) for m in table for k in KINDS]
    values = heads["mean"].to_numpy(dtype=float)
    lo, hi = (0.0, 1.0) if metric in UNIT_AXIS else (np.nanmin(values), np.nanmax(values))
    annotate = len(rows) * sum(widths) <= 240 if annotate is None else annotate
    aspect = min(0.9, 0.12 + 0.04 * len(rows))
    fig, axes = plt.subplots(
        1,
        len(stages),
        figsize=figsize(width, aspect),
        squeeze=False,
        gridspec_kw={"width_ratios": widths},
    )
    for ax, stage, n in zip(axes[0], stages, widths):
        grid = np.full((len(rows), n), np.nan)
        for r, (model, kind) in enumerate(rows):
            sel = heads[(heads.model == model) & (heads.stage == stage) & (heads.kind == kind)]
            grid[r, sel["head"].to_numpy()] = sel["mean"].to_numpy()
        im = ax.imshow(grid, aspect="auto", cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
        if annotate:
            _annotate(ax, im, grid)
        for r in range(2, len(rows), 2):
            ax.axhline(r - 0.5, color="white", linewidth=1.5)
        ax.set_xticks(range(n), [str(h) for h in range(n)])
        ax.set_yticks(range(len(rows)), [f"{normalizer_label(m)}, {k}" for m, k in rows])
        ax.tick_params(length=0, labelsize=5, labelleft=ax is axes[0, 0])
        ax.set(title=f"stage {stage}", xlabel="head")
        for side in ("left", "bottom"):
            ax.spines[side].set_visible(False)
    fig.tight_layout()
    fig.colorbar(im, ax=axes[0].tolist(), label=METRIC_LABELS.get(metric, metric), fraction=0.04)
    return fig


def _annotate(ax, im, grid: np.ndarray) -> None:
    for (r, c), v in np.ndenumerate(grid):
        if not np.isnan(v):
            text = f"{v:.2f}".replace("0.", ".", 1) if abs(v) < 1 else f"{v:.1f}"
            color = "white" if im.norm(v) < 0.55 else "black"
            ax.text(c, r, text, ha="center", va="center", fontsize=4.5, color=color)


def plot_alpha_block_vs_grid(final: pd.DataFrame, width: float = 1.0):
    """Learned alphas per head: x = MaxViT block (stage, block), block attention's heads
    (circles) left of grid attention's (squares), a bar at each site's mean over heads;
    dotted lines at the alphas of softmax (1), 1.5-entmax (the start) and sparsemax (2).
    ``final``: ``stage, block, kind, head, alpha`` rows (``maxvit_sparsity.with_sites`` of
    :func:`attnkit.viz.alpha.final_alphas`)."""
    if final.empty:
        raise ValueError("no alphas: was any attention alpha_entmax?")
    blocks = list(
        final[["stage", "block"]]
        .drop_duplicates()
        .sort_values(["stage", "block"])
        .itertuples(index=False)
    )
    fig, ax = plt.subplots(figsize=figsize(width, aspect=0.42))
    for x, (stage, block) in enumerate(blocks):
        for kind, off in zip(KINDS, (-0.2, 0.2)):
            pick = (final.stage == stage) & (final.block == block) & (final.kind == kind)
            mine = final[pick].sort_values("head")
            spread = np.linspace(-0.1, 0.1, len(mine)) if len(mine) > 1 else np.zeros(len(mine))
            style = {"color": KIND_COLORS[kind], "marker": KIND_MARKERS[kind], "zorder": 3}
            ax.scatter(x + off + spread, mine["alpha"], s=9, linewidths=0, **style)
            if len(mine):
                ax.hlines(
                    mine["alpha"].mean(),
                    x + off - 0.15,
                    x + off + 0.15,
                    color=KIND_COLORS[kind],
                    linewidth=1.2,
                    zorder=2,
                )
        if x and blocks[x - 1][0] != stage:
            ax.axvline(x - 0.5, color="0.8", linewidth=0.6, zorder=0)
    lo, hi = float(final["alpha"].min()), float(final["alpha"].max())
    reference_alpha_lines(ax, lo, hi)
    ax.set_xticks(range(len(blocks)), [f"stage {s}\nblock {b}" for s, b in blocks])
    ax.set_xlim(-0.5, len(blocks) - 0.5)
    ax.set_ylabel(r"final $\alpha$")
    handles = [
        plt.Line2D([], [], linestyle="", marker=KIND_MARKERS[k], color=KIND_COLORS[k])
        for k in KINDS
    ]
    handles.append(plt.Line2D([], [], color="0.3", linewidth=1.2))
    labels = ["block attention", "grid attention", "mean over heads"]
    ax.legend(
        handles, labels, fontsize="small", ncol=3, loc="lower center", bbox_to_anchor=(0.5, 1.0)
    )
    fig.tight_layout()
    return fig
