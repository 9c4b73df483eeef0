"""The trained reference models shipped in ``checkpoints/`` (synthetic shapes data).

``checkpoints/shapes_tiny_<normalizer>.pt`` holds ``{"model": fp16 state dict, "config": dict,
"provenance": dict}``; ``<name>.metrics.jsonl`` beside it is the training log (loss, AP and alpha
curves for the notebooks) and ``<name>.provenance.json`` says how it was made. ``make
reference-models`` retrains them all.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from attnkit.runfiles import (
    CHECKPOINT_NAME,
    REPO_CHECKPOINTS,
    checkpoints_dir,
    git_revision,
    resolve_shipped_path,
)

__all__ = [
    "REFERENCE_NORMALIZERS",
    "REPO_CHECKPOINTS",
    "checkpoints_dir",
    "export_reference",
    "reference_checkpoint",
    "reference_metrics_log",
    "resolve_shipped_path",
]

REFERENCE_NORMALIZERS = ("softmax", "sparsemax", "entmax15", "alpha_entmax")


def reference_checkpoint(normalizer: str) -> Path:
    """Path of the shipped model whose decoder cross-attention uses ``normalizer``."""
    if normalizer not in REFERENCE_NORMALIZERS:
        raise ValueError(
            f"no reference model for {normalizer!r}; shipped: {', '.join(REFERENCE_NORMALIZERS)}"
        )
    path = checkpoints_dir() / f"shapes_tiny_{normalizer}.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `make reference-models` to train it")
    return path


def reference_metrics_log(normalizer: str) -> Path:
    """The training log (``metrics.jsonl``) of a shipped model."""
    return reference_checkpoint(normalizer).with_suffix(".metrics.jsonl")


def export_reference(run_dir: str | Path, out_path: str | Path, command: str = "") -> Path:
    """Write a run's ``last.pt`` as a shippable checkpoint: fp16 weights, config, provenance.

    Buffers that must stay exact (integer, e.g. batch-norm counters) keep their dtype.
    """
    run_dir, out_path = Path(run_dir), Path(out_path)
    ckpt = torch.load(run_dir / CHECKPOINT_NAME, map_location="cpu", weights_only=True)
    model = {k: v.half() if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    summary_path = run_dir / "train_summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    log = run_dir / "metrics.jsonl"
    records = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
    provenance = {
        "command": command,
        "git_revision": git_revision(),
        "exported": time.strftime("%Y-%m-%d %H:%M:%S"),
        "train_seconds": summary.get("seconds"),
        "steps": ckpt.get("step"),
        "epochs": ckpt.get("epoch"),
        "final_metrics": {
            k: v
            for k, v in summary.items()
            if isinstance(v, float) and k not in ("seconds", "loss")
        },
        "train_log_records": len(records),
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model, "config": ckpt["config"], "provenance": provenance}, out_path)
    out_path.with_suffix(".metrics.jsonl").write_text(log.read_text())
    out_path.with_suffix(".provenance.json").write_text(json.dumps(provenance, indent=1) + "\n")
    return out_path
