"""DETR's Hungarian matching made visible: matched pairs, the cost terms, the unmatched queries.

Each figure takes one :class:`~attnkit.analysis.inspect.ImageInspection`. Matched pairs share a
colour in every view (ordered by ground-truth index): the image with the matched boxes joined
centre to centre, the three weighted cost terms as heatmaps with the matched cells marked, and
the scores of all queries. :func:`matching_table` gives the numbers as a DataFrame and
:func:`tables_markdown` as markdown for the workbook summary.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from attnkit.analysis.inspect import COST_TERMS
from attnkit.viz.attention import LABEL_SIZE, TITLE_SIZE, draw_box, image_grid
from attnkit.viz.box_labels import place_label, select_boxes
from attnkit.viz.labels import normalizer_label
from attnkit.viz.style import figsize

__all__ = [
    "UNMATCHED_COLOR",
    "matching_table",
    "pair_colors",
    "plot_cost_terms",
    "plot_matching",
    "plot_query_scores",
    "tables_markdown",
]

UNMATCHED_COLOR = "0.55"
COST_CMAP = "viridis"


def pair_colors(n: int) -> list:
    """``n`` distinguishable colours, one per matched pair."""
    import seaborn as sns

    return sns.color_palette("tab10" if n <= 10 else "husl", max(n, 1))


def _pairs(inspection) -> list[tuple[int, int]]:
    """``[(query, target)]`` of the matches, ordered by ground-truth index."""
    pairs = zip(inspection.match_queries.tolist(), inspection.match_targets.tolist())
    return sorted(pairs, key=lambda p: p[1])


def _centre(box) -> tuple[float, float]:
    x0, y0, x1, y1 = (float(v) for v in box)
    return (x0 + x1) / 2, (y0 + y1) / 2


def _unmatched_queries(
    inspection, unmatched: str, nms_iou: float | None = None, top_k: int | None = None
) -> list[int]:
    matched = set(inspection.match_queries.tolist())
    if unmatched == "none":
        return []
    if unmatched == "detected":
        pool = inspection.detected.nonzero().flatten().tolist()
    elif unmatched == "all":
        pool = range(inspection.num_queries)
    else:
        raise ValueError(f"unmatched must be 'all', 'detected' or 'none', got {unmatched!r}")
    pool = [q for q in pool if q not in matched]
    if (nms_iou is None and top_k is None) or not pool:
        return pool
    index = torch.tensor(pool, dtype=torch.int64)
    keep = select_boxes(
        inspection.boxes[index],
        inspection.scores[index],
        inspection.labels[index],
        nms_iou=nms_iou,
        top_k=top_k,
    )
    return [pool[k] for k in keep]


def plot_matching(
    inspection,
    ax=None,
    unmatched: str = "all",
    width: float = 0.6,
    nms_iou: float | None = None,
    top_k: int | None = None,
):
    """The image with each matched (prediction, ground truth) pair in its own colour.

    Predicted box solid, ground truth dashed, a line joining their centres; labels (``GT t`` at
    the ground truth's centre, ``q<query>`` at the prediction) are placed clear of each other
    inside the image. ``unmatched``: which unmatched queries to draw, faint grey: ``"all"``,
    ``"detected"`` (score over the threshold: false positives and duplicates) or ``"none"``;
    thinned for display by per-class NMS at IoU ``nms_iou`` and the ``top_k`` best (None: all).
    """
    if ax is None:
        _, axes = image_grid(
            1, 1, inspection.image_size, figsize(width)[0], (0.02, 0.02, 0.32, 0.3), max_cell=4.0
        )
        ax = axes[0, 0]
    ax.imshow(inspection.image)
    ax.set_xlim(0, inspection.image.width)
    ax.set_ylim(inspection.image.height, 0)
    for q in _unmatched_queries(inspection, unmatched, nms_iou, top_k):
        draw_box(ax, inspection.boxes[q], UNMATCHED_COLOR, linewidth=0.5, alpha=0.6)
    pairs = _pairs(inspection)
    colors = pair_colors(len(pairs))
    for color, (q, t) in zip(colors, pairs):
        draw_box(ax, inspection.gt_boxes[t], color, dashed=True, linewidth=1.0)
        draw_box(ax, inspection.boxes[q], color, linewidth=1.0)
        (px, py), (gx, gy) = _centre(inspection.boxes[q]), _centre(inspection.gt_boxes[t])
        ax.plot([px, gx], [py, gy], color=color, linewidth=1.0)
        ax.plot([px], [py], "o", color=color, markersize=2.5)
    for color, (_, t) in zip(colors, pairs):  # ground truth first: their labels sit centred
        box = inspection.gt_boxes[t]
        place_label(ax, box, f"GT {t}", color, prefer="centre", fontsize=LABEL_SIZE - 1)
    for color, (q, _) in zip(colors, pairs):
        place_label(ax, inspection.boxes[q], f"q{q}", color, fontsize=LABEL_SIZE - 1, alpha=0.8)
    thinned = [f"NMS {nms_iou:g}" if nms_iou is not None else "", f"top {top_k}" if top_k else ""]
    thinned = ", ".join(t for t in thinned if t)
    handles = [
        Line2D([], [], color="0.1", linewidth=1.0, label="matched prediction"),
        Line2D([], [], color="0.1", linewidth=1.0, linestyle=(0, (3, 2)), label="its ground truth"),
        Line2D(
            [],
            [],
            color=UNMATCHED_COLOR,
            linewidth=0.6,
            label=f"unmatched ({unmatched}{', ' + thinned if thinned else ''})",
        ),
    ]
    ax.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        ncol=3,
        fontsize=LABEL_SIZE,
        handlelength=2.2,
        borderaxespad=0.3,
    )
    ax.set_title(
        f"{normalizer_label(inspection.model_name)}, image #{inspection.image_id}: {len(pairs)} matched pairs, "
        f"{len(inspection.gt_boxes)} GT, {inspection.num_queries} queries",
        fontsize=TITLE_SIZE,
    )
    return ax.figure


def _cost_rows(inspection, queries: Sequence[int] | None, max_queries: int) -> list[int]:
    """The queries to show as rows: all when few, else the matched ones and the best scores."""
    if queries is not None:
        return list(queries)
    if inspection.num_queries <= max_queries:
        return list(range(inspection.num_queries))
    keep = set(inspection.match_queries.tolist())
    for q in torch.argsort(inspection.scores, descending=True).tolist():
        if len(keep) >= max_queries:
            break
        keep.add(q)
    return sorted(keep)


def plot_cost_terms(
    inspection,
    queries: Sequence[int] | None = None,
    max_queries: int = 30,
    show_total: bool = True,
    width: float = 1.0,
):
    """The matcher's cost split into its weighted class, L1 and GIoU terms (and their total).

    One heatmap per term, rows = queries, columns = ground-truth objects, each with its own
    colourbar; the matched cells (the assignment of minimal total cost) are outlined in their
    pair colour. ``queries``: rows to show; None: all, or when there are more than
    ``max_queries``, the matched queries and the highest scores.
    """
    rows = _cost_rows(inspection, queries, max_queries)
    terms = inspection.weighted_costs()
    panels = [
        (f"{label}: {inspection.cost_weights[k]:g} \u00d7 " + _TERM_TEXT[k], terms[k])
        for k, (label, _) in COST_TERMS.items()
    ]
    if show_total:
        panels.append(("total = matcher cost", inspection.total_cost()))
    n_gt = max(1, len(inspection.gt_boxes))
    height = min(9.0, 0.9 + 0.11 * len(rows))
    fig, axes = plt.subplots(
        1, len(panels), figsize=(figsize(width)[0], height), sharey=True, layout="constrained"
    )
    pairs = _pairs(inspection)
    colors = pair_colors(len(pairs))
    row_of = {q: i for i, q in enumerate(rows)}
    gt_labels = [f"{t}: {inspection.class_name(c)}" for t, c in enumerate(inspection.gt_labels)]
    for ax, (title, cost) in zip(axes, panels):
        values = cost[rows].numpy() if len(inspection.gt_boxes) else np.zeros((len(rows), 1))
        im = ax.imshow(values, cmap=COST_CMAP, aspect="auto", interpolation="nearest")
        for color, (q, t) in zip(colors, pairs):
            if q in row_of:
                ax.add_patch(
                    Rectangle(
                        (t - 0.5, row_of[q] - 0.5), 1, 1, fill=False, edgecolor=color, linewidth=1.6
                    )
                )
                ax.add_patch(
                    Rectangle(
                        (t - 0.5, row_of[q] - 0.5),
                        1,
                        1,
                        fill=False,
                        edgecolor="white",
                        linewidth=0.5,
                    )
                )
        ax.set_title(title, fontsize=LABEL_SIZE)
        ax.set_xticks(
            range(n_gt), gt_labels or ["(no GT)"], rotation=60, ha="right", fontsize=LABEL_SIZE - 1
        )
        ax.set_xlabel("ground truth", fontsize=LABEL_SIZE)
        ax.tick_params(length=1.5, pad=1)
        cbar = fig.colorbar(im, ax=ax, location="bottom", shrink=0.9, aspect=15, pad=0.02)
        cbar.ax.tick_params(labelsize=LABEL_SIZE - 1, length=1.5)
        cbar.locator = plt.MaxNLocator(3)
        cbar.update_ticks()
    axes[0].set_yticks(range(len(rows)), [f"q{q}" for q in rows], fontsize=LABEL_SIZE - 1)
    axes[0].set_ylabel("query", fontsize=LABEL_SIZE)
    fig.suptitle(
        f"{normalizer_label(inspection.model_name)}, image #{inspection.image_id}: matching cost terms (weighted as "
        "the matcher does; lower is better), matched cells outlined",
        fontsize=TITLE_SIZE,
    )
    return fig


_TERM_TEXT = {"class": "(\u2212p(class))", "bbox": "L1(cxcywh)", "giou": "(\u2212GIoU)"}


def plot_query_scores(inspection, ax=None, width: float = 1.0):
    """Every query's score (best real class): matched ones in their pair colour, others grey.

    The dashed line is the detection threshold; grey bars above it are unmatched detections
    (duplicates or false positives), which the set loss pushes towards "no object".
    """
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize(width, 0.3), layout="constrained")
    pairs = _pairs(inspection)
    colour_of = dict(zip((q for q, _ in pairs), pair_colors(len(pairs))))
    queries = np.arange(inspection.num_queries)
    colors = [colour_of.get(int(q), UNMATCHED_COLOR) for q in queries]
    ax.bar(queries, inspection.scores.numpy(), color=colors, width=0.8)
    ax.axhline(inspection.score_threshold, color="0.2", linestyle="--", linewidth=0.8)
    ax.text(
        queries[-1] + 0.5,
        inspection.score_threshold,
        f" threshold {inspection.score_threshold:g}",
        fontsize=LABEL_SIZE - 1,
        va="bottom",
        ha="right",
    )
    ax.set_xlim(-0.6, inspection.num_queries - 0.4)
    ax.set_ylim(0, 1)
    step = max(1, inspection.num_queries // 25)
    ax.set_xticks(queries[::step])
    ax.tick_params(labelsize=LABEL_SIZE)
    ax.set_xlabel("query", fontsize=LABEL_SIZE)
    ax.set_ylabel("score", fontsize=LABEL_SIZE)
    unmatched_det = len(_unmatched_queries(inspection, "detected"))
    ax.set_title(
        f"{normalizer_label(inspection.model_name)}, image #{inspection.image_id}: query scores (colour: matched "
        f"pair, grey: unmatched; {unmatched_det} unmatched above the threshold)",
        fontsize=TITLE_SIZE,
    )
    return ax.figure


def matching_table(inspection, queries: str = "matched+detected") -> pd.DataFrame:
    """One row per query: its match, classes, score, the weighted cost terms and the IoU.

    ``queries``: ``"matched+detected"`` (the matched queries and the unmatched detections) or
    ``"all"``. Cost and IoU columns are against the matched ground truth (NaN if unmatched).
    """
    if queries not in ("matched+detected", "all"):
        raise ValueError(f"queries must be 'matched+detected' or 'all', got {queries!r}")
    matched = dict(zip(inspection.match_queries.tolist(), inspection.match_targets.tolist()))
    chosen = (
        range(inspection.num_queries)
        if queries == "all"
        else sorted(set(matched) | set(inspection.detected.nonzero().flatten().tolist()))
    )
    terms = inspection.weighted_costs()
    iou = dict(zip(inspection.match_queries.tolist(), inspection.matched_iou().tolist()))
    rows = []
    for q in chosen:
        t = matched.get(q)
        row = {
            "query": q,
            "matched_gt": t,
            "gt_class": inspection.class_name(inspection.gt_labels[t]) if t is not None else "",
            "pred_class": inspection.class_name(inspection.labels[q]),
            "score": float(inspection.scores[q]),
            "detected": bool(inspection.detected[q]),
        }
        for k in COST_TERMS:
            row[f"cost_{k}"] = float(terms[k][q, t]) if t is not None else float("nan")
        row["cost_total"] = sum(row[f"cost_{k}"] for k in COST_TERMS)
        row["iou"] = iou.get(q, float("nan"))
        rows.append(row)
    table = pd.DataFrame(rows, columns=_TABLE_COLUMNS)
    table["matched_gt"] = table["matched_gt"].astype("Int64")
    return table.sort_values(["matched_gt", "score"], ascending=[True, False], na_position="last")


_TABLE_COLUMNS = [
    "query",
    "matched_gt",
    "gt_class",
    "pred_class",
    "score",
    "detected",
    "cost_class",
    "cost_bbox",
    "cost_giou",
    "cost_total",
    "iou",
]


def tables_markdown(tables: Mapping[str, pd.DataFrame], digits: int = 3) -> str:
    """Markdown of several tables, each under a ``### <key>`` heading (no extra dependency)."""

    def cell(v) -> str:
        if isinstance(v, float | np.floating):
            return "" if np.isnan(v) else f"{v:.{digits}f}"
        return "" if v is pd.NA or v is None else str(v)

    parts = []
    for title, table in tables.items():
        lines = [
            f"### {title}",
            "",
            "| " + " | ".join(map(str, table.columns)) + " |",
            "|" + "---|" * len(table.columns),
        ]
        lines += [
            "| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)
        ]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"
