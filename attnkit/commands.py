"""The bodies of the ``attnkit`` sub-commands (``attnkit.cli`` holds the parser).

Each ``cmd_*`` takes the parsed arguments and returns an exit code; imports are local so that
``attnkit --help`` stays fast.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import yaml

BENCHMARKS = {
    "normalizers": "attnkit.bench.normalizers",
    "train_step": "attnkit.bench.train_step",
    "analysis": "attnkit.bench.analysis",
    "models": "attnkit.bench.models",
    "maxvit": "attnkit.bench.maxvit",
    "attention": "attnkit.bench.attention",
    "encoders": "attnkit.bench.encoders",
    "dense": "attnkit.bench.dense",
}


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


# --------------------------------------------------------------------------- train / eval


def cmd_train(args) -> int:
    from attnkit.config import load_config
    from attnkit.train.loop import train

    cfg = load_config(args.config, args.overrides)
    summary = train(
        cfg, args.out, resume=args.resume, progress=not args.quiet, overwrite=args.overwrite
    )
    print(json.dumps({k: summary[k] for k in ("step", "epoch", "seconds")} | _scalars(summary)))
    return 0


def cmd_pretrain_backbone(args) -> int:
    from attnkit.config import load_config
    from attnkit.train.pretrain_backbone import pretrain_backbone

    cfg = load_config(args.config, args.overrides)
    metrics = pretrain_backbone(
        cfg,
        args.out,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        progress=not args.quiet,
    )
    print(json.dumps(metrics, indent=1))
    return 0


def _scalars(record: dict) -> dict:
    """The scalar metrics of a record (lists such as confusion matrices left out)."""
    skip = ("checkpoint", "split", "images", "config", "step", "epoch", "seconds")
    return {k: v for k, v in record.items() if isinstance(v, (int, float)) and k not in skip}


def cmd_models(args) -> int:
    from attnkit.models.registry import FAMILIES
    from attnkit.tasks import get_task

    configs = Path(args.configs)
    for name in sorted(FAMILIES):
        family = FAMILIES[name]
        task = get_task(family.task).name
        others = [get_task(other).name for other in family.all_tasks[1:]]
        also = f"; also {', '.join(others)} with task=<name>" if others else ""
        print(f"{name}  ({task}{also}): {family.description}")
        for variant, text in family.variants.items():
            print(f"    variant {variant}: {text}")
        for path in sorted((configs / name).glob("*.yaml")):
            print(f"    config  {path}")
    return 0


def cmd_eval(args) -> int:
    from attnkit.train.evaluate import evaluate_checkpoint

    record = evaluate_checkpoint(
        args.checkpoint,
        args.out,
        args.data_root,
        args.overrides,
        args.config,
        args.split,
        progress=not args.quiet,
        overwrite=args.overwrite,
        allow_model_change=args.model_from_config,
    )
    print(json.dumps(_scalars(record), indent=1))
    print(f"wrote {Path(args.out) / 'metrics.json'}")
    return 0


def cmd_analyze(args) -> int:
    from attnkit.analysis.run_analysis import run_analysis

    summary = run_analysis(
        args.out,
        checkpoint=args.checkpoint,
        config=args.config,
        random_init=args.random_init,
        overrides=args.overrides,
        batch_size=args.batch_size,
        max_images=args.max_images,
        split=args.split,
        layers=args.layers,
        zero_threshold=args.zero_threshold,
        progress=not args.quiet,
        overwrite=args.overwrite,
    )
    sites = summary["meta"]["sites"]
    for metric in ("gini", "zeros_ratio", "entropy", "distance", "paibb"):
        for layer, stats in summary.get(metric, {}).items():
            site = f"{sites.get(layer, layer)} ({layer})"
            print(f"{metric:<12} {site:<55} {stats['mean']:.4f} +- {stats['std']:.4f}")
    written = [Path(args.out) / name for name in ("summary.json", "records.parquet")]
    print("wrote " + " and ".join(str(p) for p in written if p.is_file()))
    return 0


# --------------------------------------------------------------------------- workbook


def cmd_workbook_run(args) -> int:
    from attnkit.workbook import run_workbook

    only = [o.strip() for o in args.only.split(",")] if args.only else None
    families = [f.strip() for f in args.family.split(",")] if args.family else None
    results, summary = run_workbook(
        args.workbook,
        args.profile,
        only,
        _parse_params(args.param),
        args.out,
        args.kernel,
        families=families,
        overwrite=args.overwrite,
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
    from attnkit.workbook import INJECTED, load_workbook, notebook_parameters
    from attnkit.workbook_spec import declared_type, full_id, select_entries

    families = [f.strip() for f in args.family.split(",")] if args.family else None
    entries = select_entries(load_workbook(args.workbook)["notebooks"], families)
    order = list(dict.fromkeys(e["family"] for e in entries))
    base = Path(args.workbook).parent
    shown = None
    for entry in sorted(entries, key=lambda e: order.index(e["family"])):  # grouped by family
        if entry["family"] != shown:
            shown = entry["family"]
            print(f"== {shown} ==")
        print(f"[{full_id(entry)}] {entry['notebook']}: {entry.get('description', '')}")
        for name, info in notebook_parameters(base / entry["notebook"]).items():
            if name in INJECTED:
                continue
            help_text = f"  # {info['help']}" if info.get("help") else ""
            kind, _ = declared_type(info)  # annotated, else read off the default
            kind = f": {kind}" if kind else ""
            print(f"    {name}{kind} = {info['default']}{help_text}")
        for profile, chosen in (entry.get("profiles") or {}).items():
            print(f"    profile {profile}: {chosen}")
        if entry.get("sweep"):
            print(f"    sweep: {entry['sweep']}")
    return 0


# --------------------------------------------------------------------------- bench


def cmd_bench(args) -> int:
    module = importlib.import_module(BENCHMARKS[args.name])
    return module.main(args.rest) or 0
