"""The papermill workbook runner, families and run references, the committed notebooks' hygiene,
and the smoke profile."""

from __future__ import annotations

import json

import nbformat
import pytest
import yaml

from attnkit.cli import main
from attnkit.models.reference import REFERENCE_NORMALIZERS, resolve_shipped_path
from attnkit.workbook import WorkbookError, plan_runs, run_workbook
from attnkit.workbook_spec import run_folder


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
                "family": "tiny",
                "id": "00",
                "notebook": "00_ok.ipynb",
                "sweep": {"value": [1, 2]},
                "profiles": {"smoke": {"sweep": {"value": [3]}}},
            },
            {"family": "tiny", "id": "01", "notebook": "01_fail.ipynb"},
            {"family": "tiny", "id": "02", "notebook": "02_after.ipynb", "parameters": {"x": 41}},
        ]
    }
    path = tmp_path / "workbook.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_plan_expands_sweeps_profiles_and_overrides(tiny_workbook):
    runs = plan_runs(tiny_workbook, "default")
    assert [r.name for r in runs] == [
        "tiny-00_ok__value-1",
        "tiny-00_ok__value-2",
        "tiny-01_fail",
        "tiny-02_after",
    ]
    assert [r.id for r in runs] == ["tiny/00", "tiny/00", "tiny/01", "tiny/02"]
    assert runs[0].parameters == {"value": 1} and runs[3].parameters == {"x": 41}
    assert [r.parameters for r in plan_runs(tiny_workbook, "smoke", only=["00"])] == [{"value": 3}]
    # an override pins the sweep over the same key to its value, keeping the sweep-style name
    pinned = plan_runs(tiny_workbook, "default", ["tiny/00"], {"value": 9})
    assert [(r.name, r.parameters) for r in pinned] == [("tiny-00_ok__value-9", {"value": 9})]


def test_a_profile_can_skip_a_notebook(tiny_workbook):
    spec = yaml.safe_load(tiny_workbook.read_text())
    spec["notebooks"][1]["profiles"] = {"reference": {"skip": True}}
    tiny_workbook.write_text(yaml.safe_dump(spec))
    assert [r.id for r in plan_runs(tiny_workbook, "reference")] == [
        "tiny/00",
        "tiny/00",
        "tiny/02",
    ]
    assert [r.id for r in plan_runs(tiny_workbook, "default")] == [
        "tiny/00",
        "tiny/00",
        "tiny/01",
        "tiny/02",
    ]
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
    assert "detr/01" not in [r.id for r in runs]
    shipped = list(REFERENCE_NORMALIZERS)
    for run in runs:
        params = run.parameters
        assert not run.refs, run.name  # nothing from notebook detr/01
        assert "{workbook_dir}" not in json.dumps(params), run.name
        models = params.get("models")
        if run.id.startswith("detr/") and models is not None:
            assert models == shipped, run.name
        elif models is not None:  # other families name their shipped files
            assert all(resolve_shipped_path(p).is_file() for p in models.values()), run.name
    assert {r.id: r.parameters for r in runs}["detr/06"]["run"] is None  # the shipped training log


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
    assert "tiny-01_fail" in err and "planned failure" in err
    # the notebooks after the failure ran; the failing one keeps its error in the output
    assert (out / "tiny-02_after.ipynb").is_file()
    failed = nbformat.read(out / "tiny-01_fail.ipynb", as_version=4)
    assert any(
        o.get("ename") == "AssertionError" for c in failed.cells for o in c.get("outputs", [])
    )
    assert (out / "figures" / "tiny-00_ok__value-2" / "line_2.png").is_file()
    summary = (out / "summary.md").read_text()
    assert "| tiny-00_ok__value-1 | ok |" in summary and "**FAILED**" in summary
    assert "figures/tiny-00_ok__value-1/line_1.png" in summary
    results = json.loads((out / "workbook.json").read_text())
    assert [r["status"] for r in results] == ["ok", "ok", "failed", "ok"]


