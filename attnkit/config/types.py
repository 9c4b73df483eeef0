"""Value types shared by the config schemas of every family."""

from __future__ import annotations

from typing import Annotated, Literal

from attnkit.attention.normalizers import NORMALIZER_NAMES
from attnkit.config.constraints import between

NormalizerName = Literal[NORMALIZER_NAMES]  # type: ignore[valid-type]
"""One of ``attnkit.attention.NORMALIZER_NAMES`` (the list is written once, there)."""

AlphaInit = Annotated[float, between(1.01, 2, lo_open=True, hi_open=True)]
"""alpha-entmax's initial alpha: in (1.01, 2), the open range its clamp allows."""
