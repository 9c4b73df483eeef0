"""The workbook spec: which notebook runs ``notebooks/workbook.yaml`` describes, and their names.

The spec lists notebooks of every model family in one ``notebooks`` list. Each entry has a
``family`` (the folder its notebook lives in, e.g. ``detr``) and an ``id`` (``"01"``); its full
id is ``<family>/<id>`` (``detr/01``). ``parameters`` apply in every profile, ``sweep`` maps a
parameter to a list of values (one run per combination) and ``profiles`` (one of
:data:`PROFILES`) replace them per profile (``skip: true`` leaves the notebook out).

A run is named ``<family>-<notebook stem>[__key-value...]`` (``detr-01_train__attention-softmax``)
so that two families' notebooks of the same stem never share an output folder. Its folder is
:func:`run_folder`; both the executor and the ``{run:...}`` placeholder go through these two
functions, so a reference always points at the folder the referenced run executes into. A ``-p``
override of a swept key pins the sweep to that one value: the run keeps its sweep-style name, so
``{run:...}`` references to that value still resolve (and the same folder is named either way).

Every value the spec or ``-p`` gives a parameter is checked against the type the notebook declares
(:func:`check_type`) before anything runs, so a typo fails in a second, not in a notebook cell.
"""

from __future__ import annotations

import ast
import difflib
import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from attnkit.errors import AttnkitError

PROFILES = ("smoke", "default", "gpu", "reference")
"""smoke: seconds, for the tests; default: the main job on the synthetic data (a short training);
gpu: COCO on a GPU server; reference: no training, analyses the shipped reference models."""
ENTRY_KEYS = {"family", "id", "notebook", "parameters", "sweep", "profiles", "description"}
PROFILE_KEYS = {"parameters", "sweep", "skip"}
NAME_PART = re.compile(r"[A-Za-z0-9_.-]+")
"""What a family or an id may hold: no ``/`` or ``:``, which separate them in full ids and
in ``{run:family/id:key=value}``."""


class WorkbookError(AttnkitError, ValueError):
    """A workbook spec or parameter that cannot be run; the message says which and where."""


@dataclass
class NotebookRun:
    """One execution of one notebook with one set of parameters.

    ``refs`` maps the body of each ``{run:...}`` placeholder in ``parameters`` to the name of the
    run it names (filled in when the workbook is planned). ``pinned`` holds the swept keys that a
    ``-p`` override fixed to one value (so a reference to another value can say why it is gone).
    """

    id: str
    family: str
    notebook: Path
    name: str
    parameters: dict[str, Any]
    sweep_values: dict[str, Any] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)
    pinned: dict[str, Any] = field(default_factory=dict)


def notebook_parameters(path: str | Path) -> dict[str, dict]:
    """The parameters a notebook declares in its ``parameters`` cell (papermill's inspection)."""
    import papermill

    return papermill.inspect_notebook(str(path))


def full_id(entry: Mapping) -> str:
    """``<family>/<id>``: how the CLI, the summary and ``{run:...}`` name a spec entry."""
    return f"{entry['family']}/{entry['id']}"


def load_workbook(path: str | Path) -> dict:
    """The spec at ``path``, checked: known keys, a family and an id per entry, unique full ids."""
    path = Path(path)
    if not path.is_file():
        raise WorkbookError(f"workbook spec not found: {path}")
    spec = yaml.safe_load(path.read_text()) or {}
    entries = spec.get("notebooks")
    if not isinstance(entries, list) or not entries:
        raise WorkbookError(f"{path}: needs a non-empty 'notebooks' list")
    seen = set()
    for entry in entries:
        unknown = set(entry) - ENTRY_KEYS
        if unknown:
            raise WorkbookError(f"{path}: entry {entry.get('id')!r} has unknown keys {unknown}")
        if not {"family", "id", "notebook"} <= set(entry):
            raise WorkbookError(f"{path}: every entry needs 'family', 'id' and 'notebook': {entry}")
        entry["id"] = str(entry["id"])
        for key in ("family", "id"):
            if not NAME_PART.fullmatch(str(entry[key])):
                raise WorkbookError(
                    f"{path}: entry {entry['id']!r}: {key} {entry[key]!r} may hold only letters, "
                    "digits, '_', '.' and '-'"
                )
        if full_id(entry) in seen:
            raise WorkbookError(f"{path}: two entries are {full_id(entry)}")
        seen.add(full_id(entry))
        for profile, chosen in (entry.get("profiles", {}) or {}).items():
            if profile not in PROFILES:
                raise WorkbookError(
                    f"{path}: entry {full_id(entry)}: unknown profile {profile!r} "
                    f"(profiles: {', '.join(PROFILES)})"
                )
            unknown = set(chosen or {}) - PROFILE_KEYS
            if unknown:
                raise WorkbookError(
                    f"{path}: entry {full_id(entry)}, profile {profile!r}: unknown keys {unknown} "
                    f"(allowed: {', '.join(sorted(PROFILE_KEYS))})"
                )
    return spec


