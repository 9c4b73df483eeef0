"""Where MaxViT's attention can look: block / grid regions, receptive fields, per-head maps.

MaxViT (Tu et al. 2022) mixes tokens in every block three ways: a 3x3 depthwise convolution
(MBConv), *block attention* (each token sees its own non-overlapping ``(ph, pw)`` window,
windows row-major) and *grid attention* (a ``(gh, gw)`` grid: token ``(r, c)`` sees every token
with the same residues ``r mod (H / gh)``, ``c mod (W / gw)``, i.e. the ``dilated`` key layout of
:class:`~attnkit.attention.layout.KeyLayout` with ``part=(gh, gw)``). A token map whose size is
not a multiple of the window (grid) is padded at the bottom / right and the padded tokens are
masked out of attention, so every region here is that of the padded map cropped to the real
(top-left) grid. Regions are boolean ``[h, w]`` token maps; they show how fast a stage becomes
global, which the thesis compares with the *effective* receptive field (Luo et al. 2016), the
input gradient of one output position. The figures put regions, ERFs and recorded attention
maps back on the image; sparse normalizers' exact zeros stay transparent so sparsity shows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import partial

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import patheffects
from matplotlib.colors import PowerNorm
from torch import nn

from attnkit.attention.layout import KeyLayout
from attnkit.viz.overlay import CMAP, LABEL_SIZE, TITLE_SIZE, _colorbar, image_grid
from attnkit.viz.style import TEXT_WIDTH_IN

__all__ = [
    "block_attention_region",
    "effective_receptive_field",
    "grid_attention_region",
    "maxvit_reachable_region",
    "plot_attention_regions",
    "plot_query_head_maps",
    "plot_sparse_vs_softmax",
    "query_maps_from_record",
    "upsample_to_image",
]

Pair = int | tuple[int, int]
REGION_COLORS = {"block": "#00E5FF", "grid": "#FF4FD8", "reach": "#FFD400"}
_TITLE = {"fontsize": TITLE_SIZE, "pad": 2}
_OUTLINE = [patheffects.withStroke(linewidth=2.2, foreground="black")]


def _pair(value: Pair) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _check_query(token_hw: tuple[int, int], query: tuple[int, int]) -> tuple[int, int]:
    row, col = int(query[0]), int(query[1])
    if not (0 <= row < token_hw[0] and 0 <= col < token_hw[1]):
        raise ValueError(f"query {(row, col)} is outside the {token_hw[0]}x{token_hw[1]} grid")
    return row, col


def _cells(token_hw: tuple[int, int], part: tuple[int, int]) -> tuple[int, int]:
    """``ceil(token_hw / part)``: the windows of a ``part`` window, or the token stride of a
    ``part`` grid, on the map padded to the ``part`` multiple."""
    return -(-token_hw[0] // part[0]), -(-token_hw[1] // part[1])


def block_attention_region(
    token_hw: tuple[int, int], window: Pair, query: tuple[int, int]
) -> torch.Tensor:
    """``[h, w]`` bool: the real tokens block attention lets ``query`` ``(row, col)`` see, its
    ``(ph, pw)`` window of the map padded to the window multiple, cropped to the real grid."""
    (h, w), (ph, pw) = token_hw, _pair(window)
    row, col = _check_query((h, w), query)
    region = torch.zeros(h, w, dtype=torch.bool)
    r0, c0 = row // ph * ph, col // pw * pw  # the window's top-left token
    region[r0 : r0 + ph, c0 : c0 + pw] = True  # slicing crops the padded part
    return region


def grid_attention_region(
    token_hw: tuple[int, int], grid: Pair, query: tuple[int, int]
) -> torch.Tensor:
    """``[h, w]`` bool: the real tokens grid attention lets ``query`` see: those with its
    residues modulo the stride ``padded / grid`` (the padded map split into a ``(gh, gw)`` grid)."""
    (h, w), grid = token_hw, _pair(grid)
    row, col = _check_query((h, w), query)
    sh, sw = _cells((h, w), grid)
    rows = torch.arange(h)[:, None] % sh == row % sh  # [h, 1]
    cols = torch.arange(w)[None, :] % sw == col % sw  # [1, w]
    return rows & cols  # [h, w]


def _union(region: torch.Tensor, cells: tuple[int, int], size: tuple[int, int], dims):
    """``region`` ``[h, w]`` padded to ``cells x size`` and viewed ``[ch, sh, cw, sw]``: every
    token sharing ``dims`` (1, 3: a window of ``size``; 0, 2: residues mod ``size``) with one of
    it, cropped to the grid (padded tokens start unreached)."""
    (h, w), (ch, cw), (sh, sw) = region.shape, cells, size
    padded = F.pad(region, (0, cw * sw - w, 0, ch * sh - h))  # [ch * sh, cw * sw]
    hit = padded.view(ch, sh, cw, sw).any(dim=dims, keepdim=True)  # reached windows / residues
    return hit.expand(ch, sh, cw, sw).reshape(ch * sh, cw * sw)[:h, :w]


def _dilate(region: torch.Tensor) -> torch.Tensor:
    """The 3x3 neighbourhood of ``region`` (a depthwise 3x3 convolution, zero padding)."""
    x = region[None, None].float()  # [1, 1, h, w]
    return F.max_pool2d(x, 3, stride=1, padding=1)[0, 0] > 0  # [h, w]


def maxvit_reachable_region(
    token_hw: tuple[int, int],
    window: Pair,
    grid: Pair,
    query: tuple[int, int],
    steps: int,
    backward: bool = False,
) -> torch.Tensor:
    """``[h, w]`` bool: the tokens connected to ``query`` after ``steps`` MaxViT blocks of one
    stage. Each block grows the set by the 3x3 depthwise convolution, then block attention,
    then grid attention (the union of every member's region): the outputs the input token
    ``query`` can reach. ``backward``: the stages in reverse order (grid, block, conv), i.e.
    the inputs the output at ``query`` depends on (the theoretical receptive field proper).
    MBConv's squeeze-excitation (a global channel gate) is left out: it would make every
    block global at once."""
    row, col = _check_query(token_hw, query)
    window, grid = _pair(window), _pair(grid)
    windows, strides = _cells(token_hw, window), _cells(token_hw, grid)
    block = partial(_union, cells=windows, size=window, dims=(1, 3))
    ops = [_dilate, block, partial(_union, cells=grid, size=strides, dims=(0, 2))]
    region = torch.zeros(token_hw, dtype=torch.bool)
    region[row, col] = True
    for _ in range(steps):
        for op in reversed(ops) if backward else ops:
            region = op(region)
    return region


def effective_receptive_field(
    model: nn.Module,
    images: torch.Tensor,
    module_name: str,
    query: tuple[int, int],
    reduce: str = "abs",
    channels_last: bool = False,
    eval_mode: bool = True,
    **forward_kwargs,
) -> torch.Tensor:
    """``[H, W]``: the effective receptive field (Luo et al. 2016) of position ``query`` of the
    output of sub-module ``module_name`` (``[B, C, h, w]``, or ``[B, h, w, C]`` when
    ``channels_last``): the gradient of that feature summed over channels with respect to
    ``images`` ``[B, C, H, W]``, reduced over input channels (``abs``: sum of absolute values;
    ``square``: of squares; ``signed``: plain sum) and over the batch, normalised to max 1.
    Runs in eval mode unless ``eval_mode`` is False; the model's mode is restored and its
    parameters get no gradient (only the input's is computed)."""
    if reduce not in ("abs", "square", "signed"):
        raise ValueError(f"reduce must be 'abs', 'square' or 'signed', got {reduce!r}")
    modules = dict(model.named_modules())
    if module_name not in modules:
        raise ValueError(f"no sub-module {module_name!r}; some are {list(modules)[:8]}")
    captured: list[torch.Tensor] = []

    def hook(_module, _inputs, output):
        captured.append(output[0] if isinstance(output, tuple | list) else output)

    handle = modules[module_name].register_forward_hook(hook)
    modes = {m: m.training for m in model.modules()}  # restored one by one: mixed modes stay
    try:
        if eval_mode:
            model.eval()
        x = images.detach().clone().requires_grad_(True)  # [B, C, H, W]
        with torch.enable_grad():
            model(x, **forward_kwargs)
            feature = captured[0]
            hw = feature.shape[1:3] if channels_last else feature.shape[2:4]
            row, col = _check_query(tuple(hw), query)
            at = feature[:, row, col, :] if channels_last else feature[:, :, row, col]  # [B, C]
            (grad,) = torch.autograd.grad(at.sum(), x)  # [B, C, H, W]
    finally:
        handle.remove()
        for module, training in modes.items():
            module.training = training
    grad = grad.detach()
    erf = {"abs": grad.abs(), "square": grad.square(), "signed": grad}[reduce].sum(dim=(0, 1))
    top = erf.abs().max()
    return erf / top if top > 0 else erf  # [H, W]


def upsample_to_image(
    token_map, image_hw: tuple[int, int], token_hw: tuple[int, int] | None = None
) -> torch.Tensor:
    """A ``[h, w]`` token map (cropped to the real ``token_hw`` first when given: a padded map)
    on the ``image_hw`` pixels, each token a block of ``image / tokens`` pixels: pixel ``i``
    takes token ``floor((i + 0.5) h / H)`` (``nearest-exact``: right for non-integer ratios)."""
    token_map = torch.as_tensor(token_map)
    if token_hw is not None:
        token_map = token_map[: token_hw[0], : token_hw[1]]  # [h, w] real tokens
    x = token_map.double()[None, None]  # [1, 1, h, w]
    up = F.interpolate(x, size=tuple(image_hw), mode="nearest-exact")[0, 0]  # [H, W]
    return up.bool() if token_map.dtype == torch.bool else up.to(token_map.dtype)


def query_maps_from_record(
    weights: torch.Tensor,
    layout: KeyLayout,
    image_index: int,
    query_token: tuple[int, int],
    num_images: int,
    image_hw: tuple[int, int],
    token_hw: tuple[int, int] | None = None,
) -> torch.Tensor:
    """``[H, image_h, image_w]``: each head's attention row of the query token ``(row, col)``
    (on the padded grid ``layout.grid``) of image ``image_index``, from recorded ``weights``
    ``[N, H, Q, K]`` (N = images x parts, image-major; queries arranged as the keys of their
    window / partition, after ``prefix_tokens``), on the image pixels. ``token_hw``: the real
    (unpadded) grid the maps are cropped to before upsampling."""
    weights = torch.as_tensor(weights)
    if weights.ndim != 4 or weights.shape[0] != num_images * layout.num_parts:
        raise ValueError(f"weights {tuple(weights.shape)} are not [{num_images} x parts, H, Q, K]")
    (gh, gw), (row, col) = layout.grid, _check_query(layout.grid, query_token)
    if token_hw is not None:
        _check_query(token_hw, query_token)
    if layout.kind == "grid":
        part, q = 0, row * gw + col
    elif layout.kind == "windows":
        (ph, pw), (sr, sc) = layout.part, layout.shift
        r, c = (row - sr) % gh, (col - sc) % gw  # on the grid rolled by -shift
        part, q = r // ph * (gw // pw) + c // pw, r % ph * pw + c % pw
    else:  # dilated: partition = residues, index = position inside the partition
        (_, pw), (nh, nw) = layout.part, (gh // layout.part[0], gw // layout.part[1])
        part, q = row % nh * nw + col % nw, row // nh * pw + col // nw
    rows = weights[image_index * layout.num_parts + part, :, layout.prefix_tokens + q]  # [H, K]
    grids = [layout.on_grid(r, part) for r in rows]  # H x [gh, gw]
    return torch.stack([upsample_to_image(g, image_hw, token_hw) for g in grids])


def _rgb(image) -> np.ndarray:
    """``[H, W, 3]`` float in [0, 1] from ``[3, H, W]``, ``[H, W, 3]`` or ``[H, W]``."""
    array = np.asarray(image.detach().cpu() if torch.is_tensor(image) else image, dtype=float)
    if array.ndim == 3 and array.shape[-1] not in (1, 3) and array.shape[0] in (1, 3):
        array = array.transpose(1, 2, 0)
    array = array[..., None] if array.ndim == 2 else array
    return np.clip(np.broadcast_to(array, (*array.shape[:2], 3)), 0.0, 1.0)


def _show(ax, rgb: np.ndarray, grey: bool = False) -> None:
    shown = rgb.mean(-1) * 0.85 if grey else rgb  # [H, W] or [H, W, 3]
    extent = (0, rgb.shape[1], rgb.shape[0], 0)
    ax.imshow(shown, cmap="gray", vmin=0, vmax=1, extent=extent, interpolation="nearest")


def _cross(ax, xy: tuple[float, float] | None) -> None:
    if xy is not None:
        style = {"markersize": 8, "markeredgewidth": 1.6, "path_effects": _OUTLINE}
        ax.plot(xy[0], xy[1], "+", color="white", zorder=5, clip_on=False, **style)


def _region(ax, rgb: np.ndarray, region: torch.Tensor, color: str, alpha: float = 0.5) -> None:
    """The grey image with ``region`` (token grid) as a translucent overlay."""
    _show(ax, rgb, grey=True)
    up = upsample_to_image(region, rgb.shape[:2]).numpy()  # [H, W] bool
    layer = np.zeros((*up.shape, 4))
    layer[..., :3], layer[..., 3] = matplotlib.colors.to_rgb(color), alpha * up
    ax.imshow(layer, extent=(0, up.shape[1], up.shape[0], 0), interpolation="nearest")


def _heat(ax, rgb: np.ndarray, heat, norm, cmap: str = CMAP):
    """The grey image under ``heat`` ``[H, W]``; exact zeros transparent."""
    _show(ax, rgb, grey=True)
    heat = np.asarray(torch.as_tensor(heat, dtype=torch.float64))
    if heat.shape != rgb.shape[:2]:
        heat = upsample_to_image(torch.from_numpy(heat), rgb.shape[:2]).numpy()
    extent = (0, rgb.shape[1], rgb.shape[0], 0)
    masked = np.ma.masked_equal(heat, 0.0)  # masked: drawn transparent
    return ax.imshow(
        masked, cmap=cmap, norm=norm, alpha=0.85, extent=extent, interpolation="nearest"
    )


def plot_attention_regions(
    image,
    token_hw: tuple[int, int],
    window: Pair,
    grid: Pair,
    query: tuple[int, int],
    steps: Sequence[int] = (1, 2),
    erf=None,
    width: float = 1.0,
):
    """One row on the image: the query (+), its block-attention region, its grid-attention
    region, the region reached after each ``k`` of ``steps`` blocks, and the ``erf`` ``[H, W]``
    (e.g. :func:`effective_receptive_field`) as a heat map when given."""
    rgb = _rgb(image)
    (h, w), (ih, iw) = token_hw, rgb.shape[:2]
    xy = ((query[1] + 0.5) * iw / w, (query[0] + 0.5) * ih / h)  # the query token's centre
    regions = [
        ("block attention", block_attention_region(token_hw, window, query), "block"),
        ("grid attention", grid_attention_region(token_hw, grid, query), "grid"),
    ]
    for k in steps:
        reach = maxvit_reachable_region(token_hw, window, grid, query, k)
        regions.append((f"after {k} block{'s' if k != 1 else ''}", reach, "reach"))
    ncols = 1 + len(regions) + (erf is not None)
    margins = (0.05, 0.45 if erf is not None else 0.05, 0.4, 0.05)
    fig, axes = image_grid(1, ncols, (ih, iw), width * TEXT_WIDTH_IN, margins, max_cell=1.4)
    _show(axes[0, 0], rgb)
    axes[0, 0].set_title(f"query ({query[0]}, {query[1]})", **_TITLE)
    for ax, (label, region, kind) in zip(axes[0, 1:], regions):
        _region(ax, rgb, region, REGION_COLORS[kind])
        ax.set_title(f"{label}\n{int(region.sum())} / {h * w} tokens", **_TITLE)
    if erf is not None:
        erf = np.asarray(torch.as_tensor(erf, dtype=torch.float64))
        mappable = _heat(axes[0, -1], rgb, erf, PowerNorm(0.5, 0.0, max(erf.max(), 1e-12)))
        axes[0, -1].set_title("effective RF", **_TITLE)
        _colorbar(fig, mappable, axes[0, -1:], label="|gradient|", nbins=2)
    for ax in axes[0]:
        _cross(ax, xy)
    return fig


def _stack(maps) -> np.ndarray:
    if torch.is_tensor(maps):
        return maps.detach().cpu().double().numpy()
    return np.stack([np.asarray(torch.as_tensor(m, dtype=torch.float64)) for m in maps])


def _heat_row(axes, rgb, values, titles, query_pixel, gamma: float, zeros: bool):
    """``values`` ``[n, H, W]`` into the first n ``axes`` on one scale (the rest hidden);
    returns the scale's mappable."""
    norm = PowerNorm(gamma, vmin=0.0, vmax=max(float(values.max()), 1e-12))
    corner = {"color": "white", "fontsize": LABEL_SIZE - 1, "va": "bottom", "ha": "left"}
    mappable = None
    for i, ax in enumerate(axes):
        ax.set_visible(i < len(values))
        if i >= len(values):
            continue
        mappable = _heat(ax, rgb, values[i], norm)
        if titles:
            ax.set_title(titles[i], **_TITLE)
        if zeros is not False:  # the share of exact zeros: the support of a sparse normalizer
            inside = values[i] if zeros is True else values[i][zeros]  # the reachable pixels
            share = float((inside == 0).mean())
            ax.text(0.03, 0.03, f"zeros {share:.0%}", transform=ax.transAxes, **corner)
        _cross(ax, None if query_pixel is None else (query_pixel[1], query_pixel[0]))
    return mappable


def plot_query_head_maps(
    image,
    maps,
    titles: Sequence[str] | None = None,
    query_pixel: tuple[float, float] | None = None,
    ncols: int | None = None,
    gamma: float = 0.5,
    width: float = 1.0,
):
    """Per-head attention of one query: each ``[H, W]`` map of ``maps`` (e.g. from
    :func:`query_maps_from_record`) as a heat overlay on the image, one colour scale, exact
    zeros transparent; ``query_pixel`` ``(row, col)`` in pixels marked + on every panel."""
    rgb, values = _rgb(image), _stack(maps)  # [H, W, 3], [heads, H, W]
    ncols = ncols or min(len(values), 4)
    nrows = math.ceil(len(values) / ncols)
    titles = titles or [f"head {i}" for i in range(len(values))]
    margins, pad = (0.05, 0.5, 0.3, 0.05), (0.04, 0.22)  # room for each row's titles
    fig, axes = image_grid(nrows, ncols, rgb.shape[:2], width * TEXT_WIDTH_IN, margins, pad, 1.4)
    mappable = _heat_row(axes.flat, rgb, values, titles, query_pixel, gamma, zeros=False)
    _colorbar(fig, mappable, axes, label="attention weight")
    return fig


def plot_sparse_vs_softmax(
    image,
    maps_by_model: Mapping[str, Sequence],
    titles: Sequence[str] | None = None,
    query_pixel: tuple[float, float] | None = None,
    gamma: float = 0.5,
    width: float = 1.0,
    support=None,
):
    """Rows: models (``{"softmax": maps, "sparsemax": maps}``, each ``[heads, H, W]`` on the
    image grid); columns: heads. One colour scale per row; exact zeros transparent, and each
    panel's share of exact zeros written in its corner, so sparse normalizers' support shows.

    ``support`` (bool ``[H, W]``): the pixels the query can attend to (its window or grid
    partition, e.g. :func:`block_attention_region` upsampled); the zero share counts those only,
    so a softmax map inside a window reads 0%, not the share of the image outside it."""
    rgb = _rgb(image)
    rows = {name: _stack(maps) for name, maps in maps_by_model.items()}  # [heads, H, W] each
    ncols = max(len(v) for v in rows.values())
    titles = titles or [f"head {i}" for i in range(ncols)]
    margins = (0.35, 0.5, 0.3, 0.05)
    fig, axes = image_grid(len(rows), ncols, rgb.shape[:2], width * TEXT_WIDTH_IN, margins)
    for r, (name, values) in enumerate(rows.items()):
        shown = titles if r == 0 else None
        zeros = True if support is None else np.asarray(support, dtype=bool)
        mappable = _heat_row(axes[r], rgb, values, shown, query_pixel, gamma, zeros=zeros)
        axes[r, 0].set_ylabel(name, fontsize=TITLE_SIZE)
        _colorbar(fig, mappable, axes[r, : len(values)], label=None, nbins=2)
    return fig
