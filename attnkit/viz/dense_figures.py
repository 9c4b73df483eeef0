"""Figures of the dense family's notebooks: height maps, training, predictions, sparsity, cost.

The notebooks of ``notebooks/dense/`` train and compare encoder x decoder x attention variants
on the synthetic height maps. A variant is named ``<encoder>_<decoder>[_<mechanism>]
[_<normalizer>]`` (``swin_segformer``, ``swin_unet_sparsemax``, ``swin_segformer_window``):
:func:`parse_variant` turns the name into its config and overrides. Height and error maps are
drawn through :func:`colored`, which paints nodata pixels in :data:`NODATA_COLOR` with white
diagonal stripes, so they never pass for a height. Models are styled by :func:`model_styles`:
one colour per architecture, hatched bars for sparse normalizers (normalizer colours when all
models share one architecture). The attention maps on the image are in
:mod:`attnkit.viz.dense_attention`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize, to_rgba
from matplotlib.patches import Patch
from matplotlib.ticker import LogFormatterSciNotation, NullFormatter

from attnkit.analysis.dense_sparsity import metrics_table
from attnkit.viz import curves
from attnkit.viz.axes import step_axis
from attnkit.viz.labels import RANDOM_SUFFIX, model_colors, normalizer_label, normalizer_of
from attnkit.viz.overlay import TITLE_SIZE, _colorbar, image_grid
from attnkit.viz.style import TEXT_WIDTH_IN, figsize

__all__ = [
    "NODATA_COLOR",
    "Variant",
    "colored",
    "dense_arrays",
    "data_statistics",
    "final_metrics_table",
    "model_styles",
    "parse_variant",
    "plot_bin_errors",
    "plot_height_histogram",
    "plot_height_samples",
    "plot_learning_curves",
    "plot_predictions",
    "plot_mechanism_profile",
]

NODATA_COLOR = "#8C8C8C"  # grey under white stripes: distinct from viridis and from RdBu's white
HEIGHT_CMAP, ERROR_CMAP = "viridis", "RdBu_r"
STRIPE = 4  # pixels between the white stripes of nodata
SPARSE_HATCH = "////"
MECHANISMS = ("shifted_window", "spatial_reduction", "window", "full", "grid", "efficient")
NORMALIZERS = ("alpha_entmax", "entmax15", "sparsemax", "softmax", "tvmax")
ARCHITECTURES = {"swin_segformer": "Swin + SegFormer", "mit_segformer": "MiT + SegFormer"}
ARCHITECTURES["swin_unet"] = "Swin-Unet"


@dataclass(frozen=True)
class Variant:
    """A dense model to train: the config stem of ``configs/dense/`` and its ``overrides``."""

    name: str
    config: str
    overrides: dict = field(default_factory=dict)
    label: str = ""


def parse_variant(name: str) -> Variant:
    """``swin_segformer_window_sparsemax`` -> config ``synth_swin_segformer`` with
    ``model.attention.mechanism: window`` and ``model.attention.normalizer: sparsemax``.

    Architectures: ``swin_segformer``, ``mit_segformer``, ``swin_unet``; then optionally a
    mechanism (``window``, ``shifted_window``, ``full``, ``grid``, ``spatial_reduction``,
    ``efficient``) and a normalizer (``softmax``, ``sparsemax``, ...). Anything else is a
    ``ValueError`` naming what is known."""
    arch = next((a for a in ARCHITECTURES if name == a or name.startswith(a + "_")), None)
    rest = name[len(arch) + 1 :] if arch else ""
    mechanism = next((m for m in MECHANISMS if rest == m or rest.startswith(m + "_")), None)
    rest = rest[len(mechanism) + 1 :] if mechanism else rest
    normalizer = rest if rest in NORMALIZERS else None
    if arch is None or (rest and normalizer is None):
        raise ValueError(
            f"unknown dense variant {name!r}: <architecture>[_<mechanism>][_<normalizer>] with "
            f"architecture in {list(ARCHITECTURES)}, mechanism in {list(MECHANISMS)}, "
            f"normalizer in {list(NORMALIZERS)}"
        )
    overrides = {"model.attention.mechanism": mechanism, "model.attention.normalizer": normalizer}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    details = ", ".join(v.replace("_", " ") for v in (mechanism, normalizer) if v)
    label = ARCHITECTURES[arch] + (f" ({details})" if details else "")
    return Variant(name, f"synth_{arch}", overrides, label)


def _architecture(name: str) -> str:
    name = str(name).removesuffix(RANDOM_SUFFIX)
    norm = normalizer_of(name)
    return name.replace(f"_{norm}", "").replace(norm, "") if norm else name


def model_styles(names: Sequence[str]) -> dict[str, dict]:
    """``{name: {"color", "hatch"}}``: one colour per architecture (the name without its
    normalizer), hatched when the normalizer is sparse; when every name shares one
    architecture, the normalizers' colours and no hatch."""
    names = list(names)
    archs = {n: _architecture(n) for n in names}
    if len(set(archs.values())) <= 1:
        return {n: {"color": c, "hatch": None} for n, c in model_colors(names).items()}
    palette = dict(zip(dict.fromkeys(archs.values()), sns.color_palette("colorblind", 10) * 9))
    sparse = {n: normalizer_of(n) not in (None, "softmax") for n in names}
    return {
        n: {"color": palette[archs[n]], "hatch": SPARSE_HATCH if sparse[n] else None} for n in names
    }


