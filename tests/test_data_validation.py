"""Bad data is one clear DataError line naming the file (and entry), never silently used.

One small valid folder per data kind is written in ``tmp_path`` and then damaged; each test
checks that opening or checking it raises :class:`attnkit.errors.DataError` whose one-line
message names the file and, for COCO annotations, the annotation id.
"""

from __future__ import annotations

import json
import re
import zipfile
from contextlib import contextmanager
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from attnkit.config import load_config
from attnkit.config.schema import DenseDataConfig
from attnkit.data.cifar import write_cifar10_like
from attnkit.data.classification import (
    ArrayClassification,
    ImageFolderClassification,
    build_classification_dataset,
)
from attnkit.data.coco import CocoDetection, DatasetError
from attnkit.data.dense import DenseArrayDataset, build_dense_dataset
from attnkit.data.heightmaps import load_heightmap_split
from attnkit.data.synthetic import make_shapes_coco
from attnkit.data.synthetic_classes import load_synthetic_split
from attnkit.errors import DataError
from attnkit.tasks.classification import ClassificationTask
from attnkit.tasks.dense import DenseRegressionTask
from attnkit.tasks.detection import DetectionTask


@contextmanager
def raises_one_line(match: str):
    """``pytest.raises(DataError, match=...)`` that also asserts the message is one line."""
    with pytest.raises(DataError, match=match) as info:
        yield info
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- COCO detection


@pytest.fixture(scope="module")
def coco_source(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    make_shapes_coco(root, 4, seed=0, split="val")
    return root


@pytest.fixture
def coco(coco_source, tmp_path):
    """A fresh copy of the valid COCO folder: (root, annotation file, its parsed JSON)."""
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / "val2017").symlink_to(coco_source / "val2017")
    ann = root / "annotations" / "instances_val2017.json"
    text = (coco_source / "annotations" / "instances_val2017.json").read_text()
    ann.write_text(text)
    return root, ann, json.loads(text)


def test_valid_coco_folder_opens(coco):
    root, _, data = coco
    assert len(CocoDetection(root, "val")) == len(data["images"]) == 4


@pytest.mark.parametrize(
    "content, match",
    [
        ("", "is empty"),
        ('{"images": [', "is not valid JSON"),
        ("[1, 2]", "holds a JSON list"),
        ('{"annotations": []}', "has no 'images' list"),
        ('{"images": {}}', "'images' is a dict, expected a list"),
    ],
)
def test_unreadable_annotation_file_names_the_file(coco, content, match):
    root, ann, _ = coco
    ann.write_text(content)
    with raises_one_line(f"{re.escape(str(ann))}.*{match}|{match}.*{re.escape(str(ann))}"):
        CocoDetection(root, "val")


@pytest.mark.parametrize(
    "bbox",
    ["oops", [float("nan"), 10, 20, 20], [0, float("inf"), 5, 5], [1, 2, 3], ["1", 2, 3, 4]],
)
def test_bad_bbox_names_file_and_annotation(coco, bbox):
    root, ann, data = coco
    target = data["annotations"][1]
    target["bbox"] = bbox
    ann.write_text(json.dumps(data))  # json writes NaN / Infinity, which json.loads accepts
    pattern = f"{re.escape(str(ann))}: annotation {target['id']} .*bbox"
    with raises_one_line(pattern):
        CocoDetection(root, "val")


def test_degenerate_finite_boxes_are_still_dropped_not_errors(coco):
    root, ann, data = coco
    data["annotations"][0]["bbox"] = [5, 5, 0, 10]
    ann.write_text(json.dumps(data))
    assert CocoDetection(root, "val").report.dropped == 1


def test_annotation_entries_that_pycocotools_would_choke_on(coco):
    root, ann, data = coco
    first = data["annotations"][0]
    for key, value, match in (
        ("image_id", 999, "image_id 999, which is not the id of any image"),
        ("category_id", 77, "category_id 77, which is not among the file's categories"),
        ("id", data["annotations"][1]["id"], "annotation id .* appears more than once"),
        ("area", -3, "area -3"),
    ):
        broken = json.loads(json.dumps(data))
        broken["annotations"][0][key] = value
        ann.write_text(json.dumps(broken))
        with raises_one_line(match):
            CocoDetection(root, "val")
    broken = json.loads(json.dumps(data))
    broken["images"][2]["width"] = "640"
    ann.write_text(json.dumps(broken))
    image = broken["images"][2]
    with raises_one_line(f"image {image['id']} \\({image['file_name']}\\) has width '640'"):
        CocoDetection(root, "val")
    del data["annotations"][0]["area"]  # filled in from the box
    ann.write_text(json.dumps(data))
    coco_index = CocoDetection(root, "val").coco
    assert coco_index.anns[first["id"]]["area"] == first["bbox"][2] * first["bbox"][3]


