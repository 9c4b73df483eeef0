"""The vit family's notebooks end to end: the workbook's smoke profile for ``--family vit``."""

from __future__ import annotations

from notebook_checks import printed_text, run_smoke

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
    results, summary = run_smoke(repo_root, tmp_path / "wb", "vit", EXPECTED)
    tables = {t.name for r in results for t in r.tables}
    assert {"final_metrics.md", "blocks.md"} <= tables
    assert "vit-02_attention" in summary.read_text()
    text = printed_text(results[-1].output)  # 02 analysed 01's model
    assert "{'sparsemax': 4} images per model" in text
