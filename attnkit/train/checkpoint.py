"""Atomic, resumable checkpoints.

A checkpoint is a dict: ``model`` (the state dict), ``optimizer``, ``scheduler``, ``scaler``,
``rng`` (torch CPU/CUDA, NumPy and Python states), ``epoch``, ``step``, ``epoch_step`` and
``config`` (the resolved config as a plain dict, so ``attnkit eval`` needs nothing else). It is
written to a temporary file in the same folder, flushed to disk, then renamed over the old one:
a run killed at any moment leaves the last complete checkpoint intact. Loading always uses
``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import os
import pickle
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

from attnkit.errors import CheckpointError


def rng_state() -> dict:
    """Every random state the training loop depends on, as tensors and plain Python values."""
    # NumPy's legacy global generator: third-party code (augmentations) may draw from it.
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": _python_state_to_plain(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _python_state_to_plain(state):
    version, internal, gauss = state
    return {"version": version, "internal": list(internal), "gauss": gauss}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (
            np_state["kind"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached"],
        )
    )
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(state: dict, path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` (or any ``weights_only`` file).

    A missing, empty, truncated or foreign file (or one that would need unpickling arbitrary
    objects) is a :class:`CheckpointError` naming the file; nothing in it is executed.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): not a checkpoint")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        reason = " ".join(str(err).split())[:200]
        raise CheckpointError(
            f"{path} is not a checkpoint that loads safely (weights_only): {reason}"
        ) from err
    except (RuntimeError, EOFError, ValueError, OSError, UnicodeDecodeError) as err:
        reason = " ".join(str(err).split())[:160] or type(err).__name__
        raise CheckpointError(
            f"{path} cannot be read as a PyTorch checkpoint (truncated or another format?): "
            f"{reason}"
        ) from err
    if not isinstance(ckpt, dict):
        raise CheckpointError(
            f"{path} holds a {type(ckpt).__name__}, not a checkpoint dict or state dict"
        )
    return ckpt


def remove_partial_files(path: str | Path) -> list[Path]:
    """Delete the temporary files a run killed inside :func:`save_checkpoint` left next to
    ``path`` (``last.pt.<random>.tmp``); returns them."""
    path = Path(path)
    stale = sorted(path.parent.glob(f"{path.name}.*.tmp")) if path.parent.is_dir() else []
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale
