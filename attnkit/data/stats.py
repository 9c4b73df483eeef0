"""Tables of a COCO-format dataset's annotations, for plots and sanity checks."""

from __future__ import annotations

import pandas as pd

SMALL_AREA = 32**2
MEDIUM_AREA = 96**2
SIZE_BUCKETS = ("small", "medium", "large")


def size_bucket(area: float) -> str:
    """COCO's size bucket of an object area in pixels (small < 32^2 <= medium < 96^2 <= large)."""
    if area < SMALL_AREA:
        return "small"
    return "medium" if area < MEDIUM_AREA else "large"


def annotation_table(coco) -> pd.DataFrame:
    """One row per annotation of a pycocotools ``COCO``: image, class, box, area, size bucket."""
    names = {c["id"]: c["name"] for c in coco.dataset.get("categories", [])}
    rows = [
        {
            "image_id": a["image_id"],
            "category": names.get(a["category_id"], str(a["category_id"])),
            "x": a["bbox"][0],
            "y": a["bbox"][1],
            "w": a["bbox"][2],
            "h": a["bbox"][3],
            "area": a.get("area", a["bbox"][2] * a["bbox"][3]),
            "bucket": size_bucket(a.get("area", a["bbox"][2] * a["bbox"][3])),
        }
        for a in coco.dataset.get("annotations", [])
    ]
    columns = ["image_id", "category", "x", "y", "w", "h", "area", "bucket"]
    return pd.DataFrame(rows, columns=columns)


def image_table(coco) -> pd.DataFrame:
    """One row per image: id, file name, width, height and number of objects."""
    counts = {}
    for a in coco.dataset.get("annotations", []):
        counts[a["image_id"]] = counts.get(a["image_id"], 0) + 1
    rows = [
        {
            "image_id": i["id"],
            "file_name": i["file_name"],
            "width": i["width"],
            "height": i["height"],
            "objects": counts.get(i["id"], 0),
        }
        for i in coco.dataset.get("images", [])
    ]
    return pd.DataFrame(rows, columns=["image_id", "file_name", "width", "height", "objects"])
