"""The ``dense`` family: encoder x decoder x attention for pixel-wise regression (the default
task) or semantic segmentation (``task: dense_segmentation``, ``model.out_channels`` classes)."""

from __future__ import annotations

import re

from attnkit.models.dense.config import DenseConfig
from attnkit.models.dense.model import build_dense
from attnkit.models.registry import Family, register_family

_SITE = re.compile(r"^encoder\.(?:layers|stages)\.(\d+)\.blocks\.(\d+)\.attn(?:\.attn)?$")
_MAXVIT = re.compile(r"^encoder\.model\.stages\.(\d+)\.blocks\.(\d+)\.attn_(block|grid)\.attn$")
_VIT = re.compile(r"^encoder\.blocks\.(\d+)\.attn(?:\.attn)?$")
_UP = re.compile(r"^decoder\.levels\.(\d+)\.(\d+)\.attn$")


def site_label(name: str) -> str | None:
    """``encoder.layers.1.blocks.0.attn`` (Swin) or ``encoder.stages.1.blocks.0.attn`` (MiT)
    -> ``stage 2 block 1``; MaxViT's ``encoder.model.stages.1.blocks.0.attn_grid.attn`` ->
    ``stage 2 block 1 grid``; ViT's ``encoder.blocks.3.attn`` -> ``block 4``; Swin-Unet's
    ``decoder.levels.0.1.attn`` -> ``up 1 block 2``."""
    found = _SITE.match(name)
    if found is not None:
        return f"stage {int(found.group(1)) + 1} block {int(found.group(2)) + 1}"
    found = _MAXVIT.match(name)
    if found is not None:
        stage, block, kind = int(found.group(1)) + 1, int(found.group(2)) + 1, found.group(3)
        return f"stage {stage} block {block} {kind}"
    found = _VIT.match(name)
    if found is not None:
        return f"block {int(found.group(1)) + 1}"
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
        tasks=("dense_segmentation",),
        site_label=site_label,
        normalizer_keys=("model.attention.normalizer",),
        variants={
            "swin": "Swin-T/S/B encoder (timm-identical), (shifted) windows, any normalizer",
            "mit": "MiT-b0..b5 encoder (SegFormer; timm PVTv2-identical), spatial reduction",
            "vit": "plain ViT-Ti/S/B encoder, four blocks' tokens resampled to strides 4..32",
            "maxvit": "MaxViT encoder (block and grid attention), its stage maps",
            "segformer": "the all-MLP decoder head",
            "swin_unet": "Swin-Unet's decoder: patch expanding, skips, mirrored Swin blocks",
            "fpn": "a top-down feature pyramid head, for contrast",
        },
        description="dense prediction: encoder x decoder x attention "
        "(Swin, MiT, ViT, MaxViT; SegFormer, Swin-Unet, FPN)",
    )
)
