"""Semantic-segmentation data (the ``dense_segmentation`` task): images with a class-id map.

Two sources, picked by ``data.name``:

- ``synthetic`` (the default): the very scenes of the height maps (:mod:`attnkit.data.heightmaps`,
  same seed, same images) with what covers each pixel: 0 ground, 1 building, 2 tree. Where the
  height map is nodata the label is ``data.ignore_index``, so the ignore path is always used;
- ``folder``: ``root/{split}/images/<stem>.png|jpg|tif`` with ``root/{split}/labels/<stem>.png``
  (a one-band image: mode L, P, I or I;16) or ``<stem>.npy`` (an integer ``[H, W]`` array).

Every dataset item is a :data:`SegmentationSample`: a normalised image ``[3, H, W]`` and
``{"labels": [H, W] int64, "ignore_index": [] int64}``. The ignore index rides along with each
sample because the collate function gets nothing else: :func:`collate_segmentation` pads
samples of different sizes with it. Training adds random horizontal and vertical flips (torch's
global RNG, applied alike to image and labels), as the dense regression data does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from attnkit.data.classification import _load_rgb
from attnkit.data.coco import DatasetError
from attnkit.data.dense import random_flips, random_window
from attnkit.data.heightmaps import (
    HEIGHTMAP_MEAN,
    HEIGHTMAP_STD,
    NODATA_LABEL,
    SCENE_CLASSES,
    load_scene_labels,
    scene_split,
)
from attnkit.data.transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "SegmentationArrayDataset",
    "SegmentationBatch",
    "SegmentationFolderDataset",
    "SegmentationSample",
    "build_segmentation_dataset",
    "collate_segmentation",
    "pad_segmentation",
    "read_label",
    "segmentation_sample",
]

SegmentationSample = tuple[torch.Tensor, dict[str, torch.Tensor]]
"""One item: image ``[3, H, W]`` float and ``{"labels": [H, W] int64, "ignore_index": []}``."""

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")  # read by PIL as RGB
LABEL_SUFFIXES = (".png", ".npy")
INTEGER_MODES = ("1", "L", "P", "I", "I;16", "I;16L", "I;16B")
"""PIL modes of one band of integers (P: the palette indices are the class ids)."""


def segmentation_sample(
    image: np.ndarray,
    labels: np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    ignore_index: int,
    train: bool = False,
) -> SegmentationSample:
    """An image uint8 ``[H, W, 3]`` and class ids ``[H, W]`` -> a :data:`SegmentationSample`
    (``train`` adds the random flips)."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)  # [3, H, W] uint8
    x = x.to(torch.float32).div_(255.0)
    x = (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64)).unsqueeze(0)  # [1, H, W]
    if train:
        x, y = random_flips(x, y)
    return x, {"labels": y[0], "ignore_index": torch.tensor(ignore_index)}  # labels [H, W]


def _check_ids(
    labels: np.ndarray, num_classes: int, ignore_index: int, where: str, nodata: int | None = None
) -> None:
    """A DatasetError when a class id is outside ``0..num_classes - 1`` and is neither the
    ignore index nor ``nodata`` (a value that becomes the ignore index)."""
    bad = ((labels < 0) | (labels >= num_classes)) & (labels != ignore_index)
    if nodata is not None:
        bad &= labels != nodata
    if bad.any():
        value = labels[bad].flat[0]
        raise DatasetError(
            f"{where}: class id {value} ({int(bad.sum())} pixels) is outside 0..{num_classes - 1} "
            f"and is not data.ignore_index={ignore_index}: fix the labels, or set "
            f"model.out_channels / data.class_names to cover it"
        )


# --------------------------------------------------------------------------- datasets


