"""`attnkit bench encoders`: ratios against each encoder's timm peer and its softmax version."""

from __future__ import annotations

import pytest

from attnkit.bench.encoders import format_table, main


def test_ratios_per_encoder_group():
    times = {
        "attnkit Swin-T softmax": [100.0],
        "attnkit Swin-T sparsemax": [120.0],
        "timm swin_tiny_patch4_window7_224": [125.0],
        "attnkit MiT-b0 softmax": [20.0],
        "timm PVTv2 (MiT-b0 settings)": [25.0],
    }
    rows = format_table(times).splitlines()[2:]
    assert rows[0] == "| attnkit Swin-T softmax | 100 | 0.80 | 1.00 |"
    assert rows[1] == "| attnkit Swin-T sparsemax | 120 | 0.96 | 1.20 |"
    assert rows[3] == "| attnkit MiT-b0 softmax | 20 | 0.80 | 1.00 |"
    assert rows[4] == "| timm PVTv2 (MiT-b0 settings) | 25 | 1.00 | - |"


def test_quick_run(capsys):
    args = ["--encoders", "mit", "--img-size", "64", "--batch", "1", "--repeats", "1"]
    assert main([*args, "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "| attnkit MiT-b0 sparsemax |" in out and "| timm PVTv2 (MiT-b0 settings) |" in out


def test_bad_arguments_are_one_line():
    with pytest.raises(SystemExit, match="--encoders takes"):
        main(["--encoders", "vit"])
