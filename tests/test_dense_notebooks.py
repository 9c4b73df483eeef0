"""The dense family's notebooks: committed clean, every parameter in the tagged cell, workbook
entries that resolve in every profile (the sweep's variants build their configs; the reference
profile trains nothing and analyses the shipped models), and the smoke profile for ``--family
dense`` end to end with its figures and tables."""

from __future__ import annotations

import pytest
from notebook_checks import check_clean_notebooks, printed_text, run_smoke

from attnkit.bench.attention import COMPLEXITY
from attnkit.config import load_config
from attnkit.viz.dense_figures import parse_variant
from attnkit.workbook import PROFILES, plan_runs

STEMS = [
    "01_data",
    "02_train",
    "03_predictions",
    "04_attention_maps",
    "05_sparsity",
    "06_efficiency",
]
TRAINED = ("swin_unet_sparsemax", "mit_segformer")  # the smoke profile's models
SHIPPED = {f"{a}_{n}" for a in ("swin_unet", "mit_segformer") for n in ("softmax", "sparsemax")}
EXPECTED = {  # run name -> figures it must write
    "dense-01_data": {"01_samples", "01_heights"},
    "dense-02_train__model-swin_unet_sparsemax": {"02_curves"},
    "dense-02_train__model-mit_segformer": {"02_curves"},
    "dense-03_predictions": {"03_bin_errors", *(f"03_predictions_{m}" for m in TRAINED)},
    "dense-04_attention_maps": {
        *(f"04_heads_{m}_stage1" for m in TRAINED),  # the smoke's site: stage 1 block 2
        "04_compare_swin_unet_sparsemax_stage_1_block_2",
    },
    "dense-05_sparsity": {"05_stages", "05_heads_gini", "05_heads_zeros_ratio"},
    "dense-06_efficiency": {"06_profile_sparsemax"},
}
TABLES = {  # run name -> tables (markdown) it must write into its run folder
    "dense-01_data": {"statistics.md"},
    "dense-02_train__model-mit_segformer": {"final_metrics.md"},
    "dense-03_predictions": {"metrics.md"},
    "dense-04_attention_maps": {"zeros.md"},
    "dense-05_sparsity": {"sites.md", "sparsity.md"},
    "dense-06_efficiency": {"complexity_sparsemax.md", "profile_sparsemax.md"},
}


def test_notebooks_are_clean_and_declare_every_parameter_in_the_tagged_cell(repo_root):
    check_clean_notebooks(repo_root / "notebooks" / "dense", STEMS)


@pytest.mark.parametrize("profile", PROFILES)
def test_workbook_entries_resolve_in_every_profile(repo_root, profile):
    runs = plan_runs(repo_root / "notebooks" / "workbook.yaml", profile, families=["dense"])
    ids = [f"dense/{stem[:2]}" for stem in STEMS if profile != "reference" or stem != "02_train"]
    assert list(dict.fromkeys(r.id for r in runs)) == ids
    configs = repo_root / "configs" / "dense"
    trained = [r.parameters["model"] for r in runs if r.id == "dense/02"]
    for name in trained:  # every variant of the sweep names a config it can override
        variant = parse_variant(name)
        load_config(configs / f"{variant.config}.yaml", variant.overrides)
    for run in runs:
        models = run.parameters.get("models")
        if profile == "reference":  # trains nothing: analyses the shipped models
            assert not run.refs, run.name
            if models is not None:
                assert set(models) == SHIPPED, run.name
                assert all(p == f"{{checkpoints}}/dense_synth_{n}.pt" for n, p in models.items())
        elif models is not None:  # 02's runs of this profile, every one of them
            assert sorted(run.refs.values()) == sorted(
                f"dense-02_train__model-{m}" for m in trained
            ), run.name
    if profile == "smoke":
        assert sorted(trained) == sorted(TRAINED)


def test_dense_smoke_profile_runs_and_writes_figures(repo_root, tmp_path):
    results, summary = run_smoke(repo_root, tmp_path / "wb", "dense", EXPECTED, TABLES)
    assert "dense-06_efficiency" in summary.read_text()
    by_name = {r.run.name: r for r in results}
    text = printed_text(by_name["dense-05_sparsity"].output)  # analysed 02's models
    assert "{'swin_unet_sparsemax': 2, 'mit_segformer': 2} images per model" in text
    tables = {t.name: t.read_text() for r in results for t in r.tables}
    assert "| nodata share | 5." in tables["statistics.md"]
    rows = tables["metrics.md"].splitlines()
    assert [line.split("|")[1].strip() for line in rows[4:]] == list(TRAINED)
    zeros = tables["zeros.md"]
    assert "| swin_unet_sparsemax | stage 1 block 2 | shifted window | 256 |" in zeros
    assert "| mit_segformer | stage 1 block 2 | spatial reduction ×8 | 4096 | 0% |" in zeros
    rows = tables["sparsity.md"].splitlines()
    for model in ("swin_unet_sparsemax", "mit_segformer (random init)"):
        assert any(line.startswith(f"| {model} | stage 1 |") for line in rows), model
    assert any(line.startswith("|  | up 1 |") for line in rows)  # Swin-Unet's decoder level
    complexity = tables["complexity_sparsemax.md"]
    assert all(f"| {kind} | {cost} |" in complexity for kind, cost in COMPLEXITY.items())
