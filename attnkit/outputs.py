"""Output folders that never lose an earlier run: each command writes its own files only, and
refuses to replace another run's files unless asked (``--overwrite``).

``attnkit train`` owns :data:`TRAIN_FILES`, ``attnkit eval`` :data:`EVAL_FILES`, ``attnkit
analyze`` :data:`ANALYSIS_FILES`; so ``eval --out`` or ``analyze --out`` may point at a training
run's folder without touching its ``config.yaml`` or checkpoint.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from attnkit.errors import EnvError, OutputError

TRAIN_FILES = ("last.pt", "config.yaml", "metrics.jsonl", "train_summary.json", "tb")
EVAL_FILES = ("metrics.json", "detections.json", "eval_config.yaml")
ANALYSIS_FILES = ("records.parquet", "summary.json", "analysis_config.yaml")


def make_folder(path: str | Path, what: str = "output folder") -> Path:
    """Create ``path`` (and parents); a folder that cannot be made or written into is an
    :class:`EnvError` naming it and the OS's reason."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise EnvError(f"cannot create the {what} {path}: {err.strerror or err}") from err
    if not os.access(path, os.W_OK | os.X_OK):
        raise EnvError(f"cannot write into the {what} {path}: permission denied")
    return path


def existing(out_dir: str | Path, names: Iterable[str]) -> list[Path]:
    """The files among ``names`` that already exist in ``out_dir``."""
    out_dir = Path(out_dir)
    return [out_dir / name for name in names if (out_dir / name).exists()]


def claim_output(
    out_dir: str | Path, names: Iterable[str], command: str, overwrite: bool = False
) -> Path:
    """Make ``out_dir`` (checked before any work) ready for ``command``'s files ``names``.

    When some of them exist (an earlier run of the command wrote there) and not ``overwrite``,
    refuse with an :class:`OutputError` naming them. Files of other commands in the folder are
    never touched; with ``overwrite`` the command's own files are replaced when it writes them.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise EnvError(f"--out {out_dir} is a file, not a folder")
    found = existing(out_dir, names)
    if found and not overwrite:
        listed = ", ".join(p.name for p in found)
        raise OutputError(
            f"{out_dir} already holds the output of an earlier `attnkit {command}` ({listed}): "
            "pass --overwrite to replace it, or choose another --out"
        )
    return make_folder(out_dir)


def remove_outputs(out_dir: str | Path, names: Iterable[str]) -> list[Path]:
    """Delete ``names`` (files or folders) from ``out_dir``; returns what was there."""
    found = existing(out_dir, names)
    for path in found:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    return found
