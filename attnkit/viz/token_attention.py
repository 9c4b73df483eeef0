"""Token attention of image classifiers (ViT): one query's maps on the image, attention distance.

A ViT block's self-attention weights ``[H, N, N]`` cover ``N = prefix_tokens + h * w`` tokens:
the class token (when ``prefix_tokens`` is 1) first, then the ``h x w`` patches in row-major
order. A query is the class token (``"cls"``) or a patch ``(row, col)``; its map over the patch
keys is put back on the image (nearest upsampling shows each patch as the square it is; bilinear
as PAIBB does) with the primitives of :mod:`attnkit.viz.overlay`. The weight a query gives to the
class token lies on no patch: it is written in the corner of each map. Small images (32x32) are
enlarged by an integer factor first, so that a patch stays a crisp square on the page.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from attnkit.viz.labels import layer_label, model_colors, normalizer_label, sort_layers
from attnkit.viz.overlay import (
    LABEL_SIZE,
    PRED_COLOR,
    TITLE_SIZE,
    _colorbar,
    draw_box,
    image_grid,
    overlay_attention,
    upsample_map,
)
from attnkit.viz.style import TEXT_WIDTH_IN, figsize

__all__ = [
    "ImageAttention",
    "image_attention",
    "number_block_ticks",
    "plot_mean_attention_distance",
    "plot_query_attention",
    "plot_query_attention_blocks",
    "query_index",
    "query_maps",
    "upsample_grid_map",
]

Query = str | tuple[int, int]
DISPLAY_SIDE = 128  # images smaller than this are enlarged (nearest) by an integer factor
CORNER_TEXT = {"color": "white", "fontsize": LABEL_SIZE - 1, "va": "bottom", "ha": "left"}


def query_index(query: Query, grid: tuple[int, int], prefix_tokens: int) -> int:
    """The token index of ``query``: ``"cls"`` -> 0, patch ``(row, col)`` -> after the prefix."""
    h, w = grid
    if isinstance(query, str):
        if query != "cls" or prefix_tokens < 1:
            raise ValueError(f"query {query!r}: only 'cls' (with a class token) or (row, col)")
        return 0
    row, col = (int(v) for v in query)
    if not (0 <= row < h and 0 <= col < w):
        raise ValueError(f"query {(row, col)} is outside the {h}x{w} grid")
    return prefix_tokens + row * w + col


def query_maps(
    weights: torch.Tensor, grid: tuple[int, int], query: Query, prefix_tokens: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(maps [H, h, w], prefix mass [H])``: the query's weights over the patch keys per head,
    and the weight it gives to the prefix (class) tokens, which lie on no patch."""
    weights = torch.as_tensor(weights, dtype=torch.float32)  # [H, N, N]
    h, w = grid
    if weights.ndim != 3 or weights.shape[-1] != prefix_tokens + h * w:
        raise ValueError(
            f"weights {tuple(weights.shape)} do not hold {prefix_tokens} + {h}x{w} tokens"
        )
    row = weights[:, query_index(query, grid, prefix_tokens)]  # [H, N]
    maps = row[:, prefix_tokens:].reshape(-1, h, w)  # [H, h, w]
    return maps, row[:, :prefix_tokens].sum(dim=-1)  # [H, h, w], [H]


def upsample_grid_map(attn_map, size: tuple[int, int], mode: str = "nearest") -> np.ndarray:
    """A ``[h, w]`` map resized to ``size = (H, W)``: each cell a block (``"nearest"``), or
    bilinearly (``"bilinear"``, ``align_corners=False``, as :func:`overlay.upsample_map`)."""
    if mode == "bilinear":
        return upsample_map(attn_map, size)
    if mode != "nearest":
        raise ValueError(f"mode must be 'nearest' or 'bilinear', got {mode!r}")
    x = torch.as_tensor(attn_map, dtype=torch.float32)[None, None]  # [1, 1, h, w]
    return F.interpolate(x, size=size, mode="nearest")[0, 0].numpy()  # [H, W]


def _display_image(image) -> Image.Image:
    """``image`` ([H, W, 3] uint8 or float in [0, 1]) enlarged by an integer factor (nearest)
    until its longer side reaches :data:`DISPLAY_SIDE`."""
    array = np.asarray(image)
    if array.dtype != np.uint8:
        array = (np.clip(array, 0.0, 1.0) * 255).round().astype(np.uint8)
    factor = max(1, math.ceil(DISPLAY_SIDE / max(array.shape[:2])))
    pil = Image.fromarray(array)
    return pil.resize((pil.width * factor, pil.height * factor), Image.NEAREST)


