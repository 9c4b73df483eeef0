"""One reader for the raster files of the dense data: images and targets, any band count.

Every raster comes back as a numpy array ``[H, W, C]`` in the file's own dtype (uint8, uint16,
float32, ...), so the caller decides how to scale it:

- ``.tif`` / ``.tiff`` through ``tifffile`` (multi-band GeoTIFFs, 16-bit and float rasters; a
  file ``tifffile`` cannot decode, e.g. one that needs an optional codec, is tried with PIL);
- ``.png`` / ``.jpg`` / ``.jpeg`` through PIL, keeping every band (grey images are 1 band,
  RGBA 4; palette images are expanded to RGB or RGBA);
- ``.npy`` arrays (``[H, W]`` or ``[H, W, C]`` / ``[C, H, W]``).

Band-first layouts: a TIFF that says its samples come first (axes ``SYX``) is transposed; for a
3-D array without such a label (``.npy``, a stack of TIFF pages) the first axis is taken as the
bands when it is small (<= 16) and the last axis is not. A tiny tile whose every axis is <= 16 is
read band-last. A file that cannot be read, or is not a 2-D / 3-D numeric raster, is a one-line
:class:`~attnkit.data.coco.DatasetError` naming the file.

:func:`raster_header` / :func:`raster_shape` read ``(H, W, C)`` (and the dtype) from the header
only (cheap, for checking pairs before training) and :func:`read_window` reads a window,
memory-mapping ``.npy`` files and uncompressed TIFFs so a random crop of a large raster does not
load all of it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from attnkit.data.coco import DatasetError

__all__ = [
    "RASTER_SUFFIXES",
    "as_rgb8",
    "check_rgb8",
    "raster_header",
    "raster_hw",
    "raster_shape",
    "read_raster",
    "read_target",
    "read_target_window",
    "read_window",
    "valid_target",
    "without_band",
]

RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".npy")
TIFF_SUFFIXES = (".tif", ".tiff")
MAX_BANDS_FIRST = 16  # a leading axis this small (and a last one that is not) holds the bands

# What a reader may raise on a bad file: PIL / numpy / tifffile errors are all among these.
_READ_ERRORS = (OSError, ValueError, UnidentifiedImageError, EOFError, IndexError, KeyError)


# --------------------------------------------------------------------------- layouts


def _bands_first(shape: tuple[int, ...], axes: str | None) -> bool:
    """Whether a 3-D raster of ``shape`` stores its bands on the first axis."""
    if axes is not None and len(axes) == 3:
        if axes.endswith("S"):
            return False  # TIFF samples-per-pixel last: [H, W, C]
        if axes.startswith("S"):
            return True  # planar configuration "separate": [C, H, W]
    return shape[0] <= MAX_BANDS_FIRST < shape[-1]


def _to_hwc(array: np.ndarray, axes: str | None, path: Path, kind: str) -> np.ndarray:
    """``array`` as ``[H, W, C]``: a 2-D raster gains a band axis, band-first is transposed."""
    if array.ndim == 2:
        array = array[:, :, None]
    elif array.ndim == 3 and _bands_first(array.shape, axes):
        array = np.moveaxis(array, 0, -1)
    elif array.ndim != 3:
        raise DatasetError(
            f"{kind} {path} must be a 2-D or 3-D raster ([H, W], [H, W, C] or [C, H, W]), "
            f"got shape {tuple(array.shape)}"
        )
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise DatasetError(f"{kind} {path} must hold real numbers, got dtype {array.dtype}")
    if min(array.shape) == 0:
        raise DatasetError(f"{kind} {path} is empty (shape {tuple(array.shape)})")
    return array


def _hwc_shape(shape: tuple[int, ...], axes: str | None) -> tuple[int, int, int]:
    """The ``(H, W, C)`` a raster of ``shape`` will be read as (-1s when it is not 2-D / 3-D)."""
    if len(shape) == 2:
        return shape[0], shape[1], 1
    if len(shape) != 3:
        return -1, -1, -1
    if _bands_first(shape, axes):
        return shape[1], shape[2], shape[0]
    return shape[0], shape[1], shape[2]


# --------------------------------------------------------------------------- PIL images


def _pil_mode(image: Image.Image) -> str | None:
    """The mode a PIL image is converted to before reading, or None to keep its own."""
    if image.mode in ("P", "PA"):
        has_alpha = image.mode == "PA" or "transparency" in image.info
        return "RGBA" if has_alpha else "RGB"
    return "L" if image.mode == "1" else None


def _pil_array(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        mode = _pil_mode(image)
        return np.array(image.convert(mode) if mode else image)  # a writable copy


def _pil_header(path: Path) -> tuple[tuple[int, int, int], np.dtype]:
    with Image.open(path) as image:
        mode = _pil_mode(image) or image.mode
        shape = (image.height, image.width, Image.getmodebands(mode))
    if mode == "F":
        return shape, np.dtype(np.float32)
    if mode.startswith("I;16"):
        return shape, np.dtype(np.uint16)
    return shape, np.dtype(np.int32 if mode.startswith("I") else np.uint8)


# --------------------------------------------------------------------------- reading


def read_raster(path: str | Path, kind: str = "raster") -> np.ndarray:
    """The raster at ``path`` as ``[H, W, C]`` in its own dtype; ``kind`` names it in errors."""
    path = Path(path)
    suffix, axes = path.suffix.lower(), None
    try:
        if suffix == ".npy":
            array = np.load(path, allow_pickle=False)
        elif suffix in TIFF_SUFFIXES:
            try:
                with tifffile.TiffFile(path) as tif:
                    axes = tif.series[0].axes
                    array = tif.series[0].asarray()
            except _READ_ERRORS as tiff_error:
                try:
                    with warnings.catch_warnings():  # PIL's on a broken file; tifffile's is kept
                        warnings.simplefilter("ignore")
                        array = _pil_array(path)  # e.g. a compression tifffile needs a codec for
                except _READ_ERRORS:
                    raise tiff_error from None
        else:
            array = _pil_array(path)
    except _READ_ERRORS as exc:
        raise DatasetError(f"cannot read {kind} {path}: {exc}") from None
    return _to_hwc(np.asarray(array), axes, path, kind)


def raster_header(path: str | Path, kind: str = "raster") -> tuple[tuple[int, int, int], np.dtype]:
    """``((H, W, C), dtype)`` of the raster at ``path`` from its header (-1s when the raster is
    not 2-D / 3-D), without reading its pixels."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            array = np.load(path, mmap_mode="r", allow_pickle=False)
            return _hwc_shape(array.shape, None), array.dtype
        if suffix in TIFF_SUFFIXES:
            try:
                with tifffile.TiffFile(path) as tif:
                    series = tif.series[0]
                    return _hwc_shape(tuple(series.shape), series.axes), np.dtype(series.dtype)
            except _READ_ERRORS as tiff_error:
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        return _pil_header(path)
                except _READ_ERRORS:
                    raise tiff_error from None
        return _pil_header(path)
    except _READ_ERRORS as exc:
        raise DatasetError(f"cannot read {kind} {path}: {exc}") from None


