"""`attnkit bench attention`: the fitted exponents, the tables and a quick run (no timed asserts)."""

from __future__ import annotations

import json
import math

import pytest

from attnkit.bench.attention import COMPLEXITY, exponent, main, to_latex


def test_exponent_of_exact_power_laws():
    quadratic = [{"tokens": n, "ms": 3e-4 * n**2} for n in (64, 256, 1024, 4096)]
    linear = [{"tokens": n, "ms": 0.5 * n} for n in (64, 256, 1024, 4096)]
    assert exponent(quadratic, "ms") == pytest.approx(2.0)
    assert exponent(linear, "ms") == pytest.approx(1.0)
    # points under min_tokens are left out: an overhead at small N does not bend the fit
    bent = [{"tokens": 64, "ms": 100.0}, *quadratic[1:]]
    assert exponent(bent, "ms") == pytest.approx(2.0)
    assert math.isnan(exponent(quadratic[:1], "ms"))


def test_latex_table():
    tex = to_latex("| a | b_c |\n|---|---|\n| N^2 | 1 |")
    assert tex.splitlines() == [
        "\\begin{tabular}{lr}",
        "\\toprule",
        "a & b\\_c \\\\",
        "\\midrule",
        "N\\^{}2 & 1 \\\\",
        "\\bottomrule",
        "\\end{tabular}",
    ]


def test_quick_run_writes_the_profile(tmp_path):
    out = tmp_path / "prof"
    args = ["--sides", "8,16", "--repeats", "1", "--threads", "1", "--out", str(out)]
    assert main([*args, "--mechanisms", "full,window,efficient", "--normalizer", "sparsemax"]) == 0
    results = json.loads((out / "attention_profile.json").read_text())
    assert list(results) == ["full", "window", "efficient"]
    assert [p["tokens"] for p in results["full"]] == [64, 256]
    # the explicit (sparsemax) path stores the N x N weights: memory grows with N^2 here
    assert results["full"][1]["mib"] > 8 * results["full"][0]["mib"]
    assert (out / "attention_profile.png").is_file() and (out / "attention_profile.tex").is_file()
    text = (out / "attention_profile.md").read_text()
    assert all(f"| {k} | {COMPLEXITY[k]} |" in text for k in results)


def test_unknown_mechanism_is_one_line():
    with pytest.raises(SystemExit, match="unknown mechanism"):
        main(["--mechanisms", "ful"])
