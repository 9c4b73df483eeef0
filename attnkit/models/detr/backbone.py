"""DETR's backbone: a ResNet (torchvision), any timm CNN or attnkit's MaxViT, frozen batch norm.

The backbone turns padded images ``[B, 3, H, W]`` into the last feature map ``[B, C, h, w]`` and
the padding mask at that resolution ``[B, h, w]`` (True on padding), as official DETR does.

**Padding.** In official DETR the convolutions at the right and bottom border of a padded image
read the padded area, whose features are not zero after the first layer. An image's features
then depend on the other images of its batch (slightly, at its border). ``mask_padding=True``
zeroes the padded area of every convolution's and pooling's input, so each image's features are
those it would have alone (exactly for ResNets, up to float rounding; timm models with global
pooling inside their blocks, such as the squeeze-excitation of EfficientNet, stay slightly
batch dependent, and so does MaxViT: :mod:`attnkit.models.detr.maxvit_backbone`). Unpadded
images give the same features either way, so official weights load with ``mask_padding`` on or
off.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from attnkit.models.detr.tiny_cnn import TinyCNN
from attnkit.runfiles import resolve_shipped_path

__all__ = ["Backbone", "RESNET_CHANNELS", "RESNET_DEPTHS"]

RESNET_CHANNELS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048}
"""Channels of the last feature map (``layer4``) of each supported torchvision ResNet."""

RESNET_DEPTHS = {
    "resnet18": ((2, 2, 2, 2), "basic"),
    "resnet34": ((3, 4, 6, 3), "basic"),
    "resnet50": ((3, 4, 6, 3), "bottleneck"),
    "resnet101": ((3, 4, 23, 3), "bottleneck"),
}
"""Blocks per stage and block type of each ResNet (used to recognise a checkpoint's backbone)."""

TRAINED_RESNET_STAGES = ("layer2", "layer3", "layer4")
"""The ResNet stages official DETR trains; the stem and ``layer1`` stay frozen."""

TRAINED_TINY_CNN_STAGES = ("stages.1", "stages.2", "stages.3")
"""Likewise for ``tiny_cnn``: its full-resolution first stage stays as pre-trained (and costs no
backward pass)."""


class ResNetBody(nn.Module):
    """A torchvision ResNet without its classifier; returns the ``layer4`` map ``[B, C, h, w]``.

    The sub-module names are torchvision's (``conv1``, ``bn1``, ``layer1``..``layer4``), so
    torchvision checkpoints (minus ``fc.*``) and the ``backbone.0.body.*`` part of official DETR
    checkpoints load directly.
    """

    def __init__(self, resnet: torchvision.models.ResNet) -> None:
        super().__init__()
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            setattr(self, name, getattr(resnet, name))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # [B, 64, H/4, W/4]
        x = self.layer2(self.layer1(x))  # [B, C/4, H/8, W/8]
        return self.layer4(self.layer3(x))  # [B, C, H/32, W/32] (H/16 with dilation)


def _resnet_body(name: str, dilation: bool, from_scratch: bool = False) -> tuple[nn.Module, int]:
    if name not in RESNET_CHANNELS:
        raise ValueError(
            f"unknown backbone {name!r}; use one of {', '.join(RESNET_CHANNELS)}, tiny_cnn, "
            "'timm:<model name>' (e.g. 'timm:efficientnet_b0') or 'maxvit:<variant>'"
        )
    if dilation and RESNET_DEPTHS[name][1] == "basic":
        raise ValueError(f"dilation needs a bottleneck ResNet (resnet50/101), not {name}")
    resnet = getattr(torchvision.models, name)(
        weights=None,
        replace_stride_with_dilation=[False, False, dilation],
        norm_layer=nn.BatchNorm2d if from_scratch else FrozenBatchNorm2d,
    )
    return ResNetBody(resnet), RESNET_CHANNELS[name]


def _timm_body(
    name: str, dilation: bool, from_scratch: bool = False, stage: int = -1
) -> tuple[nn.Module, int, str]:
    """A timm feature extractor of one stage (``-1``: the last), its channels and the name of
    its stride-4 stage."""
    import timm
    from timm.layers import freeze_batch_norm_2d

    kw = {"output_stride": 16} if dilation else {}
    body = timm.create_model(name, features_only=True, out_indices=(stage,), pretrained=False, **kw)
    if not from_scratch:
        body = freeze_batch_norm_2d(body)
    stride4 = [info["module"] for info in body.feature_info.info if info["reduction"] <= 4]
    return body, body.feature_info.channels()[-1], stride4[-1] if stride4 else ""


def _freeze(body: nn.Module, trained: tuple[str, ...]) -> None:
    """Freeze every parameter whose name does not start with one of the ``trained`` prefixes."""
    for name, param in body.named_parameters():
        if not name.startswith(trained):
            param.requires_grad_(False)


def _timm_trained_prefixes(body: nn.Module, stride4: str) -> tuple[str, ...]:
    """Names of a timm body's parameters after its stride-4 stage (DETR trains those only).

    Parameters are registered in forward order, so "after" is their order in the state dict.
    """
    names = [n for n, _ in body.named_parameters()]
    last_frozen = max((i for i, n in enumerate(names) if n.startswith(stride4 + ".")), default=-1)
    return tuple(names[last_frozen + 1 :])


def load_backbone_weights(body: nn.Module, path: str | Path) -> None:
    """Load pretrained weights into ``body`` from a local file.

    Accepted: a torchvision ResNet state dict (``fc.*`` ignored), or a file written by
    ``attnkit pretrain-backbone`` (``{"body": state dict, ...}``) for any backbone.
    """
    path = resolve_shipped_path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"pretrained_backbone: no file at {path}; give the path of a torchvision ResNet "
            "state dict saved with torch.save, or of `attnkit pretrain-backbone`'s output "
            "(attnkit never downloads weights)"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("body"), dict):
        state = state["body"]
    elif isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    elif isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # an `attnkit train` checkpoint (e.g. of a MaxViT classifier)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    own = body.state_dict()
    state = {
        k: v.to(own[k].dtype) if k in own and v.is_floating_point() else v for k, v in state.items()
    }
    result = body.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"pretrained_backbone {path} does not fit this backbone: "
            f"missing {result.missing_keys[:5]} ({len(result.missing_keys)} in all), "
            f"unexpected {result.unexpected_keys[:5]} ({len(result.unexpected_keys)} in all)"
        )


