"""Rebuild a model from a checkpoint file: attnkit's own (config inside) or official DETR."""

from __future__ import annotations

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
    model = build_model(cfg)
    state = ckpt.get("model", ckpt)
    if any(k.startswith("backbone.0.body.") for k in state):
        from attnkit.models.detr import load_official_detr

        load_official_detr(model, state)
    else:
        state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
        model.load_state_dict(state)
    return model.to(device).eval(), cfg
