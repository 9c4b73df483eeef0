"""Strict typed configs: inheritance, overrides, errors that name key, file and closest key."""

from __future__ import annotations

import pytest
import yaml

from attnkit.config import ConfigError, config_diff, load_config, save_config


def write(path, data):
    path.write_text(yaml.safe_dump(data))
    return path


def test_reference_config_holds_detr_hyperparameters(repo_root):
    cfg = load_config(repo_root / "configs/detr/base.yaml")
    assert cfg.train.lr == 1e-4 and cfg.train.lr_backbone == 1e-5  # pitfall 6: not swapped
    assert cfg.train.weight_decay == 1e-4 and cfg.train.clip_max_norm == 0.1
    assert cfg.model.pre_norm is False and cfg.model.num_queries == 100
    assert (cfg.model.hidden_dim, cfg.model.num_heads, cfg.model.dim_feedforward) == (256, 8, 2048)
    assert (cfg.loss.cost_class, cfg.loss.cost_bbox, cfg.loss.cost_giou) == (1.0, 5.0, 2.0)
    assert cfg.loss.eos_coef == 0.1 and cfg.train.lr_drop == 200


def test_every_shipped_config_loads(repo_root):
    paths = sorted((repo_root / "configs").rglob("*.yaml"))
    assert len(paths) >= 11
    for path in paths:
        load_config(path)


def test_inheritance_overrides_and_merging(tmp_path):
    write(tmp_path / "base.yaml", {"train": {"lr": 1e-3, "epochs": 5}, "model": {"num_heads": 4}})
    child = write(
        tmp_path / "child.yaml", {"_base_": "base.yaml", "train": {"epochs": 7}, "name": "c"}
    )
    cfg = load_config(child, ["model.attention.cross=sparsemax", "train.lr=2e-4"])
    assert cfg.train.epochs == 7  # child wins
    assert cfg.train.lr == pytest.approx(2e-4)  # override wins; "2e-4" parsed as float
    assert cfg.model.num_heads == 4  # merged from the base
    assert cfg.model.attention.cross == "sparsemax"
    assert cfg.model.attention.encoder == "softmax"  # untouched default
    cfg = load_config(child, {"model.attention.cross": "entmax15", "data.train_scales": [64, 96]})
    assert cfg.model.attention.cross == "entmax15" and cfg.data.train_scales == [64, 96]


def test_unknown_key_names_key_file_and_closest(tmp_path):
    path = write(tmp_path / "bad.yaml", {"model": {"hiden_dim": 128}})
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert "model.hiden_dim" in msg and str(path) in msg and "model.hidden_dim" in msg


def test_unknown_key_in_base_names_the_base_file(tmp_path):
    base = write(tmp_path / "base.yaml", {"train": {"weight_decy": 1e-4}})
    child = write(tmp_path / "child.yaml", {"_base_": "base.yaml", "name": "x"})
    with pytest.raises(ConfigError) as err:
        load_config(child)
    assert str(base) in str(err.value) and "did you mean 'train.weight_decay'" in str(err.value)


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("train.epochs=1.5", "'train.epochs' must be int"),
        ("model.pre_norm=maybe", "'model.pre_norm' must be bool"),
        ("train.lr=fast", "'train.lr' must be float"),
        ("model.attention.cross=sparsmax", "did you mean 'sparsemax'"),
        ("data.train_scales=[1, two]", "'data.train_scales[1]' must be int"),
        ("model.attentoin.cross=softmax", "did you mean 'model.attention'"),
        ("model.name=swin", "'model.name' must be one of 'detr'"),
        ("train=3", "must be a section"),
    ],
)
def test_wrong_values_are_errors_naming_the_override(override, fragment):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert fragment in str(err.value)
    assert f"override '{override}'" in str(err.value)


def test_malformed_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["train.lr"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_inheritance_loop_is_reported(tmp_path):
    write(tmp_path / "a.yaml", {"_base_": "b.yaml"})
    write(tmp_path / "b.yaml", {"_base_": "a.yaml"})
    with pytest.raises(ConfigError, match="loop"):
        load_config(tmp_path / "a.yaml")


def test_saved_config_round_trips_and_diffs(tmp_path, repo_root):
    cfg = load_config(repo_root / "configs/detr/shapes_tiny_sparsemax.yaml", ["train.lr=3e-4"])
    run_dir = tmp_path / "run"
    save_config(cfg, run_dir)
    assert load_config(run_dir) == cfg  # a run folder loads back to the same config
    rows = dict(
        (k, (a, b)) for k, a, b in config_diff(repo_root / "configs/detr/base.yaml", run_dir)
    )
    assert rows["train.lr"] == (1e-4, 3e-4)
    assert rows["model.attention.cross"] == ("softmax", "sparsemax")
    assert "train.weight_decay" not in rows
    assert config_diff(cfg, run_dir) == []
