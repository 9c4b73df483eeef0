"""Parameters, FLOPs, training / inference throughput and latency of models, one table row each.

Each config (a YAML file, or a folder meaning every ``*.yaml`` in it) is built with
``build_model`` exactly as ``attnkit train`` builds it (random init, float32) and fed random
images of the size its model takes: ``--img-size`` when given (also set as ``model.img_size``
when the model section has one), else ``model.img_size``, else ``data.image_size``, else 32x32
(the synthetic set and CIFAR-10), with ``model.in_chans`` channels (default 3). No dataset is
read. A ResNet-18 config (``model.name: cnn`` with ``arch: resnet18``) goes first as the
reference row, and the ``x ref`` columns divide every throughput by its throughput.

Only classification families (``vit``, ``cnn``, ``sa_conv`` and any family whose task is
``classification``: ``model(images=[B, C, H, W]) -> logits``) are measured. A config of another
task (DETR) is refused with one line before anything runs (``attnkit bench train_step`` measures
DETR). With ``--normalizers`` the command instead times a whole training step of any config once
per attention normalizer, on a batch of its own data (``attnkit.bench.model_normalizers``; the
epilog of ``--help``). Nothing here asserts a time.

    attnkit bench models configs/sa_conv/ --device cpu --threads 2
    attnkit bench models configs/cnn/cifar10_resnet18.yaml configs/vit/ --quick
    attnkit bench models configs/vit/synth_softmax.yaml model.depth=2 --out results/models.md
    attnkit bench models --normalizers softmax,sparsemax configs/detr/shapes_tiny_softmax.yaml
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from attnkit.config import load_config
from attnkit.errors import ConfigError, EnvError
from attnkit.models import build_model
from attnkit.outputs import make_folder
from attnkit.tasks import task_name, task_of

NATIVE_SIZE = (32, 32)  # the embedded synthetic set and CIFAR-10
THROUGHPUT_WARMUP = 3  # untimed calls before a throughput measurement (1 with --quick)
QUICK = {"repeats": 2, "latency_warmup": 1, "latency_repeats": 3, "train_repeats": 2}
SGD_LR = 1e-4  # small enough that a few steps on random images never diverge

COLUMNS_HELP = """\
columns:
  config       the config file (parent folder / stem); the ResNet-18 reference comes first
  family       model.name (and model.arch when the family has one)
  input        C x H x W of the random images fed to the model
  params M     trainable parameters, millions
  GFLOPs       forward FLOPs of one image (batch 1) counted by FlopCounterMode
               (torch.utils.flop_counter), divided by 1e9. It counts a multiply-add as 2 FLOPs
               and counts only matmul / conv / fused-attention ops (norms, activations, softmax
               and sparsemax themselves are not counted)
  train img/s  images/s of forward + the task's cross-entropy loss + backward + SGD step
               (momentum 0.9) at --batch, over --train-repeats steps after a few warm-up steps
  infer img/s  images/s of the forward pass in eval mode under torch.inference_mode at
               --batch, over --repeats calls after a few warm-up calls
  latency ms   one image (batch 1, inference_mode): mean +- std over --latency-repeats calls
               after --latency-warmup calls
  train x ref, infer x ref
               throughput divided by the ResNet-18 row's ('-' without one)
