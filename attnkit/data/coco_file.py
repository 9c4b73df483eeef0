"""Reading a COCO annotation file, checked before anything uses it.

pycocotools trusts its input: an empty or truncated file is a raw ``JSONDecodeError``, a missing
key a ``KeyError`` deep in ``createIndex`` or ``COCOeval``, and a NaN or string ``bbox`` either a
traceback or, worse, a real-looking box after clipping. :func:`read_coco_file` reads the JSON
itself and checks every entry that training and evaluation read, so each of these is one
:class:`~attnkit.errors.DataError` line that names the file, the entry (image or annotation id)
and what to do. What it accepts is passed on unchanged, except for two documented fill-ins:
a missing ``annotations`` list means "no objects" (as in COCO's test-set image-info files), and
an annotation without ``area`` gets its box's area (what ``COCOeval`` would need and what
pycocotools' ``loadRes`` does for detections).

Degenerate but finite boxes (zero or negative size, outside the image) are *not* errors here:
the dataset clips or drops them and reports how many (see ``attnkit.data.coco``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from attnkit.errors import DataError

__all__ = ["read_coco_file", "short_repr"]

_LAYOUT = "a COCO JSON object with 'images', 'annotations' and 'categories' lists"


def short_repr(value, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, so a message stays one short line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    """A finite int or float (not a bool, a string or NaN / inf, which JSON readers accept)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _load_json(path: Path):
    """The parsed JSON of ``path``, or a DataError for a missing, empty or malformed file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"annotation file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read annotation file {path}: {exc}") from None
    if not text.strip():
        raise DataError(f"annotation file {path} is empty: expected {_LAYOUT}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"annotation file {path} is not valid JSON ({exc.msg} at line {exc.lineno}, "
            f"column {exc.colno}; truncated?): fix it or write it again"
        ) from None


def _entries(data: dict, key: str, path: Path, required: bool) -> list:
    """``data[key]`` as a list of dicts ([] when absent and not ``required``)."""
    if key not in data:
        if required:
            raise DataError(
                f"annotation file {path} has no {key!r} list: expected {_LAYOUT} "
                f"(keys found: {', '.join(map(repr, sorted(data)[:8])) or 'none'})"
            )
        return []
    entries = data[key]
    if not isinstance(entries, list):
        raise DataError(
            f"annotation file {path}: {key!r} is a {type(entries).__name__}, expected a list"
        )
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise DataError(
                f"annotation file {path}: {key}[{index}] is {short_repr(entry)}, "
                "expected a JSON object"
            )
    return entries


def _unique_ids(entries: list[dict], kind: str, path: Path) -> set[int]:
    """The integer ``id`` of every entry; a DataError for a missing, non-integer or repeated id."""
    seen: set[int] = set()
    for index, entry in enumerate(entries):
        value = entry.get("id")
        if not _is_int(value):
            raise DataError(
                f"annotation file {path}: {kind} entry {index} has id {short_repr(value)}, "
                "expected an integer"
            )
        if value in seen:
            raise DataError(
                f"annotation file {path}: {kind} id {value} appears more than once: "
                f"give every {kind} its own id"
            )
        seen.add(value)
    return seen


def _check_images(images: list[dict], path: Path) -> set[int]:
    """The image ids; a DataError for an image without a file name or a positive size."""
    ids = _unique_ids(images, "image", path)
    for image in images:
        name = image.get("file_name")
        if not isinstance(name, str) or not name.strip():
            raise DataError(
                f"annotation file {path}: image {image['id']} has file_name "
                f"{short_repr(name)}, expected a file name"
            )
        for key in ("width", "height"):
            value = image.get(key)
            if not _is_number(value) or value <= 0:
                raise DataError(
                    f"annotation file {path}: image {image['id']} ({name}) has {key} "
                    f"{short_repr(value)}, expected a positive number of pixels"
                )
    return ids


def _plain(ann: dict, image_ids: set[int], category_ids: set[int]) -> bool:
    """A fast test that ``ann`` passes every check of :func:`_explain` (a file of a million
    annotations is then checked in about a second); False sends it to the full check."""
    bbox, area, crowd = ann.get("bbox"), ann.get("area", 0.0), ann.get("iscrowd", 0)
    return (
        type(ann.get("image_id")) is int
        and ann["image_id"] in image_ids
        and type(ann.get("category_id")) is int
        and ann["category_id"] in category_ids
        and type(bbox) is list
        and len(bbox) == 4
        and all(type(v) in (int, float) for v in bbox)
        and math.isfinite(sum(bbox))  # NaN or inf anywhere makes the sum NaN or inf
        and type(crowd) is int
        and crowd in (0, 1)
        and type(area) in (int, float)
        and 0 <= area < math.inf
    )


def _explain(ann: dict, image_ids: set[int], category_ids: set[int], path: Path) -> None:
    """The DataError for the first problem of ``ann``, naming the file and annotation id."""
    where = f"annotation file {path}: annotation {ann['id']}"
    image_id = ann.get("image_id")
    if not _is_int(image_id) or image_id not in image_ids:
        raise DataError(
            f"{where} has image_id {short_repr(image_id)}, which is not the id of any "
            "image in the file: fix the id or remove the annotation"
        )
    where += f" (image {image_id})"
    category = ann.get("category_id")
    if not _is_int(category) or category not in category_ids:
        known = sorted(category_ids)
        listed = f"{known[0]}..{known[-1]}" if known else "none"
        raise DataError(
            f"{where} has category_id {short_repr(category)}, which is not among the file's "
            f"categories (ids {listed}): add it to 'categories' or fix the annotation"
        )
    bbox = ann.get("bbox")
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
        raise DataError(
            f"{where} has bbox {short_repr(bbox)}, expected [x, y, width, height]: four finite "
            "numbers; fix or remove the annotation"
        )
    crowd = ann.get("iscrowd", 0)
    if not _is_int(crowd) or crowd not in (0, 1):
        raise DataError(f"{where} has iscrowd {short_repr(crowd)}, expected 0 or 1")
    area = ann.get("area", 0.0)
    if not _is_number(area) or area < 0:
        raise DataError(
            f"{where} has area {short_repr(area)}, expected a number >= 0 "
            "(or no 'area', to use the box's)"
        )


def _check_annotations(
    annotations: list[dict], image_ids: set[int], category_ids: set[int], path: Path
) -> None:
    """Every annotation usable (see :func:`_explain`); a missing ``area`` becomes the box's."""
    _unique_ids(annotations, "annotation", path)
    for ann in annotations:
        if not _plain(ann, image_ids, category_ids):
            _explain(ann, image_ids, category_ids, path)  # raises, unless only _plain was unsure
        if "area" not in ann:
            ann["area"] = max(float(ann["bbox"][2]), 0.0) * max(float(ann["bbox"][3]), 0.0)


