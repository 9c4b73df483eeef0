"""Test-wide settings: a private data cache, a headless matplotlib, small shared fixtures."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Before anything imports attnkit or matplotlib (also inherited by notebook kernels we start).
os.environ.setdefault("ATTNKIT_CACHE", tempfile.mkdtemp(prefix="attnkit-test-cache-"))
os.environ.setdefault("MPLBACKEND", "Agg")
# The fused normalizer kernels compile once per machine (~20 s), not once per test session.
os.environ.setdefault("ATTNKIT_KERNEL_CACHE", str(Path.home() / ".cache" / "attnkit" / "kernels"))
# Under pytest-xdist (`make test` runs `-n 2`) the workers share the cores: each worker, and the
# notebook kernels and subprocesses it starts, gets its share of threads instead of all of them.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    _share = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ.setdefault("OMP_NUM_THREADS", str(_share))
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory) -> Path:
    """A small synthetic COCO-format dataset (train 12, val 8 images)."""
    from attnkit.data.synthetic import make_shapes_coco

    root = tmp_path_factory.mktemp("shapes")
    make_shapes_coco(root, 12, seed=1, split="train")
    make_shapes_coco(root, 8, seed=2, split="val")
    return root
