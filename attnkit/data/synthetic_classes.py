"""The embedded default classification data: 32x32 RGB images of ten small shapes.

Nothing is downloaded. Each image shows one shape (its class) at a random position, size,
rotation and colour, on a random background (gradient, soft texture, pixel noise), sometimes with
a thin distractor stroke. Colour, position and background carry no class information, so a
linear model on raw pixels stays near chance, while a small CNN or ViT that learns local shape
features separates the classes. Classes that rotation would merge (square / diamond, horizontal /
vertical stripes) rotate only a little; the others rotate freely. Every class is closed under a
horizontal flip, so the standard CIFAR augmentation keeps labels valid.

Shapes are signed-distance functions evaluated on the pixel grid; coverage ``clip(0.5 - d, 0, 1)``
antialiases the edges. Rendering is vectorised over chunks of images (10 000 take about two
seconds on one core). All randomness comes from one seeded NumPy generator: the same seed gives bit-identical
arrays.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from attnkit.data.coco import DatasetError
from attnkit.data.synthetic import default_cache_dir

SYNTH_CLASS_NAMES = [
    "circle",
    "ring",
    "square",
    "diamond",
    "triangle",
    "cross",
    "stripes_h",
    "stripes_v",
    "star",
    "dots",
]
# Per-channel mean / std of the pixels scaled to [0, 1] (measured on 10 000 images, seed 0;
# tests check them against the data).
SYNTH_CLASSES_MEAN = (0.4977, 0.4994, 0.4998)
SYNTH_CLASSES_STD = (0.2393, 0.2378, 0.2381)
GENERATOR_VERSION = 1  # bump when the drawing changes, so caches are remade
IMAGE_SIZE = 32
VAL_STREAM = 0x7A1  # second seed word of the validation stream: (seed, VAL_STREAM)
_CHUNK = 512  # images rendered at once (part of the generator: changing it changes the data)

# Rotation of each class: (base angle, half-width of the uniform jitter), radians; classes not
# listed rotate freely.
_ROTATION: dict[str, tuple[float, float]] = {
    "square": (0.0, math.radians(15)),
    "diamond": (math.pi / 4, math.radians(15)),
    "stripes_h": (0.0, math.radians(20)),
    "stripes_v": (0.0, math.radians(20)),
}


# --------------------------------------------------------------------------- shapes
# Each takes shape-frame coordinates u, v [n, H, W] (pixels, centred, rotated) and the size r
# [n, 1, 1] (pixels, about half the extent) and returns a signed distance [n, H, W] (< 0 inside).


def _box(u, v, a, b):
    return np.maximum(np.abs(u) - a, np.abs(v) - b)


def _circle(u, v, r):
    return np.hypot(u, v) - r


def _ring(u, v, r):
    return np.abs(np.hypot(u, v) - 0.72 * r) - 0.24 * r


def _square(u, v, r):
    return _box(u, v, 0.78 * r, 0.78 * r)


def _triangle(u, v, r):
    # Equilateral, circumradius 1.15 r: the largest of the three edge half-planes.
    d = None
    for k in range(3):
        angle = math.pi / 2 + 2 * math.pi * k / 3
        plane = u * math.cos(angle) + v * math.sin(angle) - 0.575 * r
        d = plane if d is None else np.maximum(d, plane)
    return d


def _cross(u, v, r):
    return np.minimum(_box(u, v, r, 0.3 * r), _box(u, v, 0.3 * r, r))


def _stripes(across, along, r):
    # Three bars of width 2r/5 across ``across``, each 2r long along ``along``.
    unit = 0.4 * r
    centre_dist = np.minimum(np.abs(across), np.abs(np.abs(across) - 2 * unit))
    return np.maximum(centre_dist - unit / 2, np.abs(along) - r)


def _star(u, v, r):
    # Five points: the boundary radius moves linearly between 1.15 r and 0.5 r with the angle.
    theta = np.arctan2(v, u)
    phase = np.abs(((theta * 5 / (2 * math.pi)) % 1.0) - 0.5) * 2  # 1 at a point, 0 between
    return (np.hypot(u, v) - r * (0.5 + 0.65 * phase)) * 0.8


def _dots(u, v, r):
    c = 0.58 * r
    d = None
    for sx, sy in ((-1, -1), (-1, 1), (1, -1), (1, 1)):
        dot = np.hypot(u - sx * c, v - sy * c) - 0.36 * r
        d = dot if d is None else np.minimum(d, dot)
    return d


_SHAPES = {
    "circle": _circle,
    "ring": _ring,
    "square": _square,
    "diamond": _square,  # rotated by 45 degrees through _ROTATION
    "triangle": _triangle,
    "cross": _cross,
    "stripes_h": lambda u, v, r: _stripes(v, u, r),
    "stripes_v": lambda u, v, r: _stripes(u, v, r),
    "star": _star,
    "dots": _dots,
}
assert list(_SHAPES) == SYNTH_CLASS_NAMES


# --------------------------------------------------------------------------- drawing


def _coverage(sdf: np.ndarray) -> np.ndarray:
    """Antialiased coverage in [0, 1] of a signed distance in pixels."""
    return np.clip(0.5 - sdf, 0.0, 1.0)


def _uniform(rng: np.random.Generator, low: float, high: float, size) -> np.ndarray:
    """Uniform samples as float32: rendering in float32 takes about half the time of float64."""
    return rng.uniform(low, high, size=size).astype(np.float32)


def _backgrounds(rng: np.random.Generator, n: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Float ``[n, H, W, 3]`` backgrounds in 0..255: a colour, a gradient and a soft texture."""
    size = yy.shape[0]
    base = _uniform(rng, 30, 225, size=(n, 1, 1, 3))
    tint = _uniform(rng, -70, 70, size=(n, 1, 1, 3))
    theta = _uniform(rng, 0, 2 * math.pi, size=(n, 1, 1))
    gradient = (np.cos(theta) * (xx - size / 2) + np.sin(theta) * (yy - size / 2)) / size
    # A sinusoid texture with a random period (4-12 px), direction and (small) amplitude.
    period = _uniform(rng, 4, 12, size=(n, 1, 1))
    phi = _uniform(rng, 0, math.pi, size=(n, 1, 1))
    shift = _uniform(rng, 0, 2 * math.pi, size=(n, 1, 1))
    wave = np.sin(2 * math.pi * (np.cos(phi) * xx + np.sin(phi) * yy) / period + shift)
    amp = _uniform(rng, 0, 25, size=(n, 1, 1)) * (_uniform(rng, 0, 1, size=(n, 1, 1)) < 0.5)
    return base + gradient[..., None] * tint + (amp * wave)[..., None] * np.sign(tint)  # [n,H,W,3]


