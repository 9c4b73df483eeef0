"""The optimiser (AdamW or SGD) with parameter groups, and the per-step learning-rate schedule.

Groups, by parameter name:

- ``alpha``: alpha-entmax's ``pre_alpha`` at ``alpha_lr_mult`` x lr, never weight decay
  (pitfall 8: alpha must be able to move);
- ``backbone``: names starting with ``backbone.`` at ``lr_backbone`` (DETR's convention);
- ``lr_mult:<prefix>``: names starting with a prefix of ``train.lr_mult`` at lr x its multiplier
  (the longest matching prefix wins; it also overrides ``backbone.``);
- ``default``: everything else at ``lr``.

Each group splits off a ``*/no_decay`` twin for the parameters excluded from weight decay
(``no_weight_decay_1d``: norm weights and biases; ``no_weight_decay``: name substrings such as
``pos_embed`` or ``relative_position_bias_table``). The DETR recipe excludes nothing but
``pre_alpha``, so its groups are exactly ``default``, ``backbone`` and ``alpha``.

The schedule is a factor of each group's base lr, evaluated at every optimiser step: linear
warm-up over ``warmup_steps``, then ``step`` (x ``lr_drop_factor`` from epoch ``lr_drop`` on) or
``cosine`` (down to ``min_lr_factor`` at the last step of the last epoch). With
``alpha_keep_lr`` the alpha group keeps its lr after the warm-up.
"""

from __future__ import annotations

import math

import torch
from torch import nn

BACKBONE_PREFIX = "backbone."
ALPHA_SUFFIX = "pre_alpha"


def _base_group(name: str, train_cfg) -> tuple[str, float]:
    """The group name and base lr of parameter ``name`` (before the weight-decay split)."""
    if name.endswith(ALPHA_SUFFIX):
        return "alpha", train_cfg.lr * train_cfg.alpha_lr_mult
    prefixes = [p for p in train_cfg.lr_mult if name.startswith(p)]
    if prefixes:
        prefix = max(prefixes, key=len)
        return f"lr_mult:{prefix}", train_cfg.lr * train_cfg.lr_mult[prefix]
    if name.startswith(BACKBONE_PREFIX):
        return "backbone", train_cfg.lr_backbone
    return "default", train_cfg.lr


def _decays(name: str, param: nn.Parameter, train_cfg) -> bool:
    if name.endswith(ALPHA_SUFFIX):
        return False
    if train_cfg.no_weight_decay_1d and param.ndim <= 1:
        return False
    return not any(pattern in name for pattern in train_cfg.no_weight_decay)


def param_groups(model: nn.Module, train_cfg) -> list[dict]:
    """Optimiser groups, each with a ``name`` (see the module docstring); empty ones left out."""
    groups: dict[str, dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        name = name.removeprefix("module.")  # DDP wrapper
        group, lr = _base_group(name, train_cfg)
        decay = _decays(name, param, train_cfg)
        if not decay and group != "alpha":
            group += "/no_decay"
        entry = groups.setdefault(
            group,
            {
                "name": group,
                "params": [],
                "lr": lr,
                "weight_decay": train_cfg.weight_decay if decay else 0.0,
            },
        )
        entry["params"].append(param)
    first = {"default": 0, "backbone": 1, "alpha": 2}  # DETR's groups keep their order
    return sorted(groups.values(), key=lambda g: (first.get(g["name"], 3), g["name"]))


def build_optimizer(model: nn.Module, train_cfg) -> torch.optim.Optimizer:
    """AdamW (DETR, ViT) or SGD with momentum (the CIFAR recipes) over :func:`param_groups`."""
    groups = param_groups(model, train_cfg)
    if train_cfg.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=train_cfg.lr, momentum=train_cfg.momentum, nesterov=train_cfg.nesterov
        )
    return torch.optim.AdamW(groups, lr=train_cfg.lr)


def lr_factor(step: int, train_cfg, steps_per_epoch: int, keep: bool = False) -> float:
    """The lr factor at optimiser step ``step`` (0-based: the step about to be taken)."""
    warmup = train_cfg.warmup_steps
    if step < warmup:
        return (step + 1) / warmup
    if keep:
        return 1.0
    if train_cfg.schedule == "cosine":
        total = max(train_cfg.epochs * steps_per_epoch - 1, warmup + 1)
        progress = min(1.0, (step - warmup) / (total - warmup))
        floor = train_cfg.min_lr_factor
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    drop = step >= train_cfg.lr_drop * steps_per_epoch
    return train_cfg.lr_drop_factor if drop else 1.0


def build_scheduler(
    optimizer, train_cfg, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step schedule (call ``scheduler.step()`` after every optimiser step)."""

    def for_group(group: dict):
        keep = group.get("name") == "alpha" and train_cfg.alpha_keep_lr
        return lambda step: lr_factor(step, train_cfg, steps_per_epoch, keep)

    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, [for_group(g) for g in optimizer.param_groups]
    )
