"""The ``attnkit`` command. Every sub-command has ``--help``.

Examples::

    attnkit train --config configs/detr/shapes_tiny_sparsemax.yaml --out runs/sparsemax
    attnkit train --config configs/detr/shapes_tiny_sparsemax.yaml --out runs/sparsemax --resume
    torchrun --nproc_per_node=4 -m attnkit.cli train --config configs/detr/coco_r50_softmax.yaml \
        --out runs/r50 data.root=/data/coco
    attnkit pretrain-backbone --config configs/detr/shapes_tiny_softmax.yaml --out bb.pt
    attnkit models
    attnkit train --config configs/vit/synth_sparsemax.yaml --out runs/vit_sparsemax
    attnkit eval --checkpoint runs/sparsemax/last.pt --out runs/sparsemax/eval
    attnkit analyze --checkpoint runs/sparsemax/last.pt --out runs/sparsemax/analysis
    attnkit analyze --config configs/detr/shapes_tiny_sparsemax.yaml --random-init --out runs/rand
    attnkit data synth --out data/shapes --num-images 200 --seed 0
    attnkit config show configs/detr/shapes_tiny_sparsemax.yaml train.lr=2e-4
    attnkit config diff configs/detr/base.yaml runs/my_run
    attnkit workbook list
    attnkit workbook run --profile smoke --only detr/00 -p num_samples=8
    attnkit bench normalizers --quick
    attnkit train --config configs/sa_conv/synth_gaussian_isotropic.yaml --out runs/gauss
    attnkit bench models configs/sa_conv/ --device cpu --threads 2
"""

from __future__ import annotations

import argparse
import sys

from attnkit.commands import (
    BENCHMARKS,
    cmd_analyze,
    cmd_bench,
    cmd_config_diff,
    cmd_config_show,
    cmd_data_synth,
    cmd_eval,
    cmd_models,
    cmd_pretrain_backbone,
    cmd_train,
    cmd_workbook_list,
    cmd_workbook_run,
)
from attnkit.workbook import PROFILES

# --------------------------------------------------------------------------- parser


