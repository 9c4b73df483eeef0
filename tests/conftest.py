"""Test-wide settings: a private data cache, a headless matplotlib, small shared fixtures."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Before anything imports attnkit or matplotlib (also inherited by notebook kernels we start).
os.environ.setdefault("ATTNKIT_CACHE", tempfile.mkdtemp(prefix="attnkit-test-cache-"))
os.environ.setdefault("MPLBACKEND", "Agg")

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
