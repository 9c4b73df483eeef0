"""Models built from attnkit attention, one folder per family (see ``registry.py``)."""

from attnkit.models.build import build_model
from attnkit.models.registry import FAMILIES, Family, get_family, register_family

__all__ = ["FAMILIES", "Family", "build_model", "get_family", "register_family"]
