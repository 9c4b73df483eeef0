"""Names as figures and tables show them: layers, normalizers, model colours.

Attention modules are named as in ``model.named_modules()``
(``transformer.decoder.layers.2.multihead_attn``); figures call them ``layer 3`` (1-based, as the
thesis does), with ``enc``/``self`` marking encoder and decoder self-attention. Other families
name their sites themselves: pass ``sites`` (``{module name: label}``, the ``meta.sites`` of an
analysis ``summary.json``) and those labels win; without them a name with blocks gets a label
that keeps them apart (``blocks.1.attn`` -> ``block 2``, ``layers.0.blocks.1.attn`` ->
``layer 1 block 2``, ``stages.1.blocks.0.attn_grid.attn`` -> ``stage 2 block 1 grid``) instead
of collapsing on the layer number. Models compared in
a figure are named after their normalizer, optionally with a suffix (``sparsemax (random init)``);
:func:`model_color` gives every name that contains a normalizer that normalizer's colour.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import seaborn as sns

from attnkit.viz.style import NORMALIZER_COLORS

__all__ = [
    "RANDOM_SUFFIX",
    "block_index",
    "layer_index",
    "layer_label",
    "layer_labels",
    "model_color",
    "model_colors",
    "normalizer_of",
    "normalizer_label",
    "sort_layers",
    "stage_index",
]

NORMALIZER_LABELS = {
    "softmax": "softmax",
    "sparsemax": "sparsemax",
    "entmax15": "1.5-entmax",
    "alpha_entmax": "α-entmax",
    "tvmax": "TVmax",
}
RANDOM_SUFFIX = " (random init)"
_LAYER_RE = re.compile(r"layers\.(\d+)")
_BLOCK_RE = re.compile(r"blocks\.(\d+)")
_STAGE_RE = re.compile(r"stages\.(\d+)")
_PARTITION_RE = re.compile(r"attn_(block|grid)\b")
_DIGITS = re.compile(r"(\d+)")

Sites = Mapping[str, str] | None


def layer_index(name: str) -> int:
    """The 0-based layer number in a module name (``...layers.2...`` -> 2); -1 if none."""
    found = _LAYER_RE.findall(str(name))
    return int(found[-1]) if found else -1


def block_index(name: str) -> int:
    """The 0-based block number in a module name (``...blocks.3...`` -> 3); -1 if none."""
    found = _BLOCK_RE.findall(str(name))
    return int(found[-1]) if found else -1


def stage_index(name: str) -> int:
    """The 0-based stage number in a module name (``stages.1.blocks.0...`` -> 1); -1 if none."""
    found = _STAGE_RE.findall(str(name))
    return int(found[-1]) if found else -1


def layer_label(name: str, sites: Sites = None) -> str:
    """``transformer.decoder.layers.2.multihead_attn`` -> ``layer 3``; ``sites[name]`` if given.

    Decoder cross-attention is the plain ``layer k``; decoder self-attention is
    ``layer k self``; encoder (self-attention) layers are ``enc layer k``. A block number is
    kept (``layers.0.blocks.1.attn`` -> ``layer 1 block 2``, ``blocks.3.attn`` -> ``block 4``).
    Names without a layer or block number, and not in ``sites``, are returned unchanged.
    """
    if sites and name in sites:
        return str(sites[name])
    stage, index, block = stage_index(name), layer_index(name), block_index(name)
    if index < 0 and block < 0:
        return str(name)
    parts = [f"stage {stage + 1}"] if stage >= 0 else []
    if index >= 0:
        parts.append(f"layer {index + 1}")
    if block >= 0:
        parts.append(f"block {block + 1}")
    partition = _PARTITION_RE.search(str(name))  # MaxViT's block / grid attention
    if partition:
        parts.append(partition.group(1))
    label = " ".join(parts)
    if "encoder" in name:
        label = "enc " + label
    elif name.endswith("self_attn"):
        label += " self"
    return label


def _natural(name: str) -> tuple:
    """A sort key comparing the numbers in ``name`` as numbers (``block 2`` < ``block 10``)."""
    return tuple(int(p) if p.isdigit() else p for p in _DIGITS.split(str(name)))


def sort_layers(names: Iterable[str], sites: Sites = None) -> list[str]:
    """Module names in model order: encoder before decoder, then by layer and block number.

    With ``sites``, the names it lists come first, in its order (``meta.sites`` is in model
    order), then the others as without it.
    """
    unique = list(dict.fromkeys(names))
    order = {name: i for i, name in enumerate(sites or {})}
    return sorted(
        unique,
        key=lambda n: (
            order.get(n, len(order)),
            "decoder" in n,
            stage_index(n),
            layer_index(n),
            block_index(n),
            "multihead" in n,
            _natural(n),
        ),
    )


def layer_labels(names: Iterable[str], sites: Sites = None) -> dict[str, str]:
    """``{module name: label}`` in model order (for ``tables.summary_table(layers=...)``)."""
    return {n: layer_label(n, sites) for n in sort_layers(names, sites)}


def normalizer_of(model_name: str) -> str | None:
    """The normalizer a model name refers to (exact, else the longest one it contains)."""
    name = str(model_name)
    if name in NORMALIZER_COLORS:
        return name
    for norm in sorted(NORMALIZER_COLORS, key=len, reverse=True):
        if norm in name:
            return norm
    return None


def normalizer_label(model_name: str) -> str:
    """A model name for legends: ``alpha_entmax (random init)`` -> ``α-entmax (random init)``."""
    norm = normalizer_of(model_name)
    if norm is None:
        return str(model_name)
    return str(model_name).replace(norm, NORMALIZER_LABELS[norm], 1)


def model_color(model_name: str, index: int = 0):
    """The normalizer's colour when the name refers to one, else a palette colour by index."""
    norm = normalizer_of(model_name)
    if norm is not None:
        return NORMALIZER_COLORS[norm]
    return sns.color_palette("dark", 10)[index % 10]


def model_colors(model_names: Iterable[str]) -> dict:
    """``{name: colour}``; names without a normalizer get distinct palette colours."""
    out, other = {}, 0
    for name in model_names:
        if normalizer_of(name) is None:
            out[name] = model_color(name, other)
            other += 1
        else:
            out[name] = model_color(name)
    return out
