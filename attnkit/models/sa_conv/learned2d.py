"""Learned 2-D relative positional attention of Cordonnier et al. (2020), section 4.

Every offset ``delta = pos(k) - pos(q) = (dr, dc)`` on the token grid has a learned row embedding
``r_row[dr]`` and column embedding ``r_col[dc]``, shared by all heads of a layer.

* **Without content** (:class:`Learned2DPositionalScores`): head h scores a key by
  ``u_h^row . r_row[dr] + u_h^col . r_col[dc]`` with learned per-head vectors ``u_h`` (the paper's
  ``v^T r_delta`` with ``r_delta`` the concatenation of the row and column embeddings). The scores
  do not depend on the input, so each head learns a fixed pattern of offsets, like a
  convolution's footprint.
* **With content** (:class:`RelativeContentScores`): the score of query q for key k is
  ``(q . k + q[:D/2] . r_row[dr] + q[D/2:] . r_col[dc]) / sqrt(D)``: the first half of each head's
  query dimensions meets the row embedding, the second half the column embedding.

Offsets are indexed ``dr + max_h - 1`` into tables of ``2 max_h - 1`` rows, so any grid up to
``max_grid`` is supported.
"""

from __future__ import annotations

import torch
from torch import nn

from attnkit.models.sa_conv.positional_attention import PositionalSelfAttention

__all__ = ["Learned2DPositionalScores", "Learned2DSelfAttention", "RelativeContentScores"]


def _check_grid(grid: tuple[int, int], max_grid: tuple[int, int]) -> tuple[int, int]:
    h, w = (int(s) for s in grid)
    if h > max_grid[0] or w > max_grid[1]:
        raise ValueError(
            f"a {h}x{w} token grid exceeds the learned offsets of a {max_grid[0]}x{max_grid[1]} "
            "grid (model.max_grid)"
        )
    return h, w


def relative_indices(h: int, w: int, max_grid: tuple[int, int], device=None):
    """``(row_idx, col_idx)`` ``[N, N]``: the embedding row of ``pos(k) - pos(q)`` for every
    query q (rows) and key k (columns) of the row-major ``h x w`` grid."""
    rows = torch.arange(h, device=device).repeat_interleave(w)  # [N]
    cols = torch.arange(w, device=device).repeat(h)  # [N]
    row_idx = rows[None, :] - rows[:, None] + max_grid[0] - 1  # [N, N]
    col_idx = cols[None, :] - cols[:, None] + max_grid[1] - 1  # [N, N]
    return row_idx, col_idx


