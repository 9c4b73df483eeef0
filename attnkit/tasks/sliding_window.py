"""Sliding-window prediction: a dense model over a large image as overlapping tiles, blended.

A model trained on random crops (``data.crop_size``) sees the whole of a large val raster at
once only at a cost in memory that grows with the raster, and at a scale of context it never
trained on. :func:`sliding_window_predict` instead runs it on ``window``-sized tiles that step
by ``window * (1 - overlap)`` and cover the image, the last tile of every row and column
aligned to the image's edge (so no tile hangs over it and none is padded). Each output pixel is
the weighted mean of the tiles that cover it, with a separable triangular weight that is
highest at a tile's centre and falls to a floor at its border: tile seams, where a model's
predictions are least reliable (little context), count least. For a pointwise model every tile
predicts the same value for a pixel, so the blend returns the full-image prediction exactly
(up to float rounding).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

__all__ = ["blend_weight", "sliding_window_predict", "tile_starts", "tiled_prediction"]

WEIGHT_FLOOR = 0.05  # the weight of a tile's border pixels, relative to its centre


def tile_starts(size: int, window: int, stride: int) -> list[int]:
    """The offsets of tiles of ``window`` that step by ``stride`` and cover ``0..size``; the last
    one ends at ``size``. A side no longer than the window is one tile at 0."""
    if size <= window:
        return [0]
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] != size - window:
        starts.append(size - window)
    return starts


def _ramp(n: int, floor: float, device) -> torch.Tensor:
    """``[n]``: 1 at the centre falling linearly towards the ends, never below ``floor``."""
    pos = (torch.arange(n, device=device, dtype=torch.float32) + 0.5) / n  # (0, 1)
    return (1.0 - (2.0 * pos - 1.0).abs()).clamp_min(floor)


def blend_weight(height: int, width: int, floor: float = WEIGHT_FLOOR, device=None):
    """The blending weight of one tile, ``[height, width]`` float32 (separable triangle with a
    floor; all ones for ``floor`` 1, i.e. plain averaging)."""
    return _ramp(height, floor, device)[:, None] * _ramp(width, floor, device)[None, :]


def sliding_window_predict(
    model_fn: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    window: Sequence[int],
    overlap: float = 0.25,
    floor: float = WEIGHT_FLOOR,
) -> torch.Tensor:
    """``model_fn`` over ``images [B, C, H, W]`` in overlapping ``window`` tiles ([h, w]).

    ``model_fn(tiles [B, C, h, w]) -> [B, out, h, w]``; tiles step by ``round(window *
    (1 - overlap))`` (at least 1 pixel) and are blended with :func:`blend_weight`. A side
    shorter than the window is predicted whole. Returns ``[B, out, H, W]`` float32.
    """
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if len(window) != 2 or min(window) < 1:
        raise ValueError(f"window must be [h, w] with positive sides, got {list(window)}")
    B, _, H, W = images.shape
    th, tw = min(int(window[0]), H), min(int(window[1]), W)  # tile size
    rows = tile_starts(H, th, max(1, round(th * (1.0 - overlap))))
    cols = tile_starts(W, tw, max(1, round(tw * (1.0 - overlap))))
    weight = blend_weight(th, tw, floor, images.device)  # [th, tw]
    total = torch.zeros(H, W, device=images.device)  # [H, W] sum of weights
    out = None  # [B, out, H, W] weighted sum of predictions
    for top in rows:
        for left in cols:
            pred = model_fn(images[:, :, top : top + th, left : left + tw])  # [B, out, th, tw]
            if pred.shape[0] != B or tuple(pred.shape[-2:]) != (th, tw):
                raise ValueError(
                    f"the model must keep a tile's size: [{B}, C, {th}, {tw}] in, "
                    f"{list(pred.shape)} out"
                )
            if out is None:
                out = torch.zeros(B, pred.shape[1], H, W, device=images.device)
            out[:, :, top : top + th, left : left + tw] += pred.float() * weight
            total[top : top + th, left : left + tw] += weight
    return out / total


def tiled_prediction(model, batch, window: Sequence[int], overlap: float, key: str):
    """The model's output ``key`` (``pred``, ``logits``) for ``batch``, predicted tile by tile
    over ``batch.inputs["images"]`` (the evaluators' ``predict`` with ``data.eval_window``)."""
    inputs = batch.inputs

    def tiles(images: torch.Tensor) -> torch.Tensor:
        outputs = model(**{**inputs, "images": images})
        return outputs[key] if isinstance(outputs, dict) else outputs

    return sliding_window_predict(tiles, inputs["images"], window, overlap)
