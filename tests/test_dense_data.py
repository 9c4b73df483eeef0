"""Dense regression data: synthetic height maps, the folder loader, flips, collate, and the
``dense_regression`` task end to end through a model family registered by this test alone."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from attnkit.config.schema import DenseDataConfig
from attnkit.data.coco import DatasetError
from attnkit.data.dense import (
    DenseBatch,
    build_dense_dataset,
    collate_dense,
    dense_sample,
    read_target,
)
from attnkit.data.heightmaps import (
    HEIGHTMAP_MEAN,
    HEIGHTMAP_STD,
    ensure_heightmaps,
    load_heightmap_split,
    make_heightmaps,
)
from attnkit.data.transforms import IMAGENET_MEAN, IMAGENET_STD

# --------------------------------------------------------------------------- synthetic


def test_synthetic_same_seed_same_bytes_other_seed_differs():
    images, heights = make_heightmaps(12, seed=3)
    again, heights_again = make_heightmaps(12, seed=3)
    other, _ = make_heightmaps(12, seed=4)
    assert images.dtype == np.uint8 and images.shape == (12, 64, 64, 3)
    assert heights.dtype == np.float32 and heights.shape == (12, 64, 64)
    assert images.tobytes() == again.tobytes() and heights.tobytes() == heights_again.tobytes()
    assert images.tobytes() != other.tobytes()


def test_synthetic_heights_are_plausible_metres():
    _, heights = make_heightmaps(50, seed=0)
    finite = heights[np.isfinite(heights)]
    assert finite.min() >= 0.0 and finite.max() <= 50.0  # ground, trees, buildings of 3-40 m
    # Every map has something standing out from the ground.
    assert (np.nanmax(heights, axis=(1, 2)) - np.nanmin(heights, axis=(1, 2)) > 2.0).all()


def test_synthetic_mean_std_constants_match_the_data():
    images, _ = make_heightmaps(300, seed=1)
    pixels = images.reshape(-1, 3) / 255.0
    np.testing.assert_allclose(pixels.mean(axis=0), HEIGHTMAP_MEAN, atol=1e-2)
    np.testing.assert_allclose(pixels.std(axis=0), HEIGHTMAP_STD, atol=1e-2)


def test_ensure_heightmaps_writes_once_with_a_separate_val_stream(tmp_path):
    path = ensure_heightmaps(6, 4, seed=2, image_size=(32, 40), cache_dir=tmp_path)
    assert path.name.startswith("heightmaps_6_4_s2_32x40_") and path.suffix == ".npz"
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind
    mtime = path.stat().st_mtime_ns
    assert ensure_heightmaps(6, 4, seed=2, image_size=(32, 40), cache_dir=tmp_path) == path
    assert path.stat().st_mtime_ns == mtime
    train_images, train_targets = load_heightmap_split(path, "train")
    val_images, _ = load_heightmap_split(path, "val")
    assert train_images.shape == (6, 32, 40, 3) and val_images.shape == (4, 32, 40, 3)
    expected, expected_targets = make_heightmaps(6, 2, (32, 40))
    assert train_images.tobytes() == expected.tobytes()
    assert train_targets.tobytes() == expected_targets.tobytes()
    assert val_images.tobytes() != train_images[:4].tobytes()
    with pytest.raises(DatasetError, match="missing.npz"):
        load_heightmap_split(tmp_path / "missing.npz", "train")


def test_nodata_is_about_five_percent_and_never_reaches_the_target():
    _, heights = make_heightmaps(200, seed=5)
    per_image = np.isnan(heights).mean(axis=(1, 2))
    assert 0.04 < per_image.mean() < 0.06
    assert per_image.min() > 0.02 and per_image.max() < 0.09

    cfg = DenseDataConfig(num_train=20, num_val=8, seed=5)
    dataset = build_dense_dataset(cfg, "train", train=False)
    raw = load_heightmap_split(ensure_heightmaps(20, 8, 5, (64, 64)), "train")[1]
    for i in range(len(dataset)):
        image, maps = dataset[i]
        assert image.shape == (3, 64, 64) and image.dtype == torch.float32
        assert maps["target"].shape == maps["valid"].shape == (1, 64, 64)
        assert maps["target"].dtype == torch.float32 and maps["valid"].dtype == torch.bool
        assert torch.isfinite(maps["target"]).all()
        assert (maps["target"][~maps["valid"]] == 0).all()
        np.testing.assert_array_equal(maps["valid"][0].numpy(), np.isfinite(raw[i]))
        np.testing.assert_array_equal(maps["target"][0].numpy(), np.nan_to_num(raw[i], nan=0.0))


def test_non_square_size_and_val_split_differs():
    cfg = DenseDataConfig(num_train=4, num_val=3, seed=1, image_size=[48, 64])
    train = build_dense_dataset(cfg, "train")
    val = build_dense_dataset(cfg, "val")
    assert len(train) == 4 and len(val) == 3
    assert train.train and not val.train
    image, maps = val[0]
    assert image.shape == (3, 48, 64) and maps["target"].shape == (1, 48, 64)
    assert build_dense_dataset(cfg, "test")[0][0].equal(image)  # "test" is the val split
    assert not torch.equal(build_dense_dataset(cfg, "train", train=False)[0][0], image)
    with pytest.raises(ValueError, match="split"):
        build_dense_dataset(cfg, "holdout")


# --------------------------------------------------------------------------- flips


def test_train_flips_keep_image_target_and_valid_aligned():
    h, w = 5, 7
    image = np.arange(h * w * 3, dtype=np.uint8).reshape(h, w, 3)  # every pixel distinct
    target = np.arange(h * w, dtype=np.float32).reshape(h, w) + 1.0
    target[0, 0] = np.nan  # top-left corner is nodata
    target[0, 1] = -1.0  # the folder nodata value
    plain_image, plain = dense_sample(image, target, (0, 0, 0), (1, 1, 1), nodata=-1.0)
    assert not plain["valid"][0, 0, 0] and not plain["valid"][0, 0, 1]
    assert plain["valid"].sum() == h * w - 2

    flips = {
        (False, False): lambda x: x,
        (True, False): lambda x: x.flip(-1),
        (False, True): lambda x: x.flip(-2),
        (True, True): lambda x: x.flip(-1).flip(-2),
    }
    seen = set()
    for seed in range(24):
        torch.manual_seed(seed)
        got_image, got = dense_sample(image, target, (0, 0, 0), (1, 1, 1), True, nodata=-1.0)
        which = [k for k, f in flips.items() if torch.equal(f(plain_image), got_image)]
        assert len(which) == 1
        flip = flips[which[0]]
        assert torch.equal(flip(plain["target"]), got["target"])
        assert torch.equal(flip(plain["valid"]), got["valid"])
        seen.add(which[0])
        torch.manual_seed(seed)  # the global RNG decides: same seed, same flips
        assert torch.equal(dense_sample(image, target, (0,) * 3, (1,) * 3, True)[0], got_image)
    assert seen == set(flips)


# --------------------------------------------------------------------------- folder


def _write_pair(root, split, stem, h, w, rng, target=None, suffix=".npy"):
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    (root / split / "images").mkdir(parents=True, exist_ok=True)
    (root / split / "targets").mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(root / split / "images" / f"{stem}.png")
    if target is None:
        target = rng.uniform(0, 30, (h, w)).astype(np.float32)
    if suffix == ".npy":
        np.save(root / split / "targets" / f"{stem}.npy", target)
    else:
        Image.fromarray(target, mode="F").save(root / split / "targets" / f"{stem}{suffix}")
    return image, target


def test_folder_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    target_b = rng.uniform(0, 30, (6, 9)).astype(np.float32)
    target_b[2, 3] = -9999.0  # the nodata value
    target_b[4, 0] = np.nan  # NaN is nodata too
    written = [
        _write_pair(tmp_path, "val", "a", 6, 9, rng),
        _write_pair(tmp_path, "val", "b", 6, 9, rng, target=target_b),
    ]
    cfg = DenseDataConfig(name="folder", root=str(tmp_path), nodata=-9999.0)
    dataset = build_dense_dataset(cfg, "val")
    assert len(dataset) == 2 and not dataset.train
    mean, std = (
        torch.tensor(IMAGENET_MEAN)[:, None, None],
        torch.tensor(IMAGENET_STD)[:, None, None],
    )
    for (image, maps), (raw_image, raw_target) in zip(dataset, written):
        pixels = (image * std + mean) * 255  # [3, H, W] back to 0..255
        np.testing.assert_allclose(pixels.permute(1, 2, 0).numpy(), raw_image, atol=1e-3)
        known = np.isfinite(raw_target) & (raw_target != -9999.0)
        np.testing.assert_array_equal(maps["valid"][0].numpy(), known)
        np.testing.assert_array_equal(maps["target"][0].numpy(), np.where(known, raw_target, 0))
    assert dataset[1][1]["valid"].sum() == 6 * 9 - 2

    batch = collate_dense([dataset[0], dataset[1]])
    assert batch.images.shape == (2, 3, 6, 9) and batch.valid.shape == (2, 1, 6, 9)


def test_folder_reads_tif_targets(tmp_path):
    rng = np.random.default_rng(1)
    _, target = _write_pair(tmp_path, "train", "t", 5, 4, rng, suffix=".tif")
    assert read_target(tmp_path / "train" / "targets" / "t.tif").dtype == np.float32
    cfg = DenseDataConfig(name="folder", root=str(tmp_path))
    _, maps = build_dense_dataset(cfg, "train", train=False)[0]
    np.testing.assert_array_equal(maps["target"][0].numpy(), target)


def test_folder_errors_name_the_files(tmp_path):
    rng = np.random.default_rng(2)
    cfg = DenseDataConfig(name="folder", root=str(tmp_path))
    with pytest.raises(DatasetError, match="data.root is not set"):
        build_dense_dataset(DenseDataConfig(name="folder"), "train")
    with pytest.raises(DatasetError, match=f"not found: {tmp_path / 'train' / 'images'}"):
        build_dense_dataset(cfg, "train")

    _write_pair(tmp_path, "train", "a", 6, 9, rng)
    _write_pair(tmp_path, "train", "b", 6, 9, rng)
    (tmp_path / "train" / "targets" / "b.npy").unlink()
    with pytest.raises(DatasetError) as err:
        build_dense_dataset(cfg, "train")
    assert str(tmp_path / "train" / "images" / "b.png") in str(err.value)
    assert str(tmp_path / "train" / "targets" / "b.npy") in str(err.value)

    np.save(tmp_path / "train" / "targets" / "b.npy", np.zeros((6, 8), np.float32))
    with pytest.raises(DatasetError) as err:
        build_dense_dataset(cfg, "train")
    text = str(err.value)
    assert "b.png is 6x9" in text and "b.npy is 6x8" in text

    (tmp_path / "train" / "targets" / "b.npy").write_bytes(b"not an array")
    with pytest.raises(DatasetError, match=r"cannot read target .*b\.npy"):
        build_dense_dataset(cfg, "train")

    np.save(tmp_path / "train" / "targets" / "b.npy", np.zeros((6, 9), np.float32))
    (tmp_path / "train" / "images" / "a.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=r"cannot read image .*a\.png"):
        build_dense_dataset(cfg, "train")


# --------------------------------------------------------------------------- batches


def test_collate_stacks_and_pads_mixed_sizes():
    def sample(h, w):
        return dense_sample(
            np.full((h, w, 3), 128, np.uint8), np.ones((h, w), np.float32), (0.5,) * 3, (0.5,) * 3
        )

    batch = collate_dense([sample(4, 6), sample(4, 6), sample(4, 6)])
    assert isinstance(batch, DenseBatch) and len(batch) == 3
    assert batch.images.shape == (3, 3, 4, 6) and batch.target.shape == (3, 1, 4, 6)
    assert batch.valid.dtype == torch.bool and batch.valid.all()
    assert set(batch.inputs) == {"images"} and set(batch.targets) == {"target", "valid"}
    moved = batch.to("cpu")
    assert isinstance(moved, DenseBatch) and torch.equal(moved.target, batch.target)

    mixed = collate_dense([sample(4, 6), sample(5, 3)])  # padded to 5x6 at bottom / right
    assert mixed.images.shape == (2, 3, 5, 6) and mixed.valid.shape == (2, 1, 5, 6)
    assert mixed.valid[0, 0, :4].all() and not mixed.valid[0, 0, 4].any()
    assert mixed.valid[1, 0, :, :3].all() and not mixed.valid[1, 0, :, 3:].any()
    assert (mixed.target[~mixed.valid] == 0).all() and (mixed.images[0, :, 4] == 0).all()


# --------------------------------------------------------------------------- end to end


class ToyNet(nn.Module):
    """A tiny fully convolutional regressor: images ``[B, 3, H, W]`` -> heights ``[B, 1, H, W]``."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 1, 1),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images) * 10.0  # [B, 1, H, W], in units of 10 m


