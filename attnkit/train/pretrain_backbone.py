"""Pre-train a DETR backbone on the detection data itself, by classifying object crops.

Official DETR starts from an ImageNet-pretrained ResNet, so its transformer only has to learn
where to look. Nothing can be downloaded here, and a backbone trained from scratch through the
DETR loss learns the shapes very slowly: each image teaches the classifier through its few
matched queries only (on the synthetic data the class loss stays at its prior for thousands of
steps while the boxes improve). This stage is the "ImageNet" step on the synthetic data instead.

Every training object is cut out as a square crop around its box (at a few random context
scales, so it covers 25-80 % of the crop as small and large objects do in DETR's input), plus
crops of empty background labelled 0. The backbone, with global average pooling and a linear
layer, classifies them: many examples per second on a CPU, since a 48 px crop costs a fraction
of a full image. Random flips and 90-degree turns keep the labels (the shapes have no
orientation).

The output file holds ``{"body": state dict, "backbone": name, "metrics": ...}`` and is what
``model.pretrained_backbone`` points at (``Backbone`` loads it).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from attnkit.data.build import dataset_root
from attnkit.data.coco import CocoDetection
from attnkit.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from attnkit.models.detr.backbone import Backbone
from attnkit.train.checkpoint import save_checkpoint
from attnkit.train.distributed import pick_device
from attnkit.train.step import seed_everything

__all__ = ["CropClassifier", "object_crops", "pretrain_backbone"]


def _square_crop(image: Image.Image, cx: float, cy: float, side: float, size: int) -> np.ndarray:
    """A ``side`` px square centred at ``(cx, cy)``, resized to ``size`` px: uint8 ``[s, s, 3]``.

    Parts outside the image are filled with the image's mean colour.
    """
    box = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
    fill = tuple(int(c) for c in np.asarray(image).reshape(-1, 3).mean(0))
    crop = image.transform(
        (size, size), Image.Transform.EXTENT, box, Image.Resampling.BILINEAR, fillcolor=fill
    )
    return np.asarray(crop)


def object_crops(
    dataset: CocoDetection,
    size: int = 48,
    crops_per_object: int = 2,
    background_per_image: int = 1,
    seed: int = 0,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Crops ``[N, 3, size, size]`` (uint8) and labels ``[N]`` from a detection dataset.

    Each object gives ``crops_per_object`` crops whose side is its longer box side times a
    random factor in [1.25, 4] (the object fills 25-80 % of the crop), centre jittered by up to
    a tenth of the side. Each image also gives ``background_per_image`` crops of a region that
    overlaps no box by more than 10 % of the crop, labelled 0.
    """
    rng = np.random.default_rng(seed)
    crops, labels = [], []
    indices = range(len(dataset))
    if progress:
        indices = tqdm(indices, desc="object crops", unit="img")
    for index in indices:
        image, target = dataset.load_image(index), dataset.raw_target(index)
        boxes, classes = target["boxes"].numpy(), target["labels"].numpy()
        for (x0, y0, x1, y1), label in zip(boxes, classes):
            extent = max(x1 - x0, y1 - y0, 2.0)
            for _ in range(crops_per_object):
                side = extent * rng.uniform(1.25, 4.0)
                cx = (x0 + x1) / 2 + rng.uniform(-0.1, 0.1) * side
                cy = (y0 + y1) / 2 + rng.uniform(-0.1, 0.1) * side
                crops.append(_square_crop(image, cx, cy, side, size))
                labels.append(int(label))
        for _ in range(background_per_image):
            for _attempt in range(10):
                side = rng.uniform(0.15, 0.5) * min(image.size)
                cx, cy = (
                    rng.uniform(side / 2, image.width - side / 2),
                    rng.uniform(side / 2, image.height - side / 2),
                )
                if _overlap_fraction(boxes, cx, cy, side) <= 0.1:
                    crops.append(_square_crop(image, cx, cy, side, size))
                    labels.append(0)
                    break
    images = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()  # [N, 3, s, s]
    return images, torch.tensor(labels, dtype=torch.long)


def _overlap_fraction(boxes: np.ndarray, cx: float, cy: float, side: float) -> float:
    """The largest fraction of the square's area covered by any one box."""
    if len(boxes) == 0:
        return 0.0
    x0, y0, x1, y1 = cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2
    iw = np.clip(np.minimum(boxes[:, 2], x1) - np.maximum(boxes[:, 0], x0), 0, None)
    ih = np.clip(np.minimum(boxes[:, 3], y1) - np.maximum(boxes[:, 1], y0), 0, None)
    return float((iw * ih).max() / (side * side))


