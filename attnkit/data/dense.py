"""Dense regression data (the ``dense_regression`` task): images with a per-pixel target map.

Two sources, picked by ``data.name``:

- ``synthetic`` (the default): the embedded aerial height maps of
  :mod:`attnkit.data.heightmaps`, ``data.image_size`` pixels, made once and cached, normalised
  with their own constants;
- ``folder``: ``root/{split}/images/<stem>.png|jpg|tif|npy`` with
  ``root/{split}/targets/<stem>.npy|tif`` (a one-band raster). Files are read by
  :mod:`attnkit.data.rasters` (GeoTIFFs through ``tifffile``, any band count and dtype). Target
  pixels equal to ``data.nodata``, NaN or infinite are nodata, and so is a pixel with a
  non-finite image value. Images are used at their own size (``image_size`` only sizes the
  synthetic set); every image must match its target's size and every image of a split needs the
  same band count. ``data.band_stats``: ``imagenet`` (the default) reads 8-bit grey / RGB / RGBA
  images as RGB and normalises them with the ImageNet statistics; ``auto`` keeps every band and
  normalises each with the train split's mean / std (:mod:`attnkit.data.band_stats`, computed
  once and saved as ``root/band_stats.json``).

Every dataset item is a :data:`DenseSample`: a normalised image ``[C, H, W]`` and
``{"target": [1, H, W] float32, "valid": [1, H, W] bool}``, with the target set to 0 wherever
it is not valid, so a NaN never leaves the dataset. Training adds, with ``data.crop_size``, a
random ``[h, w]`` window of each raster (smaller rasters are padded with invalid pixels), then
random horizontal and vertical flips; both are drawn from torch's global RNG (which the training
loop seeds per sample, so an interrupted run resumes exactly) and applied alike to the image,
target and mask. :func:`collate_dense` stacks samples into a :class:`DenseBatch`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from attnkit.data.coco import DatasetError
from attnkit.data.heightmaps import (
    HEIGHTMAP_MEAN,
    HEIGHTMAP_STD,
    load_heightmap_split,
    scene_split,
)
from attnkit.data.rasters import read_target

__all__ = [
    "DenseArrayDataset",
    "DenseBatch",
    "DenseSample",
    "build_dense_dataset",
    "collate_dense",
    "dense_sample",
    "read_target",
]

DenseSample = tuple[torch.Tensor, dict[str, torch.Tensor]]
"""One item: image ``[C, H, W]`` float and ``{"target": [1, H, W] float32, "valid": bool}``."""


# --------------------------------------------------------------------------- samples


def random_flips(*maps: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Flip all ``maps`` (``[C, H, W]`` each) left-right, then up-down, each with probability
    1/2 and alike for all of them; the coin flips come from torch's global RNG."""
    for dim in (-1, -2):
        if bool(torch.rand(()) < 0.5):
            maps = tuple(m.flip(dim) for m in maps)
    return maps


def random_window(height: int, width: int, size: Sequence[int]) -> tuple[int, int]:
    """The top-left corner of a random ``size`` window inside a ``height x width`` raster
    (0 along a side shorter than the window), from torch's global RNG."""
    top = int(torch.randint(max(height - size[0], 0) + 1, ()))
    left = int(torch.randint(max(width - size[1], 0) + 1, ()))
    return top, left


def pad_sample(sample: DenseSample, size: Sequence[int]) -> DenseSample:
    """Pad a sample at the bottom / right to at least ``size``: image 0 (the normalised mean),
    target 0 and valid False, so the padding never counts."""
    image, maps = sample
    h, w = image.shape[-2:]
    pad = (0, max(size[1] - w, 0), 0, max(size[0] - h, 0))
    if not any(pad):
        return sample
    return F.pad(image, pad), {k: F.pad(v, pad) for k, v in maps.items()}


