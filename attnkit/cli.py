"""The ``attnkit`` command. Every sub-command has ``--help``.

Examples::

    attnkit data synth --out data/shapes --num-images 200 --seed 0
    attnkit config show configs/detr/shapes_tiny_sparsemax.yaml train.lr=2e-4
    attnkit config diff configs/detr/base.yaml runs/my_run
    attnkit workbook list
    attnkit workbook run --profile smoke --only 00 -p num_samples=8
    attnkit bench normalizers --quick
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import yaml

BENCHMARKS = {"normalizers": "attnkit.bench.normalizers"}


def _parse_params(items: list[str]) -> dict:
    from attnkit.config import parse_override

    return dict(parse_override(item) for item in items)


# --------------------------------------------------------------------------- data


def cmd_data_synth(args) -> int:
    from attnkit.data.synthetic import make_shapes_coco

    for split, offset in (("train", 0), ("val", 10_000)):
        if args.split in (split, "both"):
            n = args.num_images if split == "train" or args.num_val is None else args.num_val
            path = make_shapes_coco(
                args.out, n, seed=args.seed + offset, split=split, progress=True
            )
            print(f"wrote {n} {split} images and {path}")
    return 0


# --------------------------------------------------------------------------- config


def cmd_config_show(args) -> int:
    from attnkit.config import config_to_dict, load_config

    cfg = load_config(args.config, args.overrides)
    print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
    return 0


def cmd_config_diff(args) -> int:
    from attnkit.config import config_diff

    rows = config_diff(args.a, args.b)
    if not rows:
        print("no differences")
        return 0
    width = max(len(k) for k, _, _ in rows)
    print(f"{'key':<{width}}  {args.a}  ->  {args.b}")
    for key, va, vb in rows:
        print(f"{key:<{width}}  {va!r}  ->  {vb!r}")
    return 0


# --------------------------------------------------------------------------- workbook


def cmd_workbook_run(args) -> int:
    from attnkit.workbook import run_workbook

    only = [o.strip() for o in args.only.split(",")] if args.only else None
    results, summary = run_workbook(
        args.workbook, args.profile, only, _parse_params(args.param), args.out, args.kernel
    )
    failed = [r for r in results if r.status != "ok"]
    print(f"summary: {summary}")
    if failed:
        print(f"{len(failed)} of {len(results)} notebook runs failed:", file=sys.stderr)
        for r in failed:
            print(f"  {r.run.name}: {r.error}  (see {r.output})", file=sys.stderr)
        return 1
    return 0


def cmd_workbook_list(args) -> int:
    from attnkit.workbook import load_workbook, notebook_parameters

    spec = load_workbook(args.workbook)
    base = Path(args.workbook).parent
    for entry in spec["notebooks"]:
        print(f"[{entry['id']}] {entry['notebook']}: {entry.get('description', '')}")
        for name, info in notebook_parameters(base / entry["notebook"]).items():
            if name in ("figures_dir", "run_dir", "workbook_dir"):
                continue
            help_text = f"  # {info['help']}" if info.get("help") else ""
            print(f"    {name}: {info['inferred_type_name']} = {info['default']}{help_text}")
        for profile, chosen in (entry.get("profiles") or {}).items():
            print(f"    profile {profile}: {chosen}")
        if entry.get("sweep"):
            print(f"    sweep: {entry['sweep']}")
    return 0


# --------------------------------------------------------------------------- bench


def cmd_bench(args) -> int:
    module = importlib.import_module(BENCHMARKS[args.name])
    return module.main(args.rest) or 0


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attnkit",
        description="attnkit: a research workbook for attention in vision models.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("Examples::", 1)[1],
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="make or inspect datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    synth = data_sub.add_parser("synth", help="write the synthetic shapes dataset (COCO format)")
    synth.add_argument("--out", required=True, help="output folder (COCO 2017 layout)")
    synth.add_argument("--num-images", type=int, default=512, help="train images (default 512)")
    synth.add_argument("--num-val", type=int, default=None, help="val images (default: same)")
    synth.add_argument("--seed", type=int, default=0, help="seed; same seed, same bytes")
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
    run.add_argument("--profile", choices=["smoke", "default", "gpu"], default="default")
    run.add_argument("--only", help="comma-separated notebook ids, e.g. 00,02")
    run.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set a notebook parameter (YAML value) in every notebook that declares it",
    )
    run.add_argument("--out", help="output folder (default runs/workbook/<timestamp>)")
    run.add_argument("--workbook", default="notebooks/workbook.yaml", help="workbook spec")
    run.add_argument("--kernel", help="Jupyter kernel (default: attnkit if registered)")
    run.set_defaults(func=cmd_workbook_run)
    lst = wb_sub.add_parser("list", help="the notebooks, their parameters and profiles")
    lst.add_argument("--workbook", default="notebooks/workbook.yaml")
    lst.set_defaults(func=cmd_workbook_list)

    bench = sub.add_parser("bench", help="speed/memory benchmarks against the peer libraries")
    bench.add_argument("name", choices=sorted(BENCHMARKS))
    bench.add_argument("rest", nargs=argparse.REMAINDER, help="arguments of the benchmark")
    bench.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    from attnkit.config import ConfigError
    from attnkit.data.coco import DatasetError
    from attnkit.workbook import WorkbookError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, DatasetError, WorkbookError) as err:
        print(f"attnkit: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
