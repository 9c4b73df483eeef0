"""`attnkit bench models`: parameter counts, FLOP counting, row order, output files, errors.

Timings are printed, never asserted."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from attnkit.bench.models import count_flops, main
from attnkit.cli import main as cli_main
from attnkit.config import load_config
from attnkit.errors import ConfigError, EnvError
from attnkit.models import build_model

CNN = "configs/cnn/synth_small.yaml"
VIT = "configs/vit/synth_softmax.yaml"
RESNET = "configs/cnn/cifar10_resnet18.yaml"
QUICK = ["--quick", "--threads", "1", "--batch", "2", "--device", "cpu"]
TINY_VIT = ["model.depth=1", "model.embed_dim=32", "model.num_heads=2"]


@pytest.fixture(autouse=True)
def _keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _run(tmp_path, *argv) -> tuple[list[dict], str]:
    out = tmp_path / "models.md"
    assert main([*argv, *QUICK, "--out", str(out)]) == 0
    return json.loads(out.with_suffix(".json").read_text())["rows"], out.read_text()


def _trainable(path: str, overrides=()) -> int:
    model = build_model(load_config(path, list(overrides)))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_flops_of_a_linear_layer():
    assert count_flops(nn.Linear(10, 20), torch.randn(1, 10)) == 2 * 10 * 20


def test_flops_of_a_conv():
    conv = nn.Conv2d(3, 8, kernel_size=3, padding=1, bias=False)
    # every one of the 8 x 5 x 5 outputs is 3 x 3 x 3 multiply-adds
    assert count_flops(conv, torch.randn(1, 3, 5, 5)) == 2 * (8 * 5 * 5) * (3 * 3 * 3)


def test_flops_through_keyword_inputs():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 6)

        def forward(self, images):
            return self.fc(images.flatten(1))

    assert count_flops(Net(), images=torch.randn(1, 2, 2)) == 2 * 4 * 6


def test_cnn_and_vit_rows(tmp_path, capsys):
    rows, markdown = _run(tmp_path, CNN, VIT)
    printed = capsys.readouterr().out
    assert [r["label"] for r in rows] == ["cnn/synth_small", "vit/synth_softmax"]
    for row, path in zip(rows, (CNN, VIT)):
        params = _trainable(path)
        assert row["params"] == params
        assert f"{params / 1e6:.3f}" in printed
        assert row["input"] == [3, 32, 32]
        assert row["flops"] > 0 and row["train_img_s"] > 0 and row["infer_img_s"] > 0
        assert len(row["latency_ms"]) == 3  # --quick
        assert row["train_rel"] is None  # no ResNet-18 row
    assert "torch threads 1" in printed and "torch " + torch.__version__ in printed
    table = [line for line in printed.splitlines() if line.startswith("|")]
    assert len(table) == 4 and len({len(line) for line in table}) == 1  # aligned
    assert "| config" in markdown and "vit/synth_softmax" in markdown


def test_overrides_and_img_size_reach_the_model(tmp_path):
    rows, _ = _run(tmp_path, VIT, *TINY_VIT, "--img-size", "16", "24")
    assert rows[0]["input"] == [3, 16, 24]
    assert rows[0]["params"] == _trainable(VIT, [*TINY_VIT, "model.img_size=[16,24]"])


def test_resnet18_goes_first_without_cifar_files(tmp_path, capsys):
    # data.root points nowhere: the benchmark never reads the dataset
    rows, _ = _run(tmp_path, CNN, RESNET, "data.root=/nonexistent/cifar", "--img-size", "8", "8")
    assert [r["label"] for r in rows] == ["cnn/cifar10_resnet18", "cnn/synth_small"]
    assert rows[0]["reference"] and rows[0]["params"] == _trainable(RESNET)
    assert rows[0]["train_rel"] == pytest.approx(1.0) and rows[1]["infer_rel"] > 0
    first = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")][1]
    assert "(ref)" in first and first.rstrip().endswith("1.00 |")


def test_a_folder_means_its_yaml_files(tmp_path, capsys):
    folder = tmp_path / "family"
    folder.mkdir()
    for name, width in (("b", 4), ("a", 8)):
        (folder / f"{name}.yaml").write_text(
            f"model:\n  name: cnn\n  arch: small\n  width: {width}\n"
        )
    (folder / "notes.txt").write_text("not a config")
    assert main([str(folder), *QUICK]) == 0
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert [line.split("|")[1].strip() for line in table[1:]] == ["family/a", "family/b"]


def test_missing_config_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="config not found: .*nope.yaml"):
        main([str(tmp_path / "nope.yaml"), *QUICK])


def test_folder_without_yaml(tmp_path):
    with pytest.raises(ConfigError, match="no \\*.yaml config in this folder"):
        main([str(tmp_path), *QUICK])


def test_cuda_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(EnvError, match="--device cuda but torch sees no CUDA GPU"):
        main([CNN, "--quick", "--device", "cuda"])


def test_detr_is_refused_before_anything_runs(capsys):
    with pytest.raises(ConfigError, match="detection model.*bench train_step"):
        main([CNN, "configs/detr/shapes_tiny_softmax.yaml", *QUICK])
    assert "|" not in capsys.readouterr().out


def test_cli_prints_the_error_as_one_line(tmp_path, capsys):
    assert cli_main(["bench", "models", str(tmp_path / "nope.yaml"), "--quick"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("attnkit: error: config not found") and "\n" not in err


def test_cli_help_lists_the_columns(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli_main(["bench", "models", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "usage: attnkit bench models" in out and "multiply-add as 2 FLOPs" in out
