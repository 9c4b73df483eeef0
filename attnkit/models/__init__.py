"""Models built from attnkit attention: DETR, dense-prediction encoders/decoders, MaxViT, ..."""

from attnkit.models.build import build_criterion, build_model, build_postprocess

__all__ = ["build_criterion", "build_model", "build_postprocess"]
