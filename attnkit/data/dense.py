"""Dense regression data (the ``dense_regression`` task): images with a per-pixel target map.

Two sources, picked by ``data.name``:

- ``synthetic`` (the default): the embedded aerial height maps of
  :mod:`attnkit.data.heightmaps`, ``data.image_size`` pixels, made once and cached;
- ``folder``: ``root/{split}/images/<stem>.png|jpg|tif`` with ``root/{split}/targets/<stem>.npy``
  (float ``[H, W]``) or ``<stem>.tif`` (a one-band raster, e.g. PIL mode "F"). Target pixels
  equal to ``data.nodata``, NaN or infinite are nodata. Images are used at their own size
  (``image_size`` only sizes the synthetic set); every image must match its target's size.

Every dataset item is a :data:`DenseSample`: a normalised image ``[3, H, W]`` and
``{"target": [1, H, W] float32, "valid": [1, H, W] bool}``, with the target set to 0 wherever
it is not valid, so a NaN never leaves the dataset. Training adds random horizontal and
vertical flips, drawn from torch's global RNG (which the training loop seeds per sample, so an
interrupted run resumes exactly) and applied alike to the image, target and mask.
:func:`collate_dense` stacks samples into a :class:`DenseBatch`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from attnkit.data.classification import _load_rgb
from attnkit.data.coco import DatasetError
from attnkit.data.heightmaps import (
    HEIGHTMAP_MEAN,
    HEIGHTMAP_STD,
    ensure_heightmaps,
    load_heightmap_split,
)
from attnkit.data.transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "DenseArrayDataset",
    "DenseBatch",
    "DenseFolderDataset",
    "DenseSample",
    "build_dense_dataset",
    "collate_dense",
    "dense_sample",
    "read_target",
]

DenseSample = tuple[torch.Tensor, dict[str, torch.Tensor]]
"""One item: image ``[3, H, W]`` float and ``{"target": [1, H, W] float32, "valid": bool}``."""

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
TARGET_SUFFIXES = (".npy", ".tif", ".tiff")


# --------------------------------------------------------------------------- samples


def random_flips(*maps: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Flip all ``maps`` (``[C, H, W]`` each) left-right, then up-down, each with probability
    1/2 and alike for all of them; the coin flips come from torch's global RNG."""
    for dim in (-1, -2):
        if bool(torch.rand(()) < 0.5):
            maps = tuple(m.flip(dim) for m in maps)
    return maps


