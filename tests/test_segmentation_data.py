"""Segmentation data: class maps of the synthetic scenes (which leave the images and height maps
bit-identical), their cache, the folder loader and its bad inputs, flips and collate."""

from __future__ import annotations

import hashlib
import re
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import attnkit.data.heightmaps as heightmaps
from attnkit.config import ConfigError, load_config
from attnkit.data.heightmaps import (
    GENERATOR_VERSION,
    NODATA_LABEL,
    SCENE_CLASSES,
    VAL_STREAM,
    ensure_heightmaps,
    load_heightmap_split,
    load_scene_labels,
    make_heightmaps,
    make_scenes,
)
from attnkit.data.segmentation import (
    SegmentationArrayDataset,
    SegmentationBatch,
    build_segmentation_dataset,
    collate_segmentation,
    read_label,
)
from attnkit.errors import DataError
from attnkit.tasks.segmentation_config import SegmentationDataConfig


@contextmanager
def raises_one_line(match: str):
    """``pytest.raises(DataError, match=...)`` that also asserts the message is one line."""
    with pytest.raises(DataError, match=match) as info:
        yield info
    assert "\n" not in str(info.value)


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(array.tobytes()).hexdigest()[:16]


# --------------------------------------------------------------------------- synthetic scenes

# sha256 prefixes of make_heightmaps' images and heights, computed before the class maps existed
# (generator version 1): rendering the labels must not change a single byte of either.
BEFORE_LABELS = [
    ((12, 3, (64, 64)), "1603125d18f3c027", "13e24a3056fe5a80"),
    ((5, (7, VAL_STREAM), (40, 56)), "151be05b096771af", "87cef166a96300c9"),
    ((4, 0, (96, 80)), "30365236f49c8af9", "760c3055b9fecf04"),
    ((3, 11, (8, 8)), "3da379bde94fc331", "a73cfcd57ff7a966"),
]


@pytest.mark.parametrize(("args", "images_sha", "heights_sha"), BEFORE_LABELS)
def test_images_and_heights_are_bit_identical_to_before_the_labels(args, images_sha, heights_sha):
    images, heights = make_heightmaps(*args)
    assert (_digest(images), _digest(heights)) == (images_sha, heights_sha)
    same_images, same_heights, labels = make_scenes(*args)
    assert same_images.tobytes() == images.tobytes()
    assert same_heights.tobytes() == heights.tobytes()
    assert labels.dtype == np.uint8 and labels.shape == heights.shape


def test_images_and_heights_unchanged_across_render_chunks(monkeypatch):
    monkeypatch.setattr(heightmaps, "_CHUNK_PIXELS", 64 * 64 * 3)  # chunks of 3 images
    images, heights, _ = make_scenes(7, 5, (64, 64))
    assert (_digest(images), _digest(heights)) == ("74c5e843b00822d5", "c6fb1c38a6f089cc")


def test_class_maps_agree_with_the_height_maps():
    """The ground is a plane: fitted to the ground pixels it leaves buildings >= 3 m above it
    (roofs are 3-40 m), trees above it, and the nodata pixels are exactly the NaN heights."""
    _, heights, labels = make_scenes(16, seed=0)
    assert SCENE_CLASSES == ("ground", "building", "tree") and NODATA_LABEL == 255
    assert set(np.unique(labels)) == {0, 1, 2, NODATA_LABEL}
    np.testing.assert_array_equal(labels == NODATA_LABEL, np.isnan(heights))
    yy, xx = np.mgrid[0:64, 0:64].astype(np.float64)
    for height, label in zip(heights, labels, strict=True):
        ground = label == 0
        design = np.stack([np.ones(ground.sum()), xx[ground], yy[ground]], axis=1)
        coef, *_ = np.linalg.lstsq(design, height[ground].astype(np.float64), rcond=None)
        above = height - (coef[0] + coef[1] * xx + coef[2] * yy)  # [H, W] above the ground
        assert np.abs(above[ground]).max() < 1e-3
        if (label == 1).any():
            assert above[label == 1].min() >= 3.0 - 1e-3
        if (label == 2).any():
            assert above[label == 2].min() > -1e-3 and np.median(above[label == 2]) > 0.5
    for cls in (1, 2):  # both kinds of objects show up in every few scenes
        assert (labels == cls).mean() > 0.02


