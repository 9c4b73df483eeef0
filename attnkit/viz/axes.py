"""Axis and line helpers shared by the curve figures: step axes, curves that coincide.

:func:`step_axis` gives a training-step axis whole-number ticks, as many as fit the axis without
their labels touching, written short (``2.5k``, ``10k``); every figure with steps on an axis uses
it. :func:`fit_legend` puts a figure legend in as few rows as fit the figure's width.
:func:`coinciding` finds curves drawn over each other (equal within a tolerance) and
:func:`coincident_label` / :data:`COINCIDENT_STYLE` say so in the legend and keep both visible.
"""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib
import numpy as np
from matplotlib.font_manager import FontProperties
from matplotlib.ticker import FuncFormatter, MaxNLocator

__all__ = [
    "COINCIDENT_STYLE",
    "StepLocator",
    "coincident_label",
    "coinciding",
    "fit_legend",
    "step_axis",
    "step_text",
]

COINCIDENT_STYLE = {
    "linestyle": (0, (1.0, 1.5)),
    "marker": "o",
    "markersize": 2.5,
    "markevery": 0.1,
    "zorder": 3,
}
"""How the later of two coinciding curves is drawn: dotted with sparse markers, on top, so the
curve under it shows between the dots."""


def step_text(value: float) -> str:
    """A step count for a tick label: ``0``, ``250``, ``1.5k``, ``10k``, ``1.2M``."""
    for scale, unit in ((1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.0f}" if float(value).is_integer() else f"{value:g}"


class StepLocator(MaxNLocator):
    """Whole-number ticks at 1, 2, 2.5 or 5 x a power of ten, as many (up to ``max_ticks``) as
    leave room between their labels (:func:`step_text`) at the tick labels' font size."""

    def __init__(self, max_ticks: int = 6, gap_em: float = 1.5):
        super().__init__(nbins=max(1, max_ticks - 1), integer=True, steps=[1, 2, 2.5, 5, 10])
        self.max_ticks = max_ticks
        self.gap_em = gap_em

    def _room_pt(self, vmin: float, vmax: float) -> float | None:
        """Points per data unit along the axis (None before it is attached to one)."""
        axis = self.axis
        if axis is None or getattr(axis, "axes", None) is None or vmax <= vmin:
            return None
        box = axis.axes.bbox
        length_px = box.width if axis.axis_name == "x" else box.height
        return length_px * 72.0 / axis.axes.figure.dpi / (vmax - vmin)

    def tick_values(self, vmin, vmax):
        vmin, vmax = sorted((float(vmin), float(vmax)))
        per_unit = self._room_pt(vmin, vmax)
        size = _label_size(self.axis) if per_unit is not None else 8.0
        for nbins in range(max(1, self.max_ticks - 1), 0, -1):
            self.set_params(nbins=nbins)
            ticks = super().tick_values(vmin, vmax)
            if per_unit is None or len(ticks) < 2 or nbins == 1:
                return ticks
            shown = [t for t in ticks if vmin <= t <= vmax] or list(ticks)
            widest = max(len(step_text(t)) for t in shown)
            # a digit is ~0.6 em wide; a vertical axis needs one line per label
            label_em = 0.62 * widest if self.axis.axis_name == "x" else 1.0
            if (ticks[1] - ticks[0]) * per_unit >= (label_em + self.gap_em) * size:
                return ticks
        return ticks


def _label_size(axis) -> float:
    """The tick labels' font size in points (without making ticks: that calls the locator)."""
    size = axis.get_tick_params(which="major").get("labelsize")
    if size is None:
        size = matplotlib.rcParams[f"{axis.axis_name}tick.labelsize"]
    return FontProperties(size=size).get_size_in_points()


def step_axis(ax, axis: str = "x", max_ticks: int = 6) -> None:
    """Training steps on ``ax``'s ``axis``: :class:`StepLocator` ticks, :func:`step_text` labels."""
    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_major_locator(StepLocator(max_ticks))
    target.set_major_formatter(FuncFormatter(lambda v, _pos: step_text(v)))


def _flat(values) -> np.ndarray:
    return np.asarray(values, dtype=float).ravel()


def coinciding(series: Mapping[str, tuple], tol: float = 1e-3, log: bool = False) -> dict[str, str]:
    """``{later name: earlier name}`` for curves drawn over an earlier one in ``series``.

    ``series``: ``{name: (x, y)}`` in drawing order. Two curves coincide when they have the
    same number of points and every x and y differs by at most ``tol`` x the span of all the
    curves' values on that axis (``log``: of their log10, for a log-scale y), NaN where the
    other is NaN. Each later curve names the first earlier curve it coincides with.
    """
    data = {n: (_flat(x), _flat(y)) for n, (x, y) in series.items()}
    if log:
        with np.errstate(divide="ignore", invalid="ignore"):
            data = {n: (x, np.log10(np.where(y > 0, y, np.nan))) for n, (x, y) in data.items()}

    def span(k: int) -> float:
        values = np.concatenate([v[k] for v in data.values()] or [np.zeros(1)])
        values = values[np.isfinite(values)]
        return float(values.max() - values.min()) if len(values) else 0.0

    limits = (tol * span(0), tol * span(1))
    out: dict[str, str] = {}
    names = list(data)
    for i, later in enumerate(names):
        for earlier in names[:i]:
            if all(_close(data[later][k], data[earlier][k], limits[k]) for k in (0, 1)) and len(
                data[later][1]
            ):
                out[later] = earlier
                break
    return out


def _close(a: np.ndarray, b: np.ndarray, limit: float) -> bool:
    if a.shape != b.shape:
        return False
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    if not np.array_equal(nan_a, nan_b):
        return False
    return bool(np.all(np.abs(a[~nan_a] - b[~nan_b]) <= limit))


def coincident_label(label: str, other: str, note: str = "") -> str:
    """A legend label that says the curve lies on ``other``'s: ``"α-entmax (= 1.5-entmax at
    init)"`` for ``coincident_label("α-entmax", "1.5-entmax", "at init")``."""
    return f"{label} (= {other}{' ' + note if note else ''})"


def fit_legend(fig, handles, labels, max_ncol: int | None = None, **kwargs):
    """``fig.legend(handles, labels, **kwargs)`` with as many columns (up to ``max_ncol``) as
    fit the figure's width, measured with the renderer; returns the legend."""
    renderer = fig.canvas.get_renderer()
    for ncol in range(min(len(labels), max_ncol or len(labels)), 0, -1):
        legend = fig.legend(handles, labels, ncol=ncol, **kwargs)
        if ncol == 1 or legend.get_window_extent(renderer).width <= fig.bbox.width:
            return legend
        legend.remove()
    return fig.legend(handles, labels, **kwargs)  # no labels
