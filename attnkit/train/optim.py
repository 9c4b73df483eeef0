"""DETR's optimiser: AdamW with parameter groups, and the step learning-rate drop.

Groups: the backbone at ``lr_backbone``; alpha-entmax's ``pre_alpha`` at ``alpha_lr_mult`` x lr
without weight decay (pitfall 8: alpha must be able to move); everything else at ``lr``. The lr
drops by ``lr_drop_factor`` at epoch ``lr_drop``; with ``alpha_keep_lr`` the alpha group is
excluded from the drop.
"""

from __future__ import annotations

import torch
from torch import nn

BACKBONE_PREFIX = "backbone."
ALPHA_SUFFIX = "pre_alpha"


def param_groups(model: nn.Module, train_cfg) -> list[dict]:
    """AdamW groups named ``default``, ``backbone`` and ``alpha`` (empty groups are left out)."""
    groups = {
        "default": {"params": [], "lr": train_cfg.lr, "weight_decay": train_cfg.weight_decay},
        "backbone": {
            "params": [],
            "lr": train_cfg.lr_backbone,
            "weight_decay": train_cfg.weight_decay,
        },
        "alpha": {
            "params": [],
            "lr": train_cfg.lr * train_cfg.alpha_lr_mult,
            "weight_decay": 0.0,
        },
    }
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        name = name.removeprefix("module.")  # DDP wrapper
        if name.endswith(ALPHA_SUFFIX):
            groups["alpha"]["params"].append(param)
        elif name.startswith(BACKBONE_PREFIX):
            groups["backbone"]["params"].append(param)
        else:
            groups["default"]["params"].append(param)
    return [{"name": k, **g} for k, g in groups.items() if g["params"]]


def build_optimizer(model: nn.Module, train_cfg) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, train_cfg), lr=train_cfg.lr)


def build_scheduler(optimizer, train_cfg) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-epoch schedule: x ``lr_drop_factor`` from epoch ``lr_drop`` on (alpha optionally kept)."""

    def drop(epoch: int) -> float:
        return train_cfg.lr_drop_factor if epoch >= train_cfg.lr_drop else 1.0

    def keep(epoch: int) -> float:
        return 1.0

    lambdas = [
        keep if (g.get("name") == "alpha" and train_cfg.alpha_keep_lr) else drop
        for g in optimizer.param_groups
    ]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
