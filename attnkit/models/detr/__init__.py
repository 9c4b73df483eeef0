"""DETR (Carion et al. 2020) with a pluggable attention normalizer per attention location.

One concept per module: ``backbone`` (ResNet / timm CNN, frozen BN), ``position_encoding``
(sine), ``transformer`` (encoder-decoder on attnkit attention), ``detr`` (the model and heads),
``matcher`` (Hungarian), ``criterion`` (set loss), ``postprocess`` (detections in pixels) and
``official`` (loading official DETR checkpoints).
"""

from attnkit.models.detr.backbone import Backbone
from attnkit.models.detr.criterion import SetCriterion
from attnkit.models.detr.detr import DETR, MLP, build_detr
from attnkit.models.detr.matcher import HungarianMatcher, cost_terms
from attnkit.models.detr.official import OfficialLoadReport, load_official_detr
from attnkit.models.detr.position_encoding import PositionEmbeddingSine
from attnkit.models.detr.postprocess import PostProcess
from attnkit.models.detr.transformer import Transformer

__all__ = [
    "DETR",
    "MLP",
    "Backbone",
    "HungarianMatcher",
    "OfficialLoadReport",
    "PositionEmbeddingSine",
    "PostProcess",
    "SetCriterion",
    "Transformer",
    "build_detr",
    "cost_terms",
    "load_official_detr",
]
