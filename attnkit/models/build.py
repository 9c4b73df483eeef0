"""Config -> model through the family registry (the only path from a config to a model)."""

from __future__ import annotations

from torch import nn

from attnkit.attention.hooks import AttentionModule
from attnkit.models.registry import Family, family_of

__all__ = ["build_model", "label_sites"]


def label_sites(model: nn.Module, family: Family) -> nn.Module:
    """Give every attnkit attention module of ``model`` its family's site label.

    The label (``decoder L3 cross``, ``block 4``) travels with the recorded weights into
    analysis tables and figures; a module the family does not label keeps its module name.
    """
    for name, module in model.named_modules():
        if isinstance(module, AttentionModule):
            label = family.site_label(name) if family.site_label else None
            module.site = label or name
    return model


def build_model(cfg) -> nn.Module:
    """The model of an ``ExperimentConfig``: ``cfg.model.name`` picks the family."""
    family = family_of(cfg)
    return label_sites(family.build(cfg), family)
