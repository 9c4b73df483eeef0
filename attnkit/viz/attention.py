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

from attnkit.analysis.inspect import cross_attention_name
from attnkit.viz.box_labels import select_boxes
from attnkit.viz.labels import layer_label, model_color, normalizer_label
from attnkit.viz.overlay import (
    COLORBAR_LABEL,
    GT_COLOR,
    LABEL_SIZE,
    PRED_COLOR,
    TITLE_SIZE,
    _clean_axis,
    _colorbar,
    blend_attention,
    draw_box,
    image_grid,
    overlay_attention,
    upsample_map,
)
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
    "shown_queries",
    "upsample_map",
]


def _layer_text(layer: int) -> str:
    """Decoder layer index -> its figure label (``layer 3`` for index 2, as the thesis numbers)."""
    return layer_label(cross_attention_name(layer))


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


def shown_queries(
    inspection,
    score_threshold: float | None = None,
    nms_iou: float | None = None,
    top_k: int | None = None,
) -> list[int]:
    """The predictions a detection figure draws, best score first.

    The queries scoring ``score_threshold`` or more (None: the inspection's threshold), thinned
    for display by :func:`~attnkit.viz.box_labels.select_boxes`: per-class NMS at IoU
    ``nms_iou`` and the ``top_k`` best (None: no thinning). When none scores that much
    (random-init models): the matched queries, one per ground truth, all of them.
    """
    threshold = inspection.score_threshold if score_threshold is None else score_threshold
    pool = (inspection.scores >= threshold).nonzero().flatten()
    if not len(pool):
        pool = inspection.match_queries
        nms_iou = top_k = None
    keep = select_boxes(
        inspection.boxes[pool],
        inspection.scores[pool],
        inspection.labels[pool],
        nms_iou=nms_iou,
        top_k=top_k,
    )
    return [int(pool[k]) for k in keep]


def _thinning(nms_iou: float | None, top_k: int | None) -> str:
    parts = [f"per-class NMS at IoU {nms_iou:g}" if nms_iou is not None else ""]
    parts.append(f"top {top_k}" if top_k is not None else "")
    return ", ".join(p for p in parts if p)


def plot_detections(
    inspection,
    ax=None,
    queries: Sequence[int] | None = None,
    width: float = 0.5,
    score_threshold: float | None = None,
    nms_iou: float | None = None,
    top_k: int | None = None,
):
    """The image with its predicted boxes (solid, one colour each) and ground truth (dashed).

    ``queries``: the predictions to draw; None: :func:`shown_queries` (the detections at
    ``score_threshold``, or the matched queries when there are none, as for random-init
    models, thinned by per-class NMS at ``nms_iou`` and the ``top_k`` best). Labels are placed
    clear of each other and inside the image.
    """
    import seaborn as sns

    if ax is None:
        size = inspection.image_size
        _, axes = image_grid(1, 1, size, figsize(width)[0], margins=(0.02, 0.02, 0.3, 0.02))
        ax = axes[0, 0]
    threshold = inspection.score_threshold if score_threshold is None else score_threshold
    pool = int((inspection.scores >= threshold).sum())
    if queries is None:
        queries = shown_queries(inspection, score_threshold, nms_iou, top_k)
    queries = list(queries)
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
    if pool:
        shown = "detections" if len(queries) == pool else f"of {pool} detections"
    else:
        shown = "matched queries, none detected"
    ax.set_title(
        f"{normalizer_label(inspection.model_name)}\n{len(queries)} {shown}",
        fontsize=LABEL_SIZE,
        color=model_color(inspection.model_name),
        pad=2,
    )
    return ax.figure


def plot_detections_row(
    inspections: Mapping[str, object],
    width: float = 1.0,
    ncols: int = 4,
    score_threshold: float | None = None,
    nms_iou: float | None = None,
    top_k: int | None = None,
):
    """One panel per model (``{label: ImageInspection}`` of the same image) with its detections.

    Predicted boxes solid (``q<query> <class> <score>``), ground truth dashed; the other
    arguments as :func:`plot_detections`.
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
        plot_detections(
            inspection, ax=ax, score_threshold=score_threshold, nms_iou=nms_iou, top_k=top_k
        )
    threshold = first.score_threshold if score_threshold is None else score_threshold
    thinned = _thinning(nms_iou, top_k)
    fig.suptitle(
        f"image #{first.image_id} ({first.image.width}x{first.image.height} px): predictions "
        f"(solid, score >= {threshold:g}{'; ' + thinned if thinned else ''}) and ground truth "
        "(dashed)",
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
