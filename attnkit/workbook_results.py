"""What a workbook execution records in its output folder: ``workbook.json`` and ``summary.md``.

``workbook.json`` lists one entry per notebook run (its name, parameters, status, duration, error,
executed notebook, figures and tables, profile and finishing time). An output folder can receive
several executions (``--only detr/02`` after a whole run, or ``--overwrite`` to re-run some), so
the record is cumulative: :func:`merge_results` keeps every earlier entry that this execution did
not re-run, with its status and error, and replaces the ones it did. ``summary.md`` is rendered
from the merged record, grouped by family, so nothing earlier disappears from it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from attnkit.runfiles import git_revision
from attnkit.workbook_spec import NotebookRun, WorkbookError

RECORD = "workbook.json"
SUMMARY = "summary.md"


@dataclass
class RunResult:
    """What one notebook run produced: its status, duration, executed notebook, figures, tables.

    ``profile`` and ``finished`` (ISO time) tell the runs of this execution from earlier ones kept
    in the same output folder.
    """

    run: NotebookRun
    status: str  # "ok" | "failed"
    seconds: float
    output: Path
    figures: list[Path] = field(default_factory=list)
    tables: list[Path] = field(default_factory=list)
    error: str = ""
    profile: str = ""
    finished: str = ""


def result_to_json(result: RunResult) -> dict[str, Any]:
    """One ``workbook.json`` entry (paths as strings)."""
    entry = asdict(result)
    entry["run"] = {**asdict(result.run), "notebook": str(result.run.notebook)}
    return json.loads(json.dumps(entry, default=str))


def result_from_json(entry: dict[str, Any], out_dir: Path) -> RunResult:
    """The :class:`RunResult` of one ``workbook.json`` entry, its paths moved under ``out_dir``.

    Paths are recorded absolute; when the folder was moved or copied since, they are re-rooted
    at ``out_dir`` (the folder the entry's executed notebook lay in is the old root).
    """
    old_root = Path(entry["output"]).parent

    def rebase(path: str) -> Path:
        try:
            return out_dir / Path(path).relative_to(old_root)
        except ValueError:
            return Path(path)

    run = entry["run"]
    notebook_run = NotebookRun(
        id=run["id"],
        family=run.get("family") or run["id"].partition("/")[0],
        notebook=Path(run["notebook"]),
        name=run["name"],
        parameters=dict(run.get("parameters") or {}),
        sweep_values=dict(run.get("sweep_values") or {}),
        refs=dict(run.get("refs") or {}),
        pinned=dict(run.get("pinned") or {}),
    )
    return RunResult(
        notebook_run,
        entry["status"],
        float(entry.get("seconds") or 0.0),
        rebase(entry["output"]),
        [rebase(p) for p in entry.get("figures") or []],
        [rebase(p) for p in entry.get("tables") or []],
        entry.get("error") or "",
        entry.get("profile") or "",
        entry.get("finished") or "",
    )


def load_results(out_dir: Path) -> list[RunResult]:
    """The runs an earlier execution recorded in ``out_dir/workbook.json`` (none: empty list).

    A record that cannot be read stops the execution before anything runs, since writing the new
    one would lose it.
    """
    path = out_dir / RECORD
    if not path.is_file():
        return []
    try:
        entries = json.loads(path.read_text())
        if not isinstance(entries, list):
            raise TypeError("not a list of runs")
        return [result_from_json(entry, out_dir) for entry in entries]
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as err:
        raise WorkbookError(
            f"{path} holds the results of an earlier execution but cannot be read "
            f"({type(err).__name__}: {err}); nothing was run: move it away or choose another --out"
        ) from err


def merge_results(earlier: list[RunResult], results: list[RunResult]) -> list[RunResult]:
    """``earlier`` with the runs of the same name replaced by ``results``, then the new ones."""
    fresh = {r.run.name: r for r in results}
    merged = [fresh.pop(r.run.name, r) for r in earlier]
    return merged + [r for r in results if r.run.name in fresh]


def _write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file, so an interruption never leaves a
    half-written record (which the next execution would refuse to replace)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _link(path: Path, out_dir: Path) -> Path:
    """``path`` relative to ``out_dir`` where it lies under it (links in ``summary.md``)."""
    try:
        return path.relative_to(out_dir)
    except ValueError:
        return path


def _family_lines(results: list[RunResult], out_dir: Path) -> list[str]:
    """One family's part of ``summary.md``: its total, a table of its runs, then each run."""
    failed = sum(r.status != "ok" for r in results)
    seconds = sum(r.seconds for r in results)
    lines = [
        f"{len(results)} runs, {failed} failed, {seconds:.0f} s in all.",
        "",
        "| run | status | duration | notebook | figures | finished |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        mark = "ok" if r.status == "ok" else f"**FAILED**: {r.error}"
        nb = _link(r.output, out_dir)
        lines.append(
            f"| {r.run.name} | {mark} | {r.seconds:.1f} s | [{nb}]({nb}) | {len(r.figures)} "
            f"| {r.finished.replace('T', ' ')} |"
        )
    for r in results:
        lines += ["", f"### {r.run.name}", ""]
        params = ", ".join(f"`{k}={v}`" for k, v in r.run.parameters.items())
        lines.append(f"Parameters: {params or 'defaults'}")
        for table in r.tables:
            rel = _link(table, out_dir)
            text = table.read_text().strip() if table.is_file() else "(file no longer there)"
            lines += ["", f"Table [{rel}]({rel}):", "", text]
        for png in r.figures:
            rel = _link(png, out_dir)
            pdf = rel.with_suffix(".pdf")
            lines += ["", f"![{png.stem}]({rel})", f"[{png.stem} (PDF)]({pdf})"]
    return lines


def write_summary(
    results: list[RunResult],
    out_dir: Path,
    profile: str,
    earlier: list[RunResult] | None = None,
) -> Path:
    """``summary.md`` and ``workbook.json`` for ``results`` merged into ``earlier``; returns the
    summary's path.

    Per family (``## detr``): its total seconds, then every run with status, duration, finishing
    time and links to its figures and tables. The header counts the runs kept from earlier
    executions into the same folder.
    """
    merged = merge_results(earlier or [], results)
    fresh = {id(r) for r in results}
    kept = sum(id(r) not in fresh for r in merged)
    profiles = list(dict.fromkeys([*(r.profile for r in merged if r.profile), profile]))
    total = sum(r.seconds for r in merged)
    failed = sum(r.status != "ok" for r in merged)
    label = "profile" if len(profiles) == 1 else "profiles"
    header = (
        f"{datetime.now():%Y-%m-%d %H:%M}, git `{git_revision(short=True)}`, {len(merged)} runs, "
        f"{failed} failed, {total:.0f} s in all."
    )
    if kept:
        header += (
            f" {kept} of them ran in earlier executions into this folder (their results are "
            f"kept from {RECORD}; see the finished column)."
        )
    lines = [
        f"# attnkit workbook: {label} {', '.join(f'`{p}`' for p in profiles)}",
        "",
        header,
    ]
    families: dict[str, list[RunResult]] = {}
    for r in merged:
        families.setdefault(r.run.family, []).append(r)
    for family, group in families.items():
        lines += ["", f"## {family}", "", *_family_lines(group, out_dir)]
    path = out_dir / SUMMARY
    _write(path, "\n".join(lines) + "\n")
    _write(out_dir / RECORD, json.dumps([result_to_json(r) for r in merged], indent=1))
    return path