def raster_shape(path: str | Path, kind: str = "raster") -> tuple[int, int, int]:
    """``(H, W, C)`` of the raster at ``path`` from its header; -1s if it is not 2-D / 3-D."""
    return raster_header(path, kind)[0]


def raster_hw(path: str | Path, kind: str = "raster") -> tuple[int, int]:
    """``(H, W)`` of the raster at ``path`` from its header; -1s if it is not 2-D / 3-D."""
    return raster_header(path, kind)[0][:2]


def without_band(shape) -> tuple[int, ...]:
    """A raster shape without a singleton band axis: [1, H, W] and [H, W, 1] -> (H, W)."""
    shape = tuple(shape)
    if len(shape) == 3 and 1 in (shape[0], shape[-1]):
        return shape[1:] if shape[0] == 1 else shape[:-1]
    return shape


def _mapped(path: Path) -> tuple[np.ndarray, str | None] | None:
    """A read-only memory map of an ``.npy`` or uncompressed TIFF raster, or None."""
    try:
        if path.suffix.lower() == ".npy":
            return np.load(path, mmap_mode="r", allow_pickle=False), None
        if path.suffix.lower() in TIFF_SUFFIXES:
            with tifffile.TiffFile(path) as tif:
                axes = tif.series[0].axes
            return tifffile.memmap(path, mode="r"), axes
    except _READ_ERRORS:
        return None  # compressed, tiled or odd: read_raster reads (and reports) it whole
    return None


