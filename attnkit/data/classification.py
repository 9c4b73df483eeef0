"""Image classification data: the embedded synthetic shapes, local CIFAR-10, a class-folder tree.

Every dataset returns ``(image, label)``: a normalised float tensor ``[3, H, W]`` and an int, and
exposes ``class_names`` and ``num_classes``. :func:`collate_classification` stacks samples into a
:class:`ClassificationBatch`. The augmentation is CIFAR's standard one (pad-and-crop, horizontal
flip); its randomness comes from torch's global RNG, which the training loop seeds per sample so
an interrupted run resumes exactly.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms import v2

from attnkit.data.cifar import read_cifar10
from attnkit.data.coco import DatasetError
from attnkit.data.synthetic_classes import (
    SYNTH_CLASS_NAMES,
    SYNTH_CLASSES_MEAN,
    SYNTH_CLASSES_STD,
    ensure_synthetic_classes,
    load_synthetic_split,
)
from attnkit.data.transforms import IMAGENET_MEAN, IMAGENET_STD

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
DATASET_NAMES = ("synthetic", "cifar10", "folder")


def classification_stats(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The per-channel (mean, std) that dataset ``name`` is normalised with (pixels in [0, 1])."""
    stats = {
        "synthetic": (SYNTH_CLASSES_MEAN, SYNTH_CLASSES_STD),
        "cifar10": (CIFAR10_MEAN, CIFAR10_STD),
        "folder": (IMAGENET_MEAN, IMAGENET_STD),
    }
    if name not in stats:
        raise ValueError(
            f"unknown classification dataset {name!r}; expected one of {DATASET_NAMES}"
        )
    return stats[name]


# --------------------------------------------------------------------------- transforms


class RandomPadCrop(torch.nn.Module):
    """Zero-pad ``pad`` pixels on every side, then crop back to the input's size at random."""

    def __init__(self, pad: int = 4):
        super().__init__()
        self.pad = pad

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        h, w = image.shape[-2:]
        padded = F.pad(image.as_subclass(torch.Tensor), [self.pad] * 4)  # [C, H+2p, W+2p]
        top = int(torch.randint(0, 2 * self.pad + 1, ()))
        left = int(torch.randint(0, 2 * self.pad + 1, ()))
        return padded[..., top : top + h, left : left + w]

    def extra_repr(self) -> str:
        return f"pad={self.pad}"


class _PlainTensor(torch.nn.Module):
    """Drop torchvision's tensor subclass, so batches hold plain tensors."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return image.as_subclass(torch.Tensor)


def classification_transforms(
    train: bool,
    mean: Sequence[float],
    std: Sequence[float],
    image_size: int | Sequence[int] | None = None,
    pad: int = 4,
    hflip: bool = True,
) -> v2.Compose:
    """An image (uint8 HWC array, PIL image or uint8 CHW tensor) -> normalised float ``[3, H, W]``.

    Training adds the standard CIFAR augmentation: zero-pad by ``pad`` and crop back at random,
    then flip horizontally with probability 1/2. ``image_size`` (an int or (H, W)) resizes first;
    folder images need it to be batched, CIFAR and the synthetic set are 32x32 already.
    """
    steps: list = [v2.ToImage()]
    if image_size is not None:
        size = [image_size, image_size] if isinstance(image_size, int) else list(image_size)
        steps.append(v2.Resize(size, antialias=True))
    if train and pad > 0:
        steps.append(RandomPadCrop(pad))
    if train and hflip:
        steps.append(v2.RandomHorizontalFlip(p=0.5))
    steps += [
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(mean), std=list(std)),
        _PlainTensor(),
    ]
    return v2.Compose(steps)


def _default_transform() -> v2.Compose:
    return v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), _PlainTensor()])


# --------------------------------------------------------------------------- datasets


class ArrayClassification(torch.utils.data.Dataset):
    """Images held in memory as a uint8 ``[N, H, W, 3]`` array, with int labels ``[N]``.

    Arrays of the wrong shape are a ``ValueError`` (a caller's mistake); no images, or a label
    outside ``0..len(class_names) - 1``, is a DatasetError naming ``source`` (the file the
    arrays came from), since training on either would go wrong silently or late.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        class_names,
        transform=None,
        source: str | Path = "the in-memory images",
    ):
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(
                f"images must be uint8 [N, H, W, 3], got {images.dtype} {images.shape}"
            )
        if len(labels) != len(images):
            raise ValueError(f"{len(labels)} labels for {len(images)} images")
        if len(images) == 0:
            raise DatasetError(f"{source} holds no images: the split is empty (give it some)")
        labels = np.asarray(labels, dtype=np.int64)
        outside = np.flatnonzero((labels < 0) | (labels >= len(class_names)))
        if outside.size:
            more = f" (and {outside.size - 1} more)" if outside.size > 1 else ""
            raise DatasetError(
                f"{source}: image {outside[0]} has label {labels[outside[0]]}{more} outside "
                f"0..{len(class_names) - 1}, the {len(class_names)} classes: fix the labels "
                "or the class names"
            )
        self.images = images
        self.labels = labels
        self.source = str(source)
        self.class_names = list(class_names)
        self.transform = transform if transform is not None else _default_transform()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[index]), int(self.labels[index])


