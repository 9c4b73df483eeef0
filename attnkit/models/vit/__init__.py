"""A plain ViT image classifier (Dosovitskiy et al. 2021) on attnkit's attention core.

``config`` (typed schema and named variants), ``model`` (timm-identical layout, pluggable
attention normalizer) and ``timm_weights`` (loading timm ``vit_*`` state dicts).
"""

from attnkit.models.vit.config import VIT_VARIANTS, ViTAttentionConfig, ViTConfig, vit_variant
from attnkit.models.vit.model import Block, PatchEmbed, VisionTransformer, build_vit
from attnkit.models.vit.timm_weights import (
    TimmLoadReport,
    load_timm_vit,
    read_state_dict,
    vit_architecture,
)

__all__ = [
    "VIT_VARIANTS",
    "Block",
    "PatchEmbed",
    "TimmLoadReport",
    "ViTAttentionConfig",
    "ViTConfig",
    "VisionTransformer",
    "build_vit",
    "load_timm_vit",
    "read_state_dict",
    "vit_architecture",
    "vit_variant",
]
