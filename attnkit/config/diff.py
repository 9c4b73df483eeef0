"""Compare configs key by key: what a run changed against the reference recipe (pitfall 6)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from attnkit.config.loader import config_to_dict, load_config


def flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_diff(a: Any, b: Any) -> list[tuple[str, Any, Any]]:
    """The keys whose resolved values differ: ``[(dotted_key, value_in_a, value_in_b)]``.

    A key only one side has (configs of two families) has :data:`ABSENT` on the other side.

    ``a`` and ``b`` are config dataclasses, or paths to config files or run folders.
    """
    cfg_a = a if dataclasses.is_dataclass(a) else load_config(a)
    cfg_b = b if dataclasses.is_dataclass(b) else load_config(b)
    flat_a = flatten(config_to_dict(cfg_a))
    flat_b = flatten(config_to_dict(cfg_b))
    rows = []
    for key in sorted(set(flat_a) | set(flat_b)):
        va, vb = flat_a.get(key, ABSENT), flat_b.get(key, ABSENT)
        if va != vb:
            rows.append((key, va, vb))
    return rows


class _Absent:
    """The value of a key one config lacks (another family's section): shown as ``(absent)``."""

    def __repr__(self) -> str:
        return "(absent)"


ABSENT = _Absent()
