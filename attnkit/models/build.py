"""Config -> model, loss and post-processing: the one place that dispatches on ``model.name``."""

from __future__ import annotations

from torch import nn

from attnkit.models.detr import HungarianMatcher, PostProcess, SetCriterion, build_detr

__all__ = ["build_criterion", "build_model", "build_postprocess"]


def _model_name(cfg) -> str:
    name = cfg.model.name
    if name != "detr":
        raise ValueError(f"unknown model.name {name!r}; available: 'detr'")
    return name


def build_model(cfg) -> nn.Module:
    """The model of an ``ExperimentConfig`` (``cfg.model.name`` picks the architecture).

    DETR's backbone trains when ``cfg.train.lr_backbone > 0`` (stem and first stage always
    frozen), as in official DETR.
    """
    _model_name(cfg)
    return build_detr(cfg.model, train_backbone=cfg.train.lr_backbone > 0)


def build_criterion(cfg) -> SetCriterion:
    """DETR's set loss with the matcher costs and loss weights of ``cfg.loss``."""
    _model_name(cfg)
    loss = cfg.loss
    matcher = HungarianMatcher(loss.cost_class, loss.cost_bbox, loss.cost_giou)
    weights = {"loss_ce": loss.class_weight, "loss_bbox": loss.bbox_weight}
    weights["loss_giou"] = loss.giou_weight
    return SetCriterion(cfg.model.num_classes, matcher, weights, eos_coef=loss.eos_coef)


def build_postprocess(cfg) -> nn.Module:
    """The post-processing that turns the model's outputs into detections in pixels."""
    _model_name(cfg)
    return PostProcess()
