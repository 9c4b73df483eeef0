"""`attnkit bench dense`: whole dense models' parameters, FLOPs, time and memory side by side."""

from __future__ import annotations

import pytest
import torch

from attnkit.bench import dense


def test_rows_are_the_configs_with_the_overrides_and_invalid_ones_are_noted():
    rows, notes = dense.build_rows(["segformer_b0"], ["native", "efficient"], ["sparsemax"], 64)
    assert list(rows) == ["segformer_b0 native sparsemax"]
    assert len(notes) == 1 and "efficient sparsemax: skipped" in notes[0]
    model = rows["segformer_b0 native sparsemax"]
    assert abs(sum(p.numel() for p in model.parameters()) - 3.714e6) < 1e3  # SegFormer-b0, 1 out
    attn = model.encoder.stages[0].blocks[0].attn
    assert attn.normalizer.name == "sparsemax" and attn.sr_ratio == 8


def test_peak_memory_counts_what_the_step_keeps():
    """A wider input keeps more activations for the backward pass: the peak grows with it."""
    rows, _ = dense.build_rows(["segformer_b0"], ["native"], ["softmax"], 32)
    model = rows["segformer_b0 native softmax"]
    small = dense.peak_mib(model, torch.randn(1, 3, 32, 32))
    large = dense.peak_mib(model, torch.randn(1, 3, 64, 64))
    assert 0 < small < large


def test_the_command_prints_one_row_per_model_and_the_ratio_to_the_first(capsys):
    argv = ["--models", "segformer_b0,vit_small", "--img-size", "32", "--batch", "1"]
    assert dense.main([*argv, "--repeats", "1", "--normalizers", "softmax"]) == 0
    out = capsys.readouterr().out
    table = [
        line
        for line in out.splitlines()
        if line.startswith("| segformer_b0") or line.startswith("| vit_small")
    ]
    assert len(table) == 2
    assert table[0].split("|")[7].strip() == "1.00"  # x first
    assert float(table[1].split("|")[4]) == pytest.approx(23.72, abs=0.01)  # ViT-S params, M


def test_unknown_names_are_refused():
    with pytest.raises(SystemExit, match="unknown mechanisms"):
        dense.main(["--mechanisms", "windowed"])
