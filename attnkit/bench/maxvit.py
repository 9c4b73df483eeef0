"""MaxViT forward + backward: attnkit (per normalizer) beside timm and torchvision, in one run.

Every model is the same architecture (MaxViT-T by default: widths 64-512, depths 2-2-5-2, head
dim 32) at the same input, random weights, float32, one training step each (forward, cross-
entropy, backward; no optimizer). The models are timed in interleaved rounds, so a change in the
machine's load hits all of them alike, and the table gives the median milliseconds per step and
two ratios: each model's time over timm's (``x timm``: below 1 is faster) and each attnkit model's
time over attnkit softmax (``x softmax``: the cost of a sparse normalizer in the whole model).

The window and grid are ``img_size / 32`` as timm builds them (7 at 224). torchvision's
``MaxVit`` is built with the same partition size. Nothing here asserts a time.

    attnkit bench maxvit                                  # MaxViT-T, batch 4, 224x224, CPU
    attnkit bench maxvit --threads 2 --normalizers softmax,sparsemax,entmax15
    attnkit bench maxvit --variant small --device cuda --batch 32
    attnkit bench maxvit --img-size 64 --batch 2 --repeats 2   # a quick look
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from attnkit.bench.models import machine_info, machine_line, pick_device
from attnkit.models.maxvit.config import MAXVIT_VARIANTS, maxvit_variant
from attnkit.models.maxvit.model import MaxViT

TIMM_NAMES = {v: f"maxvit_{v}_tf_224" for v in ("tiny", "small", "base", "large")}
TORCHVISION = {"tiny": "maxvit_t"}  # torchvision ships MaxViT-T only


def attnkit_model(variant: str, normalizer: str, img: int) -> nn.Module:
    part = [img // 32, img // 32]
    attention = {"block": {"normalizer": normalizer}, "grid": {"normalizer": normalizer}}
    cfg = maxvit_variant(variant, img_size=[img, img], window=part, grid=part, attention=attention)
    return MaxViT(cfg)


def timm_model(variant: str, img: int) -> nn.Module:
    import timm

    return timm.create_model(TIMM_NAMES[variant], pretrained=False, img_size=img)


def torchvision_model(variant: str, img: int) -> nn.Module:
    from torchvision.models.maxvit import MaxVit

    v = MAXVIT_VARIANTS[variant]
    return MaxVit(
        input_size=(img, img),
        stem_channels=v["stem_width"],
        partition_size=img // 32,
        block_channels=v["embed_dims"],
        block_layers=v["depths"],
        head_dim=32,
        stochastic_depth_prob=v["drop_path_rate"],
        num_classes=1000,
    )


def build_models(variant: str, normalizers: list[str], img: int) -> dict[str, nn.Module]:
    """``{row label: model}``: attnkit per normalizer, then timm and torchvision (when they have
    the variant)."""
    models = {f"attnkit {n}": attnkit_model(variant, n, img) for n in normalizers}
    if variant in TIMM_NAMES:
        models[f"timm {TIMM_NAMES[variant]}"] = timm_model(variant, img)
    if variant in TORCHVISION:
        models[f"torchvision {TORCHVISION[variant]}"] = torchvision_model(variant, img)
    return models


def _step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> None:
    model.zero_grad(set_to_none=True)
    loss = nn.functional.cross_entropy(model(images), labels)
    loss.backward()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    steps: dict[str, Callable[[], None]], repeats: int, device: torch.device
) -> dict[str, list[float]]:
    """Milliseconds of each step function over ``repeats`` interleaved rounds (one warm-up)."""
    for fn in steps.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, fn in steps.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(1e3 * (time.perf_counter() - t0))
    return times


def format_table(times: dict[str, list[float]], params: dict[str, int]) -> str:
    """The Markdown table of the module docstring."""
    med = {name: statistics.median(t) for name, t in times.items()}
    timm_row = next((n for n in med if n.startswith("timm ")), None)
    softmax = med.get("attnkit softmax")
    lines = [
        "| model | params M | ms / step (median) | min - max | x timm | x softmax |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in med.items():
        vs_timm = f"{m / med[timm_row]:.2f}" if timm_row else "-"
        vs_soft = f"{m / softmax:.2f}" if softmax and name.startswith("attnkit ") else "-"
        lines.append(
            f"| {name} | {params[name] / 1e6:.2f} | {m:.0f} | {min(times[name]):.0f} - "
            f"{max(times[name]):.0f} | {vs_timm} | {vs_soft} |"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attnkit bench maxvit",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )
    parser.add_argument("--variant", default="tiny", choices=sorted(MAXVIT_VARIANTS))
    parser.add_argument("--normalizers", default="softmax,sparsemax")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--img-size", type=int, default=224, help="square input side (>= 32)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds after one warm-up")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.img_size < 32 or args.img_size % 32:
        raise SystemExit("attnkit bench maxvit: --img-size must be a multiple of 32 (timm's rule)")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    torch.manual_seed(args.seed)
    normalizers = [n.strip() for n in args.normalizers.split(",") if n.strip()]
    models = {
        k: m.to(device).train()
        for k, m in build_models(args.variant, normalizers, args.img_size).items()
    }
    images = torch.randn(args.batch, 3, args.img_size, args.img_size, device=device)
    labels = torch.randint(0, 1000, (args.batch,), device=device)
    steps = {name: (lambda m=m: _step(m, images, labels)) for name, m in models.items()}
    params = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}
    print(machine_line(machine_info(device)))
    print(
        f"MaxViT-{args.variant} forward + backward, batch {args.batch}, "
        f"{args.img_size}x{args.img_size}, float32, {args.repeats} interleaved rounds\n"
    )
    print(format_table(time_interleaved(steps, args.repeats, device), params))
    return 0
