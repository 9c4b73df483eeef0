"""MaxViT's attention statistics by stage and attention type: block (local) against grid (global).

A MaxViT block attends twice, first within its ``(ph, pw)`` window (block attention), then
across a ``(gh, gw)`` grid (grid attention); the family labels the sites ``stage 2 block 1
block`` and ``stage 2 block 1 grid``. The analysis ``summary.json`` (``attnkit analyze``) holds
per site (module name) the mean, std and count of every map metric and the same per head; here
they are arranged by ``stage``, ``block`` and ``kind``, and pooled over the blocks of a stage
(:mod:`attnkit.analysis.site_stats`: weighted by their map counts), so block and grid
attention can be compared stage by stage, per model and per head. Alpha-entmax tables keyed by
module name (``attnkit.viz.alpha``) get the same columns with :func:`with_sites`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import pandas as pd

from attnkit.analysis.site_stats import mean_std_text, pool_stats, site_rows

__all__ = [
    "KINDS",
    "block_vs_grid_table",
    "parse_site",
    "pool_stats",
    "site_frame",
    "stage_frame",
    "with_sites",
]

KINDS = ("block", "grid")
_SITE = re.compile(r"^stage (\d+) block (\d+) (block|grid)$")
_PARTS = ("stage", "block", "kind")


def parse_site(label: str) -> tuple[int, int, str] | None:
    """``"stage 2 block 1 grid"`` -> ``(2, 1, "grid")`` (1-based); None for other labels."""
    found = _SITE.match(str(label))
    if found is None:
        return None
    return int(found.group(1)), int(found.group(2)), found.group(3)


def _site_of(name: str, sites: Mapping[str, str]) -> str:
    if name in sites:
        return str(sites[name])
    from attnkit.models.maxvit.family import site_label

    return site_label(name) or str(name)


def with_sites(frame: pd.DataFrame, sites: Mapping[str, str] | None = None, column="layer"):
    """``frame`` (a column of module names, e.g. :func:`attnkit.viz.alpha.final_alphas`) with
    ``site``, ``stage``, ``block`` and ``kind`` columns; ``sites`` ``{module: label}`` (default:
    the MaxViT family's labels). Rows whose site is not a MaxViT site are dropped; the rest are
    ordered as in the model (stage, block, block before grid attention), stably."""
    site = frame[column].map(lambda n: _site_of(n, sites or {}))
    parsed = site.map(parse_site)
    keep = parsed.notna()
    out = frame[keep].assign(site=site[keep])
    parts = pd.DataFrame(parsed[keep].tolist(), index=out.index, columns=["stage", "block", "kind"])
    out = pd.concat([out, parts], axis=1).astype({"stage": "int64", "block": "int64"})
    order = out.assign(_k=out["kind"].map(KINDS.index))
    order = order.sort_values(["stage", "block", "_k"], kind="stable").index
    return out.loc[order].reset_index(drop=True)


def site_frame(summaries: Mapping[str, dict], metric: str, per_head: bool = False) -> pd.DataFrame:
    """One row per model and MaxViT site (and head with ``per_head``): ``model, layer, site,
    stage, block, kind, [head,] mean, std, count`` from ``{model: summary}``; site labels come
    from each summary's ``meta.sites``. Sites without the metric are left out."""
    return site_rows(summaries, metric, per_head, _site_of, parse_site, _PARTS)


def stage_frame(summaries: Mapping[str, dict], metric: str, per_head: bool = False) -> pd.DataFrame:
    """:func:`site_frame` pooled over the blocks of each stage: ``model, stage, kind, [head,]
    mean, std, count``, sorted by model (given order), stage, kind (block first) and head."""
    frame = site_frame(summaries, metric, per_head)
    by = ["model", "stage", "kind"] + (["head"] if per_head else [])
    out = pool_stats(frame, by)
    order = {m: i for i, m in enumerate(summaries)}
    out = out.assign(_m=out["model"].map(order), _k=out["kind"].map(KINDS.index))
    keys = ["_m", "stage", "_k"] + (["head"] if per_head else [])
    return out.sort_values(keys).drop(columns=["_m", "_k"]).reset_index(drop=True)


def block_vs_grid_table(
    summaries: Mapping[str, dict],
    metrics: Sequence[str] = ("gini", "zeros_ratio"),
    precision: int = 3,
    labels: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """Rows ``(model, stage)``, columns ``(metric, block | grid)``: ``"mean ± std"`` over every
    map of the stage's block (grid) attention, pooled over its blocks; None where missing.
    ``labels`` renames the metrics in the header."""
    columns, cells = [], {}
    for metric in metrics:
        name = (labels or {}).get(metric, metric)
        for row in stage_frame(summaries, metric).itertuples():
            text = mean_std_text(row.mean, row.std, precision)
            cells.setdefault((row.model, f"stage {row.stage}"), {})[(name, row.kind)] = text
        columns += [(name, kind) for kind in KINDS]
    index = pd.MultiIndex.from_tuples(list(cells), names=["model", "stage"])
    rows = [[cells[key].get(col) for col in columns] for key in cells]
    return pd.DataFrame(rows, index=index, columns=pd.MultiIndex.from_tuples(columns))
