"""One figure style for the thesis: paper context, serif fonts, sizes from the text width.

Use :func:`use_thesis_style` once, size figures with :func:`figsize` (inches, from a fraction of
the text width) and save with :func:`save_figure`, which writes PDF (vector, for LaTeX) and PNG
(for quick looks and the README) side by side.

Sizes and fonts are those of the printed page. On screen (in a Jupyter kernel, where the inline
backend shows figures at ``figure.dpi``) the style draws at :data:`SCREEN_DPI`, so a text-width
figure shows about 1260 px wide and its print-size fonts stay readable; what
:func:`save_figure` writes does not change (PDF in inches, PNG at ``savefig.dpi``).

A notebook run on its own writes under ``<repo>/runs/notebooks/<family>/<notebook stem>/``
(figures in its ``figures/`` folder): :func:`notebook_dirs`.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

TEXT_WIDTH_IN = 6.3  # an A4 thesis with 2.5 cm margins; change per document
GOLDEN = (5**0.5 - 1) / 2
SCREEN_DPI = 200  # figure.dpi in a notebook: a text-width figure shows ~1260 px wide
PRINT_DPI = 110  # figure.dpi elsewhere (scripts, tests)
SAVE_DPI = 200  # the PNGs save_figure writes
REPO_ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK_RUNS = REPO_ROOT / "runs" / "notebooks"
FIGURES_ENV = "ATTNKIT_FIGURES"

# One colour per normalizer, used by every plot that compares them.
NORMALIZER_COLORS = {
    "softmax": "#4C72B0",
    "sparsemax": "#DD8452",
    "entmax15": "#55A868",
    "alpha_entmax": "#C44E52",
    "tvmax": "#8172B3",
}


def in_kernel() -> bool:
    """Whether this runs in a Jupyter (IPython) kernel: JupyterLab, papermill, nbconvert."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython comes with the notebook dependencies
        return False
    return getattr(get_ipython(), "kernel", None) is not None


def use_thesis_style(font_scale: float = 1.0, screen: bool | None = None) -> None:
    """Seaborn's paper context with serif text and vector-friendly output settings.

    ``screen``: draw figures at :data:`SCREEN_DPI` for display (None: when in a Jupyter
    kernel), else at :data:`PRINT_DPI`. Saved files are the same either way.
    """
    import seaborn as sns

    if screen is None:
        screen = in_kernel()
    sns.set_theme(context="paper", style="ticks", font_scale=font_scale)
    matplotlib.rcParams.update(
        {
            "font.family": "serif",
            "font.serif": ["DejaVu Serif", "Times New Roman", "Times"],
            "mathtext.fontset": "dejavuserif",
            "axes.spines.top": False,
            "axes.spines.right": False,
            "figure.dpi": SCREEN_DPI if screen else PRINT_DPI,
            "savefig.dpi": SAVE_DPI,
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


def notebook_dirs(
    notebook: str,
    run_dir: str | Path | None = None,
    figures_dir: str | Path | None = None,
    *parts: str,
) -> tuple[Path, Path]:
    """``(run_dir, figures_dir)`` of a notebook (``"detr/02_attention_maps"``): where it writes.

    Given folders (the workbook runner injects both) are kept. Otherwise ``run_dir`` is
    ``<repo>/runs/notebooks/<family>/<stem>[/<parts>...]`` (from the repository, whatever the
    working directory) and figures go to ``$ATTNKIT_FIGURES``, else ``run_dir/figures``.
    Nothing is created here (:func:`save_figure` makes its folder).
    """
    run = Path(run_dir) if run_dir else NOTEBOOK_RUNS.joinpath(*Path(notebook).parts, *parts)
    env = os.environ.get(FIGURES_ENV)
    figures = Path(figures_dir) if figures_dir else Path(env) if env else run / "figures"
    return run, figures


def figures_dir(out_dir: str | Path | None = None) -> Path:
    """Where figures go (made if missing): ``out_dir``, else ``$ATTNKIT_FIGURES``, else
    ``<repo>/runs/figures`` (never the working directory)."""
    path = Path(out_dir or os.environ.get(FIGURES_ENV) or REPO_ROOT / "runs" / "figures")
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