Times: CUDA events around the work (synchronised) on GPU, time.perf_counter on CPU; float32.
"""


def count_flops(model: nn.Module, *args, **kwargs) -> int:
    """FLOPs of one forward call ``model(*args, **kwargs)`` as ``FlopCounterMode`` counts them
    (a multiply-add is 2 FLOPs; only matmul-, conv- and attention-like ops are counted)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(*args, **kwargs)
    return int(counter.get_total_flops())


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_info(device: torch.device) -> dict:
    """What the numbers were measured on: CPU, threads, torch, GPU."""
    info = {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": str(device),
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def machine_line(info: dict) -> str:
    load = info["load_average"]
    line = (
        f"CPU {info['cpu']} ({info['cpu_count']} cores), torch threads {info['torch_threads']}, "
        f"torch {info['torch']}, device {info['device']}"
    )
    if "gpu" in info:
        line += f" ({info['gpu']}, CUDA {info['cuda']})"
    return line + (f", load average {load:.1f} at start" if load is not None else "")


def pick_device(name: str) -> torch.device:
    """``auto``: the GPU when torch sees one, else the CPU; ``cuda`` without one is an EnvError."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise EnvError(
            f"--device cuda but torch sees no CUDA GPU here (torch {torch.__version__}, CUDA "
            f"build: {torch.version.cuda or 'none'}): use --device cpu or --device auto"
        )
    return torch.device(name)


def split_arguments(items: list[str]) -> tuple[list[Path], list[str]]:
    """Config files (a folder: its ``*.yaml``, sorted) and ``key=value`` overrides, in order."""
    paths: list[Path] = []
    overrides: list[str] = []
    for item in items:
        path = Path(item)
        if "=" in item and not path.exists() and path.suffix not in (".yaml", ".yml"):
            overrides.append(item)
        elif path.is_dir():
            found = sorted(p for p in path.glob("*.yaml") if p.is_file())
            if not found:
                raise ConfigError(f"{path}: no *.yaml config in this folder")
            paths += found
        elif path.is_file():
            paths.append(path)
        else:
            raise ConfigError(f"config not found: {path} (give config YAML files or folders)")
    if not paths:
        raise ConfigError("no config given: pass config YAML files or folders of them")
    return paths, overrides


def load_model_config(path: Path, overrides: list[str], img_size: list[int] | None):
    """The config of ``path`` with ``overrides``; a family of another task is a ConfigError."""
    cfg = load_config(path, overrides)
    if img_size and hasattr(cfg.model, "img_size"):
        cfg = load_config(path, [*overrides, f"model.img_size=[{img_size[0]},{img_size[1]}]"])
    task = task_name(cfg)
    if task != "classification":
        raise ConfigError(
            f"{path}: model.name={cfg.model.name} is a {task} model; `attnkit bench models` "
            "measures classification models only (images -> logits): use `attnkit bench "
            "train_step` for DETR, or --normalizers for the cost of each normalizer"
        )
    return cfg


def input_shape(cfg, img_size: list[int] | None = None) -> tuple[int, int, int]:
    """``(C, H, W)`` of the images ``cfg``'s model takes (see the module docstring)."""
    size = (
        img_size
        or getattr(cfg.model, "img_size", None)
        or getattr(cfg.data, "image_size", None)
        or NATIVE_SIZE
    )
    return int(getattr(cfg.model, "in_chans", 3)), int(size[0]), int(size[1])


def is_reference(cfg) -> bool:
    """A ResNet-18 config: the reference row of the table."""
    return cfg.model.name == "cnn" and getattr(cfg.model, "arch", None) == "resnet18"


def _elapsed_ms(fn: Callable[[], object], device: torch.device) -> float:
    """Milliseconds of ``fn()``: CUDA events (synchronised) on GPU, perf_counter on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    start_s = time.perf_counter()
    fn()
    return 1e3 * (time.perf_counter() - start_s)


def _repeat(fn: Callable[[], object], times: int) -> Callable[[], None]:
    def run() -> None:
        for _ in range(times):
            fn()

    return run


def bench_config(path: Path, cfg, device: torch.device, settings: dict) -> dict:
    """One row: parameters, FLOPs per image, train / inference throughput, batch-1 latency."""
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    task = task_of(cfg)
    criterion = task.build_criterion(cfg).to(device)
    shape = input_shape(cfg, settings["img_size"])
    num_classes = int(getattr(cfg.model, "num_classes", 1))

    def batch_of(n: int):
        samples = [(torch.randn(shape), i % num_classes) for i in range(n)]  # [C, H, W] each
        return task.collate(samples).to(device)  # images [n, C, H, W]

    one, many = batch_of(1), batch_of(settings["batch"])
    warmup, batch = settings["throughput_warmup"], settings["batch"]
    model.eval()
    flops = count_flops(model, **one.inputs)
    with torch.inference_mode():
        forward = lambda: model(**many.inputs)  # noqa: E731
        _repeat(forward, warmup)()
        infer_ms = _elapsed_ms(_repeat(forward, settings["repeats"]), device)
        single = lambda: model(**one.inputs)  # noqa: E731
        _repeat(single, settings["latency_warmup"])()
        latency = [_elapsed_ms(single, device) for _ in range(settings["latency_repeats"])]

    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=SGD_LR, momentum=0.9)

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = criterion(model(**many.inputs), many.targets)["loss"]
        loss.backward()
        optimizer.step()

    _repeat(train_step, warmup)()
    train_ms = _elapsed_ms(_repeat(train_step, settings["train_repeats"]), device)
    arch = getattr(cfg.model, "arch", None)
    return {
        "config": str(path),
        "label": f"{path.parent.name}/{path.stem}" if path.parent.name else path.stem,
        "family": cfg.model.name + (f" {arch}" if arch else ""),
        "reference": is_reference(cfg),
        "input": list(shape),
        "params": sum(p.numel() for p in trainable),
        "params_total": sum(p.numel() for p in model.parameters()),
        "flops": flops,
        "gflops": flops / 1e9,
        "train_img_s": batch * settings["train_repeats"] / (train_ms / 1e3),
        "infer_img_s": batch * settings["repeats"] / (infer_ms / 1e3),
        "latency_ms_mean": statistics.fmean(latency),
        "latency_ms_std": statistics.stdev(latency) if len(latency) > 1 else 0.0,
        "latency_ms": latency,
    }


def order_rows(rows: list[dict]) -> list[dict]:
    """The first ResNet-18 row first, the rest in the order given; adds the ``x ref`` ratios."""
    ref = next((r for r in rows if r["reference"]), None)
    ordered = ([ref] if ref else []) + [r for r in rows if r is not ref]
    for row in ordered:
        for key in ("train", "infer"):
            row[f"{key}_rel"] = row[f"{key}_img_s"] / ref[f"{key}_img_s"] if ref else None
    return ordered


def _throughput(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


TABLE = (  # header, alignment, cell
    ("config", "<", lambda r: r["label"] + (" (ref)" if r["reference"] else "")),
    ("family", "<", lambda r: r["family"]),
    ("input", "<", lambda r: "x".join(map(str, r["input"]))),
    ("params M", ">", lambda r: f"{r['params'] / 1e6:.3f}"),
    ("GFLOPs", ">", lambda r: f"{r['gflops']:.4f}"),
    ("train img/s", ">", lambda r: _throughput(r["train_img_s"])),
    ("infer img/s", ">", lambda r: _throughput(r["infer_img_s"])),
    ("latency ms", ">", lambda r: f"{r['latency_ms_mean']:.2f} ± {r['latency_ms_std']:.2f}"),
    ("train x ref", ">", lambda r: "-" if r["train_rel"] is None else f"{r['train_rel']:.2f}"),
    ("infer x ref", ">", lambda r: "-" if r["infer_rel"] is None else f"{r['infer_rel']:.2f}"),
)


def format_table(rows: list[dict], columns: tuple = TABLE) -> str:
    """A markdown table of ``(header, alignment, cell)`` columns, also aligned as plain text."""
    cells = [[cell(r) for _, _, cell in columns] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, (h, _, _) in enumerate(columns)]
    aligns = [a for _, a, _ in columns]

    def line(values: list[str]) -> str:
        padded = [v.ljust(w) if a == "<" else v.rjust(w) for v, w, a in zip(values, widths, aligns)]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(
        "-" * (w + 1) + (":" if a == ">" else "-") for w, a in zip(widths, aligns)
    )
    lines = [line([h for h, _, _ in columns]), rule + "|"]
    return "\n".join(lines + [line(c) for c in cells])


def settings_line(s: dict) -> str:
    return (
        f"float32; train: batch {s['batch']}, {s['train_repeats']} steps (fwd + loss + bwd + "
        f"SGD); infer: batch {s['batch']}, {s['repeats']} calls; {s['throughput_warmup']} "
        f"warm-up each; latency: batch 1, {s['latency_repeats']} calls after "
        f"{s['latency_warmup']} warm-up; GFLOPs: FlopCounterMode, batch 1, multiply-add = 2"
    )


def write_outputs(out: Path, text: str, info: dict, settings: dict, rows: list[dict]) -> None:
    """``out`` as markdown (``.md`` suffix) and the raw numbers as JSON next to it."""
    md, js = out.with_suffix(".md"), out.with_suffix(".json")
    md.write_text(text + "\n")
    js.write_text(json.dumps({"machine": info, "settings": settings, "rows": rows}, indent=2))
    print(f"wrote {md} and {js}")


def build_parser() -> argparse.ArgumentParser:
    from attnkit.bench.model_normalizers import NORMALIZERS_HELP

    parser = argparse.ArgumentParser(
        prog="attnkit bench models",
        description=__doc__,
        epilog=COLUMNS_HELP + "\n" + NORMALIZERS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "configs",
        nargs="+",
        metavar="CONFIG|key=value",
        help="config YAML files, or folders meaning every *.yaml in them; arguments of the "
        "form key=value are config overrides applied to every config (e.g. model.depth=2)",
    )
    add = parser.add_argument
    add("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: GPU if any")
    add("--normalizers", metavar="N1,N2", help="time each normalizer in every config (below)")
    add("--batch", type=int, help="batch of the throughputs (16; with --normalizers 4)")
    add("--repeats", type=int, help="timed inference calls (100; with --normalizers rounds, 5)")
    add("--latency-warmup", type=int, default=10, help="untimed batch-1 calls")
    add("--latency-repeats", type=int, default=300, help="timed batch-1 calls")
    add("--train-repeats", type=int, default=20, help="timed training steps")
    add("--threads", type=int, default=None, help="torch.set_num_threads(N)")
    add("--quick", action="store_true", help="smoke run: at most 2 calls / steps per timing")
    add("--img-size", type=int, nargs=2, metavar=("H", "W"), help="input size (and model.img_size)")
    add("--out", type=Path, metavar="FILE", help="also write FILE.md (table) and FILE.json (raw)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.normalizers is not None:
        from attnkit.bench.model_normalizers import run

        return run(args, parser)
    args.batch = 16 if args.batch is None else args.batch
    args.repeats = 100 if args.repeats is None else args.repeats
    counts = [args.batch, args.repeats, args.latency_repeats, args.train_repeats]
    if min(counts + (args.img_size or [])) < 1 or args.latency_warmup < 0:
        parser.error("--batch, --repeats, --*-repeats, --img-size must be >= 1, warm-up >= 0")
    device = pick_device(args.device)
    if args.out:
        make_folder(args.out.parent, "folder of --out")  # before minutes of timing
    paths, overrides = split_arguments(args.configs)
    configs = [(path, load_model_config(path, overrides, args.img_size)) for path in paths]
    if args.threads:
        torch.set_num_threads(args.threads)
    names = ("batch", "repeats", "latency_warmup", "latency_repeats", "train_repeats", "img_size")
    settings = {name: getattr(args, name) for name in names}
    settings.update(throughput_warmup=THROUGHPUT_WARMUP, overrides=overrides)
    if args.quick:
        settings.update({k: min(settings[k], v) for k, v in QUICK.items()})
        settings["throughput_warmup"] = 1
    info = machine_info(device)
    header = [machine_line(info), settings_line(settings)]
    print("\n".join(header), flush=True)
    rows = []
    for path, cfg in configs:
        print(f"measuring {path} ...", file=sys.stderr, flush=True)
        rows.append(bench_config(path, cfg, device, settings))
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the previous model's blocks, freed on return
    rows = order_rows(rows)
    table = format_table(rows)
    print(table)
    if args.out:
        write_outputs(args.out, "\n\n".join([*header, table]), info, settings, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
