"""Drawing primitives for attention maps: upsampling, blending over the image, boxes, grids.

A map is a query's attention over an image's unpadded feature grid; :func:`upsample_map` brings
it to the image size bilinearly (``align_corners=False``, as PAIBB does) and
:func:`overlay_attention` blends it over a grey copy of the image with a colormap, transparent
where the weight is 0, under a square-root colour norm (``gamma=0.5``) so that small weights of
dense maps stay visible. :func:`image_grid` lays out axes in inches without a layout engine, so
grids of dozens of images stay fast. The figure-level views are in :mod:`attnkit.viz.attention`.
"""

from __future__ import annotations

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.cm import ScalarMappable
from matplotlib.colors import PowerNorm
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator
from PIL import Image

from attnkit.viz.box_labels import place_label

__all__ = [
    "CMAP",
    "GT_COLOR",
    "PRED_COLOR",
    "blend_attention",
    "draw_box",
    "image_grid",
    "overlay_attention",
    "upsample_map",
]

PRED_COLOR = "#00E5FF"  # the object's predicted box on attention overlays (cyan)
GT_COLOR = "white"  # its ground-truth box (dashed)
CMAP = "inferno"
COLORBAR_LABEL = "attention weight"
TITLE_SIZE = 7
LABEL_SIZE = 6


