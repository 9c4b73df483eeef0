"""Load timm ``vit_*`` state dicts into attnkit's :class:`~attnkit.models.vit.VisionTransformer`.

attnkit's ViT has timm's key names and shapes, so loading needs no key mapping; what it needs is
a loud refusal when the state dict belongs to another architecture (pitfall 7 of the design
notes: never silently run a different model). The architecture is read from the weights on both
sides (blocks, width, patch size, input channels, class token, position grid, MLP width, qkv bias,
where the final norm sits, number of classes) and every difference is named in one line. Not
visible in the weights, hence not checked: the number of heads and the drop rates.

Keys that only attnkit has (normalizer parameters such as ``blocks.3.attn.normalizer.pre_alpha``)
keep their initial values and are listed in the report; a state dict without ``head.*`` (a timm
model built with ``num_classes=0``, or a dict whose head was dropped for fine-tuning on other
classes) leaves the head at its initialisation, also listed. Position embeddings are not resized.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["TimmLoadReport", "load_timm_vit", "read_state_dict", "vit_architecture"]

_REQUIRED = ("patch_embed.proj.weight", "pos_embed", "blocks.0.attn.qkv.weight")
_BLOCK = re.compile(r"^blocks\.(\d+)\.")


@dataclass
class TimmLoadReport:
    """What :func:`load_timm_vit` did.

    ``loaded``: keys copied from the state dict; ``missing``: attnkit keys that kept their
    initial values (normalizer parameters, the head of a headless dict); ``architecture``: the
    architecture read from the state dict (see :func:`vit_architecture`).
    """

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    architecture: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors from a timm ViT state dict"]
        if self.missing:
            lines.append(f"kept their initial values (not in the state dict): {self.missing}")
        return "\n".join(lines)


def read_state_dict(source: str | Path | dict) -> dict[str, torch.Tensor]:
    """A state dict from a dict, a ``torch.save`` file (``weights_only``) or a safetensors file.

    Checkpoints that wrap the state dict under ``"model"`` or ``"state_dict"`` are unwrapped.
    """
    if isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"no timm ViT weights at {path}")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            source = load_file(str(path), device="cpu")
        else:
            source = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(source, dict):
        raise TypeError(f"expected a state dict or a checkpoint dict, got {type(source).__name__}")
    for wrapper in ("model", "state_dict"):
        if isinstance(source.get(wrapper), dict):
            source = source[wrapper]
            break
    bad = [k for k, v in source.items() if not torch.is_tensor(v)]
    if bad:
        raise TypeError(f"the state dict holds non-tensor values at {bad[:5]}")
    return dict(source)


def _shape(t: torch.Tensor) -> str:
    return "[" + ",".join(str(s) for s in t.shape) + "]"


def vit_architecture(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The ViT architecture a timm-layout state dict implies.

    Keys: ``depth``, ``embed_dim``, ``patch_size``, ``in_chans``, ``class_token``, ``pos_embed``
    (its shape, as text), ``mlp_hidden``, ``qkv_bias``, ``fc_norm`` (the final norm is applied
    after pooling, timm's ``global_pool="avg"``) and ``num_classes`` (None without a head).

    Raises:
        ValueError: when the dict is not a timm ViT's (the message says what it looks like).
    """
    absent = [k for k in _REQUIRED if k not in state]
    if absent:
        roots = sorted({k.split(".")[0] + "." for k in state})
        raise ValueError(
            f"not a timm ViT state dict: no {', '.join(absent)}; its keys start with "
            f"{', '.join(roots[:8])}{' ...' if len(roots) > 8 else ''}"
        )
    patch = state["patch_embed.proj.weight"]  # [C, C_in, p, p]
    head = state.get("head.weight")  # [num_classes, C]
    fc1 = state.get("blocks.0.mlp.fc1.weight")  # [hidden, C]
    return {
        "depth": 1 + max(int(m.group(1)) for k in state if (m := _BLOCK.match(k))),
        "embed_dim": int(patch.shape[0]),
        "patch_size": int(patch.shape[-1]),
        "in_chans": int(patch.shape[1]),
        "class_token": "cls_token" in state,
        "pos_embed": _shape(state["pos_embed"]),
        "mlp_hidden": None if fc1 is None else int(fc1.shape[0]),
        "qkv_bias": "blocks.0.attn.qkv.bias" in state,
        "fc_norm": "fc_norm.weight" in state,
        "num_classes": None if head is None else int(head.shape[0]),
    }


