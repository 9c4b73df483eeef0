"""Train, evaluate and export the shipped reference models (``make reference-models``).

    python -m attnkit.train.reference [--normalizers softmax sparsemax ...] [key=value ...]

Each model trains from ``configs/detr/shapes_tiny_<normalizer>.yaml`` into
``runs/reference/<normalizer>`` (resuming when interrupted), is evaluated with pycocotools, and is
exported to ``checkpoints/shapes_tiny_<normalizer>.pt`` (fp16 weights, config, provenance) with
its training log. A GPU makes this minutes instead of hours (``train.device=cuda``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from attnkit.config import load_config
from attnkit.models.reference import REFERENCE_NORMALIZERS, checkpoints_dir, export_reference
from attnkit.train.evaluate import evaluate_checkpoint
from attnkit.train.loop import train

REPO = Path(__file__).resolve().parents[2]


def make_reference(normalizer: str, runs: Path, overrides: list[str], progress: bool) -> dict:
    config = REPO / "configs" / "detr" / f"shapes_tiny_{normalizer}.yaml"
    run_dir = runs / normalizer
    cfg = load_config(config, overrides)
    train(cfg, run_dir, resume=(run_dir / "last.pt").exists(), progress=progress)
    metrics = evaluate_checkpoint(run_dir / "last.pt", run_dir / "eval", progress=progress)
    command = shlex.join([sys.executable, "-m", "attnkit.train.reference", *sys.argv[1:]])
    out = export_reference(run_dir, checkpoints_dir() / f"shapes_tiny_{normalizer}.pt", command)
    return {"checkpoint": str(out), **{k: metrics[k] for k in metrics if k.startswith("AP")}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--normalizers", nargs="+", default=list(REFERENCE_NORMALIZERS))
    parser.add_argument("--runs", default="runs/reference", help="where the runs train")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("overrides", nargs="*", help="config overrides for every model")
    args = parser.parse_args(argv)
    table = {}
    for normalizer in args.normalizers:
        table[normalizer] = make_reference(
            normalizer, Path(args.runs), args.overrides, not args.quiet
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
