"""alpha-entmax over training: the learned alpha per layer and head, its gradients, the lr drop.

The training log (``metrics.jsonl``) has, on every logged train step, ``alpha/<module name>``:
one alpha per head of each alpha-entmax attention, ``grad_norm/pre_alpha`` and
``grad_norm/other`` (the gradient norm of all ``pre_alpha`` parameters against all others,
before clipping), ``grad_norm/total`` (what clipping saw) and the lr of every parameter group.
alpha = 1 is softmax, 1.5 is 1.5-entmax (where ``pre_alpha = 0`` starts), 2 is sparsemax.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.ticker import ScalarFormatter

from attnkit.viz.axes import COINCIDENT_STYLE, coincident_label, coinciding, step_axis
from attnkit.viz.curves import lr_drop_steps, metrics_frame, smooth
from attnkit.viz.labels import layer_label, sort_layers
from attnkit.viz.style import figsize

__all__ = [
    "reference_alpha_lines",
    "ALPHA_PREFIX",
    "alpha_change_table",
    "alpha_history",
    "final_alphas",
    "plot_alpha_curves",
    "plot_alpha_final",
    "plot_alpha_heatmap",
    "plot_grad_norms",
]

ALPHA_PREFIX = "alpha/"
REFERENCE_ALPHAS = {1.0: "softmax", 1.5: "1.5-entmax", 2.0: "sparsemax"}
GRAD_SERIES = {
    "grad_norm/pre_alpha": "pre_alpha",
    "grad_norm/other": "other parameters",
    "grad_norm/total": "total (before clipping)",
}


def alpha_history(records: Sequence[Mapping]) -> pd.DataFrame:
    """Long table of the logged alphas: columns ``step, layer, head, alpha``.

    ``layer`` is the attention module's name; rows are sorted by layer (model order), head and
    step; a step logged twice keeps its last record. Empty (with those columns) when no record
    holds an alpha.
    """
    latest: dict[int, Mapping] = {}
    for r in records:
        if r.get("kind", "train") == "train" and any(k.startswith(ALPHA_PREFIX) for k in r):
            latest[int(r["step"])] = r
    rows = [
        (step, key[len(ALPHA_PREFIX) :], head, float(a))
        for step, r in latest.items()
        for key, values in r.items()
        if key.startswith(ALPHA_PREFIX) and values is not None
        for head, a in enumerate(values)
    ]
    frame = pd.DataFrame(rows, columns=["step", "layer", "head", "alpha"])
    order = {name: i for i, name in enumerate(sort_layers(frame["layer"]))}
    frame = frame.assign(_o=frame["layer"].map(order))
    frame = frame.sort_values(["_o", "head", "step"]).drop(columns="_o")
    return frame.astype({"step": "int64", "head": "int64", "alpha": "float64"}).reset_index(
        drop=True
    )


def final_alphas(source: str | Path | Sequence[Mapping] | pd.DataFrame) -> pd.DataFrame:
    """The last alphas: ``layer, head, alpha``.

    ``source`` is a checkpoint (``.pt``: the model's own ``pre_alpha``, exact even when the
    last step was not logged), a history from :func:`alpha_history`, or training records.
    """
    if isinstance(source, str | Path) and Path(source).suffix == ".pt":
        from attnkit.attention import alpha_values
        from attnkit.models.loading import model_from_checkpoint

        model, _ = model_from_checkpoint(source)
        rows = [
            (name, head, float(a))
            for name, alphas in alpha_values(model).items()
            for head, a in enumerate(alphas.tolist())
        ]
        frame = pd.DataFrame(rows, columns=["layer", "head", "alpha"])
    else:
        history = source if isinstance(source, pd.DataFrame) else alpha_history(source)
        last = history[history["step"] == history["step"].max()]
        frame = last[["layer", "head", "alpha"]]
    order = {name: i for i, name in enumerate(sort_layers(frame["layer"]))}
    frame = frame.assign(_o=frame["layer"].map(order)).sort_values(["_o", "head"])
    return frame.drop(columns="_o").reset_index(drop=True)


def _drop_lines(axes, drops: Sequence[int]) -> None:
    for ax in np.atleast_1d(axes):
        for step in drops:
            ax.axvline(step, color="0.35", linestyle="--", linewidth=0.8, zorder=0)


def _head_colors(n: int):
    return sns.color_palette("husl", n) if n > 10 else sns.color_palette("tab10", n)


def plot_alpha_heatmap(
    history: pd.DataFrame, lr_drops: Sequence[int] = (), width: float = 1.0, center: float = 1.5
):
    """Heatmap of alpha: rows (layer, head), columns logged steps; a diverging colour scale
    centred on ``center`` (the initial 1.5): blue towards softmax, red towards sparsemax."""
    if history.empty:
        raise ValueError("no alpha in the records: was any attention alpha_entmax?")
    layers = list(dict.fromkeys(history["layer"]))
    table = history.pivot_table(index=["layer", "head"], columns="step", values="alpha")
    table = table.reindex(
        pd.MultiIndex.from_tuples(
            [
                (lay, h)
                for lay in layers
                for h in sorted(history[history.layer == lay]["head"].unique())
            ]
        )
    )
    steps = table.columns.to_numpy(dtype=float)
    edges = np.concatenate([steps[:1] - 0.5, (steps[1:] + steps[:-1]) / 2, steps[-1:] + 0.5])
    values = table.to_numpy()
    span = max(float(np.nanmax(np.abs(values - center))), 1e-4)
    fig, ax = plt.subplots(figsize=figsize(width, aspect=min(0.75, 0.15 + 0.018 * len(table))))
    mesh = ax.pcolormesh(
        edges,
        np.arange(len(table) + 1) - 0.5,
        values,
        cmap="RdBu_r",
        vmin=center - span,
        vmax=center + span,
        shading="flat",
    )
    ax.invert_yaxis()
    row = 0
    ticks, labels = [], []
    for layer in layers:
        n = history[history.layer == layer]["head"].nunique()
        ticks.append(row + (n - 1) / 2)
        labels.append(layer_label(layer))
        if row:
            ax.axhline(row - 0.5, color="black", linewidth=0.8)
        row += n
    ax.set_yticks(ticks, labels)
    ax.set_yticks(np.arange(len(table)), minor=True)
    ax.tick_params(axis="y", which="minor", length=1.5)
    ax.set_ylabel("heads per layer (top: head 0)")
    ax.set_xlabel("step")
    _drop_lines(ax, lr_drops)
    cbar = fig.colorbar(mesh, ax=ax, label=r"$\alpha$", fraction=0.04, pad=0.02)
    cbar.formatter = ScalarFormatter(useOffset=False)
    cbar.update_ticks()
    step_axis(ax)
    fig.tight_layout()
    return fig


def plot_alpha_curves(
    history: pd.DataFrame, lr_drops: Sequence[int] = (), smoothing: float = 0.0, width=1.0
):
    """alpha against step: one panel per layer, one line per head; the lr drop dashed."""
    if history.empty:
        raise ValueError("no alpha in the records: was any attention alpha_entmax?")
    layers = list(dict.fromkeys(history["layer"]))
    n_heads = int(history["head"].max()) + 1
    colors = _head_colors(n_heads)
    ncols = min(len(layers), 3)
    nrows = math.ceil(len(layers) / ncols)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=figsize(width, aspect=0.36 * nrows * 3 / max(ncols, 3)),
        squeeze=False,
        sharey=True,
        sharex=True,
    )
    for ax in axes.flat[len(layers) :]:
        ax.set_visible(False)
    for ax, layer in zip(axes.flat, layers):
        mine = history[history.layer == layer]
        for head, rows in mine.groupby("head"):
            ax.plot(
                rows["step"],
                smooth(rows["alpha"].to_numpy(), smoothing),
                color=colors[int(head)],
                linewidth=1.0,
                label=str(head),
            )
        ax.axhline(1.5, color="0.7", linewidth=0.6, zorder=0)
        ax.set_title(layer_label(layer))
        ax.set_xlabel("step")
        step_axis(ax)
        ax.yaxis.set_major_formatter(ScalarFormatter(useOffset=False))
        _drop_lines(ax, lr_drops)
    for ax in axes[:, 0]:
        ax.set_ylabel(r"$\alpha$")
    # the panel with the most heads (MaxViT's stages have 2, 4, 8 ... heads)
    handles, labels = max(
        (ax.get_legend_handles_labels() for ax in axes.flat), key=lambda h: len(h[0])
    )
    fig.legend(
        handles,
        labels,
        title="head",
        loc="lower center",
        bbox_to_anchor=(0.5, 1.0),
        ncol=min(n_heads, 10),
        handlelength=1.2,
        columnspacing=1.0,
    )
    fig.tight_layout()
    return fig


def reference_alpha_lines(ax, lo: float, hi: float) -> None:
    """Dotted lines at the named alphas (softmax 1, 1.5-entmax, sparsemax 2) that lie within 0.1
    of the plotted range ``[lo, hi]``, labelled at the right edge."""
    for value, name in REFERENCE_ALPHAS.items():
        if lo - 0.1 <= value <= hi + 0.1:
            ax.axhline(value, color="0.6", linestyle=":", linewidth=0.8, zorder=0)
            ax.annotate(
                name,
                (1.0, value),
                xycoords=("axes fraction", "data"),
                xytext=(2, 0),
                textcoords="offset points",
                fontsize=6,
                va="center",
                color="0.4",
            )


def plot_alpha_final(final: pd.DataFrame, width: float = 0.6):
    """The final alphas: x = layer, one dot per head (numbered), references at 1, 1.5, 2."""
    if final.empty:
        raise ValueError("no final alphas")
    layers = list(dict.fromkeys(final["layer"]))
    n_heads = int(final["head"].max()) + 1
    colors = _head_colors(n_heads)
    fig, ax = plt.subplots(figsize=figsize(width, aspect=0.75))
    for x, layer in enumerate(layers):
        mine = final[final.layer == layer].sort_values("alpha")
        offsets = np.linspace(-0.25, 0.25, len(mine)) if len(mine) > 1 else np.zeros(1)
        for off, (_, r) in zip(offsets, mine.iterrows()):
            ax.scatter(x + off, r["alpha"], s=14, color=colors[int(r["head"])], zorder=3)
            ax.annotate(
                str(int(r["head"])),
                (x + off, r["alpha"]),
                xytext=(3, 0),
                textcoords="offset points",
                fontsize=5,
                va="center",
            )
        ax.hlines(mine["alpha"].mean(), x - 0.32, x + 0.32, color="black", linewidth=1.0, zorder=2)
    lo, hi = final["alpha"].min(), final["alpha"].max()
    reference_alpha_lines(ax, lo, hi)
    ax.set_xticks(range(len(layers)), [layer_label(x) for x in layers])
    ax.set_xlim(-0.5, len(layers) - 0.5)
    ax.set_ylabel(r"final $\alpha$")
    ax.yaxis.set_major_formatter(ScalarFormatter(useOffset=False))
    fig.tight_layout()
    return fig


def plot_grad_norms(
    records: Sequence[Mapping], smoothing: float = 0.0, width: float = 1.0, show_lr: bool = True
):
    """Gradient norms of ``pre_alpha`` against the other parameters over steps (log scale),
    and the lr of every parameter group (log scale) below; the lr drop dashed in both."""
    frame = metrics_frame(records, "train")
    series = [k for k in GRAD_SERIES if k in frame and frame[k].notna().any()]
    if not series:
        raise ValueError("no grad_norm/* in the records (logged on logged steps only)")
    lr_keys = [k for k in frame if k.startswith("lr/")] if show_lr else []
    nrows = 2 if lr_keys else 1
    fig, axes = plt.subplots(
        nrows,
        1,
        figsize=figsize(width, aspect=0.28 * nrows + 0.05),
        sharex=True,
        squeeze=False,
        gridspec_kw={"height_ratios": [2, 1][:nrows]},
    )
    ax = axes[0, 0]
    palette = dict(zip(GRAD_SERIES, sns.color_palette("deep")[3:6]))
    curves = {k: (frame["step"], smooth(frame[k].to_numpy(dtype=float), smoothing)) for k in series}
    same = coinciding(curves, log=True)  # total = other when pre_alpha's gradient is tiny
    for key in series:
        rows = frame[frame[key].notna()]
        values = rows[key].to_numpy(dtype=float)
        if smoothing > 0:
            ax.plot(rows["step"], values, color=palette[key], alpha=0.25, linewidth=0.6)
        style = {"linestyle": ":" if key.endswith("total") else "-"}
        label = GRAD_SERIES[key]
        if key in same:
            style = COINCIDENT_STYLE
            label = coincident_label(label, GRAD_SERIES[same[key]])
        ax.plot(
            rows["step"],
            smooth(values, smoothing),
            color=palette[key],
            linewidth=1.1,
            label=label,
            **style,
        )
    ax.set_yscale("log")
    ax.set_ylabel("gradient norm")
    ax.legend(fontsize="small", ncol=3, loc="lower center", bbox_to_anchor=(0.5, 1.0))
    if lr_keys:
        lr_ax = axes[1, 0]
        styles = ["-", "--", "-.", ":"]
        for i, (key, color) in enumerate(zip(lr_keys, sns.color_palette("muted"))):
            lr_ax.plot(
                frame["step"],
                frame[key],
                color=color,
                linewidth=1.0,
                linestyle=styles[i % 4],
                drawstyle="steps-post",
                label=key[3:],
            )
        lr_ax.set_yscale("log")
        lr_ax.set_ylabel("lr")
        lr_ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.0, 0.5))
    axes[-1, 0].set_xlabel("step")
    step_axis(axes[-1, 0])
    _drop_lines(axes[:, 0], lr_drop_steps(records))
    fig.tight_layout()
    return fig


def alpha_change_table(history: pd.DataFrame, drop_step: int | None) -> pd.DataFrame:
    """How fast alpha moves before and after the lr drop, per layer.

    Columns: ``before``/``after`` = mean over heads of |d alpha| per step (the change between
    consecutive logged steps divided by their distance), and ``ratio`` = after / before. With
    no drop (``drop_step`` None) only ``before`` is filled (the whole run).
    """
    rows = {}
    for layer, mine in history.groupby("layer", sort=False):
        rates = []
        for _, rows_h in mine.groupby("head"):
            s = rows_h.sort_values("step")
            step = s["step"].to_numpy(dtype=float)
            rate = np.abs(np.diff(s["alpha"].to_numpy())) / np.diff(step)
            rates.append(pd.DataFrame({"step": step[1:], "rate": rate}))
        r = pd.concat(rates) if rates else pd.DataFrame({"step": [], "rate": []})
        if drop_step is None:
            before, after = r["rate"].mean(), math.nan
        else:
            before = r[r["step"] < drop_step]["rate"].mean()
            after = r[r["step"] >= drop_step]["rate"].mean()
        rows[layer_label(layer)] = {
            "before": before,
            "after": after,
            "ratio": after / before if before else math.nan,
        }
    frame = pd.DataFrame.from_dict(rows, orient="index", columns=["before", "after", "ratio"])
    return frame.rename_axis("layer")
