"""The ``sa_conv`` family: self-attention versus convolution (Cordonnier et al. 2020; SAN)."""

from __future__ import annotations

import re

from torch import nn

from attnkit.models.registry import Family, register_family
from attnkit.models.sa_conv.config import SAConvConfig

_LAYER = re.compile(r"^layers\.(\d+)\.attention$")
_SAN = re.compile(r"^layer(\d+)\.(\d+)\.sam$")


def site_label(name: str) -> str | None:
    """``layers.2.attention`` -> ``layer 3``; ``layer1.0.sam`` (SAN) -> ``stage 2 block 1``."""
    found = _LAYER.match(name)
    if found:
        return f"layer {int(found.group(1)) + 1}"
    found = _SAN.match(name)
    if found:
        return f"stage {int(found.group(1)) + 1} block {int(found.group(2)) + 1}"
    return None


def build_sa_conv(model_cfg: SAConvConfig) -> nn.Module:
    """The transformer or the SAN of a :class:`SAConvConfig`."""
    if model_cfg.arch == "san":
        from attnkit.models.sa_conv.san_build import build_san_from_config

        return build_san_from_config(model_cfg)
    from attnkit.models.sa_conv.transformer import SAConvTransformer

    return SAConvTransformer(model_cfg)


FAMILY = register_family(
    Family(
        name="sa_conv",
        schema=SAConvConfig,
        build=lambda cfg: build_sa_conv(cfg.model),
        task="classification",
        site_label=site_label,
        normalizer_keys=("model.attention.normalizer",),
        variants={
            "gaussian": "quadratic (Gaussian) positional attention, isotropic or anisotropic",
            "learned2d": "learned 2-D relative positional attention, with or without content",
            "content": "plain multi-head self-attention with learned absolute positions (ViT-style)",
            "san": "SAN pairwise / patchwise self-attention over a k x k footprint",
        },
        description="self-attention vs convolution (Cordonnier et al. 2020, SAN), CIFAR layout",
    )
)
