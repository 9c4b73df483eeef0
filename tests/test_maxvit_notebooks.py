"""The maxvit family's notebooks: committed clean, every parameter in the tagged cell, workbook
entries that resolve in every profile, and the smoke profile for ``--family maxvit`` end to end."""

from __future__ import annotations

import pytest
from notebook_checks import check_clean_notebooks, printed_text, run_smoke

from attnkit.workbook import PROFILES, plan_runs

STEMS = ["01_train", "02_receptive_fields", "03_sparsity", "04_alphas"]
TRAINED = ("sparsemax", "alpha_entmax")  # the smoke profile's models
TRAIN_FIGURES = {"01_train_curves", "01_accuracy", "01_confusion"}
EXPECTED = {  # run name -> figures it must write
    "maxvit-01_train__model-synth_sparsemax": TRAIN_FIGURES,
    "maxvit-01_train__model-synth_alpha_entmax": TRAIN_FIGURES,
    "maxvit-02_receptive_fields": {
        "02_regions_stage1",
        "02_regions_stage2",
        "02_regions_stage3",
        *(f"02_heads_{m}_stage{s}" for m in TRAINED for s in (1, 3)),  # the smoke's sites
        "02_compare_stage_1_block_1_block",
        "02_compare_stage_1_block_1_grid",
        "02_compare_stage_3_block_1_grid",
    },
    "maxvit-03_sparsity": {"03_block_vs_grid", "03_heads_gini", "03_heads_zeros_ratio"},
    "maxvit-04_alphas": {
        "04_alpha_final",
        "04_alpha_heatmap",
        "04_alpha_curves",
        "04_grad_norms",
    },
}
TABLES = {  # run name -> tables (markdown) it must write into its run folder
    "maxvit-01_train__model-synth_sparsemax": {"final_metrics.md"},
    "maxvit-02_receptive_fields": {"regions.md"},
    "maxvit-03_sparsity": {"sites.md", "block_vs_grid.md"},
    "maxvit-04_alphas": {"final_alpha.md", "alpha_by_stage.md"},
}


def test_notebooks_are_clean_and_declare_every_parameter_in_the_tagged_cell(repo_root):
    check_clean_notebooks(repo_root / "notebooks" / "maxvit", STEMS)


@pytest.mark.parametrize("profile", PROFILES)
def test_workbook_entries_resolve_in_every_profile(repo_root, profile):
    runs = plan_runs(repo_root / "notebooks" / "workbook.yaml", profile, families=["maxvit"])
    ids = [f"maxvit/{stem[:2]}" for stem in STEMS if profile != "reference" or stem != "01_train"]
    assert list(dict.fromkeys(r.id for r in runs)) == ids
    configs = repo_root / "configs" / "maxvit"
    for run in runs:
        params = run.parameters
        if run.id == "maxvit/01":
            assert (configs / f"{params['model']}.yaml").is_file(), run.name
        if profile == "reference":  # trains nothing: analyses the shipped models
            assert not run.refs, run.name
            shipped = [*(params.get("models") or {}).values(), params.get("run") or ""]
            assert all(p.startswith("{checkpoints}/maxvit_synth_") for p in shipped if p)
            assert set(params.get("models") or TRAINED) >= set(TRAINED), run.name
        elif run.id != "maxvit/01":  # 01's runs of this profile
            assert run.refs and all(
                ref.startswith("maxvit-01_train__") for ref in run.refs.values()
            )
        if run.id == "maxvit/04" and profile != "reference":
            assert run.refs == {
                "maxvit/01:model=synth_alpha_entmax": "maxvit-01_train__model-synth_alpha_entmax"
            }


def test_maxvit_smoke_profile_runs_and_writes_figures(repo_root, tmp_path):
    results, summary = run_smoke(repo_root, tmp_path / "wb", "maxvit", EXPECTED, TABLES)
    assert "maxvit-04_alphas" in summary.read_text()
    by_name = {r.run.name: r for r in results}
    text = printed_text(by_name["maxvit-03_sparsity"].output)  # analysed 01's models
    assert "{'sparsemax': 4, 'alpha_entmax': 4} images per model" in text
    tables = {t.name: t.read_text() for r in results for t in r.tables}
    rows = tables["block_vs_grid.md"].splitlines()
    for model in ("sparsemax", "α-entmax", "sparsemax (random init)"):
        assert any(line.startswith(f"| {model} | stage 1 |") for line in rows), model
    assert sum(line.startswith("| stage ") for line in tables["final_alpha.md"].splitlines()) == 8
    regions = tables["regions.md"].splitlines()
    assert [line.split("|")[1].strip() for line in regions[2:]] == ["stage 1", "stage 2", "stage 3"]