class CropClassifier(nn.Module):
    """A DETR :class:`Backbone` body, global average pooling and a linear classifier."""

    def __init__(self, model_cfg) -> None:
        super().__init__()
        self.backbone = Backbone(
            model_cfg.backbone,
            dilation=model_cfg.dilation,
            stage=model_cfg.backbone_stage,
            from_scratch=True,
        )
        self.head = nn.Linear(self.backbone.num_channels, model_cfg.num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        mask = torch.zeros(
            images.shape[0], *images.shape[-2:], dtype=torch.bool, device=images.device
        )
        features, _ = self.backbone(images, mask)  # [B, C, h, w]
        return self.head(features.mean(dim=(2, 3)))  # [B, K]


def _normalise(crops: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, 3, s, s]`` -> float, ImageNet-normalised as DETR's input."""
    mean = torch.tensor(IMAGENET_MEAN, device=crops.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=crops.device).view(1, 3, 1, 1)
    return (crops.float() / 255 - mean) / std


def _augment(crops: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random flip and a random multiple of 90 degrees, the same for the whole batch."""
    turns = int(torch.randint(4, (1,), generator=generator))
    crops = torch.rot90(crops, turns, dims=(2, 3))
    if torch.rand(1, generator=generator) < 0.5:
        crops = crops.flip(-1)
    return crops


@torch.no_grad()
def crop_accuracy(model: CropClassifier, crops, labels, batch_size: int = 256) -> dict:
    """Accuracy over all crops and over object crops only."""
    model.eval()
    preds = torch.cat(
        [
            model(_normalise(crops[i : i + batch_size])).argmax(1)
            for i in range(0, len(crops), batch_size)
        ]
    )
    model.train()
    objects = labels > 0
    return {
        "accuracy": float((preds == labels).float().mean()),
        "object_accuracy": float((preds == labels)[objects].float().mean()),
    }


def pretrain_backbone(
    cfg,
    out_path: str | Path,
    steps: int = 1000,
    batch_size: int = 128,
    lr: float = 2e-3,
    weight_decay: float = 5e-4,
    crop_size: int = 48,
    progress: bool = True,
) -> dict:
    """Train ``cfg.model``'s backbone to classify crops of ``cfg.data``; save it to ``out_path``.

    AdamW under a one-cycle schedule (10 % warm-up, then cosine decay) over ``steps``, on
    ``cfg.train.device``. Returns the metrics (also written beside the file as ``.json``):
    accuracy on crops of the validation split.
    """
    seed_everything(cfg.seed)
    root = dataset_root(cfg.data)
    start = time.time()
    train_set = CocoDetection(root, cfg.data.train_split)
    val_set = CocoDetection(root, cfg.data.val_split)
    crops, labels = object_crops(train_set, crop_size, seed=cfg.seed, progress=progress)
    val_crops, val_labels = object_crops(val_set, crop_size, seed=cfg.seed + 1)
    device = pick_device(cfg.train.device)
    crops, labels = crops.to(device), labels.to(device)  # uint8: the whole set fits
    val_crops, val_labels = val_crops.to(device), val_labels.to(device)
    model = CropClassifier(cfg.model).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=steps, pct_start=0.1
    )
    generator = torch.Generator().manual_seed(cfg.seed)
    losses = []
    bar = tqdm(range(steps), desc="pretrain backbone", disable=not progress)
    for step in bar:
        pick = torch.randint(len(crops), (batch_size,), generator=generator).to(device)
        inputs = _normalise(_augment(crops[pick], generator))  # [B, 3, s, s]
        loss = F.cross_entropy(model(inputs), labels[pick])
        if not torch.isfinite(loss):
            raise RuntimeError(f"pretrain_backbone: loss is {loss.item()} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    metrics = {
        **crop_accuracy(model, val_crops, val_labels),
        "train_crops": len(crops),
        "val_crops": len(val_crops),
        "steps": steps,
        "batch_size": batch_size,
        "final_loss": float(np.mean(losses[-50:])),
        "seconds": round(time.time() - start, 1),
    }
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    body = {
        k: v.detach().half() if v.is_floating_point() else v
        for k, v in model.backbone.body.state_dict().items()
    }
    record = {
        "body": body,
        "backbone": cfg.model.backbone,
        "stage": cfg.model.backbone_stage,
        "dilation": cfg.model.dilation,
        "metrics": metrics,
    }
    save_checkpoint(record, out_path)
    out_path.with_suffix(".json").write_text(json.dumps(metrics, indent=1) + "\n")
    return metrics
