"""The workbook: run the numbered notebooks of every model family in batch with papermill.

``notebooks/workbook.yaml`` lists the notebooks (``notebooks/<family>/NN_*.ipynb``) in order; see
:mod:`attnkit.workbook_spec` for its entries (family, id, parameters, sweeps, profiles) and run
names. :func:`plan_runs` expands it into the runs of one profile (``--family``, ``--only``, ``-p``)
and resolves the placeholders of :mod:`attnkit.workbook_refs`: ``{run:detr/01:attention=softmax}``
is the folder of that run, ``{workbook_dir}`` the output folder, so a notebook can read what an
earlier one wrote. The runner injects ``figures_dir``, ``run_dir`` and ``workbook_dir`` into
notebooks that declare them, executes every run into ``out/``, goes on past failures (papermill
keeps the failing cell in the executed notebook) and writes ``summary.md`` (runs grouped by
family) and ``workbook.json``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from attnkit.runfiles import git_revision
from attnkit.workbook_refs import check_references, resolve_references, substitute
from attnkit.workbook_spec import (
    PROFILES,
    NotebookRun,
    WorkbookError,
    expand_entry,
    full_id,
    load_workbook,
    notebook_parameters,
    run_folder,
    select_entries,
)

__all__ = [
    "PROFILES",
    "NotebookRun",
    "RunResult",
    "WorkbookError",
    "load_workbook",
    "notebook_parameters",
    "plan_runs",
    "run_workbook",
]

INJECTED = ("figures_dir", "run_dir", "workbook_dir")
"""Parameters the runner sets in every notebook that declares them (not part of the spec)."""


@dataclass
class RunResult:
    """What one notebook run produced: its status, duration, executed notebook, figures, tables."""

    run: NotebookRun
    status: str  # "ok" | "failed"
    seconds: float
    output: Path
    figures: list[Path] = field(default_factory=list)
    tables: list[Path] = field(default_factory=list)
    error: str = ""


def plan_runs(
    workbook: str | Path,
    profile: str = "default",
    only: list[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    families: list[str] | None = None,
    out_dir: str | Path | None = None,
) -> list[NotebookRun]:
    """Expand the workbook into the runs of ``profile`` for ``families`` (default: all).

    ``only`` narrows to full (``detr/02``) or unambiguous bare (``02``) notebook ids.
    ``overrides`` (``-p key=value``) apply to every selected notebook that declares the key and
    replace a sweep over that key; a key no selected notebook declares is an error. Every
    ``{run:...}`` placeholder must name a run of the profile that executes earlier, or (given
    ``out_dir``) one whose folder already exists there.
    """
    if profile not in PROFILES:
        raise WorkbookError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    workbook = Path(workbook)
    entries = load_workbook(workbook)["notebooks"]
    selected = {full_id(e) for e in select_entries(entries, families, only)}
    overrides = dict(overrides or {})
    used: set[str] = set()
    runs_by_id: dict[str, list[NotebookRun]] = {}
    for entry in entries:
        if full_id(entry) not in selected:  # only referenced: its names, no checks
            runs_by_id[full_id(entry)] = expand_entry(entry, profile, workbook)
            continue
        declared = notebook_parameters((workbook.parent / entry["notebook"]).resolve())
        applied = {k: v for k, v in overrides.items() if k in declared}
        used.update(applied)
        runs_by_id[full_id(entry)] = expand_entry(entry, profile, workbook, applied, declared)
    runs = [run for key in runs_by_id if key in selected for run in runs_by_id[key]]
    if not runs:
        raise WorkbookError(
            f"profile {profile!r} runs none of the selected notebooks (they are skipped there)"
        )
    unused = set(overrides) - used
    if unused:
        raise WorkbookError(
            f"-p {', '.join(sorted(unused))}: not a parameter of any selected notebook "
            "(see `attnkit workbook list`)"
        )
    names = [run.name for group in runs_by_id.values() for run in group]
    clashes = sorted({name for name in names if names.count(name) > 1})
    if clashes:
        raise WorkbookError(f"{workbook}: several runs would be named {', '.join(clashes)}")
    for run in runs:
        where = f"{workbook}: notebook {run.id} ({profile})"
        run.refs = resolve_references(run, runs_by_id, profile, where)
    check_references(runs, out_dir)
    return runs


def default_kernel() -> str:
    """The ``attnkit`` Jupyter kernel when registered (``make venv`` does), else ``python3``."""
    from jupyter_client.kernelspec import KernelSpecManager

    return "attnkit" if "attnkit" in KernelSpecManager().find_kernel_specs() else "python3"


def _execute(run: NotebookRun, out_dir: Path, kernel_name: str) -> RunResult:
    """Run one notebook with papermill (cwd: its folder); a failure is recorded, never raised."""
    import papermill

    output = out_dir / f"{run.name}.ipynb"
    figures = out_dir / "figures" / run.name
    run_dir = run_folder(out_dir, run.name)
    declared = notebook_parameters(run.notebook)
    injected = {"figures_dir": str(figures), "run_dir": str(run_dir), "workbook_dir": str(out_dir)}
    params = {
        **{k: v for k, v in injected.items() if k in declared},
        **substitute(run.parameters, out_dir, run.refs),
    }
    figures.mkdir(parents=True, exist_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    status, error = "ok", ""
    try:
        papermill.execute_notebook(
            str(run.notebook),
            str(output),
            parameters=params,
            kernel_name=kernel_name,
            cwd=str(run.notebook.parent),
            progress_bar=False,
        )
    except Exception as err:  # noqa: BLE001 - a failing notebook must not stop the workbook
        status = "failed"
        ename = getattr(err, "ename", type(err).__name__)
        evalue = getattr(err, "evalue", str(err))
        error = f"{ename}: {evalue}".strip().splitlines()[0][:300]
    seconds = time.perf_counter() - start
    pngs = sorted(figures.glob("*.png"))
    tables = sorted(run_dir.glob("*.md"))
    return RunResult(run, status, seconds, output, pngs, tables, error)


def _family_lines(results: list[RunResult], out_dir: Path) -> list[str]:
    """One family's part of ``summary.md``: its total, a table of its runs, then each run."""
    failed = sum(r.status != "ok" for r in results)
    seconds = sum(r.seconds for r in results)
    lines = [
        f"{len(results)} runs, {failed} failed, {seconds:.0f} s in all.",
        "",
        "| run | status | duration | notebook | figures |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        mark = "ok" if r.status == "ok" else f"**FAILED**: {r.error}"
        nb = r.output.relative_to(out_dir)
        lines.append(
            f"| {r.run.name} | {mark} | {r.seconds:.1f} s | [{nb}]({nb}) | {len(r.figures)} |"
        )
    for r in results:
        lines += ["", f"### {r.run.name}", ""]
        params = ", ".join(f"`{k}={v}`" for k, v in r.run.parameters.items())
        lines.append(f"Parameters: {params or 'defaults'}")
        for table in r.tables:
            rel = table.relative_to(out_dir)
            lines += ["", f"Table [{rel}]({rel}):", "", table.read_text().strip()]
        for png in r.figures:
            rel = png.relative_to(out_dir)
            pdf = rel.with_suffix(".pdf")
            lines += ["", f"![{png.stem}]({rel})", f"[{png.stem} (PDF)]({pdf})"]
    return lines


def write_summary(results: list[RunResult], out_dir: Path, profile: str) -> Path:
    """``summary.md`` with the runs grouped by family, and ``workbook.json``; returns the first.

    Per family (``## detr``): its total seconds, then every run with status, duration and links
    to its figures and tables.
    """
    total = sum(r.seconds for r in results)
    failed = [r for r in results if r.status != "ok"]
    lines = [
        f"# attnkit workbook: profile `{profile}`",
        "",
        f"{datetime.now():%Y-%m-%d %H:%M}, git `{git_revision(short=True)}`, {len(results)} runs, "
        f"{len(failed)} failed, {total:.0f} s in all.",
    ]
    families: dict[str, list[RunResult]] = {}
    for r in results:
        families.setdefault(r.run.family, []).append(r)
    for family, group in families.items():
        lines += ["", f"## {family}", "", *_family_lines(group, out_dir)]
    path = out_dir / "summary.md"
    path.write_text("\n".join(lines) + "\n")
    (out_dir / "workbook.json").write_text(
        json.dumps(
            [
                {**asdict(r), "run": {**asdict(r.run), "notebook": str(r.run.notebook)}}
                for r in results
            ],
            indent=1,
            default=str,
        )
    )
    return path


def run_workbook(
    workbook: str | Path = "notebooks/workbook.yaml",
    profile: str = "default",
    only: list[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    out_dir: str | Path | None = None,
    kernel_name: str | None = None,
    progress: bool = True,
    families: list[str] | None = None,
) -> tuple[list[RunResult], Path]:
    """Execute the workbook; returns the results and the summary path.

    Every check (spec, parameters, ``{run:...}`` references) happens before the first notebook
    starts; after that it never stops early: a failing notebook is recorded and the rest run.
    """
    from tqdm.auto import tqdm

    if out_dir is None:
        out_dir = Path("runs") / "workbook" / datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = Path(out_dir).resolve()
    runs = plan_runs(workbook, profile, only, overrides, families, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    kernel_name = kernel_name or default_kernel()
    results = []
    bar = tqdm(runs, desc=f"workbook ({profile})", unit="nb", disable=not progress)
    for run in bar:
        bar.set_postfix_str(run.name)
        result = _execute(run, out_dir, kernel_name)
        results.append(result)
        mark = "ok" if result.status == "ok" else f"FAILED ({result.error})"
        bar.write(f"{run.name}: {mark} in {result.seconds:.1f} s, {len(result.figures)} figures")
    summary = write_summary(results, out_dir, profile)
    return results, summary
