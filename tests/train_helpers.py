"""A DETR config small enough to train a few steps in seconds on a CPU."""

from __future__ import annotations

from attnkit.config import load_config

TINY = {
    "data.name": "shapes",
    "data.num_train": 8,
    "data.num_val": 4,
    "data.seed": 3,
    "data.train_scales": [64, 80],
    "data.val_scale": 64,
    "data.max_size": 96,
    "data.crop_resize_scales": [64],
    "data.crop_min_size": 48,
    "data.crop_max_size": 64,
    "data.batch_size": 2,
    "data.num_workers": 0,
    "model.backbone": "resnet18",
    "model.pretrained_backbone": None,
    "model.hidden_dim": 32,
    "model.num_heads": 2,
    "model.enc_layers": 1,
    "model.dec_layers": 2,
    "model.dim_feedforward": 64,
    "model.num_queries": 6,
    "model.num_classes": 6,
    "train.epochs": 3,
    "train.lr": 1e-3,
    "train.lr_backbone": 1e-4,
    "train.lr_drop": 2,
    "train.eval_every_epochs": 0,
    "train.log_every_steps": 1,
    "train.device": "cpu",
}


def tiny_config(**overrides):
    return load_config(None, {**TINY, **overrides})
