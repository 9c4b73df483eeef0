"""Classification data: the synthetic shapes, local CIFAR-10 files, class folders, transforms."""

from __future__ import annotations

import os
import pickle
import time

import numpy as np
import pytest
import torch
from PIL import Image

from attnkit.data.cifar import CIFAR10_CLASSES, read_cifar10, write_cifar10_like
from attnkit.data.classification import (
    ArrayClassification,
    ClassificationBatch,
    ImageFolderClassification,
    build_classification_dataset,
    classification_transforms,
    collate_classification,
)
from attnkit.data.coco import DatasetError
from attnkit.data.synthetic_classes import (
    SYNTH_CLASS_NAMES,
    SYNTH_CLASSES_MEAN,
    SYNTH_CLASSES_STD,
    VAL_STREAM,
    ensure_synthetic_classes,
    make_synthetic_classes,
)

# --------------------------------------------------------------------------- synthetic


def test_synthetic_same_seed_same_bytes_other_seed_differs():
    images, labels = make_synthetic_classes(40, seed=3)
    again, labels_again = make_synthetic_classes(40, seed=3)
    other, _ = make_synthetic_classes(40, seed=4)
    assert images.dtype == np.uint8 and images.shape == (40, 32, 32, 3)
    assert labels.dtype == np.int64 and labels.shape == (40,)
    assert images.tobytes() == again.tobytes() and labels.tobytes() == labels_again.tobytes()
    assert images.tobytes() != other.tobytes()
    assert len(SYNTH_CLASS_NAMES) == 10 == len(set(SYNTH_CLASS_NAMES))


def test_synthetic_labels_are_balanced():
    _, labels = make_synthetic_classes(100, seed=0)
    assert np.bincount(labels, minlength=10).tolist() == [10] * 10
    _, labels = make_synthetic_classes(23, seed=1)
    counts = np.bincount(labels, minlength=10)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 23


def test_synthetic_mean_std_constants_match_the_data():
    images, _ = make_synthetic_classes(2000, seed=1)
    pixels = images.reshape(-1, 3) / 255.0
    np.testing.assert_allclose(pixels.mean(axis=0), SYNTH_CLASSES_MEAN, atol=1e-2)
    np.testing.assert_allclose(pixels.std(axis=0), SYNTH_CLASSES_STD, atol=1e-2)


def test_ensure_synthetic_classes_writes_once_with_a_separate_val_stream(tmp_path):
    root = ensure_synthetic_classes(30, 20, seed=5, cache_dir=tmp_path)
    train, val = np.load(root / "train.npz"), np.load(root / "val.npz")
    expected_train = make_synthetic_classes(30, 5)
    expected_val = make_synthetic_classes(20, (5, VAL_STREAM))
    assert np.array_equal(train["images"], expected_train[0])
    assert np.array_equal(train["labels"], expected_train[1])
    assert np.array_equal(val["images"], expected_val[0])
    assert not np.array_equal(val["images"], expected_train[0][:20])
    stamp = (root / "train.npz").stat().st_mtime_ns
    assert ensure_synthetic_classes(30, 20, seed=5, cache_dir=tmp_path) == root
    assert (root / "train.npz").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [root.name]  # no temporary folder left


# --------------------------------------------------------------------------- CIFAR-10


def _tiny_split(n: int, seed: int):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n)


@pytest.fixture
def cifar_root(tmp_path):
    """A tiny CIFAR-10 folder: 12 training images in five batches, 4 test images."""
    train, test = _tiny_split(12, 0), _tiny_split(4, 1)
    write_cifar10_like(tmp_path, train=train, test=test)
    return tmp_path, train, test


def test_cifar_round_trip_from_either_root(cifar_root):
    root, train, test = cifar_root
    for where in (root, root / "cifar-10-batches-py"):
        images, labels, names = read_cifar10(where, "train")
        assert images.dtype == np.uint8 and images.shape == (12, 32, 32, 3)
        assert labels.dtype == np.int64
        assert np.array_equal(images, train[0]) and np.array_equal(labels, train[1])
        assert names == CIFAR10_CLASSES
        for split in ("val", "test"):
            images, labels, _ = read_cifar10(where, split)
            assert np.array_equal(images, test[0]) and np.array_equal(labels, test[1])


def test_cifar_files_have_the_real_layout(cifar_root):
    root, train, _ = cifar_root
    folder = root / "cifar-10-batches-py"
    with (folder / "data_batch_1").open("rb") as f:
        batch = pickle.load(f, encoding="bytes")
    assert set(batch) == {b"batch_label", b"labels", b"data", b"filenames"}
    data = batch[b"data"]
    assert data.dtype == np.uint8 and data.shape[1] == 3072 and isinstance(batch[b"labels"], list)
    assert np.array_equal(data[0, :1024], train[0][0, :, :, 0].reshape(-1))  # channel-major
    with (folder / "batches.meta").open("rb") as f:
        assert pickle.load(f, encoding="bytes")[b"label_names"][0] == b"airplane"


def test_cifar_batch_size_splits_the_training_files(tmp_path):
    train, test = _tiny_split(12, 0), _tiny_split(2, 1)
    write_cifar10_like(tmp_path, train=train, test=test, batch_size=3)
    assert np.array_equal(read_cifar10(tmp_path, "train")[0], train[0])
    with pytest.raises(ValueError, match="batch_size"):
        write_cifar10_like(tmp_path / "b", train=train, test=test, batch_size=2)


def test_cifar_reads_numpy1_and_protocol2_pickles(cifar_root):
    """The real files name numpy.core (NumPy 1.x); Python 3 at protocol 2 stores bytes via
    _codecs.encode. Both must load."""
    root, train, _ = cifar_root
    path = root / "cifar-10-batches-py" / "data_batch_1"
    with path.open("rb") as f:
        batch = pickle.load(f)
    data = pickle.dumps(batch, protocol=2)
    data = data.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    assert b"numpy.core.multiarray\n" in data and b"_codecs" in data
    path.write_bytes(data)
    images, labels, _ = read_cifar10(root, "train")
    assert np.array_equal(images, train[0]) and np.array_equal(labels, train[1])


