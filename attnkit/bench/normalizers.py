"""Speed and memory of the attnkit normalizers next to the ``entmax`` package and softmax.

For each normalizer (sparsemax, entmax-1.5, alpha-entmax with one alpha per head) and each score
shape, the table gives the median forward + backward time of attnkit, of the ``entmax`` package
(``entmax.sparsemax``, ``entmax.entmax15``, ``entmax.entmax_bisect`` at its default 50
bisection steps) and of ``torch.softmax``, measured side by side in the same process, the peak
memory of each, and the ratios. Scores are ``randn * sigma`` in two regimes, ``init``
(sigma 0.15: sparsemax keeps ~2% of 850 keys, like a randomly initialised DETR) and ``trained``
(sigma 1.0: supports of a handful of keys). Nothing here asserts a time.

``--shapes detr,window,pixels`` times the shapes the model families use (DETR cross-attention
2x8x100x850, Swin / MaxViT windows 256x3x49x49, self-attention over 16x16 pixels 16x9x256x256)
and ``--threads 1,2`` repeats the table per torch thread count. The ``target`` column checks
the goals of issue 16: package / attnkit >= 8 and attnkit / softmax <= 2.5 (sparsemax,
entmax-1.5) or <= 6 (alpha-entmax).

    attnkit bench normalizers --shapes detr,window,pixels --threads 1,2
    python benchmarks/normalizers.py [--quick] [--repeats 20] [--shape 2,8,100,850]
    attnkit bench normalizers --ks 64,256,1024,4096
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from attnkit.attention.alpha_entmax import alpha_entmax
from attnkit.attention.entmax15 import entmax15
from attnkit.attention.kernels import fused_ops
from attnkit.attention.sparsemax import sparsemax
from attnkit.bench.memory import PeakBytes

REGIMES = {"init": 0.15, "trained": 1.0}
SHAPES = {"detr": (2, 8, 100, 850), "window": (256, 3, 49, 49), "pixels": (16, 9, 256, 256)}
# Goals of issue 16: (package / attnkit at least, attnkit / softmax at most).
TARGETS = {"sparsemax": (8.0, 2.5), "entmax15": (8.0, 2.5), "alpha_entmax": (8.0, 6.0)}
# One alpha per head for alpha-entmax (broadcast over dim 1), spread over the useful range.
HEAD_ALPHAS = (1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.9)


def _package_fns(alphas: torch.Tensor) -> dict[str, Callable]:
    import entmax

    return {
        "sparsemax": lambda z: entmax.sparsemax(z, -1),
        "entmax15": lambda z: entmax.entmax15(z, -1),
        "alpha_entmax": lambda z: entmax.entmax_bisect(z, alphas, -1),
    }


def _attnkit_fns(alphas: torch.Tensor) -> dict[str, Callable]:
    return {
        "sparsemax": sparsemax,
        "entmax15": entmax15,
        "alpha_entmax": lambda z: alpha_entmax(z, alphas),
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _fwd_bwd(fn: Callable, scores: torch.Tensor, grad: torch.Tensor) -> None:
    out = fn(scores)
    (g,) = torch.autograd.grad(out, scores, grad)
    del out, g


def _peak_mib(fn: Callable, scores: torch.Tensor, grad: torch.Tensor) -> float:
    device = scores.device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        _fwd_bwd(fn, scores, grad)
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    with PeakBytes([scores, grad]) as tracker:
        _fwd_bwd(fn, scores, grad)
    return tracker.peak / 2**20


def _time_side_by_side(
    fns: dict[str, Callable],
    scores: torch.Tensor,
    grad: torch.Tensor,
    repeats: int,
    budget_s: float,
) -> dict[str, list[float]]:
    """Forward + backward times (ms) per function, the functions interleaved per round."""
    device = scores.device
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():  # warm-up
        _fwd_bwd(fn, scores, grad)
    start = time.perf_counter()
    for r in range(repeats):
        for name, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            _fwd_bwd(fn, scores, grad)
            _sync(device)
            times[name].append(1e3 * (time.perf_counter() - t0))
        if r >= 2 and time.perf_counter() - start > budget_s:
            break
    return times


def _parse_ints(text: str) -> list[int]:
    return [int(v) for v in text.replace("x", ",").split(",") if v.strip()]


def _parse_shapes(text: str) -> list[tuple[int, ...]]:
    """Named shapes (``detr``, ``window``, ``pixels``) or ``BxHxQxK``, comma separated."""
    shapes = []
    for item in (v.strip() for v in text.split(",") if v.strip()):
        shape = SHAPES.get(item) or tuple(_parse_ints(item))
        if len(shape) != 4:
            raise ValueError(f"unknown shape {item!r}: use {', '.join(SHAPES)} or BxHxQxK")
        shapes.append(shape)
    return shapes


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _target(name: str, ms: dict[str, float]) -> str:
    """'met' when both goals of issue 16 hold for this row, else which one misses."""
    min_speedup, max_cost = TARGETS[name]
    misses = []
    if ms["pkg"] / ms["ak"] < min_speedup:
        misses.append("pkg")
    if ms["ak"] / ms["sm"] > max_cost:
        misses.append("sm")
    return "met" if not misses else "miss:" + "+".join(misses)


def _table(args, device: torch.device, shapes, regimes: list[str], repeats: int) -> None:
    """Print the table of one thread count (see the module docstring)."""
    memory_kind = "cuda max_memory_allocated" if device.type == "cuda" else "live tensor storages"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    kernels = "fused CPU kernels" if device.type == "cpu" and fused_ops() else "PyTorch path"
    print(
        f"attnkit normalizers vs entmax package vs softmax | torch {torch.__version__}, "
        f"{device} ({_cpu_name() if device.type == 'cpu' else torch.cuda.get_device_name()}), "
        f"{torch.get_num_threads()} threads (load average {load:.1f} at start), float32, "
        f"forward+backward, median of <= {repeats} interleaved rounds; attnkit: {kernels}"
    )
    print(
        "scores = randn(B,H,Q,K) * sigma: "
        + ", ".join(f"{name} sigma={REGIMES[name]}" for name in regimes)
        + f"; alpha_entmax: one alpha per head {HEAD_ALPHAS} (package: entmax_bisect, 50 steps)"
    )
    print(
        "ms: medians; pkg/ak, ak/sm: ratios of the medians; best: pkg/ak of the fastest rounds"
        " (less sensitive to other load on the machine)"
    )
    print(f"peak memory: extra MiB during forward+backward ({memory_kind}, a proxy on CPU)")
    header = (
        f"{'normalizer':<13}{'regime':<8}{'shape':<18}{'attnkit ms':>11}{'package ms':>11}"
        f"{'softmax ms':>11}{'pkg/ak':>8}{'ak/sm':>7}{'best':>6}{'ak MiB':>8}{'pkg MiB':>8}"
        f"{'sm MiB':>8}{'zeros':>7}{'target':>13}"
    )
    print(header)
    print("-" * len(header))
    gen = torch.Generator().manual_seed(0)
    for shape in shapes:
        heads = [HEAD_ALPHAS[h % len(HEAD_ALPHAS)] for h in range(shape[1])]
        alphas = torch.tensor(heads, device=device).view(1, -1, 1, 1)  # [1, H, 1, 1]
        ours, theirs = _attnkit_fns(alphas), _package_fns(alphas)
        for regime in regimes:
            base = torch.randn(shape, generator=gen) * REGIMES[regime]
            scores = base.to(device).requires_grad_()
            grad = torch.randn(shape, generator=gen).to(device)
            for name in ours:
                fns = {"ak": ours[name], "pkg": theirs[name], "sm": lambda z: torch.softmax(z, -1)}
                times = _time_side_by_side(fns, scores, grad, repeats, args.budget)
                ms = {key: statistics.median(ts) for key, ts in times.items()}
                best = {key: min(ts) for key, ts in times.items()}
                if args.no_memory:
                    mem = {key: float("nan") for key in fns}
                else:
                    mem = {key: _peak_mib(fn, scores, grad) for key, fn in fns.items()}
                with torch.no_grad():
                    zeros = (ours[name](scores) == 0).float().mean().item()
                print(
                    f"{name:<13}{regime:<8}{'x'.join(map(str, shape)):<18}{ms['ak']:>11.2f}"
                    f"{ms['pkg']:>11.2f}{ms['sm']:>11.2f}{ms['pkg'] / ms['ak']:>8.1f}"
                    f"{ms['ak'] / ms['sm']:>7.1f}{best['pkg'] / best['ak']:>6.1f}"
                    f"{mem['ak']:>8.1f}{mem['pkg']:>8.1f}"
                    f"{mem['sm']:>8.1f}{zeros:>7.3f}{_target(name, ms):>13}",
                    flush=True,
                )
    print()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="attnkit bench normalizers",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--repeats", type=int, default=20, help="timed rounds per cell (max)")
    parser.add_argument("--shape", default="2,8,100,850", help="B,H,Q,K of the main shape")
    parser.add_argument("--ks", default="64,256,1024,4096", help="K values of the sweep")
    parser.add_argument("--quick", action="store_true", help="main shape only, <= 10 rounds")
    parser.add_argument("--regimes", default="init,trained", help=f"of {', '.join(REGIMES)}")
    parser.add_argument("--budget", type=float, default=4.0, help="seconds per cell (soft)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory column")
    parser.add_argument(
        "--threads", default="0", help="torch thread counts, e.g. 1,2 (0: torch's default)"
    )
    parser.add_argument(
        "--shapes", default="", help=f"shapes to time instead of --shape/--ks: {', '.join(SHAPES)}"
    )
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    main_shape = _parse_ints(args.shape)
    if len(main_shape) != 4:
        parser.error("--shape must be B,H,Q,K")
    repeats = min(args.repeats, 10) if args.quick else args.repeats
    shapes = [tuple(main_shape)]
    if args.shapes:
        try:
            shapes = _parse_shapes(args.shapes)
        except ValueError as exc:
            parser.error(str(exc))
    elif not args.quick:
        shapes += [(2, 8, 100, k) for k in _parse_ints(args.ks) if k != main_shape[3]]
    threads = _parse_ints(args.threads) or [0]
    regimes = [r.strip() for r in args.regimes.split(",") if r.strip()]
    unknown = [r for r in regimes if r not in REGIMES]
    if unknown:
        parser.error(f"unknown regime(s) {unknown}; choose from {sorted(REGIMES)}")

    for count in threads:
        if count:
            torch.set_num_threads(count)
        _table(args, device, shapes, regimes, repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
