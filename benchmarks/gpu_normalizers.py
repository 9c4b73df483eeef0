"""Check and time the Triton kernels of the sparse normalizers on a CUDA device (run once, ~3 min).

Usage: ``python benchmarks/gpu_normalizers.py [--reps 20] [--warmup 5] [--no-timing]``.

1. Checks, at the shapes of the families (DETR cross-attention 2x8x100x850 with padded keys
   and a fully masked query, windows 256x3x49x49, pixels 16x9x256x256), in float32 and
   bfloat16: the Triton kernels (``backend="triton"``) against attnkit's PyTorch path
   (``backend="torch"``), values and gradients (scores, per-head alphas), and in float32
   against the ``entmax`` package in float64 (when installed). Any mismatch: exit status 1.
2. Times forward + backward (CUDA events, warm-up, median): softmax, the Triton kernels and the
   PyTorch path per normalizer; then attention with head dim 32 (q, k, v of those shapes):
   ``scaled_dot_product_attention`` against attnkit's ``attend`` with each sparse normalizer,
   Triton (auto) or PyTorch (``ATTNKIT_NO_TRITON=1``). Prints markdown tables with ratios.

Without a CUDA device it prints so and exits 0.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # attnkit, also uninstalled

from attnkit.attention.alpha_entmax import AlphaEntmax, alpha_entmax  # noqa: E402
from attnkit.attention.core import attend  # noqa: E402
from attnkit.attention.entmax15 import Entmax15, entmax15  # noqa: E402
from attnkit.attention.kernels.triton_functions import TRITON_ENV, use_triton  # noqa: E402
from attnkit.attention.sparsemax import Sparsemax, sparsemax  # noqa: E402

SHAPES = {"detr": (2, 8, 100, 850), "windows": (256, 3, 49, 49), "pixels": (16, 9, 256, 256)}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
NAMES = ("sparsemax", "entmax15", "alpha_entmax")
HEAD_DIM = 32
# Tolerances of Triton against the PyTorch path: float32, and bfloat16 (one unit in the last
# place of the rounded weights). The gradient of alpha, a sum over many rows, is ill-conditioned
# near alpha = 1 (a 1 / (alpha - 1)^2 factor): compared relative to its largest head.
ATOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}
RTOL = {torch.float32: 0.0, torch.bfloat16: 1.6e-2}
ALPHA_TOL = 2e-3


def _alphas(heads: int, device) -> torch.Tensor:
    return torch.linspace(1.05, 2.0, heads, device=device).view(1, heads, 1, 1)  # [1, H, 1, 1]


def _normalize(name: str, scores, alpha, backend: str):
    if name == "sparsemax":
        return sparsemax(scores, backend=backend)
    if name == "entmax15":
        return entmax15(scores, backend=backend)
    return alpha_entmax(scores, alpha, backend=backend)


def _package(name: str, scores, alpha):
    import entmax

    if name == "sparsemax":
        return entmax.sparsemax(scores, -1)
    if name == "entmax15":
        return entmax.entmax15(scores, -1)
    return entmax.entmax_bisect(scores, alpha, -1, n_iter=60)


def _run(fn, name: str, scores, upstream, alpha):
    """``(weights, d scores, d alpha or None)`` of ``<fn(scores, alpha), upstream>``."""
    scores = scores.detach().requires_grad_()
    inputs = [scores]
    if name == "alpha_entmax":
        alpha = alpha.detach().requires_grad_()
        inputs.append(alpha)
    out = fn(name, scores, alpha)
    grads = torch.autograd.grad(out, inputs, upstream.to(out.dtype))
    return out.detach(), grads[0], grads[1] if len(grads) > 1 else None


def _make_scores(shape_name: str, dtype, gen) -> torch.Tensor:
    scores = torch.randn(SHAPES[shape_name], device="cuda", generator=gen)
    if shape_name == "detr":
        scores[1, ..., 800:] = float("-inf")  # the keys of a padded image
        scores[0, :, 7] = float("-inf")  # a query that sees no key
    return scores.to(dtype)


def _compare(label: str, ours, ref, atol: float, rtol: float, failures: list[str]) -> None:
    err = (ours.double() - ref.double()).abs()
    bound = atol + rtol * ref.double().abs()
    bad = ~(err <= bound)  # NaN counts as bad
    status = "ok" if not bad.any() else "MISMATCH"
    print(f"  {label:<52} max abs err {err.max().item():.2e}  {status}")
    if bad.any():
        failures.append(f"{label}: {int(bad.sum())} entries off, max err {err.max().item():.2e}")


def check(failures: list[str], have_package: bool) -> None:
    gen = torch.Generator(device="cuda").manual_seed(0)
    for shape_name, shape in SHAPES.items():
        for dtype_name, dtype in DTYPES.items():
            scores = _make_scores(shape_name, dtype, gen)
            upstream = torch.randn(scores.shape, device="cuda", generator=gen)
            alpha = _alphas(shape[1], "cuda")
            if not use_triton(scores):
                failures.append(f"{shape_name} {dtype_name}: 'auto' does not pick Triton")
            for name in NAMES:
                tag = f"{shape_name} {dtype_name} {name}"
                tri = _run(
                    lambda n, z, a: _normalize(n, z, a, "triton"), name, scores, upstream, alpha
                )
                ref = _run(
                    lambda n, z, a: _normalize(n, z, a, "torch"), name, scores, upstream, alpha
                )
                atol, rtol = ATOL[dtype], RTOL[dtype]
                _compare(f"{tag} weights vs torch path", tri[0], ref[0], atol, rtol, failures)
                _compare(f"{tag} d scores vs torch path", tri[1], ref[1], atol, rtol, failures)
                if tri[2] is not None:
                    scale = ALPHA_TOL * ref[2].abs().max().item()
                    _compare(f"{tag} d alpha vs torch path", tri[2], ref[2], scale, 0, failures)
                if dtype != torch.float32 or not have_package:
                    continue
                live = torch.isfinite(scores).any(-1, keepdim=True)  # [..., 1]
                z64 = scores.double().masked_fill(~live, 0.0)  # the package fails on dead rows
                up64 = upstream.double() * live
                pkg = _run(_package, name, z64, up64, alpha.double())
                live = live.expand_as(scores)
                _compare(
                    f"{tag} weights vs entmax (f64)", tri[0][live], pkg[0][live], 1e-5, 0, failures
                )
                _compare(
                    f"{tag} d scores vs entmax (f64)", tri[1][live], pkg[1][live], 1e-5, 0, failures
                )
                if tri[2] is not None:
                    scale = ALPHA_TOL * pkg[2].abs().max().item()
                    _compare(f"{tag} d alpha vs entmax (f64)", tri[2], pkg[2], scale, 0, failures)


def _median_ms(fn, warmup: int, reps: int) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _fwd_bwd(fn, inputs, upstream):
    def step():
        out = fn(*inputs)
        torch.autograd.grad(out, inputs, upstream)

    return step


class _torch_path:
    """``ATTNKIT_NO_TRITON=1`` inside the block: ``"auto"`` takes the PyTorch path."""

    def __enter__(self):
        self.saved = os.environ.get(TRITON_ENV)
        os.environ[TRITON_ENV] = "1"

    def __exit__(self, *exc):
        if self.saved is None:
            os.environ.pop(TRITON_ENV, None)
        else:
            os.environ[TRITON_ENV] = self.saved


def time_normalizers(warmup: int, reps: int) -> list[str]:
    lines = [
        "| shape | dtype | normalizer | softmax ms | Triton ms | PyTorch path ms"
        " | Triton / softmax | PyTorch path / Triton |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    gen = torch.Generator(device="cuda").manual_seed(1)
    for shape_name, shape in SHAPES.items():
        for dtype_name, dtype in DTYPES.items():
            scores = torch.randn(shape, device="cuda", generator=gen).to(dtype).requires_grad_()
            upstream = torch.randn(shape, device="cuda", generator=gen).to(dtype)
            alpha = _alphas(shape[1], "cuda").requires_grad_()
            soft = _median_ms(
                _fwd_bwd(lambda z: torch.softmax(z, -1), [scores], upstream), warmup, reps
            )
            for name in NAMES:
                inputs = [scores, alpha] if name == "alpha_entmax" else [scores]
                times = {}
                for backend in ("triton", "torch"):

                    def fn(z, a=alpha, name=name, backend=backend):
                        return _normalize(name, z, a, backend)

                    times[backend] = _median_ms(_fwd_bwd(fn, inputs, upstream), warmup, reps)
                tri, ref = times["triton"], times["torch"]
                lines.append(
                    f"| {shape_name} {'x'.join(map(str, shape))} | {dtype_name} | {name}"
                    f" | {soft:.3f} | {tri:.3f} | {ref:.3f} | {tri / soft:.2f} | {ref / tri:.2f} |"
                )
    return lines


def time_attention(warmup: int, reps: int, failures: list[str]) -> list[str]:
    lines = [
        "| shape | dtype | normalizer | SDPA ms | attnkit + Triton ms | attnkit + PyTorch ms"
        " | Triton / SDPA | PyTorch / Triton |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    gen = torch.Generator(device="cuda").manual_seed(2)
    for shape_name, (batch, heads, queries, keys) in SHAPES.items():
        for dtype_name, dtype in DTYPES.items():

            def tensor(n, batch=batch, heads=heads, dtype=dtype):
                t = torch.randn(batch, heads, n, HEAD_DIM, device="cuda", generator=gen)
                return t.to(dtype).requires_grad_()

            q, k, v = tensor(queries), tensor(keys), tensor(keys)
            upstream = torch.randn(batch, heads, queries, HEAD_DIM, device="cuda", generator=gen)
            upstream = upstream.to(dtype)
            sdpa = _median_ms(
                _fwd_bwd(F.scaled_dot_product_attention, [q, k, v], upstream), warmup, reps
            )
            modules = {
                "sparsemax": Sparsemax(),
                "entmax15": Entmax15(),
                "alpha_entmax": AlphaEntmax(num_heads=heads).cuda(),
            }
            for name, module in modules.items():
                params = list(module.parameters())

                def fn(q, k, v, *p, module=module):
                    return attend(q, k, v, module)[0]

                inputs = [q, k, v, *params]
                tri = _median_ms(_fwd_bwd(fn, inputs, upstream), warmup, reps)
                out_tri = fn(q, k, v).detach()
                with _torch_path():
                    ref = _median_ms(_fwd_bwd(fn, inputs, upstream), warmup, reps)
                    out_ref = fn(q, k, v).detach()
                atol = 1e-4 if dtype == torch.float32 else 2e-2
                tag = f"attention {shape_name} {dtype_name} {name} out vs torch path"
                _compare(tag, out_tri, out_ref, atol, RTOL[dtype], failures)
                lines.append(
                    f"| {shape_name} {batch}x{heads}x{queries}x{keys} | {dtype_name} | {name}"
                    f" | {sdpa:.3f} | {tri:.3f} | {ref:.3f} | {tri / sdpa:.2f} | {ref / tri:.2f} |"
                )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=20, help="timed runs per case (median)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed runs first")
    parser.add_argument("--no-timing", action="store_true", help="only the checks")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check or time (run this script on a GPU machine)")
        return 0
    try:
        import triton
    except ImportError:
        print("triton is not installed: the Triton kernels cannot run")
        return 1
    try:
        import entmax  # noqa: F401

        have_package = True
    except ImportError:
        have_package = False
        print("the entmax package is not installed: checks against the PyTorch path only")
    os.environ.pop(TRITON_ENV, None)
    print(
        f"device {torch.cuda.get_device_name()}, torch {torch.__version__},"
        f" triton {triton.__version__}\n"
    )
    failures: list[str] = []
    print("## Checks (Triton against the PyTorch path and the entmax package)\n")
    check(failures, have_package)
    if not args.no_timing:
        torch.backends.cuda.matmul.allow_tf32 = False  # the same matmuls in both attentions
        print("\n## Forward + backward of the normalizers\n")
        print("\n".join(time_normalizers(args.warmup, args.reps)))
        print("\n## Forward + backward of attention (head dim 32)\n")
        print("\n".join(time_attention(args.warmup, args.reps, failures)))
    if failures:
        print(f"\n{len(failures)} MISMATCHES:\n" + "\n".join(failures))
        return 1
    print("\nall checks passed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