def _load_rgb(path: str) -> Image.Image:
    """An image file as RGB, or a DatasetError naming the file."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DatasetError(f"cannot read image {path}: {exc}") from None


def _folder_problem(root: Path) -> str:
    """Why torchvision's ImageFolder refused ``root``, as one line naming the folders."""
    classes = sorted(d for d in root.iterdir() if d.is_dir())
    if not classes:
        return f"no class subfolders in {root}: expected {root}/<class>/<image>"
    empty = [
        d.name
        for d in classes
        if not any(
            name.lower().endswith(IMG_EXTENSIONS) for _, _, files in os.walk(d) for name in files
        )
    ]
    shown = ", ".join(empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
    return (
        f"class folder(s) with no images in {root}: {shown} (images end in "
        f"{', '.join(IMG_EXTENSIONS)}): add images or remove the folder(s)"
    )


class ImageFolderClassification(torch.utils.data.Dataset):
    """A folder of class subfolders, ``root/<class>/<image>``; classes in sorted order."""

    def __init__(self, root: str | Path, transform=None):
        root = Path(root).expanduser()
        if not root.is_dir():
            raise DatasetError(f"image folder not found: {root}")
        try:
            self.folder = ImageFolder(str(root), loader=_load_rgb)
        except FileNotFoundError:  # no class folders, or class folders without images
            raise DatasetError(_folder_problem(root)) from None
        self.root = root
        self.class_names = list(self.folder.classes)
        self.transform = transform if transform is not None else _default_transform()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.folder[index]
        return self.transform(image), int(label)


# --------------------------------------------------------------------------- batches


@dataclass
class ClassificationBatch:
    """Stacked images ``[B, 3, H, W]`` (float) and labels ``[B]`` (int64)."""

    images: torch.Tensor
    labels: torch.Tensor

    @property
    def inputs(self) -> dict[str, torch.Tensor]:
        """The model's keyword arguments: ``model(**batch.inputs)``."""
        return {"images": self.images}

    @property
    def targets(self) -> torch.Tensor:
        return self.labels

    def to(self, device, non_blocking: bool = False) -> ClassificationBatch:
        return ClassificationBatch(
            self.images.to(device, non_blocking=non_blocking),
            self.labels.to(device, non_blocking=non_blocking),
        )

    def __len__(self) -> int:
        return self.labels.shape[0]


def collate_classification(samples: list) -> ClassificationBatch:
    """``(image, label)`` samples of one size -> a :class:`ClassificationBatch`."""
    images = torch.stack([s[0] for s in samples])  # [B, 3, H, W]
    labels = torch.tensor([int(s[1]) for s in samples], dtype=torch.int64)  # [B]
    return ClassificationBatch(images, labels)


# --------------------------------------------------------------------------- building


def build_classification_dataset(
    name: str = "synthetic",
    split: str = "train",
    train: bool | None = None,
    root: str | Path | None = None,
    num_train: int = 5000,
    num_val: int = 1000,
    seed: int = 0,
    image_size: int | Sequence[int] | None = None,
    pad: int = 4,
    hflip: bool = True,
) -> torch.utils.data.Dataset:
    """The ``split`` ("train" / "val"; "test" = "val") of dataset ``name``, normalised.

    ``train`` switches the augmentation on (default: ``split == "train"``). "synthetic" makes
    (once) and reads the embedded set of ``num_train`` + ``num_val`` images; "cifar10" reads the
    local folder at ``root``; "folder" reads ``root/train`` and ``root/val`` class subfolders.
    """
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    if train is None:
        train = split == "train"
    mean, std = classification_stats(name)
    transform = classification_transforms(train, mean, std, image_size, pad=pad, hflip=hflip)
    if name == "synthetic":
        folder = ensure_synthetic_classes(num_train, num_val, seed)
        file = folder / ("train.npz" if split == "train" else "val.npz")
        images, labels = load_synthetic_split(file)
        return ArrayClassification(images, labels, SYNTH_CLASS_NAMES, transform, file)
    if root is None:
        raise DatasetError(
            f"data.root is not set: the {name!r} dataset reads local files (nothing is "
            "downloaded); set data.root to "
            + (
                "the cifar-10-batches-py folder or its parent"
                if name == "cifar10"
                else "a folder holding train/<class>/ and val/<class>/"
            )
        )
    if name == "cifar10":
        images, labels, class_names = read_cifar10(root, split)
        source = f"the CIFAR-10 {split} split in {root}"
        return ArrayClassification(images, labels, class_names, transform, source)
    folder = Path(root).expanduser() / ("train" if split == "train" else "val")
    return ImageFolderClassification(folder, transform)