def _contrasting_colours(rng: np.random.Generator, background_mean: np.ndarray) -> np.ndarray:
    """Random colours ``[n, 3]``, redrawn until each is clearly away from its background."""
    colours = _uniform(rng, 0, 255, size=background_mean.shape)
    for _ in range(8):
        bad = np.abs(colours - background_mean).sum(axis=1) < 160
        if not bad.any():
            break
        colours[bad] = _uniform(rng, 0, 255, size=(int(bad.sum()), 3))
    return colours


def _render_chunk(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    n, size = len(labels), IMAGE_SIZE
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5  # pixel centres
    image = _backgrounds(rng, n, yy, xx)  # [n, H, W, 3]

    # The shape: size, rotation, position, colour.
    r = _uniform(rng, 5.5, 10.5, size=n)
    angle = _uniform(rng, 0, 2 * math.pi, size=n)
    jitter = _uniform(rng, -1, 1, size=n)
    for k, name in enumerate(SYNTH_CLASS_NAMES):
        if name in _ROTATION:
            base, half_width = _ROTATION[name]
            angle = np.where(labels == k, base + half_width * jitter, angle)
    margin = 1.2 * r + 0.5
    cx = margin + _uniform(rng, 0, 1, size=n) * (size - 2 * margin)
    cy = margin + _uniform(rng, 0, 1, size=n) * (size - 2 * margin)
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    dx, dy = xx - cx[:, None, None], yy - cy[:, None, None]  # [n, H, W]
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy
    sdf = np.empty((n, size, size), dtype=np.float32)
    for k, name in enumerate(SYNTH_CLASS_NAMES):
        sel = labels == k
        if sel.any():
            sdf[sel] = _SHAPES[name](u[sel], v[sel], r[sel, None, None])
    alpha = _coverage(sdf)[..., None]  # [n, H, W, 1]
    colour = _contrasting_colours(rng, image.mean(axis=(1, 2)))[:, None, None, :]
    image += alpha * (colour - image)

    # A distractor in half the images: a thin straight stroke, 4-9 px long, in any colour.
    length = _uniform(rng, 4, 9, size=n)[:, None, None]
    px, py = _uniform(rng, 2, size - 2, size=(2, n))
    beta = _uniform(rng, 0, 2 * math.pi, size=n)
    bx, by = np.cos(beta)[:, None, None], np.sin(beta)[:, None, None]
    ex, ey = xx - px[:, None, None], yy - py[:, None, None]
    along = np.clip(ex * bx + ey * by, 0, length)
    stroke = np.hypot(ex - along * bx, ey - along * by) - 0.55
    show = (_uniform(rng, 0, 1, size=n) < 0.5)[:, None, None, None]
    alpha = _coverage(stroke)[..., None] * show
    stroke_colour = _uniform(rng, 0, 255, size=(n, 1, 1, 3))
    image += alpha * (stroke_colour - image)

    # Pixel noise, uniform (cheaper to draw than Gaussian) with a std of 3-14 grey levels.
    noise = rng.random(size=image.shape, dtype=np.float32) - 0.5  # std 1 / sqrt(12)
    image += noise * (math.sqrt(12) * _uniform(rng, 3, 14, size=(n, 1, 1, 1)))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- public API


def make_synthetic_classes(
    num_images: int, seed: int | Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """``num_images`` images uint8 ``[N, 32, 32, 3]`` and labels int64 ``[N]``.

    Classes are balanced (counts differ by at most one) and shuffled. ``seed`` is anything
    ``numpy.random.default_rng`` accepts as entropy: an int or a sequence of ints.
    """
    if num_images < 0:
        raise ValueError(f"num_images must be >= 0, got {num_images}")
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(num_images) % len(SYNTH_CLASS_NAMES)).astype(np.int64)
    images = np.empty((num_images, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    for start in range(0, num_images, _CHUNK):
        images[start : start + _CHUNK] = _render_chunk(rng, labels[start : start + _CHUNK])
    return images, labels


def load_synthetic_split(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The ``images`` and ``labels`` arrays of a ``train.npz`` / ``val.npz`` written here.

    The file is a cache, so a truncated or foreign one (a killed copy, a full disk) is a
    DatasetError that says to delete its folder, which the next run then makes again.
    """
    path = Path(path)
    remake = f"delete {path.parent} and it is made again"
    try:
        with np.load(path, allow_pickle=False) as data:
            images, labels = data["images"], data["labels"]
    except FileNotFoundError:
        raise DatasetError(f"synthetic classification file not found: {path}") from None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise DatasetError(
            f"cannot read synthetic classification file {path} ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())}): {remake}"
        ) from None
    shape = (len(images), IMAGE_SIZE, IMAGE_SIZE, 3)
    if images.dtype != np.uint8 or images.shape != shape or labels.shape != shape[:1]:
        raise DatasetError(
            f"synthetic classification file {path} holds images {images.dtype} "
            f"{list(images.shape)} and labels {list(labels.shape)}, expected uint8 "
            f"[N, {IMAGE_SIZE}, {IMAGE_SIZE}, 3] and [N]: {remake}"
        )
    return images, labels


def ensure_synthetic_classes(
    num_train: int = 10_000,
    num_val: int = 2_000,
    seed: int = 0,
    cache_dir: str | Path | None = None,
) -> Path:
    """A cache folder holding ``train.npz`` and ``val.npz`` for these parameters, made once.

    Train is ``make_synthetic_classes(num_train, seed)``; val comes from the separate seed
    stream ``(seed, VAL_STREAM)``, so it never repeats the training images of any seed. Like
    ``ensure_shapes_dataset``, the folder name hashes the parameters and the generator version,
    and the files are written in a temporary folder renamed into place, so concurrent callers
    agree on one copy and an interrupted build leaves nothing half-written.
    """
    key = json.dumps([GENERATOR_VERSION, num_train, num_val, seed], separators=(",", ":"))
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root = cache_dir / f"synth_classes_{num_train}_{num_val}_s{seed}_{digest}"
    if (root / "val.npz").is_file():
        return root
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=root.name + ".tmp", dir=cache_dir))
    try:
        for name, count, stream in (
            ("train", num_train, seed),
            ("val", num_val, (seed, VAL_STREAM)),
        ):
            images, labels = make_synthetic_classes(count, stream)
            np.savez(tmp / f"{name}.npz", images=images, labels=labels)
        try:
            tmp.rename(root)
        except OSError:  # another process finished first: use its copy
            if not (root / "val.npz").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root
