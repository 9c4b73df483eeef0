"""Multi-head self-attention of Vision Transformers, state-dict compatible with timm's ``Attention``.

The token layout convention (shared by every ViT-like model of attnkit): a sequence of
``N = prefix_tokens + h * w`` tokens whose **last** ``h * w`` are the patches of an image grid in
row-major order (token ``prefix_tokens + row * w + col``) and whose first ``prefix_tokens`` are
extra tokens (the class token) that lie on no grid. ``key_grid = (h, w)`` and ``prefix_tokens``
describe that layout to the normalizer and, through the record protocol, to the analysis code,
so any recorded weight row can be cropped to its grid keys and put back on the image.
"""

from __future__ import annotations

import torch
from torch import nn

from attnkit.attention._threshold import compute_dtype
from attnkit.attention.core import attend, key_padding_to_mask, merge_masks
from attnkit.attention.hooks import AttentionModule
from attnkit.attention.normalizers import get_normalizer
from attnkit.attention.sparsemax import sparsemax
from attnkit.attention.tvmax import prox_tv2d

__all__ = ["SelfAttention"]


class _PrefixedGridTVMax:
    """TVmax over keys whose last ``h * w`` form a grid and whose first ones lie on none.

    TVmax's graph gets the grid edges only: the prefix keys (class token) are isolated nodes, so
    the TV prox leaves their scores unchanged and smooths the grid keys among themselves; the
    sparsemax then runs over all keys. With ``prefix_tokens == 0`` this is plain TVmax.
    """

    name = "tvmax"

    def __init__(self, tv: nn.Module, prefix_tokens: int) -> None:
        self.tv = tv
        self.prefix_tokens = prefix_tokens

    def __call__(self, scores: torch.Tensor, key_grid: tuple[int, int]) -> torch.Tensor:
        h, w = key_grid
        p = self.prefix_tokens
        z = scores.to(compute_dtype(scores.dtype))
        prefix, grid = z[..., :p], z[..., p:]  # [..., P], [..., h * w]
        if self.tv.lam > 0:
            flat = grid.reshape(-1, h, w)  # [B * H * Q, h, w]
            grid = prox_tv2d(flat, self.tv.lam, self.tv.tol, self.tv.max_iter).view(grid.shape)
        return sparsemax(torch.cat([prefix, grid], dim=-1)).to(scores.dtype)  # [..., K]


