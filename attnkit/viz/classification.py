"""Figures of image classification: samples per class, class counts, accuracy, confusion matrix.

Inputs are plain arrays (images ``[N, H, W, 3]`` uint8 and labels ``[N]``, as
:class:`attnkit.data.classification.ArrayClassification` holds them) and the records of a run's
``metrics.jsonl`` (its ``eval`` records carry ``top1``, ``top5`` and ``confusion``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np

from attnkit.viz import curves
from attnkit.viz.overlay import TITLE_SIZE, image_grid
from attnkit.viz.style import TEXT_WIDTH_IN, figsize

__all__ = [
    "class_counts",
    "last_eval",
    "normalized_confusion",
    "plot_accuracy_curves",
    "plot_class_counts",
    "plot_class_samples",
    "plot_confusion_matrix",
    "plot_training_curves",
]

TRAIN_TITLES = {"loss": "train loss", "accuracy": "train accuracy (batches)"}
ACCURACY_LABELS = {"top1": "top-1", "top5": "top-5", "mean_class_accuracy": "mean class acc."}


def class_counts(labels, num_classes: int) -> np.ndarray:
    """Images per class ``[num_classes]``."""
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)


def plot_class_samples(
    images: np.ndarray,
    labels,
    class_names: Sequence[str],
    per_class: int = 8,
    width: float = 1.0,
):
    """A grid: one row per class (named on the left), its first ``per_class`` images."""
    labels = np.asarray(labels)
    fig, axes = image_grid(
        len(class_names),
        per_class,
        images.shape[1:3],
        width * TEXT_WIDTH_IN,
        margins=(0.75, 0.05, 0.05, 0.05),
        pad=(0.03, 0.03),
        max_cell=0.6,
    )
    for r, name in enumerate(class_names):
        found = np.flatnonzero(labels == r)[:per_class]
        for c in range(per_class):
            ax = axes[r, c]
            if c < len(found):
                ax.imshow(images[found[c]], interpolation="nearest")
            if c == 0:
                ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=TITLE_SIZE)
    return fig


def plot_class_counts(
    counts_by_split: Mapping[str, Sequence[int]], class_names: Sequence[str], width: float = 1.0
):
    """Grouped bars: images per class, one bar per split."""
    fig, ax = plt.subplots(figsize=figsize(width, aspect=0.3))
    x = np.arange(len(class_names))
    n = len(counts_by_split)
    bar_w = 0.8 / max(n, 1)
    for i, (split, counts) in enumerate(counts_by_split.items()):
        ax.bar(x + (i - (n - 1) / 2) * bar_w, counts, bar_w * 0.92, label=split)
    ax.set_xticks(x, class_names, rotation=30, ha="right")
    ax.set_ylabel("images")
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=n)
    fig.tight_layout()
    return fig


def last_eval(run) -> dict:
    """The last ``eval`` record of a run (folder, ``metrics.jsonl`` or records)."""
    records = next(iter(curves.load_runs(run).values()))
    evals = [r for r in records if r.get("kind") == "eval"]
    if not evals:
        raise ValueError(f"{run}: no eval record (set train.eval_every_epochs)")
    return evals[-1]


def normalized_confusion(confusion) -> np.ndarray:
    """Each row (true class) divided by its count: the fraction predicted as each class.

    Rows of classes without samples are NaN."""
    counts = np.asarray(confusion, dtype=float)  # [C, C]
    support = counts.sum(axis=1, keepdims=True)  # [C, 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, counts / support, np.nan)


def plot_confusion_matrix(
    confusion, class_names: Sequence[str], title: str | None = None, width: float = 0.62
):
    """The confusion matrix normalised per true class (rows), cells annotated in percent."""
    frac = normalized_confusion(confusion)
    fig, ax = plt.subplots(figsize=figsize(width, aspect=0.9))
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    for (r, c), v in np.ndenumerate(frac):
        if not np.isnan(v) and v >= 0.005:
            ax.text(
                c,
                r,
                f"{100 * v:.0f}",
                ha="center",
                va="center",
                fontsize=5,
                color="white" if v > 0.55 else "black",
            )
    ticks = range(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=45, ha="right", fontsize=6)
    ax.set_yticks(ticks, class_names, fontsize=6)
    ax.tick_params(length=0)
    ax.set_xlabel("predicted class", fontsize=7)
    ax.set_ylabel("true class", fontsize=7)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title:
        ax.set_title(title)
    cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    cbar.set_label("fraction of the true class", fontsize=6)
    cbar.ax.tick_params(labelsize=6)
    fig.tight_layout()
    return fig


def _records(runs, lr_drops: bool) -> dict[str, list[dict]]:
    """``{name: records}``; without the ``lr/`` values unless ``lr_drops``: :mod:`curves` marks
    every logged lr decrease as a drop, and a cosine schedule (the ViT recipe) decreases it at
    every step."""
    data = curves.load_runs(runs)
    if lr_drops:
        return data
    return {
        n: [{k: v for k, v in r.items() if not k.startswith("lr/")} for r in records]
        for n, records in data.items()
    }


def plot_accuracy_curves(
    runs, metrics: Sequence[str] = ("top1", "top5"), lr_drops: bool = False, width: float = 1.0
):
    """Validation accuracy against step (:func:`curves.plot_ap_curves` with accuracy labels).

    ``lr_drops``: mark the lr drops of a step schedule (off: see :func:`_records`)."""
    fig = curves.plot_ap_curves(_records(runs, lr_drops), metrics=metrics, width=width)
    for ax in fig.axes:
        if ax.get_title() in ACCURACY_LABELS:
            ax.set_title(ACCURACY_LABELS[ax.get_title()])
        if ax.get_ylabel().startswith("COCO AP"):
            ax.set_ylabel(ax.get_ylabel().replace("COCO AP", "val accuracy"))
        legend = ax.get_legend()
        for text in legend.get_texts() if legend else []:
            text.set_text(ACCURACY_LABELS.get(text.get_text(), text.get_text()))
    return fig


def plot_training_curves(runs, smoothing: float = 0.0, lr_drops: bool = False, width: float = 1.0):
    """Train loss and batch accuracy against step (:func:`curves.plot_loss_curves`)."""
    fig = curves.plot_loss_curves(
        _records(runs, lr_drops), components=tuple(TRAIN_TITLES), smoothing=smoothing, width=width
    )
    for ax in fig.axes:
        for key, title in TRAIN_TITLES.items():
            if ax.get_title() == curves.LOSS_TITLES.get(key, key):
                ax.set_title(title)
    return fig
