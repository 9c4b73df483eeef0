"""Per-band normalisation statistics of a dense raster folder, computed once and saved with it.

With ``data.band_stats: auto`` the folder's images are normalised band by band with the mean
and standard deviation of the *train* split's valid pixels, in the rasters' own units (uint16
counts, reflectances, ...). Every split uses the same numbers, so val and test see the inputs
the model was trained on.

Computing them reads every train raster once, so the result is saved as ``band_stats.json`` in
the data root (written atomically: a temporary file, then a rename) together with a hash of the
train file list (names, sizes, modification times) and the nodata value. A later run whose hash
matches reuses the file; adding, removing or rewriting a train file recomputes it. A read-only
root only loses the cache (a warning), not the statistics. Without a train split (a test folder
shipped with its ``band_stats.json``) the saved statistics are used as they are.

A pixel is *valid* when its target is known (finite, not ``data.nodata``) and every band of the
image is finite: the pixels the loss sees. The sums are streamed over files and row blocks in
float64 and merged with Chan et al.'s pairwise update, so a large raster neither overflows nor
loses precision. A band with no spread gets std 1 (it is then only centred).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from attnkit.data.coco import DatasetError
from attnkit.data.rasters import read_raster, read_target, valid_target

__all__ = ["BAND_STATS_FILE", "BandStats", "band_stats_for", "compute_band_stats", "files_hash"]

BAND_STATS_FILE = "band_stats.json"
FORMAT = 1  # bump when the meaning of the saved numbers changes
BLOCK_PIXELS = 1 << 20  # pixels per streamed block of a raster

Pairs = Sequence[tuple[Path, Path]]
"""``(image, target)`` file pairs of one split."""


@dataclass(frozen=True)
class BandStats:
    """Mean and standard deviation per band (raster units) over ``count`` valid pixels."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    count: int


def files_hash(pairs: Pairs, root: Path, nodata: float | None) -> str:
    """A hash of the files' names (relative to ``root``), sizes and mtimes, and ``nodata``."""
    entries = []
    for image, target in pairs:
        for path in (image, target):
            stat = path.stat()
            entries.append([Path(os.path.relpath(path, root)).as_posix(), stat.st_size])
            entries[-1].append(stat.st_mtime_ns)
    text = json.dumps({"format": FORMAT, "nodata": nodata, "files": entries}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _merge(a: tuple, b: tuple) -> tuple:
    """Chan et al.'s merge of two ``(count, mean [C], M2 [C])`` summaries."""
    (na, ma, m2a), (nb, mb, m2b) = a, b
    if nb == 0:
        return a
    if na == 0:
        return b
    n = na + nb
    delta = mb - ma
    return n, ma + delta * (nb / n), m2a + m2b + delta**2 * (na * nb / n)


def compute_band_stats(pairs: Pairs, nodata: float | None) -> BandStats:
    """Mean / std per band over the valid pixels of every ``(image, target)`` pair."""
    total, bands = None, None
    for image_path, target_path in pairs:
        image = read_raster(image_path, "image")  # [H, W, C], its own dtype
        valid = valid_target(read_target(target_path), nodata)  # [H, W] bool
        if bands is None:
            bands = image.shape[-1]
            total = (0, np.zeros(bands), np.zeros(bands))
        elif image.shape[-1] != bands:
            raise DatasetError(
                f"image {image_path} has {image.shape[-1]} bands but the split's first image "
                f"has {bands}: every image of a folder needs the same bands"
            )
        if valid.shape != image.shape[:2]:
            raise DatasetError(
                f"size mismatch: image {image_path} is {image.shape[0]}x{image.shape[1]} (HxW) "
                f"but target {target_path} is {valid.shape[0]}x{valid.shape[1]}"
            )
        rows = max(1, BLOCK_PIXELS // image.shape[1])
        for top in range(0, image.shape[0], rows):
            block = image[top : top + rows].astype(np.float64)  # [r, W, C]
            keep = valid[top : top + rows] & np.isfinite(block).all(axis=-1)  # [r, W]
            pixels = block[keep]  # [n, C]
            if len(pixels):
                mean = pixels.mean(axis=0)
                total = _merge(total, (len(pixels), mean, ((pixels - mean) ** 2).sum(axis=0)))
    if total is None or total[0] == 0:
        where = pairs[0][0].parent.parent if pairs else "the train split"
        raise DatasetError(
            f"{where}: no valid pixels to compute band statistics from (every target pixel is "
            "nodata or every image pixel non-finite); check data.nodata"
        )
    count, mean, m2 = total
    std = np.sqrt(m2 / count)
    std = np.where(np.isfinite(std) & (std > 0), std, 1.0)
    return BandStats(tuple(map(float, mean)), tuple(map(float, std)), int(count))


def _load(path: Path, digest: str | None) -> BandStats | None:
    """The statistics saved at ``path`` if they belong to ``digest`` (any, for None); else None."""
    try:
        saved = json.loads(path.read_text())
        if saved.get("format") != FORMAT or digest not in (None, saved.get("files_hash")):
            return None
        return BandStats(tuple(saved["mean"]), tuple(saved["std"]), int(saved["count"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # missing or damaged: computed again


def _save(path: Path, stats: BandStats, digest: str, nodata: float | None) -> None:
    """Write ``stats`` to ``path`` atomically; a folder that cannot be written only warns."""
    record = {
        "format": FORMAT,
        "files_hash": digest,
        "nodata": nodata,
        "bands": len(stats.mean),
        "count": stats.count,
        "mean": list(stats.mean),
        "std": list(stats.std),
        "about": "per-band mean/std of the train split's valid pixels (attnkit, data.band_stats)",
    }
    tmp = None
    try:
        with tempfile.NamedTemporaryFile(
            "w", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
        ) as f:
            tmp = f.name
            json.dump(record, f, indent=1)
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        warnings.warn(
            f"cannot save band statistics to {path} ({exc}); they are recomputed next time",
            stacklevel=3,
        )


def band_stats_for(
    root: str | Path, train_pairs: Pairs | None, nodata: float | None
) -> BandStats | None:
    """The band statistics of ``root``'s train split: from ``root/band_stats.json`` when it is
    current, else computed from ``train_pairs`` and saved there. Without ``train_pairs`` (no
    train split at hand, e.g. a test folder shipped with its statistics) the saved file is
    taken as it is; None when there is none."""
    root = Path(root)
    path = root / BAND_STATS_FILE
    if train_pairs is None:
        return _load(path, None)
    digest = files_hash(train_pairs, root, nodata)
    stats = _load(path, digest)
    if stats is None:
        stats = compute_band_stats(train_pairs, nodata)
        _save(path, stats, digest, nodata)
    return stats
