"""The papermill workbook runner, the committed notebooks' hygiene, and the smoke profile."""

from __future__ import annotations

import json

import nbformat
import pytest
import yaml

from attnkit.cli import main
from attnkit.models.reference import REFERENCE_NORMALIZERS
from attnkit.workbook import WorkbookError, plan_runs, run_workbook


def make_notebook(path, params: str, body: str) -> None:
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell(params)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, path)


@pytest.fixture
def tiny_workbook(tmp_path):
    make_notebook(
        tmp_path / "00_ok.ipynb",
        "value = 1\nfigures_dir = None",
        "import pathlib, matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\n"
        "fig, ax = plt.subplots(); ax.plot([0, value])\n"
        "fig.savefig(pathlib.Path(figures_dir) / f'line_{value}.png')",
    )
    make_notebook(tmp_path / "01_fail.ipynb", "boom = True", "assert not boom, 'planned failure'")
    make_notebook(tmp_path / "02_after.ipynb", "x = 0", "print(x + 1)")
    spec = {
        "notebooks": [
            {
                "id": "00",
                "notebook": "00_ok.ipynb",
                "sweep": {"value": [1, 2]},
                "profiles": {"smoke": {"sweep": {"value": [3]}}},
            },
            {"id": "01", "notebook": "01_fail.ipynb"},
            {"id": "02", "notebook": "02_after.ipynb", "parameters": {"x": 41}},
        ]
    }
    path = tmp_path / "workbook.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_plan_expands_sweeps_profiles_and_overrides(tiny_workbook):
    runs = plan_runs(tiny_workbook, "default")
    assert [r.name for r in runs] == ["00_ok__value-1", "00_ok__value-2", "01_fail", "02_after"]
    assert runs[0].parameters == {"value": 1} and runs[3].parameters == {"x": 41}
    assert [r.parameters for r in plan_runs(tiny_workbook, "smoke", only=["00"])] == [{"value": 3}]
    # an override replaces the sweep over the same key
    assert [r.parameters for r in plan_runs(tiny_workbook, "default", ["00"], {"value": 9})] == [
        {"value": 9}
    ]


def test_a_profile_can_skip_a_notebook(tiny_workbook):
    spec = yaml.safe_load(tiny_workbook.read_text())
    spec["notebooks"][1]["profiles"] = {"reference": {"skip": True}}
    tiny_workbook.write_text(yaml.safe_dump(spec))
    assert [r.id for r in plan_runs(tiny_workbook, "reference")] == ["00", "00", "02"]
    assert [r.id for r in plan_runs(tiny_workbook, "default")] == ["00", "00", "01", "02"]
    with pytest.raises(WorkbookError, match="runs none of the selected notebooks"):
        plan_runs(tiny_workbook, "reference", only=["01"])


def test_unknown_profile_key_is_refused(tiny_workbook):
    spec = yaml.safe_load(tiny_workbook.read_text())
    spec["notebooks"][1]["profiles"] = {"smoke": {"skipp": True}}
    tiny_workbook.write_text(yaml.safe_dump(spec))
    with pytest.raises(WorkbookError, match="unknown keys .*skipp"):
        plan_runs(tiny_workbook, "smoke")


def test_reference_profile_trains_nothing_and_analyses_the_shipped_models(repo_root):
    runs = plan_runs(repo_root / "notebooks" / "workbook.yaml", "reference")
    assert "01" not in [r.id for r in runs]
    shipped = list(REFERENCE_NORMALIZERS)
    for run in runs:
        params = run.parameters
        assert "{workbook_dir}" not in json.dumps(params), run.name  # nothing from notebook 01
        if "models" in params:
            assert params["models"] == shipped, run.name
    assert {r.id: r.parameters for r in runs}["06"]["run"] is None  # the shipped training log


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"overrides": {"valeu": 1}}, "not a parameter"),
        ({"only": ["07"]}, "unknown notebooks"),
        ({"profile": "huge"}, "unknown profile"),
    ],
)
def test_plan_rejects_bad_requests(tiny_workbook, kwargs, fragment):
    with pytest.raises(WorkbookError, match=fragment):
        plan_runs(tiny_workbook, **{"profile": "default", **kwargs})