class SegmentationArrayDataset(torch.utils.data.Dataset):
    """Images uint8 ``[N, H, W, 3]`` and class ids ``[N, H, W]`` in memory.

    Label value ``nodata_label`` (the synthetic scenes' nodata) becomes ``ignore_index``; any
    other id outside ``0..len(class_names) - 1`` is a DatasetError naming ``source``.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        class_names: Sequence[str],
        mean,
        std,
        ignore_index: int = 255,
        train: bool = False,
        nodata_label: int | None = NODATA_LABEL,
        source: str | Path = "the in-memory images",
    ):
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(
                f"images must be uint8 [N, H, W, 3], got {images.dtype} {images.shape}"
            )
        if labels.shape != images.shape[:3] or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"labels must be integers [N, H, W] = {images.shape[:3]}, got "
                f"{labels.dtype} {tuple(labels.shape)}"
            )
        if len(images) == 0:
            raise DatasetError(f"{source} holds no images: the split is empty (give it some)")
        self.class_names = tuple(class_names)
        _check_ids(labels, len(self.class_names), ignore_index, str(source), nodata_label)
        # Kept in their own (small) dtype; made int64 one item at a time.
        self.images, self.labels, self.source = images, labels, str(source)
        self.nodata_label = nodata_label
        self.mean, self.std = tuple(mean), tuple(std)
        self.ignore_index, self.train = int(ignore_index), train

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> SegmentationSample:
        labels = self.labels[index].astype(np.int64)  # [H, W]
        if self.nodata_label is not None:
            labels[labels == self.nodata_label] = self.ignore_index
        return segmentation_sample(
            self.images[index], labels, self.mean, self.std, self.ignore_index, self.train
        )


def _image_hw(path: Path) -> tuple[int, int]:
    """The (H, W) of an image file, read from its header only."""
    try:
        with Image.open(path) as image:
            return image.height, image.width
    except (OSError, ValueError, UnidentifiedImageError) as exc:
        raise DatasetError(f"cannot read image {path}: {exc}") from None


def _label_header(path: Path) -> tuple[tuple[int, ...], str]:
    """The shape (band axis dropped) and the kind of values of a label file, from its header:
    the kind is "int", "float" or a PIL mode with several bands."""
    try:
        if path.suffix.lower() == ".npy":
            array = np.load(path, mmap_mode="r", allow_pickle=False)
            integer = np.issubdtype(array.dtype, np.integer) or array.dtype == bool
            shape = array.shape
            if len(shape) == 3 and 1 in (shape[0], shape[-1]):  # a singleton band axis
                shape = shape[1:] if shape[0] == 1 else shape[:-1]
            return tuple(shape), "int" if integer else str(array.dtype)
        with Image.open(path) as raster:
            kind = "int" if raster.mode in INTEGER_MODES else f"mode {raster.mode}"
            return (raster.height, raster.width), kind
    except (OSError, ValueError, UnidentifiedImageError) as exc:
        raise DatasetError(f"cannot read labels {path}: {exc}") from None


def _not_integer(path: Path, kind: str) -> DatasetError:
    return DatasetError(
        f"labels {path} must be one band of integer class ids ([H, W]: a PNG of mode L, P or I, "
        f"or an integer .npy), got {kind}"
    )


def read_label(path: str | Path) -> np.ndarray:
    """A label file as int64 ``[H, W]``; anything but one band of integers is a DatasetError."""
    path = Path(path)
    shape, kind = _label_header(path)
    if kind != "int" or len(shape) != 2:
        raise _not_integer(path, kind if kind != "int" else f"shape {list(shape)}")
    try:
        if path.suffix.lower() == ".npy":
            array = np.load(path, allow_pickle=False)
        else:
            with Image.open(path) as raster:
                array = np.array(raster)
    except (OSError, ValueError, UnidentifiedImageError) as exc:
        raise DatasetError(f"cannot read labels {path}: {exc}") from None
    return array.reshape(shape).astype(np.int64)


class SegmentationFolderDataset(torch.utils.data.Dataset):
    """``folder/images/<stem>.<png|jpg|tif>`` with ``folder/labels/<stem>.<png|npy>``.

    Opening the dataset pairs every image with its labels and checks, from the file headers,
    that their sizes agree and the labels are one band of integers; the class ids themselves
    are checked as each item is read. Images are normalised with the ImageNet statistics.
    """

    def __init__(
        self,
        folder: str | Path,
        class_names: Sequence[str],
        ignore_index: int = 255,
        train: bool = False,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        crop_size: Sequence[int] | None = None,
    ):
        folder = Path(folder).expanduser()
        image_dir, label_dir = folder / "images", folder / "labels"
        for needed in (image_dir, label_dir):
            if not needed.is_dir():
                raise DatasetError(
                    f"segmentation data folder not found: {needed} (expected "
                    f"{folder}/images/<name>.png and {folder}/labels/<name>.png)"
                )
        images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise DatasetError(f"no images (.png, .jpg, .tif) in {image_dir}")
        self.pairs: list[tuple[Path, Path]] = []
        for image in images:
            found = [label_dir / (image.stem + s) for s in LABEL_SUFFIXES]
            found = [p for p in found if p.is_file()]
            if not found:
                raise DatasetError(
                    f"no labels for image {image}: expected {label_dir / image.stem}.png (or .npy)"
                )
            label = found[0]
            shape, kind = _label_header(label)
            if kind != "int" or len(shape) != 2:
                raise _not_integer(label, kind if kind != "int" else f"shape {list(shape)}")
            image_hw = _image_hw(image)
            if image_hw != shape:
                raise DatasetError(
                    f"size mismatch: image {image} is {image_hw[0]}x{image_hw[1]} (HxW) but "
                    f"labels {label} are {shape[0]}x{shape[1]}"
                )
            self.pairs.append((image, label))
        self.folder, self.class_names = folder, tuple(class_names)
        self.ignore_index, self.train = int(ignore_index), train
        self.mean, self.std = tuple(mean), tuple(std)
        self.crop_size = list(crop_size) if crop_size else None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> SegmentationSample:
        image_path, label_path = self.pairs[index]
        image = np.array(_load_rgb(str(image_path)))  # [H, W, 3] uint8
        labels = read_label(label_path)  # [H, W] int64
        if image.shape[:2] != labels.shape:  # the files changed since the dataset was opened
            raise DatasetError(
                f"size mismatch: image {image_path} is {image.shape[:2]} but labels "
                f"{label_path} are {labels.shape}"
            )
        _check_ids(labels, self.num_classes, self.ignore_index, f"labels {label_path}")
        crop = self.crop_size if self.train else None
        if crop:  # a random window (torch's RNG: resume stays exact)
            top, left = random_window(*labels.shape, crop)
            image = image[top : top + crop[0], left : left + crop[1]]
            labels = labels[top : top + crop[0], left : left + crop[1]]
        sample = segmentation_sample(
            image, labels, self.mean, self.std, self.ignore_index, self.train
        )
        return pad_segmentation(sample, crop) if crop else sample


def pad_segmentation(sample: SegmentationSample, size: Sequence[int]) -> SegmentationSample:
    """Pad a sample at the bottom / right to at least ``size``: image 0 (the normalised mean),
    labels ``ignore_index``, so the padding counts nowhere."""
    image, targets = sample
    h, w = image.shape[-2:]
    pad = (0, max(size[1] - w, 0), 0, max(size[0] - h, 0))
    if not any(pad):
        return sample
    labels = F.pad(targets["labels"], pad, value=int(targets["ignore_index"]))
    return F.pad(image, pad), {**targets, "labels": labels}


# --------------------------------------------------------------------------- batches


@dataclass
class SegmentationBatch:
    """Images ``[B, 3, H, W]`` float and class ids ``[B, H, W]`` int64 (``ignore_index`` where
    unknown or padded)."""

    images: torch.Tensor
    labels: torch.Tensor
    ignore_index: int = 255

    @property
    def inputs(self) -> dict[str, torch.Tensor]:
        """The model's keyword arguments: ``model(**batch.inputs)``."""
        return {"images": self.images}

    @property
    def targets(self) -> dict[str, torch.Tensor]:
        """What the criterion and the evaluator take: ``{"labels"}``."""
        return {"labels": self.labels}

    def to(self, device, non_blocking: bool = False) -> SegmentationBatch:
        return SegmentationBatch(
            self.images.to(device, non_blocking=non_blocking),
            self.labels.to(device, non_blocking=non_blocking),
            self.ignore_index,
        )

    def __len__(self) -> int:
        return self.images.shape[0]


