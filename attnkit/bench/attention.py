"""Efficiency profiles of attention mechanisms: time, peak memory and FLOPs against token count.

Each mechanism is one attention layer of the dense line's encoders (``C`` channels, heads of
``C / heads``) on an ``s x s`` token map (``4 s`` pixels at patch 4), random input, float32,
forward + backward. The resolution sweep gives, per mechanism, the median milliseconds, the peak
memory of the pass (CUDA's allocator on a GPU; a tracker of tensor storages on the CPU) and the
forward FLOPs of ``torch.utils.flop_counter``; a straight-line fit of log time (and log memory)
against log N over the larger maps gives the scaling exponent: about 2 for full attention, about
1 for windowed, grid, pooled-reduction and efficient (linear) attention. The complexity column
states each mechanism's cost of forming and applying its attention (N tokens, C channels,
P = window area, r = spatial reduction, p = 7 the pooled key grid's side), beside the measured numbers. Nothing here asserts a time.

    attnkit bench attention                                   # CPU, sides 8 ... 64 tokens
    attnkit bench attention --sides 8,16,32,64,128 --device cuda --out results/attention
    attnkit bench attention --mechanisms full,window,efficient --normalizer sparsemax
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from attnkit.attention.mixers import map_attention
from attnkit.bench.memory import step_peak_mib
from attnkit.bench.models import count_flops, machine_info, machine_line, pick_device

COMPLEXITY = {
    "full": "2 N^2 C",
    "window": "2 N P C",
    "shifted_window": "2 N P C",
    "grid": "2 N P C",
    "spatial_reduction": "2 N^2 C / r^2",
    "pooled_reduction": "2 N p^2 C",
    "efficient": "2 N C^2 / heads",
}
"""Multiply-adds of forming and applying each mechanism's attention (projections excluded)."""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step(layer: nn.Module, x: torch.Tensor) -> None:
    layer(x).square().mean().backward()


def _peak_mib(layer: nn.Module, x: torch.Tensor) -> float:
    return step_peak_mib(lambda: _step(layer, x), [x, *layer.parameters()], x.device)


def measure(layer: nn.Module, side: int, dim: int, batch: int, repeats: int, device) -> dict:
    """One point of the profile: median ms of forward + backward, peak MiB, forward GFLOPs."""
    x = torch.randn(batch, side, side, dim, device=device, requires_grad=True)
    _step(layer, x)  # warm-up
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        _step(layer, x)
        _sync(device)
        times.append(1e3 * (time.perf_counter() - t0))
    return {
        "tokens": side * side,
        "ms": statistics.median(times),
        "mib": _peak_mib(layer, x),
        "gflops": count_flops(layer, x.detach()) / 1e9,
    }


def exponent(points: list[dict], key: str, min_tokens: int = 256) -> float:
    """Slope of log ``key`` against log tokens over the points with at least ``min_tokens``
    (all of them when fewer than two qualify)."""
    use = [p for p in points if p["tokens"] >= min_tokens] or points
    if len(use) < 2:
        return float("nan")
    n = np.log([p["tokens"] for p in use])
    y = np.log([max(p[key], 1e-12) for p in use])
    return float(np.polyfit(n, y, 1)[0])


def profile(
    mechanisms: list[str], sides: list[int], settings: dict, progress: Callable = print
) -> dict:
    """``{mechanism: [point per side]}`` (see :func:`measure`)."""
    device = settings["device"]
    out = {}
    for kind in mechanisms:
        torch.manual_seed(0)
        normalizer = "softmax" if kind == "efficient" else settings["normalizer"]
        window = (settings["window"],) * 2
        layer = map_attention(
            kind,
            settings["dim"],
            settings["heads"],
            normalizer,
            window=window,
            sr_ratio=settings["sr"],
        ).to(device)
        out[kind] = []
        for side in sides:
            point = measure(
                layer, side, settings["dim"], settings["batch"], settings["repeats"], device
            )
            out[kind].append(point)
            progress(
                f"{kind:>18} {side:>4}x{side:<4} {point['ms']:9.2f} ms {point['mib']:9.1f} MiB"
            )
    return out


