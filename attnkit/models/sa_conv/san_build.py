"""The SAN of an ``sa_conv`` config (``model.arch: san``): layout, mode and normalizer."""

from __future__ import annotations

from attnkit.attention import make_normalizer
from attnkit.models.sa_conv.config import SAConvConfig
from attnkit.models.sa_conv.san_net import SAN, build_san
from attnkit.models.sa_conv.sharing import share_blocks

__all__ = ["build_san_from_config"]


def build_san_from_config(model_cfg: SAConvConfig) -> SAN:
    """``build_san`` with the config's mode, layout, share_planes and normalizer (one fresh
    normalizer per SA module, its heads being the module's weight channels); with
    ``model.share_layers`` the blocks of each stage share the first block's weights (the blocks
    of a stage have equal shapes; batch-norm statistics stay per block)."""
    att = model_cfg.attention

    def normalizer(heads: int):
        return make_normalizer(
            att.normalizer, heads, alpha_init=att.alpha_init, tvmax_lambda=att.tvmax_lambda
        )

    san = model_cfg.san
    overrides = {} if san.share_planes is None else {"share_planes": san.share_planes}
    model = build_san(
        san.mode,
        san.layout,
        num_classes=model_cfg.num_classes,
        in_chans=model_cfg.in_chans,
        normalizer=normalizer,
        **overrides,
    )
    if model_cfg.share_layers:  # hierarchical: the blocks of a stage share one block's weights
        for i in range(model.num_stages):
            share_blocks(list(getattr(model, f"layer{i}")))
    return model
