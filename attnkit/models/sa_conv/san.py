"""Local vector self-attention of SAN (Zhao, Jia & Koltun, CVPR 2020, "Exploring Self-attention
for Image Recognition"): the SA module, both modes, and the bottleneck block built on it.

Every query pixel i attends to the ``k x k`` (dilated) footprint R(i) centred on it:

    y_i = sum_{j in R(i)} alpha(x_i, x_j) * beta(x_j)

with values ``beta`` a 1x1 conv and *vector* weights ``alpha``: one weight per weight channel
(``G = out_planes // share_planes`` of them), shared by the ``share_planes`` output channels
``c`` with ``c % G`` equal to it (the reference's aggregation kernel; channel ``c`` uses weight
channel ``c % G``, not ``c // share_planes``). The weights come from ``gamma``:

* **pairwise**: ``gamma(delta(x_i, x_j) ++ p_ij)`` for each j on its own, with the relation
  ``delta = phi(x_i) - psi(x_j)`` (subtraction) and the position encoding ``p_ij =
  conv_p(pos_i) - conv_p(pos_j)`` of the ``(x, y)`` coordinates normalised to ``[-1, 1]`` over the
  image (``linspace(-1, 1, W)``, ``linspace(-1, 1, H)``), ``gamma`` = BN-ReLU-conv1x1(rel+2 ->
  rel)-BN-ReLU-conv1x1(rel -> G);
* **patchwise**: ``gamma(phi(x_i) ++ [psi(x_j)]_{j in R(i)})`` sees the whole footprint,
  BN-ReLU-conv1x1(rel (k^2 + 1) -> G)-BN-ReLU-conv1x1(G -> G k^2), read as ``[G, k^2]``.

Both layouts (channel orders of the concatenations and of gamma's output) follow the reference
(``hszhao/SAN``, ``model/san.py``); parameter names do too (``conv1`` = phi, ``conv2`` = psi,
``conv3`` = beta, ``conv_w`` = gamma, ``conv_p``), so state dicts line up key for key.

Differences from the reference (on purpose, for attnkit's analysis of normalizers):

* **Borders are masked.** The reference reflects the image at the borders (its ``pad_mode=1``
  kernels and ``ReflectionPad2d``), so border queries attend to mirrored copies of inner pixels.
  Here footprint positions outside the image get the score ``-inf`` before normalisation: weight
  exactly 0, and they take no probability mass (the in-image weights sum to 1). The centre is
  always inside, so no row is empty. Patchwise gamma still needs an input for those positions: it
  gets ``psi = 0`` there (zero padding); BatchNorm in training mode takes its batch statistics
  over all ``k^2`` footprint positions, outside ones included.
* **Any normalizer.** The weights ``[B, G, N, k^2]`` (G "heads", N query pixels, k^2 keys in
  row-major footprint order) are normalised over the footprint by an attnkit normalizer (softmax,
  sparsemax, entmax15, alpha_entmax with one alpha per weight channel, tvmax on the ``(k, k)``
  footprint grid), in float32 also under autocast. The reference normalises pairwise weights
  with softmax and leaves patchwise weights unnormalised; ``normalizer=None`` reproduces the
  latter (raw weights, masked positions set to 0).
* **Stride 1 only**, as in the reference's networks, which downsample by max pooling between
  stages.

The module is plain PyTorch (``F.unfold``), so it runs on CPU and CUDA without custom kernels.
While a recorder observes it, it also scatters its footprint weights into a dense
``[B, G, N, N]`` map over the image grid (zeros outside the footprint) and emits that with a
``grid`` key layout, so attnkit's map metrics work unchanged; the dense map is never built
otherwise.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from attnkit.attention.hooks import AttentionModule
from attnkit.attention.layout import KeyLayout
from attnkit.attention.normalizers import make_normalizer

__all__ = ["SAM", "SANBottleneck", "SA_MODES"]

SA_MODES: tuple[str, ...] = ("pairwise", "patchwise")


def _check_mode(mode: str) -> str:
    if mode not in SA_MODES:
        raise ValueError(f"unknown SAN mode {mode!r}: valid modes are {', '.join(SA_MODES)}")
    return mode


class SAM(AttentionModule):
    """SAN's self-attention module: ``x [B, in_planes, H, W] -> [B, out_planes, H, W]``.

    Args:
        in_planes: input channels.
        rel_planes: channels of phi and psi (the reference: ``in_planes // 16``).
        out_planes: value (output) channels; a multiple of ``share_planes``.
        share_planes: output channels sharing one weight channel; ``G = out_planes //
            share_planes`` weight channels ("heads" for the normalizer).
        kernel_size: footprint side k (odd).
        stride: must be 1 (see the module docstring).
        dilation: footprint dilation.
        mode: ``pairwise`` or ``patchwise``.
        normalizer: a normalizer name (a fresh module is built with ``num_heads=G``), a module
            (used as is; do not share one alpha_entmax between layers), or None for raw weights.
    """

    def __init__(
        self,
        in_planes: int,
        rel_planes: int,
        out_planes: int,
        share_planes: int = 8,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        mode: Literal["pairwise", "patchwise"] = "pairwise",
        normalizer: str | nn.Module | None = "softmax",
    ) -> None:
        super().__init__()
        _check_mode(mode)
        if min(in_planes, rel_planes, out_planes, share_planes) < 1:
            raise ValueError("SAM channel counts and share_planes must be positive")
        if out_planes % share_planes:
            raise ValueError(
                f"out_planes {out_planes} must be a multiple of share_planes {share_planes}"
            )
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
        if stride != 1:
            raise ValueError(
                f"SAM supports stride 1 only (SAN downsamples by pooling between stages), "
                f"got {stride}"
            )
        if dilation < 1:
            raise ValueError(f"dilation must be >= 1, got {dilation}")
        self.mode, self.kernel_size, self.dilation = mode, kernel_size, dilation
        self.rel_planes, self.out_planes, self.share_planes = rel_planes, out_planes, share_planes
        self.weight_channels = groups = out_planes // share_planes  # G
        taps = kernel_size * kernel_size  # k^2
        self.conv1 = nn.Conv2d(in_planes, rel_planes, kernel_size=1)  # phi (query side)
        self.conv2 = nn.Conv2d(in_planes, rel_planes, kernel_size=1)  # psi (key side)
        self.conv3 = nn.Conv2d(in_planes, out_planes, kernel_size=1)  # beta (values)
        if mode == "pairwise":
            self.conv_w = nn.Sequential(
                nn.BatchNorm2d(rel_planes + 2),
                nn.ReLU(),
                nn.Conv2d(rel_planes + 2, rel_planes, kernel_size=1, bias=False),
                nn.BatchNorm2d(rel_planes),
                nn.ReLU(),
                nn.Conv2d(rel_planes, groups, kernel_size=1),
            )
            self.conv_p = nn.Conv2d(2, 2, kernel_size=1)
        else:
            wide = rel_planes * (taps + 1)
            self.conv_w = nn.Sequential(
                nn.BatchNorm2d(wide),
                nn.ReLU(),
                nn.Conv2d(wide, groups, kernel_size=1, bias=False),
                nn.BatchNorm2d(groups),
                nn.ReLU(),
                nn.Conv2d(groups, taps * groups, kernel_size=1),
            )
        if isinstance(normalizer, str):
            normalizer = make_normalizer(normalizer, num_heads=groups)
        elif normalizer is not None and not isinstance(normalizer, nn.Module):
            raise ValueError(
                f"normalizer must be a name, an nn.Module or None, got {type(normalizer).__name__}"
            )
        self.normalizer = normalizer

    def extra_repr(self) -> str:
        return (
            f"mode={self.mode}, kernel_size={self.kernel_size}, dilation={self.dilation}, "
            f"weight_channels={self.weight_channels}, share_planes={self.share_planes}"
        )

    def _unfold(self, t: torch.Tensor) -> torch.Tensor:
        """``t [B, C, H, W]`` -> its footprints ``[B, C, k^2, H * W]``, zeros outside."""
        k, d = self.kernel_size, self.dilation
        cols = F.unfold(t, k, dilation=d, padding=d * (k - 1) // 2)  # [B, C * k^2, N]
        return cols.view(t.shape[0], t.shape[1], k * k, -1)  # [B, C, k^2, N]

    def key_index(self, h: int, w: int, device: torch.device | None = None) -> torch.Tensor:
        """``[N, k^2]``: the row-major pixel index of footprint position p of query n on the
        ``h x w`` grid, ``-1`` where that position falls outside the image."""
        ids = torch.arange(1, h * w + 1, dtype=torch.float32, device=device).view(1, 1, h, w)
        idx = self._unfold(ids)[0, 0].round().long() - 1  # [k^2, N], padding 0 -> -1 (exact < 2^24)
        return idx.t()  # [N, k^2]

    def _position(self, h: int, w: int, ref: torch.Tensor) -> torch.Tensor:
        """``conv_p(pos_i) - conv_p(pos_j)`` per footprint position: ``[1, 2, k^2, 1]``.

        Coordinates ``(x, y)`` lie on ``linspace(-1, 1, W)`` x ``linspace(-1, 1, H)`` as in the
        reference, so the encoding depends only on the offset ``j - i`` (positions outside the
        image continue the same grid; they are masked anyway)."""
        k, d = self.kernel_size, self.dilation
        step_y = 2.0 / (h - 1) if h > 1 else 0.0
        step_x = 2.0 / (w - 1) if w > 1 else 0.0
        dtype = self.conv_p.weight.dtype  # the coordinates in the parameters' precision
        offsets = (torch.arange(k, device=ref.device, dtype=dtype) - k // 2) * d  # [k]
        dy, dx = torch.meshgrid(offsets * step_y, offsets * step_x, indexing="ij")  # [k, k]
        neighbour = torch.stack([dx.flatten(), dy.flatten()]).view(1, 2, k * k, 1)
        centre = torch.zeros_like(neighbour[:, :, :1])  # [1, 2, 1, 1]
        return self.conv_p(centre) - self.conv_p(neighbour)  # [1, 2, k^2, 1]

    def attention(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The normalised footprint weights of ``x [B, C, H, W]``.

        Returns ``(weights [B, G, N, k^2], key_index [N, k^2])``: weights in float32 (or the
        input's wider dtype), row-major queries and footprint positions, exactly 0 at positions
        outside the image (``key_index == -1``)."""
        b, _, h, w = x.shape
        n, taps = h * w, self.kernel_size**2
        query = self.conv1(x).view(b, self.rel_planes, 1, n)  # [B, rel, 1, N]
        keys = self._unfold(self.conv2(x))  # [B, rel, k^2, N]
        if self.mode == "pairwise":
            relation = query - keys  # [B, rel, k^2, N]
            pos = self._position(h, w, relation).to(relation.dtype)  # [1, 2, k^2, 1]
            pos = pos.expand(b, 2, taps, n)  # [B, 2, k^2, N]
            scores = self.conv_w(torch.cat([relation, pos], dim=1))  # [B, G, k^2, N]
        else:
            patch = keys.reshape(b, self.rel_planes * taps, 1, n)  # channel = c * k^2 + p
            scores = self.conv_w(torch.cat([query, patch], dim=1))  # [B, G * k^2, 1, N]
            scores = scores.view(b, self.weight_channels, taps, n)  # [B, G, k^2, N]
        scores = scores.transpose(2, 3)  # [B, G, N, k^2]
        if scores.dtype in (torch.float16, torch.bfloat16):
            scores = scores.float()
        index = self.key_index(h, w, device=x.device)  # [N, k^2]
        outside = index < 0
        if self.normalizer is None:
            return scores.masked_fill(outside, 0.0), index
        scores = scores.masked_fill(outside, float("-inf"))
        k = self.kernel_size
        weights = self.normalizer(scores, key_grid=(k, k))  # [B, G, N, k^2]
        return weights, index

    def dense_weights(self, weights: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Footprint weights ``[B, G, N, k^2]`` placed on the image grid: ``[B, G, N, N]``."""
        b, g, n, taps = weights.shape
        safe = torch.where(index < 0, torch.arange(n, device=index.device)[:, None], index)
        dense = weights.new_zeros(b, g, n, n)  # [B, G, N, N]
        kept = weights.masked_fill(index < 0, 0.0)  # outside positions add 0 at the query
        return dense.scatter_add_(-1, safe.expand(b, g, n, taps), kept)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, in_planes, H, W]`` -> ``[B, out_planes, H, W]``."""
        if x.dim() != 4 or x.shape[1] != self.conv1.in_channels:
            raise ValueError(
                f"SAM expects [B, {self.conv1.in_channels}, H, W], got {tuple(x.shape)}"
            )
        b, _, h, w = x.shape
        weights, index = self.attention(x)  # [B, G, N, k^2]
        if self.observed():
            dense = self.dense_weights(weights, index)  # [B, G, N, N]
            self.emit(dense, key_grid=(h, w), layout=KeyLayout(kind="grid", grid=(h, w)))
        values = self._unfold(self.conv3(x))  # [B, C_out, k^2, N]
        g, taps = self.weight_channels, self.kernel_size**2
        values = values.view(b, self.share_planes, g, taps, h * w)  # channel c = s * G + g
        out = torch.einsum("bsgkn,bgnk->bsgn", values, weights.to(values.dtype))  # [B, S, G, N]
        return out.reshape(b, self.out_planes, h, w)  # [B, C_out, H, W]


class SANBottleneck(nn.Module):
    """SAN's residual block: ``x + conv1x1(ReLU(BN(SAM(ReLU(BN(x))))))``, as the reference.

    The SAM maps ``in_planes -> mid_planes``, the 1x1 conv ``mid_planes -> out_planes``; the
    identity shortcut needs ``in_planes == out_planes``.
    """

    def __init__(
        self,
        in_planes: int,
        rel_planes: int,
        mid_planes: int,
        out_planes: int,
        share_planes: int = 8,
        kernel_size: int = 7,
        mode: Literal["pairwise", "patchwise"] = "pairwise",
        normalizer: str | nn.Module | None = "softmax",
    ) -> None:
        super().__init__()
        if in_planes != out_planes:
            raise ValueError(
                f"SANBottleneck has an identity shortcut: in_planes {in_planes} must equal "
                f"out_planes {out_planes}"
            )
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.sam = SAM(
            in_planes,
            rel_planes,
            mid_planes,
            share_planes,
            kernel_size,
            mode=mode,
            normalizer=normalizer,
        )
        self.bn2 = nn.BatchNorm2d(mid_planes)
        self.conv = nn.Conv2d(mid_planes, out_planes, kernel_size=1)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, C, H, W]`` -> ``[B, C, H, W]``."""
        out = self.relu(self.bn1(x))
        out = self.relu(self.bn2(self.sam(out)))  # [B, mid, H, W]
        return self.conv(out) + x  # [B, C, H, W]
