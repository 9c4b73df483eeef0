"""Rebuild a model from a checkpoint file: attnkit's own (config inside) or a foreign format.

Foreign formats (official DETR, timm) are declared by each family
(``Family.foreign_weights``); this module never names a family.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from attnkit.config import config_diff, config_from_dict, load_config
from attnkit.errors import CheckpointError
from attnkit.models.build import build_model
from attnkit.models.registry import family_of
from attnkit.runfiles import resolve_checkpoint
from attnkit.train.checkpoint import load_checkpoint

__all__ = ["NORMALIZER_PARAMETERS", "init_from_checkpoint", "model_from_checkpoint"]

PRETRAINED_FIELDS = ("pretrained_backbone", "pretrained")
"""Model-config fields naming weight files used at initialisation only: a checkpoint holds every
weight, so they are cleared when a model is rebuilt from one (the file need not exist here)."""

NORMALIZER_PARAMETERS = ("pre_alpha",)
"""Parameter names (suffixes) that belong to an attention normalizer, not to the architecture:
fine-tuning between normalizers may add or drop them."""


def _state_of(ckpt: dict, path: Path) -> dict:
    """The model state dict inside ``ckpt`` (a checkpoint dict or a bare state dict)."""
    if "body" in ckpt and "backbone" in ckpt and "model" not in ckpt:
        raise CheckpointError(
            f"{path} is a backbone file written by `attnkit pretrain-backbone`, not a model "
            "checkpoint: point model.pretrained_backbone at it and train a model"
        )
    state = ckpt.get("model", ckpt)
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{path} holds no model weights")
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(
            f"{path} is not a model checkpoint: entries such as {bad[:3]} are not tensors"
        )
    return state


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
    try:
        family.foreign_weights[fmt][1](model, state)
    except (RuntimeError, KeyError, ValueError) as err:
        if isinstance(err, CheckpointError):
            raise
        raise CheckpointError(
            f"the {fmt} weights do not fit the {cfg.model.name} model of this config: "
            f"{' '.join(str(err).split())[:300]}"
        ) from err
    return True


def describe_mismatch(own: dict, state: dict) -> str:
    """What differs between a model's state dict and a checkpoint's: shapes, then keys."""
    wrong = [
        f"{k} {tuple(v.shape)} in the file, {tuple(own[k].shape)} in the model"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    parts = []
    if wrong:
        parts.append(f"{len(wrong)} shapes differ, e.g. {wrong[0]}")
    if missing:
        parts.append(f"{len(missing)} weights missing from the file, e.g. {missing[0]}")
    if extra:
        parts.append(f"{len(extra)} unexpected weights in the file, e.g. {extra[0]}")
    return "; ".join(parts)


TRAINING_ONLY_FIELDS = ("dropout", "drop_rate", "attn_drop_rate", "drop_path_rate")
"""Model-config fields that only act in training mode: evaluating under other values is fine."""


def _model_diff(stored: dict, cfg) -> list[str]:
    """The ``model.*`` keys that differ between a checkpoint's config and ``cfg`` in a way that
    changes what the weights compute (not weight files, not training-only dropout)."""
    before = _without_pretrained(config_from_dict(stored, source="the checkpoint's config"))
    rows = config_diff(before, _without_pretrained(cfg))
    return [
        f"{k} {a!r} -> {b!r}"
        for k, a, b in rows
        if k.startswith("model.") and k.rsplit(".", 1)[-1] not in TRAINING_ONLY_FIELDS
    ]


def model_from_checkpoint(
    checkpoint: str | Path, overrides=None, config=None, device="cpu", allow_model_change=False
):
    """``(model, cfg)`` from a checkpoint written by ``attnkit train`` (its config is inside).

    ``checkpoint`` may be a run folder. ``config`` (a YAML path) replaces the stored config, e.g.
    for a foreign checkpoint (official DETR, timm), whose keys are then mapped by the family's
    loader. When the checkpoint carries its own config and ``config`` or ``overrides`` change
    its ``model`` section (another normalizer, say), that is refused unless
    ``allow_model_change`` (``--model-from-config``): weights of one architecture are never run
    under another by accident (pitfall 7). Always ``weights_only=True``; every problem is a
    :class:`CheckpointError` (or :class:`ConfigError`) naming the file.
    """
    path = resolve_checkpoint(checkpoint)
    ckpt = load_checkpoint(path)
    stored = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else None
    state = _state_of(ckpt, path)
    if config is not None:
        cfg = load_config(config, overrides)
    elif stored is not None:
        cfg = config_from_dict(stored, overrides, source=f"config inside {path}")
    else:
        raise CheckpointError(
            f"{path} carries no config (not written by `attnkit train`?): pass --config with "
            "the config of its architecture"
        )
    if stored is not None and (config is not None or overrides) and not allow_model_change:
        changed = _model_diff(stored, cfg)
        if changed:
            raise CheckpointError(
                f"{path} was trained with another model than asked for: {'; '.join(changed[:3])}"
                f"{f' (+{len(changed) - 3} more)' if len(changed) > 3 else ''}; drop those "
                "changes, or pass --model-from-config to run these weights under the new model "
                "on purpose"
            )
    model = build_model(_without_pretrained(cfg))
    if not _load_foreign(model, cfg, state):
        own = model.state_dict()
        state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
        mismatch = describe_mismatch(own, state)
        if mismatch:
            raise CheckpointError(
                f"{path} does not fit the {cfg.model.name} model of its config: {mismatch}"
            )
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
        raise CheckpointError(f"train.init_from: no checkpoint at {path}")
    state = _state_of(load_checkpoint(path), path)
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
        raise CheckpointError(
            f"train.init_from: {path} holds another architecture: shapes differ for {wrong[:3]}"
        )
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith(NORMALIZER_PARAMETERS)]
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"train.init_from: {path} holds another architecture: missing {missing[:3]} "
            f"({len(missing)} in all), unexpected {result.unexpected_keys[:3]} "
            f"({len(result.unexpected_keys)} in all)"
        )
    return list(result.missing_keys)
