"""Load timm MaxViT state dicts (``maxvit_*_tf_*``, the port of the official weights) into attnkit.

Module names are the same on both sides except three, which are mapped:

- ``...attn.rel_pos.relative_position_bias_table`` -> ``...attn.relative_bias.table``, **flipped
  on both axes**: timm indexes its table by key - query, attnkit by query - key (DESIGN.md
  pitfall 12; a loader that only copied the shape would run a different model). A table of
  another window size is resized bicubically on load (a model built for 224 at window 7 takes a
  384 checkpoint's window-12 tables, and back).
- ``head.pre_logits.fc`` -> ``head.hidden.0``.

The architecture is read from the weights on both sides (stem width, stage widths and depths,
heads per stage, head hidden layer, classes) and any difference is refused in one line that names
it and the variant the weights belong to. Nothing is downloaded: the source is a dict or a file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attnkit.models.maxvit.config import MAXVIT_VARIANTS
from attnkit.models.vit.timm_weights import read_state_dict

__all__ = ["is_timm_maxvit", "load_timm_maxvit", "maxvit_architecture", "timm_to_attnkit"]

_BLOCK = re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\.")
_TABLE = ".attn.rel_pos.relative_position_bias_table"
_RENAMES = (("head.pre_logits.fc.", "head.hidden.0."),)


def is_timm_maxvit(state) -> bool:
    """Whether ``state`` has timm MaxViT's layout (its relative position tables)."""
    return any(k.endswith(_TABLE) for k in state) and "stem.conv1.weight" in state


def maxvit_architecture(state: dict[str, torch.Tensor], table_key: str) -> dict[str, Any]:
    """Stem width, stage widths, depths, heads per stage, head hidden layer and classes of a
    MaxViT state dict whose bias tables end with ``table_key``."""
    depths: dict[int, int] = {}
    for key in state:
        if m := _BLOCK.match(key):
            stage, block = int(m.group(1)), int(m.group(2))
            depths[stage] = max(depths.get(stage, 0), block + 1)
    stages = range(len(depths))
    widths = [int(state[f"stages.{i}.blocks.0.conv.conv3_1x1.weight"].shape[0]) for i in stages]
    heads = [int(state[f"stages.{i}.blocks.0.attn_block{table_key}"].shape[0]) for i in stages]
    fc = state.get("head.fc.weight")
    return {
        "stem_width": int(state["stem.conv1.weight"].shape[0]),
        "embed_dims": widths,
        "depths": [depths[i] for i in stages],
        "heads": heads,
        "head_hidden": any(k.startswith(("head.pre_logits.", "head.hidden.")) for k in state),
        "num_classes": None if fc is None else int(fc.shape[0]),
    }


def _variant_of(arch: dict[str, Any]) -> str | None:
    for name, v in MAXVIT_VARIANTS.items():
        if v["embed_dims"] == arch["embed_dims"] and v["depths"] == arch["depths"]:
            return name
    return None


def timm_to_attnkit(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm MaxViT keys and table layout -> attnkit's (see the module docstring)."""
    out = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            out[key] = value
            continue
        if key.endswith(_TABLE):
            key = key[: -len(_TABLE)] + ".attn.relative_bias.table"
            value = value.flip(-2, -1)  # key - query -> query - key
        for old, new in _RENAMES:
            if key.startswith(old):
                key = new + key[len(old) :]
        out[key] = value
    return out


def load_timm_maxvit(model: nn.Module, source: str | Path | dict) -> list[str]:
    """Load a timm MaxViT state dict (a dict or a local file) into attnkit's ``model``.

    Returns the attnkit keys that kept their initial values (normalizer parameters such as
    alpha-entmax's ``pre_alpha``). Raises ``ValueError`` naming every architecture difference.
    """
    state = read_state_dict(source)
    if not is_timm_maxvit(state):
        raise ValueError("not a timm MaxViT state dict (no stem.conv1 / rel_pos tables)")
    theirs = maxvit_architecture(state, _TABLE)
    ours = maxvit_architecture(model.state_dict(), ".attn.relative_bias.table")
    diffs = [
        f"{key} {theirs[key]} in the weights, {ours[key]} in the model"
        for key in ours
        if theirs[key] != ours[key] and not (key == "num_classes" and theirs[key] is None)
    ]
    if diffs:
        variant = _variant_of(theirs)
        hint = f" (the weights are MaxViT-{variant}: model.variant overrides of '{variant}')"
        raise ValueError(
            "this timm MaxViT state dict is another architecture: "
            + "; ".join(diffs)
            + (hint if variant else "")
        )
    mapped = timm_to_attnkit(state)
    if theirs["num_classes"] is None:
        mapped = {k: v for k, v in mapped.items() if not k.startswith("head.fc.")}
    result = model.load_state_dict(mapped, strict=False)
    if result.unexpected_keys:
        raise ValueError(
            f"timm MaxViT keys with no place in the model: {result.unexpected_keys[:5]}"
        )
    return list(result.missing_keys)
