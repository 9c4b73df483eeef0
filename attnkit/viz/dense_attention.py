"""The dense family's attention on the image and its sparsity per stage and head.

:func:`query_maps_by_site` records one image through :class:`~attnkit.analysis.AttentionRecorder`
and puts the attention row of the token under a query pixel back on the pixels, at every site
(``stage S block B``, ``up L block B``), whatever the mechanism: (shifted) windows and grid
partitions through their ``KeyLayout`` (:func:`attnkit.viz.receptive_fields.query_maps_from_record`),
spatial-reduction attention (keys on the ``r``-fold reduced grid, each key drawn over the ``r x r``
query tokens it summarises) and full attention (keys on the query grid). Each site also gets its
*support*: the pixels the query may attend to (its window, without the keys a shifted window
masks because they were rolled in from the other side of the map; its grid partition; the
reduced or full map), so the share of exact zeros is counted where attention could go.
The sparsity figures arrange analysis summaries by stage (:mod:`attnkit.analysis.dense_sparsity`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

from attnkit.analysis.dense_sparsity import stage_frame
from attnkit.analysis.recorder import AttentionRecorder
from attnkit.attention.hooks import AttentionModule
from attnkit.viz.dense_figures import _architecture, model_styles
from attnkit.viz.labels import normalizer_label, normalizer_of
from attnkit.viz.overlay import TITLE_SIZE, _colorbar, image_grid
from attnkit.viz.receptive_fields import _heat_row, _rgb, query_maps_from_record, upsample_to_image
from attnkit.viz.sparsity import METRIC_LABELS, UNIT_AXIS, with_baseline
from attnkit.viz.style import TEXT_WIDTH_IN, figsize

__all__ = [
    "SiteMaps",
    "normalizer_pairs",
    "plot_head_sparsity",
    "plot_site_comparison",
    "plot_stage_sparsity",
    "query_maps_by_site",
    "query_token",
]


@dataclass
class SiteMaps:
    """One site's attention of one query: ``maps [heads, H, W]`` on the pixels, ``support [H, W]``
    bool (where it may attend), the mechanism ``kind`` and the ``query`` token on its grid."""

    maps: torch.Tensor
    support: torch.Tensor
    kind: str
    query: tuple[int, int]


def query_token(pixel: Sequence[int], image_hw: Sequence[int], token_hw: Sequence[int]):
    """The token of a ``token_hw`` grid drawn at ``pixel`` (row, col) when the grid is shown on
    ``image_hw`` pixels (:func:`~attnkit.viz.receptive_fields.upsample_to_image`)."""
    if not all(0 <= p < s for p, s in zip(pixel, image_hw)):
        raise ValueError(f"query pixel {tuple(pixel)} is outside the image {tuple(image_hw)}")
    return tuple(min(int((p + 0.5) * t / s), t - 1) for p, s, t in zip(pixel, image_hw, token_hw))


def _partition_support(layout, query: tuple[int, int]) -> torch.Tensor:
    """``[gh, gw]`` bool: the keys of ``query``'s window (or grid partition) it may attend to;
    a shifted window keeps only the keys on its query's side of the roll (Swin's region mask)."""
    (gh, gw), (ph, pw) = layout.grid, layout.part
    if layout.kind == "dilated":
        nh, nw = gh // ph, gw // pw
        rows, cols = torch.arange(gh) % nh == query[0] % nh, torch.arange(gw) % nw == query[1] % nw
        return rows[:, None] & cols[None, :]

    def axis(n: int, part: int, shift: int, q: int) -> torch.Tensor:
        rolled = (torch.arange(n) - shift) % n  # each token's place on the rolled map
        same = rolled // part == rolled[q] // part
        if shift:
            region = (rolled >= n - part).long() + (rolled >= n - shift).long()
            same &= region == region[q]
        return same

    rows, cols = axis(gh, ph, layout.shift[0], query[0]), axis(gw, pw, layout.shift[1], query[1])
    return rows[:, None] & cols[None, :]


def _partition_maps(record, pixel, image_hw) -> SiteMaps:
    layout = record.meta["layout"]
    token_hw = layout.real_grid
    q = query_token(pixel, image_hw, token_hw)
    maps = query_maps_from_record(record.weights, layout, 0, q, 1, image_hw, token_hw)
    support = upsample_to_image(_partition_support(layout, q), image_hw, token_hw)
    kind = "grid" if layout.kind == "dilated" else "window"
    return SiteMaps(maps, support, ("shifted " if any(layout.shift) else "") + kind, q)


def _sequence_maps(record, module, pixel, image_hw) -> SiteMaps:
    """Full or spatial-reduction attention: rows on the query grid, keys on a reduced grid."""
    kh, kw = record.key_grid
    qh, qw = record.meta.get("query_grid") or (kh, kw)
    ratio = 1 if (kh, kw) == (qh, qw) else int(getattr(module, "sr_ratio", qh // kh))
    q = query_token(pixel, image_hw, (qh, qw))
    prefix = int(record.meta.get("prefix_tokens", 0))
    rows = record.weights[0, :, prefix + q[0] * qw + q[1], prefix:]  # [heads, kh * kw]
    keys = torch.cat([rows.reshape(-1, kh, kw), torch.ones(1, kh, kw, dtype=rows.dtype)])
    spread = keys.repeat_interleave(ratio, 1).repeat_interleave(ratio, 2)  # [heads + 1, ...]
    pad = (0, max(qw - spread.shape[2], 0), 0, max(qh - spread.shape[1], 0))
    on_queries = F.pad(spread, pad)[:, :qh, :qw]  # [heads + 1, qh, qw]
    up = torch.stack([upsample_to_image(m, image_hw) for m in on_queries])
    kind = "full" if ratio == 1 else f"spatial reduction ×{ratio}"
    return SiteMaps(up[:-1], up[-1] > 0.5, kind, q)


@torch.no_grad()
def query_maps_by_site(
    model, image: torch.Tensor, query_pixel: Sequence[int], sites: Sequence[str] | None = None
) -> dict[str, SiteMaps]:
    """``{site label: SiteMaps}``: every attention site's per-head attention of the token under
    ``query_pixel`` (row, col) on the pixels of ``image [3, H, W]`` (as the model sees it), in
    model order; ``sites``: those labels only, in that order. Sites without maps (efficient
    attention forms none) are absent: a model without any gives ``{}``."""
    if not any(isinstance(m, AttentionModule) for m in model.modules()):
        return {}
    device = next(model.parameters()).device
    image_hw = tuple(image.shape[-2:])
    with AttentionRecorder(model) as rec:
        model(image[None].to(device))
    out = {}
    for name in rec.names:
        if name not in rec.records:
            continue
        record = rec.last(name)
        if "layout" in record.meta and record.meta["layout"].kind != "grid":
            maps = _partition_maps(record, query_pixel, image_hw)
        else:
            maps = _sequence_maps(record, model.get_submodule(name), query_pixel, image_hw)
        out[record.site or name] = maps
    missing = [s for s in sites or [] if s not in out]
    if missing:
        raise KeyError(f"no attention site {missing}; this model has {list(out)}")
    return out if sites is None else {s: out[s] for s in sites}


def plot_site_comparison(image, rows: Mapping[str, SiteMaps], query_pixel=None, title=None):
    """Rows: models (``{label: SiteMaps}`` of one site), columns: heads. One colour scale per
    row (square root), exact zeros transparent, and each panel's share of exact zeros counted
    over that row's support (the query's window, partition or map)."""
    rgb = _rgb(image)
    ncols = max(len(s.maps) for s in rows.values())
    margins = (0.35, 0.5, 0.45 if title else 0.3, 0.05)
    fig, axes = image_grid(len(rows), ncols, rgb.shape[:2], TEXT_WIDTH_IN, margins)
    at = None if query_pixel is None else (query_pixel[0] + 0.5, query_pixel[1] + 0.5)
    for r, (label, site) in enumerate(rows.items()):
        titles = [f"head {h}" for h in range(ncols)] if r == 0 else None
        values, support = site.maps.double().numpy(), site.support.numpy()
        mappable = _heat_row(axes[r], rgb, values, titles, at, 0.5, zeros=support)
        axes[r, 0].set_ylabel(f"{label}\n{site.kind}", fontsize=TITLE_SIZE)
        _colorbar(fig, mappable, axes[r, : len(values)], label=None, nbins=2)
    if title:
        fig.suptitle(title, fontsize=TITLE_SIZE + 1, y=1.0, va="top")
    return fig


def normalizer_pairs(names: Sequence[str]) -> list[tuple[str, str]]:
    """``(dense, sparse)`` pairs of model names that differ only in their normalizer: the first
    name of each architecture (the softmax one when present) with every other of it."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(_architecture(name), []).append(name)
    pairs = []
    for group in groups.values():
        group = sorted(group, key=lambda n: normalizer_of(n) not in (None, "softmax"))
        pairs += [(group[0], other) for other in group[1:]]
    return pairs


