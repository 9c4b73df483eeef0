"""Thesis tables from the ``summary.json`` of several runs.

A summary holds, per metric and layer, the statistics of the per-map values of an eval pass::

    {metric: {layer: {"mean": float, "std": float, "per_head": [float, ...], ...}},
     "paibb_by_size": {layer: {"small": {"mean", "std", ...}, "medium": ..., "large": ...}}}

:func:`summary_table` and :func:`by_size_table` turn a ``{model name: summary}`` dict into a
DataFrame of ``"mean ± std"`` strings (missing cells are None); :func:`to_latex` (booktabs,
``$\\pm$``) and :func:`to_markdown` render any such frame without extra dependencies.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import pandas as pd

__all__ = ["by_size_table", "load_summaries", "summary_table", "to_latex", "to_markdown"]

PM = " ± "
SUMMARY_FILE = "summary.json"
BUCKETS = ("small", "medium", "large")


def _summary_path(path: Path) -> Path:
    """The ``summary.json`` of a run folder, or the file itself."""
    p = path / SUMMARY_FILE if path.is_dir() else path
    if not p.is_file():
        raise FileNotFoundError(f"no {SUMMARY_FILE} at {path}")
    return p


def load_summaries(paths: str | Path | Iterable[str | Path] | Mapping[str, str | Path]) -> dict:
    """Read the ``summary.json`` of runs: ``{model name: summary}``, in the order given.

    ``paths`` are run folders (holding ``summary.json``) or the files themselves; a model is
    named after its run folder, or give a ``{name: path}`` mapping. Two runs with the same
    name are an error (name them with a mapping).
    """
    if isinstance(paths, Mapping):
        named = [(str(name), Path(p)) for name, p in paths.items()]
    else:
        items = [paths] if isinstance(paths, str | Path) else list(paths)
        named = []
        for p in map(Path, items):
            folder = p if p.is_dir() else p.parent
            named.append((folder.resolve().name, p))
    out: dict[str, dict] = {}
    for name, p in named:
        if name in out:
            raise ValueError(f"two runs are named {name!r}; pass a {{name: path}} mapping")
        with open(_summary_path(p)) as f:
            out[name] = json.load(f)
    return out


def _cell(stats, precision: int, mean_key: str = "mean", std_key: str = "std") -> str | None:
    """``"mean ± std"`` of a stats dict (or a bare number); None when missing or NaN."""
    if stats is None:
        return None
    if isinstance(stats, int | float):
        stats = {mean_key: stats}
    mean, std = stats.get(mean_key), stats.get(std_key)
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return None
    text = f"{mean:.{precision}f}"
    if std is not None and not (isinstance(std, float) and math.isnan(std)):
        text += f"{PM}{std:.{precision}f}"
    return text


def _layer_order(
    summaries: Mapping[str, dict], metric: str, layers: Sequence[str] | Mapping[str, str] | None
) -> dict[str, str]:
    """``{layer key: column label}``: the given layers, or all in order of first appearance."""
    if isinstance(layers, Mapping):
        return {str(k): str(v) for k, v in layers.items()}
    if layers is not None:
        return {str(k): str(k) for k in layers}
    found = [s[metric] for s in summaries.values() if isinstance(s.get(metric), Mapping)]
    if not found:
        raise KeyError(f"no summary has the metric {metric!r}")
    return {k: k for layer_stats in found for k in layer_stats}


def summary_table(
    summaries: Mapping[str, dict],
    metric: str,
    precision: int = 3,
    per_head: bool = False,
    layers: Sequence[str] | Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """One metric of several runs: rows model, columns layer, cells ``"mean ± std"``.

    Args:
        summaries: ``{model name: summary}`` (see :func:`load_summaries`).
        metric: a top-level key of the summaries, e.g. ``"gini"``.
        precision: decimals of the cells.
        per_head: rows ``(model, head)`` with each head's mean (``± per_head_std`` when the
            summary has it) instead of one row per model.
        layers: the layers to show, in order; a mapping also renames them (``{key: label}``).

    Returns:
        A DataFrame of strings, None where a model lacks the layer (or head).
    """
    order = _layer_order(summaries, metric, layers)
    rows, index = [], []
    for model, summary in summaries.items():
        stats = summary.get(metric) or {}
        if not per_head:
            index.append(model)
            rows.append([_cell(stats.get(k), precision) for k in order])
            continue
        n_heads = max((len(stats.get(k, {}).get("per_head", [])) for k in order), default=0)
        for h in range(n_heads):
            index.append((model, h))
            row = []
            for k in order:
                s = stats.get(k) or {}
                means, stds = s.get("per_head", []), s.get("per_head_std", [])
                head = {"mean": means[h]} if h < len(means) else None
                if head is not None and h < len(stds):
                    head["std"] = stds[h]
                row.append(_cell(head, precision))
            rows.append(row)
    if per_head:
        idx = pd.MultiIndex.from_tuples(index, names=["model", "head"])
    else:
        idx = pd.Index(index, name="model")
    return pd.DataFrame(rows, index=idx, columns=list(order.values()), dtype=object)


def by_size_table(
    summaries: Mapping[str, dict],
    metric: str = "paibb_by_size",
    precision: int = 3,
    layers: Sequence[str] | Mapping[str, str] | None = None,
    buckets: Sequence[str] = BUCKETS,
) -> pd.DataFrame:
    """A per-size-bucket metric: rows model, columns ``(layer, bucket)``, cells ``"mean ± std"``.

    With a single layer the columns are just the buckets.
    """
    order = _layer_order(summaries, metric, layers)
    rows = []
    for summary in summaries.values():
        stats = summary.get(metric) or {}
        rows.append([_cell((stats.get(k) or {}).get(b), precision) for k in order for b in buckets])
    if len(order) == 1:
        columns = pd.Index(list(buckets))
    else:
        columns = pd.MultiIndex.from_tuples(
            [(label, b) for label in order.values() for b in buckets], names=["layer", "size"]
        )
    index = pd.Index(list(summaries), name="model")
    return pd.DataFrame(rows, index=index, columns=columns, dtype=object)


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def _latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(c, c) for c in text)


def _fmt(value, precision: int, missing: str, escape: Callable[[str], str]) -> str:
    """A cell as text: floats with ``precision`` decimals, None/NaN as ``missing``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    if isinstance(value, float):
        return f"{value:.{precision}f}"
    return escape(str(value))


