"""The ``vit`` family: a plain ViT classifier (no pretraining) on the classification task."""

from __future__ import annotations

import re

from attnkit.models.registry import Family, register_family
from attnkit.models.vit.config import VIT_VARIANTS, ViTConfig
from attnkit.models.vit.model import build_vit
from attnkit.models.vit.timm_weights import load_timm_vit

_BLOCK = re.compile(r"blocks\.(\d+)\.attn$")


def site_label(name: str) -> str | None:
    """``blocks.3.attn`` -> ``block 4``."""
    found = _BLOCK.search(name)
    return None if found is None else f"block {int(found.group(1)) + 1}"


def _is_vit_state(state) -> bool:
    # timm's and attnkit's ViT share their keys; timm's loader checks the architecture and
    # says what differs, so both go through it.
    return "patch_embed.proj.weight" in state


FAMILY = register_family(
    Family(
        name="vit",
        schema=ViTConfig,
        build=lambda cfg: build_vit(cfg.model),
        task="classification",
        site_label=site_label,
        normalizer_keys=("model.attention.normalizer",),
        foreign_weights={"timm ViT": (_is_vit_state, load_timm_vit)},
        variants={
            name: f"{v['embed_dim']} wide, {v['depth']} blocks, {v['num_heads']} heads, "
            f"patch {v['patch_size']} at {v['img_size'][0]}x{v['img_size'][1]}"
            for name, v in VIT_VARIANTS.items()
        },
        description="plain ViT classifier (Dosovitskiy et al. 2021), timm-identical weights",
    )
)
