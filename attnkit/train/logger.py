"""Training logs: one JSON object per line in ``metrics.jsonl``, mirrored to TensorBoard.

Each record has ``step``, ``epoch``, a ``kind`` (``train`` / ``eval``) and numbers; list values
(the alphas of one layer, one per head) are written to TensorBoard as one scalar per element.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path


def _scalars(prefix: str, value):
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _scalars(f"{prefix}/{i}", v)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield prefix, float(value)


class MetricsLogger:
    """Appends records to ``out_dir/metrics.jsonl`` and to TensorBoard events in ``out_dir/tb``."""

    def __init__(self, out_dir: str | Path, tensorboard: bool = True, enabled: bool = True):
        self.path = Path(out_dir) / "metrics.jsonl"
        self.enabled = enabled
        self.writer = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(Path(out_dir) / "tb"))

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        clean = {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in record.items()
        }
        with self.path.open("a") as f:
            f.write(json.dumps(clean) + "\n")
        if self.writer is not None:
            step, kind = record.get("step", 0), record.get("kind", "train")
            for key, value in record.items():
                if key in ("step", "epoch", "kind"):
                    continue
                for tag, scalar in _scalars(f"{kind}/{key}", value):
                    self.writer.add_scalar(tag, scalar, step)

    def truncate_after(self, step: int) -> None:
        """Drop records past ``step`` (a resumed run re-does them)."""
        if not self.enabled or not self.path.is_file():
            return
        records = _parse_lines(self.path)
        keep = [line for line, record in records if record.get("step", 0) <= step]
        self.path.write_text("".join(line + "\n" for line in keep))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a ``metrics.jsonl`` file (or of a run folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    return [record for _, record in _parse_lines(path)]


def _parse_lines(path: Path) -> list[tuple[str, dict]]:
    """``(line, record)`` for every readable line; a torn line (a run killed mid-write) is
    dropped with a warning instead of failing the reader or the resume."""
    rows, torn = [], []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            torn.append(number)
            continue
        if isinstance(record, dict):
            rows.append((line, record))
        else:
            torn.append(number)
    if torn:
        warnings.warn(
            f"{path}: dropped {len(torn)} unreadable line(s) (line {torn[0]}; a run killed "
            "while writing leaves a torn last line)",
            stacklevel=3,
        )
    return rows
