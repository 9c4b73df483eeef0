"""The dense family's analysis tables: attention sparsity by stage, errors by height bin.

The dense family labels its attention sites ``stage S block B`` (encoder stage S, Swin or MiT)
and ``up L block B`` (Swin-Unet's decoder level L). An analysis ``summary.json`` (``attnkit
analyze``, :func:`analyze_dense_models`) holds per site the mean, std and count of every map
metric and the same per head; :func:`stage_frame` pools the blocks of each stage (weighted by
their map counts, :func:`attnkit.analysis.site_stats.pool_stats`), so stages can be
compared model by model and head by head. Models whose mechanism forms no attention matrix
(``efficient``, linear attention) have nothing to analyse and are reported as skipped.

For the regression itself, :func:`evaluate_dense` streams a model's predictions over the first
images of a split into the task's metrics (MAE, RMSE, R^2, bias and the same per target bin),
and :func:`bin_frame` lays the per-bin errors of several models out for a table or a figure.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
import torch

from attnkit.analysis.site_stats import mean_std_text, pool_stats, site_rows

__all__ = [
    "PARTS",
    "analyze_dense_models",
    "bin_frame",
    "bin_label",
    "evaluate_dense",
    "metrics_table",
    "parse_site",
    "site_frame",
    "sparsity_table",
    "stage_frame",
]

PARTS = ("stage", "up")
"""Encoder stages, then the decoder's levels (Swin-Unet)."""
_SITE = re.compile(r"^(stage|up) (\d+) block (\d+)$")


def parse_site(label: str) -> tuple[str, int, int] | None:
    """``"stage 2 block 1"`` -> ``("stage", 2, 1)``, ``"up 1 block 2"`` -> ``("up", 1, 2)``;
    None for any other label."""
    found = _SITE.match(str(label))
    if found is None:
        return None
    return found.group(1), int(found.group(2)), int(found.group(3))


def site_frame(summaries: Mapping[str, dict], metric: str, per_head: bool = False) -> pd.DataFrame:
    """One row per model and dense site (and head with ``per_head``): ``model, layer, site,
    part, level, block, [head,] mean, std, count``; labels come from each summary's
    ``meta.sites``. Sites without a dense label or without the metric are left out."""
    return site_rows(summaries, metric, per_head, _label_of, parse_site, ("part", "level", "block"))


def _label_of(layer: str, sites: Mapping[str, str]) -> str:
    return str(sites.get(layer, ""))


def stage_frame(summaries: Mapping[str, dict], metric: str, per_head: bool = False) -> pd.DataFrame:
    """:func:`site_frame` pooled over the blocks of each stage (or decoder level): ``model,
    part, level, stage, [head,] mean, std, count`` with ``stage`` the label (``stage 1``,
    ``up 1``), sorted by model (given order), encoder before decoder, level and head."""
    frame = site_frame(summaries, metric, per_head)
    by = ["model", "part", "level"] + (["head"] if per_head else [])
    out = pool_stats(frame, by)
    out.insert(3, "stage", out["part"] + " " + out["level"].astype(str))
    order = {m: i for i, m in enumerate(summaries)}
    out = out.assign(_m=out["model"].map(order), _p=out["part"].map(PARTS.index))
    keys = ["_m", "_p", "level"] + (["head"] if per_head else [])
    return out.sort_values(keys).drop(columns=["_m", "_p"]).reset_index(drop=True)


