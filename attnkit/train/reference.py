"""Train, evaluate and export the shipped reference models (``make reference-models``).

    python -m attnkit.train.reference [--normalizers softmax sparsemax ...] [key=value ...]

The recipe has three stages, each skipped when its output exists (runs resume when interrupted):

1. **Backbone.** The ``tiny_cnn`` body is pre-trained on crops of the training shapes into
   ``checkpoints/shapes_tiny_backbone.pt`` (the stand-in for ImageNet;
   :mod:`attnkit.train.pretrain_backbone`). ``--pretrain`` redoes it.
2. **Base model.** DETR with :data:`BASE` cross-attention trains from
   ``configs/detr/shapes_tiny_<base>.yaml`` into ``runs/reference/<base>``.
3. **Fine-tuned variants.** Every other normalizer starts from the base model's weights
   (``train.init_from``) and fine-tunes with its own cross-attention for :data:`FINETUNE`
   (the thesis likewise fine-tuned the official softmax DETR into its sparse variants; on a
   2-core CPU there is no time to train four DETRs from scratch to a useful AP).

Each model is evaluated with pycocotools and exported to ``checkpoints/shapes_tiny_<n>.pt``
(fp16 weights, config, provenance) with its training log. On a 2-core CPU the whole recipe takes
about 1 h 40 min (the base model 82 min); ``train.device=cuda`` runs it on a GPU.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from attnkit.config import load_config
from attnkit.models.reference import REFERENCE_NORMALIZERS, checkpoints_dir, export_reference
from attnkit.runfiles import CHECKPOINT_NAME
from attnkit.train.evaluate import evaluate_checkpoint
from attnkit.train.loop import train
from attnkit.train.pretrain_backbone import pretrain_backbone

REPO = Path(__file__).resolve().parents[2]
BASE = "sparsemax"
"""The normalizer trained from scratch (on the synthetic data its sparse cross-attention
starts localising objects sooner than softmax's)."""
FINETUNE = ["train.epochs=3", "train.lr_drop=2", "train.eval_every_epochs=1"]
"""Schedule of the fine-tuned variants (2048 images, batch 8: 256 steps an epoch)."""


def _config(normalizer: str):
    return REPO / "configs" / "detr" / f"shapes_tiny_{normalizer}.yaml"


def make_reference(
    normalizer: str,
    runs: Path,
    overrides: list[str],
    progress: bool,
    command: str,
    base_overrides: list[str] = (),
) -> dict:
    """Train (or fine-tune) one model, evaluate it and export it; returns its AP metrics."""
    run_dir = runs / normalizer
    if normalizer == BASE:
        overrides = [*base_overrides, *overrides]
    else:
        overrides = [*FINETUNE, f"train.init_from={runs / BASE}", *overrides]
    cfg = load_config(_config(normalizer), overrides)
    train(cfg, run_dir, resume=(run_dir / CHECKPOINT_NAME).exists(), progress=progress)
    metrics = evaluate_checkpoint(run_dir / CHECKPOINT_NAME, run_dir / "eval", progress=progress)
    out = export_reference(run_dir, checkpoints_dir() / f"shapes_tiny_{normalizer}.pt", command)
    return {"checkpoint": str(out), **{k: metrics[k] for k in metrics if k.startswith("AP")}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--normalizers",
        nargs="+",
        default=list(REFERENCE_NORMALIZERS),
        choices=REFERENCE_NORMALIZERS,
        help=f"models to make (the others need runs/reference/{BASE} trained first)",
    )
    parser.add_argument("--runs", default="runs/reference", help="where the runs train")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument(
        "--pretrain", action="store_true", help="pre-train the backbone even if its file exists"
    )
    parser.add_argument(
        "--pretrain-steps", type=int, default=1000, help="backbone pre-training steps"
    )
    parser.add_argument(
        "--base-epochs", type=int, help=f"epochs of the {BASE} base model (its config's if unset)"
    )
    parser.add_argument("--base-lr-drop", type=int, help="epoch of the base model's lr drop")
    parser.add_argument("overrides", nargs="*", help="config overrides for every model")
    args = parser.parse_args(argv)
    command = shlex.join(
        [sys.executable, "-m", "attnkit.train.reference", *(argv if argv else sys.argv[1:])]
    )
    backbone = checkpoints_dir() / "shapes_tiny_backbone.pt"
    if args.pretrain or not backbone.is_file():
        cfg = load_config(_config(BASE), args.overrides)
        metrics = pretrain_backbone(
            cfg, backbone, steps=args.pretrain_steps, progress=not args.quiet
        )
        print(json.dumps({"backbone": str(backbone), **metrics}, indent=1))
    runs = Path(args.runs)
    order = sorted(args.normalizers, key=lambda n: n != BASE)  # the base model first
    if BASE not in order and not (runs / BASE / CHECKPOINT_NAME).is_file():
        parser.error(f"the fine-tuned models start from {runs / BASE}: train {BASE} first")
    base_overrides = [f"train.epochs={args.base_epochs}"] if args.base_epochs else []
    if args.base_lr_drop:
        base_overrides.append(f"train.lr_drop={args.base_lr_drop}")
    table = {}
    for normalizer in order:
        table[normalizer] = make_reference(
            normalizer, runs, args.overrides, not args.quiet, command, base_overrides
        )
        print(json.dumps({normalizer: table[normalizer]}, indent=1))
    print("| model | AP | AP50 | AP75 | AP_S | AP_M | AP_L |")
    print("|---|---|---|---|---|---|---|")
    for name, m in table.items():
        cells = " | ".join(f"{m[k]:.3f}" for k in ("AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L"))
        print(f"| {name} | {cells} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
