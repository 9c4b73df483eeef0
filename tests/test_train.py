"""Training: parameter groups, lr drop, exact resume, atomic checkpoints, NaN guard, eval."""

from __future__ import annotations

import json

import pytest
import torch

from attnkit.cli import main
from attnkit.errors import OutputError
from attnkit.models import build_model
from attnkit.train import checkpoint as ckpt_mod
from attnkit.train.checkpoint import load_checkpoint
from attnkit.train.loop import Trainer, TrainingError, train
from attnkit.train.optim import build_optimizer, build_scheduler
from attnkit.train.sampling import ResumableSampler

from train_helpers import TINY, tiny_config


def test_param_groups_follow_the_reference_recipe():
    cfg = tiny_config(**{"model.attention.cross": "alpha_entmax", "train.alpha_keep_lr": True})
    model = build_model(cfg)
    opt = build_optimizer(model, cfg.train)
    groups = {g["name"]: g for g in opt.param_groups}
    assert groups["default"]["lr"] == 1e-3 and groups["backbone"]["lr"] == 1e-4
    assert groups["alpha"]["lr"] == pytest.approx(1e-2) and groups["alpha"]["weight_decay"] == 0
    assert groups["default"]["weight_decay"] == 1e-4
    alpha_ids = {id(p) for n, p in model.named_parameters() if n.endswith("pre_alpha")}
    assert alpha_ids and alpha_ids == {id(p) for p in groups["alpha"]["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[id(p)].startswith("backbone.") for p in groups["backbone"]["params"])
    sched = build_scheduler(opt, cfg.train, steps_per_epoch=1)
    for _ in range(2):
        opt.step()  # no gradients: a no-op, but the scheduler expects it first
        sched.step()
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["default"] == pytest.approx(1e-4) and lrs["backbone"] == pytest.approx(1e-5)
    assert lrs["alpha"] == pytest.approx(1e-2)  # alpha_keep_lr: excluded from the drop


def test_sampler_is_seeded_sharded_and_skippable():
    full = ResumableSampler(10, seed=1)
    full.set_epoch(2)
    order = [i for _, i in full]
    assert sorted(order) == list(range(10))
    again = ResumableSampler(10, seed=1)
    again.set_epoch(2, start=4)
    assert [i for _, i in again] == order[4:]
    ranks = [ResumableSampler(10, seed=1, rank=r, world_size=3) for r in range(3)]
    for s in ranks:
        s.set_epoch(2)
    shards = [[i for _, i in s] for s in ranks]
    assert all(len(s) == 4 for s in shards) and set(sum(shards, [])) == set(range(10))


def final_weights(path):
    return load_checkpoint(path / "last.pt")["model"]


def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    """4 steps straight vs 3 steps (mid-epoch), stop, resume to 4: same weights bit for bit."""
    cfg = tiny_config(**{"train.max_steps": 6, "model.dropout": 0.1})  # dropout uses the RNG
    train(cfg, tmp_path / "straight", progress=False)
    train(
        tiny_config(**{"train.max_steps": 3, "model.dropout": 0.1}),
        tmp_path / "cut",
        progress=False,
    )
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["epoch_step"] == 3  # mid-epoch
    train(cfg, tmp_path / "cut", resume=True, progress=False)
    a, b = final_weights(tmp_path / "straight"), final_weights(tmp_path / "cut")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    log = [
        json.loads(line) for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in log if r["kind"] == "train"] == list(range(1, 7))


def test_existing_run_is_not_overwritten_and_resume_checks_config(tmp_path):
    cfg = tiny_config(**{"train.max_steps": 1})
    train(cfg, tmp_path, progress=False)
    with pytest.raises(OutputError, match="--resume to continue it"):
        Trainer(cfg, tmp_path, progress=False)
    with pytest.raises(TrainingError, match="train.lr"):
        Trainer(tiny_config(**{"train.max_steps": 2, "train.lr": 5e-4}), tmp_path, resume=True)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    ckpt_mod.save_checkpoint({"model": {"w": torch.ones(3)}, "step": 1}, path)

    def broken_save(obj, f):
        f.write(b"partial")
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(ckpt_mod.torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        ckpt_mod.save_checkpoint({"model": {"w": torch.zeros(3)}, "step": 2}, path)
    kept = ckpt_mod.load_checkpoint(path)
    assert kept["step"] == 1 and torch.equal(kept["model"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    cfg = tiny_config(**{"train.max_steps": 5, "train.checkpoint_every_steps": 2})
    trainer = Trainer(cfg, tmp_path, progress=False)
    original = trainer.criterion.forward
    calls = {"n": 0}

    def poisoned(outputs, targets):
        calls["n"] += 1
        losses = original(outputs, targets)
        if calls["n"] == 3:
            losses["loss"] = losses["loss"] * float("nan")
        return losses

    monkeypatch.setattr(trainer.criterion, "forward", poisoned)
    with pytest.raises(TrainingError, match="at step 3") as err:
        trainer.fit()
    assert "last.pt" in str(err.value)
    kept = load_checkpoint(tmp_path / "last.pt")
    assert kept["step"] == 2
    assert all(torch.isfinite(v).all() for v in kept["model"].values() if v.is_floating_point())


def test_train_and_eval_commands_write_their_files(tmp_path, capsys):
    out = tmp_path / "run"
    args = [
        "train",
        "--config",
        "configs/detr/shapes_tiny_softmax.yaml",
        "--out",
        str(out),
        "--quiet",
    ]
    overrides = [f"{k}={json.dumps(v)}" for k, v in TINY.items()]
    assert main([*args, *overrides, "train.max_steps=2", "train.eval_every_epochs=1"]) == 0
    for name in ("config.yaml", "last.pt", "metrics.jsonl", "train_summary.json"):
        assert (out / name).is_file(), name
    assert list((out / "tb").iterdir())  # TensorBoard events
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train_rec = [r for r in records if r["kind"] == "train"]
    assert {
        "loss",
        "loss_ce",
        "loss_bbox",
        "loss_giou",
        "class_error",
        "cardinality_error",
        "lr/default",
        "lr/backbone",
        "time/iter",
        "time/data",
        "memory_mb",
    } <= set(train_rec[0])
    assert any(r["kind"] == "eval" and "AP50" in r for r in records)
    capsys.readouterr()
    assert (
        main(
            ["eval", "--checkpoint", str(out / "last.pt"), "--out", str(tmp_path / "ev"), "--quiet"]
        )
        == 0
    )
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert {"AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L"} <= set(metrics)
    assert all(-1 <= metrics[k] <= 1 for k in ("AP", "AP50"))
    detections = json.loads((tmp_path / "ev" / "detections.json").read_text())
    assert detections and {"image_id", "category_id", "bbox", "score"} <= set(detections[0])
