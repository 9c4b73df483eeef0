"""Efficient attention (Shen et al. 2021): linear in the number of tokens.

Dot-product attention normalises ``Q K^T`` (``N x N``) over the keys. Efficient attention
normalises the queries over their features (a softmax along ``D`` per token) and the keys over the
tokens (a softmax along ``N`` per feature), then computes ``rho_q(Q) (rho_k(K)^T V)``: the
``D x D_v`` context ``rho_k(K)^T V`` costs ``N D D_v`` and no ``N x N`` matrix is ever formed, so
memory and time grow linearly with ``N``. It forms no attention matrix, so it takes no
normalizer (the sparse ones act on rows of an attention matrix) and reports nothing to the
recorder. Parameter names follow the other self-attention modules (``qkv``, ``proj``).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["EfficientAttention"]


class EfficientAttention(nn.Module):
    """``x [B, N, C]`` -> ``[B, N, C]`` with ``num_heads`` heads of ``C / num_heads`` channels.

    Padded tokens (``key_padding_mask [B, N]``, True = padding) get no weight in the keys'
    softmax, so they add nothing to the context.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, proj_drop=0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not a multiple of num_heads {num_heads}")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(
        self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x [B, H, N, D]
        q = q.softmax(dim=-1)  # over each token's features
        if key_padding_mask is not None:
            k = k.masked_fill(key_padding_mask[:, None, :, None], float("-inf"))
        k = k.softmax(dim=-2)  # over the tokens, per feature
        context = k.transpose(-2, -1) @ v  # [B, H, D, D]
        out = (q @ context).transpose(1, 2).reshape(B, N, C)  # [B, N, C]
        return self.proj_drop(self.proj(out))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, heads={self.num_heads}"
