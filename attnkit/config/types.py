"""Value types shared by the config schemas of every family."""

from __future__ import annotations

from typing import Literal

from attnkit.attention.normalizers import NORMALIZER_NAMES

NormalizerName = Literal[NORMALIZER_NAMES]  # type: ignore[valid-type]
"""One of ``attnkit.attention.NORMALIZER_NAMES`` (the list is written once, there)."""