def test_cache_holds_the_labels_and_old_readers_still_work(tmp_path):
    assert GENERATOR_VERSION == 2  # caches without labels are made again
    path = ensure_heightmaps(6, 4, seed=2, image_size=(32, 40), cache_dir=tmp_path)
    images, labels = load_scene_labels(path, "train")
    expected_images, expected_heights, expected_labels = make_scenes(6, 2, (32, 40))
    assert images.tobytes() == expected_images.tobytes()
    assert labels.tobytes() == expected_labels.tobytes() and labels.dtype == np.uint8
    assert load_heightmap_split(path, "train")[1].tobytes() == expected_heights.tobytes()
    assert load_scene_labels(path, "val")[1].shape == (4, 32, 40)
    old = tmp_path / "old.npz"  # a file of generator version 1: no labels
    np.savez(old, val_images=images, val_targets=expected_heights)
    with raises_one_line(r"cannot read synthetic height-map file .*old\.npz.*delete it"):
        load_scene_labels(old, "val")


def test_synthetic_dataset_samples_flips_and_ignore_index():
    cfg = SegmentationDataConfig(num_train=8, num_val=4, seed=1, ignore_index=9)
    plain = build_segmentation_dataset(cfg, "train", train=False)
    assert len(plain) == 8 and plain.class_names == SCENE_CLASSES and plain.num_classes == 3
    image, maps = plain[0]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    assert maps["labels"].shape == (64, 64) and maps["labels"].dtype == torch.int64
    assert set(maps["labels"].unique().tolist()) <= {0, 1, 2, 9} and (maps["labels"] == 9).any()
    flipped = build_segmentation_dataset(cfg, "train", train=True)
    torch.manual_seed(0)
    seen = set()
    for _ in range(12):
        x, y = flipped[0]
        for dims in ((), (-1,), (-2,), (-1, -2)):
            flip = (lambda t, dims=dims: t.flip(dims)) if dims else (lambda t: t)
            if torch.equal(x, flip(image)) and torch.equal(y["labels"], flip(maps["labels"])):
                seen.add(dims)
                break
        else:
            raise AssertionError("image and labels were not flipped alike")
    assert len(seen) > 1  # the flips do happen
    assert len(build_segmentation_dataset(cfg, "val")) == 4


def test_array_dataset_refuses_a_class_id_past_the_classes():
    images = np.zeros((2, 4, 4, 3), np.uint8)
    labels = np.zeros((2, 4, 4), np.uint8)
    labels[1, 2, 2], labels[0, 0, 0] = 4, NODATA_LABEL
    with raises_one_line(r"my scenes: class id 4 \(1 pixels\) is outside 0\.\.2"):
        SegmentationArrayDataset(
            images, labels, SCENE_CLASSES, (0,) * 3, (1,) * 3, source="my scenes"
        )
    labels[1, 2, 2] = 2
    dataset = SegmentationArrayDataset(images, labels, SCENE_CLASSES, (0,) * 3, (1,) * 3, 7)
    assert dataset[0][1]["labels"][0, 0] == 7 and dataset.labels.dtype == np.uint8


def test_collate_pads_with_the_ignore_index():
    a = (torch.ones(3, 4, 5), {"labels": torch.zeros(4, 5, dtype=torch.int64)})
    b = (torch.ones(3, 6, 3), {"labels": torch.ones(6, 3, dtype=torch.int64)})
    for sample in (a, b):
        sample[1]["ignore_index"] = torch.tensor(7)
    batch = collate_segmentation([a, b])
    assert isinstance(batch, SegmentationBatch) and len(batch) == 2
    assert batch.images.shape == (2, 3, 6, 5) and batch.labels.shape == (2, 6, 5)
    assert (batch.labels[0, 4:] == 7).all() and (batch.labels[1, :, 3:] == 7).all()
    assert (batch.labels[0, :4] == 0).all() and (batch.images[0, :, 4:] == 0).all()
    assert set(batch.inputs) == {"images"} and set(batch.targets) == {"labels"}
    moved = batch.to("cpu")
    assert moved.ignore_index == 7 and torch.equal(moved.labels, batch.labels)


# --------------------------------------------------------------------------- folder


