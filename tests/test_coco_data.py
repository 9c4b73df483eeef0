"""COCO-format loading, DETR transforms, collate and padding, and bad data handling."""

from __future__ import annotations

import json
import logging
import random
import shutil

import pytest
import torch
from PIL import Image
from torchvision.ops import box_convert

from attnkit.config import load_config
from attnkit.data import CocoDetection, DatasetError, build_dataset, collate_detection
from attnkit.data import transforms as T


def tiny_cfg(**data):
    return load_config(None, {f"data.{k}": v for k, v in data.items()}).data


def to_pixels(target):
    h, w = target["size"].tolist()
    boxes = box_convert(target["boxes"], "cxcywh", "xyxy")
    return boxes * torch.tensor([w, h, w, h])


def test_val_transform_resizes_boxes_with_the_image(shapes_root):
    cfg = tiny_cfg(val_scale=128, max_size=200)
    raw = CocoDetection(shapes_root, "val")
    ds = CocoDetection(shapes_root, "val", T.detr_transforms(cfg, train=False))
    for i in range(len(ds)):
        image, target = ds[i]
        orig = raw.raw_target(i)
        h, w = image.shape[-2:]
        assert min(h, w) == 128 or max(h, w) <= 200
        assert target["size"].tolist() == [h, w]
        scale = torch.tensor([w / orig["orig_size"][1], h / orig["orig_size"][0]] * 2)
        torch.testing.assert_close(to_pixels(target), orig["boxes"] * scale, atol=1e-3, rtol=0)
        assert torch.all((target["boxes"] >= 0) & (target["boxes"] <= 1))
        assert abs(image.mean().item()) < 3  # normalised


def test_flip_mirrors_boxes():
    image = Image.new("RGB", (100, 50))
    target = {"boxes": torch.tensor([[10.0, 5.0, 30.0, 20.0]])}
    flipped_image, flipped = T.RandomHorizontalFlip(p=1.0)(image, target)
    assert flipped["boxes"].tolist() == [[70.0, 5.0, 90.0, 20.0]]
    assert flipped_image.size == (100, 50)


def test_crop_clips_and_drops_boxes():
    image = Image.new("RGB", (100, 100))
    target = {
        "boxes": torch.tensor([[10.0, 10.0, 40.0, 40.0], [80.0, 80.0, 95.0, 95.0]]),
        "labels": torch.tensor([1, 2]),
        "area": torch.tensor([900.0, 225.0]),
        "iscrowd": torch.tensor([0, 0]),
    }
    cropped_image, out = T.crop(image, target, top=20, left=0, height=50, width=60)
    assert out["boxes"].tolist() == [[10.0, 0.0, 40.0, 20.0]]  # second box left the crop
    assert out["labels"].tolist() == [1] and out["area"].tolist() == [600.0]
    assert out["size"].tolist() == [50, 60] and cropped_image.size == (60, 50)


def test_resize_rule_matches_detr():
    assert T.resized_hw(200, 300, 100, None) == (100, 150)
    assert T.resized_hw(200, 300, 100, 120) == (80, 120)  # long side capped
    assert T.resized_hw(300, 200, 100, None) == (150, 100)


def test_train_transforms_keep_pixels_and_boxes_consistent(shapes_root):
    """Paint each box's pixels a unique colour; after random transforms it stays inside the box."""
    random.seed(0)
    torch.manual_seed(0)
    image = Image.new("RGB", (240, 180), (0, 0, 0))
    pixels = image.load()
    for x in range(50, 100):
        for y in range(60, 120):
            pixels[x, y] = (255, 255, 255)
    target = {
        "boxes": torch.tensor([[50.0, 60.0, 100.0, 120.0]]),
        "labels": torch.tensor([1]),
        "area": torch.tensor([3000.0]),
        "iscrowd": torch.tensor([0]),
        "orig_size": torch.tensor([180, 240]),
        "size": torch.tensor([180, 240]),
    }
    cfg = tiny_cfg(
        train_scales=[96, 128],
        max_size=200,
        crop_min_size=60,
        crop_max_size=120,
        crop_resize_scales=[128],
    )
    pipeline = T.detr_transforms(cfg, train=True)
    for _ in range(20):
        tensor, out = pipeline(image, target)
        if len(out["boxes"]) == 0:
            continue
        bright = tensor.mean(0) > 0.5  # [H, W] white pixels after normalisation
        x0, y0, x1, y1 = to_pixels(out)[0].tolist()
        ys, xs = torch.nonzero(bright, as_tuple=True)
        assert xs.min() >= x0 - 2 and xs.max() <= x1 + 2
        assert ys.min() >= y0 - 2 and ys.max() <= y1 + 2


