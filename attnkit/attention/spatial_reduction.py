"""Spatial-reduction attention (PVTv2 / SegFormer's MiT): queries at every token, keys and values
from the map shrunk by a strided convolution, with any normalizer.

Over ``N = h * w`` tokens, full self-attention costs ``N^2``; here the keys come from the map
convolved with a ``sr x sr`` kernel of stride ``sr`` and layer-normed, ``N / sr^2`` of them, so the
cost is ``N^2 / sr^2``. ``sr = 1`` is plain multi-head self-attention.

The *linear* (pooled) variant of PVTv2-Li (``pool_size = P``) averages the map into a fixed
``P x P`` grid first, then a 1x1 conv, LayerNorm and GELU: ``P^2`` keys whatever the input size,
so the cost is linear in ``N`` (``N P^2``).

Parameter names are timm's PVTv2 ``Attention`` (``q``, ``kv``, ``sr``, ``norm``, ``proj``), so its
state dicts load as they are (``linear_attn=True`` for the pooled variant). The recorder gets
``[B, H, N, N']`` with the keys on the reduced grid ``(h', w')``.
"""

from __future__ import annotations

import torch
from torch import nn

from attnkit.attention.core import attend
from attnkit.attention.hooks import AttentionModule
from attnkit.attention.layout import KeyLayout
from attnkit.attention.normalizers import get_normalizer

__all__ = ["SpatialReductionAttention"]


class SpatialReductionAttention(AttentionModule):
    """``x [B, N, C]`` on an ``(h, w)`` grid -> ``[B, N, C]``; keys from the map reduced ``sr``-fold.

    Args:
        dim: channels C; num_heads: H (head width C / H).
        sr_ratio: the reduction (kernel and stride of the conv on keys and values); 1: none.
        pool_size: average-pool keys and values to a ``pool_size`` square grid instead (the
            linear variant; ``sr_ratio`` is then unused); None: the conv reduction.
        normalizer: a name for ``get_normalizer`` or a module; ``normalizer_kw`` its options.
        qkv_bias: biases of ``q`` and ``kv``; attn_drop, proj_drop: dropout rates.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        sr_ratio: int = 1,
        normalizer: str | nn.Module = "softmax",
        normalizer_kw: dict | None = None,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        pool_size: int | None = None,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not a multiple of num_heads {num_heads}")
        self.dim, self.num_heads, self.sr_ratio = dim, num_heads, int(sr_ratio)
        self.head_dim = dim // num_heads
        self.pool_size = None if pool_size is None else int(pool_size)
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        if self.pool_size is not None:
            self.pool = nn.AdaptiveAvgPool2d(self.pool_size)
            self.sr = nn.Conv2d(dim, dim, 1)
            self.act = nn.GELU()
        else:
            self.pool, self.act = None, None
            self.sr = nn.Conv2d(dim, dim, sr_ratio, stride=sr_ratio) if sr_ratio > 1 else None
        self.norm = nn.LayerNorm(dim) if self.sr is not None else None
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = float(attn_drop)
        self.proj_drop = nn.Dropout(proj_drop)
        if isinstance(normalizer, str):
            normalizer = get_normalizer(normalizer, num_heads=num_heads, **(normalizer_kw or {}))
        self.normalizer = normalizer

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        B, N, C = x.shape
        h, w = hw
        q = self.q(x).reshape(B, N, self.num_heads, self.head_dim).transpose(1, 2)  # [B, H, N, D]
        grid = (h, w)
        if self.sr is not None:
            reduced = x.transpose(1, 2).reshape(B, C, h, w)  # [B, C, h, w]
            if self.pool is not None:
                reduced = self.pool(reduced)  # [B, C, P, P]
            reduced = self.sr(reduced)  # [B, C, h', w']
            grid = tuple(reduced.shape[-2:])
            x = self.norm(reduced.flatten(2).transpose(1, 2))  # [B, N', C]
            if self.act is not None:
                x = self.act(x)
        kv = self.kv(x).reshape(B, -1, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        k, v = kv.unbind(0)  # [B, H, N', D]
        record = self.observed()
        out, weights = attend(
            q,
            k,
            v,
            self.normalizer,
            key_grid=grid,
            dropout_p=self.attn_drop,
            training=self.training,
            need_weights=record,
        )
        if record:
            self.emit(weights, key_grid=grid, layout=KeyLayout("grid", grid), query_grid=(h, w))
        out = out.transpose(1, 2).reshape(B, N, C)  # [B, N, C]
        return self.proj_drop(self.proj(out))

    def extra_repr(self) -> str:
        name = getattr(self.normalizer, "name", type(self.normalizer).__name__)
        reduce = f"pool={self.pool_size}" if self.pool_size else f"sr={self.sr_ratio}"
        return f"dim={self.dim}, heads={self.num_heads}, {reduce}, normalizer={name}"
