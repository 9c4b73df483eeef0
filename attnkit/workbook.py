"""The workbook: run the numbered notebooks in batch with papermill and summarise the results.

``notebooks/workbook.yaml`` lists the notebooks in order. Each entry has ``parameters`` (for every
profile), an optional ``sweep`` (parameter -> list of values: one run per combination) and
``profiles`` (one of :data:`PROFILES` -> ``{parameters: ..., sweep: ..., skip: ...}`` replacing
the entry's; ``skip: true`` leaves the notebook out of that profile). The runner injects
``figures_dir``, ``run_dir`` and ``workbook_dir`` into notebooks that declare them (and replaces
``{workbook_dir}`` in string parameters, so a notebook can read what an earlier one wrote),
executes every run into ``out/``, goes on past failures (papermill keeps the failing cell in the
executed notebook) and writes ``summary.md`` and ``workbook.json``.
"""

from __future__ import annotations

import difflib
import itertools
import json
import subprocess
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

PROFILES = ("smoke", "default", "gpu", "reference")
"""smoke: seconds, for the tests; default: the main job on the synthetic data (a short training);
gpu: COCO on a GPU server; reference: no training, analyses the shipped reference models."""
INJECTED = ("figures_dir", "run_dir", "workbook_dir")
ENTRY_KEYS = {"id", "notebook", "parameters", "sweep", "profiles", "description"}
PROFILE_KEYS = {"parameters", "sweep", "skip"}


class WorkbookError(ValueError):
    """A workbook spec or parameter that cannot be run; the message says which and where."""


@dataclass
class NotebookRun:
    """One execution of one notebook with one set of parameters."""

    id: str
    notebook: Path
    name: str
    parameters: dict[str, Any]


@dataclass
class RunResult:
    run: NotebookRun
    status: str  # "ok" | "failed"
    seconds: float
    output: Path
    figures: list[Path] = field(default_factory=list)
    tables: list[Path] = field(default_factory=list)
    error: str = ""


def notebook_parameters(path: str | Path) -> dict[str, dict]:
    """The parameters a notebook declares in its ``parameters`` cell (papermill's inspection)."""
    import papermill

    return papermill.inspect_notebook(str(path))


