"""The registry of attention normalizers: scores ``[..., K]`` -> weights over the last dim.

Every normalizer is an ``nn.Module`` with a ``name`` attribute and the forward signature
``forward(scores, key_grid=None)``; ``key_grid = (h, w)`` (the row-major layout of the K keys)
is only used by TVMax. Shared guarantees: keys masked with ``-inf`` get exactly zero weight, a
fully masked row gives zeros (never NaN, also in the backward pass), and half-precision scores
are computed in float32 and returned in their own dtype.
"""

from __future__ import annotations

import difflib
import importlib
import inspect

import torch
from torch import nn

from attnkit.attention._threshold import compute_dtype
from attnkit.attention.alpha_entmax import AlphaEntmax
from attnkit.attention.entmax15 import Entmax15
from attnkit.attention.sparsemax import Sparsemax

__all__ = ["NORMALIZER_NAMES", "Softmax", "alpha_values", "get_normalizer", "make_normalizer"]

NORMALIZER_NAMES: tuple[str, ...] = ("softmax", "sparsemax", "entmax15", "alpha_entmax", "tvmax")


class Softmax(nn.Module):
    """Softmax over the last dim; a fully masked row gives zeros instead of NaN."""

    name = "softmax"

    def forward(
        self, scores: torch.Tensor, key_grid: tuple[int, int] | None = None
    ) -> torch.Tensor:
        dtype = compute_dtype(scores.dtype)
        dead = scores.amax(dim=-1, keepdim=True) == float("-inf")  # [..., 1]
        if not bool(dead.any()):
            return torch.softmax(scores, dim=-1, dtype=dtype).to(scores.dtype)
        safe = scores.masked_fill(dead, 0.0)  # keeps NaN out of the forward and backward
        weights = torch.softmax(safe, dim=-1, dtype=dtype).masked_fill(dead, 0.0)
        return weights.to(scores.dtype)


def _tvmax_class() -> type[nn.Module]:
    # Imported lazily: TVMax lives in its own module, written independently of this registry.
    return importlib.import_module("attnkit.attention.tvmax").TVMax


def get_normalizer(name: str, num_heads: int | None = None, **kw) -> nn.Module:
    """Build the normalizer called ``name`` (one of :data:`NORMALIZER_NAMES`).

    Args:
        name: ``softmax``, ``sparsemax``, ``entmax15``, ``alpha_entmax`` or ``tvmax`` (case and
            ``-`` versus ``_`` do not matter).
        num_heads: number of heads; required by a learned ``alpha_entmax`` (one alpha per head),
            ignored by the normalizers without parameters.
        **kw: options of the normalizer, e.g. ``alpha=1.3`` (a fixed alpha, no parameter) or
            ``alpha_init=1.5`` for ``alpha_entmax``.

    Raises:
        ValueError: for an unknown name; the message lists the valid names and the closest.
    """
    key = str(name).strip().lower().replace("-", "_")
    if key == "softmax":
        return Softmax(**kw)
    if key == "sparsemax":
        return Sparsemax(**kw)
    if key == "entmax15":
        return Entmax15(**kw)
    if key == "alpha_entmax":
        return AlphaEntmax(num_heads=num_heads, **kw)
    if key == "tvmax":
        cls = _tvmax_class()
        if num_heads is not None and "num_heads" in inspect.signature(cls).parameters:
            kw = {"num_heads": num_heads, **kw}
        return cls(**kw)
    close = difflib.get_close_matches(key, NORMALIZER_NAMES, n=1, cutoff=0.0)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ValueError(
        f"unknown normalizer {name!r}: valid names are {', '.join(NORMALIZER_NAMES)}{hint}"
    )


def make_normalizer(
    name: str, num_heads: int, alpha_init: float = 1.5, tvmax_lambda: float = 0.05
) -> nn.Module:
    """A fresh normalizer from config-level options; only the chosen normalizer's are passed.

    The one place where a model turns ``(name, alpha_init, tvmax_lambda)`` into a module, so
    every family has the same defaults (``tvmax_lambda`` 0.05 as the TVmax reference).
    """
    key = str(name).strip().lower().replace("-", "_")
    kw = {}
    if key == "alpha_entmax":
        kw["alpha_init"] = alpha_init
    elif key == "tvmax":
        kw["lam"] = tvmax_lambda
    return get_normalizer(name, num_heads=num_heads, **kw)


def alpha_values(model: nn.Module) -> dict[str, torch.Tensor]:
    """The learned alphas of every module whose normalizer has ``pre_alpha``: ``{name: [H]}``.

    Keys are the attention modules' names in ``model.named_modules()``; values are detached CPU
    tensors with one alpha per head, for logging. Works for any model, not only DETR.
    """
    alphas = {}
    for name, module in model.named_modules():
        normalizer = getattr(module, "normalizer", None)
        if isinstance(normalizer, nn.Module) and getattr(normalizer, "pre_alpha", None) is not None:
            alphas[name] = normalizer.alpha().detach().cpu()
    return alphas
