"""The shipped classification reference models (``checkpoints/<family>_synth_<model>.pt``): size,
provenance, and their val accuracy reproduced from the shipped fp16 weights.

Each was trained with ``attnkit train --config configs/<family>/synth_<model>.yaml`` (the recorded
command) and exported with ``attnkit.models.reference.export_reference``; the notebooks'
``reference`` profile analyses them.
"""

from __future__ import annotations

import json

import pytest
import torch

from attnkit.models.reference import REPO_CHECKPOINTS

SHIPPED = [
    *(("sa_conv", m) for m in ("gaussian_isotropic", "gaussian_anisotropic", "learned2d_content")),
    ("sa_conv", "resnet18"),
    *(("maxvit", n) for n in ("softmax", "sparsemax", "entmax15", "alpha_entmax")),
]
IDS = [f"{family}_{model}" for family, model in SHIPPED]
MAX_BYTES = 8 * 2**20
MIN_TOP1 = 0.5  # a model worth analysing: half the synthetic val set right (chance: 0.1)


def _path(family: str, model: str):
    return REPO_CHECKPOINTS / f"{family}_synth_{model}.pt"


@pytest.mark.parametrize(("family", "model"), SHIPPED, ids=IDS)
def test_shipped_model_is_small_and_says_how_it_was_made(family, model):
    path = _path(family, model)
    assert path.is_file(), f"{path} missing"
    assert path.stat().st_size <= MAX_BYTES
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    provenance = json.loads(path.with_suffix(".provenance.json").read_text())
    assert provenance == ckpt["provenance"]
    assert f"configs/{family}/synth_{model}.yaml" in provenance["command"]
    assert provenance["steps"] > 0 and provenance["train_seconds"] > 0
    log = [json.loads(x) for x in path.with_suffix(".metrics.jsonl").read_text().splitlines()]
    assert any(r["kind"] == "eval" for r in log)
    if model.startswith("gaussian"):  # the centres were followed over training
        assert any(k.startswith("centre/") for k in log[0])
    if family == "maxvit":  # the same normalizer in block and grid attention
        attention = ckpt["config"]["model"]["attention"]
        assert attention["block"]["normalizer"] == attention["grid"]["normalizer"] == model


@pytest.mark.parametrize(("family", "model"), SHIPPED, ids=IDS)
def test_shipped_model_reproduces_its_recorded_accuracy(family, model, tmp_path):
    from attnkit.train.evaluate import evaluate_checkpoint

    path = _path(family, model)
    overrides = ["data.num_train=4", "data.num_workers=0"]  # the val split needs only num_val
    metrics = evaluate_checkpoint(path, tmp_path, overrides=overrides, progress=False)
    recorded = json.loads(path.with_suffix(".provenance.json").read_text())["final_metrics"]
    assert metrics["num_samples"] == 1000
    assert metrics["top1"] == pytest.approx(recorded["top1"], abs=0.01)  # fp16 weights: rounding
    assert metrics["top1"] >= MIN_TOP1
