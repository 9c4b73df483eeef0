"""Where the keys of an attention row sit on the image: the key layouts of attnkit's mixers.

An attention module emits weights ``[N, H, Q, K]`` whose keys are tokens of an image's token grid
``(gh, gw)``, arranged one of three ways:

- ``grid``: all tokens, row-major (DETR's encoder and cross-attention, a ViT block);
  ``N`` is the batch;
- ``windows``: non-overlapping ``(wh, ww)`` windows (Swin's W-MSA, MaxViT's block attention);
  ``N`` is batch x windows, windows row-major over the grid; with a cyclic ``shift`` (Swin's
  SW-MSA) the windows are cut from the grid rolled by ``-shift``;
- ``dilated``: a ``(ph, pw)`` partition of tokens taken at stride ``(gh / ph, gw / pw)`` (MaxViT's
  grid attention); ``N`` is batch x ``(gh / ph) * (gw / pw)`` partitions, one per offset.

``prefix_tokens`` counts extra tokens (a class token) before the grid tokens of each row.
:meth:`KeyLayout.positions` gives every key's (row, column) on the token grid, which is all that
is needed to put a row back on the image (:meth:`KeyLayout.on_grid`) or to measure how far a
query looks (attention distance). Modules pass their layout to ``emit(..., layout=...)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

__all__ = ["KeyLayout"]


@dataclass(frozen=True)
class KeyLayout:
    """The arrangement of the keys of one attention module's rows (see the module docstring).

    Args:
        kind: ``grid``, ``windows`` or ``dilated``.
        grid: ``(gh, gw)`` tokens of the whole (padded) image.
        part: ``(wh, ww)`` window size for ``windows``; ``(ph, pw)`` partition size for
            ``dilated``; unused for ``grid``.
        shift: cyclic shift ``(sh, sw)`` of shifted windows (Swin's SW-MSA), else ``(0, 0)``.
        prefix_tokens: tokens before the grid tokens of every row (class token).
        image_grid: ``(h, w)`` tokens the image itself covers when ``grid`` was padded up to a
            multiple of ``part`` (the real tokens are the top-left ``h x w``); None: ``grid``.
    """

    kind: Literal["grid", "windows", "dilated"]
    grid: tuple[int, int]
    part: tuple[int, int] | None = None
    shift: tuple[int, int] = (0, 0)
    prefix_tokens: int = 0
    image_grid: tuple[int, int] | None = None

    @property
    def real_grid(self) -> tuple[int, int]:
        """The ``(h, w)`` tokens of the image (``grid`` minus any padding)."""
        return self.grid if self.image_grid is None else self.image_grid

    def __post_init__(self) -> None:
        gh, gw = self.grid
        if self.kind == "grid":
            return
        if self.kind not in ("windows", "dilated"):
            raise ValueError(f"unknown key layout {self.kind!r}: grid, windows or dilated")
        if self.part is None or gh % self.part[0] or gw % self.part[1]:
            raise ValueError(f"a {self.kind} layout needs a part dividing the grid {self.grid}")

    @property
    def num_parts(self) -> int:
        """Windows (or partitions) per image: rows of ``N`` that belong to one image."""
        if self.kind == "grid":
            return 1
        gh, gw = self.grid
        return (gh // self.part[0]) * (gw // self.part[1])

    @property
    def keys_per_row(self) -> int:
        """K, the number of keys of one row (prefix tokens included)."""
        gh, gw = self.grid
        tokens = gh * gw if self.kind == "grid" else self.part[0] * self.part[1]
        return self.prefix_tokens + tokens

    def positions(self) -> torch.Tensor:
        """``[parts, K - prefix_tokens, 2]``: the (row, column) on the token grid of every
        grid key, for each window / partition (``parts`` = 1 for ``grid``)."""
        gh, gw = self.grid
        if self.kind == "grid":
            rows, cols = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
            return torch.stack([rows, cols], -1).reshape(1, gh * gw, 2)
        ph, pw = self.part
        nh, nw = gh // ph, gw // pw  # windows (or strides) along each axis
        part_r, part_c = torch.meshgrid(torch.arange(nh), torch.arange(nw), indexing="ij")
        in_r, in_c = torch.meshgrid(torch.arange(ph), torch.arange(pw), indexing="ij")
        part_r, part_c = part_r.reshape(-1, 1), part_c.reshape(-1, 1)  # [parts, 1]
        in_r, in_c = in_r.reshape(1, -1), in_c.reshape(1, -1)  # [1, ph * pw]
        if self.kind == "windows":
            rows = (part_r * ph + in_r + self.shift[0]) % gh  # [parts, ph * pw]
            cols = (part_c * pw + in_c + self.shift[1]) % gw
        else:  # dilated: partition (a, b) holds the tokens (i * nh + a, j * nw + b)
            rows, cols = in_r * nh + part_r, in_c * nw + part_c
        return torch.stack([rows, cols], -1)  # [parts, ph * pw, 2]

    def on_grid(self, row: torch.Tensor, part: int = 0) -> torch.Tensor:
        """One attention row ``[K]`` of window / partition ``part`` put back on the token grid:
        ``[gh, gw]``, zero where the row has no key. Prefix-token weights are left out."""
        if row.shape[-1] != self.keys_per_row:
            raise ValueError(f"a row of this layout has {self.keys_per_row} keys, got {row.shape}")
        pos = self.positions()[part]  # [K', 2]
        out = row.new_zeros(self.grid)
        out[pos[:, 0], pos[:, 1]] = row[self.prefix_tokens :]
        return out

    def distances(self, cell_size: tuple[float, float] = (1.0, 1.0)) -> torch.Tensor:
        """``[parts, K', K']`` Euclidean distances between the grid keys of each window /
        partition, in pixels when ``cell_size`` is the ``(height, width)`` of a token."""
        scale = torch.tensor(cell_size, dtype=torch.float64)  # [2]
        pos = self.positions().to(torch.float64) * scale  # [parts, K', 2]
        return torch.cdist(pos, pos)  # [parts, K', K']
