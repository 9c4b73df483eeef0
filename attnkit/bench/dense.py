"""Whole dense models: parameters, FLOPs, time and peak memory of forward + backward at one size.

The dense line's second question is what a whole model costs, not one attention layer
(``attnkit bench attention`` does that). Each row is a dense config (``configs/dense/*.yaml``)
built with random weights at ``--img-size`` (256 x 256 by default) with ``--mechanisms`` and
``--normalizers`` applied as config overrides: Swin-Unet (Swin-T-like, windows of 8),
SegFormer-b0 and a plain ViT-S/16 with SegFormer's head by default. Columns: parameters, forward
GFLOPs of ``torch.utils.flop_counter`` (a multiply-add is 2), the median ms of a training step
(forward, mean square of the prediction, backward) over interleaved rounds, and the peak memory
of that step (CUDA's allocator on a GPU, a tracker of tensor storages on the CPU). Rows the
mechanism does not apply to (MaxViT with another mechanism, efficient attention with a sparse
normalizer) are skipped with a note. Nothing here asserts a time.

    attnkit bench dense                                         # CPU, batch 2, 256x256
    attnkit bench dense --mechanisms native,full,efficient --threads 2
    attnkit bench dense --device cuda --batch 8 --normalizers softmax,sparsemax
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
from torch import nn

from attnkit.bench.maxvit import time_interleaved
from attnkit.bench.memory import step_peak_mib
from attnkit.bench.models import count_flops, machine_info, machine_line, pick_device
from attnkit.config import load_config
from attnkit.errors import ConfigError
from attnkit.models import build_model

REPO = Path(__file__).resolve().parents[2]
MODELS = {
    "swin_unet": ("swin_unet_224.yaml", ["model.encoder.window=8", "model.decoder.window=8"]),
    "segformer_b0": ("segformer_b0.yaml", []),
    "vit_small": ("vit_small_segformer.yaml", []),
}
"""``--models`` name -> (config in configs/dense, overrides)."""


def build_rows(
    names: list[str], mechanisms: list[str], normalizers: list[str], img: int
) -> tuple[dict[str, nn.Module], list[str]]:
    """``{row label: model}`` for every model x mechanism x normalizer that makes a valid
    config, and the notes on the combinations left out."""
    rows, notes = {}, []
    for name in names:
        config, overrides = MODELS[name]
        for mechanism in mechanisms:
            for normalizer in normalizers:
                label = f"{name} {mechanism} {normalizer}"
                try:
                    cfg = load_config(
                        REPO / "configs" / "dense" / config,
                        [
                            *overrides,
                            f"model.img_size=[{img},{img}]",
                            f"model.attention.mechanism={mechanism}",
                            f"model.attention.normalizer={normalizer}",
                        ],
                    )
                except ConfigError as err:
                    notes.append(f"{label}: skipped ({str(err).split(': ', 1)[-1]})")
                    continue
                torch.manual_seed(0)
                rows[label] = build_model(cfg)
    return rows, notes


def _step(model: nn.Module, images: torch.Tensor) -> None:
    model.zero_grad(set_to_none=True)
    model(images).square().mean().backward()


def peak_mib(model: nn.Module, images: torch.Tensor) -> float:
    """Peak memory of one training step beyond the weights and the input, MiB."""
    tracked = [images, *model.parameters(), *model.buffers()]
    return step_peak_mib(lambda: _step(model, images), tracked, images.device)


def format_table(rows: dict[str, dict]) -> str:
    """Markdown: one line per model with its cost and its time over the table's first row."""
    first = next(iter(rows.values()))["ms"]
    lines = [
        "| model | mechanism | normalizer | params M | GFLOPs | ms / step | x first | peak MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, r in rows.items():
        name, mechanism, normalizer = label.split(" ")
        lines.append(
            f"| {name} | {mechanism} | {normalizer} | {r['params'] / 1e6:.2f} | "
            f"{r['gflops']:.1f} | {r['ms']:.0f} | {r['ms'] / first:.2f} | {r['mib']:.0f} |"
        )
    return "\n".join(lines)


def _names(text: str, known, what: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if not names or unknown:
        raise SystemExit(
            f"attnkit bench dense: unknown {what} {unknown}; known: {', '.join(known)}"
        )
    return names


def main(argv: list[str] | None = None) -> int:
    from attnkit.models.dense.config import DenseAttentionConfig

    parser = argparse.ArgumentParser(
        prog="attnkit bench dense",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )
    parser.add_argument("--models", default=",".join(MODELS), help=", ".join(MODELS))
    parser.add_argument("--mechanisms", default="native", help="model.attention.mechanism values")
    parser.add_argument("--normalizers", default="softmax")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--img-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    args = parser.parse_args(argv)
    import typing

    known = typing.get_args(typing.get_type_hints(DenseAttentionConfig)["mechanism"])
    names = _names(args.models, MODELS, "models")
    mechanisms = _names(args.mechanisms, known, "mechanisms")
    normalizers = [n.strip() for n in args.normalizers.split(",") if n.strip()]
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    models, notes = build_rows(names, mechanisms, normalizers, args.img_size)
    if not models:
        raise SystemExit("attnkit bench dense: no valid model: " + "; ".join(notes))
    images = torch.randn(args.batch, 3, args.img_size, args.img_size, device=device)
    models = {k: m.to(device).train() for k, m in models.items()}
    rows = {
        k: {
            "params": sum(p.numel() for p in m.parameters()),
            "gflops": count_flops(m, images[:1]) / 1e9,
            "mib": peak_mib(m, images),
        }
        for k, m in models.items()
    }
    steps = {k: (lambda m=m: _step(m, images)) for k, m in models.items()}
    for k, t in time_interleaved(steps, args.repeats, device).items():
        rows[k]["ms"] = statistics.median(t)
    print(machine_line(machine_info(device)))
    print(f"forward + backward, batch {args.batch}, {args.img_size}x{args.img_size}, float32")
    print("GFLOPs: one image's forward\n")
    print(format_table(rows))
    for note in notes:
        print(f"\n{note}")
    return 0
