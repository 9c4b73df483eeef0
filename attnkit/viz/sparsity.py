"""Sparsity of attention maps per layer and head, across models: Gini, zeros ratio, entropy.

Inputs are what ``attnkit analyze`` writes: ``summary.json`` (``{model: summary}`` from
``attnkit.analysis.tables.load_summaries``) for the per-layer and per-head statistics, and
``records.parquet`` (one row per map) for distributions. Random-init models, the thesis's
baseline, are passed as ``baseline`` with the same model names as the trained ones.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from attnkit.analysis.tables import summary_table, to_latex, to_markdown
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
    "analyze_models",
    "resolve_models",
    "write_table",
    "SPARSITY_METRICS",
    "export_tables",
    "head_frame",
    "layer_frame",
    "load_records",
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
    fig.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=6)
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


def load_records(
    runs: Mapping[str, str | Path | pd.DataFrame],
    columns: Sequence[str] = ("layer", "head", "gini", "zeros_ratio", "entropy"),
    max_rows: int | None = 20_000,
    seed: int = 0,
) -> pd.DataFrame:
    """Rows of several ``records.parquet`` (run folders, files or frames) with a ``model`` column.

    Only ``columns`` are read; each model keeps at most ``max_rows`` rows, drawn at random.
    """
    parts = []
    for i, (name, run) in enumerate(runs.items()):
        if isinstance(run, pd.DataFrame):
            frame = run[list(columns)]
        else:
            path = Path(run)
            path = path / "records.parquet" if path.is_dir() else path
            frame = pd.read_parquet(path, columns=list(columns))
        if max_rows is not None and len(frame) > max_rows:
            frame = frame.sample(n=max_rows, random_state=seed + i)
        parts.append(frame.assign(model=name))
    if not parts:
        return pd.DataFrame(columns=[*columns, "model"])
    return pd.concat(parts, ignore_index=True)


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
    for ax, layer in zip(axes[0], layers):
        for model in models:
            sel = records[(records["model"] == model) & (records["layer"] == layer)]
            x, y = _ecdf(sel[metric].to_numpy(dtype=float))
            ax.step(
                x,
                y,
                where="post",
                color=colors[model],
                linestyle="--" if model.endswith(RANDOM_SUFFIX) else "-",
                linewidth=1.0,
                label=normalizer_label(model),
            )
        ax.set_title(layer_label(layer))
        ax.set_xlabel(METRIC_LABELS.get(metric, metric))
        if metric in BOUNDED:
            ax.set_xlim(-0.02, 1.02)
    axes[0][0].set_ylabel("fraction of maps")
    handles, labels = _style_legend(models, colors)
    fig.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(labels))
    fig.tight_layout()
    return fig


def _style_legend(models: Sequence[str], colors: Mapping[str, object]):
    """Legend entries: one colour per trained model, then line styles for trained / random init
    when random-init models are present (instead of one entry per model and state)."""
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
    labels = [normalizer_label(m) for m in bases]
    if has_random:
        handles += [
            plt.Line2D([], [], color="0.3", linestyle="-"),
            plt.Line2D([], [], color="0.3", linestyle="--"),
        ]
        labels += ["trained", "random init"]
    return handles, labels


def _pretty_index(table: pd.DataFrame) -> pd.DataFrame:
    """The model level of the index named as in legends (``entmax15`` -> ``1.5-entmax``)."""
    names = table.index.names
    out = table.copy()
    out.index = table.index.map(
        lambda i: (normalizer_label(i[0]), *i[1:]) if isinstance(i, tuple) else normalizer_label(i)
    )
    out.index.names = names
    return out


def write_table(
    table: pd.DataFrame,
    out_dir: str | Path,
    name: str,
    title: str,
    caption: str,
    precision: int = 3,
    pretty: bool = True,
) -> pd.DataFrame:
    """Write ``table`` as ``out_dir/<name>.md`` (under a bold ``title``) and ``<name>.tex``.

    With ``pretty`` the model names (first index level) are shown as in the legends; the
    LaTeX file spells alpha as ``$\\alpha$``. Returns the table as written.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shown = _pretty_index(table) if pretty else table
    (out_dir / f"{name}.md").write_text(f"**{title}**\n\n" + to_markdown(shown, precision))
    latex = to_latex(shown, caption, f"tab:{name}", precision)
    (out_dir / f"{name}.tex").write_text(latex.replace("α", r"$\alpha$"))
    return shown


