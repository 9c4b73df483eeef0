"""The embedded synthetic data: deterministic, valid COCO, every size bucket, boxes inside."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from attnkit.data.coco import load_coco_quietly
from attnkit.data.stats import annotation_table, size_bucket
from attnkit.data.synthetic import CATEGORIES, ensure_shapes_dataset, make_shapes_coco


def digest_tree(root):
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        make_shapes_coco(tmp_path / name, 6, seed=seed, split="val")
    assert digest_tree(tmp_path / "a") == digest_tree(tmp_path / "b")
    assert digest_tree(tmp_path / "a") != digest_tree(tmp_path / "c")


def test_annotations_are_valid_coco_inside_images_and_span_buckets(tmp_path):
    ann_path = make_shapes_coco(tmp_path, 60, seed=0, split="val")
    coco = load_coco_quietly(ann_path)  # pycocotools loads it
    data = json.loads(ann_path.read_text())
    assert {c["name"] for c in data["categories"]} == {c["name"] for c in CATEGORIES}
    assert len(data["categories"]) >= 4
    sizes = {(i["width"], i["height"]) for i in data["images"]}
    assert all(160 <= w <= 320 and 160 <= h <= 320 for w, h in sizes)
    assert sum(w != h for w, h in sizes) >= 0.9 * len(sizes)  # mostly non-square
    images = {i["id"]: i for i in data["images"]}
    for ann in data["annotations"]:
        x, y, w, h = ann["bbox"]
        img = images[ann["image_id"]]
        assert w > 0 and h > 0 and x >= 0 and y >= 0
        assert x + w <= img["width"] + 1e-6 and y + h <= img["height"] + 1e-6
        assert 0 < ann["area"] <= w * h + 1e-3  # filled polygon area lies within its box
        assert ann["iscrowd"] == 0
        mask = coco.annToMask(ann)  # the segmentation polygon rasterises inside its box
        ys, xs = np.nonzero(mask)
        assert xs.min() >= int(x) - 1 and xs.max() <= x + w + 1
    table = annotation_table(coco)
    assert set(table["bucket"]) == {"small", "medium", "large"}
    counts = np.bincount([a["image_id"] for a in data["annotations"]], minlength=len(images) + 1)[
        1:
    ]
    assert counts.max() <= 8 and counts.min() == 0  # 0-8 objects, some images empty
    assert len(set(table["category"])) == len(CATEGORIES)


def test_images_match_their_annotations(tmp_path):
    make_shapes_coco(tmp_path, 4, seed=1, split="train")
    data = json.loads((tmp_path / "annotations" / "instances_train2017.json").read_text())
    for info in data["images"]:
        with Image.open(tmp_path / "train2017" / info["file_name"]) as img:
            assert img.size == (info["width"], info["height"]) and img.mode == "RGB"


def test_size_bucket_boundaries():
    assert size_bucket(32**2 - 1) == "small"
    assert size_bucket(32**2) == "medium"
    assert size_bucket(96**2 - 1) == "medium"
    assert size_bucket(96**2) == "large"


def test_cache_is_made_once_and_reused(tmp_path):
    root = ensure_shapes_dataset(5, 3, seed=7, cache_dir=tmp_path, progress=False)
    stamp = (root / "annotations" / "instances_val2017.json").stat().st_mtime_ns
    again = ensure_shapes_dataset(5, 3, seed=7, cache_dir=tmp_path, progress=False)
    assert again == root
    assert (root / "annotations" / "instances_val2017.json").stat().st_mtime_ns == stamp
    assert len(list((root / "train2017").glob("*.jpg"))) == 5
    assert len(list((root / "val2017").glob("*.jpg"))) == 3
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]  # no half-built leftovers
    other = ensure_shapes_dataset(5, 3, seed=8, cache_dir=tmp_path, progress=False)
    assert other != root


def test_only_the_split_asked_for_is_made(tmp_path):
    """A notebook that shows validation images never waits for the training split."""
    from attnkit.config import load_config
    from attnkit.data import build_dataset

    root = ensure_shapes_dataset(6, 3, seed=7, cache_dir=tmp_path, splits=("val",), progress=False)
    assert (root / "annotations" / "instances_val2017.json").is_file()
    assert not (root / "train2017").exists()
    val = (root / "annotations" / "instances_val2017.json").read_text()
    again = ensure_shapes_dataset(6, 3, seed=7, cache_dir=tmp_path, progress=False)
    assert again == root and len(list((root / "train2017").iterdir())) == 6
    assert (root / "annotations" / "instances_val2017.json").read_text() == val
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]
    cfg = load_config(None, {"data.num_train": 40, "data.num_val": 2, "data.seed": 5})
    assert len(build_dataset(cfg.data, "val")) == 2
    made = [p for p in Path(os.environ["ATTNKIT_CACHE"]).glob("shapes_40_2_s5_*")]
    assert made and not (made[0] / "train2017").exists()
