"""Placeholders in the workbook's string parameters: ``{workbook_dir}`` and ``{run:...}``.

``{run:detr/01}`` or ``{run:detr/01:attention=softmax}`` (the sweep values after the second
colon, comma-separated ``key=value``) stands for the folder of that notebook run in the same
workbook output (``<out>/runs/detr-01_train__attention-softmax``), so a notebook can analyse what
an earlier one wrote without spelling out run names. References are resolved when the workbook is
planned, against the runs the referenced entry's sweep produces in the chosen profile: an unknown
notebook, a combination the sweep does not produce (or that a ``-p`` override pinned away), a run
that comes later in the execution, or (when it is not part of the execution) a run folder that
does not exist is a :class:`WorkbookError` before any notebook starts. ``{workbook_dir}`` is the
output folder itself.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from attnkit.workbook_spec import NotebookRun, WorkbookError, run_folder

PLACEHOLDER = re.compile(r"\{run:([^{}]*)\}")


def _map_strings(value: Any, fn: Callable[[str], str]) -> Any:
    """``value`` with ``fn`` applied to every string in it (recursively in lists and dicts)."""
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, list):
        return [_map_strings(v, fn) for v in value]
    if isinstance(value, dict):
        return {k: _map_strings(v, fn) for k, v in value.items()}
    return value


def placeholder(ref_id: str, sweep_values: Mapping[str, Any]) -> str:
    """The placeholder that names the run of ``ref_id`` with ``sweep_values``."""
    values = ",".join(f"{k}={v}" for k, v in sweep_values.items())
    return f"{{run:{ref_id}{':' + values if values else ''}}}"


def _same(text: str, value: Any) -> bool:
    """Whether the placeholder's text ``text`` names the sweep value ``value``."""
    if text == str(value):
        return True
    try:
        return yaml.safe_load(text) == value
    except yaml.YAMLError:
        return False


def _parse(body: str, where: str) -> tuple[str, dict[str, str]]:
    """``"detr/01:attention=softmax"`` -> ``("detr/01", {"attention": "softmax"})``."""
    ref_id, _, text = body.partition(":")
    items = [item.split("=", 1) for item in text.split(",")] if text else []
    if not ref_id or any(len(item) != 2 or not item[0] for item in items):
        raise WorkbookError(
            f"{where}: malformed {{run:{body}}}; write {{run:family/id}} or "
            "{run:family/id:key=value,...}"
        )
    return ref_id, {k.strip(): v.strip() for k, v in items}


def resolve(
    body: str, runs_by_id: Mapping[str, list[NotebookRun]], profile: str, where: str
) -> str:
    """The name of the run that ``{run:<body>}`` names, among ``runs_by_id`` (full id -> runs)."""
    ref_id, given = _parse(body, where)
    if ref_id not in runs_by_id:
        known = ", ".join(runs_by_id)
        raise WorkbookError(
            f"{where}: {{run:{body}}} names unknown notebook {ref_id}; known: {known}"
        )
    candidates = runs_by_id[ref_id]
    for run in candidates:
        values = run.sweep_values
        if set(values) == set(given) and all(_same(given[k], values[k]) for k in values):
            return run.name
    pinned = candidates[0].pinned if candidates else {}
    clash = {k: v for k, v in pinned.items() if k in given and not _same(given[k], v)}
    if clash:
        pins = " ".join(f"-p {k}={v}" for k, v in clash.items())
        kept = ",".join(f"{k}={v}" for k, v in clash.items())
        raise WorkbookError(
            f"{where}: {pins} pins the sweep of {ref_id}, so {{run:{body}}} names no run; "
            f"select only {ref_id} and notebooks that use {kept} (--only), or drop the -p"
        )
    valid = ", ".join(placeholder(ref_id, r.sweep_values) for r in candidates)
    valid = valid or f"none, {ref_id} is skipped in profile {profile!r}"
    raise WorkbookError(
        f"{where}: {{run:{body}}} names no run of {ref_id} in profile {profile!r}; valid: {valid}"
    )


def resolve_references(
    run: NotebookRun, runs_by_id: Mapping[str, list[NotebookRun]], profile: str, where: str
) -> dict[str, str]:
    """Every ``{run:...}`` in ``run``'s parameters: placeholder body -> name of the run."""
    refs: dict[str, str] = {}

    def collect(key: str) -> Callable[[str], str]:
        def fn(text: str) -> str:
            for body in PLACEHOLDER.findall(text):
                refs[body] = resolve(body, runs_by_id, profile, f"{where}, parameter {key!r}")
            return text

        return fn

    for key, value in run.parameters.items():
        _map_strings(value, collect(key))
    return refs


def check_references(runs: list[NotebookRun], out_dir: str | Path | None) -> None:
    """Each referenced run executes earlier in ``runs``, or its folder exists under ``out_dir``.

    With ``out_dir`` None (a plan without an output folder yet) outside runs are not checked.
    """
    planned = {r.name for r in runs}
    done: set[str] = set()
    for run in runs:
        for body, name in run.refs.items():
            if name in planned and name not in done:
                raise WorkbookError(
                    f"{run.id}: {{run:{body}}} names run {name}, which executes after {run.name}; "
                    "order the workbook so the referenced notebook comes first"
                )
            folder = run_folder(out_dir, name) if out_dir is not None else None
            if name not in planned and folder is not None and not folder.is_dir():
                raise WorkbookError(
                    f"{run.id}: {{run:{body}}} is not part of this execution and {folder} does "
                    f"not exist; select {body.partition(':')[0]} too, or pass the --out of the "
                    "workbook run that made it"
                )
        done.add(run.name)


def substitute(value: Any, workbook_dir: str | Path, refs: Mapping[str, str]) -> Any:
    """``value`` with ``{workbook_dir}`` and each ``{run:...}`` of ``refs`` replaced by folders."""
    names = {"{workbook_dir}": str(workbook_dir)}
    names.update({f"{{run:{b}}}": str(run_folder(workbook_dir, n)) for b, n in refs.items()})

    def fn(text: str) -> str:
        for key, replacement in names.items():
            text = text.replace(key, replacement)
        return text

    return _map_strings(value, fn)