def select_entries(
    entries: list[dict], families: list[str] | None = None, only: list[str] | None = None
) -> list[dict]:
    """The entries of ``families`` (default: all), narrowed to the ``only`` ids.

    An ``only`` id is a full id (``detr/02``) or a bare one (``02``) that exactly one of the
    selected families has; an ambiguous bare id is an error that lists the full ids.
    """
    known = list(dict.fromkeys(e["family"] for e in entries))
    unknown = [f for f in families or [] if f not in known]
    if unknown:
        raise WorkbookError(f"--family names unknown families {unknown}; known: {known}")
    if families:
        entries = [e for e in entries if e["family"] in families]
    if not only:
        return entries
    ids = [full_id(e) for e in entries]
    chosen, missing = set(), []
    for token in only:
        matches = [token] if token in ids else [full_id(e) for e in entries if e["id"] == token]
        if len(matches) > 1:
            raise WorkbookError(f"--only {token} is ambiguous: name one of {', '.join(matches)}")
        if matches:
            chosen.update(matches)
        else:
            missing.append(token)
    if missing:
        raise WorkbookError(f"--only names unknown notebooks {missing}; known: {ids}")
    return [e for e in entries if full_id(e) in chosen]


def run_name(entry: Mapping, notebook: Path, sweep_values: Mapping[str, Any]) -> str:
    """``<family>-<notebook stem>[__key-value...]``, the stem prefixed by the id if it lacks it."""
    stem = notebook.stem
    name = stem if stem.startswith(entry["id"]) else f"{entry['id']}_{stem}"
    name = f"{entry['family']}-{name}"
    for key, value in sweep_values.items():
        name += f"__{key}-{value}"
    return "".join(c if c.isalnum() or c in "-_.=" else "-" for c in name)


def run_folder(workbook_dir: str | Path, name: str) -> Path:
    """Where the run ``name`` of the workbook execution into ``workbook_dir`` writes its files."""
    return Path(workbook_dir) / "runs" / name


def check_declared(params: Mapping, declared: Mapping, where: str) -> None:
    """Every key of ``params`` is a parameter of the notebook, else an error with a close match."""
    for key in params:
        if key not in declared:
            close = difflib.get_close_matches(key, list(declared), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise WorkbookError(f"{where}: parameter {key!r} is not declared by the notebook{hint}")


def expand_entry(
    entry: Mapping,
    profile: str,
    spec_path: Path,
    overrides: Mapping[str, Any] | None = None,
    declared: Mapping | None = None,
) -> list[NotebookRun]:
    """The runs of one entry in ``profile``: its parameters, one run per sweep combination.

    With ``declared`` (the notebook's parameters) the spec's keys and values are checked against
    it, and ``overrides`` (already narrowed to declared keys and type-checked) replace parameters
    of those keys. An override of a swept key pins the sweep to its value: the run is still named
    ``...__key-value`` and ``pinned`` records it.
    """
    chosen = (entry.get("profiles") or {}).get(profile) or {}
    if chosen.get("skip"):
        return []
    notebook = (spec_path.parent / entry["notebook"]).resolve()
    params = {**(entry.get("parameters") or {}), **(chosen.get("parameters") or {})}
    sweep = dict(chosen.get("sweep", entry.get("sweep")) or {})
    if declared is not None:
        where = f"{spec_path}: notebook {full_id(entry)} ({profile})"
        check_declared(params, declared, where)
        check_declared(sweep, declared, where + " sweep")
        for key, value in params.items():
            check_type(key, value, declared[key], where)
        for key, values in sweep.items():
            if not isinstance(values, list):
                raise WorkbookError(f"{where}: sweep {key!r} must be a list of values")
            for value in values:
                check_type(key, value, declared[key], where + " sweep")
    pinned = {}
    for key, value in (overrides or {}).items():
        if key in sweep:
            sweep[key] = [value]
            pinned[key] = value
        else:
            params[key] = value
    keys = list(sweep)
    runs = []
    for values in itertools.product(*(sweep[k] for k in keys)):
        sweep_values = dict(zip(keys, values))
        name = run_name(entry, notebook, sweep_values)
        runs.append(
            NotebookRun(
                full_id(entry),
                entry["family"],
                notebook,
                name,
                {**params, **sweep_values},
                sweep_values,
                pinned=dict(pinned),
            )
        )
    return runs


# --------------------------------------------------------------------------- parameter types

ANNOTATED = {
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "bool": lambda v: isinstance(v, bool),
    "list": lambda v: isinstance(v, list),
    "tuple": lambda v: isinstance(v, list),
    "dict": lambda v: isinstance(v, dict),
}
"""What a parameter annotated with a type (``num: int = 3`` or ``# type: int``) accepts, strictly:
YAML gives ``int``/``float``/``str``/``bool``/``list``/``dict`` values. Any other annotation
(``Optional[int]``, ``Any``, none at all) accepts anything."""


def declared_type(info: Mapping) -> tuple[str | None, bool]:
    """The type a notebook parameter expects: ``(name, from_annotation)``; name None: anything.

    papermill's ``inferred_type_name`` comes from an annotation or a ``# type:`` comment. Without
    one (the usual ``num_samples = 12  # help``), the type of the literal default stands in,
    so that ``-p num_samples=abc`` is caught although nothing is annotated.
    """
    annotated = str(info.get("inferred_type_name") or "None").strip()
    if annotated != "None":
        base = annotated.split("[", 1)[0].strip().lower()
        return (base if base in ANNOTATED else None), True
    try:
        default = ast.literal_eval(str(info.get("default", "")))
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None, False
    for name in ("bool", "int", "float", "str", "list", "tuple", "dict"):
        if type(default).__name__ == name:
            return name, False
    return None, False


def accepts(type_name: str | None, from_annotation: bool, value: Any) -> bool:
    """Whether a parameter of ``type_name`` takes ``value`` (see :func:`declared_type`).

    A type read off the default is lenient where notebooks are: ``None`` is always accepted (the
    shipped notebooks document ``None`` as "the config's"), a float where the default is an int is
    not, and a list or dict default takes either (``models``: shipped names or ``{name: path}``).
    """
    if type_name is None:
        return True
    if from_annotation:
        return ANNOTATED[type_name](value)
    if value is None:
        return True
    if type_name in ("list", "tuple", "dict"):
        return isinstance(value, (list, dict))
    return ANNOTATED[type_name](value)


def type_problem(value: Any, info: Mapping) -> str | None:
    """Why the parameter described by ``info`` (papermill's inspection) refuses ``value``, or
    None: ``"expects int (default 12), got str 'abc'"``."""
    type_name, from_annotation = declared_type(info)
    if accepts(type_name, from_annotation, value):
        return None
    source = "annotated" if from_annotation else f"default {info.get('default')}"
    lenient = not from_annotation and type_name in ("list", "tuple", "dict")
    expected = "a list or dict" if lenient else type_name
    return f"expects {expected} ({source}), got {type(value).__name__} {value!r}"


def check_type(key: str, value: Any, info: Mapping, where: str) -> None:
    """A :class:`WorkbookError` at ``where`` unless the parameter ``key`` accepts ``value``."""
    problem = type_problem(value, info)
    if problem:
        raise WorkbookError(f"{where}: parameter {key!r} {problem}")
