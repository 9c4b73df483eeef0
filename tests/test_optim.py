"""Optimiser groups and per-step schedules against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from attnkit.config.schema import TrainConfig
from attnkit.train.optim import build_optimizer, build_scheduler, lr_factor, param_groups


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
        self.blocks = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
        self.pos_embed = nn.Parameter(torch.zeros(1, 3, 4))
        self.head = nn.Linear(4, 2)


def test_lr_mult_longest_prefix_wins_and_overrides_the_backbone_rule():
    cfg = TrainConfig(lr=1e-3, lr_mult={"blocks.": 0.5, "blocks.1.": 0.1, "backbone.1": 2.0})
    model = Net()
    groups = {g["name"]: g for g in param_groups(model, cfg)}
    ids = {name: {id(p) for p in g["params"]} for name, g in groups.items()}
    assert ids["lr_mult:blocks.1."] == {id(model.blocks[1].weight), id(model.blocks[1].bias)}
    assert groups["lr_mult:blocks.1."]["lr"] == pytest.approx(1e-4)
    assert groups["lr_mult:blocks."]["lr"] == pytest.approx(5e-4)
    assert groups["lr_mult:backbone.1"]["lr"] == pytest.approx(2e-3)  # the LayerNorm
    assert ids["backbone"] == {id(model.backbone[0].weight), id(model.backbone[0].bias)}
    assert groups["backbone"]["lr"] == cfg.lr_backbone


def test_no_weight_decay_for_1d_parameters_and_named_tables():
    model = Net()
    cfg = TrainConfig(weight_decay=0.05, no_weight_decay_1d=True, no_weight_decay=["pos_embed"])
    groups = {g["name"]: g for g in param_groups(model, cfg)}
    no_decay = {id(p) for p in groups["default/no_decay"]["params"]}
    assert groups["default/no_decay"]["weight_decay"] == 0.0
    assert groups["default"]["weight_decay"] == 0.05
    assert id(model.pos_embed) in no_decay and id(model.head.bias) in no_decay
    assert {id(p) for p in groups["default"]["params"]} == {
        id(model.blocks[0].weight),
        id(model.blocks[1].weight),
        id(model.head.weight),
    }
    # The DETR recipe excludes nothing: exactly the reference groups.
    assert {g["name"] for g in param_groups(model, TrainConfig())} == {"default", "backbone"}


def test_sgd_with_nesterov_momentum():
    opt = build_optimizer(Net(), TrainConfig(optimizer="sgd", lr=0.1, nesterov=True))
    assert isinstance(opt, torch.optim.SGD)
    assert opt.defaults["momentum"] == 0.9 and opt.defaults["nesterov"]


def test_cosine_schedule_with_linear_warmup_matches_the_formula():
    cfg = TrainConfig(schedule="cosine", epochs=3, warmup_steps=4, min_lr_factor=0.1)
    spe, total = 10, 29  # the last step of the last epoch is step 29
    assert [lr_factor(s, cfg, spe) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    for step in (4, 10, 17, 29):
        progress = (step - 4) / (total - 4)
        expected = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))
        assert lr_factor(step, cfg, spe) == pytest.approx(expected)
    assert lr_factor(29, cfg, spe) == pytest.approx(0.1)


def test_step_schedule_is_stepped_per_iteration():
    cfg = TrainConfig(lr=1.0, lr_drop=2, lr_drop_factor=0.1, alpha_keep_lr=True)
    p, alpha = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD(
        [{"name": "default", "params": [p]}, {"name": "alpha", "params": [alpha]}], lr=1.0
    )
    sched = build_scheduler(opt, cfg, steps_per_epoch=3)
    lrs = []
    for _ in range(8):
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    assert [x[0] for x in lrs] == pytest.approx([1, 1, 1, 1, 1, 1, 0.1, 0.1])
    assert [x[1] for x in lrs] == pytest.approx([1.0] * 8)  # alpha_keep_lr