# --------------------------------------------------------------------------- sparsity


def _legend_handles(styles: Mapping[str, dict], baseline) -> tuple[list, list]:
    handles = [
        plt.Rectangle((0, 0), 1, 1, facecolor=s["color"], hatch=s["hatch"], edgecolor="white")
        for s in styles.values()
    ]
    labels = [normalizer_label(m) for m in styles]
    handles.append(plt.Line2D([], [], marker="o", linestyle="", markersize=2.5, color="0.15"))
    labels.append("per head")
    if baseline:
        handles.append(plt.Line2D([], [], color="black", linewidth=1.2))
        labels.append("random init")
    return handles, labels


def _stage_panel(ax, summaries, metric, baseline, styles, rng) -> None:
    frame, heads = stage_frame(summaries, metric), stage_frame(summaries, metric, True)
    base = stage_frame(baseline, metric) if baseline else None
    stages = list(dict.fromkeys(frame["stage"]))
    bar_w = 0.84 / max(len(summaries), 1)
    for i, model in enumerate(summaries):
        x = np.arange(len(stages)) + (i - (len(summaries) - 1) / 2) * bar_w
        mean = frame[frame.model == model].set_index("stage").reindex(stages)["mean"]
        s = styles[model]
        edge = "white" if s["hatch"] else s["color"]
        ax.bar(
            x,
            mean.to_numpy(dtype=float),
            bar_w * 0.9,
            facecolor=s["color"],
            hatch=s["hatch"],
            edgecolor=edge,
            linewidth=0.4,
            zorder=2,
        )
        for xi, stage in zip(x, stages):
            vals = heads[(heads.model == model) & (heads.stage == stage)]["mean"].to_numpy()
            jitter = rng.uniform(-0.25, 0.25, len(vals)) * bar_w
            ax.scatter(xi + jitter, vals, s=3, color="0.15", alpha=0.7, linewidths=0, zorder=3)
        if base is not None and model in baseline:
            ref = base[base.model == model].set_index("stage").reindex(stages)["mean"]
            ax.hlines(
                ref.to_numpy(dtype=float),
                x - bar_w * 0.45,
                x + bar_w * 0.45,
                color="black",
                lw=1.2,
                zorder=4,
            )
    ax.set_xticks(range(len(stages)), stages)
    ax.set_title(METRIC_LABELS.get(metric, metric))
    if metric in UNIT_AXIS:
        ax.set_ylim(0, 1.02)