def test_workbook_dir_is_substituted_in_parameters(tmp_path):
    make_notebook(tmp_path / "00_write.ipynb", "path = ''", "open(path, 'w').write('from 00')")
    make_notebook(tmp_path / "01_read.ipynb", "path = ''", "assert open(path).read() == 'from 00'")
    spec = {
        "notebooks": [
            {
                "family": "tiny",
                "id": "00",
                "notebook": "00_write.ipynb",
                "parameters": {"path": "{workbook_dir}/x.txt"},
            },
            {
                "family": "tiny",
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


def write_linked_spec(tmp_path):
    """The spec of tiny/00 (swept over ``tag``: a, b) and tiny/01 reading the run with tag b."""
    spec = {
        "notebooks": [
            {
                "family": "tiny",
                "id": "00",
                "notebook": "00_write.ipynb",
                "sweep": {"tag": ["a", "b"]},
            },
            {
                "family": "tiny",
                "id": "01",
                "notebook": "01_read.ipynb",
                "parameters": {"source": "{run:tiny/00:tag=b}"},
            },
        ]
    }
    path = tmp_path / "workbook.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture
def linked_workbook(tmp_path):
    """tiny/00 writes into its run folder (swept over ``tag``); tiny/01 reads one of them."""
    make_notebook(
        tmp_path / "00_write.ipynb",
        "tag = ''\nrun_dir = None",
        "import pathlib\n(pathlib.Path(run_dir) / 'tag.txt').write_text(tag)",
    )
    make_notebook(
        tmp_path / "01_read.ipynb",
        "source = ''",
        "import pathlib\nassert (pathlib.Path(source) / 'tag.txt').read_text() == 'b'",
    )
    return write_linked_spec(tmp_path)


def set_source(workbook, source: str) -> None:
    spec = yaml.safe_load(workbook.read_text())
    spec["notebooks"][1]["parameters"]["source"] = source
    workbook.write_text(yaml.safe_dump(spec))


def test_run_placeholder_is_the_folder_the_referenced_run_executes_into(linked_workbook, tmp_path):
    runs = plan_runs(linked_workbook, "default")
    assert [r.name for r in runs] == [
        "tiny-00_write__tag-a",
        "tiny-00_write__tag-b",
        "tiny-01_read",
    ]
    assert runs[2].refs == {"tiny/00:tag=b": "tiny-00_write__tag-b"}
    out = tmp_path / "out"
    results, _ = run_workbook(linked_workbook, out_dir=out, kernel_name="python3", progress=False)
    assert [r.status for r in results] == ["ok", "ok", "ok"]  # 01 read what 00 (tag b) wrote
    assert (run_folder(out, "tiny-00_write__tag-b") / "tag.txt").read_text() == "b"


@pytest.mark.parametrize(
    "source, fragment",
    [
        (
            "{run:tiny/09}",
            r"parameter 'source': \{run:tiny/09\} names unknown notebook tiny/09; "
            "known: tiny/00, tiny/01",
        ),
        (
            "{run:tiny/00:tag=c}",
            r"tiny/01 \(default\), parameter 'source': .* names no run of "
            r"tiny/00 in profile 'default'; valid: \{run:tiny/00:tag=a\}, \{run:tiny/00:tag=b\}",
        ),
        ("{run:tiny/00}", r"names no run of tiny/00 .*valid: \{run:tiny/00:tag=a\}"),
        ("{run:tiny/00:tag}", "malformed"),
        ("{run:tiny/01}", "executes after tiny-01_read"),
    ],
)
def test_bad_run_placeholders_are_refused_at_plan_time(linked_workbook, source, fragment):
    set_source(linked_workbook, source)
    with pytest.raises(WorkbookError, match=fragment):
        plan_runs(linked_workbook, "default")


def test_a_referenced_run_outside_the_execution_must_exist(linked_workbook, tmp_path, capsys):
    out = tmp_path / "out"
    plan_runs(linked_workbook, "default", only=["tiny/01"])  # no output folder yet: not checked
    with pytest.raises(
        WorkbookError, match="not part of this execution and .*tag-b does not exist"
    ):
        plan_runs(linked_workbook, "default", only=["tiny/01"], out_dir=out)
    args = [
        "workbook",
        "run",
        "--workbook",
        str(linked_workbook),
        "--only",
        "01",
        "--out",
        str(out),
    ]
    assert main(args) == 2  # before any notebook runs: one line, nothing executed
    assert "tiny-00_write__tag-b does not exist" in capsys.readouterr().err
    assert not out.exists()
    run_folder(out, "tiny-00_write__tag-b").mkdir(parents=True)
    assert [r.name for r in plan_runs(linked_workbook, only=["tiny/01"], out_dir=out)] == [
        "tiny-01_read"
    ]


@pytest.fixture
def two_families(tmp_path):
    """detr and vit each with a notebook 00_dataset.ipynb (same stem), detr also with 01."""
    for family in ("detr", "vit"):
        (tmp_path / family).mkdir()
        make_notebook(tmp_path / family / "00_dataset.ipynb", "x = 0", "print(x)")
    make_notebook(tmp_path / "detr" / "01_train.ipynb", "x = 0", "print(x)")
    spec = {
        "notebooks": [
            {"family": "detr", "id": "00", "notebook": "detr/00_dataset.ipynb"},
            {"family": "detr", "id": "01", "notebook": "detr/01_train.ipynb"},
            {"family": "vit", "id": "00", "notebook": "vit/00_dataset.ipynb"},
        ]
    }
    path = tmp_path / "workbook.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_run_names_of_two_families_do_not_collide(two_families, tmp_path):
    out = tmp_path / "out"
    args = ["workbook", "run", "--workbook", str(two_families), "--kernel", "python3"]
    assert main([*args, "--family", "vit,detr", "--out", str(out)]) == 0
    results = json.loads((out / "workbook.json").read_text())
    names = [r["run"]["name"] for r in results]
    assert names == ["detr-00_dataset", "detr-01_train", "vit-00_dataset"]  # in spec order
    assert all(
        run_folder(out, name).is_dir() and (out / f"{name}.ipynb").is_file() for name in names
    )
    text = (out / "summary.md").read_text()
    detr, vit = text.index("## detr"), text.index("## vit")
    assert detr < text.index("| detr-01_train | ok |") < vit < text.index("| vit-00_dataset | ok |")
    assert text[vit:].startswith("## vit\n\n1 runs, 0 failed,")  # per-family total


def test_family_and_only_select_notebooks(two_families, capsys):
    def ids(**kwargs):
        return [r.id for r in plan_runs(two_families, **kwargs)]

    assert ids() == ["detr/00", "detr/01", "vit/00"]
    assert ids(families=["vit"]) == ["vit/00"]
    assert ids(only=["01", "vit/00"]) == ["detr/01", "vit/00"]  # a bare id one family has
    assert ids(families=["vit"], only=["00"]) == ["vit/00"]  # unambiguous within the family
    with pytest.raises(WorkbookError, match="--only 00 is ambiguous: name one of detr/00, vit/00"):
        plan_runs(two_families, only=["00"])
    with pytest.raises(
        WorkbookError, match=r"unknown families \['sa_conv'\]; known: \['detr', 'vit'\]"
    ):
        plan_runs(two_families, families=["sa_conv"])
    assert main(["workbook", "list", "--workbook", str(two_families)]) == 0
    listing = capsys.readouterr().out
    assert listing.index("== detr ==") < listing.index("[detr/01]") < listing.index("== vit ==")
    assert "[vit/00] vit/00_dataset.ipynb" in listing


@pytest.mark.parametrize(
    "change, fragment",
    [
        (lambda e: e[0].pop("family"), "every entry needs 'family', 'id' and 'notebook'"),
        (lambda e: e[1].update(id="00"), "two entries are detr/00"),
        (lambda e: e[1].update(family="de/tr"), "family 'de/tr' may hold only"),
        (lambda e: e[1].update(notebook="detr/00_dataset.ipynb", id="0"), "several runs .*detr-00"),
    ],
)
def test_bad_families_and_ids_are_refused(two_families, change, fragment):
    spec = yaml.safe_load(two_families.read_text())
    change(spec["notebooks"])
    two_families.write_text(yaml.safe_dump(spec))
    with pytest.raises(WorkbookError, match=fragment):
        plan_runs(two_families)


def test_all_ok_exits_zero(tiny_workbook, tmp_path):
    results, summary = run_workbook(
        tiny_workbook,
        "smoke",
        only=["tiny/00", "02"],  # a full id and a bare one
        out_dir=tmp_path / "o",
        kernel_name="python3",
        progress=False,
    )
    assert [r.status for r in results] == ["ok", "ok"] and summary.is_file()


def test_committed_notebooks_are_clean_with_one_parameters_cell(repo_root):
    notebooks = repo_root / "notebooks"
    paths = sorted(notebooks.rglob("*.ipynb"))
    assert paths, "no notebooks committed"
    spec = yaml.safe_load((notebooks / "workbook.yaml").read_text())
    listed = {e["notebook"] for e in spec["notebooks"]}
    for entry in spec["notebooks"]:  # one folder per family
        assert entry["notebook"].startswith(f"{entry['family']}/"), entry["notebook"]
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), path
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, f"{path.name}: {len(tagged)} cells tagged 'parameters'"
        name = path.relative_to(notebooks).as_posix()
        assert name in listed, f"{name} is not in workbook.yaml"


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
            "--family",  # sa_conv's smoke run is tests/test_sa_conv_notebooks.py (more checks)
            "detr,vit",
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
