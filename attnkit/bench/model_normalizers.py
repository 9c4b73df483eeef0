"""Whole-model cost of each attention normalizer: ``attnkit bench models --normalizers ...``.

Every config (of any family and task) is built once per normalizer as ``attnkit train`` builds
it (``build_model``, the same random init for every normalizer, float32, train mode) with the
normalizer written into every config key its family names (``Family.normalizer_keys``: DETR's
decoder cross-attention, MaxViT's block and grid attention, every attention of ViT, sa_conv and
the dense models). One batch of the config's task is read from its training set
(``task.build_dataset(cfg, "train")`` + ``task.collate``: the embedded synthetic data unless the
config names real data) and each model times one step on it: ``model(**batch.inputs)``, the
task's loss, backward (no optimizer step). The normalizers of a config are timed in interleaved
rounds after one warm-up step each, so a change in the machine's load hits them alike; the table
gives the median ms per step and its ratio to the same config's softmax row. Nothing here
asserts a time.

``--img-size H W`` sets ``model.img_size`` and ``data.image_size`` where the config has them (the
synthetic classification images are resized to it, the synthetic height maps drawn at it); a
config with neither (DETR, whose data has its own scales) keeps its size, with a note. A
combination the config's checks refuse (efficient attention with a sparse normalizer) is skipped
with a note; a family without normalizer keys (``cnn``) is an error before anything runs.
"""

from __future__ import annotations

import random
import statistics
import sys
from pathlib import Path

import torch
from torch import nn

from attnkit.attention.normalizers import NORMALIZER_NAMES
from attnkit.bench.maxvit import time_interleaved
from attnkit.bench.models import (
    format_table,
    machine_info,
    machine_line,
    pick_device,
    split_arguments,
    write_outputs,
)
from attnkit.config import load_config
from attnkit.errors import ConfigError
from attnkit.models import build_model
from attnkit.models.registry import family_of
from attnkit.outputs import make_folder
from attnkit.tasks import task_of

__all__ = ["NORMALIZERS_HELP", "build_variants", "first_batch", "parse_normalizers", "run"]

DEFAULT_BATCH = 4
DEFAULT_ROUNDS = 5

NORMALIZERS_HELP = """\
with --normalizers N1,N2,... (whole-model cost of each attention normalizer):
  any family and task (DETR, MaxViT, ViT, sa_conv, dense); per config and normalizer one row:
  config, normalizer, input (the batch's image tensor), params M (trainable), ms / step (median
  over --repeats interleaved rounds, default 5, after one warm-up step; forward + the task's
  loss + backward on one batch of the config's training set, --batch, default 4), x softmax
  (over the same config's softmax row). --img-size sets model.img_size and data.image_size
  where the config has them. --latency-* and --train-repeats do not apply; --quick: 1 round.
  attnkit bench models --normalizers softmax,sparsemax,entmax15,alpha_entmax \\
      configs/maxvit/synth224_tiny_softmax.yaml configs/dense/synth224_swin_tiny_segformer.yaml \\
      configs/detr/shapes_tiny_softmax.yaml --batch 4 --threads 2
"""


def parse_normalizers(text: str) -> list[str]:
    """The names of a comma-separated ``--normalizers`` value; an unknown one is a ConfigError."""
    names = list(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in NORMALIZER_NAMES]
    if not names or unknown:
        raise ConfigError(
            f"--normalizers: unknown normalizer {', '.join(map(repr, unknown)) or '(none given)'}"
            f"; known: {', '.join(NORMALIZER_NAMES)}"
        )
    return names


def size_overrides(cfg, img_size: list[int] | None) -> list[str]:
    """``model.img_size`` and ``data.image_size`` overrides of ``--img-size``, where ``cfg``
    has those keys."""
    if not img_size:
        return []
    value = f"[{img_size[0]},{img_size[1]}]"
    keys = (("model", "img_size"), ("data", "image_size"))
    return [f"{s}.{k}={value}" for s, k in keys if hasattr(getattr(cfg, s), k)]


def build_variants(
    path: Path, overrides: list[str], normalizers: list[str], img_size: list[int] | None = None
) -> tuple[dict, list[str]]:
    """``{normalizer: config}`` of ``path`` with each normalizer in its family's keys, and the
    notes on what was left out. A bad config or override, or a family without normalizer keys,
    is a ConfigError; a normalizer the config's checks refuse is a note."""
    base = load_config(path, overrides)
    family = family_of(base)
    if not family.normalizer_keys:
        raise ConfigError(
            f"{path}: family {family.name} has no normalizer keys (Family.normalizer_keys is "
            "empty): it has no attention normalizer to swap"
        )
    sizes = size_overrides(base, img_size)
    notes = []
    if img_size and not sizes:
        notes.append(f"{path}: --img-size does not apply (no model.img_size / data.image_size)")
    variants = {}
    for name in normalizers:
        keys = [f"{key}={name}" for key in family.normalizer_keys]
        try:
            variants[name] = load_config(path, [*overrides, *sizes, *keys])
        except ConfigError as err:
            notes.append(f"{path} {name}: skipped ({str(err).split(': ', 1)[-1]})")
    return variants, notes


