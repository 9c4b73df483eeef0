"""Load official DETR checkpoints (facebookresearch/detr) into attnkit's :class:`DETR`.

The official state dict differs from attnkit's only in the backbone prefix
(``backbone.0.body.*`` -> ``backbone.body.*``); every other key (transformer, ``input_proj``,
``query_embed``, ``class_embed``, ``bbox_embed``) has the same name and shape. Loading is strict
both ways: every official key must be used and every attnkit parameter and buffer filled, except
the parameters attnkit adds (the normalizers' own, such as alpha-entmax's ``pre_alpha``), which
keep their initial values and are listed in the report.

A checkpoint of another architecture is refused with an error that names each difference (the
thesis once ran a pre-norm model on post-norm weights without noticing, pitfall 7). Checked:
``pre_norm`` (only pre-norm checkpoints have ``transformer.encoder.norm.*``), encoder and decoder
layer counts, hidden size, feed-forward width, number of queries, number of classes and the
ResNet depth. Not visible in the weights, hence not checked: the number of heads and DC5
dilation.
"""

from __future__ import annotations

import argparse
import contextlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attnkit.models.detr.backbone import RESNET_DEPTHS

__all__ = ["OfficialLoadReport", "load_official_detr", "official_architecture"]

OFFICIAL_BACKBONE = "backbone.0.body."
ATTNKIT_BACKBONE = "backbone.body."


@dataclass
class OfficialLoadReport:
    """What :func:`load_official_detr` did.

    ``loaded``: attnkit keys filled from the checkpoint; ``adapted``: official key -> attnkit key
    for the renamed ones; ``missing``: attnkit-only keys that kept their initial values;
    ``unexpected``: official keys not used (always empty after a successful load).
    """

    loaded: list[str] = field(default_factory=list)
    adapted: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    architecture: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [
            f"loaded {len(self.loaded)} tensors ({len(self.adapted)} renamed from the official "
            f"backbone prefix '{OFFICIAL_BACKBONE}')"
        ]
        if self.missing:
            lines.append(f"kept their initial values (attnkit only): {', '.join(self.missing)}")
        if self.unexpected:
            lines.append(f"unused official keys: {', '.join(self.unexpected)}")
        return "\n".join(lines)


def _read_checkpoint(source: str | Path | dict) -> dict[str, torch.Tensor]:
    """The state dict from a path, a ``{"model": state_dict}`` checkpoint or a state dict."""
    if isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"no official DETR checkpoint at {path}")
        # Official training checkpoints also hold their argparse arguments.
        safe = getattr(torch.serialization, "safe_globals", None)
        with safe([argparse.Namespace]) if safe else contextlib.nullcontext():
            source = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(source, dict):
        raise TypeError(f"expected a state dict or a checkpoint dict, got {type(source).__name__}")
    if isinstance(source.get("model"), dict):
        source = source["model"]
    if not all(torch.is_tensor(v) for v in source.values()):
        bad = [k for k, v in source.items() if not torch.is_tensor(v)][:5]
        raise ValueError(f"not a state dict: the values of {bad} are not tensors")
    return source