def test_empty_split_is_refused_when_opening(coco):
    root, ann, data = coco
    data["images"], data["annotations"] = [], []
    ann.write_text(json.dumps(data))
    with raises_one_line(f"{re.escape(str(ann))}: the val split has no images"):
        CocoDetection(root, "val")


def test_missing_image_folder_is_found_when_opening(coco):
    root, _, _ = coco
    (root / "val2017").unlink()
    with raises_one_line(f"image folder not found: {re.escape(str(root / 'val2017'))}"):
        CocoDetection(root, "val")


def test_annotations_missing_means_no_objects(coco):
    root, ann, data = coco
    del data["annotations"]
    ann.write_text(json.dumps(data))
    ds = CocoDetection(root, "val")
    assert ds.report.images_without_objects == len(ds) and ds.category_ids()


def test_make_shapes_coco_refuses_no_images(tmp_path):
    for n in (0, -1):
        with pytest.raises(ValueError, match="num_images must be >= 1"):
            make_shapes_coco(tmp_path, n, seed=0)


def detr_cfg(num_classes: int):
    return load_config(None, {"model.num_classes": num_classes})


def test_category_ids_against_num_classes(coco):
    root, ann, data = coco
    task = DetectionTask()
    shapes = CocoDetection(root, "val")  # categories 1..5
    task.check(detr_cfg(6), shapes)
    with raises_one_line(
        r"category id 5( \(annotation \d+\))? is outside the classes 0..4 .*'no object'"
    ):
        task.check(detr_cfg(5), shapes)  # id == num_classes would train as "no object"
    with raises_one_line(
        r"category ids 4.*, 5.* are outside the classes 0..3 .*at least max_id \+ 1 = 6"
    ):
        task.check(detr_cfg(4), shapes)

    # COCO's non-contiguous ids 1..90 (80 of them): valid with 91, not with 90 or 80.
    gaps = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}
    data["categories"] = [{"id": i, "name": f"c{i}"} for i in range(1, 91) if i not in gaps]
    for i, a in enumerate(data["annotations"]):
        a["category_id"] = (90, 1, 44, 89)[i % 4]
    ann.write_text(json.dumps(data))
    dataset = CocoDetection(root, "val")
    task.check(detr_cfg(91), dataset)
    first = data["annotations"][0]["id"]
    with raises_one_line(
        rf"{re.escape(str(ann))}: category id 90 \(annotation {first}\) is outside the "
        r"classes 0..89 .*"
        r"set model.num_classes to at least max_id \+ 1 = 91"
    ):
        task.check(detr_cfg(90), dataset)
    with raises_one_line(
        r"category ids 80, 81, 82, 84, 85 and 5 more are outside the classes 0..79"
    ):
        task.check(detr_cfg(80), dataset)


def test_negative_category_id_is_refused(coco):
    root, ann, data = coco
    data["categories"].append({"id": -1, "name": "bad"})
    data["annotations"][2]["category_id"] = -1
    ann.write_text(json.dumps(data))
    with raises_one_line(r"category id -1 \(annotation \d+\).*renumber"):
        DetectionTask().check(detr_cfg(91), CocoDetection(root, "val"))


# --------------------------------------------------------------------------- classification


def test_image_folder_with_an_empty_class_folder(tmp_path):
    (tmp_path / "cat").mkdir()
    (tmp_path / "dog").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "cat" / "a.png")
    (tmp_path / "dog" / "notes.txt").write_text("no images here")
    with raises_one_line(f"class folder.* with no images in {re.escape(str(tmp_path))}: dog "):
        ImageFolderClassification(tmp_path)


def test_cifar_empty_split_and_bad_labels(tmp_path):
    images = np.zeros((2, 32, 32, 3), np.uint8)
    write_cifar10_like(tmp_path, (images, np.array([0, 1])), (images[:0], np.array([], int)))
    with raises_one_line("CIFAR-10 val split in .*cifar-10-batches-py is empty: test_batch"):
        build_classification_dataset("cifar10", "val", root=tmp_path)
    write_cifar10_like(tmp_path, (images, np.array([0, 1])), (images, np.array([0, 10])))
    with raises_one_line(r"test_batch: labels span 0..10, expected 0..9"):
        build_classification_dataset("cifar10", "val", root=tmp_path)