# --------------------------------------------------------------------------- height maps


def dense_arrays(dataset, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """``(pixels [n, H, W, 3]`` in [0, 1], ``heights [n, H, W]`` NaN at nodata``)`` of the
    items ``indices`` of a dense dataset (its images normalised with ``dataset.mean / std``)."""
    mean = torch.tensor(dataset.mean)[:, None, None]
    std = torch.tensor(dataset.std)[:, None, None]
    pixels, heights = [], []
    for i in indices:
        image, maps = dataset[int(i)]
        pixels.append((image * std + mean).clamp(0, 1).permute(1, 2, 0))  # [H, W, 3]
        heights.append(torch.where(maps["valid"][0], maps["target"][0], math.nan))  # [H, W]
    return torch.stack(pixels).numpy(), torch.stack(heights).numpy()


def colored(values: np.ndarray, norm: Normalize, cmap: str = HEIGHT_CMAP) -> np.ndarray:
    """RGBA ``[H, W, 4]`` of a map ``[H, W]``: ``cmap`` under ``norm`` where finite, nodata
    (NaN) in :data:`NODATA_COLOR` with a white stripe on every :data:`STRIPE`-th diagonal."""
    values = np.asarray(values, dtype=float)
    rgba = plt.get_cmap(cmap)(norm(np.nan_to_num(values)))  # [H, W, 4]
    nodata = ~np.isfinite(values)
    rows, cols = np.indices(values.shape)
    stripe = nodata & ((rows + cols) % STRIPE == 0)
    rgba[nodata] = to_rgba(NODATA_COLOR)
    rgba[stripe] = (1.0, 1.0, 1.0, 1.0)
    return rgba


def _panel(ax, rgba: np.ndarray, title: str | None = None) -> None:
    ax.imshow(rgba, interpolation="nearest")
    if title:
        ax.set_title(title, fontsize=TITLE_SIZE, pad=2)


def _nodata_legend(fig, y: float, x: float = 0.99) -> None:
    patch = Patch(facecolor=NODATA_COLOR, edgecolor="white", hatch="////", label="nodata")
    fig.legend(handles=[patch], loc="upper right", bbox_to_anchor=(x, y), fontsize=6)


def _height_norm(*maps: np.ndarray) -> Normalize:
    values = np.concatenate([np.asarray(m, dtype=float).ravel() for m in maps])
    lo, hi = np.nanpercentile(values, [0.5, 99.5]) if np.isfinite(values).any() else (0, 1)
    return Normalize(float(lo), float(max(hi, lo + 1e-6)))


def plot_height_samples(pixels: np.ndarray, heights: np.ndarray, pairs_per_row: int = 3, width=1.0):
    """Images and their height maps side by side (``pairs_per_row`` pairs a row), one colour
    scale in metres for every map, nodata striped grey."""
    n = len(pixels)
    per_row = min(pairs_per_row, n)
    nrows = math.ceil(n / per_row)
    margins, pad = (0.05, 0.55, 0.3, 0.05), (0.04, 0.22)
    fig, axes = image_grid(
        nrows, 2 * per_row, pixels.shape[1:3], width * TEXT_WIDTH_IN, margins, pad
    )
    norm = _height_norm(heights)
    for i, ax in enumerate(axes.flat):
        k, is_map = divmod(i, 2)
        ax.set_visible(k < n)
        if k < n:
            shown = colored(heights[k], norm) if is_map else pixels[k]
            _panel(ax, shown, f"height {k}" if is_map else f"image {k}")
    _colorbar(fig, ScalarMappable(norm, HEIGHT_CMAP), axes, label="height (m)")
    _nodata_legend(fig, 1.0)
    return fig


def data_statistics(dataset, max_images: int | None = None) -> dict:
    """Of the first ``max_images`` items (None: all): ``heights`` (every valid pixel's height,
    float32 ``[N]``), ``nodata`` (each image's share of nodata pixels ``[n]``) and ``table``
    (images, size, nodata share, height and per-channel pixel statistics, as text)."""
    count = len(dataset) if max_images is None else min(int(max_images), len(dataset))
    pixels, heights = dense_arrays(dataset, range(count))  # [n, H, W, 3], [n, H, W]
    valid = np.isfinite(heights)
    values = heights[valid].astype(np.float32)
    nodata = 1.0 - valid.reshape(count, -1).mean(1)
    q = np.percentile(values, [0, 50, 99, 100]) if values.size else [math.nan] * 4
    rows = {
        "images": f"{count}",
        "size (H x W)": "x".join(map(str, heights.shape[1:])),
        "nodata share": f"{nodata.mean():.1%} (per image {nodata.min():.1%} to {nodata.max():.1%})",
        "height mean ± std (m)": f"{values.mean():.2f} ± {values.std():.2f}",
        "height min / median / p99 / max (m)": " / ".join(f"{v:.2f}" for v in q),
    }
    for c, channel in enumerate("RGB"):
        band = pixels[..., c]
        rows[f"{channel} mean ± std (0-1)"] = f"{band.mean():.3f} ± {band.std():.3f}"
    table = pd.DataFrame({"value": rows}).rename_axis("statistic")
    return {"heights": values, "nodata": nodata, "table": table}


def plot_height_histogram(heights, nodata, edges: Sequence[float] = (), width: float = 1.0):
    """Left: the heights of all valid pixels (log counts), dashed lines at the evaluation's
    bin ``edges``; right: the images' nodata shares."""
    fig, (left, right) = plt.subplots(
        1, 2, figsize=figsize(width, 0.32), gridspec_kw={"width_ratios": [2, 1]}
    )
    left.hist(heights, bins=60, color=plt.get_cmap(HEIGHT_CMAP)(0.35), log=True)
    for edge in edges:
        left.axvline(edge, color="0.3", linestyle="--", linewidth=0.7)
    left.set(xlabel="height (m)", ylabel="pixels", title="heights of valid pixels")
    right.hist(100 * np.asarray(nodata), bins=20, color=NODATA_COLOR)
    right.set(xlabel="nodata (% of the image)", ylabel="images", title="nodata per image")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- training


TRAIN_PANELS = (
    ("loss", "train", "training loss (m)"),
    ("mae", "eval", "val MAE (m)"),
    ("rmse", "eval", "val RMSE (m)"),
    ("r2", "eval", "val $R^2$"),
)


def plot_learning_curves(runs, smoothing: float = 0.0, width: float = 1.0):
    """Training loss (faint: raw, solid: smoothed) and the validation MAE, RMSE and R^2
    against step, one line per run (``{name: run folder | metrics.jsonl | records}``)."""
    data = curves.load_runs(runs)
    styles = model_styles(list(data))
    fig, axes = plt.subplots(1, len(TRAIN_PANELS), figsize=figsize(width, aspect=0.27))
    for ax, (key, kind, title) in zip(axes, TRAIN_PANELS):
        for name, records in data.items():
            frame = curves.metrics_frame(records, kind)
            if key not in frame:
                continue
            steps, values = frame["step"].to_numpy(), frame[key].to_numpy(dtype=float)
            color = styles[name]["color"]
            if kind == "train" and smoothing > 0:
                ax.plot(steps, values, color=color, alpha=0.25, linewidth=0.6)
                values = curves.smooth(values, smoothing)
            marker = "o" if kind == "eval" else None
            ax.plot(
                steps,
                values,
                color=color,
                marker=marker,
                markersize=2.5,
                linewidth=1.1,
                label=normalizer_label(name),
            )
        ax.set(title=title, xlabel="step")
        step_axis(ax)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=4, fontsize=6)
    fig.tight_layout()
    return fig


