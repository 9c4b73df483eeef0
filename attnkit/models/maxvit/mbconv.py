"""MaxViT's convolutional parts: TF-style "same" padding, the stem and the MBConv block.

The official MaxViT is a TensorFlow model; its weights (timm's ``maxvit_*_tf``) assume
TensorFlow's ``SAME`` padding: a stride-2 layer pads ``max((ceil(n / s) - 1) s + k - n, 0)`` in
total, the smaller half before and the larger after (a 224 map gets 0 rows on top, 1 at the
bottom), where PyTorch's symmetric padding would shift every feature by half a pixel. Stride-1
3x3 convolutions pad 1 on each side either way.

Module and parameter names follow timm's ``MbConvBlock`` and ``Stem`` (``pre_norm``,
``conv1_1x1``, ``norm1``, ``conv2_kxk``, ``norm2``, ``se.fc1``, ``se.fc2``, ``conv3_1x1``,
``shortcut.expand``), so timm state dicts map onto them by name.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import nn
from torchvision.ops import SqueezeExcitation

__all__ = ["MBConv", "SameConv2d", "Stem", "same_padding"]


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow ``SAME`` padding ``(before, after)`` of one axis of length ``size``."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _pad_same(x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int]) -> torch.Tensor:
    top, bottom = same_padding(x.shape[-2], kernel[0], stride[0])
    left, right = same_padding(x.shape[-1], kernel[1], stride[1])
    if top or bottom or left or right:
        x = F.pad(x, (left, right, top, bottom))
    return x


class SameConv2d(nn.Conv2d):
    """A convolution with TensorFlow ``SAME`` padding (computed per input size)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs["padding"] = 0
        super().__init__(*args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(_pad_same(x, self.kernel_size, self.stride))


class SameAvgPool2x2(nn.Module):
    """2x2 average pooling of stride 2 with ``SAME`` padding (zeros counted, as timm's port)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(_pad_same(x, (2, 2), (2, 2)), 2, 2)  # [B, C, ceil(h/2), ceil(w/2)]


def conv(in_chs: int, out_chs: int, kernel: int, stride: int = 1, **kw) -> nn.Conv2d:
    """A ``SAME``-padded convolution: static padding where it is symmetric (stride 1)."""
    if stride == 1:
        return nn.Conv2d(in_chs, out_chs, kernel, padding=kernel // 2, **kw)
    return SameConv2d(in_chs, out_chs, kernel, stride=stride, **kw)


class Stem(nn.Module):
    """3x3 conv of stride 2, BN, GELU, 3x3 conv: ``[B, 3, H, W] -> [B, C, H/2, W/2]``."""

    def __init__(self, in_chs: int, width: int, bn_eps: float = 1e-3) -> None:
        super().__init__()
        self.conv1 = conv(in_chs, width, 3, stride=2, bias=True)
        self.norm1 = nn.BatchNorm2d(width, eps=bn_eps)
        self.act = nn.GELU(approximate="tanh")
        self.conv2 = conv(width, width, 3, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.act(self.norm1(self.conv1(x))))  # [B, C, H/2, W/2]


class Downsample(nn.Module):
    """The shortcut of a stride-2 MBConv: 2x2 average pooling, then a 1x1 conv to the new width."""

    def __init__(self, in_chs: int, out_chs: int) -> None:
        super().__init__()
        self.pool = SameAvgPool2x2()
        self.expand = nn.Conv2d(in_chs, out_chs, 1) if in_chs != out_chs else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.expand(self.pool(x))


class MBConv(nn.Module):
    """Pre-norm inverted bottleneck: BN, 1x1 expand, BN-GELU, depthwise 3x3, BN-GELU, SE, 1x1.

    The expansion is ``expand`` x the *output* width; the depthwise conv carries the stride (2 in
    a stage's first block, whose shortcut is then pooling + 1x1); squeeze-excitation reduces to
    ``se_ratio`` x the output width with SiLU and a sigmoid gate.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        stride: int = 1,
        expand: float = 4.0,
        se_ratio: float = 0.25,
        drop_path: float = 0.0,
        bn_eps: float = 1e-3,
    ) -> None:
        super().__init__()
        mid = _make_divisible(out_chs * expand)
        if stride == 2:
            self.shortcut = Downsample(in_chs, out_chs)
        elif stride == 1 and in_chs == out_chs:
            self.shortcut = nn.Identity()
        else:
            raise ValueError(f"MBConv: stride {stride} from {in_chs} to {out_chs} channels")
        self.pre_norm = nn.BatchNorm2d(in_chs, eps=bn_eps)
        self.conv1_1x1 = nn.Conv2d(in_chs, mid, 1, bias=False)
        self.norm1 = nn.BatchNorm2d(mid, eps=bn_eps)
        self.conv2_kxk = conv(mid, mid, 3, stride=stride, groups=mid, bias=False)
        self.norm2 = nn.BatchNorm2d(mid, eps=bn_eps)
        self.act = nn.GELU(approximate="tanh")
        self.se = SqueezeExcitation(mid, int(se_ratio * out_chs), activation=nn.SiLU)
        self.conv3_1x1 = nn.Conv2d(mid, out_chs, 1, bias=True)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut(x)  # [B, C_out, h / s, w / s]
        x = self.act(self.norm1(self.conv1_1x1(self.pre_norm(x))))  # [B, mid, h, w]
        x = self.act(self.norm2(self.conv2_kxk(x)))  # [B, mid, h / s, w / s]
        x = self.conv3_1x1(self.se(x))  # [B, C_out, h / s, w / s]
        return self.drop_path(x) + shortcut


def _make_divisible(value: float, divisor: int = 8) -> int:
    """``value`` rounded to a multiple of ``divisor``, never below 90% of it (timm's rule)."""
    out = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return out + divisor if out < 0.9 * value else out
