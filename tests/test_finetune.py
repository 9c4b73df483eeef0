"""``train.init_from``: fine-tuning one normalizer's model from another's weights."""

from __future__ import annotations

import pytest
import torch

from attnkit.errors import CheckpointError
from attnkit.models import build_model
from attnkit.models.loading import init_from_checkpoint
from attnkit.train.loop import Trainer

from train_helpers import tiny_config


def _save(model, cfg, path):
    from attnkit.config import config_to_dict

    torch.save({"model": model.state_dict(), "config": config_to_dict(cfg)}, path)


def test_softmax_weights_become_an_alpha_entmax_model_and_back(tmp_path):
    source_cfg = tiny_config(**{"model.attention.cross": "softmax", "seed": 1})
    source = build_model(source_cfg)
    _save(source, source_cfg, tmp_path / "softmax.pt")
    target = build_model(tiny_config(**{"model.attention.cross": "alpha_entmax", "seed": 2}))
    kept = init_from_checkpoint(target, tmp_path / "softmax.pt")
    assert kept and all(k.endswith("pre_alpha") for k in kept)
    for name, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[name], value), name
    alpha_cfg = tiny_config(**{"model.attention.cross": "alpha_entmax"})
    _save(target, alpha_cfg, tmp_path / "alpha.pt")
    back = build_model(source_cfg)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "last.pt").write_bytes((tmp_path / "alpha.pt").read_bytes())
    assert init_from_checkpoint(back, tmp_path / "run") == []  # pre_alpha dropped
    for name, value in back.state_dict().items():
        assert torch.equal(target.state_dict()[name], value), name


def test_another_architecture_is_refused_by_name(tmp_path):
    cfg = tiny_config()
    _save(build_model(cfg), cfg, tmp_path / "a.pt")
    wider = build_model(tiny_config(**{"model.hidden_dim": 48}))
    with pytest.raises(ValueError, match="another architecture: shapes differ"):
        init_from_checkpoint(wider, tmp_path / "a.pt")
    deeper = build_model(tiny_config(**{"model.dec_layers": 3}))
    with pytest.raises(ValueError, match="missing .*decoder.layers.2"):
        init_from_checkpoint(deeper, tmp_path / "a.pt")
    with pytest.raises(CheckpointError, match="init_from"):
        init_from_checkpoint(deeper, tmp_path / "nothing.pt")


def test_trainer_starts_from_the_source_weights(tmp_path):
    source_cfg = tiny_config(**{"seed": 7})
    source = build_model(source_cfg)
    _save(source, source_cfg, tmp_path / "src.pt")
    cfg = tiny_config(
        **{"train.init_from": str(tmp_path / "src.pt"), "model.attention.cross": "sparsemax"}
    )
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    for name, value in source.state_dict().items():
        assert torch.equal(trainer.model.state_dict()[name], value), name