def test_truncated_synthetic_classification_cache(tmp_path):
    path = tmp_path / "val.npz"
    np.savez(path, images=np.zeros((2, 32, 32, 3), np.uint8), labels=np.array([0, 1]))
    path.write_bytes(path.read_bytes()[:100])
    with raises_one_line(f"cannot read .*{re.escape(str(path))}.*delete"):
        load_synthetic_split(path)
    np.savez(path, images=np.zeros((2, 8, 8, 3), np.uint8), labels=np.array([0, 1]))
    with raises_one_line("holds images uint8 .*expected uint8"):
        load_synthetic_split(path)
    assert zipfile.is_zipfile(path)


def test_array_classification_empty_and_labels_outside_the_classes():
    images = np.zeros((3, 32, 32, 3), np.uint8)
    with raises_one_line("val.npz holds no images"):
        ArrayClassification(images[:0], np.array([], int), ["a", "b"], source="val.npz")
    with raises_one_line(r"val.npz: image 2 has label 5 outside 0..1, the 2 classes"):
        ArrayClassification(images, np.array([0, 1, 5]), ["a", "b"], source="val.npz")


def test_classification_check_refuses_labels_outside_num_classes():
    cfg = load_config(None, {"model.name": "vit", "model.num_classes": 3})
    dataset = ArrayClassification(np.zeros((2, 32, 32, 3), np.uint8), np.array([0, 2]), "abc")
    ClassificationTask().check(cfg, dataset)
    dataset.labels = np.array([0, 3])  # e.g. a dataset whose labels were remapped
    with raises_one_line(r"in-memory images: image 1 has label 3 outside 0..2 .*at least 4"):
        ClassificationTask().check(cfg, dataset)


# --------------------------------------------------------------------------- dense


def write_pair(root, stem: str, image_hw, target_hw) -> None:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "targets").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", image_hw[::-1]).save(root / "images" / f"{stem}.png")
    np.save(root / "targets" / f"{stem}.npy", np.zeros(target_hw, np.float32))


def test_dense_folder_problems_name_the_file(tmp_path):
    cfg = DenseDataConfig(name="folder", root=str(tmp_path))
    (tmp_path / "val" / "images").mkdir(parents=True)
    (tmp_path / "val" / "targets").mkdir()
    with raises_one_line(f"no images .* in {re.escape(str(tmp_path / 'val' / 'images'))}"):
        build_dense_dataset(cfg, "val")
    write_pair(tmp_path / "val", "a", (6, 9), (6, 8))
    with raises_one_line(r"size mismatch: image .*a\.png is 6x9 .*a\.npy is 6x8"):
        build_dense_dataset(cfg, "val")
    np.save(tmp_path / "val" / "targets" / "a.npy", np.zeros((6, 9), np.float32))
    Image.new("RGB", (9, 6)).save(tmp_path / "val" / "images" / "b.png")
    with raises_one_line(r"no target for image .*b\.png: expected .*b\.npy"):
        build_dense_dataset(cfg, "val")
    (tmp_path / "val" / "images" / "b.png").write_bytes(b"not a png")
    np.save(tmp_path / "val" / "targets" / "b.npy", np.zeros((6, 9), np.float32))
    with raises_one_line(r"cannot read image .*b\.png"):
        build_dense_dataset(cfg, "val")


def test_dense_synthetic_cache_and_empty_split(tmp_path):
    path = tmp_path / "maps.npz"
    path.write_bytes(b"")
    with raises_one_line(f"cannot read synthetic height-map file {re.escape(str(path))}.*delete"):
        load_heightmap_split(path, "val")
    np.savez(path, val_images=np.zeros((0, 8, 8, 3), np.uint8), val_targets=np.zeros((0, 8, 8)))
    images, targets = load_heightmap_split(path, "val")
    with raises_one_line("maps.npz holds no images"):
        DenseArrayDataset(images, targets, (0,) * 3, (1,) * 3, source=path)
    cfg = SimpleNamespace(data=DenseDataConfig(name="folder", root=str(tmp_path)))
    with raises_one_line(f"{re.escape(str(tmp_path))}: the split has no images"):
        DenseRegressionTask().check(cfg, [])


def test_dataset_error_is_the_data_error():
    assert DatasetError is DataError
