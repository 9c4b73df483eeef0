"""Files named once: a run folder's checkpoint, the shipped models' folder, provenance."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

__all__ = [
    "CHECKPOINT_NAME",
    "REPO_CHECKPOINTS",
    "checkpoints_dir",
    "git_revision",
    "resolve_checkpoint",
    "resolve_shipped_path",
]

CHECKPOINT_NAME = "last.pt"
"""The checkpoint ``attnkit train`` keeps in its run folder (written atomically)."""


REPO_CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"
"""The repository's folder of shipped models."""


def checkpoints_dir() -> Path:
    """``$ATTNKIT_CHECKPOINTS``, else the repository's ``checkpoints/`` folder."""
    env = os.environ.get("ATTNKIT_CHECKPOINTS")
    return Path(env) if env else REPO_CHECKPOINTS


def resolve_shipped_path(path: str | Path) -> Path:
    """``path`` with ``{checkpoints}`` replaced by the shipped-checkpoints folder, ``~`` expanded.

    Configs and workbook parameters name shipped files as ``{checkpoints}/<file>`` so they
    resolve from any working directory (notebooks run inside ``notebooks/<family>/``).
    ``$ATTNKIT_CHECKPOINTS`` is looked at first; a file it lacks is taken from the repository's
    ``checkpoints/`` folder.
    """
    text = str(path)
    if "{checkpoints}" not in text:
        return Path(text).expanduser()
    first = Path(text.replace("{checkpoints}", str(checkpoints_dir())))
    if first.exists():
        return first
    return Path(text.replace("{checkpoints}", str(REPO_CHECKPOINTS)))


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file from a file path, a run folder (which stands for its ``last.pt``) or
    ``{checkpoints}/<file>`` (a shipped model, see :func:`resolve_shipped_path`)."""
    path = resolve_shipped_path(path)
    return path / CHECKPOINT_NAME if path.is_dir() else path


def git_revision(short: bool = False) -> str:
    """The git commit of the working tree attnkit runs from, or ``unknown``."""
    cmd = ["git", "rev-parse", *(["--short"] if short else []), "HEAD"]
    try:
        out = subprocess.run(
            cmd, capture_output=True, text=True, timeout=5, cwd=Path(__file__).resolve().parent
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
