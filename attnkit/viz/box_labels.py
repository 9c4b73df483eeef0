"""Labels of boxes on an image that neither overlap each other nor leave the image.

:func:`place_label` puts one box's label on an image axis, greedily, among the labels already
placed there: it tries the box's upper-left corner outside the box, then below it, inside it,
its right-hand corners, then steps further out and along, and keeps the first spot that is free
and inside the image (measured with the renderer's text extents, in display pixels); when
none is free, the spot that overlaps least. Every labelled box of :mod:`attnkit.viz` (samples,
detections, matching) goes through it, in order of importance (ground truth, then the best
scores). :func:`select_boxes` thins detections for display: score threshold, per-class
non-maximum suppression and top-k.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.transforms import Bbox

__all__ = ["LABEL_GID", "label_extent", "place_label", "select_boxes"]

LABEL_GID = "attnkit-box-label"  # marks the label texts the placer avoids
PREFER = ("above", "below", "centre")


def select_boxes(
    boxes,
    scores,
    labels=None,
    score_threshold: float | None = None,
    nms_iou: float | None = None,
    top_k: int | None = None,
) -> list[int]:
    """Indices of the boxes to draw, best score first.

    ``boxes`` ``[N, 4]`` xyxy, ``scores`` ``[N]``, ``labels`` ``[N]`` classes (None: one class).
    Keeps scores >= ``score_threshold``; ``nms_iou``: drops a box overlapping a better one of
    its class with IoU > ``nms_iou`` (per-class non-maximum suppression); ``top_k``: at most
    that many. None leaves a step out.
    """
    boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    scores = torch.as_tensor(scores, dtype=torch.float32).reshape(-1)
    labels = (
        torch.zeros(len(scores), dtype=torch.int64)
        if labels is None
        else torch.as_tensor(labels).reshape(-1).long()
    )
    keep = torch.arange(len(scores))
    if score_threshold is not None:
        keep = keep[scores[keep] >= score_threshold]
    if nms_iou is not None and len(keep):
        from torchvision.ops import batched_nms  # here: importing torchvision takes seconds

        keep = keep[batched_nms(boxes[keep], scores[keep], labels[keep], float(nms_iou))]
    keep = keep[torch.argsort(scores[keep], descending=True, stable=True)]
    if top_k is not None:
        keep = keep[: max(0, int(top_k))]
    return keep.tolist()


def _renderer(fig):
    get = getattr(fig.canvas, "get_renderer", None)
    return get() if get is not None else fig._get_renderer()


def label_extent(text, renderer=None) -> Bbox:
    """Display extent (pixels) of a label: its text and the padding of its background box."""
    renderer = renderer or _renderer(text.figure)
    ext = text.get_window_extent(renderer)
    patch = text.get_bbox_patch()
    pad = 0.0
    if patch is not None:
        pad = patch.get_boxstyle().pad * text.get_fontsize() * text.figure.dpi / 72.0
    return Bbox.from_extents(ext.x0 - pad, ext.y0 - pad, ext.x1 + pad, ext.y1 + pad)


def _image_bounds(ax) -> Bbox:
    """The axis' view (the image extent of an image axis) in display pixels, within the axes."""
    ax.set_xlim(ax.get_xlim())  # freeze the view: later boxes must not move placed labels
    ax.set_ylim(ax.get_ylim())
    ax.apply_aspect()
    corners = ax.transData.transform(
        [(ax.get_xlim()[0], ax.get_ylim()[0]), (ax.get_xlim()[1], ax.get_ylim()[1])]
    )
    view = Bbox.from_extents(*corners.min(0), *corners.max(0))
    return Bbox.intersection(view, ax.bbox) or view


