"""The workbook: run the numbered notebooks of every model family in batch with papermill.

``notebooks/workbook.yaml`` lists the notebooks (``notebooks/<family>/NN_*.ipynb``) in order; see
:mod:`attnkit.workbook_spec` for its entries (family, id, parameters, sweeps, profiles) and run
names. :func:`plan_runs` expands it into the runs of one profile (``--family``, ``--only``, ``-p``)
and resolves the placeholders of :mod:`attnkit.workbook_refs`: ``{run:detr/01:attention=softmax}``
is the folder of that run, ``{workbook_dir}`` the output folder, so a notebook can read what an
earlier one wrote. The runner injects ``figures_dir``, ``run_dir`` and ``workbook_dir`` into
notebooks that declare them, executes every run into ``out/``, goes on past failures (papermill
keeps the failing cell in the executed notebook) and writes ``summary.md`` (runs grouped by
family) and ``workbook.json`` (:mod:`attnkit.workbook_results`).

An output folder may receive several executions (``--only detr/02`` reads the ``detr/01`` runs
already there), but a run that already has files there is re-run only with ``overwrite``
(``--overwrite``), and the record merges with the earlier one, so nothing earlier is lost
silently.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from attnkit.errors import OutputError
from attnkit.outputs import make_folder
from attnkit.workbook_refs import check_references, resolve_references, substitute
from attnkit.workbook_results import SUMMARY, RunResult, load_results, write_summary
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
    type_problem,
)

__all__ = [
    "PROFILES",
    "NotebookRun",
    "RunResult",
    "WorkbookError",
    "WorkbookOutputError",
    "load_workbook",
    "notebook_parameters",
    "plan_runs",
    "run_workbook",
    "write_summary",
]

INJECTED = ("figures_dir", "run_dir", "workbook_dir")
"""Parameters the runner sets in every notebook that declares them (not part of the spec)."""


class WorkbookOutputError(WorkbookError, OutputError):
    """Runs whose files already lie in the output folder (pass ``--overwrite``)."""


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
    ``overrides`` (``-p key=value``) apply to every selected notebook that declares the key, and
    must be of the type it declares; one over a swept key pins the sweep to that value (the run
    keeps its ``__key-value`` name). A key no selected notebook declares is an error. Every
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
        for key, value in applied.items():
            problem = type_problem(value, declared[key])
            if problem:
                raise WorkbookError(
                    f"-p {key}={value}: notebook {full_id(entry)} ({entry['notebook']}) {problem}"
                )
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


def kernel_options() -> dict[str, Any]:
    """papermill options that make the kernel encrypt its connection (CurveZMQ) where it can.

    ipykernel >= 7 warns on its own stderr (which the kernel process shares with ours) for every
    notebook: "Kernel is running over TCP without encryption", which breaks the progress line. The
    warning is logged in the kernel process, so no filter of ours sees it; what removes it is
    doing what it asks: with ``transport_encryption="auto"`` jupyter_client provisions CurveZMQ
    keys for kernels whose kernelspec declares ``supported_encryption: [curve]`` (ipykernel's
    do). Without jupyter_client's option or libzmq's curve support: nothing (plain TCP).
    """
    import zmq
    from jupyter_client.manager import KernelManager
    from traitlets.config import Config

    if "transport_encryption" not in KernelManager.class_trait_names() or not zmq.has("curve"):
        return {}
    return {"config": Config({"KernelManager": {"transport_encryption": "auto"}})}


def run_files(out_dir: Path, name: str) -> list[Path]:
    """The files and folders the run ``name`` writes in ``out_dir`` that already exist."""
    paths = (run_folder(out_dir, name), out_dir / f"{name}.ipynb", out_dir / "figures" / name)
    return [p for p in paths if p.exists()]


def check_clashes(runs: list[NotebookRun], out_dir: Path, overwrite: bool) -> None:
    """Refuse (unless ``overwrite``) to run into ``out_dir`` runs that already have files there.

    Other runs' files are no clash: running more notebooks into a workbook folder is how
    ``--only detr/02`` reads the ``detr/01`` runs there.
    """
    clashing = [run.name for run in runs if run_files(out_dir, run.name)]
    if not clashing or overwrite:
        return
    shown = ", ".join(clashing[:3])
    more = f" and {len(clashing) - 3} more" if len(clashing) > 3 else ""
    raise WorkbookOutputError(
        f"{out_dir} already holds the results of {len(clashing)} of the planned runs ({shown}"
        f"{more}); nothing was run: pass --overwrite to re-run them, or choose another --out"
    )


def _execute(run: NotebookRun, out_dir: Path, kernel_name: str, profile: str) -> RunResult:
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
    start, started = time.perf_counter(), time.time() - 2  # 2 s: coarse file system clocks
    status, error = "ok", ""
    try:
        papermill.execute_notebook(
            str(run.notebook),
            str(output),
            parameters=params,
            kernel_name=kernel_name,
            cwd=str(run.notebook.parent),
            progress_bar=False,
            **kernel_options(),
        )
    except Exception as err:  # noqa: BLE001 - a failing notebook must not stop the workbook
        status = "failed"
        ename = getattr(err, "ename", type(err).__name__)
        evalue = getattr(err, "evalue", str(err))
        error = f"{ename}: {evalue}".strip().splitlines()[0][:300]
    seconds = time.perf_counter() - start
    # only what this execution wrote: a re-run (--overwrite) leaves earlier files in place
    pngs = sorted(p for p in figures.glob("*.png") if p.stat().st_mtime >= started)
    tables = sorted(p for p in run_dir.glob("*.md") if p.stat().st_mtime >= started)
    finished = datetime.now().isoformat(timespec="seconds")
    return RunResult(run, status, seconds, output, pngs, tables, error, profile, finished)


def run_workbook(
    workbook: str | Path = "notebooks/workbook.yaml",
    profile: str = "default",
    only: list[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    out_dir: str | Path | None = None,
    kernel_name: str | None = None,
    progress: bool = True,
    families: list[str] | None = None,
    overwrite: bool = False,
) -> tuple[list[RunResult], Path]:
    """Execute the workbook; returns this execution's results and the summary path.

    Every check (spec, parameter names and types, ``{run:...}`` references, runs whose files
    already lie in ``out_dir`` unless ``overwrite``, the output folder) happens before the first
    notebook starts; after that it never stops early: a failing notebook is recorded and the rest
    run. ``summary.md`` and ``workbook.json`` are rewritten after every run, merged with the
    runs an earlier execution recorded there.
    """
    from tqdm.auto import tqdm

    if out_dir is None:
        out_dir = Path("runs") / "workbook" / datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = Path(out_dir).resolve()
    runs = plan_runs(workbook, profile, only, overrides, families, out_dir)
    earlier = load_results(out_dir)
    check_clashes(runs, out_dir, overwrite)
    make_folder(out_dir, "workbook output folder")
    kernel_name = kernel_name or default_kernel()
    results: list[RunResult] = []
    summary = out_dir / SUMMARY
    bar = tqdm(runs, desc=f"workbook ({profile})", unit="nb", disable=not progress)
    for run in bar:
        bar.set_postfix_str(run.name)
        result = _execute(run, out_dir, kernel_name, profile)
        results.append(result)
        summary = write_summary(results, out_dir, profile, earlier)
        mark = "ok" if result.status == "ok" else f"FAILED ({result.error})"
        bar.write(f"{run.name}: {mark} in {result.seconds:.1f} s, {len(result.figures)} figures")
    return results, summary