class SelfAttention(AttentionModule):
    """Multi-head self-attention over ``[B, N, C]`` tokens with a pluggable normalizer.

    Parameter names and layout are those of timm's ``Attention`` (``qkv``: ``Linear(dim,
    3 * H * head_dim)`` whose output splits as ``(3, H, head_dim)``; ``proj``:
    ``Linear(H * head_dim, dim)``), so timm ViT state dicts load without key mapping and give the
    same outputs. With the softmax normalizer and no weights wanted (no recorder observing this
    module either) the forward takes the fused ``scaled_dot_product_attention`` path, as timm.

    Keys follow the layout of the module docstring: ``key_grid=(h, w)`` describes the **last**
    ``h * w`` keys (row-major) and ``prefix_tokens`` counts the tokens before them. The grid is
    passed to the normalizer when the keys are exactly the grid; with prefix tokens TVmax smooths
    the grid keys only (the prefix keys are isolated nodes of its graph), and the other
    normalizers ignore the grid anyway. A recorder receives ``key_grid`` and ``prefix_tokens``
    (in the record's ``meta``) with per-head weights ``[B, H, N, N]`` before dropout.

    A normalizer with parameters (alpha-entmax's ``pre_alpha [H]``) adds ``normalizer.*`` keys
    that timm checkpoints lack; they keep their initial values when such a checkpoint is loaded.

    Args:
        dim: token width C.
        num_heads: number of heads H.
        normalizer: a name for ``get_normalizer`` (``"softmax"``, ``"sparsemax"``,
            ``"entmax15"``, ``"alpha_entmax"``, ``"tvmax"``) or a ready normalizer module.
        qkv_bias: whether the ``qkv`` projection has a bias (timm ViTs: True).
        attn_drop: dropout probability on the attention weights (training only).
        proj_drop: dropout probability after the output projection.
        head_dim: width D of a head; ``dim // num_heads`` by default (then H must divide C).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        normalizer: str | nn.Module = "softmax",
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        head_dim: int | None = None,
    ) -> None:
        super().__init__()
        if num_heads <= 0 or dim <= 0:
            raise ValueError(f"dim ({dim}) and num_heads ({num_heads}) must be positive")
        if head_dim is None:
            if dim % num_heads:
                raise ValueError(f"dim ({dim}) must be a multiple of num_heads ({num_heads})")
            head_dim = dim // num_heads
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.attn_drop = float(attn_drop)
        inner = num_heads * head_dim
        self.qkv = nn.Linear(dim, 3 * inner, bias=qkv_bias)
        self.proj = nn.Linear(inner, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        if isinstance(normalizer, str):
            normalizer = get_normalizer(normalizer, num_heads=num_heads)
        elif not isinstance(normalizer, nn.Module):
            raise TypeError(f"normalizer must be a name or an nn.Module, got {type(normalizer)}")
        self.normalizer = normalizer

    def _grid_normalizer(
        self, key_grid: tuple[int, int] | None, prefix_tokens: int
    ) -> tuple[nn.Module | _PrefixedGridTVMax, tuple[int, int] | None]:
        """The normalizer and the grid to hand to :func:`attend` for this key layout."""
        if key_grid is None or prefix_tokens == 0:
            return self.normalizer, key_grid
        if getattr(self.normalizer, "name", None) == "tvmax":
            return _PrefixedGridTVMax(self.normalizer, prefix_tokens), key_grid
        # No grid covers all keys; the other normalizers do not use one.
        return self.normalizer, None

    def forward(
        self,
        x: torch.Tensor,
        key_grid: tuple[int, int] | None = None,
        prefix_tokens: int = 0,
        key_padding_mask: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attend from every token of ``x [B, N, C]`` to every token of ``x``.

        Args:
            key_grid: ``(h, w)``, the row-major grid of the last ``h * w`` tokens, or None.
            prefix_tokens: number of tokens before the grid (needs ``key_grid``).
            key_padding_mask: boolean ``[B, N]``, True at keys to ignore (padding).
            attn_mask: boolean, broadcastable to ``[B, H, N, N]``, True = masked out.
            bias: additive float, broadcastable to ``[B, H, N, N]`` (relative position bias).
            need_weights: also return the weights.

        Returns:
            ``(out [B, N, C], weights [B, H, N, N] or None)``.
        """
        if x.dim() != 3:
            raise ValueError(f"x must be [B, N, C], got {tuple(x.shape)}")
        B, N, _ = x.shape
        if key_grid is not None:
            h, w = (int(s) for s in key_grid)
            if prefix_tokens < 0 or prefix_tokens + h * w != N:
                raise ValueError(
                    f"key_grid {(h, w)} with {prefix_tokens} prefix tokens does not match the "
                    f"{N} tokens (prefix_tokens + h * w != N)"
                )
            key_grid = (h, w)
        elif prefix_tokens:
            raise ValueError("prefix_tokens needs a key_grid (the tokens after the prefix)")
        mask = attn_mask
        if key_padding_mask is not None:
            if tuple(key_padding_mask.shape) != (B, N):
                raise ValueError(
                    f"key_padding_mask must be [B, N] = {[B, N]}, got {list(key_padding_mask.shape)}"
                )
            mask = merge_masks(mask, key_padding_to_mask(key_padding_mask))

        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim)  # [B, N, 3, H, D]
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x [B, H, N, D]
        normalizer, grid = self._grid_normalizer(key_grid, prefix_tokens)
        record = self.observed()
        out, weights = attend(
            q,
            k,
            v,
            normalizer,
            mask=mask,
            bias=bias,
            key_grid=grid,
            dropout_p=self.attn_drop,
            training=self.training,
            need_weights=need_weights or record,
        )
        if record:
            self.emit(
                weights,
                key_grid=key_grid,
                key_padding_mask=key_padding_mask,
                prefix_tokens=prefix_tokens,
            )
        out = out.transpose(1, 2).reshape(B, N, self.num_heads * self.head_dim)  # [B, N, H * D]
        out = self.proj_drop(self.proj(out))  # [B, N, C]
        return out, (weights if need_weights else None)

    def extra_repr(self) -> str:
        name = getattr(self.normalizer, "name", type(self.normalizer).__name__)
        return f"dim={self.dim}, num_heads={self.num_heads}, normalizer={name}"
