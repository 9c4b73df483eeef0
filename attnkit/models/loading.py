"""Rebuild a model from a checkpoint file: attnkit's own (config inside) or a foreign format.

Foreign formats (official DETR, timm) are declared by each family
(``Family.foreign_weights``); this module never names a family.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from attnkit.config import config_from_dict, load_config
from attnkit.models.build import build_model
from attnkit.models.registry import family_of
from attnkit.runfiles import resolve_checkpoint

__all__ = ["NORMALIZER_PARAMETERS", "init_from_checkpoint", "model_from_checkpoint"]

PRETRAINED_FIELDS = ("pretrained_backbone", "pretrained")
"""Model-config fields naming weight files used at initialisation only: a checkpoint holds every
weight, so they are cleared when a model is rebuilt from one (the file need not exist here)."""

NORMALIZER_PARAMETERS = ("pre_alpha",)
"""Parameter names (suffixes) that belong to an attention normalizer, not to the architecture:
fine-tuning between normalizers may add or drop them."""


def _read(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return torch.load(path, map_location="cpu", weights_only=True)


def _state_of(ckpt) -> dict:
    return ckpt.get("model", ckpt) if isinstance(ckpt, dict) else ckpt


def _without_pretrained(cfg):
    fields = {f.name for f in dataclasses.fields(cfg.model)}
    cleared = {name: None for name in PRETRAINED_FIELDS if name in fields}
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **cleared))


def _load_foreign(model, cfg, state) -> bool:
    """Load ``state`` with the family's loader when it is in a foreign format; else False."""
    family = family_of(cfg)
    fmt = family.foreign_format(state)
    if fmt is None:
        return False
    family.foreign_weights[fmt][1](model, state)
    return True


def model_from_checkpoint(checkpoint: str | Path, overrides=None, config=None, device="cpu"):
    """``(model, cfg)`` from a checkpoint written by ``attnkit train`` (its config is inside).

    ``checkpoint`` may be a run folder. ``config`` (a YAML path) replaces the stored config, e.g.
    for a foreign checkpoint (official DETR, timm), whose keys are then mapped by the family's
    loader. Always ``weights_only=True``.
    """
    path = resolve_checkpoint(checkpoint)
    ckpt = _read(path)
    if config is not None:
        cfg = load_config(config, overrides)
    elif isinstance(ckpt, dict) and "config" in ckpt:
        cfg = config_from_dict(ckpt["config"], overrides, source=f"config inside {path}")
    else:
        raise ValueError(f"{path} carries no config (not written by attnkit train?): pass --config")
    model = build_model(_without_pretrained(cfg))
    state = _state_of(ckpt)
    if not _load_foreign(model, cfg, state):
        state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
        model.load_state_dict(state)
    return model.to(device).eval(), cfg


def init_from_checkpoint(model, checkpoint: str | Path, cfg=None) -> list[str]:
    """Load the weights of an attnkit or foreign checkpoint into ``model`` for fine-tuning.

    ``checkpoint`` may be a run folder (its ``last.pt``). The architectures must agree; only
    normalizer parameters (alpha-entmax's ``pre_alpha``) may be missing on either side, so a
    softmax model can become an alpha-entmax one and back. With ``cfg`` (the model's config),
    foreign formats of its family load too. Returns the keys left at their initialisation.
    """
    path = resolve_checkpoint(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"train.init_from: no checkpoint at {path}")
    state = _state_of(_read(path))
    if cfg is not None and _load_foreign(model, cfg, state):
        return []
    own = model.state_dict()
    state = {
        k: v.to(own[k].dtype) if k in own and v.is_floating_point() else v
        for k, v in state.items()
        if not (k.endswith(NORMALIZER_PARAMETERS) and k not in own)
    }
    wrong = [
        f"{k} {tuple(v.shape)} -> {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    if wrong:
        raise ValueError(
            f"train.init_from: {path} holds another architecture: shapes differ for {wrong[:3]}"
        )
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith(NORMALIZER_PARAMETERS)]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"train.init_from: {path} holds another architecture: missing {missing[:3]} "
            f"({len(missing)} in all), unexpected {result.unexpected_keys[:3]} "
            f"({len(result.unexpected_keys)} in all)"
        )
    return list(result.missing_keys)
