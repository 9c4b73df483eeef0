"""The trainer logs every module's ``logged_values()`` (the Gaussian heads' centres) into
``metrics.jsonl``, at the values the model has at that step."""

from __future__ import annotations

import json

import torch

from attnkit.config import load_config
from attnkit.train.logged_values import logged_values
from attnkit.train.loop import train


def test_gaussian_centres_are_logged_with_each_training_record(repo_root, tmp_path):
    cfg = load_config(
        repo_root / "configs/sa_conv/synth_gaussian_anisotropic.yaml",
        [
            "data.num_train=16",
            "data.num_val=8",
            "data.batch_size=8",
            "data.num_workers=0",
            "model.depth=1",
            "model.hidden_dim=12",
            "model.ffn_dim=16",
            "train.epochs=1",
            "train.log_every_steps=1",
            "train.eval_every_epochs=0",
            "train.warmup_steps=0",
            "train.schedule=step",  # constant lr: a cosine reaches 0 at the last of 2 steps
        ],
    )
    train(cfg, tmp_path / "run", progress=False)
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "train"]
    key = "centre/layers.0.attention.positional"
    assert len(steps) == 2 and all(key in r for r in steps)
    assert (
        len(steps[0][key]) == 9 and len(steps[0]["precision/layers.0.attention.positional"][0]) == 2
    )
    assert steps[0][key] != steps[1][key]  # the centres learn, and the log follows them
    ckpt = torch.load(tmp_path / "run" / "last.pt", map_location="cpu", weights_only=False)
    final = ckpt["model"]["layers.0.attention.positional.centre"]
    torch.testing.assert_close(torch.tensor(steps[-1][key]), final.float(), atol=1e-4, rtol=0)


def test_modules_without_logged_values_add_nothing():
    assert logged_values(torch.nn.Linear(2, 2)) == {}
