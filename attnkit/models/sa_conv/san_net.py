"""SAN networks (Zhao, Jia & Koltun, CVPR 2020) adapted to 32x32 inputs (CIFAR-10).

The reference network (``hszhao/SAN``, ``model/san.py``) is a stem, then five stages; before
each stage it max-pools by 2 and widens with a 1x1 conv, each stage is a stack of
:class:`~attnkit.models.sa_conv.san.SANBottleneck` blocks (``rel_planes = planes / 16``,
``mid_planes = planes / 4``, ``share_planes`` 8) followed by BN-ReLU, and the head is a global
average pool and a linear layer. :class:`SAN` keeps that layout and its parameter names
(``conv_in``, ``conv0`` ... ``conv4``, ``layer0`` ..., ``bn0`` ..., ``fc``) with two changes
for small images: the stem is a 3x3 conv (the reference: 1x1 at 224x224) and pooling happens
only where ``downsample[i]`` is True (the reference pools before every stage, 224 -> 7).

Parameter counts of SAN10 (10 classes, 3x3 stem). The paper's, at 1000 classes, are 10.5M
pairwise and 11.8M patchwise; ``build_san(mode, num_classes=1000)`` has 10.53M and 11.84M.

* ``build_san("pairwise")``: 8.50M parameters
* ``build_san("patchwise")``: 9.81M parameters
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from attnkit.models.sa_conv.san import SA_MODES, SANBottleneck

__all__ = ["SAN", "SAN_LAYOUTS", "build_san"]

NormalizerSpec = str | Callable[[int], nn.Module | str] | None

# Widths, depths and footprints of the paper (Table 1). Downsampling is adapted to 32x32
# inputs: no pooling before the first and last stage, so stages run at 32, 16, 8, 4, 4 pixels
# and the head pools a 4x4 map (the reference: 112, 56, 28, 14, 7 at 224x224).
_PAPER_WIDTHS = (64, 256, 512, 1024, 2048)
_PAPER_KERNELS = (3, 7, 7, 7, 7)
_CIFAR_DOWNSAMPLE = (False, True, True, True, False)

SAN_LAYOUTS: dict[str, dict[str, Any]] = {
    "san10": {
        "layers": (2, 1, 2, 4, 1),
        "planes": _PAPER_WIDTHS,
        "kernels": _PAPER_KERNELS,
        "downsample": _CIFAR_DOWNSAMPLE,
        "share_planes": 8,
    },
    "san15": {
        "layers": (3, 2, 3, 5, 2),
        "planes": _PAPER_WIDTHS,
        "kernels": _PAPER_KERNELS,
        "downsample": _CIFAR_DOWNSAMPLE,
        "share_planes": 8,
    },
    "san19": {
        "layers": (3, 3, 4, 6, 3),
        "planes": _PAPER_WIDTHS,
        "kernels": _PAPER_KERNELS,
        "downsample": _CIFAR_DOWNSAMPLE,
        "share_planes": 8,
    },
    # A CPU-sized SAN for tests and notebooks (about 29k / 30k parameters pairwise /
    # patchwise): stages at 32, 16, 8 pixels; share_planes 4 so that the narrow SAMs still have
    # 2, 4, 8 weight channels.
    "tiny": {
        "layers": (1, 1, 1),
        "planes": (32, 64, 128),
        "kernels": (3, 3, 3),
        "downsample": (False, True, True),
        "share_planes": 4,
    },
}


def _conv1x1(in_planes: int, out_planes: int) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, bias=False)


def _normalizer_for(spec: NormalizerSpec, weight_channels: int) -> nn.Module | str | None:
    """The normalizer argument of one SAM: a name (the SAM builds a fresh module) or the
    factory's fresh module."""
    if spec is None or isinstance(spec, str):
        return spec
    return spec(weight_channels)