def final_metrics_table(runs) -> pd.DataFrame:
    """One row per run: steps, the last evaluation's MAE, RMSE, R^2 and bias (m) and its MAE
    per height bin (``MAE 2–5 m``, ...), the last logged training loss; NaN where missing."""
    data = curves.load_runs(runs)
    last = {n: ([r for r in rs if r.get("kind") == "eval"] or [{}])[-1] for n, rs in data.items()}
    table = metrics_table(last).rename_axis("run")
    steps = {n: max([r.get("step", 0) for r in rs], default=0) for n, rs in data.items()}
    table.insert(0, "steps", pd.Series(steps, dtype="int64"))
    losses = {n: curves.metrics_frame(rs, "train").get("loss") for n, rs in data.items()}
    table["final loss"] = {
        n: math.nan if v is None else float(v.iloc[-1]) for n, v in losses.items()
    }
    return table


# --------------------------------------------------------------------------- predictions


def plot_predictions(pixels, heights, pred, title: str | None = None, width: float = 1.0):
    """Rows: images; columns: input, target, prediction (one height scale, metres) and the
    error prediction - target (diverging, symmetric); nodata striped grey in target and error.
    ``pixels [n, H, W, 3]``, ``heights`` and ``pred`` ``[n, H, W]``."""
    n, error = len(pixels), np.asarray(pred) - np.asarray(heights)  # NaN at nodata
    norm = _height_norm(heights, pred)
    limit = float(np.nanpercentile(np.abs(error), 99)) if np.isfinite(error).any() else 1.0
    err_norm = Normalize(-max(limit, 1e-6), max(limit, 1e-6))
    margins, pad = (0.05, 0.05, 0.45 if title else 0.25, 0.6), (0.04, 0.04)
    fig, axes = image_grid(n, 4, pixels.shape[1:3], width * TEXT_WIDTH_IN, margins, pad, 1.3)
    box = {"facecolor": "0.15", "alpha": 0.7, "pad": 1.2, "linewidth": 0}
    corner = {"color": "white", "fontsize": 5, "va": "bottom", "ha": "left", "bbox": box}
    for i in range(n):
        _panel(axes[i, 0], pixels[i])
        _panel(axes[i, 1], colored(heights[i], norm))
        _panel(axes[i, 2], colored(pred[i], norm))
        _panel(axes[i, 3], colored(error[i], err_norm, ERROR_CMAP))
        mae = float(np.nanmean(np.abs(error[i])))
        axes[i, 3].text(0.03, 0.03, f"MAE {mae:.2f} m", transform=axes[i, 3].transAxes, **corner)
    for ax, name in zip(axes[0], ("input", "target", "prediction", "prediction - target")):
        ax.set_title(name, fontsize=TITLE_SIZE, pad=2)
    _colorbar(fig, ScalarMappable(norm, HEIGHT_CMAP), axes[:, 1:3], "bottom", "height (m)")
    _colorbar(fig, ScalarMappable(err_norm, ERROR_CMAP), axes[:, 3], "bottom", "error (m)", 3)
    if title:
        fig.suptitle(title, fontsize=TITLE_SIZE + 1, y=1.0, va="top")
    _nodata_legend(fig, 0.55 / fig.get_figheight(), x=0.25)
    return fig