def first_batch(cfg, size: int):
    """One batch of ``size`` samples (the first ones, repeated when the set is smaller) of
    ``cfg``'s training set, collated by its task; augmentations drawn with seed 0."""
    task = task_of(cfg)
    dataset = task.build_dataset(cfg, "train")
    if len(dataset) == 0:
        raise ConfigError(f"{cfg.name}: the training set is empty, no batch to time")
    torch.manual_seed(0)
    random.seed(0)  # DETR's transforms draw from Python's generator, as the official code's
    return task.collate([dataset[i % len(dataset)] for i in range(size)])


def _input_label(batch) -> str:
    """``B x C x H x W`` of the batch's first 4-D input tensor (``-`` without one)."""
    tensors = [v for v in batch.inputs.values() if isinstance(v, torch.Tensor) and v.ndim == 4]
    return "x".join(map(str, tensors[0].shape)) if tensors else "-"


def _step(model: nn.Module, criterion: nn.Module, batch) -> None:
    model.zero_grad(set_to_none=True)
    criterion(model(**batch.inputs), batch.targets)["loss"].backward()


def measure(path: Path, variants: dict, settings: dict, device: torch.device) -> list[dict]:
    """One row per normalizer of one config: parameters and the median ms of a step."""
    first = next(iter(variants.values()))
    batch = first_batch(first, settings["batch"]).to(device)
    criterion = task_of(first).build_criterion(first).to(device)
    models = {}
    for name, cfg in variants.items():
        torch.manual_seed(0)  # the same weights for every normalizer
        models[name] = build_model(cfg).to(device).train()
    steps = {name: (lambda m=m: _step(m, criterion, batch)) for name, m in models.items()}
    times = time_interleaved(steps, settings["repeats"], device)
    label = f"{path.parent.name}/{path.stem}" if path.parent.name else path.stem
    rows = []
    for name, model in models.items():
        rows.append(
            {
                "config": str(path),
                "label": label,
                "normalizer": name,
                "input": _input_label(batch),
                "params": sum(p.numel() for p in model.parameters() if p.requires_grad),
                "ms": statistics.median(times[name]),
                "ms_rounds": times[name],
            }
        )
    softmax = next((r["ms"] for r in rows if r["normalizer"] == "softmax"), None)
    for row in rows:
        row["x_softmax"] = row["ms"] / softmax if softmax else None
    return rows


TABLE = (  # header, alignment, cell (attnkit.bench.models.format_table)
    ("config", "<", lambda r: r["label"]),
    ("normalizer", "<", lambda r: r["normalizer"]),
    ("input", "<", lambda r: r["input"]),
    ("params M", ">", lambda r: f"{r['params'] / 1e6:.2f}"),
    ("ms / step", ">", lambda r: f"{r['ms']:.1f}" if r["ms"] < 100 else f"{r['ms']:.0f}"),
    ("x softmax", ">", lambda r: "-" if r["x_softmax"] is None else f"{r['x_softmax']:.2f}"),
)


def _settings_line(s: dict) -> str:
    return (
        f"float32, train mode; a step: forward + the task's loss + backward (no optimizer step) "
        f"on one batch of {s['batch']} from the config's training set; median ms over "
        f"{s['repeats']} interleaved rounds after 1 warm-up step each"
    )


def run(args, parser) -> int:
    """``attnkit bench models --normalizers ...`` on the parsed arguments of ``bench models``."""
    batch = DEFAULT_BATCH if args.batch is None else args.batch
    repeats = 1 if args.quick else DEFAULT_ROUNDS if args.repeats is None else args.repeats
    if min([batch, repeats, *(args.img_size or [])]) < 1:
        parser.error("--batch, --repeats and --img-size must be >= 1")
    normalizers = parse_normalizers(args.normalizers)
    device = pick_device(args.device)
    if args.out:
        make_folder(args.out.parent, "folder of --out")  # before minutes of timing
    paths, overrides = split_arguments(args.configs)
    plans, notes = [], []
    for path in paths:  # every config checked before anything runs
        variants, config_notes = build_variants(path, overrides, normalizers, args.img_size)
        plans.append((path, variants))
        notes += config_notes
    if not any(variants for _, variants in plans):
        raise ConfigError("no config x normalizer combination is valid: " + "; ".join(notes))
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = {"batch": batch, "repeats": repeats, "img_size": args.img_size}
    settings.update(normalizers=normalizers, overrides=overrides)
    info = machine_info(device)
    header = [machine_line(info), _settings_line(settings)]
    print("\n".join(header), flush=True)
    rows = []
    for path, variants in plans:
        if not variants:
            continue
        print(f"measuring {path} ({', '.join(variants)}) ...", file=sys.stderr, flush=True)
        rows += measure(path, variants, settings, device)
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the previous config's models, freed on return
    table = format_table(rows, TABLE)
    print(table)
    for note in notes:
        print(note)
    if args.out:
        write_outputs(args.out, "\n\n".join([*header, table, *notes]), info, settings, rows)
    return 0