def read_window(
    path: str | Path, top: int, left: int, height: int, width: int, kind: str = "raster"
) -> np.ndarray:
    """Rows ``top:top+height`` and columns ``left:left+width`` of a raster, ``[h, w, C]``.

    Memory-maps the file when it can, so only the window is read from disk.
    """
    path = Path(path)
    found = _mapped(path)
    if found is not None and found[0].ndim in (2, 3):
        array, axes = found
        if array.ndim == 3 and _bands_first(array.shape, axes):
            window = np.moveaxis(array[:, top : top + height, left : left + width], 0, -1)
        else:
            window = array[top : top + height, left : left + width]
        return _to_hwc(np.array(window), "YXS", path, kind)  # a copy, band-last by now
    return read_raster(path, kind)[top : top + height, left : left + width]


def check_rgb8(path: str | Path, bands: int, dtype) -> None:
    """Refuse what :func:`as_rgb8` cannot convert: a DatasetError naming ``path`` and the way
    out (``data.band_stats=auto``)."""
    if np.dtype(dtype) != np.uint8 or bands not in (1, 2, 3, 4):
        raise DatasetError(
            f"image {path} has {bands} band(s) of {np.dtype(dtype)}: data.band_stats=imagenet "
            "reads 8-bit grey or RGB images only; set data.band_stats=auto (and model.in_chans) "
            "for other rasters"
        )


def as_rgb8(image: np.ndarray, path: str | Path) -> np.ndarray:
    """An 8-bit grey / grey+alpha / RGB / RGBA image ``[H, W, C]`` as RGB ``[H, W, 3]``, as
    PIL's ``convert("RGB")`` makes it (the ImageNet-normalised inputs of ``band_stats:
    imagenet``); other rasters are refused by :func:`check_rgb8`."""
    check_rgb8(path, image.shape[-1], image.dtype)
    return np.repeat(image[:, :, :1], 3, axis=-1) if image.shape[-1] <= 2 else image[:, :, :3]


# --------------------------------------------------------------------------- targets


def read_target(path: str | Path) -> np.ndarray:
    """A target raster as float32 ``[H, W]`` (a one-band ``.npy`` or ``.tif``, ...).

    A raster with more than one band is a DatasetError naming the file.
    """
    return _one_band(read_raster(path, "target"), path)


def _one_band(array: np.ndarray, path: str | Path) -> np.ndarray:
    if array.shape[-1] != 1:
        raise DatasetError(
            f"target {path} must be a numeric [H, W] raster (one band), "
            f"got {array.dtype} with {array.shape[-1]} bands"
        )
    return array[:, :, 0].astype(np.float32, copy=False)


def read_target_window(path: str | Path, top: int, left: int, height: int, width: int):
    """:func:`read_target` of a window (see :func:`read_window`): float32 ``[h, w]``."""
    return _one_band(read_window(path, top, left, height, width, "target"), path)


def valid_target(target: np.ndarray, nodata: float | None) -> np.ndarray:
    """Where a target is known: finite and, when ``nodata`` is set, not equal to it."""
    valid = np.isfinite(target)
    if nodata is not None:
        valid &= target != np.float32(nodata)
    return valid
