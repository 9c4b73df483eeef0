"""The functional attention core shared by every attnkit attention module.

:func:`attend` is scaled dot-product attention with a pluggable normalizer (softmax, sparsemax,
entmax, ...). The multi-head attention of DETR and the windowed, grid, spatial-reduction and
relative-position mixers all reduce to it once their queries, keys and values are laid out as
``[B, H, N, D]``.

Mask conventions (one for the whole package):

* ``mask``: **boolean**, broadcastable to ``[B, H, Q, K]``, **True = masked out** (that key is
  not attended by that query), as the boolean masks of ``torch.nn.MultiheadAttention``. Note that
  ``scaled_dot_product_attention`` uses the opposite convention; :func:`attend` converts.
* ``bias``: **additive float**, broadcastable to ``[B, H, Q, K]``, added to the scaled scores
  before normalisation: a relative position bias, an ALiBi slope, a float mask with ``-inf``.
* A key padding mask ``[B, K]`` (True = padding) becomes a ``mask`` through
  :func:`key_padding_to_mask`; several masks are combined with :func:`merge_masks`.

A query whose keys are all masked out (a fully masked row) attends to nothing: its weights are
all zero and its output is zero, never NaN, on both the fused and the explicit path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["attend", "key_padding_to_mask", "merge_masks", "is_softmax"]


def key_padding_to_mask(key_padding_mask: torch.Tensor) -> torch.Tensor:
    """Turn a boolean key padding mask ``[B, K]`` (True = padding) into an attention mask.

    Returns a boolean ``[B, 1, 1, K]`` mask (True = masked out) that broadcasts over heads and
    queries, ready for :func:`attend`.
    """
    if key_padding_mask.dtype != torch.bool:
        raise TypeError(f"key_padding_mask must be boolean, got {key_padding_mask.dtype}")
    if key_padding_mask.dim() != 2:
        raise ValueError(f"key_padding_mask must be [B, K], got {tuple(key_padding_mask.shape)}")
    return key_padding_mask[:, None, None, :]  # [B, 1, 1, K]


def merge_masks(*masks: torch.Tensor | None) -> torch.Tensor | None:
    """Combine boolean masks (True = masked out) by logical or, skipping ``None``.

    The result has the broadcast shape of the inputs, or is ``None`` when all are ``None``.
    """
    merged = None
    for m in masks:
        if m is None:
            continue
        if m.dtype != torch.bool:
            raise TypeError(f"masks must be boolean (True = masked out), got {m.dtype}")
        merged = m if merged is None else merged | m
    return merged


def is_softmax(normalizer: nn.Module) -> bool:
    """Whether ``normalizer`` is the plain softmax, which the fused SDPA kernel implements."""
    return getattr(normalizer, "name", None) == "softmax"


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    normalizer: nn.Module,
    mask: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    key_grid: tuple[int, int] | None = None,
    dropout_p: float = 0.0,
    training: bool = False,
    need_weights: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scaled dot-product attention with a pluggable normalizer.

    Args:
        q: queries ``[B, H, Q, D]``.
        k: keys ``[B, H, K, D]``.
        v: values ``[B, H, K, Dv]``.
        normalizer: maps scores ``[..., K]`` to weights over the last dim; called as
            ``normalizer(scores, key_grid=key_grid)`` (or ``normalizer(scores)`` when
            ``key_grid`` is None). Its ``.name`` selects the fused path for ``"softmax"``.
        mask: boolean, broadcastable to ``[B, H, Q, K]``, True = masked out.
        bias: additive float, broadcastable to ``[B, H, Q, K]``, e.g. a relative position bias.
        key_grid: ``(h, w)`` row-major layout of the K keys when they form an image grid (TVMax
            needs it).
        dropout_p: dropout probability on the attention weights, applied when ``training``.
        training: whether dropout is active.
        need_weights: return the weights; forces the explicit (non-fused) path.

    Returns:
        ``(out [B, H, Q, Dv], weights [B, H, Q, K] or None)``. The weights are the normalizer's
        output before dropout (the attention distribution, which is what analysis wants).

    With a softmax normalizer and ``need_weights=False`` the computation goes through
    ``torch.nn.functional.scaled_dot_product_attention`` (bias and mask merged into its
    ``attn_mask``) and never materialises the weights in memory-efficient kernels.
    """
    if mask is not None and mask.dtype != torch.bool:
        raise TypeError(f"mask must be boolean (True = masked out), got {mask.dtype}")
    p = dropout_p if training else 0.0
    if not need_weights and is_softmax(normalizer):
        return _attend_fused(q, k, v, mask, bias, p), None

    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # [B, H, Q, K]
    if bias is not None:
        scores = scores + bias.to(scores.dtype)
    if mask is not None:
        scores = scores.masked_fill(mask, float("-inf"))
    if key_grid is None:
        weights = normalizer(scores)  # [B, H, Q, K]
    else:
        weights = normalizer(scores, key_grid=key_grid)  # [B, H, Q, K]
    dropped = F.dropout(weights, p) if p > 0 else weights
    out = dropped.to(v.dtype) @ v  # [B, H, Q, Dv]
    return out, (weights if need_weights else None)


def _attend_fused(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    bias: torch.Tensor | None,
    dropout_p: float,
) -> torch.Tensor:
    """Softmax attention through SDPA, with fully masked rows giving zeros instead of NaN.

    A row whose keys are all masked makes the softmax 0/0. Such rows ("dead") are unmasked
    for the kernel, so forward and backward stay finite, and their output is zeroed afterwards,
    which also stops any gradient through them.
    """
    if bias is None and mask is None:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    if bias is None:
        dead = mask.all(dim=-1, keepdim=True)  # [..., Q, 1]
        attn_mask = ~mask | dead  # SDPA boolean convention: True = attend
    else:
        attn_mask = bias.to(q.dtype)
        if mask is not None:
            attn_mask = torch.where(mask, float("-inf"), attn_mask)  # broadcast shape
        dead = torch.isneginf(attn_mask).all(dim=-1, keepdim=True)  # [..., Q, 1]
        attn_mask = attn_mask.masked_fill(dead, 0.0)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)
    return out.masked_fill(dead, 0.0)  # [B, H, Q, Dv]
