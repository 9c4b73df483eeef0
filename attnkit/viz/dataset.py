"""Figures of a detection dataset: samples with boxes, class and size histograms, image sizes."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from matplotlib.patches import Rectangle

from attnkit.data.stats import SIZE_BUCKETS, annotation_table, image_table
from attnkit.viz.box_labels import place_label
from attnkit.viz.style import figsize

BOX_COLORS = sns.color_palette("bright", 10)


def draw_boxes(ax, boxes_xyxy, labels=None, colors=None, linewidth: float = 1.2, fontsize=6):
    """Draw absolute xyxy boxes and their text labels (placed clear of each other, inside the
    image: :func:`~attnkit.viz.box_labels.place_label`) on an image axis."""
    boxes = np.asarray(boxes_xyxy, dtype=float).reshape(-1, 4)
    colors = [
        colors[k] if colors is not None else BOX_COLORS[k % len(BOX_COLORS)]
        for k in range(len(boxes))
    ]
    for (x0, y0, x1, y1), color in zip(boxes, colors):
        ax.add_patch(
            Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=color, linewidth=linewidth)
        )
    for box, color, label in zip(boxes, colors, labels if labels is not None else []):
        place_label(ax, box, str(label), color, fontsize=fontsize, pad=0.8)


def plot_sample_grid(dataset, indices, ncols: int = 4, width: float = 1.0):
    """Images of a :class:`CocoDetection` (untransformed) with their boxes and class names."""
    indices = list(indices)
    nrows = max(1, int(np.ceil(len(indices) / ncols)))
    fig, axes = plt.subplots(
        nrows, ncols, figsize=figsize(width, aspect=0.8 * nrows / ncols), squeeze=False
    )
    names = dataset.categories
    for ax in axes.flat:
        ax.axis("off")
    shown = []
    for ax, index in zip(axes.flat, indices):
        image = dataset.load_image(index)
        target = dataset.raw_target(index)
        ax.imshow(image)
        ax.set_title(f"#{target['image_id']}  {image.width}x{image.height}", fontsize=7)
        shown.append((ax, target))
    fig.tight_layout(pad=0.3)  # before the labels: they are placed in the final axes
    for ax, target in shown:
        labels = [names.get(int(c), str(int(c))) for c in target["labels"]]
        draw_boxes(ax, target["boxes"].numpy(), labels)
    return fig


def plot_class_and_size_histograms(coco, width: float = 1.0):
    """Two panels: objects per class, and objects per COCO size bucket."""
    table = annotation_table(coco)
    fig, (ax_cls, ax_size) = plt.subplots(1, 2, figsize=figsize(width, aspect=0.35))
    classes = table["category"].value_counts().sort_index()
    ax_cls.bar(classes.index, classes.values, color=sns.color_palette("deep")[0])
    ax_cls.set_ylabel("objects")
    ax_cls.set_title("per class")
    ax_cls.tick_params(axis="x", rotation=30)
    buckets = table["bucket"].value_counts().reindex(list(SIZE_BUCKETS), fill_value=0)
    ax_size.bar(buckets.index, buckets.values, color=sns.color_palette("deep")[1])
    ax_size.set_title("per size bucket (COCO area)")
    for x, v in enumerate(buckets.values):
        ax_size.text(x, v, f"{v / max(1, buckets.sum()):.0%}", ha="center", va="bottom", fontsize=7)
    fig.tight_layout()
    return fig


def plot_image_sizes(coco, width: float = 1.0):
    """Two panels: image width x height scatter, and objects-per-image histogram."""
    images = image_table(coco)
    fig, (ax_wh, ax_n) = plt.subplots(1, 2, figsize=figsize(width, aspect=0.35))
    ax_wh.scatter(images["width"], images["height"], s=6, alpha=0.6)
    lim = [0, max(images["width"].max(), images["height"].max()) * 1.05] if len(images) else [0, 1]
    ax_wh.plot(lim, lim, color="0.6", linewidth=0.8, linestyle="--", label="square")
    ax_wh.set_xlabel("width (px)")
    ax_wh.set_ylabel("height (px)")
    ax_wh.legend(fontsize=7)
    counts = images["objects"].value_counts().sort_index()
    ax_n.bar(counts.index, counts.values, color=sns.color_palette("deep")[2])
    ax_n.set_xlabel("objects per image")
    ax_n.set_ylabel("images")
    fig.tight_layout()
    return fig
