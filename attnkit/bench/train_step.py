"""Images per second of a full DETR training step and of an eval pass.

A training step here is everything the loop does per batch: loading and augmenting the images,
forward, Hungarian matching, losses, backward, clipping and the optimiser update. Eval is
forward + post-processing. Runs the tiny CPU config and the R50 reference config on the
synthetic data (R50 at reduced image size on CPU unless ``--full-size``), with AMP on GPU.

    python benchmarks/train_step.py [--steps 10] [--configs ...] [--amp bf16]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from attnkit.config import load_config
from attnkit.models import build_model
from attnkit.tasks import task_of
from attnkit.train.distributed import pick_device
from attnkit.train.optim import build_optimizer
from attnkit.train.sampling import make_loader
from attnkit.train.step import AMP_DTYPES, seed_everything, train_step

DEFAULT_CONFIGS = ["configs/detr/shapes_tiny_softmax.yaml", "configs/detr/coco_r50_softmax.yaml"]
CPU_R50_SIZES = [
    "data.train_scales=[320]",
    "data.val_scale=320",
    "data.max_size=480",
    "data.crop_prob=0.0",
]


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_config(path: str, steps: int, amp: str, device, extra: list[str]) -> dict:
    overrides = ["data.name=shapes", "data.root=null", "data.num_workers=0", *extra]
    if device.type == "cpu" and "r50" in path:
        overrides += CPU_R50_SIZES
    cfg = load_config(path, overrides)
    seed_everything(0)
    model = build_model(cfg).to(device)
    task = task_of(cfg)
    criterion = task.build_criterion(cfg).to(device)
    optimizer = build_optimizer(model, cfg.train)
    train_set, val_set = task.build_dataset(cfg, "train"), task.build_dataset(cfg, "val")
    loader = make_loader(train_set, cfg.data.batch_size, 0, True, task.collate, 0)
    val_loader = make_loader(val_set, cfg.data.batch_size, 0, False, task.collate, 0)
    evaluator = task.build_evaluator(cfg, val_set)
    batches = iter(loader)
    times = []
    for i in range(steps + 2):  # 2 warm-up steps
        start = time.perf_counter()
        batch = next(batches)
        train_step(
            model, criterion, optimizer, [batch], device, i + 1, cfg.train.clip_max_norm, amp
        )
        _sync(device)
        if i >= 2:
            times.append(time.perf_counter() - start)
    eval_times = []
    model.eval()
    amp_dtype = AMP_DTYPES[amp]
    with torch.no_grad():
        for i, batch in enumerate(val_loader):
            if i >= steps + 1:
                break
            start = time.perf_counter()
            batch = batch.to(device)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                outputs = model(**batch.inputs)
            evaluator.update(outputs, batch)
            _sync(device)
            if i >= 1:
                eval_times.append(time.perf_counter() - start)
    bs = cfg.data.batch_size
    return {
        "config": path.rsplit("/", 1)[-1],
        "batch": bs,
        "image_side": tuple(batch.inputs["images"].shape[-2:]),
        "train_img_s": bs / statistics.median(times),
        "eval_img_s": bs / statistics.median(eval_times) if eval_times else float("nan"),
        "step_ms": 1000 * statistics.median(times),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per config")
    parser.add_argument(
        "--amp",
        choices=["none", "bf16", "fp16"],
        default=None,
        help="default: bf16 on GPU, none on CPU",
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("overrides", nargs="*", help="config overrides for every config")
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    amp = args.amp or ("bf16" if device.type == "cuda" else "none")
    print(
        f"device {device}, amp {amp}, torch {torch.__version__}, threads {torch.get_num_threads()}"
    )
    print(
        f"{'config':<28} {'batch':>5} {'side':>5} {'step ms':>9} {'train img/s':>12} {'eval img/s':>11}"
    )
    for path in args.configs:
        r = bench_config(path, args.steps, amp, device, args.overrides)
        print(
            f"{r['config']:<28} {r['batch']:>5} {r['image_side']:>5} {r['step_ms']:>9.1f} "
            f"{r['train_img_s']:>12.2f} {r['eval_img_s']:>11.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