def test_plan_rejects_undeclared_parameter_in_spec(tiny_workbook):
    spec = yaml.safe_load(tiny_workbook.read_text())
    spec["notebooks"][2]["parameters"] = {"xx": 1}
    tiny_workbook.write_text(yaml.safe_dump(spec))
    with pytest.raises(WorkbookError, match="did you mean 'x'"):
        plan_runs(tiny_workbook, "default")


def test_runner_goes_past_failures_and_reports_them(tiny_workbook, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(
        [
            "workbook",
            "run",
            "--workbook",
            str(tiny_workbook),
            "--out",
            str(out),
            "--kernel",
            "python3",
        ]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "01_fail" in err and "planned failure" in err
    # the notebooks after the failure ran; the failing one keeps its error in the output
    assert (out / "02_after.ipynb").is_file()
    failed = nbformat.read(out / "01_fail.ipynb", as_version=4)
    assert any(
        o.get("ename") == "AssertionError" for c in failed.cells for o in c.get("outputs", [])
    )
    assert (out / "figures" / "00_ok__value-2" / "line_2.png").is_file()
    summary = (out / "summary.md").read_text()
    assert "| 00_ok__value-1 | ok |" in summary and "**FAILED**" in summary
    assert "figures/00_ok__value-1/line_1.png" in summary
    results = json.loads((out / "workbook.json").read_text())
    assert [r["status"] for r in results] == ["ok", "ok", "failed", "ok"]


def test_workbook_dir_is_substituted_in_parameters(tmp_path):
    make_notebook(tmp_path / "00_write.ipynb", "path = ''", "open(path, 'w').write('from 00')")
    make_notebook(tmp_path / "01_read.ipynb", "path = ''", "assert open(path).read() == 'from 00'")
    spec = {
        "notebooks": [
            {
                "id": "00",
                "notebook": "00_write.ipynb",
                "parameters": {"path": "{workbook_dir}/x.txt"},
            },
            {
                "id": "01",
                "notebook": "01_read.ipynb",
                "parameters": {"path": "{workbook_dir}/x.txt"},
            },
        ]
    }
    (tmp_path / "workbook.yaml").write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    results, _ = run_workbook(
        tmp_path / "workbook.yaml", out_dir=out, kernel_name="python3", progress=False
    )
    assert [r.status for r in results] == ["ok", "ok"]
    assert (out / "x.txt").read_text() == "from 00"


def test_all_ok_exits_zero(tiny_workbook, tmp_path):
    results, summary = run_workbook(
        tiny_workbook,
        "smoke",
        only=["00", "02"],
        out_dir=tmp_path / "o",
        kernel_name="python3",
        progress=False,
    )
    assert [r.status for r in results] == ["ok", "ok"] and summary.is_file()


def test_committed_notebooks_are_clean_with_one_parameters_cell(repo_root):
    paths = sorted((repo_root / "notebooks").glob("*.ipynb"))
    assert paths, "no notebooks committed"
    spec = yaml.safe_load((repo_root / "notebooks" / "workbook.yaml").read_text())
    listed = {e["notebook"] for e in spec["notebooks"]}
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), path
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, f"{path.name}: {len(tagged)} cells tagged 'parameters'"
        assert path.name in listed, f"{path.name} is not in workbook.yaml"


def test_smoke_profile_runs(repo_root, tmp_path):
    """The workbook's smoke profile, end to end through the CLI, as `make test` must show."""
    out = tmp_path / "smoke"
    code = main(
        [
            "workbook",
            "run",
            "--profile",
            "smoke",
            "--out",
            str(out),
            "--workbook",
            str(repo_root / "notebooks" / "workbook.yaml"),
        ]
    )
    assert code == 0
    results = json.loads((out / "workbook.json").read_text())
    assert results and all(r["status"] == "ok" for r in results)
    pngs = list((out / "figures").rglob("*.png"))
    assert len(pngs) >= 3
    from PIL import Image, ImageStat

    for png in pngs:  # figures are not blank
        with Image.open(png) as img:
            assert max(ImageStat.Stat(img.convert("L")).stddev) > 5, png