def _candidates(box: Bbox, w: float, h: float, prefer: str) -> list[tuple[float, float]]:
    """Lower-left corners to try for a ``w`` x ``h`` label of ``box``, best first."""
    above, below = (box.x0, box.y1), (box.x0, box.y0 - h)
    inside_top, inside_bottom = (box.x0, box.y1 - h), (box.x0, box.y0)
    right_above, right_below = (box.x1 - w, box.y1), (box.x1 - w, box.y0 - h)
    centre = ((box.x0 + box.x1 - w) / 2, (box.y0 + box.y1 - h) / 2)
    if prefer == "above":
        first = [above, below, inside_top, inside_bottom, right_above, right_below]
    elif prefer == "below":
        first = [below, above, inside_bottom, inside_top, right_below, right_above]
    else:
        first = [centre, (centre[0], centre[1] + h), (centre[0], centre[1] - h), above, below]
    further = []
    for k in range(1, 8):  # step out of the box and along its edges
        for x in (box.x0, box.x1 - w, box.x0 - k * w / 2, box.x0 + k * w / 2):
            further += [(x, box.y1 + (k - 1) * h), (x, box.y0 - k * h)]
        further += [(box.x0, box.y1 - (k + 1) * h), (box.x1 - w, box.y0 + k * h)]
    return first + further


def _clamp(x: float, y: float, w: float, h: float, bounds: Bbox) -> tuple[float, float]:
    """Shift a ``w`` x ``h`` rectangle at ``(x, y)`` along until it lies inside ``bounds``."""
    x = min(max(x, bounds.x0), max(bounds.x0, bounds.x1 - w))
    y = min(max(y, bounds.y0), max(bounds.y0, bounds.y1 - h))
    return x, y


def _overlap(a: Bbox, others: Sequence[Bbox]) -> float:
    total = 0.0
    for b in others:
        dx = min(a.x1, b.x1) - max(a.x0, b.x0)
        dy = min(a.y1, b.y1) - max(a.y0, b.y0)
        if dx > 0 and dy > 0:
            total += dx * dy
    return total


def place_label(
    ax,
    box,
    text: str,
    color,
    text_color: str = "white",
    prefer: str = "above",
    fontsize: float = 5.0,
    alpha: float = 0.85,
    pad: float = 0.6,
):
    """Label the xyxy ``box`` (data coordinates) with ``text`` on ``color``; returns the Text.

    The label goes where it overlaps no label already placed on ``ax`` by this function and
    stays inside the axis' view (the image): ``prefer`` ``"above"`` (outside the box's top-left
    corner first), ``"below"`` (its bottom-left corner) or ``"centre"``. Call it once the
    axis' size is final; it fixes the axis' view (later artists do not rescale it), and labels
    keep their data position if the axis is resized afterwards.
    ``pad``: points of background around the text.
    """
    if prefer not in PREFER:
        raise ValueError(f"prefer must be one of {PREFER}, got {prefer!r}")
    fig = ax.figure
    renderer = _renderer(fig)
    bounds = _image_bounds(ax)
    placed = [_placed_extent(t, renderer) for t in ax.texts if t.get_gid() == LABEL_GID]
    label = ax.text(
        0,
        0,
        text,
        fontsize=fontsize,
        color=text_color,
        ha="left",
        va="bottom",
        bbox={"facecolor": color, "edgecolor": "none", "pad": pad, "alpha": alpha},
        clip_on=True,
        gid=LABEL_GID,
        zorder=5,
    )
    size = label_extent(label, renderer)
    w, h = size.width, size.height
    pad_px = pad * fig.dpi / 72.0
    corners = ax.transData.transform(np.asarray(box, dtype=float).reshape(2, 2))
    target = Bbox.from_extents(*corners.min(0), *corners.max(0))
    best, best_cost = None, None
    for x, y in _candidates(target, w, h, prefer):
        x, y = _clamp(x, y, w, h, bounds)
        cost = _overlap(Bbox.from_bounds(x, y, w, h), placed)
        if best_cost is None or cost < best_cost:
            best, best_cost = (x, y), cost
        if cost == 0:
            break
    x, y = ax.transData.inverted().transform((best[0] + pad_px, best[1] + pad_px))
    label.set_position((x, y))
    label._attnkit_extent = (_layout_key(ax), Bbox.from_bounds(best[0], best[1], w, h))
    return label


def _layout_key(ax) -> tuple:
    return (ax.figure.dpi, tuple(ax.bbox.bounds), ax.get_xlim(), ax.get_ylim())


def _placed_extent(text, renderer) -> Bbox:
    """A placed label's extent: kept from its placement while the axis is unchanged."""
    key, extent = getattr(text, "_attnkit_extent", (None, None))
    return extent if key == _layout_key(text.axes) else label_extent(text, renderer)
