"""Multi-head self-attention over a token grid whose scores come from a positional module.

Cordonnier et al.'s attention layers (Gaussian and learned 2-D relative) share everything but the
positional scores, so one module holds the shared part and takes the positional part as a
submodule:

* **values**: with ``value_dim=None`` every head reads the input tokens themselves (the paper's
  code: heads are ``A_h X``, concatenated to ``H * C`` and projected back by ``proj``), which is
  the same function class as a per-head value projection followed by ``proj``; with an integer
  ``value_dim`` each head projects the input to that width first;
* **content** (optional): ``q^T k / sqrt(d)`` from a ``qk`` projection of width ``content_dim``
  per head;
* **positional scores**: ``positional(grid)`` returns a bias ``[H, N, N]`` independent of the
  input (Gaussian, learned 2-D without content), or, when ``positional.query_dependent`` is true,
  ``positional(grid, q)`` returns ``[B, H, N, N]`` computed from the queries (learned 2-D relative
  with content). The bias is added to the scaled content scores before the normalizer.

A model that shares one layer's weights across all layers (the hierarchical variants) computes an
input-independent positional bias once per forward and passes it as ``positional_scores``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attnkit.attention.core import attend
from attnkit.attention.hooks import AttentionModule
from attnkit.attention.layout import KeyLayout
from attnkit.attention.normalizers import get_normalizer

__all__ = ["PositionalSelfAttention"]


class PositionalSelfAttention(AttentionModule):
    """Self-attention over the tokens ``[B, N, C]`` of an ``h x w`` grid with positional scores.

    Args:
        dim: token width C (input and output).
        num_heads: heads H.
        positional: the module giving the positional scores (see the module docstring).
        value_dim: per-head value width, or None for the input itself (width C).
        content: add the content score ``q^T k / sqrt(content_dim)``.
        content_dim: per-head query/key width; the value width by default.
        normalizer: a normalizer name (``softmax``, ``sparsemax``, ...) or module.
        attn_drop: dropout on the attention weights while training.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        positional: nn.Module,
        value_dim: int | None = None,
        content: bool = False,
        content_dim: int | None = None,
        normalizer: str | nn.Module = "softmax",
        attn_drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.dim, self.num_heads = dim, num_heads
        self.value_dim = value_dim
        width = dim if value_dim is None else value_dim
        self.head_width = width
        self.content_dim = (content_dim or width) if content else 0
        self.positional = positional
        self.value = None if value_dim is None else nn.Linear(dim, num_heads * value_dim)
        self.qk = nn.Linear(dim, 2 * num_heads * self.content_dim) if content else None
        self.proj = nn.Linear(num_heads * width, dim)
        self.attn_drop = float(attn_drop)
        if isinstance(normalizer, str):
            normalizer = get_normalizer(normalizer, num_heads=num_heads)
        self.normalizer = normalizer
        if getattr(positional, "query_dependent", False) and not content:
            raise ValueError("query-dependent positional scores need content=True (queries)")

    def positional_bias(self, grid: tuple[int, int]) -> torch.Tensor | None:
        """The input-independent positional scores ``[1, H, N, N]`` (None if they need queries)."""
        if getattr(self.positional, "query_dependent", False):
            return None
        return self.positional(grid).unsqueeze(0)

    def _positional_only(
        self, v: torch.Tensor, grid: tuple[int, int], positional_scores: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Without content the weights do not depend on the input: normalise the positional
        scores once (not once per image) and apply them to every image's values."""
        bias = (
            self.positional(grid).unsqueeze(0) if positional_scores is None else positional_scores
        )
        weights = self.normalizer(bias, key_grid=grid)  # [1, H, N, N]
        dropped = F.dropout(weights, self.attn_drop, self.training) if self.attn_drop else weights
        B, H, N, D = v.shape
        if self.value is None:  # one GEMM: [H * N, N] @ [B, N, C] (v is x expanded over heads)
            out = (dropped[0].reshape(H * N, N).to(v.dtype) @ v[:, 0]).view(B, H, N, D)
        else:
            out = dropped.to(v.dtype) @ v  # [B, H, N, Dv]
        return out, weights.expand(B, -1, -1, -1)  # weights as [B, H, N, N]

    def forward(
        self,
        x: torch.Tensor,
        key_grid: tuple[int, int],
        need_weights: bool = False,
        positional_scores: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``x [B, N, C]`` with ``N = h * w`` row-major -> ``(out [B, N, C], weights or None)``.

        ``positional_scores``: a precomputed :meth:`positional_bias` (shared-weight models).
        """
        B, N, C = x.shape
        h, w = (int(s) for s in key_grid)
        if h * w != N:
            raise ValueError(f"key_grid {(h, w)} does not hold the {N} tokens")
        H = self.num_heads
        if self.value is None:
            v = x.unsqueeze(1).expand(B, H, N, C)  # [B, H, N, C]: every head reads the input
        else:
            v = self.value(x).view(B, N, H, self.value_dim).transpose(1, 2)  # [B, H, N, Dv]
        record = self.observed()
        if self.qk is None:
            out, weights = self._positional_only(v, (h, w), positional_scores)
        else:
            qk = self.qk(x).view(B, N, 2, H, self.content_dim)
            q, k = qk.permute(2, 0, 3, 1, 4).unbind(0)  # [B, H, N, Dc] each
            if getattr(self.positional, "query_dependent", False):
                bias = self.positional((h, w), q)  # [B, H, N, N]
            elif positional_scores is not None:
                bias = positional_scores  # [1, H, N, N]
            else:
                bias = self.positional((h, w)).unsqueeze(0)  # [1, H, N, N]
            out, weights = attend(
                q,
                k,
                v,
                self.normalizer,
                bias=bias,
                key_grid=(h, w),
                dropout_p=self.attn_drop,
                training=self.training,
                need_weights=need_weights or record,
            )
        if record:
            self.emit(weights, key_grid=(h, w), layout=KeyLayout(kind="grid", grid=(h, w)))
        out = self.proj(out.transpose(1, 2).reshape(B, N, H * self.head_width))  # [B, N, C]
        return out, (weights if need_weights else None)
