"""The workbook runner's safety checks: no silent overwrite of an earlier execution (and a record
that merges with it), parameter types checked at plan time, ``-p`` pinning a sweep, the kernel's
"without encryption" warning, and an output folder that cannot be created."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from test_workbook import make_notebook, write_linked_spec

from attnkit.cli import main
from attnkit.errors import EnvError, OutputError
from attnkit.workbook import (
    PROFILES,
    WorkbookError,
    check_clashes,
    kernel_options,
    plan_runs,
    run_workbook,
)
from attnkit.workbook_spec import accepts, declared_type, run_folder


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` and its bytes."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


@pytest.fixture
def pair(tmp_path):
    """tiny/00 fails on purpose (``boom``), tiny/01 passes; both fast."""
    make_notebook(tmp_path / "00_fail.ipynb", "boom = True", "assert not boom, 'planned failure'")
    make_notebook(tmp_path / "01_ok.ipynb", "x = 0", "print(x + 1)")
    spec = {
        "notebooks": [
            {"family": "tiny", "id": "00", "notebook": "00_fail.ipynb"},
            {"family": "tiny", "id": "01", "notebook": "01_ok.ipynb", "parameters": {"x": 1}},
        ]
    }
    path = tmp_path / "workbook.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def run(workbook, out, *extra):
    args = ["workbook", "run", "--workbook", str(workbook), "--out", str(out), "--kernel"]
    return main([*args, "python3", *extra])


def test_an_execution_never_silently_replaces_an_earlier_one(pair, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(pair, out, "--only", "00") == 1  # the planned failure
    assert "planned failure" in (out / "summary.md").read_text()
    before = snapshot(out)
    capsys.readouterr()
    assert run(pair, out) == 2  # tiny-00_fail is there already: refused before anything runs
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("attnkit: error: ")
    assert "already holds the results of 1 of the planned runs (tiny-00_fail)" in err
    assert "pass --overwrite to re-run them, or choose another --out" in err
    assert snapshot(out) == before  # nothing written, nothing removed
    with pytest.raises(OutputError):  # a WorkbookError that library callers can catch as such
        run_workbook(pair, out_dir=out, kernel_name="python3", progress=False)


def test_more_runs_into_the_folder_merge_with_the_record(pair, tmp_path):
    out = tmp_path / "out"
    assert run(pair, out, "--only", "00") == 1
    failed_nb = (out / "tiny-00_fail.ipynb").read_bytes()
    assert run(pair, out, "--only", "01") == 0  # another notebook into the same folder: fine
    assert (out / "tiny-00_fail.ipynb").read_bytes() == failed_nb
    record = json.loads((out / "workbook.json").read_text())
    assert [(r["run"]["name"], r["status"]) for r in record] == [
        ("tiny-00_fail", "failed"),
        ("tiny-01_ok", "ok"),
    ]
    assert "planned failure" in record[0]["error"] and record[0]["finished"]
    summary = (out / "summary.md").read_text()
    assert "2 runs, 1 failed" in summary and "1 of them ran in earlier executions" in summary
    assert "| tiny-00_fail | **FAILED**: AssertionError: planned failure |" in summary
    assert "| tiny-01_ok | ok |" in summary

    # --overwrite re-runs tiny/00 (now fixed); tiny/01 keeps its earlier entry, untouched
    spec = yaml.safe_load(pair.read_text())
    spec["notebooks"][0]["parameters"] = {"boom": False}
    pair.write_text(yaml.safe_dump(spec))
    ok_nb = (out / "tiny-01_ok.ipynb").read_bytes()
    assert run(pair, out, "--only", "00", "--overwrite") == 0
    again = json.loads((out / "workbook.json").read_text())
    assert [(r["run"]["name"], r["status"], r["error"]) for r in again] == [
        ("tiny-00_fail", "ok", ""),
        ("tiny-01_ok", "ok", ""),
    ]
    assert again[1] == record[1] and (out / "tiny-01_ok.ipynb").read_bytes() == ok_nb
    assert "FAILED" not in (out / "summary.md").read_text()


def test_clashes_name_the_first_runs_and_count_the_rest(tmp_path):
    make_notebook(tmp_path / "00_sweep.ipynb", "k = 0", "")
    spec = {
        "notebooks": [
            {
                "family": "t",
                "id": "00",
                "notebook": "00_sweep.ipynb",
                "sweep": {"k": [1, 2, 3, 4, 5]},
            }
        ]
    }
    (tmp_path / "wb.yaml").write_text(yaml.safe_dump(spec))
    runs = plan_runs(tmp_path / "wb.yaml")
    out = tmp_path / "out"
    check_clashes(runs, out, overwrite=False)  # no folder yet: fine
    for run_ in runs[:4]:
        run_folder(out, run_.name).mkdir(parents=True)
    (out / "figures" / runs[4].name).mkdir(parents=True)  # figures alone count too
    with pytest.raises(
        WorkbookError,
        match=r"results of 5 of the planned runs \(t-00_sweep__k-1, t-00_sweep__k-2, "
        r"t-00_sweep__k-3 and 2 more\); nothing was run: pass --overwrite",
    ):
        check_clashes(runs, out, overwrite=False)
    check_clashes(runs, out, overwrite=True)


def test_an_unreadable_record_stops_the_execution(pair, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "workbook.json").write_text("{not json")
    with pytest.raises(WorkbookError, match="workbook.json holds the results .* cannot be read"):
        run_workbook(pair, only=["01"], out_dir=out, kernel_name="python3", progress=False)
    assert snapshot(out) == {"workbook.json": b"{not json"}


# --------------------------------------------------------------------------- parameter types


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (
            {"x": "abc"},
            r"-p x=abc: notebook tiny/01 \(01_ok.ipynb\) expects int \(default 0\), "
            r"got str 'abc'",
        ),
        ({"x": True}, "expects int .*got bool True"),
        ({"x": 1.5}, "expects int .*got float 1.5"),
        ({"boom": "yes"}, r"notebook tiny/00 .*expects bool \(default True\), got str 'yes'"),
    ],
)
def test_p_values_of_the_wrong_type_stop_the_plan(pair, overrides, fragment):
    with pytest.raises(WorkbookError, match=fragment):
        plan_runs(pair, overrides=overrides)


def test_none_and_the_right_types_pass(pair):
    assert plan_runs(pair, overrides={"x": None, "boom": False})[1].parameters == {"x": None}


@pytest.mark.parametrize(
    "where, value, fragment",
    [
        ("parameters", {"x": "1"}, r"tiny/01 \(default\): parameter 'x' expects int .*got str '1'"),
        ("sweep", {"x": [1, "two"]}, r"tiny/01 \(default\) sweep: parameter 'x' .*got str 'two'"),
        ("sweep", {"x": 3}, "sweep 'x' must be a list"),
    ],
)
def test_the_specs_own_values_are_type_checked(pair, where, value, fragment):
    spec = yaml.safe_load(pair.read_text())
    spec["notebooks"][1][where] = value
    pair.write_text(yaml.safe_dump(spec))
    with pytest.raises(WorkbookError, match=fragment):
        plan_runs(pair)


@pytest.mark.parametrize(
    "info, good, bad",
    [
        ({"inferred_type_name": "int"}, [3], [True, 1.0, None, "3"]),
        ({"inferred_type_name": "float"}, [3, 2.5], [True, "x"]),
        ({"inferred_type_name": "str"}, ["{run:detr/01}"], [1, None]),
        ({"inferred_type_name": "bool"}, [False], [0, "no"]),
        ({"inferred_type_name": "dict"}, [{"a": "{run:x/01}"}], [[1], "{run:x/01}"]),
        ({"inferred_type_name": "List[int]"}, [[1]], [{"a": 1}]),
        ({"inferred_type_name": "Optional[int]"}, [None, "x", 1], []),
        ({"inferred_type_name": "None", "default": "None"}, [None, 1, "x", [1]], []),
        ({"inferred_type_name": "None", "default": "12"}, [1, None], [1.5, "abc", False]),
        ({"inferred_type_name": "None", "default": "0.5"}, [1, 0.1, None], ["x", True]),
        ({"inferred_type_name": "None", "default": '"cpu"'}, ["cuda", None], [0]),
        ({"inferred_type_name": "None", "default": "['a']"}, [["b"], {"b": "p"}, None], ["b"]),
        ({"inferred_type_name": "None", "default": "Path('x')"}, [1, "x"], []),
    ],
)
def test_declared_types(info, good, bad):
    kind = declared_type(info)
    assert all(accepts(*kind, v) for v in good), (kind, good)
    assert not any(accepts(*kind, v) for v in bad), (kind, bad)


def test_type_problems_say_what_is_expected():
    from attnkit.workbook_spec import type_problem

    info = {"inferred_type_name": "None", "default": "['softmax']"}
    assert type_problem("b", info) == "expects a list or dict (default ['softmax']), got str 'b'"
    assert type_problem({"a": "{run:detr/01}"}, info) is None


def test_annotated_parameters_are_read_from_the_notebook(tmp_path):
    make_notebook(tmp_path / "00_typed.ipynb", "n: int = 3\nf = 0.5  # type: float", "")
    spec = {"notebooks": [{"family": "t", "id": "00", "notebook": "00_typed.ipynb"}]}
    (tmp_path / "wb.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(WorkbookError, match=r"-p n=None: .*expects int \(annotated\)"):
        plan_runs(tmp_path / "wb.yaml", overrides={"n": None})
    assert plan_runs(tmp_path / "wb.yaml", overrides={"f": 2})[0].parameters == {"f": 2}


def test_every_profile_of_the_shipped_workbook_plans(repo_root):
    """The shipped notebooks and workbook.yaml pass the type checks in every profile."""
    for profile in PROFILES:
        assert plan_runs(repo_root / "notebooks" / "workbook.yaml", profile), profile


# --------------------------------------------------------------------------- -p over a sweep


@pytest.fixture
def linked(tmp_path):
    """tiny/00 swept over ``tag`` (a, b); tiny/01 reads the run with tag b."""
    make_notebook(tmp_path / "00_write.ipynb", "tag = ''", "")
    make_notebook(tmp_path / "01_read.ipynb", "source = ''", "")
    return write_linked_spec(tmp_path)


def test_p_over_a_swept_key_keeps_the_sweep_name(linked):
    runs = plan_runs(linked, overrides={"tag": "b"})
    assert [r.name for r in runs] == ["tiny-00_write__tag-b", "tiny-01_read"]
    assert runs[0].parameters == {"tag": "b"} and runs[0].pinned == {"tag": "b"}
    assert runs[1].refs == {"tiny/00:tag=b": "tiny-00_write__tag-b"}  # still resolves
    only = plan_runs(linked, only=["00"], overrides={"tag": "c"})  # a value outside the sweep
    assert [r.name for r in only] == ["tiny-00_write__tag-c"]


def test_p_pinning_away_a_referenced_run_says_so(linked):
    with pytest.raises(
        WorkbookError,
        match=r"notebook tiny/01 \(default\), parameter 'source': -p tag=a pins the sweep of "
        r"tiny/00, so \{run:tiny/00:tag=b\} names no run; select only tiny/00 and notebooks "
        r"that use tag=a \(--only\), or drop the -p",
    ):
        plan_runs(linked, overrides={"tag": "a"})


def test_p_attention_over_the_shipped_workbook(repo_root):
    workbook = repo_root / "notebooks" / "workbook.yaml"
    with pytest.raises(WorkbookError, match="-p attention=sparsemax pins the sweep of detr/01"):
        plan_runs(workbook, "default", overrides={"attention": "sparsemax"})
    runs = plan_runs(
        workbook, "default", only=["detr/01", "detr/03"], overrides={"attention": "sparsemax"}
    )
    assert [r.name for r in runs] == [
        "detr-01_train__attention-sparsemax",
        "detr-03_hungarian_matching",
    ]


# --------------------------------------------------------------------------- kernel, out folder


def test_the_kernel_runs_encrypted_without_the_warning_and_keeps_its_stderr(tmp_path, capfd):
    """ipykernel warns "Kernel is running over TCP without encryption" on the stderr it shares
    with us; the runner has the connection encrypted, so the warning is gone, while anything else
    the kernel process writes to that stderr still comes through."""
    if not kernel_options():
        pytest.skip("this jupyter_client or libzmq cannot encrypt the kernel connection")
    assert kernel_options()["config"].KernelManager.transport_encryption == "auto"
    make_notebook(tmp_path / "00_err.ipynb", "x = 0", "import os\nos.write(2, b'kept: fd 2\\n')")
    spec = {"notebooks": [{"family": "t", "id": "00", "notebook": "00_err.ipynb"}]}
    (tmp_path / "wb.yaml").write_text(yaml.safe_dump(spec))
    capfd.readouterr()
    results, _ = run_workbook(
        tmp_path / "wb.yaml", out_dir=tmp_path / "out", kernel_name="python3", progress=False
    )
    err = capfd.readouterr().err
    assert results[0].status == "ok"
    assert "without encryption" not in err and "kept: fd 2" in err


@pytest.mark.parametrize("kind", ["under a file", "proc"])
def test_an_output_folder_that_cannot_be_made_is_one_line(pair, tmp_path, capsys, kind):
    if kind == "proc":
        if not Path("/proc/self").is_dir():
            pytest.skip("no /proc here")
        out, reason = Path("/proc/attnkit-workbook"), "No such file or directory"
    else:
        (tmp_path / "file").write_text("x")
        out, reason = tmp_path / "file" / "out", "Not a directory"
    with pytest.raises(EnvError, match=f"cannot create the workbook output folder {out}: {reason}"):
        run_workbook(pair, only=["01"], out_dir=out, kernel_name="python3", progress=False)
    assert run(pair, out, "--only", "01") == 2
    err = capsys.readouterr().err
    assert err == f"attnkit: error: cannot create the workbook output folder {out}: {reason}\n"
    if kind != "proc":
        assert (tmp_path / "file").read_text() == "x"


def test_an_older_record_in_a_moved_folder_is_kept(tmp_path):
    """Entries written before ``profile``/``finished`` existed, by an execution into a folder that
    has been moved since, are read, re-rooted and kept in the summary."""
    from attnkit.workbook_results import load_results, write_summary

    out = tmp_path / "moved"
    (out / "figures" / "tiny-00_old").mkdir(parents=True)
    (out / "figures" / "tiny-00_old" / "a.png").write_bytes(b"png")
    old = "/elsewhere/out"
    entry = {
        "run": {"id": "tiny/00", "family": "tiny", "notebook": "/nb/00_old.ipynb",
                "name": "tiny-00_old", "parameters": {"x": 1}, "sweep_values": {}, "refs": {}},
        "status": "failed", "seconds": 2.0, "output": f"{old}/tiny-00_old.ipynb",
        "figures": [f"{old}/figures/tiny-00_old/a.png"], "tables": [], "error": "E: boom",
    }  # fmt: skip
    (out / "workbook.json").write_text(json.dumps([entry]))
    earlier = load_results(out)
    assert earlier[0].figures == [out / "figures" / "tiny-00_old" / "a.png"]
    summary = write_summary([], out, "default", earlier).read_text()
    assert "| tiny-00_old | **FAILED**: E: boom | 2.0 s | [tiny-00_old.ipynb]" in summary
    assert "![a](figures/tiny-00_old/a.png)" in summary
    record = json.loads((out / "workbook.json").read_text())
    assert record[0]["error"] == "E: boom" and record[0]["output"] == str(out / "tiny-00_old.ipynb")
