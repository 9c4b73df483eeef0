"""Where the heads of Gaussian positional attention look (Cordonnier et al. 2020, figs. 3-5).

Offsets are ``(row, col)`` in token-grid units from the query (key - query), as in
:mod:`attnkit.models.sa_conv.gaussian`. Spatial figures draw x = column and y = row offset,
rows downwards, so a panel reads like the image around the query. Centres and precisions come
from a model (:func:`gaussian_heads`) or from the ``centre/<module>`` and ``precision/<module>``
lists of ``metrics.jsonl`` (:func:`centre_history`, :func:`heads_from_history`). A head keeps
its colour (and, per ten heads, its marker) in every panel: :func:`head_style`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib import patheffects
from matplotlib.lines import Line2D
from matplotlib.patches import Ellipse
from matplotlib.ticker import MaxNLocator, MultipleLocator

from attnkit.viz.axes import fit_legend, step_text
from attnkit.viz.curves import load_runs
from attnkit.viz.labels import block_index, layer_index, layer_label, sort_layers
from attnkit.viz.style import TEXT_WIDTH_IN, figsize

__all__ = [
    "centre_history",
    "gaussian_heads",
    "head_style",
    "heads_from_history",
    "mass_ellipse",
    "mass_radius2",
    "plot_centre_trajectories",
    "plot_gaussian_centres",
    "plot_offset_maps",
    "relative_average_attention",
]

CENTRE_PREFIX = "centre/"
PRECISION_PREFIX = "precision/"
_LINESTYLES = ("-", "--", ":", "-.")
_MARKERS = ("o", "s", "^", "D")
_PRECISION_COLUMNS = ("prec_rr", "prec_rc", "prec_cc")
_DTYPES = {"step": "int64", "head": "int64", "row": "float64", "col": "float64"}


def _numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=float)


def head_style(head: int, num_heads: int) -> tuple[tuple, str]:
    """``(colour, marker)`` of a head: tab10 up to 10 heads, tab20 up to 20 (its dark shades
    first, so heads k and k + 1 differ in hue), husl beyond; a new marker every ten heads."""
    if num_heads <= 10:
        colors = sns.color_palette("tab10", 10)
    elif num_heads <= 20:
        tab20 = sns.color_palette("tab20", 20)
        colors = tab20[0::2] + tab20[1::2]
    else:
        colors = sns.color_palette("husl", num_heads)
    return tuple(colors[head % len(colors)]), _MARKERS[(head // 10) % len(_MARKERS)]


def _labels(names: Sequence[str], sites: Mapping[str, str] | None = None) -> list[str]:
    """Readable labels of positional modules, in the given order (see :func:`gaussian_heads`)."""
    out = []
    for i, name in enumerate(names):
        parent = name.rsplit(".", 1)[0] if "." in name else ""
        site = (sites or {}).get(name) or (sites or {}).get(parent)
        numbered = layer_index(parent) >= 0 or block_index(parent) >= 0
        out.append(str(site) if site else layer_label(parent) if numbered else f"layer {i + 1}")
    repeated = {lab for lab in out if out.count(lab) > 1}
    return [f"{lab} ({n})" if lab in repeated else lab for lab, n in zip(out, names)]


def gaussian_heads(model) -> list[dict]:
    """Per :class:`~attnkit.models.sa_conv.gaussian.GaussianPositionalScores` of ``model`` (in
    ``named_modules`` order): ``{"name", "layer", "centre" [H, 2], "precision" [H, 2, 2]}``.

    ``layer``: the parent attention's ``site`` when set, else from the name
    (``layers.0.attention.positional`` -> ``layer 1``; without a number: the module's rank)."""
    from attnkit.models.sa_conv.gaussian import GaussianPositionalScores

    modules = dict(model.named_modules())
    found = [(n, m) for n, m in modules.items() if isinstance(m, GaussianPositionalScores)]
    names = [n for n, _ in found]
    parents = {n: modules.get(n.rsplit(".", 1)[0] if "." in n else "") for n in names}
    sites = {n: getattr(p, "site", None) for n, p in parents.items() if p is not modules[n]}
    heads = []
    for (name, module), label in zip(found, _labels(names, sites)):
        centre, precision = _numpy(module.centre), _numpy(module.precision())  # [H, 2], [H, 2, 2]
        heads.append({"name": name, "layer": label, "centre": centre, "precision": precision})
    return heads


def mass_radius2(mass: float) -> float:
    """``r^2`` with ``P(d^T P d <= r^2) = mass`` for a 2-D Gaussian: ``-2 ln(1 - mass)``."""
    if 0.0 < mass < 1.0:
        return -2.0 * math.log1p(-mass)
    raise ValueError(f"mass must be in (0, 1), got {mass}")


def _axes_xy(precision, mass: float) -> tuple[np.ndarray, np.ndarray]:
    """Semi-axes (major first) and their unit directions as columns, in (x = col, y = row)."""
    p = _numpy(precision).reshape(2, 2)
    p = (p + p.T) / 2
    values, vectors = np.linalg.eigh(p[::-1, ::-1])  # ascending: the major axis first
    tiny = 1e-12 * max(float(np.abs(values).max()), 1e-300)
    with np.errstate(divide="ignore"):
        semi = np.where(values > tiny, np.sqrt(mass_radius2(mass) / np.abs(values)), np.inf)
    return semi, vectors


def mass_ellipse(centre, precision, mass: float = 0.5, points: int = 0):
    """The contour ``{d : (d - c)^T P (d - c) = r^2}`` holding ``mass`` of the Gaussian with
    centre ``c`` (row, col) and precision ``P`` (in (row, col) coordinates).

    Returns ``(width, height, angle_deg)`` of a :class:`matplotlib.patches.Ellipse` at
    ``xy = (col, row)`` on axes with x = column and y = row: ``width`` is the major axis,
    ``angle_deg`` in [-90, 90) its direction from the column axis towards the row axis. An axis
    along which ``P`` is singular is infinite. With ``points`` > 0: ``[points, 2]`` (row, col)
    points on the contour instead.
    """
    c = _numpy(centre).reshape(2)
    semi, vectors = _axes_xy(precision, mass)
    if points:
        t = np.linspace(0.0, 2 * np.pi, points, endpoint=False)
        xy = c[::-1] + np.outer(semi[0] * np.cos(t), vectors[:, 0])
        xy = xy + np.outer(semi[1] * np.sin(t), vectors[:, 1])  # [points, 2] (col, row)
        return xy[:, ::-1]
    angle = (math.degrees(math.atan2(vectors[1, 0], vectors[0, 0])) + 90.0) % 180.0 - 90.0
    return float(2 * semi[0]), float(2 * semi[1]), angle


def _half_extent(precision, mass: float) -> np.ndarray:
    """Half the bounding box of the mass contour: ``(col, row)``."""
    semi, vectors = _axes_xy(precision, mass)
    with np.errstate(invalid="ignore"):
        return np.sqrt(((vectors * semi[None, :]) ** 2).sum(1))


def _offset_panels(n: int, ncols: int | None, width: float, lo, hi) -> tuple:
    """``(fig, axes)``: ``n`` panels of token offsets ``lo..hi`` ``(col, row)`` sharing both
    axes: equal aspect, rows downwards, light lines at integer offsets, the query (+) at 0."""
    ncols = ncols or (n if n <= 4 else math.ceil(n / math.ceil(n / 4)))
    nrows, w = math.ceil(n / ncols), width * TEXT_WIDTH_IN
    panel = min(0.86 * w / ncols, 0.45 * TEXT_WIDTH_IN)  # one panel: not a full page
    height = nrows * panel * min(max((hi[1] - lo[1]) / (hi[0] - lo[0]), 0.5), 2.0) + 0.45
    grid = {"squeeze": False, "sharex": True, "sharey": True}
    fig, axes = plt.subplots(nrows, ncols, figsize=figsize(width, height / w), **grid)
    axes[0, 0].set(xlim=(lo[0], hi[0]), ylim=(hi[1], lo[1]))  # rows downwards, as in the image
    minor = MultipleLocator(max(1, math.ceil(max(hi - lo) / 24)))
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.set_visible(False)
            axes.flat[i - ncols].xaxis.set_tick_params(labelbottom=True)
            continue
        ax.set_aspect("equal", adjustable="box")
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_locator(MaxNLocator(nbins=5, integer=True))
            axis.set_minor_locator(minor)
        ax.grid(which="both", color="0.9", linewidth=0.5)
        ax.tick_params(which="minor", length=0)
        ax.set_axisbelow(True)
        ax.plot(0, 0, "+", color="black", markersize=7, markeredgewidth=1.2, zorder=5)
        ax.set_xlabel("column offset" if i + ncols >= n else "")  # the lowest of its column
        ax.set_ylabel("row offset" if i % ncols == 0 else "")
    return fig, list(axes.flat[:n])


def _legend(fig, num_heads: int, extra: Sequence[tuple[Line2D, str]]) -> None:
    """One legend above the panels: the heads, the query, then ``extra`` ``(handle, label)``."""
    styles = [head_style(h, num_heads) for h in range(num_heads)]
    handles = [Line2D([], [], color=c, marker=m, markersize=4, linewidth=1.0) for c, m in styles]
    handles.append(Line2D([], [], color="black", marker="+", linestyle="", markersize=7))
    handles += [h for h, _ in extra]
    labels = [f"head {h}" for h in range(num_heads)] + ["query"] + [lab for _, lab in extra]
    fig.tight_layout()
    kwargs = {"loc": "lower center", "bbox_to_anchor": (0.5, 1.0), "handlelength": 1.6}
    fit_legend(fig, handles, labels, max_ncol=10, columnspacing=1.0, **kwargs)


def plot_gaussian_centres(
    heads: Sequence[Mapping],
    grid: tuple[int, int] | None = None,
    masses: Sequence[float] = (0.5, 0.9),
    ncols: int | None = None,
    width: float = 1.0,
):
    """The paper's figure: one panel per layer (``heads`` from :func:`gaussian_heads`), the
    query (+) at the origin, each head's centre (a dot) and its ``masses`` contours (50% solid,
    90% dashed) in the head's colour; limits fit every contour, or the offsets of a ``grid``
    ``(h, w)`` of tokens when given; a contour over 4x the median extent (a near-singular
    precision) runs off the panel instead. Contours are those of the continuous Gaussian (the
    softmax of the positional score, before the grid discretises it)."""
    if not heads:
        raise ValueError("no Gaussian positional attention in the model")
    num_heads = max(len(e["centre"]) for e in heads)
    centres = np.concatenate([_numpy(e["centre"])[:, ::-1] for e in heads])  # [*, 2] (col, row)
    ext = np.concatenate(
        [[_half_extent(p, max(masses)) for p in _numpy(e["precision"])] for e in heads]
    )
    finite = ext[np.isfinite(ext)]
    ext = np.minimum(ext, max(4 * float(np.median(finite)) if finite.size else 1.0, 1.0))
    lo = np.minimum((centres - ext).min(0), 0.0)
    hi = np.maximum((centres + ext).max(0), 0.0)
    if grid is not None:
        lo, hi = -np.array([grid[1] - 1, grid[0] - 1.0]), np.array([grid[1] - 1, grid[0] - 1.0])
    fig, axes = _offset_panels(len(heads), ncols, width, lo - 0.5, hi + 0.5)
    for ax, entry in zip(axes, heads):
        for head, (c, p) in enumerate(zip(_numpy(entry["centre"]), _numpy(entry["precision"]))):
            color, marker = head_style(head, num_heads)
            for mass, style in zip(masses, _LINESTYLES * 2):
                w, h, angle = mass_ellipse(c, p, mass)
                if math.isfinite(w) and math.isfinite(h):  # a singular precision: no contour
                    ring = {"fill": False, "edgecolor": color, "linestyle": style, "zorder": 3}
                    ax.add_patch(Ellipse((c[1], c[0]), w, h, angle=angle, linewidth=0.9, **ring))
            dot = {"markeredgecolor": "white", "markeredgewidth": 0.4, "zorder": 4}
            ax.plot(c[1], c[0], marker, color=color, markersize=3.5, **dot)
        ax.set_title(entry.get("layer") or layer_label(entry.get("name", "")))
    rings = [Line2D([], [], color="0.3", linestyle=s, linewidth=0.9) for s in _LINESTYLES * 2]
    _legend(fig, num_heads, [(r, f"{m * 100:g}% mass") for r, m in zip(rings, masses)])
    return fig


def centre_history(
    records: str | Path | Sequence[Mapping], sites: Mapping[str, str] | None = None
) -> pd.DataFrame:
    """The logged centres of ``records`` (a list, a run folder or a ``metrics.jsonl``): columns
    ``step, module, layer, head, row, col`` and the precision ``prec_rr, prec_rc, prec_cc`` (NaN
    where not logged). ``module``: the positional module's name; ``layer``: its label
    (``sites`` ``{module or attention name: label}`` wins). Sorted by module (model order), head
    and step; a step logged twice keeps its last record; empty when no record has a centre."""
    if isinstance(records, str | Path):
        records = next(iter(load_runs(records).values()))
    latest: dict[int, Mapping] = {}
    for r in records:
        if r.get("kind", "train") == "train" and any(k.startswith(CENTRE_PREFIX) for k in r):
            latest[int(r["step"])] = r
    rows = []
    for step, r in latest.items():
        for key, centres in r.items():
            if not key.startswith(CENTRE_PREFIX) or centres is None:
                continue
            module = key[len(CENTRE_PREFIX) :]
            precision = r.get(PRECISION_PREFIX + module) or [None] * len(centres)
            for head, (c, p) in enumerate(zip(centres, precision)):
                p = np.full((2, 2), np.nan) if p is None else np.asarray(p, dtype=float)
                rows.append((step, module, head, *map(float, c), p[0, 0], p[0, 1], p[1, 1]))
    columns = ["step", "module", "head", "row", "col", *_PRECISION_COLUMNS]
    frame = pd.DataFrame(rows, columns=columns)
    modules = sort_layers(frame["module"])
    order = {name: i for i, name in enumerate(modules)}
    frame.insert(2, "layer", frame["module"].map(dict(zip(modules, _labels(modules, sites)))))
    frame = frame.assign(_o=frame["module"].map(order)).sort_values(["_o", "head", "step"])
    return frame.drop(columns="_o").reset_index(drop=True).astype(_DTYPES)


def heads_from_history(history: pd.DataFrame, step: int | None = None) -> list[dict]:
    """The heads of one logged ``step`` (None: the last) of :func:`centre_history`, as
    :func:`gaussian_heads` gives them (for :func:`plot_gaussian_centres` from a log)."""
    step = int(history["step"].max()) if step is None else step
    at = history[history["step"] == step]
    if at.empty:
        raise ValueError(f"no centre logged at step {step}")
    if at[list(_PRECISION_COLUMNS)].isna().any().any():
        raise ValueError(f"no precision logged at step {step}")
    out = []
    for module, rows in at.groupby("module", sort=False):
        rows = rows.sort_values("head")
        precision = rows[list(_PRECISION_COLUMNS)].to_numpy()[:, [0, 1, 1, 2]].reshape(-1, 2, 2)
        centre, layer = rows[["row", "col"]].to_numpy(), rows["layer"].iloc[0]  # [H, 2]
        out.append({"name": module, "layer": layer, "centre": centre, "precision": precision})
    return out


def plot_centre_trajectories(history: pd.DataFrame, ncols: int | None = None, width: float = 1.0):
    """Each head's centre over training, one panel per layer: the path through the logged
    steps in the head's colour, the first logged centre hollow, the last filled; the query (+)
    at the origin."""
    if history.empty:
        raise ValueError("no centre in the records: does the trainer log centre/<module>?")
    modules = list(dict.fromkeys(history["module"]))
    num_heads = int(history["head"].max()) + 1
    cols, rows = history["col"].to_numpy(), history["row"].to_numpy()
    lo = np.minimum([cols.min(), rows.min()], 0.0) - 0.5
    hi = np.maximum([cols.max(), rows.max()], 0.0) + 0.5
    fig, axes = _offset_panels(len(modules), ncols, width, lo, hi)
    for ax, module in zip(axes, modules):
        mine = history[history["module"] == module]
        for head, path in mine.groupby("head"):
            path = path.sort_values("step")
            color, marker = head_style(int(head), num_heads)
            ax.plot(path["col"], path["row"], color=color, linewidth=0.9, zorder=3)
            ends = {"markersize": 4, "markeredgecolor": color, "zorder": 4}
            start = (path["col"].iloc[0], path["row"].iloc[0])
            ax.plot(*start, marker, color=color, markerfacecolor="white", **ends)
            ax.plot(path["col"].iloc[-1], path["row"].iloc[-1], marker, color=color, **ends)
        ax.set_title(mine["layer"].iloc[0])
    first, last = (step_text(history["step"].agg(f)) for f in ("min", "max"))
    end = {"marker": "o", "color": "0.3", "linestyle": ""}
    hollow, filled = Line2D([], [], markerfacecolor="white", **end), Line2D([], [], **end)
    _legend(fig, num_heads, [(hollow, f"step {first}"), (filled, f"step {last}")])
    return fig


def relative_average_attention(weights, grid: tuple[int, int]) -> np.ndarray:
    """The mean attention at each offset (key - query) ``(dr, dc)``: ``[H, 2h - 1, 2w - 1]``,
    offset 0 at ``[h - 1, w - 1]``, from ``weights`` ``[H, N, N]`` or ``[B, H, N, N]`` (torch or
    numpy, row-major ``h x w`` grid): over the batch and the ``(h - |dr|) (w - |dc|)`` queries
    for which the offset lies inside the grid (an outer offset: few queries, a noisy mean)."""
    w = _numpy(weights)
    w = w[None] if w.ndim == 3 else w
    (h, wd), n = grid, grid[0] * grid[1]
    if w.ndim != 4 or w.shape[-2:] != (n, n):
        raise ValueError(f"weights {w.shape} are not [B, H, N, N] with N = {h} x {wd}")
    num_heads, size = w.shape[1], (2 * h - 1) * (2 * wd - 1)
    mean = w.mean(0)  # [H, N, N]
    rows, cols = np.divmod(np.arange(n), wd)
    dr = rows[None, :] - rows[:, None] + h - 1  # [Q, K]
    dc = cols[None, :] - cols[:, None] + wd - 1
    index = (dr * (2 * wd - 1) + dc).ravel()  # [Q * K]
    counts = np.bincount(index, minlength=size)  # (h - |dr|)(w - |dc|)
    flat = (np.arange(num_heads)[:, None] * size + index[None, :]).ravel()
    sums = np.bincount(flat, weights=mean.ravel(), minlength=num_heads * size)
    return (sums.reshape(num_heads, size) / counts).reshape(num_heads, 2 * h - 1, 2 * wd - 1)


def plot_offset_maps(
    maps,
    titles: Sequence[str] | None = None,
    row_labels: Sequence[str] | None = None,
    cmap=None,
    diverging: bool = False,
    width: float = 1.0,
    label: str | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
):
    """Small heatmaps per offset: rows = layers, columns = heads, the query offset (the centre
    pixel) marked +, rows of offsets downwards as in the image; one colour scale and colorbar.

    ``maps``: ``[L, H, R, C]``, ``[H, R, C]`` (one layer) or ``{layer: [H, R, C]}`` (keys
    through :func:`~attnkit.viz.labels.layer_label`), R and C odd. Sequential (attention from
    :func:`relative_average_attention`): from ``min(0, lowest)`` to the highest value.
    ``diverging`` (learned positional scores): each map minus its own mean, on a scale symmetric
    about 0 (``RdBu_r``): softmax ignores a constant added to all of a query's scores, so a
    map's mean carries nothing. ``vmin``/``vmax`` fix the scale (to compare figures).
    """
    if isinstance(maps, Mapping):
        row_labels = row_labels or [layer_label(str(k)) for k in maps]
        values = np.stack([_numpy(v) for v in maps.values()])
    else:
        values = _numpy(maps)
        values = values[None] if values.ndim == 3 else values
    if values.ndim != 4:
        raise ValueError(f"maps must be [L, H, R, C], got shape {values.shape}")
    n_layers, n_heads, r, c = values.shape
    if diverging:
        values = values - values.mean(axis=(-2, -1), keepdims=True)
        span = float(np.abs(values).max()) or 1.0
        lo, hi, cmap = -span, span, cmap or "RdBu_r"
        label = label or "score − map mean"
    else:
        lo, hi = min(0.0, float(values.min())), float(values.max())
        label = label or "mean attention"
    lo, hi = lo if vmin is None else vmin, hi if vmax is None else vmax
    numbered = titles is None and n_heads > 8  # bare numbers under one "head" title
    titles = titles or [str(h) if numbered else f"head {h}" for h in range(n_heads)]
    row_labels = row_labels or [f"layer {i + 1}" for i in range(n_layers)]
    panel = 0.9 * width * TEXT_WIDTH_IN / (n_heads + 1.4)
    height = n_layers * panel * r / c + 0.3 + (0.15 if numbered else 0.0)
    size = figsize(width, height / (width * TEXT_WIDTH_IN))
    fig, axes = plt.subplots(n_layers, n_heads, figsize=size, squeeze=False, layout="constrained")
    extent = (-(c // 2) - 0.5, c // 2 + 0.5, r // 2 + 0.5, -(r // 2) - 0.5)
    outline = [patheffects.withStroke(linewidth=2.0, foreground="white")]
    for i, j in np.ndindex(n_layers, n_heads):
        ax = axes[i, j]
        scale = {"cmap": cmap, "vmin": lo, "vmax": hi, "interpolation": "nearest"}
        image = ax.imshow(values[i, j], extent=extent, **scale)
        ax.plot(0, 0, "+", color="black", markersize=5, markeredgewidth=1.0, path_effects=outline)
        ax.set(xticks=[], yticks=[], title=titles[j] if i == 0 else "")
        for spine in ax.spines.values():  # a thin frame: white (0 on RdBu) meets the page
            spine.set(visible=True, linewidth=0.4, color="0.5")
        ax.set_ylabel(row_labels[i] if j == 0 else "", rotation=0, ha="right", va="center")
    if numbered:
        fig.suptitle("head", fontsize=plt.rcParams["axes.titlesize"])
    bar = {"fraction": 0.05, "pad": 0.02, "shrink": min(1.0, 0.5 + 0.25 * n_layers)}
    fig.colorbar(image, ax=axes, label=label, **bar)
    return fig