class _Evil:
    """Pickles to a call of os.system: what a hostile batch file would hold."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar_malicious_pickle_is_refused_without_running(cifar_root):
    root, _, _ = cifar_root
    marker = root / "pwned"
    path = root / "cifar-10-batches-py" / "data_batch_2"
    path.write_bytes(pickle.dumps({b"data": _Evil(marker), b"labels": []}, protocol=2))
    with pytest.raises(DatasetError, match=r"refusing to unpickle (os|posix|nt)\.system") as err:
        read_cifar10(root, "train")
    assert "data_batch_2" in str(err.value)
    assert not marker.exists()


def test_cifar_missing_folder_and_files(cifar_root, tmp_path):
    root, _, _ = cifar_root
    with pytest.raises(DatasetError, match="CIFAR-10 folder not found: .*nowhere"):
        read_cifar10(tmp_path / "nowhere", "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no CIFAR-10 batches in .*empty"):
        read_cifar10(tmp_path / "empty", "train")
    (root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DatasetError, match="batch file missing: .*data_batch_3"):
        read_cifar10(root, "train")
    (root / "cifar-10-batches-py" / "batches.meta").unlink()
    with pytest.raises(DatasetError, match="batch file missing: .*batches.meta"):
        read_cifar10(root, "test")


def test_cifar_truncated_and_wrong_size(cifar_root):
    root, _, _ = cifar_root
    folder = root / "cifar-10-batches-py"
    path = folder / "test_batch"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DatasetError, match="test_batch .*truncated or corrupt"):
        read_cifar10(root, "test")
    bad = {b"data": np.zeros((2, 3000), np.uint8), b"labels": [0, 1]}
    (folder / "data_batch_4").write_bytes(pickle.dumps(bad, protocol=4))
    with pytest.raises(DatasetError, match=r"data_batch_4: data has shape \(2, 3000\)"):
        read_cifar10(root, "train")
    bad = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}
    (folder / "data_batch_4").write_bytes(pickle.dumps(bad, protocol=4))
    with pytest.raises(DatasetError, match="data_batch_4: 1 labels for 2 images"):
        read_cifar10(root, "train")


# --------------------------------------------------------------------------- class folders


def _write_folder(root, sizes=((8, 8),) * 3):
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i, (h, w) in enumerate(sizes):
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{i}.png")


def test_image_folder_two_classes(tmp_path):
    _write_folder(tmp_path / "train")
    _write_folder(tmp_path / "val", sizes=((6, 10),) * 3)
    data = ImageFolderClassification(tmp_path / "train")
    assert data.class_names == ["cat", "dog"] and data.num_classes == 2 and len(data) == 6
    image, label = data[4]
    assert image.shape == (3, 8, 8) and image.dtype == torch.float32 and label == 1
    val = build_classification_dataset("folder", "val", root=tmp_path, image_size=16)
    assert val[0][0].shape == (3, 16, 16) and len(val) == 6
    (tmp_path / "train" / "dog" / "9.png").write_bytes(b"not a png")
    data = ImageFolderClassification(tmp_path / "train")
    with pytest.raises(DatasetError, match=r"cannot read image .*dog.9\.png"):
        data[len(data) - 1]


def test_image_folder_without_class_subfolders(tmp_path):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "loose.png")
    with pytest.raises(DatasetError, match="no class subfolders") as err:
        ImageFolderClassification(tmp_path)
    assert str(tmp_path) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(DatasetError, match="image folder not found"):
        ImageFolderClassification(tmp_path / "missing")


# --------------------------------------------------------------------------- transforms


MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)


def _image():
    return np.random.default_rng(7).integers(0, 256, (32, 32, 3), dtype=np.uint8)


def test_val_transform_is_deterministic_and_normalised():
    image = _image()
    image[5, 7] = (10, 128, 250)
    t = classification_transforms(False, MEAN, STD)
    out = t(image)
    assert type(out) is torch.Tensor and out.shape == (3, 32, 32) and out.dtype == torch.float32
    expected = [(10 / 255 - 0.5) / 0.2, (128 / 255 - 0.4) / 0.25, (250 / 255 - 0.3) / 0.5]
    torch.testing.assert_close(out[:, 5, 7], torch.tensor(expected), rtol=0, atol=1e-5)
    assert torch.equal(out, t(image))


def test_train_transform_crops_and_flips_under_the_global_seed():
    image = _image()
    val = classification_transforms(False, MEAN, STD)(image)
    train = classification_transforms(True, MEAN, STD)
    outs = []
    for seed in range(8):
        torch.manual_seed(seed)
        a = train(image)
        torch.manual_seed(seed)
        assert torch.equal(a, train(image))
        assert a.shape == (3, 32, 32)
        outs.append(a)
    assert sum(not torch.equal(o, val) for o in outs) >= 6

    flips = classification_transforms(True, MEAN, STD, pad=0)
    seen = set()
    for seed in range(12):
        torch.manual_seed(seed)
        out = flips(image)
        assert torch.equal(out, val) or torch.equal(out, val.flip(-1))
        seen.add(torch.equal(out, val))
    assert seen == {True, False}

    # Pad-and-crop only: a window of the zero-padded image (zero pixels normalise to -mean/std).
    crops = classification_transforms(True, MEAN, STD, hflip=False)
    fill = (-torch.tensor(MEAN) / torch.tensor(STD))[:, None, None]
    padded = fill.expand(3, 40, 40).clone()
    padded[:, 4:36, 4:36] = val
    for seed in range(4):
        torch.manual_seed(seed)
        out = crops(image)
        windows = [padded[:, y : y + 32, x : x + 32] for y in range(9) for x in range(9)]
        assert any(torch.allclose(out, w, atol=1e-6) for w in windows)


# --------------------------------------------------------------------------- batches, building


def test_collate_and_batch_interface():
    images, labels = make_synthetic_classes(6, seed=0)
    transform = classification_transforms(True, SYNTH_CLASSES_MEAN, SYNTH_CLASSES_STD)
    data = ArrayClassification(images, labels, SYNTH_CLASS_NAMES, transform)
    assert data.num_classes == 10 and len(data) == 6
    batch = collate_classification([data[i] for i in range(4)])
    assert isinstance(batch, ClassificationBatch) and len(batch) == 4
    assert batch.images.shape == (4, 3, 32, 32) and batch.images.dtype == torch.float32
    assert batch.labels.dtype == torch.int64 and batch.labels.tolist() == labels[:4].tolist()
    assert set(batch.inputs) == {"images"} and batch.inputs["images"] is batch.images
    assert batch.targets is batch.labels
    moved = batch.to("cpu")
    assert moved is not batch and torch.equal(moved.images, batch.images)


def test_build_classification_dataset(cifar_root):
    train = build_classification_dataset("synthetic", "train", num_train=20, num_val=10, seed=2)
    val = build_classification_dataset("synthetic", "val", num_train=20, num_val=10, seed=2)
    assert len(train) == 20 and len(val) == 10
    assert train.class_names == SYNTH_CLASS_NAMES and train.num_classes == 10
    image, label = val[3]
    assert image.shape == (3, 32, 32) and isinstance(label, int)
    assert torch.equal(image, val[3][0])  # val: no augmentation

    with pytest.raises(DatasetError, match="data.root is not set"):
        build_classification_dataset("cifar10", "train")
    root, _, test = cifar_root
    data = build_classification_dataset("cifar10", "test", root=root)
    assert len(data) == 4 and data.class_names == CIFAR10_CLASSES
    assert [data[i][1] for i in range(4)] == test[1].tolist()
    with pytest.raises(ValueError, match="unknown classification dataset"):
        build_classification_dataset("mnist", "train")


# --------------------------------------------------------------------------- difficulty


def _as_tensor(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255)  # [N, 3, 32, 32]
    mean, std = torch.tensor(SYNTH_CLASSES_MEAN), torch.tensor(SYNTH_CLASSES_STD)
    return (x - mean[:, None, None]) / std[:, None, None]


@pytest.mark.slow
def test_synthetic_is_hard_for_a_linear_probe_but_not_for_a_small_cnn():
    torch.manual_seed(0)
    x_train, y_train = make_synthetic_classes(2000, 0)
    x_val, y_val = make_synthetic_classes(1000, (0, VAL_STREAM))
    x_train, x_val = _as_tensor(x_train), _as_tensor(x_val)
    y_train, y_val = torch.from_numpy(y_train), torch.from_numpy(y_val)

    start = time.perf_counter()
    linear = torch.nn.Linear(3 * 32 * 32, 10)
    opt = torch.optim.LBFGS(linear.parameters(), max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        logits = linear(x_train.flatten(1))
        loss = (
            torch.nn.functional.cross_entropy(logits, y_train) + 1e-3 * linear.weight.square().sum()
        )
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        linear_acc = (linear(x_val.flatten(1)).argmax(1) == y_val).float().mean().item()
    linear_s = time.perf_counter() - start

    start = time.perf_counter()
    cnn = torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),  # [B, 32, 16, 16]
        torch.nn.Conv2d(32, 64, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),  # [B, 64, 8, 8]
        torch.nn.Conv2d(64, 64, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveMaxPool2d(1),
        torch.nn.Flatten(),  # [B, 64]
        torch.nn.Linear(64, 10),
    )
    epochs, batch_size = 12, 64
    steps = epochs * -(-len(y_train) // batch_size)
    opt = torch.optim.Adam(cnn.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    for _ in range(epochs):
        order = torch.randperm(len(y_train))
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            xb = x_train[idx]
            flip = torch.rand(len(idx)) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            loss = torch.nn.functional.cross_entropy(cnn(xb), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    with torch.no_grad():
        cnn_acc = (cnn(x_val).argmax(1) == y_val).float().mean().item()
    cnn_s = time.perf_counter() - start
    print(
        f"\nlinear probe val acc {linear_acc:.3f} ({linear_s:.1f}s), "
        f"small CNN val acc {cnn_acc:.3f} ({cnn_s:.1f}s)"
    )
    assert linear_acc < 0.45
    assert cnn_acc >= linear_acc + 0.2
