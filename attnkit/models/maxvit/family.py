"""The ``maxvit`` family: MaxViT classifiers on the classification task, timm-identical weights."""

from __future__ import annotations

import re

from attnkit.models.maxvit.config import MAXVIT_VARIANTS, MaxViTConfig
from attnkit.models.maxvit.model import build_maxvit
from attnkit.models.maxvit.timm_weights import is_timm_maxvit, load_timm_maxvit
from attnkit.models.registry import Family, register_family

_SITE = re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\.attn_(block|grid)\.attn$")


def site_label(name: str) -> str | None:
    """``stages.1.blocks.0.attn_grid.attn`` -> ``stage 2 block 1 grid`` (block attention:
    ``... block``)."""
    found = _SITE.match(name)
    if found is None:
        return None
    stage, block, kind = int(found.group(1)) + 1, int(found.group(2)) + 1, found.group(3)
    return f"stage {stage} block {block} {kind}"


def _describe(v: dict) -> str:
    dims = ",".join(str(d) for d in v["embed_dims"])
    depths = ",".join(str(d) for d in v["depths"])
    size = "x".join(str(s) for s in v["img_size"])
    return f"widths {dims}, depths {depths}, window {v['window'][0]} at {size}"


FAMILY = register_family(
    Family(
        name="maxvit",
        schema=MaxViTConfig,
        build=lambda cfg: build_maxvit(cfg.model),
        task="classification",
        site_label=site_label,
        normalizer_keys=("model.attention.block.normalizer", "model.attention.grid.normalizer"),
        foreign_weights={"timm MaxViT": (is_timm_maxvit, load_timm_maxvit)},
        variants={name: _describe(v) for name, v in MAXVIT_VARIANTS.items()},
        description="MaxViT (Tu et al. 2022): MBConv + block + grid attention, timm-identical",
    )
)