def load_workbook(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise WorkbookError(f"workbook spec not found: {path}")
    spec = yaml.safe_load(path.read_text()) or {}
    entries = spec.get("notebooks")
    if not isinstance(entries, list) or not entries:
        raise WorkbookError(f"{path}: needs a non-empty 'notebooks' list")
    for entry in entries:
        unknown = set(entry) - ENTRY_KEYS
        if unknown:
            raise WorkbookError(f"{path}: entry {entry.get('id')!r} has unknown keys {unknown}")
        if "id" not in entry or "notebook" not in entry:
            raise WorkbookError(f"{path}: every entry needs 'id' and 'notebook': {entry}")
        for profile, chosen in (entry.get("profiles", {}) or {}).items():
            if profile not in PROFILES:
                raise WorkbookError(
                    f"{path}: entry {entry['id']!r}: unknown profile {profile!r} "
                    f"(profiles: {', '.join(PROFILES)})"
                )
            unknown = set(chosen or {}) - PROFILE_KEYS
            if unknown:
                raise WorkbookError(
                    f"{path}: entry {entry['id']!r}, profile {profile!r}: unknown keys {unknown} "
                    f"(allowed: {', '.join(sorted(PROFILE_KEYS))})"
                )
    return spec


def _run_name(entry_id: str, notebook: Path, sweep_values: Mapping[str, Any]) -> str:
    stem = notebook.stem
    name = stem if stem.startswith(str(entry_id)) else f"{entry_id}_{stem}"
    for key, value in sweep_values.items():
        name += f"__{key}-{value}"
    return "".join(c if c.isalnum() or c in "-_.=" else "-" for c in name)


def _check_declared(params: Mapping, declared: Mapping, where: str) -> None:
    for key in params:
        if key not in declared:
            close = difflib.get_close_matches(key, list(declared), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise WorkbookError(f"{where}: parameter {key!r} is not declared by the notebook{hint}")


def plan_runs(
    workbook: str | Path,
    profile: str = "default",
    only: list[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> list[NotebookRun]:
    """Expand the workbook into the runs of ``profile`` (filtered by ``only`` notebook ids).

    ``overrides`` (``-p key=value``) apply to every selected notebook that declares the key and
    replace a sweep over that key; a key no selected notebook declares is an error.
    """
    if profile not in PROFILES:
        raise WorkbookError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    workbook = Path(workbook)
    spec = load_workbook(workbook)
    entries = spec["notebooks"]
    if only:
        known = [str(e["id"]) for e in entries]
        missing = [o for o in only if o not in known]
        if missing:
            raise WorkbookError(f"--only names unknown notebooks {missing}; known: {known}")
        entries = [e for e in entries if str(e["id"]) in only]
    overrides = dict(overrides or {})
    used: set[str] = set()
    runs = []
    for entry in entries:
        notebook = (workbook.parent / entry["notebook"]).resolve()
        declared = notebook_parameters(notebook)
        chosen = (entry.get("profiles") or {}).get(profile) or {}
        if chosen.get("skip"):
            continue
        params = {**(entry.get("parameters") or {}), **(chosen.get("parameters") or {})}
        sweep = dict(chosen.get("sweep", entry.get("sweep")) or {})
        where = f"{workbook}: notebook {entry['id']} ({profile})"
        _check_declared(params, declared, where)
        _check_declared(sweep, declared, where + " sweep")
        for key, value in overrides.items():
            if key in declared:
                used.add(key)
                params[key] = value
                sweep.pop(key, None)
        keys = list(sweep)
        for values in itertools.product(*(sweep[k] for k in keys)) if keys else [()]:
            sweep_values = dict(zip(keys, values))
            name = _run_name(str(entry["id"]), notebook, sweep_values)
            runs.append(NotebookRun(str(entry["id"]), notebook, name, {**params, **sweep_values}))
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
    return runs


def default_kernel() -> str:
    """The ``attnkit`` Jupyter kernel when registered (``make venv`` does), else ``python3``."""
    from jupyter_client.kernelspec import KernelSpecManager

    return "attnkit" if "attnkit" in KernelSpecManager().find_kernel_specs() else "python3"


def _substitute(value: Any, names: Mapping[str, str]) -> Any:
    """Replace ``{workbook_dir}`` in string parameter values (recursively in lists and dicts).

    Lets a notebook use what an earlier one wrote, e.g.
    ``checkpoint: "{workbook_dir}/runs/01_train__attention-sparsemax/last.pt"``.
    """
    if isinstance(value, str):
        for key, replacement in names.items():
            value = value.replace("{" + key + "}", replacement)
        return value
    if isinstance(value, list):
        return [_substitute(v, names) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, names) for k, v in value.items()}
    return value


def _execute(run: NotebookRun, out_dir: Path, kernel_name: str) -> RunResult:
    import papermill

    output = out_dir / f"{run.name}.ipynb"
    figures = out_dir / "figures" / run.name
    run_dir = out_dir / "runs" / run.name
    declared = notebook_parameters(run.notebook)
    injected = {"figures_dir": str(figures), "run_dir": str(run_dir), "workbook_dir": str(out_dir)}
    params = {
        **{k: v for k, v in injected.items() if k in declared},
        **_substitute(run.parameters, {"workbook_dir": str(out_dir)}),
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


def _git_revision() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def write_summary(results: list[RunResult], out_dir: Path, profile: str) -> Path:
    """``summary.md``: every run with status, duration and links to its figures and tables."""
    total = sum(r.seconds for r in results)
    failed = [r for r in results if r.status != "ok"]
    lines = [
        f"# attnkit workbook: profile `{profile}`",
        "",
        f"{datetime.now():%Y-%m-%d %H:%M}, git `{_git_revision()}`, {len(results)} runs, "
        f"{len(failed)} failed, {total:.0f} s in all.",
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
        lines += ["", f"## {r.run.name}", ""]
        params = ", ".join(f"`{k}={v}`" for k, v in r.run.parameters.items())
        lines.append(f"Parameters: {params or 'defaults'}")
        for table in r.tables:
            rel = table.relative_to(out_dir)
            lines += ["", f"Table [{rel}]({rel}):", "", table.read_text().strip()]
        for png in r.figures:
            rel = png.relative_to(out_dir)
            pdf = rel.with_suffix(".pdf")
            lines += ["", f"![{png.stem}]({rel})", f"[{png.stem} (PDF)]({pdf})"]
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
) -> tuple[list[RunResult], Path]:
    """Execute the workbook; returns the results and the summary path. Never stops early."""
    from tqdm.auto import tqdm

    runs = plan_runs(workbook, profile, only, overrides)
    if out_dir is None:
        out_dir = Path("runs") / "workbook" / datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = Path(out_dir).resolve()
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
