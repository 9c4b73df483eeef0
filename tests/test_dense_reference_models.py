"""The shipped dense reference models (``checkpoints/dense_synth_<model>_<normalizer>.pt``): size,
provenance, and their validation MAE reproduced from the shipped fp16 weights.

Each was trained with ``attnkit train --config configs/dense/synth_<model>[_sparsemax].yaml`` (the
recorded command) on the synthetic height maps and exported with
``attnkit.models.reference.export_reference``; the dense notebooks' ``reference`` profile
analyses them.
"""

from __future__ import annotations

import json

import pytest
import torch

from attnkit.models.reference import REPO_CHECKPOINTS

SHIPPED = [(m, n) for m in ("swin_unet", "mit_segformer") for n in ("softmax", "sparsemax")]
IDS = [f"{m}_{n}" for m, n in SHIPPED]
MAX_BYTES = 8 * 2**20
MAX_MAE = 3.0  # metres; predicting the training mean everywhere gives about 6


def _path(model: str, normalizer: str):
    return REPO_CHECKPOINTS / f"dense_synth_{model}_{normalizer}.pt"


def _config(model: str, normalizer: str) -> str:
    suffix = "" if normalizer == "softmax" else f"_{normalizer}"
    return f"configs/dense/synth_{model}{suffix}.yaml"


@pytest.mark.parametrize(("model", "normalizer"), SHIPPED, ids=IDS)
def test_shipped_model_is_small_and_says_how_it_was_made(model, normalizer):
    path = _path(model, normalizer)
    assert path.is_file(), f"{path} missing"
    assert path.stat().st_size <= MAX_BYTES
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    provenance = json.loads(path.with_suffix(".provenance.json").read_text())
    assert provenance == ckpt["provenance"]
    assert _config(model, normalizer) in provenance["command"]
    assert provenance["steps"] > 0 and provenance["train_seconds"] > 0
    assert ckpt["config"]["model"]["attention"]["normalizer"] == normalizer
    log = [json.loads(x) for x in path.with_suffix(".metrics.jsonl").read_text().splitlines()]
    assert sum(r["kind"] == "eval" for r in log) >= 2


@pytest.mark.parametrize(("model", "normalizer"), SHIPPED, ids=IDS)
def test_shipped_model_reproduces_its_recorded_mae(model, normalizer, tmp_path):
    from attnkit.train.evaluate import evaluate_checkpoint

    path = _path(model, normalizer)
    overrides = ["data.num_train=4", "data.num_workers=0"]  # the val split needs only num_val
    metrics = evaluate_checkpoint(path, tmp_path, overrides=overrides, progress=False)
    log = [json.loads(x) for x in path.with_suffix(".metrics.jsonl").read_text().splitlines()]
    recorded = [r for r in log if r["kind"] == "eval"][-1]
    assert metrics["num_pixels"] == recorded["num_pixels"]
    assert metrics["mae"] == pytest.approx(recorded["mae"], abs=0.01)  # fp16 weights: rounding
    assert metrics["rmse"] == pytest.approx(recorded["rmse"], abs=0.02)
    assert metrics["mae"] < MAX_MAE