def tables(results: dict) -> tuple[str, str]:
    """The summary table (complexity, exponents) and the per-resolution table, as Markdown."""
    summary = [
        "| mechanism | attention cost | time exponent | memory exponent |",
        "|---|---|---|---|",
    ]
    detail = ["| mechanism | tokens | ms | peak MiB | GFLOPs |", "|---|---|---|---|---|"]
    for kind, points in results.items():
        summary.append(
            f"| {kind} | {COMPLEXITY[kind]} | {exponent(points, 'ms'):.2f} | "
            f"{exponent(points, 'mib'):.2f} |"
        )
        detail += [
            f"| {kind} | {p['tokens']} | {p['ms']:.2f} | {p['mib']:.1f} | {p['gflops']:.3f} |"
            for p in points
        ]
    return "\n".join(summary), "\n".join(detail)


def to_latex(markdown: str) -> str:
    """A Markdown table as a LaTeX tabular (booktabs)."""
    rows = [r.strip("|").split("|") for r in markdown.splitlines() if not r.startswith("|---")]
    cols = len(rows[0])
    lines = [f"\\begin{{tabular}}{{l{'r' * (cols - 1)}}}", "\\toprule"]
    body = [
        " & ".join(c.strip().replace("_", "\\_").replace("^", "\\^{}") for c in r) + " \\\\"
        for r in rows
    ]
    lines += [body[0], "\\midrule", *body[1:], "\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    """Log-log time and memory against tokens, one line per mechanism (thesis style)."""
    import matplotlib.pyplot as plt

    from attnkit.viz.style import figsize, save_figure, use_thesis_style

    use_thesis_style()
    fig, axes = plt.subplots(1, 2, figsize=figsize(1.0, aspect=0.4))
    for kind, points in results.items():
        n = [p["tokens"] for p in points]
        for ax, key in zip(axes, ("ms", "mib")):
            label = f"{kind} ({exponent(points, key):.2f})"
            ax.loglog(n, [p[key] for p in points], marker="o", markersize=3, label=label)
    for ax, title in zip(axes, ("forward + backward (ms)", "peak memory (MiB)")):
        ax.set_xlabel("tokens N")
        ax.set_title(title)
        ax.legend(fontsize="x-small", title="fitted exponent", title_fontsize="x-small")
    fig.tight_layout()
    save_figure(fig, path.stem, path.parent)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attnkit bench attention",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )
    parser.add_argument("--mechanisms", default=",".join(COMPLEXITY))
    parser.add_argument("--sides", default="8,16,32,64", help="token map sides (N = side^2)")
    parser.add_argument("--dim", type=int, default=64, help="channels C")
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--window", type=int, default=7, help="window / grid side")
    parser.add_argument("--sr", type=int, default=4, help="spatial reduction r")
    parser.add_argument("--normalizer", default="softmax", help="where an attention matrix forms")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument(
        "--out", type=Path, default=None, help="folder for .md, .tex, .json, figure"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    mechanisms = [m.strip() for m in args.mechanisms.split(",") if m.strip()]
    unknown = [m for m in mechanisms if m not in COMPLEXITY]
    if unknown:
        raise SystemExit(
            f"attnkit bench attention: unknown mechanism(s) {unknown}; known: {', '.join(COMPLEXITY)}"
        )
    sides = [int(s) for s in args.sides.split(",") if s.strip()]
    settings = {
        k: getattr(args, k)
        for k in ("dim", "heads", "window", "sr", "normalizer", "batch", "repeats")
    }
    settings["device"] = device
    print(machine_line(machine_info(device)))
    results = profile(mechanisms, sides, settings)
    summary, detail = tables(results)
    print(f"\n{summary}\n\n{detail}")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "attention_profile.md").write_text(f"{summary}\n\n{detail}\n")
        (args.out / "attention_profile.tex").write_text(
            f"{to_latex(summary)}\n\n{to_latex(detail)}\n"
        )
        (args.out / "attention_profile.json").write_text(json.dumps(results, indent=1))
        plot(results, args.out / "attention_profile.png")
    return 0