def dense_sample(
    image: np.ndarray,
    target: np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    train: bool = False,
    nodata: float | None = None,
) -> DenseSample:
    """An image uint8 ``[H, W, 3]`` and a target ``[H, W]`` -> a normalised :data:`DenseSample`.

    Target pixels that are NaN, infinite or equal to ``nodata`` become invalid (target 0);
    ``train`` adds the random flips.
    """
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)  # [3, H, W] uint8
    x = x.to(torch.float32).div_(255.0)
    x = (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    t = torch.from_numpy(np.asarray(target, dtype=np.float32)).unsqueeze(0)  # [1, H, W]
    valid = torch.isfinite(t)
    if nodata is not None:
        valid &= t != float(nodata)
    t = torch.where(valid, t, torch.zeros((), dtype=t.dtype))  # no NaN leaves the dataset
    if train:
        x, t, valid = random_flips(x, t, valid)
    return x, {"target": t, "valid": valid}


# --------------------------------------------------------------------------- datasets


class DenseArrayDataset(torch.utils.data.Dataset):
    """Images uint8 ``[N, H, W, 3]`` and targets float ``[N, H, W]`` (NaN = nodata) in memory.

    Arrays of the wrong shape are a ``ValueError`` (a caller's mistake); no images at all is a
    DatasetError naming ``source``, the file the arrays came from.
    """

    def __init__(
        self,
        images: np.ndarray,
        targets: np.ndarray,
        mean,
        std,
        train: bool = False,
        source: str | Path = "the in-memory images",
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
        self.train = train

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> DenseSample:
        return dense_sample(
            self.images[index], self.targets[index], self.mean, self.std, self.train
        )


def _without_band(shape: Sequence[int]) -> tuple[int, ...]:
    """A raster shape without a singleton band axis: [1, H, W] and [H, W, 1] -> (H, W)."""
    shape = tuple(shape)
    if len(shape) == 3 and shape[0] == 1:
        return shape[1:]
    if len(shape) == 3 and shape[-1] == 1:
        return shape[:-1]
    return shape


def read_target(path: str | Path) -> np.ndarray:
    """A target raster as float32 ``[H, W]``: a ``.npy`` array or a one-band ``.tif``.

    A singleton band axis (``[1, H, W]`` or ``[H, W, 1]``) is dropped; anything else that is not
    a 2-D numeric raster, or a file that cannot be read, is a DatasetError naming the file.
    """
    path = Path(path)
    try:
        if path.suffix.lower() == ".npy":
            array = np.load(path, allow_pickle=False)
        else:
            with Image.open(path) as raster:
                array = np.array(raster if raster.mode == "F" else raster.convert("F"))
    except (OSError, ValueError, UnidentifiedImageError) as exc:
        raise DatasetError(f"cannot read target {path}: {exc}") from None
    array = array.reshape(_without_band(array.shape))
    if array.ndim != 2 or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise DatasetError(
            f"target {path} must be a numeric [H, W] raster, got {array.dtype} {array.shape}"
        )
    return array.astype(np.float32, copy=False)


def _raster_hw(path: Path, kind: str) -> tuple[int, int]:
    """The (H, W) of an image or a target file, read from its header only."""
    try:
        if path.suffix.lower() == ".npy":
            shape = _without_band(np.load(path, mmap_mode="r", allow_pickle=False).shape)
            return (shape[0], shape[1]) if len(shape) == 2 else (-1, -1)
        with Image.open(path) as raster:
            return raster.height, raster.width
    except (OSError, ValueError, UnidentifiedImageError) as exc:
        raise DatasetError(f"cannot read {kind} {path}: {exc}") from None


class DenseFolderDataset(torch.utils.data.Dataset):
    """``folder/images/<stem>.<png|jpg|tif>`` with ``folder/targets/<stem>.<npy|tif>``.

    Opening the dataset pairs every image with its target and checks their sizes from the file
    headers, so a missing or mismatched target is reported before training starts. Images are
    normalised with the ImageNet statistics.
    """

    def __init__(
        self,
        folder: str | Path,
        nodata: float | None = None,
        train: bool = False,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ):
        folder = Path(folder).expanduser()
        image_dir, target_dir = folder / "images", folder / "targets"
        for needed in (image_dir, target_dir):
            if not needed.is_dir():
                raise DatasetError(
                    f"dense data folder not found: {needed} (expected {folder}/images/<name>.png "
                    f"and {folder}/targets/<name>.npy)"
                )
        images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise DatasetError(f"no images (.png, .jpg, .tif) in {image_dir}")
        self.pairs: list[tuple[Path, Path]] = []
        for image in images:
            found = [target_dir / (image.stem + s) for s in TARGET_SUFFIXES]
            found = [p for p in found if p.is_file()]
            if not found:
                raise DatasetError(
                    f"no target for image {image}: expected {target_dir / image.stem}.npy (or .tif)"
                )
            target = found[0]
            image_hw, target_hw = _raster_hw(image, "image"), _raster_hw(target, "target")
            if image_hw != target_hw:
                raise DatasetError(
                    f"size mismatch: image {image} is {image_hw[0]}x{image_hw[1]} (HxW) but "
                    f"target {target} is "
                    + ("not [H, W]" if min(target_hw) < 0 else f"{target_hw[0]}x{target_hw[1]}")
                )
            self.pairs.append((image, target))
        self.folder, self.nodata, self.train = folder, nodata, train
        self.mean, self.std = tuple(mean), tuple(std)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> DenseSample:
        image_path, target_path = self.pairs[index]
        image = np.array(_load_rgb(str(image_path)))  # [H, W, 3] uint8
        target = read_target(target_path)  # [H, W] float32
        if image.shape[:2] != target.shape:  # the files changed since the dataset was opened
            raise DatasetError(
                f"size mismatch: image {image_path} is {image.shape[:2]} but target "
                f"{target_path} is {target.shape}"
            )
        return dense_sample(image, target, self.mean, self.std, self.train, self.nodata)


# --------------------------------------------------------------------------- batches


@dataclass
class DenseBatch:
    """Images ``[B, 3, H, W]`` float, targets ``[B, 1, H, W]`` float32, valid ``[B, 1, H, W]``."""

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
    images = first_image.new_zeros(n, first_image.shape[0], height, width)  # [B, 3, H, W]
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

    ``train`` switches the flips on (default: ``split == "train"``). "synthetic" makes (once)
    and reads the embedded height maps (splits "train" and "val"; "test" = "val"); "folder"
    reads ``data_cfg.root/<split>``.
    """
    if train is None:
        train = split == "train"
    if data_cfg.name == "synthetic":
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
        path = ensure_heightmaps(
            data_cfg.num_train, data_cfg.num_val, data_cfg.seed, data_cfg.image_size
        )
        name = "train" if split == "train" else "val"
        images, targets = load_heightmap_split(path, name)
        source = f"the {name} split of {path}"
        return DenseArrayDataset(images, targets, HEIGHTMAP_MEAN, HEIGHTMAP_STD, train, source)
    if data_cfg.name == "folder":
        if data_cfg.root is None:
            raise DatasetError(
                "data.root is not set: the 'folder' dense dataset reads local files (nothing is "
                "downloaded); set data.root to a folder holding <split>/images/ and "
                "<split>/targets/"
            )
        return DenseFolderDataset(Path(data_cfg.root).expanduser() / split, data_cfg.nodata, train)
    raise ValueError(f"unknown dense dataset {data_cfg.name!r}; expected 'synthetic' or 'folder'")