def plot_bin_errors(frame: pd.DataFrame, metric: str = "mae", width: float = 1.0):
    """Grouped bars: x = target height bin, one bar per model (:func:`bin_frame` rows), the
    bin's share of valid pixels under its label."""
    models, bins = list(dict.fromkeys(frame["model"])), list(dict.fromkeys(frame["bin"]))
    styles = model_styles(models)
    fig, ax = plt.subplots(figsize=figsize(width, aspect=0.36))
    bar_w = 0.84 / max(len(models), 1)
    for i, model in enumerate(models):
        mine = frame[frame.model == model].set_index("bin").reindex(bins)
        x = np.arange(len(bins)) + (i - (len(models) - 1) / 2) * bar_w
        style = styles[model]
        ax.bar(
            x,
            mine[metric].to_numpy(dtype=float),
            bar_w * 0.9,
            label=normalizer_label(model),
            facecolor=style["color"],
            edgecolor="white" if style["hatch"] else style["color"],
            hatch=style["hatch"],
            linewidth=0.4,
        )
    shares = frame.groupby("bin", sort=False)["share"].mean().reindex(bins)
    ax.set_xticks(range(len(bins)), [f"{b}\n{s:.0%} of pixels" for b, s in shares.items()])
    ax.set(xlabel="target height", ylabel=f"{metric.upper()} (m)")
    ax.legend(
        fontsize="small", ncol=min(len(models), 4), loc="lower center", bbox_to_anchor=(0.5, 1.0)
    )
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- efficiency

