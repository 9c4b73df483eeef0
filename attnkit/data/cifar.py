"""CIFAR-10 from a local ``cifar-10-batches-py`` folder (torchvision's layout), never downloaded.

The folder holds ``data_batch_1`` .. ``data_batch_5`` (training), ``test_batch`` and
``batches.meta``: pickled dicts whose ``b"data"`` is a uint8 array ``[N, 3072]`` (each row a
channel-major 3x32x32 image), ``b"labels"`` a list of ints and ``b"label_names"`` (meta) the class
names. Pickles can run code when loaded, so they are read with :class:`_CifarUnpickler`, which
resolves only the few globals NumPy arrays need and refuses everything else. Any problem with the
files raises :class:`~attnkit.data.coco.DatasetError` naming the file.
"""

from __future__ import annotations

import codecs
import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from attnkit.data.coco import DatasetError

BATCHES_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_BATCH = "test_batch"
META_FILE = "batches.meta"
CIFAR10_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]
_SIDE = 32
_ROW = 3 * _SIDE * _SIDE  # 3072 bytes per image


def _numpy_reconstruct():
    try:  # NumPy >= 2
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # NumPy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


# The only globals a CIFAR batch may name. Both spellings of the array constructor occur: files
# written by NumPy 1.x (the real CIFAR files) say numpy.core, files written by NumPy 2 numpy._core.
# ``_codecs.encode`` is how Python 3 stores bytes at pickle protocol <= 2.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("_codecs", "encode"): lambda: codecs.encode,
}


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that builds dicts, lists, bytes and NumPy arrays, and nothing else."""

    def __init__(self, file, path: Path):
        super().__init__(file, encoding="bytes")
        self.path = path

    def find_class(self, module: str, name: str):
        resolve = _ALLOWED_GLOBALS.get((module, name))
        if resolve is None:
            raise DatasetError(f"refusing to unpickle {module}.{name} from {self.path}")
        return resolve()


def _load_pickle(path: Path) -> dict:
    """The dict pickled in ``path``, loaded with the restricted unpickler."""
    if not path.is_file():
        raise DatasetError(f"CIFAR-10 batch file missing: {path}")
    try:
        with path.open("rb") as f:
            obj = _CifarUnpickler(f, path).load()
    except DatasetError:
        raise
    except Exception as exc:  # truncated or corrupt: pickle raises many kinds
        raise DatasetError(
            f"cannot read CIFAR-10 batch file {path} (truncated or corrupt?): "
            f"{type(exc).__name__}: {exc}"
        ) from None
    if not isinstance(obj, dict):
        raise DatasetError(f"CIFAR-10 batch file {path} holds a {type(obj).__name__}, not a dict")
    return obj


def _field(batch: dict, key: str, path: Path):
    for k in (key.encode(), key):  # bytes keys in the real files, str if re-pickled by Python 3
        if k in batch:
            return batch[k]
    raise DatasetError(f"CIFAR-10 batch file {path} has no {key!r} entry")


def _read_batch(path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 ``[N, 32, 32, 3]`` and labels int64 ``[N]`` of one batch file."""
    batch = _load_pickle(path)
    data = _field(batch, "data", path)
    labels = _field(batch, "labels", path)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        kind = getattr(data, "dtype", type(data).__name__)
        raise DatasetError(f"CIFAR-10 batch file {path}: data is {kind}, expected a uint8 array")
    if data.ndim != 2 or data.shape[1] != _ROW:
        raise DatasetError(
            f"CIFAR-10 batch file {path}: data has shape {tuple(data.shape)}, "
            f"expected [N, {_ROW}] (3x32x32 images)"
        )
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        raise DatasetError(f"CIFAR-10 batch file {path}: labels are not integers") from None
    if labels.shape != (data.shape[0],):
        raise DatasetError(
            f"CIFAR-10 batch file {path}: {labels.size} labels for {data.shape[0]} images"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DatasetError(
            f"CIFAR-10 batch file {path}: labels span {labels.min()}..{labels.max()}, "
            f"expected 0..{num_classes - 1}"
        )
    images = data.reshape(-1, 3, _SIDE, _SIDE).transpose(0, 2, 3, 1)  # [N, 32, 32, 3]
    return np.ascontiguousarray(images), labels


def cifar10_dir(root: str | Path) -> Path:
    """The ``cifar-10-batches-py`` folder: ``root`` itself or ``root/cifar-10-batches-py``."""
    root = Path(root).expanduser()
    if (root / BATCHES_DIR).is_dir():
        return root / BATCHES_DIR
    if not root.is_dir():
        raise DatasetError(f"CIFAR-10 folder not found: {root}")
    if any((root / name).exists() for name in [*TRAIN_BATCHES, TEST_BATCH, META_FILE]):
        return root
    raise DatasetError(
        f"no CIFAR-10 batches in {root}: expected {root}/{BATCHES_DIR}/ or the files "
        f"data_batch_1..5, test_batch and batches.meta in {root} itself"
    )


def read_cifar10_classes(root: str | Path) -> list[str]:
    """The class names stored in ``batches.meta``."""
    path = cifar10_dir(root) / META_FILE
    names = _field(_load_pickle(path), "label_names", path)
    if not isinstance(names, list) or not names:
        raise DatasetError(f"CIFAR-10 meta file {path}: label_names is not a non-empty list")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def read_cifar10(root: str | Path, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images uint8 ``[N, 32, 32, 3]``, labels int64 ``[N]`` and the class names of ``split``.

    ``split`` "train" concatenates the five data batches; "val" and "test" read ``test_batch``
    (CIFAR-10 has no separate validation set).
    """
    if split == "train":
        names = TRAIN_BATCHES
    elif split in ("val", "test"):
        names = [TEST_BATCH]
    else:
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    folder = cifar10_dir(root)
    class_names = read_cifar10_classes(folder)
    parts = [_read_batch(folder / name, len(class_names)) for name in names]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    if len(images) == 0:
        raise DatasetError(
            f"the CIFAR-10 {split} split in {folder} is empty: {', '.join(names)} hold no "
            "images; copy the real files there again"
        )
    return images, labels, class_names


def _write_pickle(path: Path, obj: dict) -> None:
    # Protocol 4 stores bytes natively and arrays through _reconstruct, as the real files do
    # (protocol 5 would store arrays through numpy's _frombuffer instead).
    with path.open("wb") as f:
        pickle.dump(obj, f, protocol=4)


def _batch_dict(images: np.ndarray, labels: np.ndarray, label: str, offset: int) -> dict:
    data = np.ascontiguousarray(images.transpose(0, 3, 1, 2)).reshape(len(images), _ROW)
    return {
        b"batch_label": label.encode(),
        b"labels": [int(v) for v in labels],
        b"data": data,
        b"filenames": [f"image_{offset + i:06d}.png".encode() for i in range(len(images))],
    }


def write_cifar10_like(
    root: str | Path,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    batch_size: int | None = None,
    class_names: Sequence[str] = CIFAR10_CLASSES,
) -> Path:
    """Write ``root/cifar-10-batches-py`` in CIFAR-10's python format; returns that folder.

    ``train`` and ``test`` are (images uint8 ``[N, 32, 32, 3]``, labels ``[N]``). The training
    images go to the five files ``data_batch_1..5``: ``batch_size`` images per file (the last
    ones may hold fewer or none), or spread evenly over the five when ``batch_size`` is None. Used by tests and
    docs to make tiny stand-ins for the real folder.
    """
    folder = Path(root) / BATCHES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, (images, labels) in (("train", train), ("test", test)):
        images, labels = np.asarray(images), np.asarray(labels)
        if images.dtype != np.uint8 or images.shape[1:] != (_SIDE, _SIDE, 3):
            raise ValueError(f"{split} images must be uint8 [N, 32, 32, 3], got {images.shape}")
        if labels.shape != (len(images),):
            raise ValueError(f"{split}: {labels.shape} labels for {len(images)} images")
        arrays[split] = images, labels
    images, labels = arrays["train"]
    n = len(TRAIN_BATCHES)
    if batch_size is None:
        bounds = np.linspace(0, len(images), n + 1).round().astype(int)
    else:
        if batch_size < 1 or -(-len(images) // batch_size) > n:
            raise ValueError(f"batch_size={batch_size} needs more than {n} files")
        bounds = np.minimum(np.arange(n + 1) * batch_size, len(images))
    for i, name in enumerate(TRAIN_BATCHES):
        lo, hi = int(bounds[i]), int(bounds[i + 1])
        label = f"training batch {i + 1} of {n}"
        _write_pickle(folder / name, _batch_dict(images[lo:hi], labels[lo:hi], label, lo))
    images, labels = arrays["test"]
    _write_pickle(folder / TEST_BATCH, _batch_dict(images, labels, "testing batch 1 of 1", 0))
    meta = {
        b"label_names": [name.encode() for name in class_names],
        b"num_cases_per_batch": int(max(bounds[1:] - bounds[:-1])),
        b"num_vis": _ROW,
    }
    _write_pickle(folder / META_FILE, meta)
    return folder
