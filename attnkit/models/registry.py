"""The model-family registry: what a family declares once, and what everything else looks up.

A family (``detr``, ``vit``, ``cnn``, ...) is one :class:`Family` record, registered by a
``family.py`` module in its own folder. Config loading, ``build_model``, the training loop,
``attnkit eval`` / ``analyze`` and the workbook only ever go through this record, never through
a family's name. Adding a family is its folder, its configs and notebooks, and one line in
:data:`BUILTIN_FAMILIES` (or a call to :func:`register_family` from your own code or a test).

The registry is filled lazily: the family modules are imported on the first lookup, so
importing ``attnkit.config`` stays cheap and free of import cycles.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

__all__ = ["BUILTIN_FAMILIES", "FAMILIES", "Family", "family_of", "get_family", "register_family"]

BUILTIN_FAMILIES: tuple[str, ...] = (
    "attnkit.models.detr.family",
    "attnkit.models.vit.family",
    "attnkit.models.cnn.family",
    "attnkit.models.sa_conv.family",
    "attnkit.models.maxvit.family",
    "attnkit.models.dense.family",
)
"""Modules that register the shipped families when imported (one line per family)."""


@dataclass(frozen=True)
class Family:
    """Everything attnkit needs to know about one model family.

    Attributes:
        name: the ``model.name`` that selects it in a config.
        schema: dataclass of the ``model`` config section (its ``name`` field is a Literal of
            ``name``).
        build: ``build(cfg) -> nn.Module`` from the whole experiment config; the model is called
            as ``model(**batch.inputs)``.
        task: name of its default task in ``attnkit.tasks.TASK_MODULES`` (``detection``,
            ``classification``, ``dense_regression``): the data schema, datasets, collate,
            criterion and evaluator.
        tasks: the other tasks the family's models can do besides ``task``
            (``dense_segmentation``); a config picks one with its root key ``task``.
        loss_schema: dataclass of the ``loss`` section when the family's differs from its task's.
        site_label: module name -> the label figures and tables show for an attention site
            (``decoder L3 cross``, ``block 4``), or None to keep the module name.
        analysis_layers: the attention modules ``attnkit analyze`` scores by default (recorder
            include patterns; None = every attention module).
        scorers: task-specific attention scorers for analysis, as ``"module:attribute"`` paths
            of factories ``factory(cfg) -> scorer`` (imported only when analysing).
        foreign_weights: ``{format: (detect(state) -> bool, load(model, state) -> report)}``,
            loaders of other codebases' state dicts (official DETR, timm).
        normalizer_keys: the config keys (dotted, from the config root) that choose the
            attention normalizer of the family's sparse variant, all set alike by ``attnkit bench
            models --normalizers`` (empty: the family has no normalizer to swap).
        variants: named variants, ``{name: description}`` (listed by ``attnkit models``).
        description: one line for ``attnkit models``.
    """

    name: str
    schema: type
    build: Callable[[Any], nn.Module]
    task: str
    tasks: tuple[str, ...] = ()
    loss_schema: type | None = None
    site_label: Callable[[str], str | None] | None = None
    analysis_layers: tuple[str, ...] | None = None
    scorers: tuple[str, ...] = ()
    foreign_weights: Mapping[str, tuple[Callable, Callable]] = field(default_factory=dict)
    normalizer_keys: tuple[str, ...] = ()
    variants: Mapping[str, str] = field(default_factory=dict)
    description: str = ""

    @property
    def all_tasks(self) -> tuple[str, ...]:
        """Every task the family offers: its default ``task`` first, then ``tasks``."""
        return (self.task, *(t for t in self.tasks if t != self.task))

    def foreign_format(self, state: Mapping[str, Any]) -> str | None:
        """The name of the foreign format ``state`` is in, or None for attnkit's own."""
        for fmt, (detect, _) in self.foreign_weights.items():
            if detect(state):
                return fmt
        return None


class _Registry(Mapping[str, Family]):
    """``name -> Family``, importing :data:`BUILTIN_FAMILIES` on first use."""

    def __init__(self) -> None:
        self._families: dict[str, Family] = {}
        self._loaded = False

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            for module in BUILTIN_FAMILIES:
                importlib.import_module(module)

    def add(self, family: Family, replace: bool = False) -> None:
        self._load()
        if family.name in self._families and not replace:
            raise ValueError(f"a model family named {family.name!r} is already registered")
        self._families[family.name] = family

    def remove(self, name: str) -> None:
        self._families.pop(name, None)

    def __getitem__(self, name: str) -> Family:
        self._load()
        return self._families[name]

    def __iter__(self) -> Iterator[str]:
        self._load()
        return iter(self._families)

    def __len__(self) -> int:
        self._load()
        return len(self._families)


FAMILIES = _Registry()
"""Every registered family by name (the shipped ones and any added with register_family)."""


def register_family(family: Family, replace: bool = False) -> Family:
    """Add ``family`` to :data:`FAMILIES`; a second family of the same name is an error."""
    FAMILIES.add(family, replace=replace)
    return family


def get_family(name: str) -> Family:
    """The family called ``name``; an unknown name lists the known ones and the closest."""
    if name in FAMILIES:
        return FAMILIES[name]
    known = sorted(FAMILIES)
    close = difflib.get_close_matches(str(name), known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown model family {name!r}: known families are {', '.join(known)}{hint}")


def family_of(cfg) -> Family:
    """The family of an experiment config (``cfg.model.name``)."""
    return get_family(cfg.model.name)
