"""Thesis tables of analysis summaries, written as Markdown and LaTeX side by side."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from attnkit.analysis.tables import summary_table, to_latex, to_markdown
from attnkit.viz.labels import layer_label, normalizer_label
from attnkit.viz.sparsity import METRIC_LABELS, _layers

__all__ = ["export_tables", "write_table"]


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