def sparsity_table(
    summaries: Mapping[str, dict],
    metrics: Sequence[str] = ("gini", "zeros_ratio"),
    precision: int = 3,
    labels: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """Rows ``(model, stage)``, one column per metric (renamed by ``labels``): ``"mean ± std"``
    over every map of the stage's blocks; None where a model lacks the metric."""
    cells: dict[tuple[str, str], dict[str, str | None]] = {}
    names = [(labels or {}).get(m, m) for m in metrics]
    for metric, name in zip(metrics, names):
        for row in stage_frame(summaries, metric).itertuples():
            text = mean_std_text(row.mean, row.std, precision)
            cells.setdefault((row.model, row.stage), {})[name] = text
    index = pd.MultiIndex.from_tuples(list(cells), names=["model", "stage"])
    return pd.DataFrame([[c.get(n) for n in names] for c in cells.values()], index, names)


def analyze_dense_models(
    models: Mapping[str, str | Path], out_dir: str | Path, random_init: bool = False, **options
) -> tuple[dict[str, Path], dict[str, str]]:
    """:func:`attnkit.analysis.compare.analyze_models` model by model: ``({name: analysis
    folder}, {name: why skipped})``; a model without attention maps (efficient attention in a
    SegFormer) is skipped, not an error. ``options``: ``max_images``, ``batch_size``,
    ``device``, ... as ``analyze_models`` takes them."""
    from attnkit.analysis.compare import analyze_models
    from attnkit.analysis.run_analysis import AnalysisError

    done, skipped = {}, {}
    for name, path in models.items():
        try:
            done |= analyze_models({name: path}, out_dir, random_init=random_init, **options)
        except AnalysisError as exc:
            skipped[name] = str(exc)
    return done, skipped


@torch.no_grad()
def evaluate_dense(
    model,
    dataset,
    bins: Sequence[float] | None,
    max_images: int | None = None,
    batch_size: int = 16,
    device: str = "cpu",
) -> dict:
    """The task's metrics (``mae``, ``rmse``, ``r2``, ``bias``, ``num_pixels`` and with ``bins``
    ``per_bin``) of ``model`` over the first ``max_images`` items of ``dataset`` (None: all),
    streamed in batches; the model runs in eval mode on ``device``."""
    from attnkit.data.dense import collate_dense
    from attnkit.tasks.dense_metrics import DenseRegressionMetrics

    metrics = DenseRegressionMetrics(list(bins) if bins else None)
    count = len(dataset) if max_images is None else min(int(max_images), len(dataset))
    model = model.to(device).eval()
    for start in range(0, count, batch_size):
        batch = collate_dense([dataset[i] for i in range(start, min(start + batch_size, count))])
        batch = batch.to(device)
        metrics.update(model(**batch.inputs), batch.target, batch.valid)  # [B, 1, H, W]
    return metrics.compute()


def bin_label(lo: float, hi: float) -> str:
    """``(-inf, 2)`` -> ``"< 2 m"``, ``(2, 5)`` -> ``"2–5 m"``, ``(20, inf)`` -> ``"≥ 20 m"``."""
    if math.isinf(lo):
        return f"< {hi:g} m"
    if math.isinf(hi):
        return f"≥ {lo:g} m"
    return f"{lo:g}–{hi:g} m"


def bin_frame(metrics: Mapping[str, Mapping]) -> pd.DataFrame:
    """``{model: evaluation metrics}`` (with ``per_bin``) -> one row per model and bin: ``model,
    bin, lo, hi, count, share, mae, rmse, bias`` (``share``: the bin's part of the model's
    valid pixels), bins in ascending order."""
    rows = []
    for model, values in metrics.items():
        per_bin = values.get("per_bin") or []
        total = sum(b["count"] for b in per_bin) or 1
        for b in per_bin:
            label = bin_label(b["lo"], b["hi"])
            share = b["count"] / total
            rows.append([model, label, b["lo"], b["hi"], b["count"], share, *_errors(b)])
    columns = ["model", "bin", "lo", "hi", "count", "share", "mae", "rmse", "bias"]
    return pd.DataFrame(rows, columns=columns)


def metrics_table(metrics: Mapping[str, Mapping]) -> pd.DataFrame:
    """``{model: evaluation metrics}`` -> rows model, columns ``MAE``, ``RMSE``, ``R²``,
    ``bias`` (m) and the MAE of each target bin (``MAE 2–5 m``, ...); NaN where missing."""
    rows = {}
    for model, values in metrics.items():
        row = {name: float(values.get(key, math.nan)) for key, name in _COLUMNS.items()}
        for b in values.get("per_bin") or []:
            row[f"MAE {bin_label(b['lo'], b['hi'])}"] = float(b.get("mae", math.nan))
        rows[model] = row
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("model")


_COLUMNS = {"mae": "MAE", "rmse": "RMSE", "r2": "R²", "bias": "bias"}


def _errors(values: Mapping) -> list[float]:
    return [float(values.get(k, math.nan)) for k in ("mae", "rmse", "bias")]
