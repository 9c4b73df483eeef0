"""``make reference-models`` end to end at toy size: backbone, base model, fine-tuned variants."""

from __future__ import annotations

import json

import torch

from attnkit.models.reference import REFERENCE_NORMALIZERS
from attnkit.train import reference

from train_helpers import TINY


def test_recipe_pretrains_trains_the_base_then_fine_tunes_and_exports(tmp_path, monkeypatch):
    checkpoints = tmp_path / "checkpoints"
    monkeypatch.setenv("ATTNKIT_CHECKPOINTS", str(checkpoints))
    tiny = {**TINY, "model.backbone": "tiny_cnn", "train.epochs": 1, "train.eval_every_epochs": 1}
    tiny["model.pretrained_backbone"] = "{checkpoints}/shapes_tiny_backbone.pt"
    overrides = [f"{k}={json.dumps(v)}" for k, v in tiny.items()]
    runs = tmp_path / "runs"
    argv = ["--runs", str(runs), "--quiet", "--pretrain-steps", "3", *overrides]
    assert reference.main(argv) == 0
    backbone = torch.load(checkpoints / "shapes_tiny_backbone.pt", weights_only=True)
    assert backbone["backbone"] == "tiny_cnn" and backbone["metrics"]["steps"] == 3
    base = torch.load(runs / reference.BASE / "last.pt", weights_only=True)
    for normalizer in REFERENCE_NORMALIZERS:
        shipped = torch.load(checkpoints / f"shapes_tiny_{normalizer}.pt", weights_only=True)
        cfg = shipped["config"]
        assert cfg["model"]["attention"]["cross"] == normalizer
        assert all(v.dtype != torch.float32 for v in shipped["model"].values())  # fp16 export
        provenance = json.loads(
            (checkpoints / f"shapes_tiny_{normalizer}.provenance.json").read_text()
        )
        assert "--pretrain-steps 3" in provenance["command"]
        assert "AP50" in provenance["final_metrics"]
        if normalizer == reference.BASE:
            assert cfg["train"]["init_from"] is None
        else:
            assert cfg["train"]["init_from"] == str(runs / reference.BASE)
            # The variant started from the base weights: its frozen first stage is unchanged.
            key = "backbone.body.stages.0.0.0.weight"
            assert torch.equal(shipped["model"][key], base["model"][key].half())
