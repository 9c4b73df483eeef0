"""COCO-format detection data: real COCO 2017 or the synthetic shapes, one loader for both.

The folder layout is COCO 2017's: ``root/{split}2017/*.jpg`` and
``root/annotations/instances_{split}2017.json``. Bad data is reported, never silently used:
the annotation file is checked entry by entry when the dataset is opened (see
:mod:`attnkit.data.coco_file`: an empty, malformed or incomplete file, or a ``bbox`` that is not
four finite numbers, is a :class:`DatasetError` naming the file and the annotation id), as is a
split without images or without its image folder; missing or unreadable images raise
:class:`DatasetError` naming the file when read; boxes that leave their image are clipped and
degenerate ones dropped, both counted and logged once when the dataset is opened; images
without annotations are kept; grayscale, palette and RGBA images become RGB. Whether the
category ids fit the model is checked by the detection task (``DetectionTask.check``), which
knows ``model.num_classes``.
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from pycocotools.coco import COCO

from attnkit.data.coco_file import read_coco_file
from attnkit.errors import DataError

log = logging.getLogger(__name__)


DatasetError = DataError
"""The name earlier code used for :class:`attnkit.errors.DataError`."""


@dataclass
class AnnotationReport:
    """What opening a dataset had to repair in its annotations."""

    images: int = 0
    annotations: int = 0
    clipped: int = 0
    dropped: int = 0
    crowd_skipped: int = 0
    images_without_objects: int = 0
    examples: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        if len(self.examples) < 5:
            self.examples.append(text)


def coco_paths(root: str | Path, split: str) -> tuple[Path, Path]:
    """The image folder and annotation file of ``split`` under a COCO-format ``root``."""
    root = Path(root)
    image_dir = root / f"{split}2017"
    ann_file = root / "annotations" / f"instances_{split}2017.json"
    if not ann_file.is_file():
        raise DatasetError(
            f"annotation file not found: {ann_file} (expected COCO 2017 layout: "
            f"{root}/annotations/instances_{split}2017.json and {root}/{split}2017/*.jpg)"
        )
    return image_dir, ann_file


def load_coco_quietly(ann_file: str | Path) -> COCO:
    """pycocotools' COCO index of a checked annotation file (see :func:`read_coco_file`),
    without its prints."""
    coco = COCO()
    coco.dataset = read_coco_file(ann_file)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


class CocoDetection(torch.utils.data.Dataset):
    """Images and detection targets (see ``attnkit.data.transforms`` for the target format)."""

    def __init__(self, root: str | Path, split: str = "val", transforms=None):
        self.image_dir, self.ann_file = coco_paths(root, split)
        self.coco = load_coco_quietly(self.ann_file)
        self.ids = sorted(self.coco.imgs)
        if not self.ids:
            raise DatasetError(
                f"{self.ann_file}: the {split} split has no images (its 'images' list is "
                "empty): use an annotation file that lists the split's images"
            )
        if not self.image_dir.is_dir():
            raise DatasetError(
                f"image folder not found: {self.image_dir} ({self.ann_file} lists "
                f"{len(self.ids)} images, expected in that folder)"
            )
        self.transforms = transforms
        self.report = AnnotationReport(images=len(self.ids))
        self._targets = {i: self._clean_annotations(i) for i in self.ids}
        if self.report.clipped or self.report.dropped:
            log.warning(
                "%s: clipped %d boxes to their image and dropped %d degenerate boxes (of %d); "
                "e.g. %s",
                self.ann_file,
                self.report.clipped,
                self.report.dropped,
                self.report.annotations,
                "; ".join(self.report.examples),
            )

    @property
    def categories(self) -> dict[int, str]:
        """Category id -> name (the id itself where the file gives no name)."""
        cats = self.coco.loadCats(self.coco.getCatIds())
        return {c["id"]: str(c.get("name", c["id"])) for c in cats}

    def category_ids(self) -> dict[int, int | None]:
        """Every category id of the file: the declared ones and those annotations use, each
        with the id of one annotation that uses it (None if none does), for error messages."""
        used: dict[int, int | None] = dict.fromkeys(self.coco.getCatIds())
        for ann in self.coco.dataset["annotations"]:
            if used.get(ann["category_id"]) is None:
                used[ann["category_id"]] = ann["id"]
        return used

    def _clean_annotations(self, image_id: int) -> dict:
        """Boxes as clipped xyxy; degenerate and crowd boxes removed (counted in the report)."""
        info = self.coco.imgs[image_id]
        w, h = float(info["width"]), float(info["height"])
        boxes, labels, areas = [], [], []
        anns = self.coco.imgToAnns.get(image_id, [])
        for ann in anns:
            self.report.annotations += 1
            if ann.get("iscrowd", 0):
                self.report.crowd_skipped += 1
                continue
            x, y, bw, bh = (float(v) for v in ann["bbox"])
            x0, y0, x1, y1 = max(0.0, x), max(0.0, y), min(w, x + bw), min(h, y + bh)
            if x1 <= x0 or y1 <= y0:
                self.report.dropped += 1
                self.report.note(f"annotation {ann.get('id')} of {info['file_name']}: empty box")
                continue
            if (x0, y0, x1, y1) != (x, y, x + bw, y + bh):
                self.report.clipped += 1
                self.report.note(f"annotation {ann.get('id')} of {info['file_name']}: clipped")
            boxes.append([x0, y0, x1, y1])
            labels.append(int(ann["category_id"]))
            areas.append(float(ann.get("area", (x1 - x0) * (y1 - y0))))
        if not boxes:
            self.report.images_without_objects += 1
        return {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "area": torch.tensor(areas, dtype=torch.float32),
            "iscrowd": torch.zeros(len(labels), dtype=torch.int64),
        }

    def image_path(self, index: int) -> Path:
        return self.image_dir / self.coco.imgs[self.ids[index]]["file_name"]

    def load_image(self, index: int) -> Image.Image:
        """The RGB image, or a :class:`DatasetError` naming the file."""
        path = self.image_path(index)
        if not path.is_file():
            raise DatasetError(f"image file missing: {path} (listed in {self.ann_file})")
        try:
            with Image.open(path) as img:
                img.load()
                return img.convert("RGB") if img.mode != "RGB" else img.copy()
        except (UnidentifiedImageError, OSError, SyntaxError) as err:
            raise DatasetError(f"cannot read image {path}: {err}") from err

    def raw_target(self, index: int) -> dict:
        """The cleaned target in absolute xyxy pixels of the original image."""
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        target = dict(self._targets[image_id])
        target["image_id"] = image_id
        target["orig_size"] = torch.tensor([int(info["height"]), int(info["width"])])
        target["size"] = target["orig_size"].clone()
        return target

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int):
        image = self.load_image(index)
        target = self.raw_target(index)
        if (image.height, image.width) != tuple(target["orig_size"].tolist()):
            raise DatasetError(
                f"{self.image_path(index)} is {image.width}x{image.height} px but "
                f"{self.ann_file} says {target['orig_size'][1]}x{target['orig_size'][0]}"
            )
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


@dataclass
class Batch:
    """Images padded to the largest in the batch, with the mask that marks the padding.

    ``images`` ``[B, 3, H, W]``; ``mask`` ``[B, H, W]``, True on padding; ``targets`` one dict per
    image (boxes normalised to that image's unpadded, resized size).
    """

    images: torch.Tensor
    mask: torch.Tensor
    targets: list[dict]

    @property
    def inputs(self) -> dict[str, torch.Tensor]:
        """The model's keyword arguments: ``model(**batch.inputs)`` is ``DETR(images, mask)``."""
        return {"images": self.images, "mask": self.mask}

    @property
    def image_ids(self) -> list[int]:
        return [int(t["image_id"]) for t in self.targets]

    def to(self, device, non_blocking: bool = False) -> Batch:
        moved = [
            {
                k: v.to(device, non_blocking=non_blocking) if torch.is_tensor(v) else v
                for k, v in t.items()
            }
            for t in self.targets
        ]
        return Batch(
            self.images.to(device, non_blocking=non_blocking),
            self.mask.to(device, non_blocking=non_blocking),
            moved,
        )

    def __len__(self) -> int:
        return self.images.shape[0]


def collate_detection(samples: list) -> Batch:
    """Pad images (bottom and right) to the batch's largest height and width."""
    images = [s[0] for s in samples]
    targets = [s[1] for s in samples]
    height = max(img.shape[1] for img in images)
    width = max(img.shape[2] for img in images)
    batch = images[0].new_zeros(len(images), images[0].shape[0], height, width)  # [B, 3, H, W]
    mask = torch.ones(len(images), height, width, dtype=torch.bool)  # [B, H, W]
    for i, img in enumerate(images):
        batch[i, :, : img.shape[1], : img.shape[2]] = img
        mask[i, : img.shape[1], : img.shape[2]] = False
    return Batch(batch, mask, targets)
