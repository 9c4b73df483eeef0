"""The shipped reference models (``checkpoints/``): size, provenance and their AP on val.

The models are part of the repository (``make reference-models`` remakes them): a missing file
fails here rather than skipping. Each shipped model must reproduce the AP recorded in its provenance and reach AP50 >= 0.5 on the
synthetic val split, the project's bar for a model worth analysing.
"""

from __future__ import annotations

import json

import pytest
import torch

from attnkit.models.reference import REFERENCE_NORMALIZERS, REPO_CHECKPOINTS

MAX_BYTES = 8 * 2**20
MIN_AP50 = 0.5


@pytest.mark.parametrize("normalizer", REFERENCE_NORMALIZERS)
def test_shipped_checkpoint_is_small_and_says_how_it_was_made(normalizer):
    path = REPO_CHECKPOINTS / f"shapes_tiny_{normalizer}.pt"
    assert path.is_file(), f"{path} missing: run `make reference-models`"
    assert path.stat().st_size <= MAX_BYTES
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert ckpt["config"]["model"]["attention"]["cross"] == normalizer
    provenance = json.loads(path.with_suffix(".provenance.json").read_text())
    assert provenance == ckpt["provenance"]
    assert "attnkit.train.reference" in provenance["command"]
    assert len(provenance["git_revision"]) == 40
    assert provenance["train_seconds"] > 0 and provenance["steps"] > 0
    assert 0 < provenance["final_metrics"]["AP50"] <= 1
    log = path.with_suffix(".metrics.jsonl").read_text().splitlines()
    assert any(json.loads(line)["kind"] == "eval" for line in log)
    backbone = REPO_CHECKPOINTS / "shapes_tiny_backbone.pt"
    assert backbone.is_file() and backbone.stat().st_size <= MAX_BYTES


def _evaluate(normalizer: str, out_dir) -> dict:
    """What ``attnkit eval --checkpoint checkpoints/shapes_tiny_<normalizer>.pt`` reports.

    ``data.num_train`` is lowered so the test does not make the 2048 training images; the
    validation split depends only on ``num_val`` and the seed, so it is the same 128 images.
    """
    from attnkit.train.evaluate import evaluate_checkpoint

    path = REPO_CHECKPOINTS / f"shapes_tiny_{normalizer}.pt"
    overrides = ["data.num_train=4", "data.num_workers=0"]
    return evaluate_checkpoint(path, out_dir, overrides=overrides, progress=False)


@pytest.mark.parametrize("normalizer", REFERENCE_NORMALIZERS)
def test_shipped_checkpoint_reproduces_its_recorded_ap_and_reaches_the_target(normalizer, tmp_path):
    metrics = _evaluate(normalizer, tmp_path)
    assert metrics["images"] == 128
    path = REPO_CHECKPOINTS / f"shapes_tiny_{normalizer}.pt"
    shipped = json.loads(path.with_suffix(".provenance.json").read_text())["final_metrics"]
    # fp16 weights: the AP of the shipped file is that of the fp32 run, to rounding.
    assert metrics["AP50"] == pytest.approx(shipped["AP50"], abs=0.01)
    assert metrics["AP"] == pytest.approx(shipped["AP"], abs=0.01)
    assert metrics["AP50"] >= MIN_AP50


@pytest.mark.slow
def test_the_default_workbook_profile_hands_detectors_to_the_analyses(tmp_path, repo_root):
    """detr/01 of ``make workbook`` (default profile) fine-tunes each variant from the shipped
    base; the weakest, softmax, must still detect (AP50 >= 0.5 on the 128 val images) so that
    02-06 analyse detectors. Same settings as the notebook builds from the profile (2 min)."""
    import yaml

    from attnkit.config import load_config
    from attnkit.train.loop import train

    spec = yaml.safe_load((repo_root / "notebooks" / "workbook.yaml").read_text())
    (entry,) = [e for e in spec["notebooks"] if e["family"] == "detr" and e["id"] == "01"]
    p = entry["profiles"]["default"]["parameters"]
    settings = {
        "model.attention.cross": "softmax",
        "train.epochs": p["epochs"],
        "train.eval_every_epochs": p["epochs"],
        "train.init_from": p["init_from"],
        "data.num_train": p["num_train"],
        "data.num_val": p["num_val"],
        **p["overrides"],
    }
    cfg = load_config(repo_root / "configs" / "detr" / "shapes_tiny_softmax.yaml", settings)
    summary = train(cfg, tmp_path, progress=False)
    assert summary["AP50"] >= MIN_AP50
