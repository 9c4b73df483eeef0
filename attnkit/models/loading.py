"""Rebuild a model from a checkpoint file: attnkit's own (config inside) or official DETR."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from attnkit.config import config_from_dict, load_config
from attnkit.models.build import build_model


def model_from_checkpoint(checkpoint: str | Path, overrides=None, config=None, device="cpu"):
    """``(model, cfg)`` from a checkpoint written by ``attnkit train`` (its config is inside).

    ``config`` (a YAML path) replaces the stored config, e.g. for an official DETR checkpoint,
    whose keys are then mapped with ``load_official_detr``. Always ``weights_only=True``.
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if config is not None:
        cfg = load_config(config, overrides)
    elif isinstance(ckpt, dict) and "config" in ckpt:
        cfg = config_from_dict(ckpt["config"], overrides, source=f"config inside {path}")
    else:
        raise ValueError(f"{path} carries no config (not written by attnkit train?): pass --config")
    # The checkpoint holds every weight: the pretrained backbone file need not exist here.
    weights_cfg = replace(cfg, model=replace(cfg.model, pretrained_backbone=None))
    model = build_model(weights_cfg)
    state = ckpt.get("model", ckpt)
    if any(k.startswith("backbone.0.body.") for k in state):
        from attnkit.models.detr import load_official_detr

        load_official_detr(model, state)
    else:
        state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
        model.load_state_dict(state)
    return model.to(device).eval(), cfg


NORMALIZER_PARAMETERS = ("pre_alpha",)
"""Parameter names (suffixes) that belong to an attention normalizer, not to the architecture:
fine-tuning between normalizers may add or drop them."""


def init_from_checkpoint(model, checkpoint: str | Path) -> list[str]:
    """Load the weights of an attnkit or official DETR checkpoint into ``model`` for fine-tuning.

    ``checkpoint`` may be a run folder (its ``last.pt``). The architectures must agree; only
    normalizer parameters (alpha-entmax's ``pre_alpha``) may be missing on either side, so a
    softmax model can become an alpha-entmax one and back. Returns the keys left at their
    initialisation.
    """
    path = Path(checkpoint).expanduser()
    path = path / "last.pt" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"train.init_from: no checkpoint at {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else ckpt
    if any(k.startswith("backbone.0.body.") for k in state):
        from attnkit.models.detr import load_official_detr

        load_official_detr(model, state)
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