def _draw_query(ax, pil, grid, query, title: str | None) -> None:
    """The image with the query patch outlined (nothing for the class token)."""
    ax.imshow(np.asarray(pil), extent=(0, pil.width, pil.height, 0), interpolation="nearest")
    if not isinstance(query, str):
        ch, cw = pil.height / grid[0], pil.width / grid[1]
        r, c = query
        draw_box(ax, (c * cw, r * ch, (c + 1) * cw, (r + 1) * ch), PRED_COLOR, linewidth=1.2)
    if title:
        ax.set_title(title, fontsize=TITLE_SIZE, pad=2)


def _query_text(query: Query) -> str:
    return "class token" if isinstance(query, str) else f"patch ({query[0]}, {query[1]})"


def _draw_maps(axes, pil, maps, prefix_mass, mode, vmax, gamma, show_prefix):
    """One head's map per axis, blended over the image; returns the colour scale."""
    mappable = None
    for ax, attn, mass in zip(axes, maps, prefix_mass):
        up = upsample_grid_map(attn, (pil.height, pil.width), mode)  # [H', W']
        mappable = overlay_attention(ax, pil, torch.from_numpy(up), vmax=vmax, gamma=gamma)
        if show_prefix:
            ax.text(0.03, 0.03, f"cls {float(mass):.2f}", transform=ax.transAxes, **CORNER_TEXT)
    return mappable


def plot_query_attention_blocks(
    image,
    weights_by_block: Mapping[str, torch.Tensor],
    grid: tuple[int, int],
    query: Query,
    prefix_tokens: int = 1,
    heads: Sequence[int] | None = None,
    mode: str = "nearest",
    gamma: float = 0.5,
    title: str | None = None,
    width: float = 1.0,
):
    """Rows: blocks (``{label: [H, N, N]}``); columns: the image with the query outlined (again
    in every row, which keeps each row readable alone), then per head the query's attention
    over the patches on the image. One colour scale for the whole figure."""
    pil = _display_image(image)
    blocks = list(weights_by_block)
    found = {b: query_maps(weights_by_block[b], grid, query, prefix_tokens) for b in blocks}
    heads = list(range(next(iter(found.values()))[0].shape[0])) if heads is None else list(heads)
    vmax = max(float(found[b][0][heads].max()) for b in blocks) or 1e-12
    fig, axes = image_grid(
        len(blocks),
        1 + len(heads),
        (pil.height, pil.width),
        width * TEXT_WIDTH_IN,
        margins=(0.3, 0.55, 0.45 if title else 0.25, 0.05),
        max_cell=1.2,
    )
    mappable = None
    for r, block in enumerate(blocks):
        maps, mass = found[block]
        # two lines: the query column is as narrow as a head's, and 9-16 heads make it small
        _draw_query(axes[r, 0], pil, grid, query, None if r else f"query\n{_query_text(query)}")
        mappable = _draw_maps(
            axes[r, 1:], pil, maps[heads], mass[heads], mode, vmax, gamma, prefix_tokens > 0
        )
        axes[r, 0].set_ylabel(block, fontsize=TITLE_SIZE)
    for c, head in enumerate(heads, start=1):
        axes[0, c].set_title(f"head {head}", fontsize=TITLE_SIZE, pad=2)  # 0-based, as elsewhere
    _colorbar(fig, mappable, axes[:, 1:], side="right")
    if title:
        fig.suptitle(title, fontsize=TITLE_SIZE + 1, y=1 - 0.08 / fig.get_size_inches()[1])
    return fig


def plot_query_attention(
    image,
    weights: torch.Tensor,
    grid: tuple[int, int],
    query: Query,
    prefix_tokens: int = 1,
    heads: Sequence[int] | None = None,
    axes=None,
    mode: str = "nearest",
    gamma: float = 0.5,
    vmax: float | None = None,
    title: str | None = None,
):
    """The image with the query marked, then per head the query's attention on the image.

    ``weights``: ``[H, N, N]`` of one block. ``axes``: ``1 + len(heads)`` axes to draw into
    (e.g. a row of a larger grid; no colourbar then), else a new one-row figure.
    ``vmax``: top of the colour scale (None: the largest weight shown).
    """
    if axes is None:
        return plot_query_attention_blocks(
            image, {"": weights}, grid, query, prefix_tokens, heads, mode, gamma, title
        )
    pil = _display_image(image)
    maps, mass = query_maps(weights, grid, query, prefix_tokens)
    heads = list(range(maps.shape[0])) if heads is None else list(heads)
    top = vmax if vmax is not None else max(float(maps[heads].max()), 1e-12)
    _draw_query(axes[0], pil, grid, query, title)
    _draw_maps(axes[1:], pil, maps[heads], mass[heads], mode, top, gamma, prefix_tokens > 0)
    return axes[0].figure


