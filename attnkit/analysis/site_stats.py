"""Per-site statistics of an analysis summary, arranged and pooled for the family tables.

An analysis ``summary.json`` (``attnkit analyze``) holds, per attention site (module name), the
mean, std and count of every map metric and the same per head. A family that labels its sites
(``stage 2 block 1 grid`` in MaxViT, ``up 1 block 2`` in Swin-Unet) parses those labels into
columns with :func:`site_rows`, then pools the blocks of a stage with :func:`pool_stats`
(weighted by their map counts, population std as the summaries hold) and prints cells with
:func:`mean_std_text`. The family modules (``maxvit_sparsity``, ``dense_sparsity``) only say how
their labels read.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from attnkit.analysis.tables import PM

__all__ = ["mean_std_text", "pool_stats", "site_rows"]


def site_rows(
    summaries: Mapping[str, dict],
    metric: str,
    per_head: bool,
    label_of: Callable[[str, Mapping[str, str]], str],
    parse: Callable[[str], tuple | None],
    parts: Sequence[str],
) -> pd.DataFrame:
    """One row per model and site (and head with ``per_head``): ``model, layer, site, *parts,
    [head,] mean, std, count``. ``label_of(layer, sites)`` names a site from the summary's
    ``meta.sites``; ``parse(label)`` gives the ``parts`` columns, or None for sites to leave out
    (as are sites without the metric)."""
    rows = []
    for model, summary in summaries.items():
        sites = (summary.get("meta") or {}).get("sites") or {}
        for layer, stats in (summary.get(metric) or {}).items():
            label = label_of(layer, sites)
            parsed = parse(label)
            if parsed is None or not isinstance(stats, Mapping):
                continue
            key = [model, layer, label, *parsed]
            if not per_head:
                rows.append([*key, stats.get("mean"), stats.get("std"), stats.get("count", 0)])
                continue
            heads = stats.get("per_head") or []
            stds = stats.get("per_head_std") or [math.nan] * len(heads)
            counts = stats.get("per_head_count") or [1] * len(heads)
            rows += [[*key, h, m, s, c] for h, (m, s, c) in enumerate(zip(heads, stds, counts))]
    columns = ["model", "layer", "site", *parts] + (["head"] if per_head else [])
    frame = pd.DataFrame(rows, columns=columns + ["mean", "std", "count"])
    return frame.astype({"mean": float, "std": float, "count": "int64"})


def pool_stats(frame: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """Groups of ``frame`` (``mean, std, count`` per row, population std) pooled into one
    ``mean, std, count`` each, as if their values had been one sample; NaN-mean rows and rows
    with count 0 are left out. Groups keep their first-appearance order."""
    ok = frame[frame["mean"].notna() & (frame["count"] > 0)]
    std = ok["std"].fillna(0.0)
    parts = ok.assign(_n=ok["count"], _s=ok["count"] * ok["mean"])
    parts = parts.assign(_q=ok["count"] * (std**2 + ok["mean"] ** 2))
    pooled = parts.groupby(list(by), sort=False)[["_n", "_s", "_q"]].sum().reset_index()
    mean = pooled["_s"] / pooled["_n"]
    var = (pooled["_q"] / pooled["_n"] - mean**2).clip(lower=0.0)
    out = pooled[list(by)].assign(mean=mean, std=np.sqrt(var), count=pooled["_n"].astype("int64"))
    return out.reset_index(drop=True)


def mean_std_text(mean: float, std: float, precision: int) -> str | None:
    """``"0.512 ± 0.031"`` (``"0.512"`` without a std; None without a mean)."""
    if math.isnan(mean):
        return None
    text = f"{mean:.{precision}f}"
    return text if math.isnan(std) else text + f"{PM}{std:.{precision}f}"