def test_collate_pads_bottom_right_and_masks(shapes_root):
    cfg = tiny_cfg(val_scale=96, max_size=160)
    ds = CocoDetection(shapes_root, "val", T.detr_transforms(cfg, train=False))
    samples = [ds[i] for i in range(4)]
    batch = collate_detection(samples)
    H = max(s[0].shape[1] for s in samples)
    W = max(s[0].shape[2] for s in samples)
    assert batch.images.shape == (4, 3, H, W) and batch.mask.shape == (4, H, W)
    for i, (image, _target) in enumerate(samples):
        h, w = image.shape[-2:]
        assert not batch.mask[i, :h, :w].any() and batch.mask[i].sum() == H * W - h * w
        torch.testing.assert_close(batch.images[i, :, :h, :w], image)
        assert batch.images[i, :, h:, :].abs().sum() == 0
        assert batch.targets[i]["size"].tolist() == [h, w]
        assert "orig_size" in batch.targets[i]


def test_build_dataset_makes_synthetic_data_from_config():
    cfg = tiny_cfg(num_train=3, num_val=2, seed=5, val_scale=64, max_size=100)
    val = build_dataset(cfg, "val")
    assert len(val) == 2 and len(build_dataset(cfg, "train")) == 3
    with pytest.raises(DatasetError, match="data.root"):
        build_dataset(tiny_cfg(name="coco"), "val")


@pytest.fixture
def broken_root(shapes_root, tmp_path):
    root = tmp_path / "broken"
    shutil.copytree(shapes_root, root)
    return root


def edit_annotations(root, fn):
    path = root / "annotations" / "instances_val2017.json"
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))
    return data


def test_missing_and_corrupt_images_name_the_file(broken_root):
    ds = CocoDetection(broken_root, "val")
    missing = ds.image_path(0)
    missing.unlink()
    with pytest.raises(DatasetError, match=missing.name):
        ds[0]
    corrupt = ds.image_path(1)
    corrupt.write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match=corrupt.name):
        ds[1]


def test_degenerate_and_outside_boxes_are_dropped_or_clipped_and_logged(broken_root, caplog):
    def damage(data):
        image = data["images"][0]
        base = {"image_id": image["id"], "category_id": 1, "iscrowd": 0, "area": 10.0}
        data["annotations"] += [
            {**base, "id": 9001, "bbox": [5, 5, 0, 10]},  # zero width: dropped
            {**base, "id": 9002, "bbox": [image["width"] - 5, 2, 20, 10]},  # leaves: clipped
            {**base, "id": 9003, "bbox": [image["width"] + 5, 2, 20, 10]},  # outside: dropped
        ]

    edit_annotations(broken_root, damage)
    with caplog.at_level(logging.WARNING):
        ds = CocoDetection(broken_root, "val")
    assert ds.report.dropped == 2 and ds.report.clipped == 1
    assert "dropped 2" in caplog.text and "clipped 1" in caplog.text
    boxes = ds.raw_target(0)["boxes"]
    width = ds.coco.imgs[ds.ids[0]]["width"]
    assert boxes[:, 2].max() <= width and (boxes[:, 2] > boxes[:, 0]).all()


def test_image_without_annotations_is_kept_and_grey_rgba_become_rgb(broken_root):
    data = edit_annotations(broken_root, lambda d: d.__setitem__("annotations", []))
    ds = CocoDetection(broken_root, "val", T.detr_transforms(tiny_cfg(val_scale=64), False))
    assert len(ds) == len(data["images"])
    for i, mode in ((0, "L"), (1, "RGBA"), (2, "P")):
        path = ds.image_path(i)
        Image.open(path).convert(mode).save(path.with_suffix(".png"))
        path.with_suffix(".png").rename(path)  # PIL reads by content, not extension
        image, target = ds[i]
        assert image.shape[0] == 3 and target["boxes"].shape == (0, 4)