def plot_mean_attention_distance(
    summary_by_model: Mapping[str, dict],
    sites: Mapping[str, str] | None = None,
    metric: str = "distance",
    ax=None,
    width: float = 0.6,
):
    """Mean attention distance (pixels) per block: one line per model (its mean over all maps),
    dots for the heads' means. ``sites``: ``{module: label}`` (default: the summaries' own)."""
    if sites is None:
        sites = {k: v for s in summary_by_model.values() for k, v in s["meta"]["sites"].items()}
    layers = sort_layers((k for s in summary_by_model.values() for k in s[metric]), sites)
    colors = model_colors(summary_by_model)
    if ax is None:
        _, ax = plt.subplots(figsize=figsize(width, aspect=0.7))
    x = np.arange(len(layers))
    rng = np.random.default_rng(0)
    for model, summary in summary_by_model.items():
        stats = [summary[metric].get(layer, {}) for layer in layers]
        means = [s.get("mean", np.nan) for s in stats]
        ax.plot(
            x, means, marker="o", markersize=3, color=colors[model], label=normalizer_label(model)
        )
        for xi, s in zip(x, stats):
            heads = np.asarray(s.get("per_head", []), dtype=float)
            jitter = rng.uniform(-0.08, 0.08, len(heads))
            ax.scatter(xi + jitter, heads, s=5, color=colors[model], alpha=0.5, linewidths=0)
    ax.set_xticks(x, [layer_label(layer, sites) for layer in layers])
    ax.set_ylabel("mean attention distance (px)")
    ax.set_ylim(bottom=0)
    handles, labels = ax.get_legend_handles_labels()
    handles.append(plt.Line2D([], [], marker="o", linestyle="", markersize=2.5, color="0.4"))
    ax.legend(handles, [*labels, "per head"], fontsize="small")
    ax.figure.tight_layout()
    return ax.figure


def number_block_ticks(fig, prefix: str = "block ") -> None:
    """``block 1, block 2, ...`` tick labels -> ``1, 2, ...`` with ``block`` under the axis, on
    every axis whose x tick labels all start with ``prefix`` (panels too narrow for them)."""
    for ax in fig.axes:
        texts = [t.get_text() for t in ax.get_xticklabels()]
        if texts and all(t.startswith(prefix) for t in texts):
            ax.set_xticks(ax.get_xticks(), [t.removeprefix(prefix) for t in texts])
            ax.set_xlabel(prefix.strip())
    fig.tight_layout()


@dataclass
class ImageAttention:
    """One image through a classifier: the image as the model saw it, its label and prediction,
    and every attention module's weights ``{module: [H, N, N]}`` with their site labels."""

    image: np.ndarray  # [H, W, 3] uint8
    label: int
    predicted: int
    class_names: list[str]
    weights: dict[str, torch.Tensor]
    sites: dict[str, str]
    grid: tuple[int, int]
    prefix_tokens: int

    @property
    def centre(self) -> tuple[int, int]:
        """The centre patch ``(row, col)`` of the grid (below and right of it when even)."""
        return self.grid[0] // 2, self.grid[1] // 2

    def by_site(self, sites: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """``{site label: [H, N, N]}`` of the chosen sites (None: all), in the order given."""
        found = {self.sites[name]: w for name, w in self.weights.items()}
        missing = [site for site in sites or [] if site not in found]
        if missing:
            raise KeyError(f"no attention site {missing}; this model has {list(found)}")
        return found if sites is None else {site: found[site] for site in sites}

    def caption(self) -> str:
        """``"true star, predicted star"``."""
        names = self.class_names
        return f"true {names[self.label]}, predicted {names[self.predicted]}"


def image_attention(checkpoint, index: int = 0, split: str = "val", device: str = "cpu"):
    """Record the attention of the model in ``checkpoint`` (or run folder) on image ``index``."""
    from attnkit.analysis.recorder import AttentionRecorder
    from attnkit.data.classification import classification_stats
    from attnkit.models.loading import model_from_checkpoint
    from attnkit.tasks import task_of

    model, cfg = model_from_checkpoint(checkpoint, device=device)
    dataset = task_of(cfg).build_dataset(cfg, split, train=False)
    x, label = dataset[index]  # [3, H, W] normalised
    with torch.no_grad(), AttentionRecorder(model) as rec:
        out = model(images=x[None].to(device))
    logits = out["logits"] if isinstance(out, dict) else out  # [1, C]
    mean, std = (torch.tensor(v)[:, None, None] for v in classification_stats(cfg.data.name))
    pixels = (x * std + mean).clamp(0, 1).permute(1, 2, 0)  # [H, W, 3]
    records = {name: recs[-1] for name, recs in rec.records.items()}
    first = next(iter(records.values()))
    return ImageAttention(
        image=(pixels * 255).round().to(torch.uint8).numpy(),
        label=int(label),
        predicted=int(logits.argmax(-1)),
        class_names=list(getattr(dataset, "class_names", range(logits.shape[-1]))),
        weights={name: r.weights[0] for name, r in records.items()},  # [H, N, N]
        sites={name: r.site or name for name, r in records.items()},
        grid=first.key_grid,
        prefix_tokens=int(first.meta.get("prefix_tokens", 0)),
    )
