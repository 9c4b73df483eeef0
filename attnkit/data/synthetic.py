"""The embedded default data: a synthetic COCO-format detection set of coloured shapes.

Nothing is downloaded. Each image has a textured or noisy background of its own size (about
160-320 px a side, rarely square) and 0-8 shapes of five classes, drawn filled or outlined in
varied colours, some overlapping. Object sizes are drawn log-uniformly so COCO's small
(< 32^2 px), medium and large buckets all occur. Shapes are polygons, so every annotation has an
exact ``segmentation``, ``area`` (the filled polygon's area, as COCO defines it) and ``bbox``
(xywh, always inside the image).

The same arguments give the same bytes: all randomness comes from one seeded NumPy generator,
and JPEG encoding with fixed settings is deterministic.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CATEGORIES = [
    {"id": 1, "name": "circle", "supercategory": "shape"},
    {"id": 2, "name": "square", "supercategory": "shape"},
    {"id": 3, "name": "triangle", "supercategory": "shape"},
    {"id": 4, "name": "star", "supercategory": "shape"},
    {"id": 5, "name": "hexagon", "supercategory": "shape"},
]
GENERATOR_VERSION = 1  # bump when the drawing changes, so caches are remade
JPEG_QUALITY = 92


@dataclass(frozen=True)
class ShapesSpec:
    """The knobs of the generator (all sizes in pixels)."""

    min_side: int = 160
    max_side: int = 320
    max_objects: int = 8
    min_object: float = 18.0  # smallest object extent (diameter-like)
    max_object_frac: float = 0.9  # largest extent as a fraction of the shorter image side
    max_overlap: float = 0.4  # intersection / smaller box: overlaps, but none hidden


# --------------------------------------------------------------------------- geometry


def _regular_polygon(n: int, radius: float, rotation: float) -> np.ndarray:
    angles = rotation + 2 * math.pi * np.arange(n) / n
    return np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1)  # [n, 2]


def _shape_polygon(category: int, radius: float, rotation: float) -> np.ndarray:
    """Vertices ``[n, 2]`` of a shape centred at the origin, extent about ``2 * radius``."""
    if category == 1:  # circle
        return _regular_polygon(48, radius, 0.0)
    if category == 2:  # square
        return _regular_polygon(4, radius, rotation)
    if category == 3:  # triangle
        return _regular_polygon(3, radius, rotation)
    if category == 4:  # five-pointed star
        outer = _regular_polygon(5, radius, rotation)
        inner = _regular_polygon(5, radius * 0.45, rotation + math.pi / 5)
        return np.stack([outer, inner], axis=1).reshape(10, 2)
    if category == 5:  # hexagon
        return _regular_polygon(6, radius, rotation)
    raise ValueError(f"unknown shape category {category}")


def _polygon_area(poly: np.ndarray) -> float:
    x, y = poly[:, 0], poly[:, 1]
    return float(0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _overlap(a: tuple, b: tuple) -> float:
    """Intersection over the smaller box's area: 1 when one box lies inside the other."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return ix * iy / smaller if smaller > 0 else 0.0


# --------------------------------------------------------------------------- drawing


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A uint8 ``[h, w, 3]`` background: gradient, stripes or checks, plus pixel noise."""
    base = rng.uniform(40, 215, size=3)
    tint = rng.uniform(-60, 60, size=3)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    kind = rng.integers(3)
    if kind == 0:  # linear gradient in a random direction
        theta = rng.uniform(0, 2 * math.pi)
        t = (xx * math.cos(theta) + yy * math.sin(theta)) / max(h, w)
    elif kind == 1:  # soft stripes
        period = rng.uniform(8, 40)
        theta = rng.uniform(0, math.pi)
        t = 0.5 + 0.5 * np.sin(2 * math.pi * (xx * math.cos(theta) + yy * math.sin(theta)) / period)
    else:  # checks
        cell = int(rng.integers(10, 40))
        t = ((xx // cell + yy // cell) % 2) * 0.6
    img = base[None, None, :] + t[..., None] * tint[None, None, :]
    img += rng.normal(0, rng.uniform(4, 18), size=(h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _contrasting_colour(rng: np.random.Generator, background: np.ndarray) -> tuple:
    """A random colour at least a little away from the local background's mean."""
    mean = background.reshape(-1, 3).mean(axis=0)
    for _ in range(20):
        colour = rng.integers(0, 256, size=3)
        if np.abs(colour - mean).sum() > 150:
            break
    return tuple(int(c) for c in colour)


