"""DETR's detection transforms, applied jointly to an image and its target.

A target is a dict with ``boxes`` ``[N, 4]`` (absolute xyxy pixels until :class:`Normalize`,
then normalised cxcywh), ``labels`` ``[N]``, ``area`` ``[N]``, ``iscrowd`` ``[N]``, ``image_id``,
``orig_size`` and ``size`` (``[h, w]`` tensors). Every geometric transform moves the boxes with the
pixels; a crop drops the boxes it leaves empty.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.ops import box_convert

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Compose:
    def __init__(self, transforms: Sequence):
        self.transforms = list(transforms)

    def __call__(self, image, target):
        for t in self.transforms:
            image, target = t(image, target)
        return image, target

    def __repr__(self) -> str:
        inner = ", ".join(repr(t) for t in self.transforms)
        return f"Compose([{inner}])"


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, image: Image.Image, target: dict):
        if random.random() >= self.p:
            return image, target
        w = image.width
        target = dict(target)
        boxes = target["boxes"]
        target["boxes"] = torch.stack(
            [w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], 1
        )
        return TF.hflip(image), target


def resized_hw(h: int, w: int, size: int, max_size: int | None) -> tuple[int, int]:
    """DETR's rule: the shorter side becomes ``size`` unless the longer would pass ``max_size``."""
    short, long = min(h, w), max(h, w)
    if max_size is not None and long / short * size > max_size:
        size = int(round(max_size * short / long))
    if (w <= h and w == size) or (h <= w and h == size):
        return h, w
    if w < h:
        return int(size * h / w), size
    return size, int(size * w / h)


def resize(image: Image.Image, target: dict, size: int, max_size: int | None):
    """Resize so the shorter side is ``size`` (capped by ``max_size``); scale boxes and areas."""
    h, w = image.height, image.width
    new_h, new_w = resized_hw(h, w, size, max_size)
    if (new_h, new_w) == (h, w):
        return image, target
    image = TF.resize(image, [new_h, new_w], antialias=True)
    sx, sy = new_w / w, new_h / h
    target = dict(target)
    target["boxes"] = target["boxes"] * torch.tensor([sx, sy, sx, sy])
    target["area"] = target["area"] * (sx * sy)
    target["size"] = torch.tensor([new_h, new_w])
    return image, target


class RandomResize:
    def __init__(self, sizes: Sequence[int], max_size: int | None = None):
        self.sizes = list(sizes)
        self.max_size = max_size

    def __call__(self, image, target):
        return resize(image, target, random.choice(self.sizes), self.max_size)

    def __repr__(self) -> str:
        return f"RandomResize({self.sizes}, max_size={self.max_size})"


def crop(image: Image.Image, target: dict, top: int, left: int, height: int, width: int):
    """Crop a region; boxes are shifted and clipped, those left empty are dropped."""
    image = TF.crop(image, top, left, height, width)
    target = dict(target)
    boxes = target["boxes"] - torch.tensor([left, top, left, top], dtype=torch.float32)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    # The area of a cropped box shrinks with its visible part (as in DETR).
    target["area"] = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[keep]
    target["boxes"] = boxes[keep]
    for key in ("labels", "iscrowd"):
        target[key] = target[key][keep]
    target["size"] = torch.tensor([height, width])
    return image, target


class RandomSizeCrop:
    """Crop a random region whose sides lie in ``[min_size, max_size]`` (within the image)."""

    def __init__(self, min_size: int, max_size: int):
        self.min_size, self.max_size = min_size, max_size

    def __call__(self, image, target):
        w = random.randint(min(image.width, self.min_size), min(image.width, self.max_size))
        h = random.randint(min(image.height, self.min_size), min(image.height, self.max_size))
        top = random.randint(0, image.height - h)
        left = random.randint(0, image.width - w)
        return crop(image, target, top, left, h, w)


class RandomSelect:
    """Apply ``first`` with probability ``1 - p``, else ``second``."""

    def __init__(self, first, second, p: float = 0.5):
        self.first, self.second, self.p = first, second, p

    def __call__(self, image, target):
        if random.random() < self.p:
            return self.second(image, target)
        return self.first(image, target)


class Normalize:
    """PIL image -> normalised float tensor ``[3, H, W]``; boxes -> normalised cxcywh."""

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.mean, self.std = list(mean), list(std)

    def __call__(self, image, target):
        tensor = TF.normalize(TF.to_tensor(image), self.mean, self.std)  # [3, H, W]
        target = dict(target)
        h, w = tensor.shape[-2:]
        boxes = box_convert(target["boxes"], "xyxy", "cxcywh")
        target["boxes"] = boxes / torch.tensor([w, h, w, h], dtype=torch.float32)
        return tensor, target


def original_boxes(target: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """A transformed target's boxes as float xyxy pixels of the original image, and areas.

    Undoes :class:`Normalize` and the resize: boxes ``[T, 4]`` (no rounding, pitfall 5) and
    the objects' areas ``[T]`` in original pixels.
    """
    oh, ow = (int(v) for v in target["orig_size"])
    h, w = (int(v) for v in target["size"])
    boxes = box_convert(target["boxes"].float(), "cxcywh", "xyxy")  # [T, 4]
    boxes = boxes * torch.tensor([ow, oh, ow, oh], dtype=torch.float32)
    areas = target["area"].float() * (oh * ow) / (h * w)  # undo the resize's area scaling
    return boxes, areas


def detr_transforms(data_cfg, train: bool) -> Compose:
    """DETR's train / val pipeline with the sizes of a :class:`~attnkit.config.schema.DetectionDataConfig`."""
    if not train:
        return Compose([RandomResize([data_cfg.val_scale], data_cfg.max_size), Normalize()])
    plain = RandomResize(data_cfg.train_scales, data_cfg.max_size)
    cropped = Compose(
        [
            RandomResize(data_cfg.crop_resize_scales),
            RandomSizeCrop(data_cfg.crop_min_size, data_cfg.crop_max_size),
            RandomResize(data_cfg.train_scales, data_cfg.max_size),
        ]
    )
    return Compose(
        [
            RandomHorizontalFlip(data_cfg.hflip_prob),
            RandomSelect(plain, cropped, p=data_cfg.crop_prob),
            Normalize(),
        ]
    )