def read_coco_file(path: str | Path) -> dict:
    """The checked contents of a COCO annotation file, ready for ``pycocotools.coco.COCO``.

    Raises a one-line :class:`~attnkit.errors.DataError` naming ``path`` (and the image or
    annotation id) when the file is missing, empty or not JSON; is not an object with an
    ``images`` list (and ``categories``, when there are annotations); or holds an entry that
    training or ``COCOeval`` could not use: an image without a unique integer id, a file name
    or a positive width and height; an annotation without a unique integer id, the id of a
    listed image, a listed ``category_id``, a ``bbox`` of four finite numbers, an ``iscrowd``
    of 0 / 1 or a non-negative ``area``. An empty ``images`` list is accepted here (the dataset
    that opens a split refuses it, since only it knows the split).
    """
    path = Path(path)
    data = _load_json(path)
    if not isinstance(data, dict):
        raise DataError(
            f"annotation file {path} holds a JSON {type(data).__name__}, expected {_LAYOUT}"
        )
    image_ids = _check_images(_entries(data, "images", path, required=True), path)
    annotations = _entries(data, "annotations", path, required=False)
    categories = _entries(data, "categories", path, required=bool(annotations))
    category_ids = _unique_ids(categories, "category", path)
    _check_annotations(annotations, image_ids, category_ids, path)
    data["annotations"], data["categories"] = annotations, categories
    return data