def dense_sample(
    image: np.ndarray,
    target: np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    train: bool = False,
    nodata: float | None = None,
    scale: float = 255.0,
) -> DenseSample:
    """An image ``[H, W, C]`` (any dtype) and a target ``[H, W]`` -> a :data:`DenseSample`.

    The image becomes ``(image / scale - mean) / std`` per band (``scale`` 255 with [0, 1]
    statistics for 8-bit images, 1 with statistics in raster units). Target pixels that are NaN,
    infinite or equal to ``nodata``, and pixels with a non-finite image value, become invalid
    (target 0, image 0); ``train`` adds the random flips.
    """
    if image.dtype != np.uint8:  # uint16, float64, ...: through numpy, which converts them all
        image = image.astype(np.float32)
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)  # [C, H, W]
    x = x.to(torch.float32) / scale
    x = (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    t = torch.from_numpy(np.asarray(target, dtype=np.float32)).unsqueeze(0)  # [1, H, W]
    valid = torch.isfinite(t)
    if nodata is not None:
        valid &= t != float(nodata)
    finite = torch.isfinite(x).all(dim=0, keepdim=True)  # [1, H, W]
    if not bool(finite.all()):
        valid &= finite
        x = torch.where(finite, x, torch.zeros((), dtype=x.dtype))
    t = torch.where(valid, t, torch.zeros((), dtype=t.dtype))  # no NaN leaves the dataset
    if train:
        x, t, valid = random_flips(x, t, valid)
    return x, {"target": t, "valid": valid}


# --------------------------------------------------------------------------- datasets


class DenseArrayDataset(torch.utils.data.Dataset):
    """Images uint8 ``[N, H, W, 3]`` and targets float ``[N, H, W]`` (NaN = nodata) in memory.

    Arrays of the wrong shape are a ``ValueError`` (a caller's mistake); no images at all is a
    DatasetError naming ``source``, the file the arrays came from. ``crop_size`` (training
    only) takes a random window of every image.
    """

    bands = 3

    def __init__(
        self,
        images: np.ndarray,
        targets: np.ndarray,
        mean,
        std,
        train: bool = False,
        source: str | Path = "the in-memory images",
        crop_size: Sequence[int] | None = None,
    ):
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(
                f"images must be uint8 [N, H, W, 3], got {images.dtype} {images.shape}"
            )
        if targets.shape != images.shape[:3]:
            raise ValueError(
                f"targets must be [N, H, W] = {images.shape[:3]}, got {tuple(targets.shape)}"
            )
        if len(images) == 0:
            raise DatasetError(f"{source} holds no images: the split is empty (give it some)")
        self.images, self.targets = images, targets
        self.mean, self.std = tuple(mean), tuple(std)
        self.train, self.crop_size = train, crop_size

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> DenseSample:
        image, target = self.images[index], self.targets[index]
        crop = self.crop_size if self.train else None
        if crop:
            top, left = random_window(*image.shape[:2], crop)
            image = image[top : top + crop[0], left : left + crop[1]]
            target = target[top : top + crop[0], left : left + crop[1]]
        sample = dense_sample(image, target, self.mean, self.std, self.train)
        return pad_sample(sample, crop) if crop else sample


# --------------------------------------------------------------------------- batches


@dataclass
class DenseBatch:
    """Images ``[B, C, H, W]`` float, targets ``[B, 1, H, W]`` float32, valid ``[B, 1, H, W]``."""

    images: torch.Tensor
    target: torch.Tensor
    valid: torch.Tensor

    @property
    def inputs(self) -> dict[str, torch.Tensor]:
        """The model's keyword arguments: ``model(**batch.inputs)``."""
        return {"images": self.images}

    @property
    def targets(self) -> dict[str, torch.Tensor]:
        """What the criterion and the evaluator take: ``{"target", "valid"}``."""
        return {"target": self.target, "valid": self.valid}

    def to(self, device, non_blocking: bool = False) -> DenseBatch:
        return DenseBatch(
            *(
                t.to(device, non_blocking=non_blocking)
                for t in (self.images, self.target, self.valid)
            )
        )

    def __len__(self) -> int:
        return self.images.shape[0]


def collate_dense(samples: list[DenseSample]) -> DenseBatch:
    """Stack :data:`DenseSample` items into a :class:`DenseBatch`.

    Samples of different sizes (a folder of mixed rasters) are padded at the bottom and right
    to the largest height and width in the batch: image 0 (the normalised mean), target 0 and
    valid False there, so the padding never counts in the loss or the metrics.
    """
    if not samples:
        raise ValueError("collate_dense needs at least one sample")
    height = max(s[0].shape[-2] for s in samples)
    width = max(s[0].shape[-1] for s in samples)
    first_image, first_target = samples[0]
    n = len(samples)
    images = first_image.new_zeros(n, first_image.shape[0], height, width)  # [B, C, H, W]
    target = first_target["target"].new_zeros(n, 1, height, width)  # [B, 1, H, W]
    valid = torch.zeros(n, 1, height, width, dtype=torch.bool)  # [B, 1, H, W]
    for i, (image, maps) in enumerate(samples):
        h, w = image.shape[-2:]
        images[i, :, :h, :w] = image
        target[i, :, :h, :w] = maps["target"]
        valid[i, :, :h, :w] = maps["valid"]
    return DenseBatch(images, target, valid)


# --------------------------------------------------------------------------- building


def build_dense_dataset(data_cfg, split: str = "train", train: bool | None = None):
    """The ``split`` of the dense data that ``data_cfg`` (a ``DenseDataConfig``) describes.

    ``train`` switches the augmentation on (default: ``split == "train"``): random crops of
    ``data_cfg.crop_size`` and flips. "synthetic" makes (once) and reads the embedded height
    maps (splits "train" and "val"; "test" = "val"); "folder" reads ``data_cfg.root/<split>``,
    with ``data_cfg.band_stats`` "auto" normalised by the train split's band statistics.
    """
    if train is None:
        train = split == "train"
    crop = list(data_cfg.crop_size) if data_cfg.crop_size else None
    if data_cfg.name == "synthetic":
        path, name = scene_split(data_cfg, split)
        images, targets = load_heightmap_split(path, name)
        source = f"the {name} split of {path}"
        return DenseArrayDataset(
            images, targets, HEIGHTMAP_MEAN, HEIGHTMAP_STD, train, source, crop_size=crop
        )
    if data_cfg.name == "folder":
        if data_cfg.root is None:
            raise DatasetError(
                "data.root is not set: the 'folder' dense dataset reads local files (nothing is "
                "downloaded); set data.root to a folder holding <split>/images/ and "
                "<split>/targets/"
            )
        root = Path(data_cfg.root).expanduser()
        rgb = data_cfg.band_stats == "imagenet"
        from attnkit.data.dense_folder import DenseFolderDataset, use_band_stats

        dataset = DenseFolderDataset(root / split, data_cfg.nodata, train, rgb=rgb, crop_size=crop)
        if not rgb:
            use_band_stats(dataset, root, split, data_cfg.nodata)
        return dataset
    raise ValueError(f"unknown dense dataset {data_cfg.name!r}; expected 'synthetic' or 'folder'")


def __getattr__(name: str):
    """``DenseFolderDataset`` lives in :mod:`attnkit.data.dense_folder` (which imports this
    module's sample helpers); it is re-exported here on first access."""
    if name == "DenseFolderDataset":
        from attnkit.data.dense_folder import DenseFolderDataset

        return DenseFolderDataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