def upsample_map(attn_map: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize (``align_corners=False``) of a ``[h, w]`` map to ``size = (H, W)``."""
    x = torch.as_tensor(attn_map, dtype=torch.float32)[None, None]  # [1, 1, h, w]
    up = F.interpolate(x, size=size, mode="bilinear", align_corners=False)  # [1, 1, H, W]
    return up[0, 0].numpy()


def _clean_axis(ax) -> None:
    """No ticks and no frame, but keep the axis labels (row labels of grids)."""
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def _display_size(image, max_side: int | None) -> tuple[int, int]:
    """``(H, W)`` to render at: the image size, shrunk so its longer side is <= ``max_side``."""
    h, w = image.height, image.width
    if max_side is None or max(h, w) <= max_side:
        return h, w
    scale = max_side / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def blend_attention(
    image, attn_map: torch.Tensor, norm, cmap: str = CMAP, alpha: float = 0.8, max_side=None
) -> np.ndarray:
    """RGB ``[H', W', 3]`` in [0, 1]: the map upsampled bilinearly and blended over grey ``image``.

    The blend weight of a pixel grows with its normalised value (``alpha`` at the top of the
    scale, 0 where the map is 0), so zero attention leaves the image visible.
    """
    size = _display_size(image, max_side)
    gray = image.convert("L")
    if size != (image.height, image.width):
        gray = gray.resize((size[1], size[0]), Image.BILINEAR)
    gray = np.asarray(gray, dtype=np.float32)[..., None] / 255.0  # [H', W', 1]
    up = upsample_map(attn_map, size)  # [H', W']
    level = np.clip(np.ma.getdata(norm(up)), 0.0, 1.0)  # [H', W']
    colors = matplotlib.colormaps[cmap](level)[..., :3]  # [H', W', 3]
    weight = alpha * np.clip(2.5 * level, 0.0, 1.0)[..., None]  # [H', W', 1]
    return (1 - weight) * (0.85 * gray) + weight * colors  # [H', W', 3]


def overlay_attention(
    ax,
    image,
    attn_map: torch.Tensor,
    vmax: float | None = None,
    alpha: float = 0.8,
    cmap: str = CMAP,
    gamma: float = 0.5,
    max_side: int | None = 256,
):
    """Draw ``attn_map`` ``[h, w]``, upsampled to the image, blended over a grey ``image``.

    The axis keeps the original pixel coordinates (boxes draw as usual). Returns a
    ``ScalarMappable`` of the colour scale (for a colourbar). ``vmax``: top of the scale (None:
    the map's maximum); ``gamma``: exponent of the power norm (1: linear); ``max_side``: render
    at most this many pixels along the longer side (speed; None: full resolution).
    """
    top = float(vmax) if vmax is not None else max(float(attn_map.max()), 1e-12)
    norm = PowerNorm(gamma, vmin=0.0, vmax=top)
    rgb = blend_attention(image, attn_map, norm, cmap, alpha, max_side)
    ax.imshow(rgb, extent=(0, image.width, image.height, 0), interpolation="bilinear")
    _clean_axis(ax)
    return ScalarMappable(norm=norm, cmap=cmap)


def draw_box(
    ax,
    box,
    color,
    dashed: bool = False,
    label: str | None = None,
    linewidth: float = 1.0,
    alpha=1.0,
):
    """One absolute xyxy box (solid for predictions, dashed for ground truth) and its label.

    The label is placed by :func:`~attnkit.viz.box_labels.place_label`: clear of the labels
    already on ``ax`` and inside the image (preferably above a solid box, below a dashed one).
    Returns the label's Text (None without a label).
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    ax.add_patch(
        Rectangle(
            (x0, y0),
            x1 - x0,
            y1 - y0,
            fill=False,
            edgecolor=color,
            linewidth=linewidth,
            linestyle=(0, (3, 2)) if dashed else "-",
            alpha=alpha,
        )
    )
    if not label:
        return None
    return place_label(
        ax,
        (x0, y0, x1, y1),
        label,
        color,
        text_color="black" if dashed else "white",
        prefer="below" if dashed else "above",
        fontsize=LABEL_SIZE - 1,
        alpha=0.8 * alpha,
    )


def image_grid(
    nrows: int,
    ncols: int,
    image_hw: tuple[int, int],
    width: float,
    margins: tuple[float, float, float, float] = (0.25, 0.05, 0.4, 0.05),
    pad: tuple[float, float] = (0.04, 0.04),
    max_cell: float = 1.6,
):
    """A figure of ``nrows x ncols`` image axes of the images' aspect, laid out in inches.

    ``width``: figure width in inches; ``margins``: ``(left, right, top, bottom)`` inches;
    ``pad``: ``(between columns, between rows)``; ``max_cell``: widest cell in inches (the
    figure narrows instead). No layout engine: grids of dozens of images stay fast to draw.
    Returns ``(fig, axes [nrows, ncols])``.
    """
    left, right, top, bottom = margins
    wpad, hpad = pad
    cell_w = min(max_cell, (width - left - right - wpad * (ncols - 1)) / ncols)
    cell_h = cell_w * image_hw[0] / image_hw[1]
    fig_w = left + right + ncols * cell_w + wpad * (ncols - 1)
    fig_h = top + bottom + nrows * cell_h + hpad * (nrows - 1)
    fig = plt.figure(figsize=(fig_w, fig_h))
    axes = np.empty((nrows, ncols), dtype=object)
    for r in range(nrows):
        for c in range(ncols):
            x = left + c * (cell_w + wpad)
            y = fig_h - top - (r + 1) * cell_h - r * hpad
            axes[r, c] = fig.add_axes((x / fig_w, y / fig_h, cell_w / fig_w, cell_h / fig_h))
            _clean_axis(axes[r, c])
    return fig, axes


def _colorbar(
    fig, mappable, axes, side: str = "right", label: str | None = COLORBAR_LABEL, nbins: int = 4
):
    """A colourbar beside the bounding box of ``axes`` (``"right"`` or ``"bottom"``)."""
    boxes = [ax.get_position() for ax in np.ravel(axes)]
    x0, x1 = min(b.x0 for b in boxes), max(b.x1 for b in boxes)
    y0, y1 = min(b.y0 for b in boxes), max(b.y1 for b in boxes)
    fig_w, fig_h = fig.get_size_inches()
    if side == "right":
        rect = (x1 + 0.06 / fig_w, y0 + 0.1 * (y1 - y0), 0.08 / fig_w, 0.8 * (y1 - y0))
        orientation = "vertical"
    else:
        rect = (x0 + 0.1 * (x1 - x0), y0 - 0.16 / fig_h, 0.8 * (x1 - x0), 0.06 / fig_h)
        orientation = "horizontal"
    cbar = fig.colorbar(mappable, cax=fig.add_axes(rect), orientation=orientation)
    cbar.ax.tick_params(labelsize=LABEL_SIZE - 1, length=2, pad=1)
    if nbins <= 2:  # just the ends of the scale: 0 and the maximum
        lo, hi = mappable.norm.vmin, mappable.norm.vmax
        cbar.set_ticks([lo, hi], labels=[f"{lo:.2g}", f"{hi:.2g}"])
    else:
        cbar.locator = MaxNLocator(nbins)
        cbar.update_ticks()
    if label:
        cbar.set_label(label, fontsize=LABEL_SIZE)
    return cbar