def _make_image(rng: np.random.Generator, image_id: int, spec: ShapesSpec):
    h = int(rng.integers(spec.min_side, spec.max_side + 1))
    w = int(rng.integers(spec.min_side, spec.max_side + 1))
    pixels = _background(rng, h, w)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    # 0 objects in about 6% of the images; otherwise 1..max_objects, fewer more likely.
    weights = np.array([0.5] + [1.0 / (1 + 0.25 * k) for k in range(1, spec.max_objects + 1)])
    num = int(rng.choice(spec.max_objects + 1, p=weights / weights.sum()))
    max_extent = spec.max_object_frac * min(h, w)
    annotations, boxes = [], []
    for _ in range(num):
        for _attempt in range(10):
            category = int(rng.integers(1, len(CATEGORIES) + 1))
            extent = math.exp(rng.uniform(math.log(spec.min_object), math.log(max_extent)))
            poly = _shape_polygon(category, extent / 2, rng.uniform(0, 2 * math.pi))
            lo, hi = poly.min(axis=0), poly.max(axis=0)
            cx = rng.uniform(-lo[0], w - hi[0])
            cy = rng.uniform(-lo[1], h - hi[1])
            poly = poly + np.array([cx, cy])
            box = (*poly.min(axis=0), *poly.max(axis=0))  # x0, y0, x1, y1
            if all(_overlap(box, other) <= spec.max_overlap for other in boxes):
                break
        else:
            continue
        boxes.append(box)
        x0, y0, x1, y1 = (float(v) for v in box)
        x0, y0 = max(0.0, x0), max(0.0, y0)
        x1, y1 = min(float(w), x1), min(float(h), y1)
        colour = _contrasting_colour(rng, pixels[int(y0) : int(y1) + 1, int(x0) : int(x1) + 1])
        points = [tuple(p) for p in poly.tolist()]
        if rng.uniform() < 0.6:
            draw.polygon(points, fill=colour)
        else:
            width = max(1, int(round(extent / 12)))
            draw.line([*points, points[0]], fill=colour, width=width, joint="curve")
        annotations.append(
            {
                "image_id": image_id,
                "category_id": category,
                "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                "area": round(_polygon_area(poly), 2),
                "segmentation": [[round(v, 2) for v in poly.reshape(-1).tolist()]],
                "iscrowd": 0,
            }
        )
    return image, annotations


# --------------------------------------------------------------------------- public API


def make_shapes_coco(
    out_dir: str | Path,
    num_images: int,
    seed: int,
    split: str = "val",
    spec: ShapesSpec | None = None,
    progress: bool = False,
) -> Path:
    """Write ``num_images`` synthetic images and their COCO annotations; returns the JSON path.

    Layout (that of COCO 2017, so the same loader reads both)::

        out_dir/{split}2017/000000000001.jpg ...
        out_dir/annotations/instances_{split}2017.json

    ``num_images`` must be >= 1: an empty split is refused when a dataset opens it, so it is
    not made either.
    """
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    spec = spec or ShapesSpec()
    out_dir = Path(out_dir)
    image_dir = out_dir / f"{split}2017"
    ann_path = out_dir / "annotations" / f"instances_{split}2017.json"
    image_dir.mkdir(parents=True, exist_ok=True)
    ann_path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    ids = range(1, num_images + 1)
    if progress:
        from tqdm.auto import tqdm

        ids = tqdm(ids, desc=f"shapes {split}", unit="img")
    for image_id in ids:
        image, anns = _make_image(rng, image_id, spec)
        file_name = f"{image_id:012d}.jpg"
        image.save(image_dir / file_name, format="JPEG", quality=JPEG_QUALITY, optimize=False)
        images.append(
            {"id": image_id, "file_name": file_name, "width": image.width, "height": image.height}
        )
        for ann in anns:
            ann["id"] = len(annotations) + 1
            annotations.append(ann)
    coco = {
        "info": {
            "description": "attnkit synthetic shapes",
            "version": f"{GENERATOR_VERSION}",
            "seed": seed,
        },
        "images": images,
        "annotations": annotations,
        "categories": CATEGORIES,
    }
    ann_path.write_text(json.dumps(coco, indent=None, separators=(",", ":")))
    return ann_path


def default_cache_dir() -> Path:
    """``$ATTNKIT_CACHE`` if set, else ``~/.cache/attnkit``."""
    return Path(os.environ.get("ATTNKIT_CACHE", Path.home() / ".cache" / "attnkit"))


def ensure_shapes_dataset(
    num_train: int = 512,
    num_val: int = 128,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    splits: tuple[str, ...] = ("train", "val"),
) -> Path:
    """The root of a synthetic train + val set with these parameters, made once and reused.

    Only ``splits`` are made now (a notebook that shows validation images never waits for the
    training split); a later call adds the others into the same root. The folder name hashes the
    parameters and the generator version. Each split is built in a temporary folder and moved
    into place, its annotation file last, so an interrupted build never leaves a half split and
    concurrent callers (test workers, DDP ranks) agree on one copy.
    """
    key = json.dumps([GENERATOR_VERSION, num_train, num_val, seed], separators=(",", ":"))
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root = cache_dir / f"shapes_{num_train}_{num_val}_s{seed}_{digest}"
    plan = {"train": (num_train, seed), "val": (num_val, seed + 10_000)}
    for split in splits:
        ann = root / "annotations" / f"instances_{split}2017.json"
        if not ann.is_file():
            _make_split_into(root, split, *plan[split], progress=progress)
    return root


def _make_split_into(root: Path, split: str, num_images: int, seed: int, progress: bool) -> None:
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=root.name + f".{split}.tmp", dir=root.parent))
    try:
        make_shapes_coco(tmp, num_images, seed=seed, split=split, progress=progress)
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        images = root / f"{split}2017"
        if images.exists():  # a build that was interrupted before its annotation file
            shutil.rmtree(images, ignore_errors=True)
        try:
            (tmp / f"{split}2017").rename(images)
            ann = f"instances_{split}2017.json"
            (tmp / "annotations" / ann).rename(root / "annotations" / ann)
        except OSError:  # another process finished first: use its copy
            if not (root / "annotations" / f"instances_{split}2017.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