@dataclass
class ToyDenseConfig:
    name: Literal["toy_dense"] = "toy_dense"
    width: int = 8


@pytest.fixture
def toy_family():
    """The ``toy_dense`` family, registered for one test (no edit of attnkit needed)."""
    from attnkit.models.registry import FAMILIES, Family, register_family

    family = register_family(
        Family(
            name="toy_dense",
            schema=ToyDenseConfig,
            build=lambda cfg: ToyNet(cfg.model.width),
            task="dense_regression",
        )
    )
    yield family
    FAMILIES.remove("toy_dense")


TOY_CONFIG = """\
model: {name: toy_dense}
data: {name: synthetic, num_train: 32, num_val: 16, image_size: [32, 32], batch_size: 8,
       num_workers: 0}
loss: {kind: l1, bins: [5, 20]}
train: {epochs: 2, lr: 1e-3, eval_every_epochs: 1, log_every_steps: 1, clip_max_norm: 0.0}
"""


def _untrained_metrics(cfg_path) -> dict:
    """The val metrics of the model `attnkit train` starts from (same seed, same weights)."""
    from attnkit.config import load_config
    from attnkit.models import build_model
    from attnkit.tasks import task_of
    from attnkit.tasks.evaluate import run_evaluation
    from attnkit.train.sampling import make_loader
    from attnkit.train.step import seed_everything

    cfg = load_config(cfg_path)
    seed_everything(cfg.seed)
    model = build_model(cfg)
    task = task_of(cfg)
    val = task.build_dataset(cfg, "val")
    loader = make_loader(val, cfg.data.batch_size, cfg.seed, False, task.collate, 0)
    evaluator = task.build_evaluator(cfg, val)
    return run_evaluation(model, evaluator, loader, torch.device("cpu"), progress=False)