def _layer_count(keys: list[str], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    indices = {int(m.group(1)) for k in keys if (m := pattern.match(k))}
    return max(indices) + 1 if indices else 0


def _resnet_name(keys: list[str], prefix: str) -> str:
    """The torchvision ResNet whose block layout the keys under ``prefix`` have."""
    blocks = tuple(_layer_count(keys, f"{prefix}layer{i}.") for i in range(1, 5))
    kind = "bottleneck" if f"{prefix}layer1.0.conv3.weight" in keys else "basic"
    for name, layout in RESNET_DEPTHS.items():
        if layout == (blocks, kind):
            return name
    return f"an unknown ResNet ({kind} blocks {list(blocks)})"


def official_architecture(state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The architecture an official DETR state dict was trained with, read off its keys."""
    lacking = [k for k in ("query_embed.weight", "class_embed.weight") if k not in state_dict]
    if lacking:
        raise ValueError(f"not an official DETR state dict: no {', '.join(lacking)}")
    keys = list(state_dict)
    enc = _layer_count(keys, "transformer.encoder.layers.")
    dec = _layer_count(keys, "transformer.decoder.layers.")
    where = "encoder" if enc else "decoder"
    ffn = state_dict.get(f"transformer.{where}.layers.0.linear1.weight")
    return {
        "backbone": _resnet_name(keys, OFFICIAL_BACKBONE),
        "pre_norm": "transformer.encoder.norm.weight" in state_dict,
        "enc_layers": enc,
        "dec_layers": dec,
        "hidden_dim": int(state_dict["query_embed.weight"].shape[1]),
        "dim_feedforward": None if ffn is None else int(ffn.shape[0]),
        "num_queries": int(state_dict["query_embed.weight"].shape[0]),
        "num_classes": int(state_dict["class_embed.weight"].shape[0]) - 1,
    }


def model_architecture(model: nn.Module) -> dict[str, Any]:
    """The same description as :func:`official_architecture`, for an attnkit DETR."""
    tr = model.transformer
    layer = (tr.encoder.layers or tr.decoder.layers)[0]
    return {
        "backbone": model.backbone.name,
        "pre_norm": tr.pre_norm,
        "enc_layers": len(tr.encoder.layers),
        "dec_layers": len(tr.decoder.layers),
        "hidden_dim": tr.d_model,
        "dim_feedforward": layer.linear1.out_features,
        "num_queries": model.num_queries,
        "num_classes": model.num_classes,
    }


def _check_architecture(official: dict[str, Any], ours: dict[str, Any]) -> None:
    diffs = []
    for key, value in official.items():
        if value != ours[key]:
            note = ""
            if key == "pre_norm":
                has = "has" if value else "has no"
                note = f" (the checkpoint {has} transformer.encoder.norm.*)"
            diffs.append(f"{key}: checkpoint {value!r}, model {ours[key]!r}{note}")
    if diffs:
        raise ValueError(
            "the official DETR checkpoint has a different architecture than this model; "
            "build the model to match (or use another checkpoint):\n  " + "\n  ".join(diffs)
        )


def _is_attnkit_only(key: str) -> bool:
    """Parameters attnkit adds to the official architecture: the normalizers' own."""
    return ".normalizer." in key


def load_official_detr(
    model: nn.Module, state_dict_or_path: str | Path | dict
) -> OfficialLoadReport:
    """Load official DETR weights into an attnkit :class:`DETR` (in place).

    Args:
        model: an attnkit DETR with a torchvision ResNet backbone.
        state_dict_or_path: the official state dict, the official checkpoint dict (whose
            ``"model"`` entry is the state dict), or the path of either.

    Returns:
        An :class:`OfficialLoadReport`.

    Raises:
        ValueError: the architectures differ (each difference named), or a key does not fit.
    """
    official = _read_checkpoint(state_dict_or_path)
    if model.backbone.name.startswith("timm:"):
        raise ValueError(
            f"official DETR checkpoints have torchvision ResNet backbones; this model has "
            f"{model.backbone.name!r}"
        )
    arch = official_architecture(official)
    _check_architecture(arch, model_architecture(model))

    ours = model.state_dict()
    report = OfficialLoadReport(architecture=arch)
    mapped = {}
    for key, value in official.items():
        target = key
        if key.startswith(OFFICIAL_BACKBONE):
            target = ATTNKIT_BACKBONE + key[len(OFFICIAL_BACKBONE) :]
            report.adapted[key] = target
        if target not in ours:
            report.unexpected.append(key)
            continue
        if ours[target].shape != value.shape:
            raise ValueError(
                f"official key {key} has shape {tuple(value.shape)}, attnkit's {target} "
                f"has {tuple(ours[target].shape)}"
            )
        mapped[target] = value
    unfilled = [k for k in ours if k not in mapped]
    lacking = [k for k in unfilled if not _is_attnkit_only(k)]
    if report.unexpected or lacking:
        raise ValueError(
            "the official checkpoint does not map onto this model: "
            f"unused official keys {report.unexpected[:8]} ({len(report.unexpected)} in all); "
            f"attnkit keys with no official value {lacking[:8]} ({len(lacking)} in all)"
        )
    model.load_state_dict(mapped, strict=False)
    report.loaded = sorted(mapped)
    report.missing = unfilled
    return report
