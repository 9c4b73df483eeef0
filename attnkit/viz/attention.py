"""Attention maps on their images: overlays, layer x head grids, models side by side.

Every view takes :class:`~attnkit.analysis.inspect.ImageInspection` objects (one image seen by
one model). A map is a query's cross-attention over the image's unpadded feature grid; it is
upsampled bilinearly (``align_corners=False``, as PAIBB does) to the original image size (for
speed, grids render at most ``max_side`` pixels along the longer side) and blended over a grey
copy of the image with a colormap, transparent where the weight is 0. Predicted boxes are solid, ground-truth
boxes dashed. Maps are per head by default; ``head_average=True`` shows the mean over heads and
says so in the figure.

Colour scales use a square-root norm (``gamma=0.5``) so that small weights of dense maps stay
visible, with a colourbar in attention weight per feature cell.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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

from attnkit.analysis.inspect import cross_attention_name
from attnkit.viz.labels import layer_label, model_color, normalizer_label
from attnkit.viz.style import figsize

__all__ = [
    "GT_COLOR",
    "PRED_COLOR",
    "blend_attention",
    "draw_box",
    "image_grid",
    "object_title",
    "overlay_attention",
    "plot_detections",
    "plot_detections_row",
    "plot_layer_head_grid",
    "plot_models_side_by_side",
    "plot_object_attention",
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


def _layer_text(layer: int) -> str:
    """Decoder layer index -> its figure label (``layer 3`` for index 2, as the thesis numbers)."""
    return layer_label(cross_attention_name(layer))


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
) -> None:
    """One absolute xyxy box (solid for predictions, dashed for ground truth) and its label."""
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
    if label:
        ax.text(
            x0,
            y1 if dashed else y0,
            label,
            fontsize=LABEL_SIZE - 1,
            color="black" if dashed else "white",
            va="top" if dashed else "bottom",
            bbox={"facecolor": color, "edgecolor": "none", "pad": 0.6, "alpha": 0.8 * alpha},
            clip_on=True,
        )


def object_title(inspection, query: int) -> str:
    """``"query 3: circle 0.92 | GT 1 circle"`` (or ``"| unmatched"``)."""
    label = inspection.class_name(inspection.labels[query])
    text = f"query {query}: {label} {float(inspection.scores[query]):.2f}"
    target = inspection.target_of(query)
    if target is None:
        return text + " | unmatched"
    return text + f" | GT {target} {inspection.class_name(inspection.gt_labels[target])}"


def _draw_object_boxes(ax, inspection, query: int, linewidth: float = 0.9) -> None:
    draw_box(ax, inspection.boxes[query], PRED_COLOR, linewidth=linewidth)
    target = inspection.target_of(query)
    if target is not None:
        draw_box(ax, inspection.gt_boxes[target], GT_COLOR, dashed=True, linewidth=linewidth)


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


def plot_detections(inspection, ax=None, queries: Sequence[int] | None = None, width: float = 0.5):
    """The image with its predicted boxes (solid, one colour each) and ground truth (dashed).

    ``queries``: the predictions to draw; None: :meth:`ImageInspection.objects` (the detections,
    or the matched queries when nothing reaches the score threshold, as for random-init models).
    """
    import seaborn as sns

    if ax is None:
        size = inspection.image_size
        _, axes = image_grid(1, 1, size, figsize(width)[0], margins=(0.02, 0.02, 0.3, 0.02))
        ax = axes[0, 0]
    queries = inspection.objects() if queries is None else list(queries)
    ax.imshow(inspection.image)
    _clean_axis(ax)
    for t, box in enumerate(inspection.gt_boxes):
        name = inspection.class_name(inspection.gt_labels[t])
        draw_box(ax, box, GT_COLOR, dashed=True, label=f"GT {t} {name}", linewidth=0.9)
    colors = sns.color_palette("bright", max(1, len(queries)))
    for color, q in zip(colors, queries):
        name = inspection.class_name(inspection.labels[q])
        score = float(inspection.scores[q])
        draw_box(ax, inspection.boxes[q], color, label=f"q{q} {name} {score:.2f}")
    shown = "detections" if bool(inspection.detected.any()) else "matched queries, none detected"
    ax.set_title(
        f"{normalizer_label(inspection.model_name)}\n{len(queries)} {shown}",
        fontsize=LABEL_SIZE,
        color=model_color(inspection.model_name),
        pad=2,
    )
    return ax.figure


def plot_detections_row(inspections: Mapping[str, object], width: float = 1.0, ncols: int = 4):
    """One panel per model (``{label: ImageInspection}`` of the same image) with its detections.

    Predicted boxes solid (``q<query> <class> <score>``), ground truth dashed.
    """
    items = list(inspections.values())
    ncols = min(len(items), ncols)
    nrows = -(-len(items) // ncols)
    first = items[0]
    fig, axes = image_grid(
        nrows, ncols, first.image_size, figsize(width)[0], (0.02, 0.02, 0.45, 0.02), (0.06, 0.3)
    )
    for ax in axes.flat[len(items) :]:
        ax.axis("off")
    for ax, inspection in zip(axes.flat, items):
        plot_detections(inspection, ax=ax)
    fig.suptitle(
        f"image #{first.image_id} ({first.image.width}x{first.image.height} px): predictions "
        f"(solid, score >= {first.score_threshold:g}) and ground truth (dashed)",
        fontsize=TITLE_SIZE,
        y=1 - 0.08 / fig.get_size_inches()[1],
        va="top",
    )
    return fig


def _maps(inspection, query: int, layers, heads, head_average: bool):
    """``[R, C, hv, wv]`` maps (rows: layers, columns: heads or their mean) and the labels."""
    positions = [inspection.layer_position(i) for i in (layers or inspection.layers)]
    heads = list(range(inspection.num_heads)) if heads is None else list(heads)
    maps = inspection.attention[positions][:, heads, query]  # [R, C, hv, wv]
    if head_average:
        maps = maps.mean(1, keepdim=True)  # [R, 1, hv, wv]
        cols = [f"mean of {len(heads)} heads"]
    else:
        cols = [f"head {h}" for h in heads]
    rows = [_layer_text(inspection.layers[p]) for p in positions]
    return maps, rows, cols


def plot_layer_head_grid(
    inspection,
    query: int,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    head_average: bool = False,
    width: float = 1.0,
    gamma: float = 0.5,
):
    """One object's (query's) cross-attention: a row per decoder layer, a column per head.

    One colour scale for the whole figure (its largest weight), so heads and layers compare.
    ``head_average``: a single column with the mean over ``heads`` (labelled as such).
    """
    maps, row_labels, col_labels = _maps(inspection, query, layers, heads, head_average)
    nrows, ncols = maps.shape[:2]
    fig, axes = image_grid(
        nrows, ncols, inspection.image_size, figsize(width)[0], (0.2, 0.55, 0.45, 0.03)
    )
    vmax = max(float(maps.max()), 1e-12)
    for r in range(nrows):
        for c in range(ncols):
            ax = axes[r, c]
            mappable = overlay_attention(ax, inspection.image, maps[r, c], vmax=vmax, gamma=gamma)
            _draw_object_boxes(ax, inspection, query, linewidth=0.7)
            if r == 0:
                ax.set_title(col_labels[c], fontsize=LABEL_SIZE, pad=2)
            if c == 0:
                ax.set_ylabel(row_labels[r], fontsize=LABEL_SIZE, labelpad=2)
    _colorbar(fig, mappable, axes)
    fig.suptitle(
        f"{normalizer_label(inspection.model_name)}, image #{inspection.image_id}, "
        f"{object_title(inspection, query)}"
        "\ndecoder cross-attention per layer and head (cyan: predicted box, dashed: matched GT)",
        fontsize=TITLE_SIZE,
        y=1 - 0.04 / fig.get_size_inches()[1],
        va="top",
    )
    return fig


def _model_maps(inspection, target: int, position: int, heads, head_average: bool):
    """The maps ``[R, hv, wv]`` of the query matched to ``target`` (None if unmatched)."""
    query = inspection.query_of(target)
    if query is None:
        return None, None
    maps = inspection.attention[position, heads, query]  # [h, hv, wv]
    return query, maps.mean(0, keepdim=True) if head_average else maps


def plot_models_side_by_side(
    inspections: Mapping[str, object],
    target: int,
    layer: int = -1,
    heads: Sequence[int] | None = None,
    head_average: bool = False,
    width: float = 1.0,
    gamma: float = 0.5,
    models_along: str = "auto",
):
    """The same ground-truth object through several models, one column (or row) per model.

    ``inspections``: ``{model label: ImageInspection}`` of the same image; each model shows, for
    decoder layer ``layer``, the query it matched to ground truth ``target`` (its own query
    index), one map per head (``head_average``: their mean, labelled). Each model has its own
    colour scale and colourbar: the normalizers' maxima differ by orders of magnitude.
    ``models_along="rows"`` transposes the figure (a row per model, a column per head);
    ``"auto"``: columns unless there are more maps per model than models (a row per model keeps
    four models x eight heads on one page).
    """
    if models_along not in ("auto", "columns", "rows"):
        raise ValueError(f"models_along must be 'auto', 'columns' or 'rows', got {models_along!r}")
    items = list(inspections.items())
    first = items[0][1]
    heads = list(range(first.num_heads)) if heads is None else list(heads)
    n_maps = 1 if head_average else len(heads)
    by_col = models_along == "columns" or (models_along == "auto" and n_maps <= len(items))
    shape = (n_maps, len(items)) if by_col else (len(items), n_maps)
    margins = (0.2, 0.05, 0.72, 0.3) if by_col else (0.95, 0.5, 0.45, 0.03)
    pad = (0.1, 0.04) if by_col else (0.04, 0.06)
    fig, axes = image_grid(*shape, first.image_size, figsize(width)[0], margins, pad)
    grid = axes if by_col else axes.T  # [maps, models]
    map_labels = [f"mean of {len(heads)} heads"] if head_average else [f"head {h}" for h in heads]
    position = first.layer_position(layer)
    for c, (label, inspection) in enumerate(items):
        query, maps = _model_maps(inspection, target, position, heads, head_average)
        name = (
            (normalizer_label(label).replace(" (", "\n(") if by_col else normalizer_label(label))
            + "\n"
            + (
                f"query {query} ({float(inspection.scores[query]):.2f})"
                if query is not None
                else "GT unmatched"
            )
        )
        for r in range(n_maps):
            ax = grid[r, c]
            if maps is not None:
                vmax = max(float(maps.max()), 1e-12)
                mappable = overlay_attention(ax, inspection.image, maps[r], vmax, gamma=gamma)
                _draw_object_boxes(ax, inspection, query, linewidth=0.7)
            else:
                ax.axis("off")
            if c == 0:
                (ax.set_ylabel if by_col else ax.set_title)(map_labels[r], fontsize=LABEL_SIZE)
        head_ax = grid[0, c]
        text = {"fontsize": LABEL_SIZE, "color": model_color(label)}
        if by_col:
            head_ax.set_title(name, pad=3, **text)
        else:
            head_ax.set_ylabel(name, rotation=0, ha="right", va="center", labelpad=3, **text)
        if maps is not None:
            side = "bottom" if by_col else "right"
            _colorbar(fig, mappable, grid[:, c], side=side, label=None, nbins=2)
    gt_name = first.class_name(first.gt_labels[target])
    fig.suptitle(
        f"image #{first.image_id}, GT {target} ({gt_name}): decoder "
        f"{_layer_text(first.layers[position])} cross-attention of the query each model matched to it\n"
        f"colour: {COLORBAR_LABEL}, own scale per model; cyan: predicted box, dashed: GT",
        fontsize=TITLE_SIZE,
        y=1 - 0.04 / fig.get_size_inches()[1],
        va="top",
    )
    return fig


def plot_object_attention(
    inspection,
    query: int,
    layer: int = -1,
    head: int | None = 0,
    width: float = 1.0,
    gamma: float = 0.5,
):
    """Two panels: the image with the object's boxes, and one map (``head=None``: mean of heads)."""
    position = inspection.layer_position(layer)
    maps = inspection.attention[position, :, query]  # [H, hv, wv]
    attn = maps.mean(0) if head is None else maps[head]  # [hv, wv]
    fig, axes = image_grid(
        1, 2, inspection.image_size, figsize(width)[0], (0.02, 0.6, 0.42, 0.02), max_cell=3.0
    )
    ax_img, ax_map = axes[0]
    ax_img.imshow(inspection.image)
    _draw_object_boxes(ax_img, inspection, query)
    ax_img.set_title(object_title(inspection, query), fontsize=LABEL_SIZE, pad=2)
    mappable = overlay_attention(ax_map, inspection.image, attn, gamma=gamma, max_side=None)
    _draw_object_boxes(ax_map, inspection, query)
    which = "mean of heads" if head is None else f"head {head}"
    ax_map.set_title(
        f"cross-attention, {_layer_text(inspection.layers[position])}, {which}",
        fontsize=LABEL_SIZE,
        pad=2,
    )
    _colorbar(fig, mappable, ax_map)
    fig.suptitle(
        f"{normalizer_label(inspection.model_name)}, image #{inspection.image_id}",
        fontsize=TITLE_SIZE,
        color=model_color(inspection.model_name),
        y=1 - 0.04 / fig.get_size_inches()[1],
        va="top",
    )
    return fig
