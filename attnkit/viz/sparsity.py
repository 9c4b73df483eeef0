"""Sparsity of attention maps per layer and head, across models: Gini, zeros ratio, entropy.

Inputs are what ``attnkit analyze`` writes: ``summary.json`` (``{model: summary}`` from
``attnkit.analysis.tables.load_summaries``) for the per-layer and per-head statistics, and
``records.parquet`` (one row per map) for distributions. Random-init models, the thesis's
baseline, are passed as ``baseline`` with the same model names as the trained ones.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from attnkit.viz.axes import COINCIDENT_STYLE, coincident_label, coinciding, fit_legend
from attnkit.viz.labels import (
    RANDOM_SUFFIX,
    layer_label,
    model_colors,
    normalizer_label,
    sort_layers,
)
from attnkit.viz.style import figsize

__all__ = [
    "METRIC_LABELS",
    "SPARSITY_METRICS",
    "head_frame",
    "layer_frame",
    "plot_head_heatmap",
    "plot_metric_by_layer",
    "plot_metric_distribution",
    "plot_sparsity_overview",
    "with_baseline",
]

SPARSITY_METRICS = ("gini", "zeros_ratio", "entropy")
METRIC_LABELS = {
    "gini": "Gini index",
    "zeros_ratio": "ratio of zeros",
    "entropy": "entropy (nats)",
    "support": "support (keys)",
    "paibb": "PAIBB",
    "paibb_head_avg": "PAIBB (head-averaged maps)",
}
BOUNDED = {"gini", "zeros_ratio", "paibb", "paibb_head_avg"}  # metrics in [0, 1]
UNIT_AXIS = {"gini", "zeros_ratio"}  # drawn on a fixed [0, 1] axis


def _layers(summaries: Mapping[str, dict], metric: str) -> list[str]:
    found = [k for s in summaries.values() for k in (s.get(metric) or {})]
    if not found:
        raise KeyError(f"no summary has the metric {metric!r}")
    return sort_layers(found)


def layer_frame(summaries: Mapping[str, dict], metric: str) -> pd.DataFrame:
    """Per model and layer: ``model, layer, label, mean, std, count`` (model and layer order)."""
    rows = []
    for model, summary in summaries.items():
        stats = summary.get(metric) or {}
        for layer in _layers(summaries, metric):
            s = stats.get(layer)
            if s is None:
                continue
            rows.append(
                {
                    "model": model,
                    "layer": layer,
                    "label": layer_label(layer),
                    "mean": s.get("mean", math.nan),
                    "std": s.get("std", math.nan),
                    "count": s.get("count", 0),
                }
            )
    return pd.DataFrame(rows, columns=["model", "layer", "label", "mean", "std", "count"])


def head_frame(summaries: Mapping[str, dict], metric: str) -> pd.DataFrame:
    """Per model, layer and head: ``model, layer, label, head, value`` (the head's mean)."""
    rows = []
    for model, summary in summaries.items():
        stats = summary.get(metric) or {}
        for layer in _layers(summaries, metric):
            for head, value in enumerate((stats.get(layer) or {}).get("per_head", [])):
                v = math.nan if value is None else float(value)
                label = layer_label(layer)
                rows.append(
                    {"model": model, "layer": layer, "label": label, "head": head, "value": v}
                )
    return pd.DataFrame(rows, columns=["model", "layer", "label", "head", "value"])


def with_baseline(
    summaries: Mapping[str, dict], baseline: Mapping[str, dict] | None = None
) -> dict[str, dict]:
    """Trained and random-init summaries in one dict, each model followed by its baseline."""
    out = {}
    for name, summary in summaries.items():
        out[name] = summary
        if baseline and name in baseline:
            out[name + RANDOM_SUFFIX] = baseline[name]
    for name, summary in (baseline or {}).items():
        if name not in summaries:
            out[name + RANDOM_SUFFIX] = summary
    return out


def plot_metric_by_layer(
    summaries: Mapping[str, dict],
    metric: str,
    baseline: Mapping[str, dict] | None = None,
    ax=None,
    head_dots: bool = True,
    legend: bool = True,
    width: float = 0.6,
):
    """Grouped bars: x = layer, one bar per model (its mean over all maps), per-head means as dots.

    ``baseline`` (random-init summaries, same model names) are drawn as black ticks across
    each model's bar. Returns the figure.
    """
    frame = layer_frame(summaries, metric)
    heads = head_frame(summaries, metric)
    base = layer_frame(baseline, metric) if baseline else None
    layers = _layers(summaries, metric)
    models = list(summaries)
    colors = model_colors(models)
    if ax is None:
        _, ax = plt.subplots(figsize=figsize(width, aspect=0.7))
    n = len(models)
    bar_w = 0.8 / n
    rng = np.random.default_rng(0)
    for i, model in enumerate(models):
        x = np.arange(len(layers)) + (i - (n - 1) / 2) * bar_w
        mine = frame[frame.model == model].set_index("layer").reindex(layers)
        ax.bar(
            x,
            mine["mean"].to_numpy(dtype=float),
            bar_w * 0.92,
            color=colors[model],
            label=normalizer_label(model),
            zorder=2,
        )
        if head_dots:
            for j, layer in enumerate(layers):
                vals = heads[(heads.model == model) & (heads.layer == layer)]["value"].to_numpy()
                jitter = rng.uniform(-0.25, 0.25, len(vals)) * bar_w
                ax.scatter(
                    x[j] + jitter, vals, s=4, color="0.15", alpha=0.7, linewidths=0, zorder=3
                )
        if base is not None:
            ref = base[base.model == model].set_index("layer").reindex(layers)["mean"]
            ax.hlines(
                ref.to_numpy(dtype=float),
                x - bar_w * 0.46,
                x + bar_w * 0.46,
                color="black",
                linewidth=1.4,
                zorder=4,
                label="random init" if i == 0 else None,
            )
    ax.set_xticks(np.arange(len(layers)), [layer_label(x) for x in layers])
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    if metric in UNIT_AXIS:
        ax.set_ylim(0, 1.02)
    if legend:
        ax.legend(fontsize="small", ncol=2)
    return ax.figure


def plot_sparsity_overview(
    summaries: Mapping[str, dict],
    baseline: Mapping[str, dict] | None = None,
    metrics: Sequence[str] = SPARSITY_METRICS,
    width: float = 1.0,
):
    """One :func:`plot_metric_by_layer` panel per metric, with one legend above them."""
    fig, axes = plt.subplots(1, len(metrics), figsize=figsize(width, aspect=0.34), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        plot_metric_by_layer(summaries, metric, baseline, ax=ax, legend=False)
        ax.set_title(METRIC_LABELS.get(metric, metric))
        ax.set_ylabel("")
        ax.tick_params(axis="x", labelrotation=0)
    handles, labels = axes[0][0].get_legend_handles_labels()
    handles.append(plt.Line2D([], [], marker="o", linestyle="", markersize=2.5, color="0.15"))
    labels.append("per head")
    fit_legend(fig, handles, labels, max_ncol=6, loc="lower center", bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout()
    return fig


def _short(value: float) -> str:
    """A cell annotation: ``.42`` for values in [0, 1), one decimal above."""
    text = f"{value:.2f}" if abs(value) < 1 else f"{value:.1f}"
    return text.replace("0.", ".", 1) if text.startswith("0.") else text


def plot_head_heatmap(
    summaries: Mapping[str, dict],
    metric: str,
    baseline: Mapping[str, dict] | None = None,
    annotate: bool | None = None,
    cmap: str = "viridis",
    width: float = 1.0,
):
    """Heatmap of per-head means: rows model (random init below its trained model), columns
    (layer, head) grouped by layer. Cells are annotated when there are few enough of them."""
    table = with_baseline(summaries, baseline)
    heads = head_frame(table, metric)
    layers = _layers(table, metric)
    n_heads = int(heads["head"].max()) + 1 if len(heads) else 0
    grid = np.full((len(table), len(layers) * n_heads), np.nan)
    for r, model in enumerate(table):
        for c, layer in enumerate(layers):
            sel = heads[(heads.model == model) & (heads.layer == layer)]
            grid[r, c * n_heads + sel["head"].to_numpy()] = sel["value"].to_numpy()
    bounded = metric in UNIT_AXIS
    fig, ax = plt.subplots(figsize=figsize(width, aspect=min(0.9, 0.12 + 0.05 * len(table))))
    im = ax.imshow(
        grid,
        aspect="auto",
        cmap=cmap,
        vmin=0 if bounded else None,
        vmax=1 if bounded else None,
        interpolation="nearest",
    )
    if annotate is None:
        annotate = grid.size <= 200
    if annotate:
        for (r, c), v in np.ndenumerate(grid):
            if not np.isnan(v):
                light = im.norm(v) < 0.55
                ax.text(
                    c,
                    r,
                    _short(v),
                    ha="center",
                    va="center",
                    fontsize=4.5,
                    color="white" if light else "black",
                )
    for c in range(1, len(layers)):
        ax.axvline(c * n_heads - 0.5, color="white", linewidth=1.5)
    ax.set_yticks(range(len(table)), [normalizer_label(m) for m in table])
    ax.set_xticks(range(grid.shape[1]), [str(h) for _ in layers for h in range(n_heads)])
    ax.tick_params(axis="x", labelsize=5, length=0)
    ax.tick_params(axis="y", length=0)
    for c, layer in enumerate(layers):
        ax.text((c + 0.5) * n_heads - 0.5, -0.7, layer_label(layer), ha="center", va="bottom")
    ax.set_xlabel("head")
    for side in ("left", "bottom"):
        ax.spines[side].set_visible(False)
    fig.colorbar(im, ax=ax, label=METRIC_LABELS.get(metric, metric), fraction=0.04, pad=0.02)
    fig.tight_layout()
    return fig


def _ecdf(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.sort(values[~np.isnan(values)])
    return x, np.arange(1, len(x) + 1) / max(len(x), 1)


def plot_metric_distribution(
    records: pd.DataFrame,
    metric: str = "gini",
    kind: str = "ecdf",
    layers: Sequence[str] | None = None,
    width: float = 1.0,
):
    """Distribution of the per-map ``metric`` by layer and model (from :func:`load_records`).

    ``kind="ecdf"``: one panel per layer, one ECDF per model (random-init models, named with
    the ``(random init)`` suffix, dashed). ``kind="violin"``: x = layer, one violin per model.
    """
    layers = list(layers) if layers is not None else sort_layers(records["layer"].unique())
    models = list(dict.fromkeys(records["model"]))
    colors = model_colors(models)
    if kind == "violin":
        import seaborn as sns

        fig, ax = plt.subplots(figsize=figsize(width, aspect=0.4))
        data = records[records["layer"].isin(layers)].assign(
            label=lambda d: d["layer"].map(layer_label),
            who=lambda d: d["model"].map(normalizer_label),
        )
        sns.violinplot(
            data=data,
            x="label",
            y=metric,
            hue="who",
            order=[layer_label(x) for x in layers],
            hue_order=[normalizer_label(m) for m in models],
            palette={normalizer_label(m): colors[m] for m in models},
            cut=0,
            density_norm="width",
            inner="quartile",
            linewidth=0.5,
            ax=ax,
        )
        ax.set_xlabel("")
        ax.set_ylabel(METRIC_LABELS.get(metric, metric))
        ax.legend(
            fontsize="small",
            ncol=min(len(models), 4),
            loc="lower center",
            bbox_to_anchor=(0.5, 1.0),
        )
        fig.tight_layout()
        return fig
    if kind != "ecdf":
        raise ValueError(f"kind must be 'ecdf' or 'violin', got {kind!r}")
    fig, axes = plt.subplots(
        1, len(layers), figsize=figsize(width, aspect=0.36), squeeze=False, sharey=True
    )
    hidden: dict[str, tuple[str, list[str]]] = {}  # later model -> (earlier, panels)
    for ax, layer in zip(axes[0], layers):
        curves = {}
        for model in models:
            sel = records[(records["model"] == model) & (records["layer"] == layer)]
            curves[model] = _ecdf(sel[metric].to_numpy(dtype=float))
        same = coinciding(curves)
        for model, (x, y) in curves.items():
            style = {"linestyle": "--" if model.endswith(RANDOM_SUFFIX) else "-"}
            if model in same:
                style = COINCIDENT_STYLE
                hidden.setdefault(model, (same[model], []))[1].append(layer_label(layer))
            ax.step(
                x,
                y,
                where="post",
                color=colors[model],
                linewidth=1.0,
                label=normalizer_label(model),
                **style,
            )
        ax.set_title(layer_label(layer))
        ax.set_xlabel(METRIC_LABELS.get(metric, metric))
        if metric in BOUNDED:
            ax.set_xlim(-0.02, 1.02)
    axes[0][0].set_ylabel("fraction of maps")
    handles, labels = _style_legend(models, colors, _coincidence_notes(hidden, len(layers)))
    fit_legend(fig, handles, labels, loc="lower center", bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout()
    return fig


def _coincidence_notes(hidden: Mapping[str, tuple[str, list[str]]], panels: int) -> dict:
    """``{model: legend label}`` of models whose curve lies on another's (:func:`coinciding`):
    ``α-entmax (= 1.5-entmax at init)`` when both are random-init models."""
    notes = {}
    for model, (other, where) in hidden.items():
        both_random = model.endswith(RANDOM_SUFFIX) and other.endswith(RANDOM_SUFFIX)
        mine, theirs = (m.removesuffix(RANDOM_SUFFIX) if both_random else m for m in (model, other))
        note = "at init" if both_random else ""
        if len(where) < panels:
            note = f"{note} in {', '.join(where)}".strip()
        notes[mine] = coincident_label(normalizer_label(mine), normalizer_label(theirs), note)
    return notes


def _style_legend(
    models: Sequence[str], colors: Mapping[str, object], notes: Mapping[str, str] | None = None
):
    """Legend entries: one colour per trained model, then line styles for trained / random init
    when random-init models are present (instead of one entry per model and state).

    ``notes``: labels replacing a model's entry (a curve that lies on another's); an entry is
    added for a model that has no colour entry of its own."""
    notes = dict(notes or {})
    trained = [m for m in models if not m.endswith(RANDOM_SUFFIX)]
    has_random = len(trained) < len(models)
    bases = trained + [
        m.removesuffix(RANDOM_SUFFIX)
        for m in models
        if m.endswith(RANDOM_SUFFIX) and m.removesuffix(RANDOM_SUFFIX) not in trained
    ]
    handles = [
        plt.Line2D([], [], color=colors.get(m, colors.get(m + RANDOM_SUFFIX))) for m in bases
    ]
    labels = [notes.pop(m, normalizer_label(m)) for m in bases]
    for model, label in notes.items():  # coinciding curves without an entry of their own
        handles.append(plt.Line2D([], [], color=colors.get(model, "0.3"), **_legend_style()))
        labels.append(label)
    if has_random:
        handles += [
            plt.Line2D([], [], color="0.3", linestyle="-"),
            plt.Line2D([], [], color="0.3", linestyle="--"),
        ]
        labels += ["trained", "random init"]
    return handles, labels


def _legend_style() -> dict:
    return {k: v for k, v in COINCIDENT_STYLE.items() if k not in ("markevery", "zorder")}