def _halve(size, steps: int):
    """``size`` after ``steps`` stride-2 layers of kernel 2p+1 and padding p: ceil(size / 2)."""
    for _ in range(steps):
        size = (size + 1) // 2
    return size


def valid_extent(full: int, valid: torch.Tensor, size: int) -> torch.Tensor:
    """The unpadded extent ``[B]`` at a resolution where the padded extent ``full`` became ``size``.

    Stride-2 layers map n to ceil(n / 2) for the padded batch and each image alike, so the
    number of halvings that took ``full`` to ``size`` says how far each image's ``valid`` pixels
    reach. A resolution no chain of halvings reaches falls back to proportional scaling.
    """
    steps, n = 0, full
    while n > size:
        n, steps = (n + 1) // 2, steps + 1
    if n == size:
        return _halve(valid, steps)
    return torch.div(valid * size + full - 1, full, rounding_mode="floor")  # ceil(valid*size/full)


class Backbone(nn.Module):
    """DETR's backbone: last feature map of a frozen-BN CNN and the matching padding mask.

    Args:
        name: ``resnet18``, ``resnet34``, ``resnet50``, ``resnet101`` (torchvision),
            ``tiny_cnn`` (:mod:`attnkit.models.detr.tiny_cnn`, synthetic data) or
            ``timm:<name>`` for any timm model that supports ``features_only``, or
            ``maxvit:<variant>`` for attnkit's MaxViT (:mod:`attnkit.models.detr.maxvit_backbone`;
            a variant of ``MAXVIT_VARIANTS``, e.g. ``maxvit:synth``).
        dilation: replace the stride of the last stage by dilation (DETR-DC5; output stride 16).
        train_backbone: train the backbone (official DETR: when ``lr_backbone > 0``); the stem
            and the first stage stay frozen either way, as in official DETR.
        pretrained: optional local path of a torchvision ResNet state dict or of a backbone
            pre-trained by ``attnkit pretrain-backbone`` (``{checkpoints}`` is expanded).
        stage: the timm or MaxViT stage whose map is returned (``-1`` the last, ``-2`` the one
            before).
        mask_padding: zero the padded area before every convolution and pooling so that batch
            composition does not change an image's features (see the module docstring).
        from_scratch: trainable batch norm and every stage trained, for a backbone without
            pretrained weights (e.g. the synthetic-data reference models); official DETR: False.
    """

    def __init__(
        self,
        name: str = "resnet50",
        dilation: bool = False,
        train_backbone: bool = True,
        pretrained: str | Path | None = None,
        mask_padding: bool = False,
        from_scratch: bool = False,
        stage: int = -1,
    ) -> None:
        super().__init__()
        self.name = name
        self.dilation = dilation
        self.stage = stage
        self.train_backbone = train_backbone
        self.mask_padding = mask_padding
        if name == "tiny_cnn":
            if stage != -1 or dilation:
                raise ValueError("backbone tiny_cnn has one output (stride 16): no stage/dilation")
            self.body = TinyCNN()
            self.num_channels = self.body.num_channels
            if pretrained is not None:
                load_backbone_weights(self.body, pretrained)
            # Its first stage stays as pre-trained; from scratch everything trains (below).
            trained = TRAINED_TINY_CNN_STAGES
        elif name.startswith("timm:"):
            self.body, self.num_channels, stride4 = _timm_body(
                name[len("timm:") :], dilation, from_scratch, stage
            )
            if pretrained is not None:
                load_backbone_weights(self.body, pretrained)
            trained = _timm_trained_prefixes(self.body, stride4)
        elif name.startswith("maxvit:"):
            from attnkit.models.detr.maxvit_backbone import maxvit_body

            self.body, self.num_channels, trained = maxvit_body(name, dilation, from_scratch, stage)
            if pretrained is not None:
                load_backbone_weights(self.body, pretrained)
        else:
            if stage != -1:
                raise ValueError(
                    f"backbone_stage={stage}: torchvision ResNets give their last stage only "
                    "(use dilation=true for stride 16, or a timm:<name> backbone)"
                )
            self.body, self.num_channels = _resnet_body(name, dilation, from_scratch)
            if pretrained is not None:
                load_backbone_weights(self.body, pretrained)
            trained = TRAINED_RESNET_STAGES
        if from_scratch:
            trained = ("",)  # every parameter name starts with ""
        _freeze(self.body, trained if train_backbone else ())
        self._padding: tuple | None = None  # (H, W, valid_h [B], valid_w [B]) during forward
        if mask_padding:
            for module in self.body.modules():
                if isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
                    module.register_forward_pre_hook(self._zero_padding)
            if hasattr(self.body, "mask_padding_with"):  # MaxViT: attention and pooling too
                self.body.mask_padding_with(self._valid_mask_in_forward)

    def _zero_padding(self, module: nn.Module, args: tuple) -> tuple | None:
        """Forward pre-hook: zero the padded area of a layer's input ``[B, C, h, w]``."""
        if self._padding is None:
            return None
        x = args[0]
        keep = self._valid_mask(x.shape[-2], x.shape[-1], x.device)  # [B, h, w]
        return (x * keep[:, None].to(x.dtype), *args[1:])

    def _valid_mask_in_forward(self, h: int, w: int, device: torch.device) -> torch.Tensor | None:
        """:meth:`_valid_mask` during a forward with padding masks, else None."""
        return None if self._padding is None else self._valid_mask(h, w, device)

    def _valid_mask(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        """True on the unpadded part ``[B, h, w]`` of a map of size ``(h, w)``."""
        H, W, valid_h, valid_w = self._padding
        rows = torch.arange(h, device=device) < valid_extent(H, valid_h, h)[:, None]  # [B, h]
        cols = torch.arange(w, device=device) < valid_extent(W, valid_w, w)[:, None]  # [B, w]
        return rows[:, :, None] & cols[:, None, :]  # [B, h, w]

    def forward(
        self, images: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``images [B, 3, H, W]``, ``mask [B, H, W]`` (True on padding) -> features, mask.

        Returns ``(features [B, C, h, w], mask [B, h, w])``.
        """
        if not self.mask_padding:
            features = self.body(images)
            if isinstance(features, (list, tuple)):  # timm feature extractors
                features = features[-1]
            small = F.interpolate(mask[None].float(), size=features.shape[-2:])  # [1, B, h, w]
            return features, small.to(torch.bool)[0]  # [B, C, h, w], [B, h, w]
        valid = ~mask
        valid_h = valid.any(dim=2).sum(dim=1)  # [B], padding is at the bottom and right
        valid_w = valid.any(dim=1).sum(dim=1)  # [B]
        self._padding = (mask.shape[-2], mask.shape[-1], valid_h, valid_w)
        try:
            features = self.body(images)
            if isinstance(features, (list, tuple)):
                features = features[-1]
            h, w = features.shape[-2:]
            small = ~self._valid_mask(h, w, features.device)  # [B, h, w]
        finally:
            self._padding = None
        return features, small

    def extra_repr(self) -> str:
        return (
            f"name={self.name}, dilation={self.dilation}, train_backbone={self.train_backbone}, "
            f"mask_padding={self.mask_padding}, stage={self.stage}"
        )
