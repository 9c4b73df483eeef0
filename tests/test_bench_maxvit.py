"""`attnkit bench maxvit`: the table's rows and ratios (never a timed assertion)."""

from __future__ import annotations

import pytest

from attnkit.bench.maxvit import build_models, format_table, main


def test_ratios_are_over_timm_and_over_attnkit_softmax():
    times = {
        "attnkit softmax": [100.0, 120.0, 110.0],
        "attnkit sparsemax": [130.0, 132.0, 131.0],
        "timm maxvit_tiny_tf_224": [200.0, 220.0],
    }
    params = dict.fromkeys(times, 30_916_528)
    rows = format_table(times, params).splitlines()[2:]
    assert rows[0] == "| attnkit softmax | 30.92 | 110 | 100 - 120 | 0.52 | 1.00 |"
    assert rows[1] == "| attnkit sparsemax | 30.92 | 131 | 130 - 132 | 0.62 | 1.19 |"
    assert rows[2].endswith("| 1.00 | - |")


def test_peers_are_the_same_architecture():
    models = build_models("tiny", ["softmax"], 64)
    counts = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}
    assert set(counts) == {"attnkit softmax", "timm maxvit_tiny_tf_224", "torchvision maxvit_t"}
    # window / grid 2 at 64x64: smaller bias tables than at 224, the same in timm and attnkit;
    # torchvision's layout differs in details (3 k more parameters out of 30.9 M)
    assert counts["attnkit softmax"] == counts["timm maxvit_tiny_tf_224"]
    assert abs(counts["torchvision maxvit_t"] / counts["attnkit softmax"] - 1) < 2e-4


def test_main_prints_the_table(capsys):
    assert main(["--img-size", "64", "--batch", "2", "--repeats", "1", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "| attnkit sparsemax |" in out and "| torchvision maxvit_t |" in out


def test_bad_size_is_one_line():
    with pytest.raises(SystemExit, match="multiple of 32"):
        main(["--img-size", "50"])