class SAN(nn.Module):
    """A SAN classifier: ``images [B, in_chans, H, W] -> logits [B, num_classes]``.

    Args:
        mode: ``pairwise`` or ``patchwise`` self-attention in every block.
        layers: blocks per stage.
        planes: width per stage (multiples of 16; ``planes / 4`` a multiple of
            ``share_planes``).
        kernels: footprint side per stage (odd).
        num_classes: outputs of the linear head.
        in_chans: input channels.
        share_planes: output channels of a SAM sharing one weight channel.
        normalizer: a normalizer name, None (raw weights, the reference's patchwise), or a
            factory ``weight_channels -> module or name`` called once per SAM (each SAM gets its
            own module: alpha_entmax has parameters).
        downsample: per stage, whether to max-pool by 2 before it.
    """

    def __init__(
        self,
        mode: str,
        layers: Sequence[int] = SAN_LAYOUTS["san10"]["layers"],
        planes: Sequence[int] = _PAPER_WIDTHS,
        kernels: Sequence[int] = _PAPER_KERNELS,
        num_classes: int = 10,
        in_chans: int = 3,
        share_planes: int = 8,
        normalizer: NormalizerSpec = "softmax",
        downsample: Sequence[bool] = _CIFAR_DOWNSAMPLE,
    ) -> None:
        super().__init__()
        if mode not in SA_MODES:
            raise ValueError(f"unknown SAN mode {mode!r}: valid modes are {', '.join(SA_MODES)}")
        lengths = {len(t) for t in (layers, planes, kernels, downsample)}
        if len(lengths) != 1:
            raise ValueError(
                f"layers, planes, kernels and downsample need one entry per stage, got lengths "
                f"{len(layers)}, {len(planes)}, {len(kernels)}, {len(downsample)}"
            )
        if not layers or min(layers) < 1:
            raise ValueError(f"every stage needs at least one block, got layers {tuple(layers)}")
        for width in planes:
            if width % 16 or (width // 4) % share_planes:
                raise ValueError(
                    f"stage width {width} must be a multiple of 16 with width / 4 a multiple "
                    f"of share_planes {share_planes}"
                )
        if isinstance(normalizer, nn.Module):
            raise ValueError("pass a normalizer name or factory, not a module shared by all SAMs")
        if num_classes < 1 or in_chans < 1:
            raise ValueError(
                f"num_classes and in_chans must be positive: {num_classes}, {in_chans}"
            )
        self.mode, self.downsample = mode, tuple(bool(d) for d in downsample)
        self.num_stages = len(planes)
        c = planes[0]
        self.conv_in = nn.Conv2d(in_chans, c, kernel_size=3, padding=1, bias=False)
        self.bn_in = nn.BatchNorm2d(c)
        for i, (width, depth, k) in enumerate(zip(planes, layers, kernels)):
            self.add_module(f"conv{i}", _conv1x1(c, width))
            blocks = [
                SANBottleneck(
                    width,
                    width // 16,
                    width // 4,
                    width,
                    share_planes,
                    k,
                    mode=mode,
                    normalizer=_normalizer_for(normalizer, width // 4 // share_planes),
                )
                for _ in range(depth)
            ]
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
            self.add_module(f"bn{i}", nn.BatchNorm2d(width))
            c = width
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(c, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``images [B, in_chans, H, W]`` -> logits ``[B, num_classes]`` (called as
        ``model(images=...)``, the family contract)."""
        x = self.relu(self.bn_in(self.conv_in(images)))  # [B, planes[0], H, W]
        for i in range(self.num_stages):
            if self.downsample[i]:
                x = self.pool(x)  # [B, C, H / 2, W / 2]
            x = getattr(self, f"layer{i}")(getattr(self, f"conv{i}")(x))  # [B, planes[i], ...]
            x = self.relu(getattr(self, f"bn{i}")(x))
        x = self.avgpool(x).flatten(1)  # [B, planes[-1]]
        return self.fc(x)  # [B, num_classes]


def build_san(
    mode: str,
    layout: str = "san10",
    num_classes: int = 10,
    in_chans: int = 3,
    normalizer: NormalizerSpec = "softmax",
    **overrides: Any,
) -> SAN:
    """A :class:`SAN` of a named layout (:data:`SAN_LAYOUTS`), with any of its entries
    (``layers``, ``planes``, ``kernels``, ``downsample``, ``share_planes``) overridden."""
    if layout not in SAN_LAYOUTS:
        raise ValueError(
            f"unknown SAN layout {layout!r}: valid layouts are {', '.join(SAN_LAYOUTS)}"
        )
    spec = dict(SAN_LAYOUTS[layout])
    unknown = sorted(set(overrides) - set(spec))
    if unknown:
        raise ValueError(f"unknown SAN layout entries {unknown}: valid are {', '.join(spec)}")
    spec.update(overrides)
    return SAN(mode, num_classes=num_classes, in_chans=in_chans, normalizer=normalizer, **spec)
