"""``attnkit eval``: a checkpoint's task metrics on a split, as ``metrics.json`` (+ artifacts)."""

from __future__ import annotations

import json
from pathlib import Path

from attnkit.config import config_to_dict, save_config
from attnkit.models.loading import model_from_checkpoint
from attnkit.outputs import EVAL_FILES, claim_output
from attnkit.tasks import task_of
from attnkit.tasks.evaluate import run_evaluation
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
    overwrite: bool = False,
    allow_model_change: bool = False,
) -> dict:
    """Write ``out_dir/metrics.json`` with the task's metrics (COCO AP / AR for detection,
    top-1 / top-5 / per-class accuracy for classification, ...) and the task's artifacts
    (``detections.json`` for detection). ``data_root`` points the checkpoint's data section at
    a local copy of its dataset (``data.root``). Only the evaluation's own files are written
    (:data:`attnkit.outputs.EVAL_FILES`, its config as ``eval_config.yaml``), so ``out_dir`` may be
    the training run's folder; an earlier evaluation there needs ``overwrite``."""
    overrides = list(overrides or [])
    if data_root:
        overrides.append(f"data.root={data_root}")
    out_dir = claim_output(out_dir, EVAL_FILES, "eval", overwrite)
    device = pick_device("auto")
    model, cfg = model_from_checkpoint(
        checkpoint, overrides, config, device, allow_model_change=allow_model_change
    )
    task = task_of(cfg)
    dataset = task.build_dataset(cfg, split, train=False)
    task.check(cfg, dataset)
    loader = make_loader(
        dataset, cfg.data.batch_size, cfg.seed, False, task.collate, cfg.data.num_workers
    )
    evaluator = task.build_evaluator(cfg, dataset)
    metrics = run_evaluation(model, evaluator, loader, device, progress=progress)
    save_config(cfg, out_dir / "eval_config.yaml")
    record = {"checkpoint": str(checkpoint), "split": split, "images": len(dataset), **metrics}
    (out_dir / "metrics.json").write_text(json.dumps(record, indent=1))
    for name, content in evaluator.artifacts().items():
        (out_dir / name).write_text(json.dumps(content))
    return {**record, "config": config_to_dict(cfg)}