def _differences(theirs: dict[str, Any], ours: dict[str, Any]) -> list[str]:
    """One phrase per architecture difference (timm state dict first, this ViT second)."""

    def has(flag: bool) -> str:
        return "has" if flag else "has no"

    diffs = []
    t, o = theirs, ours
    if t["depth"] != o["depth"]:
        diffs.append(f"timm state dict has {t['depth']} blocks, this ViT {o['depth']}")
    for key in ("embed_dim", "patch_size", "in_chans"):
        if t[key] != o[key]:
            diffs.append(f"{key} {t[key]} vs {o[key]}")
    if t["class_token"] != o["class_token"]:
        diffs.append(
            f"timm state dict {has(t['class_token'])} class token, this ViT "
            f"{has(o['class_token'])} class token"
        )
    if t["pos_embed"] != o["pos_embed"] and t["embed_dim"] == o["embed_dim"]:
        diffs.append(
            f"pos_embed {t['pos_embed']} vs {o['pos_embed']} (another image size or patch "
            "grid; resizing position embeddings is not supported)"
        )
    if t["mlp_hidden"] != o["mlp_hidden"] and t["embed_dim"] == o["embed_dim"]:
        diffs.append(f"mlp hidden width {t['mlp_hidden']} vs {o['mlp_hidden']}")
    if t["qkv_bias"] != o["qkv_bias"]:
        diffs.append(
            f"timm state dict {has(t['qkv_bias'])} qkv bias, this ViT {has(o['qkv_bias'])}"
        )
    if t["fc_norm"] != o["fc_norm"]:
        where = {True: "after pooling (fc_norm, global_pool 'avg')", False: "before pooling (norm)"}
        diffs.append(
            f"final norm {where[t['fc_norm']]} in the timm state dict, {where[o['fc_norm']]} "
            "in this ViT"
        )
    if t["num_classes"] is not None and t["num_classes"] != o["num_classes"]:
        diffs.append(f"timm head has {t['num_classes']} classes, this ViT {o['num_classes']}")
    return diffs


def _attnkit_only(key: str) -> bool:
    """Parameters attnkit adds to timm's layout: those of the attention normalizers."""
    return ".attn.normalizer." in key


def load_timm_vit(model: nn.Module, state_dict_or_path: str | Path | dict) -> TimmLoadReport:
    """Load a timm ``vit_*`` state dict (or a file holding one) into attnkit's ViT ``model``.

    Every tensor of the state dict must fit a parameter or buffer of ``model`` (same name and
    shape) and every parameter of ``model`` must be filled, except the normalizers' own and,
    for a headless state dict, the head.

    Raises:
        ValueError: the state dict is not a timm ViT's, or its architecture differs from
            ``model``'s; one line names each difference, e.g. ``timm state dict has 12 blocks,
            this ViT 6`` or ``pos_embed [1,197,192] vs [1,65,192] (...)``.
    """
    state = read_state_dict(state_dict_or_path)
    theirs = vit_architecture(state)
    own = model.state_dict()
    ours = vit_architecture({k: v for k, v in own.items() if not _attnkit_only(k)})
    diffs = _differences(theirs, ours)
    if diffs:
        raise ValueError(f"timm ViT state dict does not fit this ViT: {'; '.join(diffs)}")

    unexpected = sorted(k for k in state if k not in own)
    if unexpected:
        raise ValueError(
            f"timm state dict has {len(unexpected)} key(s) this ViT lacks (a timm feature it "
            f"does not implement: layer scale, register or distillation tokens, qk norm, ...): "
            f"{unexpected[:6]}"
        )
    wrong = [
        f"{k} {_shape(v)} vs {_shape(own[k])}" for k, v in state.items() if v.shape != own[k].shape
    ]
    if wrong:
        raise ValueError(f"timm state dict shapes differ from this ViT: {'; '.join(wrong[:6])}")
    headless = theirs["num_classes"] is None
    missing = [k for k in own if k not in state]
    refused = [k for k in missing if not (_attnkit_only(k) or (headless and k.startswith("head.")))]
    if refused:
        raise ValueError(f"timm state dict lacks {len(refused)} key(s) of this ViT: {refused[:6]}")

    model.load_state_dict(state, strict=False)
    return TimmLoadReport(loaded=sorted(state), missing=missing, architecture=theirs)
