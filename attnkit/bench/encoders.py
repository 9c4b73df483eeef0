"""Dense-line encoders beside timm: Swin-T and MiT-b0 forward + backward, per normalizer.

attnkit's Swin encoder (``swin_encoder("tiny")``) against timm's ``swin_tiny_patch4_window7_224``
and attnkit's MiT-b0 against timm's ``PyramidVisionTransformerV2`` with MiT's settings: the same
architecture and stochastic depth, random weights, float32, one step each (the stage maps' mean square, backward), the
models timed in interleaved rounds (``attnkit.bench.maxvit.time_interleaved``). The table gives
the median ms per step, each model's time over its timm peer (``x timm``) and each attnkit
model's time over its softmax version (``x softmax``). Nothing here asserts a time.

    attnkit bench encoders                              # batch 4, 224x224, CPU
    attnkit bench encoders --encoders swin --normalizers softmax,sparsemax,entmax15 --threads 2
"""

from __future__ import annotations

import argparse
import statistics

import torch
from torch import nn

from attnkit.bench.maxvit import time_interleaved
from attnkit.bench.models import machine_info, machine_line, pick_device
from attnkit.models.dense.encoders.mit import mit_encoder
from attnkit.models.dense.encoders.swin import swin_encoder


class _TimmFeatures(nn.Module):
    """A timm model's stage maps (``forward_intermediates``), as attnkit's ``forward_features``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.model.forward_intermediates(x, intermediates_only=True)


def build_encoders(encoders: list[str], normalizers: list[str], img: int) -> dict[str, nn.Module]:
    """``{row label: encoder}``: per encoder its attnkit versions, then its timm peer."""
    import timm
    from timm.models.pvt_v2 import PyramidVisionTransformerV2

    rows: dict[str, nn.Module] = {}
    for name in encoders:
        for n in normalizers:
            if name == "swin":
                rows[f"attnkit Swin-T {n}"] = swin_encoder(
                    "tiny", img_size=(img, img), normalizer=n
                )
            else:
                rows[f"attnkit MiT-b0 {n}"] = mit_encoder("b0", normalizer=n)
        if name == "swin":
            timm_swin = timm.create_model("swin_tiny_patch4_window7_224", img_size=img)
            rows["timm swin_tiny_patch4_window7_224"] = _TimmFeatures(timm_swin)
        else:
            pvt = PyramidVisionTransformerV2(
                depths=(2, 2, 2, 2),
                embed_dims=(32, 64, 160, 256),
                num_heads=(1, 2, 5, 8),
                sr_ratios=(8, 4, 2, 1),
                mlp_ratios=(4, 4, 4, 4),
            )
            rows["timm PVTv2 (MiT-b0 settings)"] = _TimmFeatures(pvt)
    return rows


def _step(encoder: nn.Module, images: torch.Tensor) -> None:
    encoder.zero_grad(set_to_none=True)
    sum(m.square().mean() for m in encoder.forward_features(images)).backward()


def format_table(times: dict[str, list[float]]) -> str:
    """Rows grouped by encoder; ``x timm`` against the group's timm row, ``x softmax`` against
    the group's attnkit softmax row."""
    med = {name: statistics.median(t) for name, t in times.items()}
    lines = ["| model | ms / step (median) | x timm | x softmax |", "|---|---|---|---|"]
    for name, m in med.items():
        family = "Swin" if "swin" in name.lower() else "MiT"
        peer = next(n for n in med if n.startswith("timm ") and (family == "Swin") == ("swin" in n))
        soft = med.get(f"attnkit {'Swin-T' if family == 'Swin' else 'MiT-b0'} softmax")
        vs_soft = f"{m / soft:.2f}" if soft and name.startswith("attnkit ") else "-"
        lines.append(f"| {name} | {m:.0f} | {m / med[peer]:.2f} | {vs_soft} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="attnkit bench encoders",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )
    parser.add_argument("--encoders", default="swin,mit", help="swin, mit or both")
    parser.add_argument("--normalizers", default="softmax,sparsemax")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--img-size", type=int, default=224, help="a multiple of 32")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    encoders = [e.strip() for e in args.encoders.split(",") if e.strip()]
    if not encoders or any(e not in ("swin", "mit") for e in encoders):
        raise SystemExit("attnkit bench encoders: --encoders takes swin, mit or swin,mit")
    if args.img_size % 32:
        raise SystemExit("attnkit bench encoders: --img-size must be a multiple of 32")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    torch.manual_seed(0)
    normalizers = [n.strip() for n in args.normalizers.split(",") if n.strip()]
    models = build_encoders(encoders, normalizers, args.img_size)
    models = {k: m.to(device).train() for k, m in models.items()}
    images = torch.randn(args.batch, 3, args.img_size, args.img_size, device=device)
    steps = {name: (lambda m=m: _step(m, images)) for name, m in models.items()}
    print(machine_line(machine_info(device)))
    print(f"forward + backward, batch {args.batch}, {args.img_size}x{args.img_size}, float32\n")
    print(format_table(time_interleaved(steps, args.repeats, device)))
    return 0
