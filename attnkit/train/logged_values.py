"""Model state worth following over training, logged with every training record.

Any module may define ``logged_values() -> {key: JSON-able value}`` (the Gaussian attention of the
``sa_conv`` family logs each head's centre and precision). The trainer writes them into
``metrics.jsonl`` as ``"<key>/<module name>"``, next to the learned alphas, so a figure can follow
them over training without saving a checkpoint per step.
"""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["logged_values"]


def logged_values(model: nn.Module) -> dict[str, Any]:
    """``{"<key>/<module name>": value}`` for every module of ``model`` with ``logged_values``."""
    model = getattr(model, "module", model)  # DistributedDataParallel's wrapped model
    record: dict[str, Any] = {}
    for name, module in model.named_modules():
        values = getattr(module, "logged_values", None)
        if callable(values):
            for key, value in values().items():
                record[f"{key}/{name}"] = value
    return record
