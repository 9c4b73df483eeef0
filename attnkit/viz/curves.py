"""Training curves of one or many runs from their ``metrics.jsonl``: losses, AP, the lr drop.

A run is given as a run folder, a ``metrics.jsonl`` path or a list of already-read records
(``attnkit.train.logger.read_metrics``); several runs as ``{name: run}``. Runs named after a
normalizer (``sparsemax``, ``alpha_entmax (lr 2e-4)``) get that normalizer's colour. The lr drop
(the first logged step whose ``lr/default`` is below the previous one) is a dashed vertical line.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from attnkit.train.logger import read_metrics
from attnkit.viz.axes import fit_legend, step_axis
from attnkit.viz.labels import model_colors, normalizer_label
from attnkit.viz.style import figsize

__all__ = [
    "AP_METRICS",
    "LOSS_COMPONENTS",
    "final_metrics_table",
    "load_runs",
    "lr_drop_steps",
    "metrics_frame",
    "plot_ap_curves",
    "plot_loss_curves",
    "smooth",
]

LOSS_COMPONENTS = ("loss", "loss_ce", "loss_bbox", "loss_giou")
AP_METRICS = ("AP", "AP50", "AP75")
LOSS_TITLES = {
    "loss": "total loss",
    "loss_ce": "classification (CE)",
    "loss_bbox": "box L1",
    "loss_giou": "GIoU",
    "class_error": "class error (%)",
    "cardinality_error": "cardinality error",
}

Run = str | Path | Sequence[Mapping]


def load_runs(runs: Run | Mapping[str, Run]) -> dict[str, list[dict]]:
    """``{name: records}`` from ``{name: run folder | metrics.jsonl | records}`` (or one run)."""
    if not isinstance(runs, Mapping):
        name = Path(runs).resolve().name if isinstance(runs, str | Path) else "run"
        runs = {name.removesuffix(".metrics.jsonl").removesuffix(".jsonl"): runs}
    out = {}
    for name, run in runs.items():
        out[str(name)] = read_metrics(run) if isinstance(run, str | Path) else list(run)
    return out


def metrics_frame(records: Sequence[Mapping], kind: str = "train") -> pd.DataFrame:
    """The scalar values of the records of one ``kind``: one row per step, sorted by step.

    List values (alphas) are left out; a step logged twice keeps its last record.
    """
    rows = [
        {k: v for k, v in r.items() if k != "kind" and (v is None or np.isscalar(v))}
        for r in records
        if r.get("kind", "train") == kind
    ]
    if not rows:
        return pd.DataFrame(columns=["step", "epoch"])
    frame = pd.DataFrame(rows).drop_duplicates("step", keep="last")
    return frame.sort_values("step").reset_index(drop=True)


def lr_drop_steps(
    records: Sequence[Mapping], group: str = "default", max_ratio: float = 0.5
) -> list[int]:
    """Logged steps at which ``lr/<group>`` fell to ``max_ratio`` or less of its value at the
    previous logged step while staying constant before or after it: the drops of a step schedule
    (x0.1 in DETR), not the decay of a cosine schedule or the ramp of a warm-up.

    That is the first logged step trained with the lower lr: the drop itself happened after the
    previous logged step, so with ``train.log_every_steps`` = n it is at most n - 1 steps early.
    """
    frame = metrics_frame(records, "train")
    key = f"lr/{group}"
    if key not in frame:
        return []
    lr = frame[key].to_numpy(dtype=float)
    flat = np.isclose(lr[1:], lr[:-1], rtol=1e-6)  # flat[i]: lr[i + 1] == lr[i]
    drops = []
    for i in np.flatnonzero(lr[1:] <= lr[:-1] * max_ratio) + 1:
        sides = ([flat[i - 2]] if i >= 2 else []) + ([flat[i]] if i < len(flat) else [])
        if not sides or any(sides):  # constant before or after (two values: nothing to compare)
            drops.append(i)
    return [int(frame["step"].iloc[i]) for i in drops]


def smooth(values: Sequence[float], weight: float = 0.0) -> np.ndarray:
    """TensorBoard's debiased exponential moving average (``weight`` 0: unchanged; < 1).

    NaN values are skipped (they keep the running average and stay NaN in the output).
    """
    x = np.asarray(values, dtype=float)
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"smoothing weight must be in [0, 1), got {weight}")
    if weight == 0.0:
        return x.copy()
    out = np.full_like(x, np.nan)
    avg, norm = 0.0, 0.0
    for i, v in enumerate(x):
        if math.isnan(v):
            continue
        avg = weight * avg + (1 - weight) * v
        norm = weight * norm + (1 - weight)
        out[i] = avg / norm
    return out


def _mark_lr_drops(ax, drops: Mapping[str, list[int]], colors: Mapping[str, object]) -> None:
    """One dashed line per distinct drop step; grey when every run drops there.

    Also makes x a step axis (:func:`~attnkit.viz.axes.step_axis`: as many ticks as fit)."""
    step_axis(ax)
    steps = sorted({s for v in drops.values() for s in v})
    for step in steps:
        owners = [n for n, v in drops.items() if step in v]
        color = "0.45" if len(owners) == len(drops) else colors[owners[0]]
        label = "lr drop" if step == steps[0] else None
        ax.axvline(step, color=color, linestyle="--", linewidth=0.8, zorder=0, label=label)


def _grid(n: int, ncols: int | None, width: float, aspect_per_row: float):
    ncols = ncols or min(n, 4)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=figsize(width, aspect=aspect_per_row * nrows * 4 / max(ncols, 4)),
        squeeze=False,
        sharex=True,
    )
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _legend(fig, axes, ncol: int) -> None:
    handles, labels = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                if lab == "lr drop":  # one neutral entry, whichever run's colour it was drawn in
                    h = plt.Line2D([], [], color="0.45", linestyle="--", linewidth=0.8)
                handles.append(h)
                labels.append(lab)
    if labels:
        kwargs = {"loc": "lower center", "bbox_to_anchor": (0.5, 1.0)}
        fit_legend(fig, handles, labels, max_ncol=min(ncol + 1, 6), **kwargs)


def plot_loss_curves(
    runs: Run | Mapping[str, Run],
    components: Sequence[str] = LOSS_COMPONENTS,
    smoothing: float = 0.0,
    logy: bool = False,
    ncols: int | None = None,
    width: float = 1.0,
):
    """Train losses against step: one panel per component, one line per run.

    With ``smoothing`` > 0 the raw values are drawn faintly under the smoothed line. The lr
    drop is marked by a dashed vertical line. Components no run has are left out.
    """
    data = load_runs(runs)
    frames = {n: metrics_frame(r, "train") for n, r in data.items()}
    components = [c for c in components if any(c in f for f in frames.values())]
    if not components:
        raise ValueError("no train record has any of the requested loss components")
    colors = model_colors(frames)
    drops = {n: lr_drop_steps(r) for n, r in data.items()}
    fig, axes = _grid(len(components), ncols, width, 0.3)
    for ax, comp in zip(axes, components):
        for name, frame in frames.items():
            if comp not in frame:
                continue
            steps, values = frame["step"].to_numpy(), frame[comp].to_numpy(dtype=float)
            if smoothing > 0:
                ax.plot(steps, values, color=colors[name], alpha=0.25, linewidth=0.6)
            ax.plot(
                steps,
                smooth(values, smoothing),
                color=colors[name],
                linewidth=1.1,
                label=normalizer_label(name),
            )
        _mark_lr_drops(ax, drops, colors)
        ax.set_title(LOSS_TITLES.get(comp, comp))
        if logy:
            ax.set_yscale("log")
    for ax in axes[-min(len(axes), ncols or 4) :]:
        ax.set_xlabel("step")
    _legend(fig, axes, len(frames))
    fig.tight_layout()
    return fig


def _ap_axis(ax, top: float) -> None:
    upper = max(0.05, 1.1 * top) if np.isfinite(top) else 0.05
    ax.set_ylim(-0.03 * upper, upper)  # AP = 0 stays visible above the axis
    ax.set_xlabel("step")


def plot_ap_curves(
    runs: Run | Mapping[str, Run],
    metrics: Sequence[str] = AP_METRICS,
    ncols: int | None = None,
    width: float = 1.0,
    single_panel: bool | None = None,
):
    """COCO AP of the eval records against step.

    Several runs: one panel per metric, one line per run. One run (or ``single_panel``): one
    panel, one line per metric, in the run's colour with a marker and line style per metric.
    """
    data = load_runs(runs)
    frames = {n: metrics_frame(r, "eval") for n, r in data.items()}
    colors = model_colors(frames)
    drops = {n: lr_drop_steps(r) for n, r in data.items()}
    if single_panel is None:
        single_panel = len(frames) == 1
    top = max(
        (
            float(np.nanmax(f[m].to_numpy(dtype=float)))
            for f in frames.values()
            for m in metrics
            if m in f and f[m].notna().any()
        ),
        default=np.nan,
    )
    if single_panel:
        fig, ax = plt.subplots(figsize=figsize(width * 0.6, aspect=0.6))
        styles = ["-", "--", ":", "-.", (0, (5, 1)), (0, (1, 1))]
        markers = ["o", "s", "^", "v", "D", "x"]
        for name, frame in frames.items():
            for k, metric in enumerate(m for m in metrics if m in frame):
                ax.plot(
                    frame["step"],
                    frame[metric].astype(float),
                    color=colors[name] if len(frames) == 1 else None,
                    linestyle=styles[k % len(styles)],
                    marker=markers[k % len(markers)],
                    markersize=3,
                    linewidth=1.0,
                    label=metric if len(frames) == 1 else f"{normalizer_label(name)} {metric}",
                )
        if not ax.lines:
            ax.text(0.5, 0.5, "no eval records", ha="center", va="center", transform=ax.transAxes)
        _mark_lr_drops(ax, drops, colors)
        _ap_axis(ax, top)
        ax.set_ylabel(
            "COCO AP" + (f" ({normalizer_label(next(iter(frames)))})" if len(frames) == 1 else "")
        )
        if ax.get_legend_handles_labels()[1]:
            ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.0, 0.5))
        fig.tight_layout()
        return fig
    fig, axes = _grid(len(metrics), ncols, width, 0.3)
    for ax, metric in zip(axes, metrics):
        for name, frame in frames.items():
            if metric not in frame or frame.empty:
                continue
            ax.plot(
                frame["step"],
                frame[metric].astype(float),
                color=colors[name],
                marker="o",
                markersize=2.5,
                linewidth=1.1,
                label=normalizer_label(name),
            )
        if not ax.lines:
            ax.text(0.5, 0.5, "no eval records", ha="center", va="center", transform=ax.transAxes)
        _mark_lr_drops(ax, drops, colors)
        ax.set_title(metric)
        _ap_axis(ax, top)
    _legend(fig, axes, len(frames))
    fig.tight_layout()
    return fig


def final_metrics_table(
    runs: Run | Mapping[str, Run],
    metrics: Sequence[str] = ("AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L"),
    losses: Sequence[str] = ("loss",),
) -> pd.DataFrame:
    """One row per run: steps, epochs, the last eval record's ``metrics`` and final losses.

    Missing values are NaN (a run without eval records has no AP).
    """
    rows = {}
    for name, records in load_runs(runs).items():
        train, evals = metrics_frame(records, "train"), metrics_frame(records, "eval")
        last_train = train.iloc[-1] if len(train) else pd.Series(dtype=float)
        last_eval = evals.iloc[-1] if len(evals) else pd.Series(dtype=float)
        steps = [f["step"].max() for f in (train, evals) if len(f)]
        row = {"steps": int(max(steps)) if steps else 0}
        row.update({m: float(last_eval.get(m, np.nan)) for m in metrics})
        row.update({f"final {k}": float(last_train.get(k, np.nan)) for k in losses})
        rows[name] = row
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("run")
