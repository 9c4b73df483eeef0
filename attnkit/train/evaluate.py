"""Evaluate a checkpoint with pycocotools: ``metrics.json`` and the detections as COCO results."""

from __future__ import annotations

import json
from pathlib import Path

from attnkit.analysis.coco_eval import evaluate_detection
from attnkit.config import config_to_dict, save_config
from attnkit.data import build_dataset
from attnkit.models.build import build_postprocess
from attnkit.models.loading import model_from_checkpoint
from attnkit.train.distributed import pick_device
from attnkit.train.sampling import make_loader


def evaluate_checkpoint(
    checkpoint: str | Path,
    out_dir: str | Path,
    data_root: str | None = None,
    overrides=None,
    config: str | Path | None = None,
    split: str = "val",
    progress: bool = True,
) -> dict:
    """Write ``out_dir/metrics.json`` (AP, AP50, AP75, AP_S/M/L, ARs) and ``detections.json``."""
    overrides = list(overrides or [])
    if data_root:
        overrides += [f"data.root={data_root}", "data.name=coco"]
    device = pick_device("auto")
    model, cfg = model_from_checkpoint(checkpoint, overrides, config, device)
    dataset = build_dataset(cfg.data, split, train=False)
    loader = make_loader(dataset, cfg.data.batch_size, cfg.seed, False, cfg.data.num_workers)
    metrics, detections = evaluate_detection(
        model, build_postprocess(cfg), loader, dataset.coco, device, progress=progress
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out_dir)
    record = {"checkpoint": str(checkpoint), "split": split, "images": len(dataset), **metrics}
    (out_dir / "metrics.json").write_text(json.dumps(record, indent=1))
    (out_dir / "detections.json").write_text(json.dumps(detections))
    return {**record, "config": config_to_dict(cfg)}