class Learned2DPositionalScores(nn.Module):
    """Input-independent scores ``[H, N, N]`` from learned row / column offset embeddings."""

    query_dependent = False

    def __init__(self, num_heads: int, max_grid: tuple[int, int], pos_dim: int) -> None:
        super().__init__()
        self.num_heads, self.max_grid = num_heads, (int(max_grid[0]), int(max_grid[1]))
        self.row_embeddings = nn.Embedding(2 * self.max_grid[0] - 1, pos_dim)
        self.col_embeddings = nn.Embedding(2 * self.max_grid[1] - 1, pos_dim)
        self.head_keys_row = nn.Linear(pos_dim, num_heads, bias=False)  # u_h^row
        self.head_keys_col = nn.Linear(pos_dim, num_heads, bias=False)  # u_h^col

    def _tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-head scores of every row offset ``[2 max_h - 1, H]`` and column offset."""
        rows = self.head_keys_row(self.row_embeddings.weight)  # [2 max_h - 1, H]
        cols = self.head_keys_col(self.col_embeddings.weight)  # [2 max_w - 1, H]
        return rows, cols

    def offset_scores(self, radius_h: int, radius_w: int) -> torch.Tensor:
        """Each head's score at every offset within the radii: ``[H, 2 r_h + 1, 2 r_w + 1]``,
        the centre being offset 0 (what a figure of the learned positional maps shows)."""
        rh, rw = min(radius_h, self.max_grid[0] - 1), min(radius_w, self.max_grid[1] - 1)
        rows, cols = self._tables()
        mh, mw = self.max_grid
        r = rows[mh - 1 - rh : mh + rh].t()  # [H, 2 rh + 1]
        c = cols[mw - 1 - rw : mw + rw].t()  # [H, 2 rw + 1]
        return r[:, :, None] + c[:, None, :]  # [H, 2 rh + 1, 2 rw + 1]

    def forward(self, grid: tuple[int, int]) -> torch.Tensor:
        h, w = _check_grid(grid, self.max_grid)
        rows, cols = self._tables()
        row_idx, col_idx = relative_indices(h, w, self.max_grid, rows.device)
        return (rows[row_idx] + cols[col_idx]).permute(2, 0, 1)  # [H, N, N]


class RelativeContentScores(nn.Module):
    """Query-dependent relative scores ``[B, H, N, N]``: ``(q[:D/2] . r_row[dr] +
    q[D/2:] . r_col[dc]) / sqrt(D)`` for queries ``q [B, H, N, D]``."""

    query_dependent = True

    def __init__(self, content_dim: int, max_grid: tuple[int, int]) -> None:
        super().__init__()
        if content_dim < 2:
            raise ValueError(f"content_dim must be >= 2 (half rows, half columns): {content_dim}")
        self.max_grid = (int(max_grid[0]), int(max_grid[1]))
        self.row_dim = content_dim // 2
        self.row_embeddings = nn.Embedding(2 * self.max_grid[0] - 1, self.row_dim)
        self.col_embeddings = nn.Embedding(2 * self.max_grid[1] - 1, content_dim - self.row_dim)

    def forward(self, grid: tuple[int, int], q: torch.Tensor) -> torch.Tensor:
        h, w = _check_grid(grid, self.max_grid)
        B, H, N, D = q.shape
        mh, mw = self.max_grid
        row_emb = self.row_embeddings.weight[mh - h : mh + h - 1]  # [2h - 1, D/2]: dr = -(h-1)..
        col_emb = self.col_embeddings.weight[mw - w : mw + w - 1]  # [2w - 1, D - D/2]
        q_row, q_col = q[..., : self.row_dim], q[..., self.row_dim :]
        by_row = q_row @ row_emb.t().to(q.dtype)  # [B, H, N, 2h - 1]
        by_col = q_col @ col_emb.t().to(q.dtype)  # [B, H, N, 2w - 1]
        row_idx, col_idx = relative_indices(h, w, (h, w), q.device)  # into the sliced tables
        bias = by_row.gather(-1, row_idx.expand(B, H, N, N)) + by_col.gather(
            -1, col_idx.expand(B, H, N, N)
        )  # [B, H, N, N]
        return bias * D**-0.5


class Learned2DSelfAttention(PositionalSelfAttention):
    """Multi-head learned 2-D relative self-attention over the tokens ``[B, N, C]`` of a grid.

    Args:
        dim: token width C.
        num_heads: heads H (the paper: 9; also 16).
        max_grid: the largest token grid ``(h, w)`` the offset tables cover.
        content: with content (``q . k`` plus the query-dependent relative term) or without.
        pos_dim: width of the offset embeddings without content (C by default, as the paper).
        value_dim: per-head value width; None lets every head read the input itself.
        content_dim: per-head query/key width with content (the value width by default).
        normalizer: a normalizer name or module.
        attn_drop: dropout on the attention weights while training.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 9,
        max_grid: tuple[int, int] = (16, 16),
        content: bool = False,
        pos_dim: int | None = None,
        value_dim: int | None = None,
        content_dim: int | None = None,
        normalizer: str | nn.Module = "softmax",
        attn_drop: float = 0.0,
    ) -> None:
        width = dim if value_dim is None else value_dim
        if content:
            positional = RelativeContentScores(content_dim or width, max_grid)
        else:
            positional = Learned2DPositionalScores(num_heads, max_grid, pos_dim or dim)
        super().__init__(
            dim,
            num_heads,
            positional,
            value_dim=value_dim,
            content=content,
            content_dim=content_dim,
            normalizer=normalizer,
            attn_drop=attn_drop,
        )