def collate_segmentation(samples: list[SegmentationSample]) -> SegmentationBatch:
    """Stack :data:`SegmentationSample` items into a :class:`SegmentationBatch`.

    Samples of different sizes are padded at the bottom and right to the largest height and
    width in the batch: image 0 (the normalised mean) and labels ``ignore_index`` there, so the
    padding never counts in the loss or the metrics.
    """
    if not samples:
        raise ValueError("collate_segmentation needs at least one sample")
    ignore = int(samples[0][1]["ignore_index"])
    height = max(s[0].shape[-2] for s in samples)
    width = max(s[0].shape[-1] for s in samples)
    first = samples[0][0]
    images = first.new_zeros(len(samples), first.shape[0], height, width)  # [B, 3, H, W]
    labels = torch.full((len(samples), height, width), ignore, dtype=torch.int64)  # [B, H, W]
    for i, (image, maps) in enumerate(samples):
        h, w = image.shape[-2:]
        images[i, :, :h, :w] = image
        labels[i, :h, :w] = maps["labels"]
    return SegmentationBatch(images, labels, ignore)


# --------------------------------------------------------------------------- building


def build_segmentation_dataset(
    data_cfg, split: str = "train", train: bool | None = None, num_classes: int | None = None
):
    """The ``split`` of the segmentation data ``data_cfg`` (a ``SegmentationDataConfig``)
    describes.

    ``train`` switches the flips on (default: ``split == "train"``). "synthetic" makes (once)
    the height-map scenes and reads their class maps (splits "train" and "val"; "test" =
    "val"); "folder" reads ``data_cfg.root/<split>`` with ``data_cfg.class_names``, or
    ``num_classes`` classes named by their ids when there are none.
    """
    if train is None:
        train = split == "train"
    ignore = data_cfg.ignore_index
    if data_cfg.name == "synthetic":
        path, name = scene_split(data_cfg, split)
        images, labels = load_scene_labels(path, name)
        source = f"the {name} split of {path}"
        mean, std = HEIGHTMAP_MEAN, HEIGHTMAP_STD
        return SegmentationArrayDataset(
            images, labels, SCENE_CLASSES, mean, std, ignore, train, source=source
        )
    if data_cfg.name == "folder":
        if data_cfg.root is None:
            raise DatasetError(
                "data.root is not set: the 'folder' segmentation dataset reads local files "
                "(nothing is downloaded); set data.root to a folder holding <split>/images/ and "
                "<split>/labels/"
            )
        names = data_cfg.class_names or [str(i) for i in range(num_classes or 0)]
        if not names:
            raise ValueError("the folder dataset needs data.class_names or num_classes")
        folder = Path(data_cfg.root).expanduser() / split
        crop = data_cfg.crop_size
        return SegmentationFolderDataset(folder, names, ignore, train, crop_size=crop)
    raise ValueError(
        f"unknown segmentation dataset {data_cfg.name!r}; expected 'synthetic' or 'folder'"
    )
