"""Value constraints of config fields, declared once in the schemas and checked on load.

A field's type may carry checks with ``typing.Annotated``::

    batch_size: PositiveInt = 2
    dropout: Annotated[float, between(0, 1, hi_open=True)] = 0.1

and a schema class may list rules between its fields::

    CHECKS: ClassVar[tuple[Rule, ...]] = (divisible("hidden_dim", by="num_heads"),)

``attnkit.config.loader`` applies both to every config it builds, for every family, so an
impossible value (``data.batch_size=0``, ``train.lr=0``, ``hidden_dim`` not divisible by
``num_heads``) is a :class:`~attnkit.errors.ConfigError` naming the key, the file that set it and
what would be valid, before any work starts.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any


@dataclass(frozen=True)
class Check:
    """A test of one value; ``text`` completes "must be ..." (``"> 0"``)."""

    ok: Callable[[Any], bool]
    text: str

    def __call__(self, value: Any) -> bool:
        return bool(self.ok(value))


def _finite(value: Any) -> bool:
    return not isinstance(value, float) or math.isfinite(value)


POSITIVE = Check(lambda v: _finite(v) and v > 0, "> 0")
NON_NEGATIVE = Check(lambda v: _finite(v) and v >= 0, ">= 0")
FINITE = Check(_finite, "a finite number")


def between(lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> Check:
    """``lo <= v <= hi`` (``<`` on an open side)."""

    def ok(v: Any) -> bool:
        above = v > lo if lo_open else v >= lo
        below = v < hi if hi_open else v <= hi
        return _finite(v) and above and below

    left, right = "(" if lo_open else "[", ")" if hi_open else "]"
    return Check(ok, f"in {left}{lo}, {hi}{right}")


def length(n: int) -> Check:
    """A list of exactly ``n`` items."""
    return Check(lambda v: len(v) == n, f"a list of {n} items")


def non_empty() -> Check:
    return Check(lambda v: len(v) > 0, "non-empty")


PositiveInt = Annotated[int, POSITIVE]
NonNegativeInt = Annotated[int, NON_NEGATIVE]
PositiveFloat = Annotated[float, POSITIVE]
NonNegativeFloat = Annotated[float, NON_NEGATIVE]
Probability = Annotated[float, between(0, 1)]
"""A probability or a fraction: in [0, 1]."""
DropoutRate = Annotated[float, between(0, 1, hi_open=True)]
"""A dropout probability: in [0, 1) (1 would zero every activation)."""
ImageSize = Annotated[list[PositiveInt], length(2)]
"""``[H, W]`` in pixels."""


# --------------------------------------------------------------------------- rules between fields


@dataclass(frozen=True)
class Rule:
    """A constraint between fields of one schema: ``message(section)`` is None when it holds.

    ``keys`` are the fields involved (the error names where the first was set).
    """

    keys: tuple[str, ...]
    message: Callable[[Any], str | None]


def divisible(key: str, by: str) -> Rule:
    """``section.key`` must be a multiple of ``section.by`` (embedding width by heads)."""

    def message(section: Any) -> str | None:
        value, divisor = getattr(section, key), getattr(section, by)
        values = value if isinstance(value, list) else [value]
        if divisor and all(v % divisor == 0 for v in values):
            return None
        return f"'{{p}}{key}' ({value}) must be divisible by '{{p}}{by}' ({divisor})"

    return Rule((key, by), message)


def not_greater(key: str, than: str) -> Rule:
    """``section.key <= section.than`` (a minimum and its maximum)."""

    def message(section: Any) -> str | None:
        low, high = getattr(section, key), getattr(section, than)
        if low is None or high is None or low <= high:
            return None
        return f"'{{p}}{key}' ({low}) must not be greater than '{{p}}{than}' ({high})"

    return Rule((key, than), message)


def ascending(key: str) -> Rule:
    """A list that must be strictly increasing (bin edges)."""

    def message(section: Any) -> str | None:
        values = getattr(section, key)
        if all(a < b for a, b in zip(values, values[1:], strict=False)):
            return None
        return f"'{{p}}{key}' must be strictly increasing, got {values}"

    return Rule((key,), message)


def rule(keys: tuple[str, ...], test: Callable[[Any], bool], text: str) -> Rule:
    """Any other constraint: ``test(section)`` must hold; ``text`` says what (``{p}`` is the
    section's dotted prefix)."""
    return Rule(keys, lambda section: None if test(section) else text)


__all__ = [
    "FINITE",
    "NON_NEGATIVE",
    "POSITIVE",
    "Check",
    "DropoutRate",
    "ImageSize",
    "NonNegativeFloat",
    "NonNegativeInt",
    "PositiveFloat",
    "PositiveInt",
    "Probability",
    "Rule",
    "ascending",
    "between",
    "divisible",
    "length",
    "non_empty",
    "not_greater",
    "rule",
]
