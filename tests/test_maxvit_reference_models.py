"""The shipped MaxViT reference models (``checkpoints/maxvit_synth_<normalizer>.pt``): size,
provenance, and their val accuracy reproduced from the shipped fp16 weights.

Trained with ``attnkit train --config configs/maxvit/synth_<normalizer>.yaml`` (the recorded
command; 10 epochs on the synthetic 32x32 set) and exported with
``attnkit.models.reference.export_reference``; the maxvit notebooks' ``reference`` profile
analyses them.
"""

from __future__ import annotations

import json

import pytest
import torch

from attnkit.models.reference import REPO_CHECKPOINTS

SHIPPED = ("softmax", "sparsemax", "entmax15", "alpha_entmax")
MAX_BYTES = 8 * 2**20
MIN_TOP1 = 0.5  # a model worth analysing: half the synthetic val set right (chance: 0.1)


def _path(normalizer: str):
    return REPO_CHECKPOINTS / f"maxvit_synth_{normalizer}.pt"


@pytest.mark.parametrize("normalizer", SHIPPED)
def test_shipped_model_is_small_and_says_how_it_was_made(normalizer):
    path = _path(normalizer)
    assert path.is_file(), f"{path} missing"
    assert path.stat().st_size <= MAX_BYTES
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    provenance = json.loads(path.with_suffix(".provenance.json").read_text())
    assert provenance == ckpt["provenance"]
    assert f"configs/maxvit/synth_{normalizer}.yaml" in provenance["command"]
    assert provenance["steps"] > 0 and provenance["train_seconds"] > 0
    attention = ckpt["config"]["model"]["attention"]
    assert attention["block"]["normalizer"] == attention["grid"]["normalizer"] == normalizer
    log = [json.loads(x) for x in path.with_suffix(".metrics.jsonl").read_text().splitlines()]
    assert any(r["kind"] == "eval" for r in log)


@pytest.mark.parametrize("normalizer", SHIPPED)
def test_shipped_model_reproduces_its_recorded_accuracy(normalizer, tmp_path):
    from attnkit.train.evaluate import evaluate_checkpoint

    path = _path(normalizer)
    overrides = ["data.num_train=4", "data.num_workers=0"]  # the val split needs only num_val
    metrics = evaluate_checkpoint(path, tmp_path, overrides=overrides, progress=False)
    recorded = json.loads(path.with_suffix(".provenance.json").read_text())["final_metrics"]
    assert metrics["num_samples"] == 1000
    assert metrics["top1"] == pytest.approx(recorded["top1"], abs=0.01)  # fp16 weights: rounding
    assert metrics["top1"] >= MIN_TOP1
