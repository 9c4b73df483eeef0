"""Checks shared by every family's notebook tests: committed clean, parameters declared in the
tagged cell, and the workbook's smoke profile run end to end with its figures and tables."""

from __future__ import annotations

import ast
from pathlib import Path

import nbformat
from PIL import Image, ImageStat

from attnkit.workbook import run_workbook
from attnkit.workbook_spec import notebook_parameters


def check_clean_notebooks(folder: Path, stems: list[str]) -> None:
    """The folder holds exactly ``stems``; each opens with Markdown, has no outputs, and one
    tagged ``parameters`` cell (its first code cell) whose every line papermill can parse."""
    paths = sorted(folder.glob("*.ipynb"))
    assert [p.stem for p in paths] == stems
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        assert nb.cells[0].cell_type == "markdown", path.name  # says what the notebook shows
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), path
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1 and tagged[0] is code[0], path.name
        assigned = [n for n in ast.parse(tagged[0].source).body if isinstance(n, ast.Assign)]
        declared = notebook_parameters(path)  # papermill skips a line it cannot parse
        assert len(declared) == len(assigned), (path.name, sorted(declared))
        assert {"run_dir", "figures_dir"} <= set(declared), path.name


def run_smoke(repo_root: Path, out_dir: Path, family: str, expected: dict, tables=None):
    """Run the smoke profile of ``family``: every run ok, in the order of ``expected``
    (``{run name: figure stems}``), each writing its figures (PNG + PDF, not blank) and the
    tables of ``tables`` (``{run name: file names}``). Returns ``(results, summary path)``."""
    results, summary = run_workbook(
        repo_root / "notebooks" / "workbook.yaml",
        profile="smoke",
        families=[family],
        out_dir=out_dir,
        progress=False,
    )
    failed = {r.run.name: r.error for r in results if r.status != "ok"}
    assert not failed, failed
    assert [r.run.name for r in results] == list(expected)
    for r in results:
        names = {png.stem for png in r.figures}
        assert expected[r.run.name] <= names, (r.run.name, names)
        assert all(png.with_suffix(".pdf").is_file() for png in r.figures)
        for png in r.figures:  # not blank
            with Image.open(png) as img:
                assert max(ImageStat.Stat(img.convert("L")).stddev) > 5, png
        assert (tables or {}).get(r.run.name, set()) <= {t.name for t in r.tables}, r.run.name
    return results, summary


def printed_text(notebook: Path) -> str:
    """Everything an executed notebook printed."""
    executed = nbformat.read(notebook, as_version=4)
    return "".join(o.get("text", "") for c in executed.cells for o in c.get("outputs", []))
