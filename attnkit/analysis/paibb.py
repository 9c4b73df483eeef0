"""PAIBB: the percentage of attention inside the ground-truth bounding box (DESIGN.md).

For a Hungarian-matched (query, ground truth) pair, the query's cross-attention map over the
image's unpadded feature grid ``[h, w]`` is upsampled with
``F.interpolate(mode="bilinear", align_corners=False)`` to the image's original size ``(H, W)``,
and PAIBB = mass of the pixels inside the box / total mass. Pixel (row i, column j) is inside
box ``(x0, y0, x1, y1)`` when ``x0 <= j + 0.5 < x1`` and ``y0 <= i + 0.5 < y1``: the pixel-centre
rule, which for integer boxes is the slice ``[y0:y1, x0:x1]`` and makes the result depend on
fractional coordinates only through which pixel centres they enclose (pitfall 5).

:func:`paibb` never builds the ``H x W`` map: bilinear upsampling is separable,
``up = R @ map @ C^T`` with interpolation matrices ``R [H, h]`` and ``C [W, w]``, so the mass in
the box is ``r_box^T map c_box`` with ``r_box`` the sum of R's rows inside the box's row range
(``[h]``, from a cumulative sum of R's rows) and likewise ``c_box``; the total mass is
``(1^T R) map (C^T 1)``. :func:`paibb_pixel_reference` is the literal definition, for tests and
benchmarks.

Maps must be cropped to the image's own unpadded grid before scoring: a padded map resized as
if unpadded gives wrong values (pitfalls 4 and 9); see :func:`crop_to_unpadded`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "bilinear_matrix",
    "crop_to_unpadded",
    "paibb",
    "paibb_images",
    "paibb_pixel_reference",
    "size_bucket_of_boxes",
]


def bilinear_matrix(out_size: int, in_size: int, device=None) -> torch.Tensor:
    """The ``[out_size, in_size]`` float64 matrix of 1-D bilinear resizing, align_corners=False.

    Row ``i`` holds the weights torch's ``F.interpolate(mode="bilinear", align_corners=False)``
    (no ``scale_factor``) gives the input cells for output index ``i``: source coordinate
    ``(i + 0.5) * in / out - 0.5`` clamped at 0, neighbours ``floor`` and ``floor + 1`` (the
    latter clamped at ``in - 1``).
    """
    src = (torch.arange(out_size, device=device, dtype=torch.float64) + 0.5) * (
        in_size / out_size
    ) - 0.5
    src = src.clamp_min(0)  # [out]
    i0 = src.floor().long().clamp_max(in_size - 1)  # [out]
    i1 = torch.where(i0 < in_size - 1, i0 + 1, i0)  # [out]
    lam1 = src - i0  # [out]
    m = torch.zeros(out_size, in_size, device=device, dtype=torch.float64)
    m.scatter_add_(1, i0[:, None], (1 - lam1)[:, None])
    m.scatter_add_(1, i1[:, None], lam1[:, None])
    return m  # [out, in]


def _pixel_range(lo: torch.Tensor, hi: torch.Tensor, size: int):
    """Index range ``[start, end)`` of the pixels whose centre ``p + 0.5`` is in ``[lo, hi)``."""
    start = torch.ceil(lo.to(torch.float64) - 0.5).clamp(0, size).long()  # [P]
    end = torch.ceil(hi.to(torch.float64) - 0.5).clamp(0, size).long()  # [P]
    return start, torch.maximum(start, end)


def _box_weights(m: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Sum of the rows of ``m [S, s]`` inside each box's pixel range: ``[P, s]``."""
    start, end = _pixel_range(lo, hi, m.shape[0])
    cum = torch.cat([m.new_zeros(1, m.shape[1]), m.cumsum(0)])  # [S + 1, s]
    return cum[end] - cum[start]  # [P, s]


def _check(maps: torch.Tensor, boxes: torch.Tensor) -> None:
    if maps.dim() < 3:
        raise ValueError(f"maps must be [P, ..., h, w], got shape {tuple(maps.shape)}")
    if boxes.dim() != 2 or boxes.shape[-1] != 4 or boxes.shape[0] != maps.shape[0]:
        raise ValueError(
            f"boxes must be [P, 4] with P = {maps.shape[0]} pairs, got {tuple(boxes.shape)}"
        )


