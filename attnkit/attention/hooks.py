"""The record protocol between attention modules and whoever wants their attention weights.

Attention modules should not compute a ``[B, H, Q, K]`` weight tensor that nobody asked for:
the fused ``scaled_dot_product_attention`` path never materialises it. Analysis code (the
recorder in ``attnkit.analysis``) still needs those weights from deep inside a model. This module
is the meeting point, so that ``attnkit.attention`` never imports ``attnkit.analysis``:

* an **observer** (anything with ``observes(module) -> bool`` and
  ``__call__(module, weights, key_grid, key_padding_mask, meta)``) registers itself with
  :func:`add_observer` and unregisters with :func:`remove_observer`;
* every attnkit attention module subclasses :class:`AttentionModule` and, in its forward,

  1. asks ``record = self.observed()`` (a cheap check: ``False`` at once when no observer is
     registered),
  2. computes the weights when ``need_weights or record`` (explicit path), the fused path
     otherwise,
  3. calls ``self.emit(weights, key_grid=..., key_padding_mask=...)`` when ``record``.

Weights are emitted as produced by the normalizer (before dropout), per head, never averaged:
``[B, H, Q, K]`` for global attention. Modules whose natural layout differs (windowed attention
emits ``[B * num_windows, H, N, N]``, say) describe their layout in ``**meta`` keyword
arguments, which observers receive as a dict.

The registry is process-global (not per thread); all registered observers receive every
emission they observe, so several recorders can be active at once.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

__all__ = [
    "AttentionModule",
    "AttentionObserver",
    "add_observer",
    "remove_observer",
    "active_observers",
    "is_observed",
    "emit",
]


@runtime_checkable
class AttentionObserver(Protocol):
    """What :func:`add_observer` accepts."""

    def observes(self, module: nn.Module) -> bool:
        """Whether this observer wants the weights of ``module``."""

    def __call__(
        self,
        module: nn.Module,
        weights: torch.Tensor,
        key_grid: tuple[int, int] | None,
        key_padding_mask: torch.Tensor | None,
        meta: dict[str, Any],
    ) -> None:
        """Receive one forward call's weights of an observed module."""


_OBSERVERS: list[AttentionObserver] = []


def add_observer(observer: AttentionObserver) -> None:
    """Register ``observer``; registering the same object twice is an error."""
    if not isinstance(observer, AttentionObserver):
        raise TypeError(
            f"an attention observer needs observes(module) and __call__, got {type(observer)}"
        )
    if any(o is observer for o in _OBSERVERS):
        raise RuntimeError(f"{observer!r} is already registered as an attention observer")
    _OBSERVERS.append(observer)


def remove_observer(observer: AttentionObserver) -> None:
    """Unregister ``observer``; a no-op when it is not registered (safe in ``finally``)."""
    for i, o in enumerate(_OBSERVERS):
        if o is observer:
            del _OBSERVERS[i]
            return


def active_observers() -> tuple[AttentionObserver, ...]:
    """The registered observers, oldest first."""
    return tuple(_OBSERVERS)


def is_observed(module: nn.Module) -> bool:
    """Whether any registered observer wants the weights of ``module``."""
    if not _OBSERVERS:
        return False
    return any(o.observes(module) for o in _OBSERVERS)


def emit(
    module: nn.Module,
    weights: torch.Tensor,
    key_grid: tuple[int, int] | None = None,
    key_padding_mask: torch.Tensor | None = None,
    **meta: Any,
) -> None:
    """Hand one forward call's attention ``weights`` of ``module`` to the observers that want it.

    ``key_grid``: the ``(h, w)`` layout of the K keys (row-major) when they form an image grid;
    ``key_padding_mask``: ``[B, K]``, True at padded keys, so analysis can crop padded images.
    """
    for o in tuple(_OBSERVERS):
        if o.observes(module):
            o(module, weights, key_grid, key_padding_mask, dict(meta))


class AttentionModule(nn.Module):
    """Base class of every attnkit attention module; the recorder looks for its subclasses.

    It adds no parameters or buffers, so subclasses keep the state-dict layout they need.
    ``site`` is the label its model family gives this attention site (``decoder L3 cross``,
    ``block 4``); ``attnkit.models.build_model`` sets it, and recorders report it.
    """

    site: str | None = None

    def observed(self) -> bool:
        """Whether an active observer wants this module's weights in the current forward."""
        return is_observed(self)

    def emit(
        self,
        weights: torch.Tensor,
        key_grid: tuple[int, int] | None = None,
        key_padding_mask: torch.Tensor | None = None,
        **meta: Any,
    ) -> None:
        """Hand this forward call's weights to the observers (see :func:`emit`)."""
        emit(self, weights, key_grid=key_grid, key_padding_mask=key_padding_mask, **meta)
