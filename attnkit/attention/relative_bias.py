"""Learned relative position bias of windowed attention (Swin, MaxViT block and grid attention).

Inside a ``(ph, pw)`` window (or grid partition) a query at ``(qr, qc)`` and a key at ``(kr, kc)``
differ by ``(qr - kr, qc - kc)``, which takes ``(2 ph - 1) x (2 pw - 1)`` values. Each head learns
one scalar per offset; the bias ``[H, Q, K]`` is added to the scaled scores before the
normalizer.

**One convention for attnkit:** the table ``[H, 2 ph - 1, 2 pw - 1]`` is indexed by **query -
key** (plus ``ph - 1``, ``pw - 1``), as Swin's. timm's port of the TF MaxViT indexes its table by
key - query: the same offsets with both axes flipped. Foreign loaders map the layout (a flip),
not only the shape (DESIGN.md pitfall 12).

A table trained at one window size runs at another: a checkpoint whose table has another shape
is resized bicubically (``align_corners=False``) when loaded, as timm resizes Swin's tables.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["RelativePositionBias", "relative_offsets_index", "resize_bias_table"]


def relative_offsets_index(window: tuple[int, int]) -> torch.Tensor:
    """``[Q, K]`` flat index into a ``[2 ph - 1, 2 pw - 1]`` table of every (query, key) pair of
    a row-major ``(ph, pw)`` window, by query - key."""
    ph, pw = window
    rows, cols = torch.meshgrid(torch.arange(ph), torch.arange(pw), indexing="ij")
    rows, cols = rows.reshape(-1), cols.reshape(-1)  # [P]
    dr = rows[:, None] - rows[None, :] + ph - 1  # [Q, K] in [0, 2 ph - 2]
    dc = cols[:, None] - cols[None, :] + pw - 1  # [Q, K] in [0, 2 pw - 2]
    return dr * (2 * pw - 1) + dc  # [Q, K]


def resize_bias_table(table: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A ``[H, a, b]`` bias table resampled bicubically to ``[H, *size]``."""
    if tuple(table.shape[-2:]) == tuple(size):
        return table
    out = F.interpolate(
        table[None].float(), size=size, mode="bicubic", align_corners=False
    )  # [1, H, *size]
    return out[0].to(table.dtype)


class RelativePositionBias(nn.Module):
    """Per-head learned bias of every (query, key) offset inside a ``(ph, pw)`` window.

    ``forward()`` returns the bias ``[H, Q, K]`` with ``Q = K = ph * pw`` (row-major tokens).
    The table is initialised with a truncated normal of std 0.02 (timm's and the original's).
    """

    def __init__(self, num_heads: int, window: tuple[int, int]) -> None:
        super().__init__()
        self.num_heads = int(num_heads)
        self.window = (int(window[0]), int(window[1]))
        ph, pw = self.window
        self.table = nn.Parameter(torch.empty(self.num_heads, 2 * ph - 1, 2 * pw - 1))
        nn.init.trunc_normal_(self.table, std=0.02)
        self.register_buffer("index", relative_offsets_index(self.window), persistent=False)

    def forward(self) -> torch.Tensor:
        return self.table.flatten(1)[:, self.index]  # [H, Q, K]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        key = prefix + "table"
        stored = state_dict.get(key)
        if stored is not None and stored.dim() == 3 and stored.shape[0] == self.num_heads:
            state_dict[key] = resize_bias_table(stored, tuple(self.table.shape[-2:]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, window={self.window}"
