"""The vit family's notebooks end to end: the workbook's smoke profile for ``--family vit``."""

from __future__ import annotations

import nbformat
from PIL import Image, ImageStat

from attnkit.workbook import run_workbook

EXPECTED = {  # run name -> figures it must write
    "vit-00_dataset": {"00_samples", "00_class_counts"},
    "vit-01_train__normalizer-sparsemax": {"01_train_curves", "01_accuracy", "01_confusion"},
    "vit-02_attention": {
        "02_sparsity_per_block",
        "02_heads_gini",
        "02_heads_zeros_ratio",
        "02_heads_entropy",
        "02_attention_distance",
        "02_query_cls_sparsemax",
        "02_query_centre_sparsemax",
    },
}


def test_vit_smoke_profile_runs_and_writes_figures(repo_root, tmp_path):
    results, summary = run_workbook(
        repo_root / "notebooks" / "workbook.yaml",
        profile="smoke",
        families=["vit"],
        out_dir=tmp_path / "wb",
        progress=False,
    )
    failed = {r.run.name: r.error for r in results if r.status != "ok"}
    assert not failed, failed
    assert [r.run.name for r in results] == list(EXPECTED)
    for r in results:
        names = {png.stem for png in r.figures}
        assert EXPECTED[r.run.name] <= names, (r.run.name, names)
        assert all(png.with_suffix(".pdf").is_file() for png in r.figures)
        for png in r.figures:  # not blank
            with Image.open(png) as img:
                assert max(ImageStat.Stat(img.convert("L")).stddev) > 5, png
    tables = {t.name for r in results for t in r.tables}
    assert {"final_metrics.md", "blocks.md"} <= tables
    assert "vit-02_attention" in summary.read_text()
    executed = nbformat.read(results[-1].output, as_version=4)  # 02 analysed 01's model
    text = "".join(o.get("text", "") for c in executed.cells for o in c.get("outputs", []))
    assert "{'sparsemax': 4} images per model" in text