def box_and_total_mass(
    maps: torch.Tensor, image_size: tuple[int, int], boxes: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The upsampled maps' mass inside each box and in total, both ``[P, ...]`` float64.

    PAIBB is their ratio. Both are linear in the map, so the PAIBB of a head-averaged map is
    ``inside.mean(heads) / total.mean(heads)``: no second pass over the maps is needed.
    Arguments as :func:`paibb`.
    """
    _check(maps, boxes)
    big_h, big_w = image_size
    h, w = maps.shape[-2:]
    rm = _cached_bilinear(big_h, h, str(maps.device))  # [H, h]
    cm = _cached_bilinear(big_w, w, str(maps.device))  # [W, w]
    b = boxes.to(maps.device)
    r_box = _box_weights(rm, b[:, 1], b[:, 3])  # [P, h]
    c_box = _box_weights(cm, b[:, 0], b[:, 2])  # [P, w]
    x = maps.to(torch.float64)
    inside = torch.einsum("pi,p...ij,pj->p...", r_box, x, c_box)  # [P, ...]
    total = torch.einsum("i,p...ij,j->p...", rm.sum(0), x, cm.sum(0))  # [P, ...]
    return inside, total


@functools.lru_cache(maxsize=256)
def _cached_bilinear(out_size: int, in_size: int, device: str) -> torch.Tensor:
    """:func:`bilinear_matrix`, memoised: an eval pass meets few (image size, grid) pairs."""
    return bilinear_matrix(out_size, in_size, torch.device(device))


def mass_ratio(inside: torch.Tensor, total: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``inside / total`` (NaN where the total is 0) in ``like``'s float dtype (>= float32)."""
    out = torch.where(total > 0, inside / total, math.nan)
    dtype = torch.promote_types(like.dtype, torch.float32) if like.is_floating_point() else None
    return out.to(dtype or torch.float32)


def paibb(maps: torch.Tensor, image_size: tuple[int, int], boxes: torch.Tensor) -> torch.Tensor:
    """PAIBB of matched pairs of one image, without upsampling the maps.

    Args:
        maps: ``[P, ..., h, w]`` non-negative attention maps, one per matched pair (extra dims,
            e.g. heads, are scored separately), already cropped to the image's unpadded grid.
        image_size: ``(H, W)``, the image's original size in pixels, shared by all pairs (group
            pairs by image, or use :func:`paibb_images`).
        boxes: ``[P, 4]`` ground-truth boxes, absolute ``x0, y0, x1, y1`` pixels of the original
            image (floats allowed).

    Returns:
        ``[P, ...]`` in [0, 1], float64 computed (returned in the maps' float dtype, at least
        float32); NaN where a map's total mass is 0.
    """
    inside, total = box_and_total_mass(maps, image_size, boxes)
    return mass_ratio(inside, total, maps)


def paibb_images(
    maps: Sequence[torch.Tensor],
    image_sizes: Sequence[tuple[int, int]],
    boxes: Sequence[torch.Tensor],
) -> torch.Tensor:
    """:func:`paibb` over several images (each with its own grid and size), concatenated.

    ``maps[n]`` ``[P_n, ..., h_n, w_n]``, ``image_sizes[n]`` ``(H_n, W_n)``, ``boxes[n]``
    ``[P_n, 4]``; returns ``[sum P_n, ...]``. The interpolation matrices are built per image.
    """
    if not (len(maps) == len(image_sizes) == len(boxes)):
        raise ValueError("maps, image_sizes and boxes must have one entry per image")
    return torch.cat([paibb(m, s, b) for m, s, b in zip(maps, image_sizes, boxes)])


def paibb_pixel_reference(
    maps: torch.Tensor, image_size: tuple[int, int], boxes: torch.Tensor, chunk: int = 16
) -> torch.Tensor:
    """The literal PAIBB: upsample each map to ``(H, W)``, sum the pixels whose centre is inside.

    Same arguments and result as :func:`paibb`; builds ``chunk`` full-size maps at a time.
    """
    _check(maps, boxes)
    big_h, big_w = image_size
    lead = maps.shape[1:-2]
    rows = torch.arange(big_h, device=maps.device, dtype=torch.float64) + 0.5  # [H]
    cols = torch.arange(big_w, device=maps.device, dtype=torch.float64) + 0.5  # [W]
    b = boxes.to(device=maps.device, dtype=torch.float64)
    out = []
    for s in range(0, maps.shape[0], chunk):
        m = maps[s : s + chunk]
        x = m if m.is_floating_point() else m.float()
        up = F.interpolate(
            x.reshape(-1, 1, *m.shape[-2:]),
            size=(big_h, big_w),
            mode="bilinear",
            align_corners=False,
        )  # [p * L, 1, H, W]
        up = up.reshape(m.shape[0], -1, big_h, big_w).to(torch.float64)  # [p, L, H, W]
        bb = b[s : s + chunk]
        in_r = (rows >= bb[:, 1:2]) & (rows < bb[:, 3:4])  # [p, H]
        in_c = (cols >= bb[:, 0:1]) & (cols < bb[:, 2:3])  # [p, W]
        inside_px = in_r[:, None, :, None] & in_c[:, None, None, :]  # [p, 1, H, W]
        inside = torch.where(inside_px, up, 0.0).sum((-2, -1))  # [p, L]
        total = up.sum((-2, -1))  # [p, L]
        out.append(torch.where(total > 0, inside / total, math.nan).reshape(-1, *lead))
    dtype = torch.promote_types(maps.dtype, torch.float32) if maps.is_floating_point() else None
    return torch.cat(out).to(dtype or torch.float32)


def crop_to_unpadded(
    weights: torch.Tensor, grid_hw: tuple[int, int], key_padding_mask: torch.Tensor
) -> torch.Tensor:
    """Crop one image's maps over a padded key grid to its unpadded part.

    Args:
        weights: ``[..., K]`` maps of one image over the padded row-major grid ``grid_hw``.
        grid_hw: ``(h, w)`` with h * w = K.
        key_padding_mask: ``[K]`` or ``[h, w]``, True at padded keys; the unpadded keys must
            form the top-left rectangle (DETR pads at the bottom and right).

    Returns:
        ``[..., h_valid, w_valid]``.
    """
    h, w = grid_hw
    if weights.shape[-1] != h * w:
        raise ValueError(f"grid {grid_hw} has {h * w} cells but the maps have {weights.shape[-1]}")
    valid = ~key_padding_mask.reshape(h, w).to(torch.bool)  # [h, w]
    hv = int(valid.any(1).sum())
    wv = int(valid.any(0).sum())
    if int(valid.sum()) != hv * wv or not bool(valid[:hv, :wv].all()):
        raise ValueError("the unpadded keys are not the top-left rectangle of the grid")
    return weights.reshape(*weights.shape[:-1], h, w)[..., :hv, :wv]  # [..., hv, wv]


def size_bucket_of_boxes(boxes_or_areas: torch.Tensor | Sequence[float]) -> list[str]:
    """COCO size bucket of each object: small < 32^2 <= medium < 96^2 <= large (pixel area).

    Accepts ``[P, 4]`` absolute xyxy boxes (area = width * height) or ``[P]`` areas. COCO's
    AP_S/M/L bucket by the annotation's ``area`` (segment area), so pass those areas when they
    are available; either must be in the original image's pixels.
    """
    from attnkit.data.stats import size_bucket

    x = torch.as_tensor(boxes_or_areas, dtype=torch.float64)
    if x.dim() == 2 and x.shape[-1] == 4:
        x = (x[:, 2] - x[:, 0]).clamp_min(0) * (x[:, 3] - x[:, 1]).clamp_min(0)  # [P]
    elif x.dim() != 1:
        raise ValueError(f"expected [P, 4] boxes or [P] areas, got shape {tuple(x.shape)}")
    return [size_bucket(a) for a in x.tolist()]
