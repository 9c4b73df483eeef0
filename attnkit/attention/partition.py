"""MaxViT's block and grid attention on maps of any size, with any normalizer.

Both attend within partitions of ``P = ph x pw`` tokens of a channels-last map ``[B, h, w, C]``:

- **block** attention: non-overlapping ``(ph, pw)`` windows, row-major (local);
- **grid** attention: a ``(gh, gw)`` grid of tokens taken at stride ``(h / gh, w / gw)``: the
  partition of offset ``(a, b)`` holds tokens ``(i h / gh + a, j w / gw + b)`` (dilated, global).

Block attention may also run on windows **shifted** by ``(sh, sw)`` (Swin's SW-MSA): the map is
rolled by ``-shift`` before the windows are cut and rolled back after, and a token attends only to
the tokens of its window that were its neighbours before the roll (the regions of Swin's mask).

These are the ``windows`` and ``dilated`` key layouts of :class:`attnkit.attention.KeyLayout`, so a
recorded row can be put back on the image. A map whose size is not a multiple of the partition is
padded at the bottom and right to the next multiple, and the padded tokens are masked out of
every row's keys, so the outputs at real tokens do not depend on the padding; the padded rows are
cut off again. A ``padding_mask`` marks further tokens as padding (images padded in a batch).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from attnkit.attention.core import attend
from attnkit.attention.hooks import AttentionModule
from attnkit.attention.layout import KeyLayout
from attnkit.attention.normalizers import get_normalizer
from attnkit.attention.relative_bias import RelativePositionBias

__all__ = ["PartitionAttention", "partition", "shift_region_mask", "unpartition"]

Kind = Literal["block", "grid"]


def partition(x: torch.Tensor, part: tuple[int, int], kind: Kind) -> torch.Tensor:
    """``[B, h, w, C] -> [B * parts, ph * pw, C]``; ``h``, ``w`` multiples of ``part``."""
    B, h, w, C = x.shape
    ph, pw = part
    if kind == "block":
        x = x.view(B, h // ph, ph, w // pw, pw, C).permute(0, 1, 3, 2, 4, 5)
    else:
        x = x.view(B, ph, h // ph, pw, w // pw, C).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(-1, ph * pw, C)  # [B * parts, P, C]


def unpartition(x: torch.Tensor, part: tuple[int, int], kind: Kind, hw: tuple[int, int]):
    """The inverse of :func:`partition`: ``[B * parts, ph * pw, C] -> [B, h, w, C]``."""
    (h, w), (ph, pw), C = hw, part, x.shape[-1]
    if kind == "block":
        x = x.view(-1, h // ph, w // pw, ph, pw, C).permute(0, 1, 3, 2, 4, 5)
    else:
        x = x.view(-1, h // ph, w // pw, ph, pw, C).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(-1, h, w, C)  # [B, h, w, C]


def shift_region_mask(
    hw: tuple[int, int], window: tuple[int, int], shift: tuple[int, int], device=None
) -> torch.Tensor:
    """Boolean ``[windows, P, P]`` (True = masked) of shifted windows on a ``(Hp, Wp)`` map rolled
    by ``-shift``: query and key must come from the same region of the unrolled map (the map's
    last ``shift`` rows and columns wrapped to the other side are other regions)."""
    (H, W), (ph, pw), (sh, sw) = hw, window, shift
    labels = torch.zeros(H, W, dtype=torch.long, device=device)
    rows = (slice(0, H - ph), slice(H - ph, H - sh), slice(H - sh, H)) if sh else (slice(0, H),)
    cols = (slice(0, W - pw), slice(W - pw, W - sw), slice(W - sw, W)) if sw else (slice(0, W),)
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            labels[r, c] = i * len(cols) + j
    parts = partition(labels[None, :, :, None], window, "block")[..., 0]  # [windows, P]
    return parts[:, :, None] != parts[:, None, :]  # [windows, P, P]


class PartitionAttention(AttentionModule):
    """Multi-head self-attention within block or grid partitions, with a relative position bias.

    Parameters: ``qkv`` (``Linear(C, 3C)``, output split as ``(3, H, D)``), ``proj``, the bias
    table ``relative_bias.table [H, 2 ph - 1, 2 pw - 1]`` (query - key) and the normalizer's
    own (alpha-entmax's ``pre_alpha [H]``). Scores are scaled by ``1 / sqrt(head_dim)``.

    Args:
        dim: channels C; ``C / head_dim`` heads.
        head_dim: channels of a head (32 in MaxViT).
        kind: ``"block"`` or ``"grid"``.
        part: ``(ph, pw)``: the window of block attention, the grid of grid attention.
        normalizer: a normalizer name or module (``get_normalizer``); ``normalizer_kw`` its
            options (``alpha_init``, ``lam``).
        attn_drop, proj_drop: dropout of the weights and after ``proj``.
        shift: ``(sh, sw)`` cyclic shift of block attention's windows (Swin: half the window in
            every other block); ``(0, 0)``: plain windows.
    """

    def __init__(
        self,
        dim: int,
        head_dim: int,
        kind: Kind,
        part: tuple[int, int],
        normalizer: str | nn.Module = "softmax",
        normalizer_kw: dict | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        shift: tuple[int, int] = (0, 0),
    ) -> None:
        super().__init__()
        if kind not in ("block", "grid"):
            raise ValueError(f"partition attention kind must be 'block' or 'grid', got {kind!r}")
        self.shift = (int(shift[0]), int(shift[1]))
        if any(self.shift) and (
            kind != "block" or not all(0 <= s < p for s, p in zip(self.shift, part))
        ):
            raise ValueError(
                f"shift {self.shift} needs block attention and 0 <= shift < window {tuple(part)}"
            )
        if dim % head_dim:
            raise ValueError(f"dim {dim} is not a multiple of head_dim {head_dim}")
        self.dim, self.head_dim, self.kind = dim, head_dim, kind
        self.num_heads = dim // head_dim
        self.part = (int(part[0]), int(part[1]))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.relative_bias = RelativePositionBias(self.num_heads, self.part)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = float(attn_drop)
        self.proj_drop = nn.Dropout(proj_drop)
        if isinstance(normalizer, str):
            normalizer = get_normalizer(
                normalizer, num_heads=self.num_heads, **(normalizer_kw or {})
            )
        self.normalizer = normalizer

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x [B, h, w, C]`` (any h, w) -> ``[B, h, w, C]``.

        ``padding_mask [B, h, w]``: True at tokens that are padding (masked out as keys).
        """
        B, h, w, C = x.shape
        ph, pw = self.part
        pad_h, pad_w = (-h) % ph, (-w) % pw
        if pad_h or pad_w:
            x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))  # [B, Hp, Wp, C]
            keep = torch.zeros(B, h + pad_h, w + pad_w, dtype=torch.bool, device=x.device)
            keep[:, :h, :w] = True if padding_mask is None else ~padding_mask
            padding_mask = ~keep
        Hp, Wp = h + pad_h, w + pad_w
        sh, sw = self.shift
        if sh or sw:  # Swin's SW-MSA: windows of the map rolled by -shift
            x = torch.roll(x, (-sh, -sw), dims=(1, 2))
            if padding_mask is not None:
                padding_mask = torch.roll(padding_mask, (-sh, -sw), dims=(1, 2))
        tokens = partition(x, self.part, self.kind)  # [N, P, C]
        N, P, _ = tokens.shape
        key_pad = None
        if padding_mask is not None:
            key_pad = partition(padding_mask[..., None], self.part, self.kind)[..., 0]  # [N, P]
        mask = None if key_pad is None else key_pad[:, None, None, :]  # [N, 1, 1, P]
        if sh or sw:
            regions = shift_region_mask((Hp, Wp), self.part, self.shift, x.device)  # [nW, P, P]
            regions = regions.repeat(B, 1, 1)[:, None]  # [N, 1, P, P]
            mask = regions if mask is None else mask | regions
        qkv = self.qkv(tokens).reshape(N, P, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x [N, H, P, D]
        record = self.observed()
        out, weights = attend(
            q,
            k,
            v,
            self.normalizer,
            mask=mask,
            bias=self.relative_bias()[None],  # [1, H, P, P]
            key_grid=self.part,
            dropout_p=self.attn_drop,
            training=self.training,
            need_weights=record,
        )
        if record:
            self._emit(weights, key_pad, (Hp, Wp), (h, w), regions if (sh or sw) else None)
        out = out.transpose(1, 2).reshape(N, P, C)  # [N, P, C]
        out = self.proj_drop(self.proj(out))
        out = unpartition(out, self.part, self.kind, (Hp, Wp))  # [B, Hp, Wp, C]
        if sh or sw:
            out = torch.roll(out, (sh, sw), dims=(1, 2))
        return out[:, :h, :w] if (pad_h or pad_w) else out

    def _emit(self, weights, key_pad, grid, real, regions=None) -> None:
        """Hand the weights ``[N, H, P, P]`` to the recorder; rows of padded queries are zeroed
        (their maps are empty, so metrics skip them) and padded keys are marked. ``regions``
        ``[N, 1, P, P]`` (shifted windows): True where a query may not see a key (another region
        of the rolled map); it goes along as ``meta["query_key_mask"]``, so metrics count a zero
        only where the query could have attended."""
        if key_pad is not None:
            weights = weights.masked_fill(key_pad[:, None, :, None], 0.0)
        kind = "windows" if self.kind == "block" else "dilated"
        image_grid = None if real == grid else real
        layout = KeyLayout(kind, grid, part=self.part, shift=self.shift, image_grid=image_grid)
        extra = {} if regions is None else {"query_key_mask": regions}
        self.emit(weights, key_grid=self.part, key_padding_mask=key_pad, layout=layout, **extra)

    def extra_repr(self) -> str:
        name = getattr(self.normalizer, "name", type(self.normalizer).__name__)
        return (
            f"{self.kind}, dim={self.dim}, heads={self.num_heads}, part={self.part}, "
            f"shift={self.shift}, "
            f"normalizer={name}"
        )