def _index_rows(df: pd.DataFrame) -> list[tuple]:
    """Each row's index as a tuple, with a level left blank where it repeats the row above."""
    rows = [t if isinstance(t, tuple) else (t,) for t in df.index]
    out, prev = [], None
    for t in rows:
        shown = list(t)
        if prev is not None:
            for i in range(len(t) - 1):
                if t[: i + 1] != prev[: i + 1]:
                    break
                shown[i] = ""
        out.append(tuple(shown))
        prev = t
    return out


def _column_tuples(df: pd.DataFrame) -> list[tuple]:
    return [c if isinstance(c, tuple) else (c,) for c in df.columns]


def _header_groups(labels: list[tuple], level: int) -> list[tuple[str, int]]:
    """Runs of equal ``labels[:level + 1]`` as ``(label at level, span)``."""
    groups: list[tuple[str, int]] = []
    prev = None
    for t in labels:
        if prev is not None and t[: level + 1] == prev[: level + 1]:
            groups[-1] = (groups[-1][0], groups[-1][1] + 1)
        else:
            groups.append((t[level], 1))
        prev = t
    return groups


def to_latex(
    df: pd.DataFrame, caption: str, label: str, precision: int = 3, placement: str = "t"
) -> str:
    """A booktabs ``table`` of ``df``: index columns left-aligned, ``±`` as ``$\\pm$``.

    Multi-level columns get one header row per level, with ``\\multicolumn`` and
    ``\\cmidrule`` over the groups of the upper levels. Missing cells are ``--``. Labels and
    cells are escaped; ``caption`` and ``label`` are inserted as LaTeX, unescaped.
    """

    def esc(text) -> str:
        return _latex_escape(str(text)).replace("±", r"$\pm$")

    n_idx = df.index.nlevels
    cols = _column_tuples(df)
    n_levels = len(cols[0]) if cols else 1
    spec = "l" * n_idx + "c" * len(cols)
    lines = [
        rf"\begin{{table}}[{placement}]",
        r"\centering",
        rf"\caption{{{caption}}}",
        rf"\label{{{label}}}",
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
    ]
    names = [esc(n) if n is not None else "" for n in df.index.names]
    for level in range(n_levels - 1):
        cells, rules, start = [""] * n_idx, [], n_idx + 1
        for text, span in _header_groups(cols, level):
            cells.append(rf"\multicolumn{{{span}}}{{c}}{{{esc(text)}}}" if span > 1 else esc(text))
            rules.append(rf"\cmidrule(lr){{{start}-{start + span - 1}}}")
            start += span
        lines.append(" & ".join(cells) + r" \\")
        lines.append(" ".join(rules))
    lines.append(" & ".join(names + [esc(c[-1]) for c in cols]) + r" \\")
    lines.append(r"\midrule")
    for idx, values in zip(_index_rows(df), df.itertuples(index=False)):
        cells = [esc(i) for i in idx] + [_fmt(v, precision, "--", esc) for v in values]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def to_markdown(df: pd.DataFrame, precision: int = 3) -> str:
    """A GitHub-flavoured markdown table of ``df``: a header row, then one row per index entry.

    Multi-level column labels are joined with `` / ``; missing cells are ``-``.
    """

    def esc(text) -> str:
        return str(text).replace("|", r"\|")

    names = [esc(n) if n is not None else "" for n in df.index.names]
    header = names + [esc(" / ".join(map(str, c))) for c in _column_tuples(df)]
    align = [":---"] * len(names) + ["---:"] * (len(header) - len(names))
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    for idx, values in zip(_index_rows(df), df.itertuples(index=False)):
        cells = [esc(i) for i in idx] + [_fmt(v, precision, "-", esc) for v in values]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
