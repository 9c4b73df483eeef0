"""attnkit's MaxViT as DETR's backbone (``backbone: maxvit:<variant>``): one stage's map.

:class:`MaxViTBody` runs the stem and the stages up to the chosen one (the later stages and the
classifier head are not built) and returns that stage's map ``[B, C, h, w]``. Its sub-module
names are :class:`attnkit.models.maxvit.MaxViT`'s (``stem``, ``stages.<i>``), so the state dict
of a MaxViT classifier (attnkit's, or timm's ``maxvit_*_tf`` mapped on load) fits it.

**Padding.** With ``mask_padding`` the :class:`~attnkit.models.detr.backbone.Backbone` zeroes
the padded area before every convolution; :meth:`MaxViTBody.mask_padding_with` adds what MaxViT
needs beyond that: the padded tokens are masked out of block and grid attention's keys and the
padded area is zeroed before the average pooling of the MBConv shortcuts, so no padded feature
is read at a real pixel. An image's features still depend slightly on its batch, for three
reasons that are MaxViT's own: the squeeze-excitation of every MBConv pools globally, over the
padded area too (as timm's EfficientNets); grid attention groups tokens at a stride set by the
padded map's size; and TensorFlow ``SAME`` padding gives a stride-2 layer's input a row
(column) at the top (left) only when its size is odd, so the sampling grid follows the parity of
the padded size, not the image's.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from attnkit.attention.partition import PartitionAttention
from attnkit.models.maxvit.config import MAXVIT_VARIANTS, maxvit_variant
from attnkit.models.maxvit.mbconv import SameAvgPool2x2
from attnkit.models.maxvit.model import MaxViT
from attnkit.models.maxvit.timm_weights import is_timm_maxvit, timm_to_attnkit

__all__ = ["MaxViTBody", "maxvit_body"]

ValidMask = Callable[[int, int, torch.device], "torch.Tensor | None"]
"""``(h, w, device) -> [B, h, w]`` True on real pixels of a map of size ``(h, w)``, or None
when the batch is not padded."""


class MaxViTBody(nn.Module):
    """The stem and stages ``0..k`` of a :class:`MaxViT`: ``[B, 3, H, W] -> [B, C_k, h, w]``.

    Args:
        model: the MaxViT to take the stem and stages from (its later stages and head are
            dropped).
        stage: which map to return, indexed as ``model.feature_info`` (timm's ``out_indices``):
            ``-1`` the last stage, ``-2`` the one before, ``1`` the first stage (stride 4);
            index ``0`` is the stem and is refused.
    """

    def __init__(self, model: MaxViT, stage: int = -1) -> None:
        super().__init__()
        n = len(model.stages)
        index = stage + n + 1 if stage < 0 else stage  # in model.feature_info
        if not 1 <= index <= n:
            raise ValueError(
                f"backbone_stage={stage}: MaxViT with {n} stages has stages -{n}..-1 (or 1..{n}); "
                f"the stem (index 0 or -{n + 1}) is not a valid choice"
            )
        self.stem = model.stem
        self.stages = nn.Sequential(*list(model.stages)[:index])
        self.feature_info = [dict(info) for info in model.feature_info[: index + 1]]
        self.num_channels = self.feature_info[-1]["num_chs"]
        self.reduction = self.feature_info[-1]["reduction"]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.stem(images)  # [B, C_0, H/2, W/2]
        return self.stages(x)  # [B, C_k, H/2^(k+1), W/2^(k+1)]

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Load a MaxViT state dict (attnkit's or timm's), skipping the head and the stages
        this body does not run."""
        state = dict(state_dict)
        if is_timm_maxvit(state):
            state = timm_to_attnkit(state)
        kept = [f"stages.{i}." for i in range(len(self.stages))]
        state = {
            k: v
            for k, v in state.items()
            if not k.startswith(("head.", "stages.")) or k.startswith(tuple(kept))
        }
        return super().load_state_dict(state, strict=strict, assign=assign)

    def mask_padding_with(self, valid_mask: ValidMask) -> None:
        """Register the padding hooks MaxViT needs besides those on convolutions (see the
        module docstring); ``valid_mask`` gives the real pixels of a map during a forward.

        The hooks are methods and ``valid_mask`` should be one (of the owning backbone), so a
        deep copy of the model masks with its own padding."""
        self._valid_mask = valid_mask
        for module in self.modules():
            if isinstance(module, SameAvgPool2x2):
                module.register_forward_pre_hook(self._zero_padding)
            elif isinstance(module, PartitionAttention):
                module.register_forward_pre_hook(self._mask_keys, with_kwargs=True)

    def _zero_padding(self, module: nn.Module, args: tuple) -> tuple | None:
        """Forward pre-hook: zero the padded area of a pooling's input ``[B, C, h, w]``."""
        x = args[0]
        keep = self._valid_mask(x.shape[-2], x.shape[-1], x.device)  # [B, h, w]
        return None if keep is None else (x * keep[:, None].to(x.dtype), *args[1:])

    def _mask_keys(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple | None:
        """Forward pre-hook: add the padded tokens to an attention's ``padding_mask``."""
        x = args[0]  # [B, h, w, C]
        keep = self._valid_mask(x.shape[1], x.shape[2], x.device)  # [B, h, w]
        if keep is None:
            return None
        given = args[1] if len(args) > 1 else kwargs.pop("padding_mask", None)
        padding = ~keep if given is None else given | ~keep  # [B, h, w]
        return (x, padding), kwargs


def maxvit_body(
    name: str, dilation: bool = False, from_scratch: bool = False, stage: int = -1
) -> tuple[MaxViTBody, int, tuple[str, ...]]:
    """The body of ``maxvit:<variant>``, its channels and the prefixes of the parameters DETR
    trains: the stages after the first (the stem and the stride-4 first stage stay frozen, as
    official DETR keeps a ResNet's stem and ``layer1``).

    Batch norm is frozen unless ``from_scratch`` (as for the other backbones). Dilation is
    refused: MaxViT's stages halve the map in their first MBConv, and a shallower stage
    (``backbone_stage=-2``) gives the stride-16 map instead.
    """
    variant = name.split(":", 1)[1]
    if variant not in MAXVIT_VARIANTS:
        raise ValueError(
            f"unknown MaxViT variant in backbone {name!r}; use maxvit:<variant> with one of "
            f"{', '.join(MAXVIT_VARIANTS)}"
        )
    if dilation:
        raise ValueError(
            f"backbone {name}: MaxViT has no dilated variant; for a finer map choose an earlier "
            "stage (model.backbone_stage=-2) instead of dilation=true"
        )
    body = MaxViTBody(MaxViT(maxvit_variant(variant)), stage)
    if not from_scratch:
        from timm.layers import freeze_batch_norm_2d

        body = freeze_batch_norm_2d(body)
    trained = tuple(f"stages.{i}." for i in range(1, len(body.stages)))
    return body, body.num_channels, trained
