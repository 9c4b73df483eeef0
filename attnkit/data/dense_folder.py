"""Dense-regression rasters from a folder: ``root/{split}/images`` paired with ``targets``.

See :mod:`attnkit.data.dense` for the layout, the band statistics and the samples; this module
holds the folder dataset and the per-band normalisation of a split by the train split's
statistics (:mod:`attnkit.data.band_stats`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from attnkit.data.band_stats import band_stats_for
from attnkit.data.coco import DatasetError
from attnkit.data.dense import DenseSample, dense_sample, pad_sample, random_window
from attnkit.data.rasters import (
    RASTER_SUFFIXES,
    as_rgb8,
    check_rgb8,
    raster_header,
    read_raster,
    read_target,
    read_target_window,
    read_window,
)
from attnkit.data.transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["TARGET_SUFFIXES", "DenseFolderDataset", "use_band_stats"]

TARGET_SUFFIXES = (".npy", ".tif", ".tiff")


class DenseFolderDataset(torch.utils.data.Dataset):
    """``folder/images/<stem>.<png|jpg|tif|npy>`` with ``folder/targets/<stem>.<npy|tif>``.

    Opening the dataset pairs every image with its target and checks their sizes and band
    counts from the file headers, so a missing or mismatched file is reported before training
    starts. ``rgb`` (``data.band_stats=imagenet``): images are read as 8-bit RGB and normalised
    with ``mean`` / ``std`` in [0, 1] units (``scale`` 255); otherwise every band is kept and
    ``mean`` / ``std`` are per band in raster units (``scale`` 1). ``bands`` is the channel count
    of the items. ``crop_size`` (training only) reads a random window of each raster.
    """

    def __init__(
        self,
        folder: str | Path,
        nodata: float | None = None,
        train: bool = False,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        *,
        scale: float = 255.0,
        rgb: bool = True,
        crop_size: Sequence[int] | None = None,
    ):
        folder = Path(folder).expanduser()
        image_dir, target_dir = folder / "images", folder / "targets"
        for needed in (image_dir, target_dir):
            if not needed.is_dir():
                raise DatasetError(
                    f"dense data folder not found: {needed} (expected {folder}/images/<name>.png "
                    f"and {folder}/targets/<name>.npy)"
                )
        images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in RASTER_SUFFIXES)
        if not images:
            raise DatasetError(f"no images (.png, .jpg, .tif, .npy) in {image_dir}")
        self.pairs: list[tuple[Path, Path]] = []
        self.sizes: list[tuple[int, int]] = []  # (H, W) of every pair
        first_bands = None
        for image in images:
            found = [target_dir / (image.stem + s) for s in TARGET_SUFFIXES]
            found = [p for p in found if p.is_file()]
            if not found:
                raise DatasetError(
                    f"no target for image {image}: expected {target_dir / image.stem}.npy (or .tif)"
                )
            target = found[0]
            (*image_hw, bands), dtype = raster_header(image, "image")
            (*target_hw, target_bands), _ = raster_header(target, "target")
            if min(target_hw) < 0 or target_bands != 1:
                raise DatasetError(f"target {target} must be a one-band [H, W] raster")
            if image_hw != target_hw:
                raise DatasetError(
                    f"size mismatch: image {image} is {image_hw[0]}x{image_hw[1]} (HxW) but "
                    f"target {target} is {target_hw[0]}x{target_hw[1]}"
                )
            if min(image_hw) < 0:
                raise DatasetError(f"image {image} is not a 2-D or 3-D raster")
            if rgb:
                check_rgb8(image, bands, dtype)
            first_bands = bands if first_bands is None else first_bands
            if bands != first_bands and not rgb:
                raise DatasetError(
                    f"image {image} has {bands} bands but {self.pairs[0][0]} has {first_bands}: "
                    "every image of a split needs the same bands"
                )
            self.pairs.append((image, target))
            self.sizes.append((image_hw[0], image_hw[1]))
        self.folder, self.nodata, self.train = folder, nodata, train
        self.mean, self.std, self.scale = tuple(mean), tuple(std), scale
        self.rgb, self.crop_size = rgb, crop_size
        self.bands = 3 if rgb else first_bands

    def __len__(self) -> int:
        return len(self.pairs)

    def _read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The image ``[h, w, C]`` and target ``[h, w]`` of pair ``index`` (a random window
        when training with a crop size)."""
        image_path, target_path = self.pairs[index]
        crop = self.crop_size if self.train else None
        if crop:
            top, left = random_window(*self.sizes[index], crop)
            window = (top, left, crop[0], crop[1])
            image = read_window(image_path, *window, kind="image")
            target = read_target_window(target_path, *window)
        else:
            image, target = read_raster(image_path, "image"), read_target(target_path)
        if image.shape[:2] != target.shape:  # the files changed since the dataset was opened
            raise DatasetError(
                f"size mismatch: image {image_path} is {image.shape[:2]} but target "
                f"{target_path} is {target.shape}"
            )
        return (as_rgb8(image, image_path) if self.rgb else image), target

    def __getitem__(self, index: int) -> DenseSample:
        image, target = self._read(index)
        if image.shape[-1] != len(self.mean):
            raise DatasetError(
                f"image {self.pairs[index][0]} has {image.shape[-1]} bands but the band "
                f"statistics have {len(self.mean)}"
            )
        sample = dense_sample(
            image, target, self.mean, self.std, self.train, self.nodata, self.scale
        )
        crop = self.crop_size if self.train else None
        return pad_sample(sample, crop) if crop else sample


def use_band_stats(dataset: DenseFolderDataset, root: Path, split: str, nodata) -> None:
    """Normalise ``dataset`` with the per-band statistics of ``root``'s train split."""
    pairs, problem = dataset.pairs, None
    if split != "train":
        try:
            pairs = DenseFolderDataset(root / "train", nodata, rgb=False).pairs
        except DatasetError as exc:
            if (root / "train").exists():  # a broken train split is reported, not bypassed
                raise DatasetError(f"data.band_stats=auto needs the train split: {exc}") from None
            pairs, problem = None, exc  # no train split: the saved statistics may be there
    stats = band_stats_for(root, pairs, nodata)
    if stats is None:
        raise DatasetError(
            f"data.band_stats=auto normalises every split with the train split's band "
            f"statistics ({root / 'band_stats.json'}, none saved yet), but {problem}"
        )
    if len(stats.mean) != dataset.bands:
        raise DatasetError(
            f"the images of {dataset.folder} have {dataset.bands} bands but those of "
            f"{root / 'train'} have {len(stats.mean)}: every split needs the same bands"
        )
    dataset.mean, dataset.std, dataset.scale = stats.mean, stats.std, 1.0
