"""Real raster folders for dense regression: GeoTIFF / PNG reading, per-band statistics saved
beside the data, random training crops, sliding-window evaluation and ``attnkit train`` on a
tiny 4-band GeoTIFF folder."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from torch import nn

from attnkit.config.schema import DenseDataConfig
from attnkit.data import band_stats as band_stats_module
from attnkit.data.band_stats import BAND_STATS_FILE, band_stats_for
from attnkit.data.coco import DatasetError
from attnkit.data.dense import (
    DenseArrayDataset,
    DenseFolderDataset,
    build_dense_dataset,
    random_flips,
)
from attnkit.data.rasters import raster_shape, read_raster, read_target, read_window
from attnkit.errors import ConfigError
from attnkit.tasks.sliding_window import sliding_window_predict, tile_starts

NODATA = -9999.0
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "dense" / "synth_swin_segformer.yaml"


def _write_tif_pair(root, split, stem, h, w, rng, band_first=False):
    """A 4-band uint16 image and a float32 target with some nodata; returns (image, target)."""
    image = rng.integers(0, 4000, (h, w, 4), dtype=np.uint16)
    image[..., 3] += 20000  # a band of another scale, as a NIR band might be
    target = (image[..., 0] / 200.0).astype(np.float32)  # learnable from band 0
    target[rng.random((h, w)) < 0.1] = NODATA
    (root / split / "images").mkdir(parents=True, exist_ok=True)
    (root / split / "targets").mkdir(parents=True, exist_ok=True)
    stored = np.moveaxis(image, -1, 0) if band_first else image
    kw = {"planarconfig": "separate" if band_first else "contig", "photometric": "minisblack"}
    tifffile.imwrite(root / split / "images" / f"{stem}.tif", stored, **kw)
    tifffile.imwrite(root / split / "targets" / f"{stem}.tif", target)
    return image, target


def _tif_folder(root, sizes=((40, 48), (36, 44), (48, 40)), val=((37, 45),), seed=0):
    rng = np.random.default_rng(seed)
    written = {"train": [], "val": []}
    for split, shapes in (("train", sizes), ("val", val)):
        for i, (h, w) in enumerate(shapes):
            written[split].append(_write_tif_pair(root, split, f"t{i}", h, w, rng, i == 1))
    return written


# --------------------------------------------------------------------------- reading


def test_read_raster_layouts_and_headers(tmp_path):
    rng = np.random.default_rng(0)
    hwc = rng.integers(0, 65535, (20, 30, 4), dtype=np.uint16)
    cases = {
        "hwc.tif": (hwc, {"photometric": "minisblack", "planarconfig": "contig"}),
        "hwc_pages.tif": (hwc, {"photometric": "minisblack"}),
        "chw_separate.tif": (
            np.moveaxis(hwc, -1, 0),
            {"photometric": "minisblack", "planarconfig": "separate"},
        ),
        "chw_pages.tif": (np.moveaxis(hwc, -1, 0), {"photometric": "minisblack"}),
        "zlib.tif": (hwc, {"photometric": "minisblack", "compression": "zlib"}),
    }
    for name, (data, kw) in cases.items():
        tifffile.imwrite(tmp_path / name, data, **kw)
        got = read_raster(tmp_path / name)
        assert got.dtype == np.uint16 and got.shape == (20, 30, 4), name
        np.testing.assert_array_equal(got, hwc, err_msg=name)
        assert raster_shape(tmp_path / name) == (20, 30, 4), name
        np.testing.assert_array_equal(read_window(tmp_path / name, 5, 7, 10, 40), hwc[5:15, 7:])

    np.save(tmp_path / "chw.npy", np.moveaxis(hwc, -1, 0))
    np.testing.assert_array_equal(read_raster(tmp_path / "chw.npy"), hwc)
    assert raster_shape(tmp_path / "chw.npy") == (20, 30, 4)
    np.testing.assert_array_equal(read_window(tmp_path / "chw.npy", 1, 2, 3, 4), hwc[1:4, 2:6])

    rgb = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "grey.png")
    np.testing.assert_array_equal(read_raster(tmp_path / "rgb.png"), rgb)
    np.testing.assert_array_equal(read_raster(tmp_path / "grey.png"), rgb[..., :1])
    assert raster_shape(tmp_path / "grey.png") == (9, 11, 1)

    target = rng.normal(size=(9, 11)).astype(np.float32)
    tifffile.imwrite(tmp_path / "target.tif", target)
    Image.fromarray(target, mode="F").save(tmp_path / "target_pil.tif")
    for name in ("target.tif", "target_pil.tif"):
        got = read_target(tmp_path / name)
        assert got.dtype == np.float32 and got.shape == (9, 11)
        np.testing.assert_array_equal(got, target)


def test_unreadable_and_odd_files_name_the_file(tmp_path):
    (tmp_path / "bad.tif").write_bytes(b"not a tiff at all")
    with pytest.raises(DatasetError, match=r"cannot read image .*bad\.tif") as err:
        read_raster(tmp_path / "bad.tif", "image")
    assert "\n" not in str(err.value)
    with pytest.raises(DatasetError, match=r"cannot read raster .*bad\.tif"):
        raster_shape(tmp_path / "bad.tif")
    np.save(tmp_path / "4d.npy", np.zeros((2, 3, 4, 5), np.float32))
    with pytest.raises(DatasetError, match=r"4d\.npy must be a 2-D or 3-D raster"):
        read_raster(tmp_path / "4d.npy")
    np.save(tmp_path / "strings.npy", np.array([["a", "b"], ["c", "d"]]))
    with pytest.raises(DatasetError, match=r"strings\.npy must hold real numbers"):
        read_raster(tmp_path / "strings.npy")
    tifffile.imwrite(tmp_path / "two.tif", np.zeros((5, 6, 2), np.float32))
    with pytest.raises(DatasetError, match=r"target .*two\.tif must be .*one band"):
        read_target(tmp_path / "two.tif")


# --------------------------------------------------------------------------- band statistics


def test_band_stats_match_numpy_and_are_saved_once(tmp_path, monkeypatch):
    written = _tif_folder(tmp_path)
    cfg = DenseDataConfig(name="folder", root=str(tmp_path), nodata=NODATA, band_stats="auto")
    train = build_dense_dataset(cfg, "train", train=False)
    pixels = np.concatenate([img[tgt != NODATA] for img, tgt in written["train"]]).astype(float)
    np.testing.assert_allclose(train.mean, pixels.mean(axis=0), rtol=1e-10)
    np.testing.assert_allclose(train.std, pixels.std(axis=0), rtol=1e-8)
    assert train.bands == 4 and train.scale == 1.0

    saved_path = tmp_path / BAND_STATS_FILE
    saved = json.loads(saved_path.read_text())
    assert saved["count"] == len(pixels) and saved["bands"] == 4
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # atomic

    # val reuses the saved numbers: computing again would fail here.
    def refuse(*args):
        raise AssertionError("the band statistics were computed again")

    monkeypatch.setattr(band_stats_module, "compute_band_stats", refuse)
    val = build_dense_dataset(cfg, "val")
    assert val.mean == train.mean and val.std == train.std
    image, maps = val[0]
    raw, target = written["val"][0]
    expected = (raw - np.array(train.mean)) / np.array(train.std)
    np.testing.assert_allclose(image.permute(1, 2, 0).numpy(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(maps["valid"][0].numpy(), target != NODATA)
    monkeypatch.undo()

    # Rewriting a train file changes the hash: the statistics are computed again.
    raw0, target0 = written["train"][0]
    changed = raw0.copy()
    changed[..., 2] = 0
    path = tmp_path / "train" / "images" / "t0.tif"
    tifffile.imwrite(path, changed, photometric="minisblack", planarconfig="contig")
    stat = (tmp_path / "train" / "images" / "t0.tif").stat()
    os.utime(tmp_path / "train" / "images" / "t0.tif", ns=(stat.st_atime_ns, stat.st_mtime_ns + 5))
    pairs = DenseFolderDataset(tmp_path / "train", NODATA, rgb=False).pairs
    stats = band_stats_for(tmp_path, pairs, NODATA)
    assert stats.mean[2] < train.mean[2] and stats.mean[0] == pytest.approx(train.mean[0])
    assert json.loads(saved_path.read_text())["files_hash"] != saved["files_hash"]


# --------------------------------------------------------------------------- crops


def test_random_crops_are_inside_and_aligned(tmp_path):
    _tif_folder(tmp_path, sizes=((40, 48), (20, 44)))
    cfg = DenseDataConfig(
        name="folder", root=str(tmp_path), nodata=NODATA, band_stats="auto", crop_size=[24, 32]
    )
    cropped = build_dense_dataset(cfg, "train")
    whole = build_dense_dataset(cfg, "train", train=False)
    for seed in range(6):
        torch.manual_seed(seed)
        got_image, got = cropped[0]
        torch.manual_seed(seed)  # the same draws by hand: the window, then the flips
        top = int(torch.randint(40 - 24 + 1, ()))
        left = int(torch.randint(48 - 32 + 1, ()))
        assert 0 <= top <= 40 - 24 and 0 <= left <= 48 - 32
        image, maps = whole[0]
        window = (slice(None), slice(top, top + 24), slice(left, left + 32))
        expected = random_flips(image[window], maps["target"][window], maps["valid"][window])
        assert torch.equal(got_image, expected[0]) and got_image.shape == (4, 24, 32)
        assert torch.equal(got["target"], expected[1]) and torch.equal(got["valid"], expected[2])

    # A raster lower than the crop is padded with invalid pixels up to the crop size.
    torch.manual_seed(0)
    image, maps = cropped[1]
    assert image.shape == (4, 24, 32) and maps["valid"].shape == (1, 24, 32)
    rows = maps["valid"][0].any(dim=1)
    assert rows[:20].any() and not rows[20:].any()


def test_in_memory_crops_keep_the_size():
    images = np.random.default_rng(0).integers(0, 256, (2, 20, 28, 3), dtype=np.uint8)
    targets = np.ones((2, 20, 28), np.float32)
    data = DenseArrayDataset(images, targets, (0.5,) * 3, (0.2,) * 3, True, crop_size=[16, 32])
    image, maps = data[0]
    assert image.shape == (3, 16, 32) and maps["valid"].shape == (1, 16, 32)
    assert maps["valid"][0, :, :28].all() and not maps["valid"][0, :, 28:].any()
    assert DenseArrayDataset(images, targets, (0,) * 3, (1,) * 3)[0][0].shape == (3, 20, 28)


# --------------------------------------------------------------------------- sliding window


def test_tile_starts_cover_with_the_last_tile_at_the_edge():
    assert tile_starts(37, 16, 12) == [0, 12, 21]
    assert tile_starts(53, 16, 12) == [0, 12, 24, 36, 37]
    assert tile_starts(10, 16, 12) == [0] and tile_starts(16, 16, 16) == [0]


def test_sliding_window_is_exact_for_a_pointwise_model_and_covers_every_pixel():
    torch.manual_seed(0)
    model = nn.Conv2d(4, 2, 1)
    images = torch.randn(2, 4, 37, 53)
    with torch.no_grad():
        full = model(images)
        tiled = sliding_window_predict(model, images, [16, 16], 0.25)
    assert tiled.shape == (2, 2, 37, 53)
    torch.testing.assert_close(tiled, full, atol=1e-6, rtol=1e-6)

    calls = []

    def ones(tiles):
        calls.append(tuple(tiles.shape[-2:]))
        return torch.ones(tiles.shape[0], 1, *tiles.shape[-2:])

    covered = sliding_window_predict(ones, images, [16, 16], 0.25)
    assert torch.isfinite(covered).all() and torch.allclose(covered, torch.ones(()))
    assert len(calls) == 3 * 5 and set(calls) == {(16, 16)}
    small = sliding_window_predict(ones, images[:, :, :10, :12], [16, 16], 0.5)
    assert small.shape == (2, 1, 10, 12) and len(calls) == 16  # one whole-image call
    with pytest.raises(ValueError, match="overlap"):
        sliding_window_predict(model, images, [16, 16], 1.0)


# --------------------------------------------------------------------------- errors


def test_folder_errors_missing_target_band_count_unreadable(tmp_path):
    from attnkit.config import load_config
    from attnkit.tasks import task_of

    _tif_folder(tmp_path, sizes=((24, 24),), val=((24, 24),))
    overrides = [
        "data.name=folder",
        f"data.root={tmp_path}",
        f"data.nodata={NODATA}",
        "data.band_stats=auto",
    ]
    with pytest.raises(ConfigError, match="eval_overlap"):
        load_config(CONFIG, [*overrides, "data.eval_overlap=0.95"])
    cfg = load_config(CONFIG, overrides)
    task = task_of(cfg)
    dataset = task.build_dataset(cfg, "train")
    with pytest.raises(ConfigError, match=r"model\.in_chans is 3 .* 4 bands.*in_chans=4"):
        task.check(cfg, dataset)
    task.check(load_config(CONFIG, [*overrides, "model.in_chans=4"]), dataset)

    imagenet = load_config(CONFIG, [*overrides[:3], "model.in_chans=4"])
    with pytest.raises(DatasetError, match=r"t0\.tif has 4 band.*data\.band_stats=auto"):
        task.build_dataset(imagenet, "train")

    (tmp_path / "train" / "targets" / "t0.tif").unlink()
    with pytest.raises(DatasetError, match=r"no target for image .*t0\.tif: expected .*t0\.npy"):
        task.build_dataset(cfg, "train")
    with pytest.raises(DatasetError, match=r"band_stats=auto needs the train split: no target"):
        task.build_dataset(cfg, "val")
    # A val / test folder shipped without its train split uses the saved statistics.
    saved = json.loads((tmp_path / BAND_STATS_FILE).read_text())
    os.rename(tmp_path / "train", tmp_path / "elsewhere")
    assert list(task.build_dataset(cfg, "val").mean) == saved["mean"]
    (tmp_path / BAND_STATS_FILE).unlink()
    with pytest.raises(DatasetError, match=r"band_stats.json, none saved yet.*not found"):
        task.build_dataset(cfg, "val")

    (tmp_path / "val" / "images" / "t0.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(DatasetError, match=r"cannot read image .*val.images.t0\.tif"):
        DenseFolderDataset(tmp_path / "val", NODATA, rgb=False)


# --------------------------------------------------------------------------- end to end


def test_attnkit_train_on_a_four_band_geotiff_folder(tmp_path, monkeypatch):
    from attnkit.cli import main
    from attnkit.tasks import sliding_window

    tiled = []
    predict = sliding_window.sliding_window_predict

    def counted(model_fn, images, window, overlap):
        tiled.append((tuple(images.shape), list(window), overlap))
        return predict(model_fn, images, window, overlap)

    monkeypatch.setattr(sliding_window, "sliding_window_predict", counted)

    _tif_folder(tmp_path / "data", sizes=((40, 48), (36, 44), (48, 40), (40, 40)))
    out = tmp_path / "run"
    overrides = [
        "data.name=folder",
        f"data.root={tmp_path / 'data'}",
        f"data.nodata={NODATA}",
        "data.band_stats=auto",
        "data.crop_size=[32, 32]",
        "data.eval_window=[32, 32]",
        "data.eval_overlap=0.25",
        "data.num_workers=0",
        "data.batch_size=4",
        "model.in_chans=4",
        "train.epochs=1",
        "train.eval_every_epochs=1",
        "train.warmup_steps=0",
        "train.log_every_steps=1",
    ]
    code = main(["train", "--config", str(CONFIG), "--out", str(out), "--quiet", *overrides])
    assert code == 0
    assert (tmp_path / "data" / BAND_STATS_FILE).is_file()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r.get("kind") == "eval"]
    assert evals, records
    for key in ("mae", "rmse", "r2"):
        assert math.isfinite(evals[-1][key]), key
    assert 0 < evals[-1]["num_pixels"] < 37 * 45
    assert tiled and tiled[-1] == ((1, 4, 37, 45), [32, 32], 0.25)  # the val raster, tiled
    train = [r for r in records if r.get("kind") == "train"]
    assert train and all(math.isfinite(r["loss"]) for r in train)

    evaluated = tmp_path / "eval"  # attnkit eval reads the saved band statistics again
    assert (
        main(["eval", "--checkpoint", str(out / "last.pt"), "--out", str(evaluated), "--quiet"])
        == 0
    )
    metrics = json.loads((evaluated / "metrics.json").read_text())
    assert metrics["rmse"] == pytest.approx(evals[-1]["rmse"], rel=1e-5)
