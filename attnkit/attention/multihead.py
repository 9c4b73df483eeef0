"""Multi-head attention with a pluggable normalizer, state-dict compatible with torch's MHA."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attnkit.attention.core import attend, key_padding_to_mask, merge_masks
from attnkit.attention.hooks import AttentionModule
from attnkit.attention.normalizers import get_normalizer

__all__ = ["MultiheadAttention"]


def _build_normalizer(normalizer: str | nn.Module, num_heads: int) -> nn.Module:
    """A normalizer module from a name (via ``get_normalizer``) or the module itself."""
    if isinstance(normalizer, nn.Module):
        return normalizer
    if isinstance(normalizer, str):
        return get_normalizer(normalizer, num_heads=num_heads)
    raise TypeError(f"normalizer must be a name or an nn.Module, got {type(normalizer)}")


class MultiheadAttention(AttentionModule):
    """Batch-first multi-head attention whose softmax can be swapped for any normalizer.

    A drop-in for ``torch.nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)``: same
    parameter names (``in_proj_weight [3E, E]`` or ``q/k/v_proj_weight`` when ``kdim``/``vdim``
    differ from ``embed_dim``, ``in_proj_bias [3E]``, ``out_proj``), same initialisation and the
    same outputs for the same state dict, so official DETR checkpoints load. Differences from
    torch: weights are returned per head ``[B, H, Q, K]`` (never averaged), only when
    ``need_weights=True`` (default False), and before dropout; ``add_bias_kv``, ``add_zero_attn``
    and unbatched inputs are not supported.

    A normalizer with parameters (``alpha_entmax``'s ``pre_alpha``) adds ``normalizer.*`` keys to
    the state dict; load torch checkpoints into such a module with ``strict=False``.

    With the softmax normalizer and no weights requested (and no recorder observing this module)
    the forward takes the fused ``scaled_dot_product_attention`` path.

    Args:
        embed_dim: model width E (query width and output width).
        num_heads: number of heads H; must divide ``embed_dim``.
        normalizer: a name for ``get_normalizer`` (``"softmax"``, ``"sparsemax"``, ``"entmax15"``,
            ``"alpha_entmax"``, ``"tvmax"``) or a normalizer module.
        dropout: dropout probability on the attention weights (training only).
        bias: whether the input and output projections have biases.
        kdim: width of ``key`` (default ``embed_dim``).
        vdim: width of ``value`` (default ``embed_dim``).
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        normalizer: str | nn.Module = "softmax",
        dropout: float = 0.0,
        bias: bool = True,
        kdim: int | None = None,
        vdim: int | None = None,
    ) -> None:
        super().__init__()
        if embed_dim <= 0 or num_heads <= 0 or embed_dim % num_heads:
            raise ValueError(
                f"embed_dim ({embed_dim}) must be a positive multiple of num_heads ({num_heads})"
            )
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.kdim = kdim if kdim is not None else embed_dim
        self.vdim = vdim if vdim is not None else embed_dim
        self._qkv_same_embed_dim = self.kdim == embed_dim and self.vdim == embed_dim
        self.dropout = dropout

        # Parameters are created and initialised in torch's order, so the same seed gives the
        # same values as torch.nn.MultiheadAttention.
        if self._qkv_same_embed_dim:
            self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
            self.register_parameter("q_proj_weight", None)
            self.register_parameter("k_proj_weight", None)
            self.register_parameter("v_proj_weight", None)
        else:
            self.q_proj_weight = nn.Parameter(torch.empty(embed_dim, embed_dim))
            self.k_proj_weight = nn.Parameter(torch.empty(embed_dim, self.kdim))
            self.v_proj_weight = nn.Parameter(torch.empty(embed_dim, self.vdim))
            self.register_parameter("in_proj_weight", None)
        if bias:
            self.in_proj_bias = nn.Parameter(torch.empty(3 * embed_dim))
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self._reset_parameters()
        self.normalizer = _build_normalizer(normalizer, num_heads)

    def _reset_parameters(self) -> None:
        """Torch's MHA initialisation: Xavier-uniform input projections, zero biases."""
        if self._qkv_same_embed_dim:
            nn.init.xavier_uniform_(self.in_proj_weight)
        else:
            nn.init.xavier_uniform_(self.q_proj_weight)
            nn.init.xavier_uniform_(self.k_proj_weight)
            nn.init.xavier_uniform_(self.v_proj_weight)
        if self.in_proj_bias is not None:
            nn.init.zeros_(self.in_proj_bias)
            nn.init.zeros_(self.out_proj.bias)

    def _project(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Input projections ``[B, N, E] -> [B, N, E]``, fused when inputs are shared."""
        E = self.embed_dim
        b = self.in_proj_bias
        bq, bk, bv = (None, None, None) if b is None else b.split(E)
        if not self._qkv_same_embed_dim:
            return (
                F.linear(query, self.q_proj_weight, bq),
                F.linear(key, self.k_proj_weight, bk),
                F.linear(value, self.v_proj_weight, bv),
            )
        w = self.in_proj_weight
        if query is key and key is value:
            return F.linear(query, w, b).chunk(3, dim=-1)  # 3 x [B, N, E]
        wq, wkv = w.split([E, 2 * E])
        bkv = None if b is None else b[E:]
        q = F.linear(query, wq, bq)
        if key is value:
            k, v = F.linear(key, wkv, bkv).chunk(2, dim=-1)  # 2 x [B, K, E]
            return q, k, v
        wk, wv = wkv.chunk(2)
        return q, F.linear(key, wk, bk), F.linear(value, wv, bv)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        return x.view(B, N, self.num_heads, self.head_dim).transpose(1, 2)  # [B, H, N, D]

    def _masks(
        self,
        attn_mask: torch.Tensor | None,
        key_padding_mask: torch.Tensor | None,
        B: int,
        dtype: torch.dtype,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(mask, bias)`` for :func:`attend` from torch-style ``attn_mask`` / padding mask."""
        mask = bias = None
        if attn_mask is not None:
            if attn_mask.dim() == 3:
                if attn_mask.shape[0] not in (self.num_heads, B * self.num_heads):
                    raise ValueError(
                        f"a 3-D attn_mask must be [H, Q, K] or [B * H, Q, K], "
                        f"got {tuple(attn_mask.shape)} with B={B}, H={self.num_heads}"
                    )
                attn_mask = attn_mask.reshape(-1, self.num_heads, *attn_mask.shape[1:])
            elif attn_mask.dim() not in (2, 4):
                raise ValueError(f"attn_mask must be 2-, 3- or 4-D, got {attn_mask.dim()}-D")
            if attn_mask.dtype == torch.bool:
                mask = attn_mask
            else:
                bias = attn_mask.to(dtype)
        if key_padding_mask is not None:
            if key_padding_mask.shape[0] != B or key_padding_mask.dim() != 2:
                raise ValueError(
                    f"key_padding_mask must be [B, K] with B={B}, "
                    f"got {tuple(key_padding_mask.shape)}"
                )
            if key_padding_mask.dtype == torch.bool:
                mask = merge_masks(mask, key_padding_to_mask(key_padding_mask))
            else:
                pad_bias = key_padding_mask.to(dtype)[:, None, None, :]  # [B, 1, 1, K]
                bias = pad_bias if bias is None else bias + pad_bias
        return mask, bias

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        need_weights: bool = False,
        key_grid: tuple[int, int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attend from ``query [B, Q, E]`` to ``key [B, K, kdim]`` / ``value [B, K, vdim]``.

        Args:
            key_padding_mask: ``[B, K]``; boolean with True = padding (ignored key), or float,
                added to the scores.
            attn_mask: ``[Q, K]``, ``[H, Q, K]``, ``[B * H, Q, K]`` or ``[B, H, Q, K]``; boolean
                with True = masked out, or float, added to the scaled scores (a relative
                position bias or a ``-inf`` mask).
            need_weights: also return the per-head weights ``[B, H, Q, K]``.
            key_grid: ``(h, w)`` with ``h * w == K`` when the keys are a row-major feature
                map; passed to the normalizer (TVMax needs it) and to the recorder.

        Returns:
            ``(out [B, Q, E], weights [B, H, Q, K] or None)``. Queries whose keys are all masked
            get zero attention (the output is ``out_proj.bias``), not NaN.
        """
        if query.dim() != 3:
            raise ValueError(f"query must be batch-first [B, Q, E], got {tuple(query.shape)}")
        if key_grid is not None and key_grid[0] * key_grid[1] != key.shape[1]:
            raise ValueError(f"key_grid {tuple(key_grid)} does not match K = {key.shape[1]}")
        B, Q, _ = query.shape
        q, k, v = self._project(query, key, value)  # [B, Q, E], [B, K, E], [B, K, E]
        q, k, v = self._split_heads(q), self._split_heads(k), self._split_heads(v)  # [B, H, N, D]
        mask, bias = self._masks(attn_mask, key_padding_mask, B, q.dtype)

        record = self.observed()
        out, weights = attend(
            q,
            k,
            v,
            self.normalizer,
            mask=mask,
            bias=bias,
            key_grid=key_grid,
            dropout_p=self.dropout,
            training=self.training,
            need_weights=need_weights or record,
        )
        if record:
            self.emit(weights, key_grid=key_grid, key_padding_mask=key_padding_mask)
        out = out.transpose(1, 2).reshape(B, Q, self.embed_dim)  # [B, Q, E]
        return self.out_proj(out), (weights if need_weights else None)

    def extra_repr(self) -> str:
        name = getattr(self.normalizer, "name", type(self.normalizer).__name__)
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, normalizer={name}"
