"""What the streamed attention analysis costs on top of a plain eval pass, and PAIBB's fast path.

1. The synthetic val split through a random-init tiny DETR: a plain eval pass (forward only)
   against the analysis pass (recorder + Gini, zeros ratio, entropy, support, Hungarian matching
   and PAIBB, rows streamed to Parquet). The target is at most +25%.
2. PAIBB of 100 matched pairs on an 800 x 1066 image with a 25 x 34 grid and 8 heads: the
   pixel-level definition (upsample, mask) against the separable fast path.

    python benchmarks/analysis.py [--config ...] [--images 128] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from attnkit.analysis.analyze import AnalysisOptions, AttentionAnalysis, ParquetRows
from attnkit.analysis.paibb import paibb, paibb_pixel_reference
from attnkit.analysis.run_analysis import build_scorers
from attnkit.config import load_config
from attnkit.models import build_model
from attnkit.models.registry import family_of
from attnkit.tasks import task_of


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_pass(config: str, images: int, batch_size: int, repeats: int) -> tuple[float, float]:
    cfg = load_config(config)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    task = task_of(cfg)
    dataset = task.build_dataset(cfg, "val", train=False)
    dataset = Subset(dataset, range(min(images, len(dataset))))
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=task.collate)
    batches = list(loader)  # decode once: both passes see the same tensors
    options = AnalysisOptions(layers=family_of(cfg).analysis_layers)

    @torch.no_grad()
    def plain():
        for batch in batches:
            model(**batch.inputs)

    def analysed():
        with tempfile.TemporaryDirectory() as tmp:
            rows = ParquetRows(Path(tmp) / "records.parquet")
            analysis = AttentionAnalysis(model, build_scorers(cfg), options, row_sink=rows)
            for batch in batches:
                analysis.update(batch)
            rows.close()
            analysis.summary()

    plain()  # warm-up
    return _median_time(plain, repeats), _median_time(analysed, repeats)


def bench_paibb(repeats: int) -> tuple[float, float]:
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(100, 8, 25, 34, generator=g)
    xy = torch.rand(100, 2, generator=g) * torch.tensor([800.0, 600.0])
    wh = torch.rand(100, 2, generator=g) * 200 + 4
    boxes = torch.cat([xy, xy + wh], 1)
    fast = _median_time(lambda: paibb(maps, (800, 1066), boxes), repeats)
    slow = _median_time(lambda: paibb_pixel_reference(maps, (800, 1066), boxes), max(1, repeats))
    return fast, slow


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="configs/detr/shapes_tiny_sparsemax.yaml")
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, config {args.config}")
    plain, analysed = bench_pass(args.config, args.images, args.batch_size, args.repeats)
    print(f"{'pass':<34} {'seconds':>8} {'ratio':>7}")
    print(f"{'plain eval (forward)':<34} {plain:>8.2f} {1.0:>7.2f}")
    print(f"{'analysis (recorder + metrics)':<34} {analysed:>8.2f} {analysed / plain:>7.2f}")
    fast, slow = bench_paibb(args.repeats)
    print(f"\n{'PAIBB, 100 pairs x 8 heads':<34} {'ms':>8} {'ratio':>7}")
    print(f"{'pixel-level (upsample to 800x1066)':<34} {1000 * slow:>8.1f} {slow / fast:>7.1f}")
    print(f"{'separable fast path':<34} {1000 * fast:>8.2f} {1.0:>7.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