def _positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (argparse turns the ValueError into one line)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attnkit",
        description="attnkit: a research workbook for attention in vision models.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("Examples::", 1)[1],
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the full traceback of an error instead of its one-line message",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    tr = sub.add_parser(
        "train",
        help="train a model from a config (resumable; DDP under torchrun)",
        description="Train a model. Writes OUT/config.yaml, OUT/last.pt (atomic), "
        "OUT/metrics.jsonl, TensorBoard events in OUT/tb and OUT/train_summary.json.",
    )
    tr.add_argument("--config", required=True, help="experiment YAML (see configs/)")
    tr.add_argument("--out", required=True, help="run folder")
    tr.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    tr.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh in an OUT that holds another run (its checkpoint and logs are deleted)",
    )
    tr.add_argument("--quiet", action="store_true", help="no progress bars")
    tr.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.lr=2e-4")
    tr.set_defaults(func=cmd_train)

    pre = sub.add_parser(
        "pretrain-backbone",
        help="pre-train a config's backbone on crops of its training objects",
        description="Train the backbone of a config's model to classify crops of the training "
        "objects (and of background), the stand-in for ImageNet pre-training on the synthetic "
        "data; writes OUT (what model.pretrained_backbone points at) and OUT with .json "
        "(validation crop accuracy). See attnkit.train.pretrain_backbone.",
    )
    pre.add_argument("--config", required=True, help="experiment YAML: its data and backbone")
    pre.add_argument("--out", required=True, help="weights file to write, e.g. backbone.pt")
    pre.add_argument(
        "--steps", type=_positive_int, default=1000, help="optimiser steps (default 1000)"
    )
    pre.add_argument(
        "--batch-size", type=_positive_int, default=128, help="crops per step (default 128)"
    )
    pre.add_argument(
        "--lr", type=_positive_float, default=2e-3, help="peak learning rate (one-cycle)"
    )
    pre.add_argument("--quiet", action="store_true", help="no progress bars")
    pre.add_argument("overrides", nargs="*", help="dotted key=value config overrides")
    pre.set_defaults(func=cmd_pretrain_backbone)

    models = sub.add_parser(
        "models",
        help="the model families, their named variants and configs",
        description="List every registered model family (model.name in a config) with its "
        "task, named variants and the configs under configs/<family>/.",
    )
    models.add_argument("--configs", default="configs", help="configs folder (default configs)")
    models.set_defaults(func=cmd_models)

    ev = sub.add_parser(
        "eval",
        help="task metrics of a checkpoint (COCO AP, top-1 / top-5, RMSE, ...)",
        description="Evaluate a checkpoint on the val split with its task's metrics: "
        "OUT/metrics.json (detection: AP, AP50, AP75, AP_S, AP_M, AP_L, ARs with pycocotools, and "
        "OUT/detections.json in COCO results format; classification: top1, top5, per-class "
        "accuracy, confusion matrix; dense regression: MAE, RMSE, R2, error per bin).",
    )
    ev.add_argument("--checkpoint", required=True, help="a last.pt written by `attnkit train`")
    ev.add_argument("--out", required=True, help="output folder")
    ev.add_argument(
        "--data-root", help="data.root: a local copy of the checkpoint's dataset (COCO, CIFAR-10)"
    )
    ev.add_argument("--config", help="config YAML to use instead of the checkpoint's own")
    ev.add_argument(
        "--model-from-config",
        action="store_true",
        help="run the weights under the model that --config / overrides describe even where it "
        "differs from the one they were trained with (another normalizer, say); refused otherwise",
    )
    ev.add_argument("--split", default="val", help="split to evaluate (default val)")
    ev.add_argument(
        "--overwrite", action="store_true", help="replace an earlier evaluation's files in OUT"
    )
    ev.add_argument("--quiet", action="store_true", help="no progress bars")
    ev.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    ev.set_defaults(func=cmd_eval)

    an = sub.add_parser(
        "analyze",
        help="attention metrics (Gini, zeros ratio, entropy, distance, PAIBB) per site and head",
        description="One streamed eval pass over a split, scoring every query's attention per "
        "attention site and head, for any model family: OUT/records.parquet (one row per image "
        "x site x head x query) and OUT/summary.json ({metric: {layer: {mean, std, per_head}}}, "
        "plus the task's scores: PAIBB and paibb_by_size for detection).",
    )
    source = an.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a last.pt written by `attnkit train`")
    source.add_argument("--random-init", action="store_true", help="untrained model of --config")
    an.add_argument("--config", help="config YAML (needed with --random-init)")
    an.add_argument("--out", required=True, help="output folder")
    an.add_argument(
        "--batch-size", type=_positive_int, help="default: the config's data.batch_size"
    )
    an.add_argument("--max-images", type=_positive_int, help="only the first N images of the split")
    an.add_argument("--split", default="val")
    an.add_argument(
        "--layers",
        nargs="+",
        metavar="PATTERN",
        help="attention modules to score (glob or substring; default: the family's sites, "
        "e.g. DETR's decoder cross-attention '*decoder.layers.*.multihead_attn', every ViT block)",
    )
    an.add_argument(
        "--zero-threshold",
        type=_non_negative_float,
        help="weights <= this count as zeros (default: exact zeros, 1e-6 for softmax layers)",
    )
    an.add_argument(
        "--overwrite", action="store_true", help="replace an earlier analysis's files in OUT"
    )
    an.add_argument("--quiet", action="store_true", help="no progress bars")
    an.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    an.set_defaults(func=cmd_analyze)

    data = sub.add_parser("data", help="make or inspect datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    synth = data_sub.add_parser("synth", help="write the synthetic shapes dataset (COCO format)")
    synth.add_argument("--out", required=True, help="output folder (COCO 2017 layout)")
    synth.add_argument(
        "--num-images", type=_positive_int, default=512, help="train images (default 512)"
    )
    synth.add_argument(
        "--num-val", type=_positive_int, default=None, help="val images (default: same)"
    )
    synth.add_argument(
        "--seed", type=_non_negative_int, default=0, help="seed; same seed, same bytes"
    )
    synth.add_argument("--split", choices=["train", "val", "both"], default="both")
    synth.set_defaults(func=cmd_data_synth)

    config = sub.add_parser("config", help="show or compare experiment configs")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    show = config_sub.add_parser("show", help="print a config resolved (bases + overrides)")
    show.add_argument("config", help="YAML file or run folder")
    show.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    show.set_defaults(func=cmd_config_show)
    diff = config_sub.add_parser("diff", help="differences between two configs or run folders")
    diff.add_argument("a")
    diff.add_argument("b")
    diff.set_defaults(func=cmd_config_diff)

    wb = sub.add_parser("workbook", help="run the notebooks in batch with papermill")
    wb_sub = wb.add_subparsers(dest="workbook_command", required=True, metavar="ACTION")
    run = wb_sub.add_parser(
        "run", help="execute the workbook into runs/workbook/<timestamp>/ with summary.md"
    )
    run.add_argument(
        "--profile",
        choices=PROFILES,
        default="default",
        help="smoke: seconds (tests); default: the main job, a short training then the analyses; "
        "gpu: COCO on a GPU server; reference: no training, analyses the shipped models "
        "(checkpoints/shapes_tiny_*.pt). Default: %(default)s",
    )
    run.add_argument(
        "--family", help="comma-separated model families to run, e.g. detr,vit (default: all)"
    )
    run.add_argument(
        "--only",
        help="comma-separated notebook ids, e.g. detr/00,detr/02; a bare id (02) where only one "
        "family has it",
    )
    run.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set a notebook parameter (YAML value) in every notebook that declares it",
    )
    run.add_argument("--out", help="output folder (default runs/workbook/<timestamp>)")
    run.add_argument(
        "--overwrite",
        action="store_true",
        help="re-run notebooks whose run folders already exist in --out (default: refuse)",
    )
    run.add_argument("--workbook", default="notebooks/workbook.yaml", help="workbook spec")
    run.add_argument("--kernel", help="Jupyter kernel (default: attnkit if registered)")
    run.set_defaults(func=cmd_workbook_run)
    lst = wb_sub.add_parser("list", help="the notebooks, their parameters and profiles")
    lst.add_argument("--workbook", default="notebooks/workbook.yaml")
    lst.add_argument("--family", help="comma-separated model families (default: all)")
    lst.set_defaults(func=cmd_workbook_list)

    bench = sub.add_parser("bench", help="speed/memory benchmarks against the peer libraries")
    bench.add_argument("name", choices=sorted(BENCHMARKS))
    bench.add_argument("rest", nargs=argparse.REMAINDER, help="arguments of the benchmark")
    bench.set_defaults(func=cmd_bench)
    return parser


def _one_line(err: BaseException) -> str:
    """An error's message on one line (multi-line messages of other libraries are joined)."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 600 else text[:600] + " ..."


def main(argv: list[str] | None = None) -> int:
    """Run one sub-command. Bad input exits 2 with ``attnkit: error: <one line>``; an
    unexpected failure exits 1 with one line pointing at ``--debug``; Ctrl-C exits 130."""
    from attnkit.errors import AttnkitError

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # accepted anywhere on the line, not only before the command
    argv = [a for a in argv if a != "--debug"]
    args = build_parser().parse_args(argv)
    args.debug = debug
    if args.command == "analyze" and args.random_init and not args.config:
        print("attnkit: error: --random-init needs --config", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except Exception as err:
        if args.debug:
            raise
        if isinstance(err, (AttnkitError, OSError)):
            print(f"attnkit: error: {_one_line(err)}", file=sys.stderr)
            return 2
        print(
            f"attnkit: internal error: {type(err).__name__}: {_one_line(err)} "
            "(this is a bug in attnkit; rerun with --debug for the traceback and report it)",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("attnkit: interrupted (checkpoints already written are kept)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
