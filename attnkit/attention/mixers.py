"""Attention mechanisms on a channels-last token map ``[B, h, w, C]``, chosen by name.

The dense line composes encoders from interchangeable mechanisms (``model.attention.mechanism``);
:func:`map_attention` builds any of them for a map:

- ``full``: multi-head self-attention over all ``N = h w`` tokens (:class:`SelfAttention`);
- ``window`` / ``shifted_window``: attention within ``P``-token windows, optionally shifted by
  half a window (Swin's W-MSA / SW-MSA; :class:`PartitionAttention`);
- ``grid``: attention within a dilated grid partition (MaxViT's grid attention);
- ``spatial_reduction``: keys and values from the map reduced ``r``-fold by a strided conv
  (PVTv2 / MiT; :class:`SpatialReductionAttention`);
- ``pooled_reduction``: keys and values from the map average-pooled to a fixed ``P x P`` grid
  (PVTv2-Li's linear spatial reduction), linear in the token count;
- ``efficient``: linear attention (Shen et al. 2021; :class:`EfficientAttention`), which forms no
  attention matrix and so takes no normalizer.

The window mechanisms return the :class:`PartitionAttention` itself (its parameter names are
Swin's and MaxViT's); the token-sequence ones are wrapped in :class:`OnMap`, whose ``attn`` is the
attention module.
"""

from __future__ import annotations

import torch
from torch import nn

from attnkit.attention.efficient import EfficientAttention
from attnkit.attention.partition import PartitionAttention
from attnkit.attention.self_attention import SelfAttention
from attnkit.attention.spatial_reduction import SpatialReductionAttention

__all__ = ["MECHANISMS", "WITHOUT_ATTENTION_MATRIX", "OnMap", "map_attention"]

MECHANISMS = (
    "full",
    "window",
    "shifted_window",
    "grid",
    "spatial_reduction",
    "pooled_reduction",
    "efficient",
)
WITHOUT_ATTENTION_MATRIX = ("efficient",)
"""Mechanisms that never form an attention matrix: a normalizer other than softmax is an error."""


class OnMap(nn.Module):
    """A token-sequence attention (``[B, N, C]``) applied to a map ``[B, h, w, C]``."""

    def __init__(self, attn: nn.Module) -> None:
        super().__init__()
        self.attn = attn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, h, w, C = x.shape
        tokens = x.reshape(B, h * w, C)  # [B, N, C], row-major
        if isinstance(self.attn, SelfAttention):
            out = self.attn(tokens, key_grid=(h, w))[0]
        elif isinstance(self.attn, SpatialReductionAttention):
            out = self.attn(tokens, (h, w))
        else:
            out = self.attn(tokens)
        return out.reshape(B, h, w, C)


def map_attention(
    mechanism: str,
    dim: int,
    num_heads: int,
    normalizer: str = "softmax",
    normalizer_kw: dict | None = None,
    window: tuple[int, int] = (7, 7),
    shift: tuple[int, int] | None = None,
    sr_ratio: int = 1,
    pool_size: int = 7,
) -> nn.Module:
    """The ``mechanism`` (one of :data:`MECHANISMS`) as a module on ``[B, h, w, C]`` maps.

    ``window``: the window (or grid) of the partition mechanisms; ``shift``: the shift of
    ``shifted_window`` (default: half the window); ``sr_ratio``: the reduction of
    ``spatial_reduction``; ``pool_size``: the key grid of ``pooled_reduction``. A normalizer other than softmax for ``efficient`` is a ``ValueError``.
    """
    kw = normalizer_kw or {}
    window = (int(window[0]), int(window[1]))
    if mechanism in ("window", "shifted_window", "grid"):
        if mechanism == "shifted_window" and shift is None:
            shift = (window[0] // 2, window[1] // 2)
        shift = shift if mechanism == "shifted_window" else (0, 0)
        kind = "grid" if mechanism == "grid" else "block"
        return PartitionAttention(dim, dim // num_heads, kind, window, normalizer, kw, shift=shift)
    if mechanism == "full":
        return OnMap(
            SelfAttention(dim, num_heads, normalizer=_normalizer(normalizer, num_heads, kw))
        )
    if mechanism == "spatial_reduction":
        return OnMap(SpatialReductionAttention(dim, num_heads, sr_ratio, normalizer, kw))
    if mechanism == "pooled_reduction":
        return OnMap(
            SpatialReductionAttention(dim, num_heads, 1, normalizer, kw, pool_size=pool_size)
        )
    if mechanism == "efficient":
        if normalizer != "softmax":
            raise ValueError(
                f"efficient attention forms no attention matrix, so it takes no normalizer "
                f"({normalizer!r}); use softmax or a mechanism of {MECHANISMS[:-1]}"
            )
        return OnMap(EfficientAttention(dim, num_heads))
    raise ValueError(f"unknown attention mechanism {mechanism!r}; known: {', '.join(MECHANISMS)}")


def _normalizer(name: str, num_heads: int, kw: dict):
    from attnkit.attention.normalizers import get_normalizer

    return get_normalizer(name, num_heads=num_heads, **kw)