def _pair(folder, stem, size=(6, 9), labels=None, image_suffix=".png", label_suffix=".png"):
    """An RGB image and its labels (a PNG of mode L or a .npy) of ``size`` (H, W)."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(stem))
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(
        folder / "images" / f"{stem}{image_suffix}"
    )
    if labels is None:
        labels = rng.integers(0, 3, size).astype(np.uint8)
        labels[0, 0] = 255
    if label_suffix == ".npy":
        np.save(folder / "labels" / f"{stem}.npy", labels)
    else:
        Image.fromarray(labels).save(folder / "labels" / f"{stem}{label_suffix}")
    return labels


def test_folder_dataset_reads_png_and_npy_labels(tmp_path):
    first = _pair(tmp_path / "train", "a")
    second = _pair(tmp_path / "train", "b", (5, 4), np.full((5, 4), 2, np.int32), ".jpg", ".npy")
    cfg = SegmentationDataConfig(name="folder", root=str(tmp_path), class_names=["x", "y", "z"])
    dataset = build_segmentation_dataset(cfg, "train", train=False)
    assert len(dataset) == 2 and dataset.class_names == ("x", "y", "z")
    np.testing.assert_array_equal(dataset[0][1]["labels"].numpy(), first)
    np.testing.assert_array_equal(dataset[1][1]["labels"].numpy(), second)
    batch = collate_segmentation([dataset[0], dataset[1]])
    assert batch.labels.shape == (2, 6, 9) and (batch.labels[1, 5:] == 255).all()
    # Without class names: model.out_channels classes named by their ids.
    cfg = SegmentationDataConfig(name="folder", root=str(tmp_path))
    assert build_segmentation_dataset(cfg, "train", num_classes=4).class_names == tuple("0123")


def test_folder_crops_are_windows_of_the_image_padded_with_the_ignore_index(tmp_path):
    big = _pair(tmp_path / "train", "a", (20, 24))
    small = _pair(tmp_path / "train", "b", (6, 9))
    cfg = SegmentationDataConfig(
        name="folder", root=str(tmp_path), class_names=["x", "y", "z"], crop_size=[8, 10]
    )
    dataset = build_segmentation_dataset(cfg, "train", train=True)
    whole = build_segmentation_dataset(cfg, "train", train=False)  # evaluation: no crops
    assert whole[0][1]["labels"].shape == (20, 24)
    for seed in range(5):
        torch.manual_seed(seed)
        image, targets = dataset[0]
        assert image.shape == (3, 8, 10) and targets["labels"].shape == (8, 10)
        torch.manual_seed(seed)
        top, left = (int(torch.randint(n, ())) for n in (20 - 8 + 1, 24 - 10 + 1))
        window = big[top : top + 8, left : left + 10].astype(np.int64)
        labels = targets["labels"].numpy()  # the window, maybe flipped
        assert any(
            np.array_equal(labels, w)
            for w in (window, window[::-1], window[:, ::-1], window[::-1, ::-1])
        )
    image, targets = dataset[1]  # 6 x 9: padded to 8 x 10 with ignored labels
    assert image.shape == (3, 8, 10)
    assert (targets["labels"][6:] == 255).all() and (targets["labels"][:, 9:] == 255).all()
    assert (image[:, 6:] == 0).all()
    assert sorted(targets["labels"][:6, :9].flatten().tolist()) == sorted(small.flatten().tolist())
    with pytest.raises(ConfigError, match="crop_size' crops folder images"):
        load_config(
            Path(__file__).parents[1] / "configs/dense/synth_swin_segformer_seg.yaml",
            ["data.crop_size=[32,32]"],
        )


def test_folder_dataset_bad_inputs_are_one_line_errors(tmp_path):
    root = tmp_path / "val"
    cfg = SegmentationDataConfig(name="folder", root=str(tmp_path), class_names=["a", "b", "c"])
    with raises_one_line("segmentation data folder not found: .*images"):
        build_segmentation_dataset(cfg, "val")
    with raises_one_line("data.root is not set"):
        build_segmentation_dataset(SegmentationDataConfig(name="folder"), "val")
    _pair(root, "a")
    Image.new("RGB", (9, 6)).save(root / "images" / "b.png")
    with raises_one_line(r"no labels for image .*b\.png: expected .*b\.png \(or \.npy\)"):
        build_segmentation_dataset(cfg, "val")
    Image.fromarray(np.zeros((6, 8), np.uint8)).save(root / "labels" / "b.png")
    with raises_one_line(r"size mismatch: image .*b\.png is 6x9 .* labels .*b\.png are 6x8"):
        build_segmentation_dataset(cfg, "val")
    (root / "labels" / "b.png").unlink()
    np.save(root / "labels" / "b.npy", np.zeros((6, 9), np.float32))
    with raises_one_line(r"labels .*b\.npy must be one band of integer class ids.*float32"):
        build_segmentation_dataset(cfg, "val")
    (root / "labels" / "b.npy").unlink()
    Image.new("RGB", (9, 6)).save(root / "labels" / "b.png")
    with raises_one_line(r"labels .*b\.png must be one band .*got mode RGB"):
        build_segmentation_dataset(cfg, "val")
    bad = np.zeros((6, 9), np.uint8)
    bad[2, 3] = 5  # a class id past the 3 classes, and not the ignore index 255
    Image.fromarray(bad).save(root / "labels" / "b.png")
    dataset = build_segmentation_dataset(cfg, "val")
    dataset[0]  # a is fine
    with raises_one_line(re.escape("class id 5 (1 pixels) is outside 0..2 and is not data.ignore")):
        dataset[1]
    with raises_one_line(r"cannot read labels .*missing\.png"):
        read_label(root / "labels" / "missing.png")
