"""The dense family's model: an encoder's stage maps, a decoder, the prediction at input size."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attnkit.models.dense.config import DenseConfig
from attnkit.models.dense.decoders.fpn import FPNHead
from attnkit.models.dense.decoders.segformer import SegFormerHead
from attnkit.models.dense.decoders.swin_unet import SwinUnetDecoder
from attnkit.models.dense.encoders.maxvit import maxvit_encoder
from attnkit.models.dense.encoders.mit import mit_encoder
from attnkit.models.dense.encoders.swin import swin_encoder
from attnkit.models.dense.encoders.vit import vit_encoder

__all__ = ["ENCODERS", "HEADS", "DenseModel", "build_decoder", "build_dense", "build_encoder"]


def _normalizer_kw(cfg: DenseConfig) -> dict:
    att = cfg.attention
    if att.normalizer == "alpha_entmax":
        return {"alpha_init": att.alpha_init}
    return {"lam": att.tvmax_lambda} if att.normalizer == "tvmax" else {}


def _shape(**values) -> dict:
    """The given (not None) shape overrides of a variant."""
    return {k: v for k, v in values.items() if v is not None}


def _swin(cfg: DenseConfig, common: dict) -> nn.Module:
    enc = cfg.encoder
    shape = _shape(
        embed_dim=enc.embed_dim, depths=enc.depths, num_heads=enc.num_heads, window=enc.window
    )
    return swin_encoder(enc.variant, img_size=cfg.img_size, **common, **shape)


def _mit(cfg: DenseConfig, common: dict) -> nn.Module:
    enc = cfg.encoder
    return mit_encoder(
        enc.variant, **common, **_shape(embed_dims=enc.embed_dims, depths=enc.depths)
    )


def _vit(cfg: DenseConfig, common: dict) -> nn.Module:
    enc = cfg.encoder
    shape = _shape(
        embed_dim=enc.embed_dim,
        depth=enc.depth,
        num_heads=enc.num_heads[0] if enc.num_heads else None,
        patch_size=enc.patch_size,
        stage_idx=enc.stage_idx,
        window=enc.window,
    )
    return vit_encoder(enc.variant, img_size=cfg.img_size, **common, **shape)


def _maxvit(cfg: DenseConfig, common: dict) -> nn.Module:
    enc = cfg.encoder
    window = [enc.window, enc.window] if enc.window else None
    shape = _shape(embed_dims=enc.embed_dims, depths=enc.depths, window=window, grid=window)
    return maxvit_encoder(
        enc.variant,
        common["normalizer"],
        common["normalizer_kw"],
        img_size=list(cfg.img_size),
        in_chans=cfg.in_chans,
        drop_path_rate=enc.drop_path_rate,
        **shape,
    )


ENCODERS = {"swin": _swin, "mit": _mit, "vit": _vit, "maxvit": _maxvit}
"""``model.encoder.name`` -> ``builder(cfg, common keyword arguments) -> encoder``."""


def build_encoder(cfg: DenseConfig) -> nn.Module:
    """The encoder of ``cfg.encoder`` with ``cfg.attention``'s mechanism and normalizer and
    ``cfg.block``'s FFN in every block. Every encoder has ``forward_features(images)`` -> maps at
    strides 4, 8, ... and ``channels``, ``depths``, ``num_heads`` per map."""
    common = {
        "in_chans": cfg.in_chans,
        "drop_path_rate": cfg.encoder.drop_path_rate,
        "normalizer": cfg.attention.normalizer,
        "normalizer_kw": _normalizer_kw(cfg),
        "mechanism": cfg.attention.mechanism,
        "ffn": cfg.block.ffn,
    }
    return ENCODERS[cfg.encoder.name](cfg, common)


def build_decoder(cfg: DenseConfig, encoder: nn.Module) -> nn.Module:
    """The decoder of ``cfg.decoder`` for ``encoder``'s stage widths (depths and heads)."""
    dec = cfg.decoder
    if dec.name in HEADS:
        return HEADS[dec.name](encoder.channels, dec.embed_dim, cfg.out_channels, dec.dropout)
    plan = [-(-int(s) // 4) for s in cfg.img_size]
    return SwinUnetDecoder(
        encoder.channels,
        encoder.depths,
        encoder.num_heads,
        cfg.out_channels,
        dec.window,
        plan,
        normalizer=cfg.attention.normalizer,
        normalizer_kw=_normalizer_kw(cfg),
    )


HEADS = {"segformer": SegFormerHead, "fpn": FPNHead}
"""The heads built from ``(channels, embed_dim, out_channels, dropout)``."""


class DenseModel(nn.Module):
    """``model(images [B, C, H, W]) -> [B, out_channels, H, W]``."""

    def __init__(self, cfg: DenseConfig) -> None:
        super().__init__()
        self.encoder = build_encoder(cfg)
        self.decoder = build_decoder(cfg, self.encoder)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        H, W = images.shape[-2:]
        maps = self.encoder.forward_features(images)  # strides 4, 8, 16, 32
        pred = self.decoder(maps)  # [B, out, H / s, W / s] for the decoder's output stride s
        if self.decoder.output_stride == 1:
            return pred[..., :H, :W]  # the patch embedding padded to a multiple of 4
        return F.interpolate(pred, size=(H, W), mode="bilinear", align_corners=False)


def build_dense(cfg: DenseConfig) -> DenseModel:
    return DenseModel(cfg)
