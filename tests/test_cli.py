"""The `attnkit` command: help everywhere, data synth, config show and diff."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from attnkit.cli import main


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["data", "synth"],
        ["config", "show"],
        ["config", "diff"],
        ["workbook", "run"],
        ["workbook", "list"],
        ["bench"],
        ["train"],
        ["eval"],
        ["analyze"],
        ["pretrain-backbone"],
    ],
)
def test_every_command_has_help(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == 0
    assert "usage: attnkit" in capsys.readouterr().out


def test_console_script_is_installed():
    out = subprocess.run(
        [sys.executable, "-m", "attnkit.cli", "--help"], capture_output=True, text=True, check=True
    )
    assert "workbook" in out.stdout and "config" in out.stdout


def test_data_synth_writes_coco(tmp_path):
    assert main(["data", "synth", "--out", str(tmp_path), "--num-images", "3", "--seed", "1"]) == 0
    data = json.loads((tmp_path / "annotations" / "instances_train2017.json").read_text())
    assert len(data["images"]) == 3
    assert len(list((tmp_path / "val2017").glob("*.jpg"))) == 3


def test_config_show_and_diff(repo_root, tmp_path, capsys):
    base = str(repo_root / "configs/detr/base.yaml")
    tiny = str(repo_root / "configs/detr/shapes_tiny_entmax15.yaml")
    assert main(["config", "show", tiny, "train.lr=5e-5"]) == 0
    assert "lr: 5.0e-05" in capsys.readouterr().out
    assert main(["config", "diff", base, tiny]) == 0
    out = capsys.readouterr().out
    assert "model.attention.cross" in out and "'entmax15'" in out
    assert main(["config", "diff", base, base]) == 0
    assert "no differences" in capsys.readouterr().out


def test_config_errors_are_one_clear_line(repo_root, capsys):
    base = str(repo_root / "configs/detr/base.yaml")
    assert main(["config", "show", base, "train.lrr=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("attnkit: error:") and "did you mean 'train.lr'" in err


def test_reference_recipe_help_and_base_first(capsys):
    from attnkit.train import reference

    with pytest.raises(SystemExit) as exit_:
        reference.main(["--help"])
    assert exit_.value.code == 0
    assert "init_from" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # a fine-tuned model without its base run
        reference.main(["--normalizers", "softmax", "--runs", "/nonexistent/runs"])
    assert "train sparsemax first" in capsys.readouterr().err


def test_workbook_list_shows_each_parameter_type(capsys, repo_root):
    """The type a -p value is checked against, read off the default when not annotated."""
    workbook = str(repo_root / "notebooks" / "workbook.yaml")
    assert main(["workbook", "list", "--workbook", workbook, "--family", "detr"]) == 0
    listing = capsys.readouterr().out
    assert "num_samples: int = 12" in listing and "split: str = " in listing
