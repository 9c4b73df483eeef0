"""The embedded default dense-regression data: synthetic aerial images and their height maps.

Nothing is downloaded. Each sample is an RGB "aerial" image and a float32 height map in metres
of the same size: gently sloping ground, a few rectangular buildings (axis-aligned or rotated,
3-40 m, flat or gabled roofs) and round trees (smooth bumps of 2-15 m). Roofs, ground and
vegetation get per-object random colours, so colour alone says little about height; what makes
height learnable from appearance is the lighting: a hillshade term from the height gradient
(bright / dark walls and tree flanks) and cast shadows whose length grows with the height of
what casts them. Pixel noise is added last.

About 5% of each map is nodata (NaN): an elliptic blob or a full-length strip, as a lidar gap or
a swath edge would leave. The image is left intact there; only the target is unknown.

The same scenes serve segmentation: :func:`make_scenes` also returns what covers each pixel
(:data:`SCENE_CLASSES`: 0 ground, 1 building, 2 tree, :data:`NODATA_LABEL` where the height is
nodata). The class maps are read off the drawing and draw no random numbers of their own, so
images and heights are the same with or without them.

Rendering is vectorised over chunks of images in float32 (1000 maps of 64x64 take about two
seconds on one core). All randomness comes from one seeded NumPy generator: the same seed and
size give bit-identical arrays.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from attnkit.data.coco import DatasetError
from attnkit.data.synthetic import default_cache_dir

# Per-channel mean / std of the images scaled to [0, 1] (measured on 2000 images of 64x64,
# seed 0; a test checks them against the data).
HEIGHTMAP_MEAN = (0.4691, 0.4505, 0.3464)
HEIGHTMAP_STD = (0.1588, 0.1441, 0.1348)
GENERATOR_VERSION = 2  # bump when the drawing changes, so caches are remade (2: class maps)
VAL_STREAM = 0x4D5  # second seed word of the validation stream: (seed, VAL_STREAM)
NODATA_FRACTION = 0.05  # target share of nodata pixels per image (drawn in 4-6%)
SCENE_CLASSES = ("ground", "building", "tree")  # class ids 0, 1, 2 of the class maps
NODATA_LABEL = 255  # class-map value where the height map is nodata
# Pixels rendered at once (part of the generator: changing it changes the data).
_CHUNK_PIXELS = 1 << 20
_SHADOW_STEPS = 12  # longest cast shadow, pixels
_REFERENCE_SIDE = 64.0  # object sizes and counts are drawn for 64x64 and scale with the image


def _uniform(rng: np.random.Generator, low, high, size) -> np.ndarray:
    """Uniform samples as float32 (rendering in float32 is about twice as fast)."""
    return rng.uniform(low, high, size=size).astype(np.float32)


def _per_image(x: np.ndarray) -> np.ndarray:
    """``[n]`` or ``[n, k]`` -> broadcastable against ``[n, H, W]`` / ``[n, H, W, k]``."""
    return x[:, None, None] if x.ndim == 1 else x[:, None, None, :]


def _frame(rng, n, yy, xx, scale, half_lo, half_hi):
    """Random object frames: centres anywhere in the image, half-sizes scaled, angle.

    Returns the object coordinates ``u, v`` ``[n, H, W]`` (pixels along / across the object)
    and the half-sizes ``a, b`` ``[n]``.
    """
    h, w = yy.shape
    cx, cy = _uniform(rng, 0, w, n), _uniform(rng, 0, h, n)
    a = _uniform(rng, half_lo, half_hi, n) * scale
    b = _uniform(rng, half_lo, half_hi, n) * scale
    # Half of the objects are axis-aligned, the others rotated at random.
    angle = _uniform(rng, 0, math.pi, n) * (rng.random(n) < 0.5)
    cos, sin = _per_image(np.cos(angle)), _per_image(np.sin(angle))
    dx, dy = xx - _per_image(cx), yy - _per_image(cy)  # [n, H, W]
    return cos * dx + sin * dy, -sin * dx + cos * dy, a, b


def _surface(rng, n, yy, xx):
    """Heights in metres ``[n, H, W]`` and what covers each pixel.

    Returns ``(height, owner, palette, tint, classes)``: ``owner`` ``[n, H, W]`` indexes the
    colours ``palette`` ``[n, 1 + objects, 3]`` (0 is the ground, filled in by the caller),
    ``tint`` ``[n, H, W]`` darkens tree crowns towards their rim and ``classes`` ``[n, H, W]``
    uint8 says which kind of thing the owner is (an index into :data:`SCENE_CLASSES`).
    """
    h, w = yy.shape
    scale = math.sqrt(h * w) / _REFERENCE_SIDE
    theta = _uniform(rng, 0, 2 * math.pi, n)
    slope = _uniform(rng, 0, 0.04, n)  # m per pixel
    height = _per_image(_uniform(rng, 2, 6, n)) + _per_image(slope) * (
        _per_image(np.cos(theta)) * (xx - w / 2) + _per_image(np.sin(theta)) * (yy - h / 2)
    )  # [n, H, W] the ground
    above = np.zeros((n, h, w), np.float32)  # height above the ground
    owner = np.zeros((n, h, w), np.int64)
    tint = np.ones((n, h, w), np.float32)
    buildings, trees = max(1, round(6 * scale * scale)), max(1, round(8 * scale * scale))
    palette = np.zeros((n, 1 + buildings + trees, 3), np.float32)

    # Buildings, painted in order (a later one covers an earlier one).
    count = rng.integers(max(1, buildings // 3), buildings + 1, n)
    for k in range(buildings):
        u, v, a, b = _frame(rng, n, yy, xx, scale, 2.5, 9.0)
        roof = _per_image(_uniform(rng, 3, 40, n))
        ridge = _uniform(rng, 0, 3, n) * (rng.random(n) < 0.4)  # gabled roofs: ridge along u
        grey = _uniform(rng, 50, 220, (n, 1))
        palette[:, 1 + k] = np.clip(grey + _uniform(rng, -45, 45, (n, 3)), 0, 255)
        v = np.abs(v) / _per_image(b)  # [n, H, W] 0 on the ridge, 1 at the eaves
        inside = (np.abs(u) < _per_image(a)) & (v < 1) & _per_image(k < count)
        np.copyto(above, roof + _per_image(ridge) * (1 - v), where=inside)
        owner[inside] = 1 + k

    # Trees: smooth bumps that show where they rise above what is already there.
    count = rng.integers(max(1, trees // 3), trees + 1, n)
    for k in range(trees):
        u, v, radius, _ = _frame(rng, n, yy, xx, scale, 1.8, 5.0)
        crown = _per_image(_uniform(rng, 2, 15, n))
        palette[:, 1 + buildings + k] = np.stack(
            [_uniform(rng, 20, 80, n), _uniform(rng, 70, 150, n), _uniform(rng, 20, 70, n)], 1
        )
        dist = np.hypot(u, v) / _per_image(radius)  # [n, H, W], 1 at the crown's edge
        bump = crown * np.square(np.cos(0.5 * math.pi * np.minimum(dist, 1.0)))
        wins = (bump > above) & (dist < 1.0) & _per_image(k < count)
        np.copyto(above, bump, where=wins)
        np.copyto(tint, 0.7 + 0.3 * bump / crown, where=wins)
        owner[wins] = 1 + buildings + k
    # Owners 1..buildings are buildings, the ones after them trees.
    classes = (owner > 0).astype(np.uint8) + (owner > buildings)  # [n, H, W] 0 / 1 / 2
    return height + above, owner, palette, tint, classes


def _lighting(rng, height: np.ndarray, yy, xx) -> np.ndarray:
    """Brightness factors ``[n, H, W]``: hillshade from the gradient times cast shadows."""
    n, h, w = height.shape
    azimuth = _uniform(rng, 0, 2 * math.pi, n)
    sx, sy = np.cos(azimuth), np.sin(azimuth)  # [n] unit vector towards the sun, pixels
    elevation = _uniform(rng, math.radians(35), math.radians(65), n)
    gy, gx = np.gradient(height, axis=(1, 2))  # [n, H, W] m per pixel
    # Lambert with normal (-gx, -gy, 1) / |.|, divided by the flat ground's value.
    cos_e, sin_e = _per_image(np.cos(elevation)), _per_image(np.sin(elevation))
    dot = (-gx * _per_image(sx) - gy * _per_image(sy)) * cos_e + sin_e
    shade = np.clip(dot / np.sqrt(1 + gx * gx + gy * gy) / sin_e, 0.3, 1.6)

    # A pixel is in shadow when something towards the sun rises above its line of sight:
    # height(p + t s) > height(p) + t * rise, for a step t of 1.._SHADOW_STEPS pixels.
    rise = _per_image(_uniform(rng, 3.5, 6.0, n))  # m per pixel; 40 m casts 7-11 px
    flat = height.reshape(-1)
    offset = _per_image(np.arange(n) * (h * w))
    shadow = np.zeros((n, h, w), bool)
    for t in range(1, _SHADOW_STEPS + 1):
        qx = np.clip(np.rint(xx + t * _per_image(sx)), 0, w - 1).astype(np.int64)
        qy = np.clip(np.rint(yy + t * _per_image(sy)), 0, h - 1).astype(np.int64)
        shadow |= flat[offset + qy * w + qx] > height + t * rise  # [n, H, W]
    darkness = _per_image(_uniform(rng, 0.4, 0.6, n))
    return shade * np.where(shadow, darkness, 1.0)


def _nodata(rng, n: int, yy, xx) -> np.ndarray:
    """Nodata masks ``[n, H, W]`` (True = unknown), about :data:`NODATA_FRACTION` each."""
    h, w = yy.shape
    frac = _uniform(rng, 0.8, 1.2, n) * NODATA_FRACTION
    # A blob: an ellipse of area frac * H * W, inside the image.
    aspect = _uniform(rng, 0.6, 1.6, n)
    rx = np.minimum(np.sqrt(frac * h * w / math.pi * aspect), w / 2)
    ry = np.minimum(frac * h * w / (math.pi * rx), h / 2)
    cx = rx + _uniform(rng, 0, 1, n) * (w - 2 * rx)
    cy = ry + _uniform(rng, 0, 1, n) * (h - 2 * ry)
    ex, ey = (xx - _per_image(cx)) / _per_image(rx), (yy - _per_image(cy)) / _per_image(ry)
    blob = ex * ex + ey * ey < 1
    # A strip across the image: columns (vertical) or rows, frac of the width or height.
    vertical = _per_image(rng.random(n) < 0.5)
    across = np.where(vertical, xx, yy)  # [n, H, W]
    side = np.where(vertical, w, h)
    width = _per_image(frac) * side
    centre = width / 2 + _per_image(_uniform(rng, 0, 1, n)) * (side - width)
    strip = np.abs(across - centre) < width / 2
    return np.where(_per_image(rng.random(n) < 0.5), blob, strip)


def _render_chunk(rng: np.random.Generator, n: int, h: int, w: int):
    """``n`` images uint8 ``[n, H, W, 3]``, height maps float32 ``[n, H, W]`` (NaN: nodata) and
    class maps uint8 ``[n, H, W]`` (:data:`NODATA_LABEL` where the height is nodata)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5  # pixel centres [H, W]
    height, owner, palette, tint, classes = _surface(rng, n, yy, xx)
    palette[:, 0] = _uniform(rng, [90, 85, 60], [170, 160, 125], (n, 3))  # the ground
    colour = np.take_along_axis(palette, owner.reshape(n, -1, 1), axis=1)  # [n, H * W, 3]
    colour = colour.reshape(n, *yy.shape, 3) * tint[..., None]  # [n, H, W, 3]
    # Soft ground texture: a low-frequency sinusoid of random direction and period.
    phi = _per_image(_uniform(rng, 0, math.pi, n))
    period = _per_image(_uniform(rng, 10, 30, n))
    wave = np.sin(2 * math.pi * (np.cos(phi) * xx + np.sin(phi) * yy) / period)
    wave *= _per_image(_uniform(rng, 0, 12, n)) * (owner == 0)
    colour += wave[..., None]
    image = colour * _lighting(rng, height, yy, xx)[..., None]  # [n, H, W, 3]
    noise = rng.random(size=image.shape, dtype=np.float32) - 0.5  # std 1 / sqrt(12)
    image += noise * (math.sqrt(12) * _per_image(_uniform(rng, 2, 7, n))[..., None])
    nodata = _nodata(rng, n, yy, xx)  # [n, H, W] bool
    height[nodata] = np.nan
    classes[nodata] = NODATA_LABEL
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), height, classes