def export_tables(
    summaries: Mapping[str, dict],
    metrics: Sequence[str],
    out_dir: str | Path,
    prefix: str = "",
    per_head: bool = False,
    precision: int = 3,
) -> dict[str, pd.DataFrame]:
    """Write one thesis table per metric (rows model, columns layer) with :func:`write_table`.

    Files are ``out_dir/<prefix><metric>.{md,tex}``; layers are labelled ``layer k``.
    Returns ``{metric: DataFrame}`` as written.
    """
    tables = {}
    for metric in metrics:
        layers = {k: layer_label(k) for k in _layers(summaries, metric)}
        table = summary_table(summaries, metric, precision, per_head=per_head, layers=layers)
        label = METRIC_LABELS.get(metric, metric)
        tables[metric] = write_table(
            table,
            out_dir,
            f"{prefix}{metric}",
            f"{label} per layer (mean ± std over maps)",
            f"{label} of the decoder cross-attention per layer (mean $\\pm$ std over maps).",
            precision,
        )
    return tables


def resolve_models(models: Sequence[str] | Mapping[str, str | Path]) -> dict[str, Path]:
    """``{name: checkpoint}`` from shipped normalizer names or ``{name: checkpoint | run dir}``.

    A run folder stands for its ``last.pt``.
    """
    from attnkit.models.reference import reference_checkpoint

    if isinstance(models, str):
        models = [models]
    if not isinstance(models, Mapping):
        return {str(name): reference_checkpoint(name) for name in models}
    out = {}
    for name, path in models.items():
        path = Path(path).expanduser()
        out[str(name)] = path / "last.pt" if path.is_dir() else path
    return out


def analyze_models(
    models: Sequence[str] | Mapping[str, str | Path],
    out_dir: str | Path,
    random_init: bool = False,
    max_images: int | None = None,
    data_root: str | Path | None = None,
    batch_size: int | None = None,
    reuse: bool = True,
    progress: bool = False,
    device: str | None = None,
) -> dict[str, Path]:
    """Run ``attnkit analyze`` on each model (trained, or its random init) into ``out_dir/<name>``.

    ``models`` as in :func:`resolve_models`. A random-init model is built from the checkpoint's
    own config (same architecture, seed ``cfg.seed``) into ``out_dir/<name>_random_init``.
    ``data_root`` switches to a COCO-format folder. With ``reuse`` a folder analysed before
    with the same request is not recomputed. ``device``: None picks CUDA when available.
    Returns ``{name: analysis folder}``.
    """
    import json

    import torch

    from attnkit.analysis.run_analysis import run_analysis
    from attnkit.config import config_from_dict, save_config

    overrides = {"data.name": "coco", "data.root": str(data_root)} if data_root else None
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    out = {}
    for name, checkpoint in resolve_models(models).items():
        folder = Path(out_dir) / (f"{name}_random_init" if random_init else name)
        request = {
            "checkpoint": str(Path(checkpoint).resolve()),
            "mtime": Path(checkpoint).stat().st_mtime,
            "random_init": random_init,
            "max_images": max_images,
            "data_root": str(data_root) if data_root else None,
            "batch_size": batch_size,
        }
        request_file = folder / "request.json"
        done = (folder / "summary.json").is_file() and (folder / "records.parquet").is_file()
        if (
            reuse
            and done
            and request_file.is_file()
            and json.loads(request_file.read_text()) == request
        ):
            out[name] = folder
            continue
        folder.mkdir(parents=True, exist_ok=True)
        kwargs = {"checkpoint": checkpoint}
        if random_init:
            ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
            cfg = config_from_dict(ckpt["config"], source=f"config inside {checkpoint}")
            config = save_config(cfg, folder / "model_config.yaml")
            kwargs = {"config": config, "random_init": True}
        run_analysis(
            folder,
            overrides=overrides,
            batch_size=batch_size,
            max_images=max_images,
            progress=progress,
            device=device,
            **kwargs,
        )
        request_file.write_text(json.dumps(request, indent=1))
        out[name] = folder
    return out
