"""The files of a run folder, named once: the checkpoint, and the provenance of what wrote it."""

from __future__ import annotations

import subprocess
from pathlib import Path

__all__ = ["CHECKPOINT_NAME", "git_revision", "resolve_checkpoint"]

CHECKPOINT_NAME = "last.pt"
"""The checkpoint ``attnkit train`` keeps in its run folder (written atomically)."""


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file from a file path or a run folder (which stands for its ``last.pt``)."""
    path = Path(path).expanduser()
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
