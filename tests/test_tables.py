"""Thesis tables from runs' summary.json files."""

from __future__ import annotations

import json

import pytest

from attnkit.analysis.tables import (
    by_size_table,
    load_summaries,
    summary_table,
    to_latex,
    to_markdown,
)

LAYERS = ("decoder.layers.0.cross_attn", "decoder.layers.1.cross_attn")


def fake_summary(base: float, heads: int = 2) -> dict:
    layer = {
        name: {
            "mean": base + i / 10,
            "std": 0.01 * (i + 1),
            "per_head": [base + i / 10 + h / 100 for h in range(heads)],
            "per_head_std": [0.001] * heads,
        }
        for i, name in enumerate(LAYERS)
    }
    by_size = {
        name: {
            b: {"mean": base + j / 100, "std": 0.1}
            for j, b in enumerate(("small", "medium", "large"))
        }
        for name in LAYERS
    }
    return {"gini": layer, "paibb_by_size": by_size, "coco": {"AP": 0.1}}


@pytest.fixture
def summaries(tmp_path) -> dict:
    for name, base in (("softmax", 0.2), ("sparsemax", 0.6), ("entmax15", 0.4)):
        run = tmp_path / name
        run.mkdir()
        (run / "summary.json").write_text(json.dumps(fake_summary(base)))
    return load_summaries(
        [tmp_path / "softmax", tmp_path / "sparsemax" / "summary.json", tmp_path / "entmax15"]
    )


def test_load_summaries_names_and_errors(tmp_path, summaries):
    assert list(summaries) == ["softmax", "sparsemax", "entmax15"]
    assert summaries["sparsemax"]["gini"][LAYERS[0]]["mean"] == pytest.approx(0.6)
    named = load_summaries({"alpha": tmp_path / "softmax"})
    assert list(named) == ["alpha"]
    with pytest.raises(ValueError, match="softmax"):
        load_summaries([tmp_path / "softmax", tmp_path / "softmax"])
    with pytest.raises(FileNotFoundError):
        load_summaries([tmp_path / "missing"])


def test_summary_table_cells(summaries):
    df = summary_table(summaries, "gini", precision=2)
    assert list(df.index) == ["softmax", "sparsemax", "entmax15"]
    assert list(df.columns) == list(LAYERS)
    assert df.loc["sparsemax", LAYERS[1]] == "0.70 ± 0.02"
    renamed = summary_table(summaries, "gini", layers={LAYERS[1]: "layer 2"})
    assert list(renamed.columns) == ["layer 2"]
    with pytest.raises(KeyError):
        summary_table(summaries, "entropy")


def test_per_head_table_and_missing_cells(summaries):
    summaries = dict(summaries)
    summaries["partial"] = {
        "gini": {LAYERS[0]: {"mean": 0.5, "std": float("nan"), "per_head": [0.5]}}
    }
    df = summary_table(summaries, "gini", per_head=True, precision=3)
    assert df.index.names == ["model", "head"]
    assert len(df) == 3 * 2 + 1
    assert df.loc[("entmax15", 1), LAYERS[0]] == "0.410 ± 0.001"
    assert df.loc[("partial", 0), LAYERS[0]] == "0.500"
    assert df.loc[("partial", 0), LAYERS[1]] is None
    flat = summary_table(summaries, "gini")
    assert flat.loc["partial", LAYERS[0]] == "0.500"  # NaN std: mean only
    md = to_markdown(df)
    assert "| partial | 0 | 0.500 | - |" in md
    assert "|  | 1 |" in md  # a repeated model name is left blank


def test_latex_rendering(summaries):
    df = summary_table(summaries, "gini")
    tex = to_latex(
        df, caption=r"Gini of the decoder cross-attention on \emph{val}", label="tab:gini"
    )
    assert r"\pm" in tex and "±" not in tex
    for part in (
        r"\toprule",
        r"\midrule",
        r"\bottomrule",
        r"\label{tab:gini}",
        r"\begin{tabular}{lcc}",
    ):
        assert part in tex
    assert r"decoder.layers.0.cross\_attn" in tex and r"\emph{val}" in tex
    body = tex.split(r"\midrule")[1].split(r"\bottomrule")[0].strip().splitlines()
    assert len(body) == 3 and body[1].startswith("sparsemax & 0.600 $\\pm$ 0.010")


def test_markdown_rendering(summaries):
    md = to_markdown(summary_table(summaries, "gini")).strip().splitlines()
    assert md[0] == f"| model | {LAYERS[0]} | {LAYERS[1]} |"
    assert md[1] == "| :--- | ---: | ---: |"
    assert len(md) == 2 + 3
    assert md[2] == "| softmax | 0.200 ± 0.010 | 0.300 ± 0.020 |"


def test_by_size_table(summaries):
    df = by_size_table(summaries, precision=2)
    assert df.shape == (3, 6)
    assert df.loc["entmax15", (LAYERS[0], "medium")] == "0.41 ± 0.10"
    tex = to_latex(df, caption="PAIBB by size", label="tab:paibb")
    assert r"\multicolumn{3}{c}{decoder.layers.0.cross\_attn}" in tex
    assert r"\cmidrule(lr){2-4} \cmidrule(lr){5-7}" in tex
    one = by_size_table(summaries, layers=[LAYERS[1]])
    assert list(one.columns) == ["small", "medium", "large"]
    assert to_markdown(df).splitlines()[0].startswith(f"| model | {LAYERS[0]} / small |")