PROFILE_PANELS = {"ms": "forward + backward (ms)", "mib": "peak memory (MiB)"}
PROFILE_PANELS["gflops"] = "forward GFLOPs"


def plot_mechanism_profile(results: Mapping[str, list], exponents=None, width: float = 1.0):
    """Time, peak memory and FLOPs against the token count N, log-log, one line per mechanism
    (``attnkit.bench.attention.profile`` results); ``exponents`` ``{mechanism: {key: slope}}``
    go into the legends (the fitted scaling exponent of each panel's quantity)."""
    fig, axes = plt.subplots(1, len(PROFILE_PANELS), figsize=figsize(width, aspect=0.3))
    for (key, title), ax in zip(PROFILE_PANELS.items(), axes):
        for kind, points in results.items():
            n = [p["tokens"] for p in points]
            values = [max(p[key], 1e-9) for p in points]
            slope = (exponents or {}).get(kind, {}).get(key)
            label = kind.replace("_", " ") + ("" if slope is None else f": {slope:.2f}")
            ax.loglog(n, values, marker="o", markersize=3, linewidth=1.1, label=label)
        ax.set(title=title, xlabel="tokens N")
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(LogFormatterSciNotation(labelOnlyBase=True))
            axis.set_minor_formatter(NullFormatter())
        legend_title = "fitted exponent" if exponents else None
        ax.legend(
            fontsize=5,
            title=legend_title,
            title_fontsize=5,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.3),
            frameon=False,
        )
    fig.subplots_adjust(wspace=0.4)  # the legends hang below the panels: no tight layout
    return fig
