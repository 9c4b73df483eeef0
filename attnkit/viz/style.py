"""One figure style for the thesis: paper context, serif fonts, sizes from the text width.

Use :func:`use_thesis_style` once, size figures with :func:`figsize` (inches, from a fraction of
the text width) and save with :func:`save_figure`, which writes PDF (vector, for LaTeX) and PNG
(for quick looks and the README) side by side.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

TEXT_WIDTH_IN = 6.3  # an A4 thesis with 2.5 cm margins; change per document
GOLDEN = (5**0.5 - 1) / 2

# One colour per normalizer, used by every plot that compares them.
NORMALIZER_COLORS = {
    "softmax": "#4C72B0",
    "sparsemax": "#DD8452",
    "entmax15": "#55A868",
    "alpha_entmax": "#C44E52",
    "tvmax": "#8172B3",
}


def use_thesis_style(font_scale: float = 1.0) -> None:
    """Seaborn's paper context with serif text and vector-friendly output settings."""
    import seaborn as sns

    sns.set_theme(context="paper", style="ticks", font_scale=font_scale)
    matplotlib.rcParams.update(
        {
            "font.family": "serif",
            "font.serif": ["DejaVu Serif", "Times New Roman", "Times"],
            "mathtext.fontset": "dejavuserif",
            "axes.spines.top": False,
            "axes.spines.right": False,
            "figure.dpi": 110,
            "savefig.dpi": 200,
            "savefig.bbox": "tight",
            "savefig.pad_inches": 0.02,
            "pdf.fonttype": 42,  # embed TrueType: selectable text in the PDF
            "ps.fonttype": 42,
            "legend.frameon": False,
            "image.cmap": "viridis",
        }
    )


def figsize(
    width: float = 1.0, aspect: float = GOLDEN, text_width: float = TEXT_WIDTH_IN
) -> tuple[float, float]:
    """``(w, h)`` in inches for a figure ``width`` x the text width, height = ``aspect`` x w."""
    w = width * text_width
    return (w, w * aspect)


def figures_dir(out_dir: str | Path | None = None) -> Path:
    """Where figures go: ``out_dir``, else ``$ATTNKIT_FIGURES``, else ``./figures``."""
    path = Path(out_dir or os.environ.get("ATTNKIT_FIGURES", "figures"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_figure(fig, name: str, out_dir: str | Path | None = None, formats=("pdf", "png")):
    """Save ``fig`` as ``out_dir/name.{pdf,png}``; returns the written paths."""
    folder = figures_dir(out_dir)
    paths = []
    for fmt in formats:
        path = folder / f"{name}.{fmt}"
        fig.savefig(path, format=fmt)
        paths.append(path)
    return paths
