"""The ``detr`` family: DETR with a normalizer per attention location, on the detection task."""

from __future__ import annotations

import re

from attnkit.models.detr.config import DETRConfig
from attnkit.models.detr.detr import build_detr
from attnkit.models.detr.official import OFFICIAL_BACKBONE, load_official_detr
from attnkit.models.registry import Family, register_family

_SITE = re.compile(r"(encoder|decoder)\.layers\.(\d+)\.(self_attn|multihead_attn)$")
_BACKBONE = "backbone.body."  # attnkit's MaxViT as a backbone (maxvit:<variant>)


def site_label(name: str) -> str | None:
    """``transformer.decoder.layers.2.multihead_attn`` -> ``decoder L3 cross``; a MaxViT
    backbone's ``backbone.body.stages.0.blocks.1.attn_grid.attn`` -> ``backbone stage 1 block 2
    grid``."""
    if name.startswith(_BACKBONE):
        from attnkit.models.maxvit.family import site_label as maxvit_label

        inner = maxvit_label(name[len(_BACKBONE) :])
        return f"backbone {inner}" if inner else None
    found = _SITE.search(name)
    if found is None:
        return None
    part, index, kind = found.groups()
    label = f"{part} L{int(index) + 1}"
    if part == "decoder":
        label += " cross" if kind == "multihead_attn" else " self"
    return label


def _build(cfg):
    # Official DETR trains the backbone when lr_backbone > 0 (stem and first stage frozen).
    return build_detr(cfg.model, train_backbone=cfg.train.lr_backbone > 0)


def _is_official(state) -> bool:
    return any(k.startswith(OFFICIAL_BACKBONE) for k in state)


FAMILY = register_family(
    Family(
        name="detr",
        schema=DETRConfig,
        build=_build,
        task="detection",
        site_label=site_label,
        analysis_layers=("*decoder.layers.*.multihead_attn",),
        scorers=("attnkit.analysis.paibb_scorer:PaibbScorer",),
        normalizer_keys=("model.attention.cross",),  # the thesis: decoder cross-attention
        foreign_weights={"official DETR": (_is_official, load_official_detr)},
        variants={
            "shapes_tiny": "128-wide, 2+3 layers on the tiny_cnn backbone (synthetic shapes)",
            "coco_r50": "the official DETR-R50 (6+6 layers, 256 wide) on COCO",
        },
        description="DETR (Carion et al. 2020), a normalizer per attention location",
    )
)