def _check_size(image_size: Sequence[int]) -> tuple[int, int]:
    size = [int(s) for s in image_size]
    if len(size) != 2 or min(size) < 8:
        raise ValueError(f"image_size must be [H, W] with both >= 8, got {list(image_size)}")
    return size[0], size[1]


def make_scenes(
    num_images: int, seed: int | Sequence[int], image_size: Sequence[int] = (64, 64)
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``num_images`` images uint8 ``[N, H, W, 3]``, height maps float32 ``[N, H, W]`` and
    class maps uint8 ``[N, H, W]``.

    Heights are in metres, NaN where nodata; class ids index :data:`SCENE_CLASSES`, and are
    :data:`NODATA_LABEL` where the height is nodata. ``seed`` is anything
    ``numpy.random.default_rng`` accepts (an int or a sequence of ints); ``image_size`` is
    ``(H, W)``.
    """
    if num_images < 0:
        raise ValueError(f"num_images must be >= 0, got {num_images}")
    h, w = _check_size(image_size)
    rng = np.random.default_rng(seed)
    images = np.empty((num_images, h, w, 3), np.uint8)
    heights = np.empty((num_images, h, w), np.float32)
    labels = np.empty((num_images, h, w), np.uint8)
    chunk = max(1, _CHUNK_PIXELS // (h * w))
    for start in range(0, num_images, chunk):
        part = slice(start, start + min(chunk, num_images - start))
        images[part], heights[part], labels[part] = _render_chunk(rng, part.stop - start, h, w)
    return images, heights, labels


def make_heightmaps(
    num_images: int, seed: int | Sequence[int], image_size: Sequence[int] = (64, 64)
) -> tuple[np.ndarray, np.ndarray]:
    """The images uint8 ``[N, H, W, 3]`` and height maps float32 ``[N, H, W]`` of
    :func:`make_scenes` (the same arguments), without the class maps."""
    images, heights, _ = make_scenes(num_images, seed, image_size)
    return images, heights


def ensure_heightmaps(
    num_train: int = 256,
    num_val: int = 64,
    seed: int = 0,
    image_size: Sequence[int] = (64, 64),
    cache_dir: str | Path | None = None,
) -> Path:
    """One cached ``.npz`` with ``train_images``, ``train_targets``, ``train_labels``,
    ``val_images``, ``val_targets``, ``val_labels`` for these parameters, made once.

    Train is ``make_scenes(num_train, seed)``; val comes from the separate seed stream
    ``(seed, VAL_STREAM)``, so it never repeats training maps. The file name holds the counts,
    seed, size and a hash that includes the generator version; the file is written under a
    temporary name and renamed into place, so concurrent callers agree on one copy and an
    interrupted build leaves nothing half-written.
    """
    h, w = _check_size(image_size)
    key = json.dumps([GENERATOR_VERSION, num_train, num_val, seed, h, w], separators=(",", ":"))
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache_dir / f"heightmaps_{num_train}_{num_val}_s{seed}_{h}x{w}_{digest}.npz"
    if path.is_file():
        return path
    cache_dir.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, count, stream in (("train", num_train, seed), ("val", num_val, (seed, VAL_STREAM))):
        scenes = make_scenes(count, stream, (h, w))
        for kind, array in zip(("images", "targets", "labels"), scenes, strict=True):
            arrays[f"{split}_{kind}"] = array
    fd, tmp = tempfile.mkstemp(prefix=path.stem + ".", suffix=".tmp", dir=cache_dir)
    try:
        with os.fdopen(fd, "wb") as file:
            np.savez(file, **arrays)
        os.replace(tmp, path)  # atomic; a concurrent writer's identical copy is fine too
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


_REMAKE = "delete it and it is made again"


def _read_split(path: Path, split: str, kinds: Sequence[str]) -> list[np.ndarray]:
    """The arrays ``{split}_{kind}`` of a cache file; an unreadable file is a DatasetError."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return [data[f"{split}_{kind}"] for kind in kinds]
    except FileNotFoundError:
        raise DatasetError(f"synthetic height-map file not found: {path}") from None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise DatasetError(
            f"cannot read synthetic height-map file {path} ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())}): {_REMAKE}"
        ) from None


def load_heightmap_split(path: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The images and targets of ``split`` ("train" / "val") from a file of ensure_heightmaps.

    The file is a cache, so a truncated or foreign one is a DatasetError that says to delete
    it (the next run makes it again); so is a split whose images and targets differ in size.
    """
    path = Path(path)
    images, targets = _read_split(path, split, ("images", "targets"))
    shape_ok = images.ndim == 4 and images.shape[-1] == 3 and targets.shape == images.shape[:3]
    if images.dtype != np.uint8 or not shape_ok:
        raise DatasetError(
            f"synthetic height-map file {path}: {split} images {images.dtype} "
            f"{list(images.shape)} and targets {list(targets.shape)} do not match (expected "
            f"uint8 [N, H, W, 3] and [N, H, W]): {_REMAKE}"
        )
    return images, targets


def load_scene_labels(path: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The images and class maps uint8 ``[N, H, W]`` of ``split`` from a file of
    ensure_heightmaps (see :func:`load_heightmap_split`; the same errors)."""
    path = Path(path)
    images, labels = _read_split(path, split, ("images", "labels"))
    shape_ok = images.ndim == 4 and images.shape[-1] == 3 and labels.shape == images.shape[:3]
    if images.dtype != np.uint8 or labels.dtype != np.uint8 or not shape_ok:
        raise DatasetError(
            f"synthetic height-map file {path}: {split} images {images.dtype} "
            f"{list(images.shape)} and labels {labels.dtype} {list(labels.shape)} do not match "
            f"(expected uint8 [N, H, W, 3] and uint8 [N, H, W]): {_REMAKE}"
        )
    return images, labels


def scene_split(data_cfg, split: str) -> tuple[Path, str]:
    """The cached scene file of a synthetic data config (made once) and the stored split that
    ``split`` reads: "train", or "val" for "val" and "test". Shared by the regression and the
    segmentation datasets, which read the same scenes."""
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    path = ensure_heightmaps(
        data_cfg.num_train, data_cfg.num_val, data_cfg.seed, data_cfg.image_size
    )
    return path, "train" if split == "train" else "val"
