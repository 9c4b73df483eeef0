"""Capture the attention weights of every attnkit attention module of a model.

The recorder is an observer of the record protocol in :mod:`attnkit.attention.hooks`: while it is
active the attention modules it watches compute their weights (explicit path) and emit them; all
other attention modules keep their fused path and compute no weights.
"""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from attnkit.attention.hooks import AttentionModule, add_observer, remove_observer

__all__ = ["AttentionRecord", "AttentionRecorder"]

Include = str | Iterable[str] | Callable[[str], bool] | None


@dataclass
class AttentionRecord:
    """The attention of one module in one forward call.

    Attributes:
        name: the module's name in ``model.named_modules()``.
        weights: per-head weights, ``[B, H, Q, K]`` for global attention (see ``meta`` for
            modules with another layout), before dropout, detached.
        key_grid: ``(h, w)`` row-major layout of the K keys, or None.
        key_padding_mask: ``[B, K]``, True at padded keys, or None; crop with it before scoring.
        call: index of this call among the module's calls while the recorder was active.
        meta: extra layout information a module emitted (empty for ``MultiheadAttention``).
        site: the label the model's family gives this attention site (``decoder L3 cross``),
            or None when the module was built outside ``build_model``.
    """

    name: str
    weights: torch.Tensor
    key_grid: tuple[int, int] | None
    key_padding_mask: torch.Tensor | None
    call: int = 0
    meta: dict[str, Any] = field(default_factory=dict)
    site: str | None = None


def _name_filter(include: Include) -> Callable[[str], bool]:
    """A predicate on module names from ``include`` (see :class:`AttentionRecorder`)."""
    if include is None:
        return lambda name: True
    if callable(include):
        return include
    patterns = [include] if isinstance(include, str) else list(include)
    if not all(isinstance(p, str) for p in patterns):
        raise TypeError(f"include must be None, strings or a callable, got {include!r}")

    def match(name: str) -> bool:
        for p in patterns:
            is_glob = any(c in p for c in "*?[")
            if fnmatch.fnmatchcase(name, p) if is_glob else p in name:
                return True
        return False

    return match