def test_dense_regression_end_to_end_with_a_family_registered_in_the_test(toy_family, tmp_path):
    from attnkit.cli import main

    cfg_path = tmp_path / "toy.yaml"
    cfg_path.write_text(TOY_CONFIG)
    run, evaluated = tmp_path / "run", tmp_path / "eval"
    assert main(["train", "--config", str(cfg_path), "--out", str(run), "--quiet"]) == 0
    checkpoint = run / "last.pt"
    assert main(["eval", "--checkpoint", str(checkpoint), "--out", str(evaluated), "--quiet"]) == 0

    metrics = json.loads((evaluated / "metrics.json").read_text())
    for key in ("mae", "rmse", "r2"):
        assert math.isfinite(metrics[key]), key
    bins = metrics["per_bin"]
    assert len(bins) == 3 and [b["hi"] for b in bins[:2]] == [5.0, 20.0]
    assert sum(b["count"] for b in bins) == metrics["num_pixels"] > 0
    assert metrics["num_pixels"] < 16 * 32 * 32  # nodata pixels are left out

    before = _untrained_metrics(cfg_path)
    assert metrics["rmse"] < before["rmse"], (before["rmse"], metrics["rmse"])

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r.get("kind") == "train"]
    assert len(train) == 8 and all(math.isfinite(r["loss"]) for r in train)
    assert sum(r.get("kind") == "eval" for r in records) == 2