def plot_stage_sparsity(
    summaries: Mapping[str, dict],
    metrics: Sequence[str] = ("gini", "zeros_ratio"),
    baseline: Mapping[str, dict] | None = None,
    width: float = 1.0,
):
    """One panel per metric: x = stage (encoder stages, then decoder levels), a bar per model
    (the mean over every map of the stage's blocks), dots: the heads' means, black ticks: the
    same model at random initialisation (``baseline``)."""
    styles = model_styles(list(summaries))
    fig, axes = plt.subplots(1, len(metrics), figsize=figsize(width, 0.36), squeeze=False)
    rng = np.random.default_rng(0)
    for ax, metric in zip(axes[0], metrics):
        _stage_panel(ax, summaries, metric, baseline, styles, rng)
    handles, labels = _legend_handles(styles, baseline)
    ncol = min(len(labels), 4)
    fig.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=ncol)
    fig.tight_layout()
    return fig


def plot_head_sparsity(
    summaries: Mapping[str, dict],
    metric: str,
    baseline: Mapping[str, dict] | None = None,
    width: float = 1.0,
):
    """Per-head means of ``metric``, one heatmap per stage (as wide as its heads): rows are the
    models, each followed by its random initialisation (``baseline``); cells annotated."""
    table = with_baseline(summaries, baseline)
    heads = stage_frame(table, metric, per_head=True)
    stages = list(dict.fromkeys(heads["stage"]))
    widths = [int(heads[heads.stage == s]["head"].max()) + 1 for s in stages]
    rows = list(table)
    lo, hi = (0.0, 1.0) if metric in UNIT_AXIS else (heads["mean"].min(), heads["mean"].max())
    size = figsize(width, min(0.9, 0.14 + 0.05 * len(rows)))
    grid_kw = {"width_ratios": widths}
    fig, axes = plt.subplots(1, len(stages), figsize=size, squeeze=False, gridspec_kw=grid_kw)
    for ax, stage, n in zip(axes[0], stages, widths):
        grid = np.full((len(rows), n), np.nan)
        for r, model in enumerate(rows):
            sel = heads[(heads.model == model) & (heads.stage == stage)]
            grid[r, sel["head"].to_numpy()] = sel["mean"].to_numpy()
        im = ax.imshow(grid, aspect="auto", vmin=lo, vmax=hi, interpolation="nearest")
        for (r, c), v in np.ndenumerate(grid):
            if not np.isnan(v):
                color = "white" if im.norm(v) < 0.55 else "black"
                ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=4.5, color=color)
        ax.set_xticks(range(n), [str(h) for h in range(n)])
        ax.set_yticks(range(len(rows)), [normalizer_label(m) for m in rows])
        ax.tick_params(length=0, labelsize=5, labelleft=ax is axes[0, 0])
        ax.set(title=stage, xlabel="head")
    fig.tight_layout()
    fig.colorbar(im, ax=axes[0].tolist(), label=METRIC_LABELS.get(metric, metric), fraction=0.04)
    return fig