class AttentionRecorder:
    """Context manager recording the attention weights of a model's attnkit attention modules.

    Example::

        with AttentionRecorder(model, include=["decoder.*.cross_attn"]) as rec:
            model(images)
        maps = rec.last("decoder.layers.5.cross_attn").weights  # [B, H, Q, K]

    Args:
        model: any module; every :class:`~attnkit.attention.hooks.AttentionModule` inside it
            (found with ``model.named_modules()``) is a candidate.
        include: which candidates to record. None: all; a string or a list of strings: names
            containing the string, or matching it as a glob pattern when it has ``*``, ``?`` or
            ``[`` (``fnmatch``, whole name); a callable ``name -> bool``.
        to_cpu: move recorded tensors to the CPU (frees accelerator memory during long evals).
        dtype: cast the weights to this dtype (e.g. ``torch.float16`` to halve memory).
        sink: a callable receiving each :class:`AttentionRecord` as it is produced; the recorder
            then keeps nothing (streaming metrics over a whole validation set).
        detach: detach the weights from the autograd graph (default); False keeps them
            differentiable, e.g. to study gradients with respect to the attention maps.

    ``records`` maps module name -> list of records, one per forward call, in call order. Each
    ``with`` block starts with empty records. Several recorders may be active at once (each
    gets what it watches); entering a recorder that is already active is an error. Exiting,
    also through an exception, unregisters the recorder, and the modules return to their fused
    path.
    """

    def __init__(
        self,
        model: nn.Module,
        include: Include = None,
        to_cpu: bool = True,
        dtype: torch.dtype | None = None,
        sink: Callable[[AttentionRecord], Any] | None = None,
        detach: bool = True,
    ) -> None:
        self.model = model
        self.include = include
        self.to_cpu = to_cpu
        self.dtype = dtype
        self.sink = sink
        self.detach = detach
        self.records: dict[str, list[AttentionRecord]] = {}
        self._active = False
        self._watched: dict[nn.Module, str] = {}
        self._calls: dict[str, int] = {}
        self._resolve()

    def _resolve(self, warn: bool = True) -> None:
        """Find the attention modules to watch, by identity, named as in ``named_modules``."""
        candidates = [
            (name, m) for name, m in self.model.named_modules() if isinstance(m, AttentionModule)
        ]
        keep = _name_filter(self.include)
        self._watched = {m: name for name, m in candidates if keep(name)}
        if not candidates and warn:
            warnings.warn(
                f"{type(self.model).__name__} contains no attnkit attention module; "
                "nothing will be recorded",
                stacklevel=3,
            )
        elif candidates and not self._watched:
            raise ValueError(
                f"include={self.include!r} matches none of the attention modules "
                f"{[name for name, _ in candidates]}"
            )

    @property
    def names(self) -> list[str]:
        """Names of the watched modules, in ``named_modules`` order."""
        return list(self._watched.values())

    def __enter__(self) -> AttentionRecorder:
        if self._active:
            raise RuntimeError(
                "this AttentionRecorder is already active; nest a new AttentionRecorder instead"
            )
        self._resolve(warn=False)
        self.records = {}
        self._calls = {}
        add_observer(self)
        self._active = True
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._active = False
        remove_observer(self)

    # The observer protocol of attnkit.attention.hooks.

    def observes(self, module: nn.Module) -> bool:
        """Whether ``module`` is watched by this (active) recorder."""
        return self._active and module in self._watched

    def __call__(
        self,
        module: nn.Module,
        weights: torch.Tensor,
        key_grid: tuple[int, int] | None,
        key_padding_mask: torch.Tensor | None,
        meta: dict[str, Any],
    ) -> None:
        """Store (or stream to the sink) one forward call's weights of a watched module."""
        name = self._watched[module]
        call = self._calls.get(name, 0)
        self._calls[name] = call + 1
        if self.detach:
            weights = weights.detach()
        device = "cpu" if self.to_cpu else None
        weights = weights.to(device=device, dtype=self.dtype)
        if key_padding_mask is not None:
            key_padding_mask = key_padding_mask.detach().to(device=device)
        record = AttentionRecord(
            name=name,
            weights=weights,
            key_grid=None if key_grid is None else (int(key_grid[0]), int(key_grid[1])),
            key_padding_mask=key_padding_mask,
            call=call,
            meta=meta,
            site=getattr(module, "site", None),
        )
        if self.sink is not None:
            self.sink(record)
        else:
            self.records.setdefault(name, []).append(record)

    # Convenience accessors.

    def _get(self, name: str) -> list[AttentionRecord]:
        if name not in self.records:
            hint = " (this recorder streams to a sink and keeps nothing)" if self.sink else ""
            raise KeyError(f"no records for {name!r}{hint}; recorded: {sorted(self.records)}")
        return self.records[name]

    def last(self, name: str) -> AttentionRecord:
        """The record of the last forward call of module ``name``."""
        return self._get(name)[-1]

    def stacked(self, name: str) -> torch.Tensor:
        """The weights of all calls of module ``name``, stacked: ``[T, B, H, Q, K]``."""
        weights = [r.weights for r in self._get(name)]
        shapes = {tuple(w.shape) for w in weights}
        if len(shapes) > 1:
            raise ValueError(f"cannot stack the calls of {name!r}: shapes differ {sorted(shapes)}")
        return torch.stack(weights)  # [T, B, H, Q, K]

    @property
    def weights(self) -> dict[str, torch.Tensor]:
        """Module name -> weights of its last recorded call."""
        return {name: recs[-1].weights for name, recs in self.records.items()}

    def clear(self) -> None:
        """Drop all records (and restart the call counters)."""
        self.records = {}
        self._calls = {}
