"""The sa_conv family's notebooks: committed clean, every parameter in the tagged cell, workbook
entries that resolve in every profile, and the smoke profile for ``--family sa_conv`` end to end."""

from __future__ import annotations

import pytest
from notebook_checks import check_clean_notebooks, printed_text, run_smoke

from attnkit.workbook import PROFILES, plan_runs

STEMS = [
    "01_train",
    "02_attention",
    "03_gaussian_centres",
    "04_conv_equivalence",
    "05_benchmark",
    "06_runs",
]
EXPECTED = {  # run name -> figures it must write
    "sa_conv-01_train__model-synth_gaussian_anisotropic": {
        "01_train_curves",
        "01_accuracy",
        "01_confusion",
    },
    "sa_conv-01_train__model-synth_learned2d": {"01_train_curves", "01_accuracy", "01_confusion"},
    "sa_conv-02_attention": {
        "02_sparsity_per_layer",
        "02_heads_gini",
        "02_heads_zeros_ratio",
        "02_heads_entropy",
        "02_attention_distance",
        "02_query_gaussian_anisotropic",
        "02_query_learned2d",
        "02_average_attention_gaussian_anisotropic",
        "02_average_attention_learned2d",
        "02_centres_gaussian_anisotropic",  # Gaussian attention only
        "02_offset_scores_learned2d",  # learned 2-D attention without content only
    },
    "sa_conv-03_gaussian_centres": {"03_centres_init", "03_centres_trained", "03_trajectories"},
    "sa_conv-04_conv_equivalence": {"04_error_vs_alpha", "04_heads_softmax", "04_heads_sparsemax"},
    "sa_conv-05_benchmark": {"05_throughput"},
    "sa_conv-06_runs": {"06_train_curves", "06_val_accuracy", "06_val_loss"},
}
TABLES = {  # run name -> tables (markdown) it must write into its run folder
    "sa_conv-01_train__model-synth_gaussian_anisotropic": {"final_metrics.md"},
    "sa_conv-02_attention": {"layers.md"},
    "sa_conv-03_gaussian_centres": {"centres.md"},
    "sa_conv-04_conv_equivalence": {"conv_equivalence.md"},
    "sa_conv-05_benchmark": {"benchmark.md"},
    "sa_conv-06_runs": {"runs.md"},
}


def test_notebooks_are_clean_and_declare_every_parameter_in_the_tagged_cell(repo_root):
    check_clean_notebooks(repo_root / "notebooks" / "sa_conv", STEMS)


@pytest.mark.parametrize("profile", PROFILES)
def test_workbook_entries_resolve_in_every_profile(repo_root, profile):
    runs = plan_runs(repo_root / "notebooks" / "workbook.yaml", profile, families=["sa_conv"])
    ids = [f"sa_conv/{stem[:2]}" for stem in STEMS if profile != "reference" or stem != "01_train"]
    assert list(dict.fromkeys(r.id for r in runs)) == ids
    configs = repo_root / "configs" / "sa_conv"
    for run in runs:
        params = run.parameters
        if run.id == "sa_conv/01":
            assert (configs / f"{params['model']}.yaml").is_file(), run.name
        if run.id == "sa_conv/05":
            assert all((repo_root / c).is_file() for c in params.get("configs") or []), run.name
        if profile == "reference":  # trains nothing: analyses the shipped models
            assert not run.refs, run.name
            shipped = [*(params.get("models") or {}).values(), params.get("run") or ""]
            assert all(p.startswith("{checkpoints}/sa_conv_synth_") for p in shipped if p)
        elif run.id in ("sa_conv/02", "sa_conv/03", "sa_conv/06"):  # 01's runs of this profile
            assert run.refs and all(
                ref.startswith("sa_conv-01_train__") for ref in run.refs.values()
            )


def test_sa_conv_smoke_profile_runs_and_writes_figures(repo_root, tmp_path):
    results, summary = run_smoke(repo_root, tmp_path / "wb", "sa_conv", EXPECTED, TABLES)
    assert "sa_conv-06_runs" in summary.read_text()
    text = printed_text(results[2].output)  # 02 analysed 01's models
    assert "{'gaussian_anisotropic': 4, 'learned2d': 4} images per model" in text
    tables = {t.name: t.read_text() for r in results for t in r.tables}
    rows = [line.strip("|").split("|") for line in tables["conv_equivalence.md"].splitlines()[2:]]
    off_shift = {float(cells[0]): cells[-1].strip() for cells in rows}  # sparsemax, by alpha
    assert all((value == "0") == (alpha >= 1.0) for alpha, value in off_shift.items()), off_shift
