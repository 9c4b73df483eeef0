"""The ``dense`` family: encoder x decoder x attention for pixel-wise regression (in progress)."""

from __future__ import annotations

import re

from attnkit.models.dense.config import DenseConfig
from attnkit.models.dense.model import build_dense
from attnkit.models.registry import Family, register_family

_SITE = re.compile(r"^encoder\.(?:layers|stages)\.(\d+)\.blocks\.(\d+)\.attn(?:\.attn)?$")
_UP = re.compile(r"^decoder\.levels\.(\d+)\.(\d+)\.attn$")


def site_label(name: str) -> str | None:
    """``encoder.layers.1.blocks.0.attn`` (Swin) or ``encoder.stages.1.blocks.0.attn`` (MiT)
    -> ``stage 2 block 1``; Swin-Unet's ``decoder.levels.0.1.attn`` -> ``up 1 block 2``."""
    found = _SITE.match(name)
    if found is not None:
        return f"stage {int(found.group(1)) + 1} block {int(found.group(2)) + 1}"
    found = _UP.match(name)
    if found is not None:
        return f"up {int(found.group(1)) + 1} block {int(found.group(2)) + 1}"
    return None


FAMILY = register_family(
    Family(
        name="dense",
        schema=DenseConfig,
        build=lambda cfg: build_dense(cfg.model),
        task="dense_regression",
        site_label=site_label,
        variants={
            "swin": "Swin-T/S/B encoder (timm-identical), (shifted) windows, any normalizer",
            "mit": "MiT-b0..b5 encoder (SegFormer; timm PVTv2-identical), spatial reduction",
            "segformer": "the all-MLP decoder head",
            "swin_unet": "Swin-Unet's decoder: patch expanding, skips, mirrored Swin blocks",
        },
        description="dense prediction: encoder x decoder x attention (Swin, MiT; SegFormer, Swin-Unet)",
    )
)
