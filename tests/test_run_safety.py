"""Nothing earlier is lost: torn logs and partial checkpoints of a killed run, output folders
holding another run, evaluations next to a training run, constraints checked on load."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from attnkit.config import ConfigError, config_diff, load_config
from attnkit.config.constraints import ascending
from attnkit.errors import CheckpointError, OutputError
from attnkit.models.loading import model_from_checkpoint
from attnkit.train.evaluate import evaluate_checkpoint
from attnkit.train.logger import read_metrics
from attnkit.train.loop import train

from train_helpers import tiny_config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    train(tiny_config(**{"train.max_steps": 2}), out, progress=False)
    return out


def test_resume_drops_a_torn_metrics_line_and_partial_checkpoints(tmp_path):
    cfg = tiny_config(**{"train.max_steps": 2})
    train(cfg, tmp_path, progress=False)
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"kind": "train", "step": 3, "lo')  # killed mid-write
    (tmp_path / "last.pt.abc123.tmp").write_bytes(b"partial")  # killed inside save_checkpoint
    with pytest.warns(UserWarning, match="torn last line"):
        summary = train(
            tiny_config(**{"train.max_steps": 3}), tmp_path, resume=True, progress=False
        )
    assert summary["step"] == 3
    assert not list(tmp_path.glob("*.tmp"))
    steps = [r["step"] for r in read_metrics(tmp_path) if r["kind"] == "train"]
    assert steps == [1, 2, 3]


def test_overwrite_starts_afresh_and_without_it_nothing_is_touched(tmp_path):
    train(tiny_config(**{"train.max_steps": 2}), tmp_path, progress=False)
    before = (tmp_path / "last.pt").read_bytes()
    with pytest.raises(OutputError, match="--overwrite"):
        train(tiny_config(**{"train.max_steps": 1}), tmp_path, progress=False)
    assert (tmp_path / "last.pt").read_bytes() == before
    summary = train(tiny_config(**{"train.max_steps": 1}), tmp_path, progress=False, overwrite=True)
    assert summary["step"] == 1
    assert [r["step"] for r in read_metrics(tmp_path) if r["kind"] == "train"] == [1]


def test_a_killed_run_without_checkpoint_is_not_silently_reused(tmp_path):
    (tmp_path / "config.yaml").write_text("name: killed before its first checkpoint\n")
    with pytest.raises(OutputError, match=r"config.yaml\): pass --overwrite"):
        train(tiny_config(**{"train.max_steps": 1}), tmp_path, progress=False)


def test_eval_writes_its_own_files_next_to_the_run(run):
    config_before = (run / "config.yaml").read_text()
    evaluate_checkpoint(run, run, progress=False)
    assert (run / "config.yaml").read_text() == config_before
    assert config_diff(run, run / "eval_config.yaml") == []
    assert json.loads((run / "metrics.json").read_text())["images"] == 4
    with pytest.raises(OutputError, match="earlier `attnkit eval`"):
        evaluate_checkpoint(run, run, progress=False)
    evaluate_checkpoint(run, run, progress=False, overwrite=True)


def test_a_checkpoint_is_not_run_under_another_model_by_accident(run):
    with pytest.raises(CheckpointError, match="model.attention.cross 'softmax' -> 'sparsemax'"):
        model_from_checkpoint(run, ["model.attention.cross=sparsemax"])
    model, cfg = model_from_checkpoint(
        run, ["model.attention.cross=sparsemax"], allow_model_change=True
    )
    assert cfg.model.attention.cross == "sparsemax"
    # dropout only acts in training: evaluating under another rate is not a model change
    model_from_checkpoint(run, ["model.dropout=0.0"])
    with pytest.raises(CheckpointError, match="shapes differ"):
        model_from_checkpoint(run, ["model.dim_feedforward=32"], allow_model_change=True)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.epochs=0", "'train.epochs' must be > 0"),
        ("train.lr=0", "'train.lr' must be > 0"),
        ("train.lr=.nan", "'train.lr' must be > 0"),
        ("data.hflip_prob=1.5", r"'data.hflip_prob' must be in \[0, 1\]"),
        ("train.max_steps=0", "'train.max_steps' must be > 0"),
        ("data.train_scales=[]", "'data.train_scales' must be non-empty"),
        ("data.train_scales=[480,-1]", r"'data.train_scales\[1\]' must be > 0"),
        (
            "model.num_heads=3",
            "'model.hidden_dim' \\(256\\) must be divisible by 'model.num_heads'",
        ),
        ("train.lr_mult={backbone: -1}", "'train.lr_mult.backbone' must be >= 0"),
    ],
)
def test_value_constraints_name_the_key_and_source(override, message):
    with pytest.raises(ConfigError, match=message) as err:
        load_config(None, [override])
    assert f"override '{override}'" in str(err.value)


def test_constraints_hold_for_every_family_and_an_empty_file_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="'model.img_size' .* divisible by 'model.patch_size'"):
        load_config(None, {"model.name": "vit", "model.patch_size": 5})
    with pytest.raises(ConfigError, match="'model.embed_dim' .* divisible by 'model.num_heads'"):
        load_config(None, {"model.name": "vit", "model.num_heads": 5})
    with pytest.raises(ConfigError, match="'model.width' must be > 0"):
        load_config(None, {"model.name": "cnn", "model.width": 0})
    bins = ascending("bins")
    assert bins.message(SimpleNamespace(bins=[0.0, 1.0, 5.0])) is None
    assert "strictly increasing" in bins.message(SimpleNamespace(bins=[2.0, 1.0]))
    (tmp_path / "empty.yaml").write_text("# to do\n")
    with pytest.raises(ConfigError, match="empty"):
        load_config(tmp_path / "empty.yaml")
