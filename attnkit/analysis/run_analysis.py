"""``attnkit analyze``: one streamed eval pass that writes ``records.parquet`` and ``summary.json``.

The model comes from a training checkpoint (its config inside) or, with ``random_init``, is built
from a config without training (the thesis compares random-init and trained attention). Any
family: its task gives the data, its registration the default sites and the task scorers.
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from attnkit.analysis.analyze import (
    AnalysisOptions,
    AttentionAnalysis,
    ParquetRows,
    write_summary,
)
from attnkit.attention.hooks import AttentionModule
from attnkit.config import config_to_dict, load_config, save_config
from attnkit.errors import AttnkitError
from attnkit.models import build_model
from attnkit.models.loading import model_from_checkpoint
from attnkit.models.registry import family_of
from attnkit.outputs import ANALYSIS_FILES, claim_output
from attnkit.tasks import task_of


class AnalysisError(AttnkitError, ValueError):
    """An analysis that cannot produce anything; the message says why."""


def build_scorers(cfg) -> list:
    """The family's task scorers (``Family.scorers``: ``"module:attribute"`` factories)."""
    scorers = []
    for path in family_of(cfg).scorers:
        module, _, attr = path.partition(":")
        scorers.append(getattr(importlib.import_module(module), attr)(cfg))
    return scorers


def _normalizers(model) -> dict[str, str]:
    return {
        name: getattr(getattr(m, "normalizer", None), "name", "?")
        for name, m in model.named_modules()
        if hasattr(m, "normalizer")
    }


def run_analysis(
    out_dir: str | Path,
    checkpoint: str | Path | None = None,
    config: str | Path | None = None,
    random_init: bool = False,
    overrides=None,
    batch_size: int | None = None,
    max_images: int | None = None,
    split: str = "val",
    layers: list[str] | None = None,
    zero_threshold: float | None = None,
    progress: bool = True,
    device: str = "cpu",
    overwrite: bool = False,
) -> dict:
    """Score the attention of a trained or random-init model over ``split``; returns the summary."""
    from tqdm.auto import tqdm

    out_dir = claim_output(out_dir, ANALYSIS_FILES, "analyze", overwrite)
    if (checkpoint is None) == (not random_init):
        raise ValueError("give either a checkpoint, or a config with random_init=True")
    if checkpoint is not None:
        model, cfg = model_from_checkpoint(checkpoint, overrides, config, device)
        source = str(checkpoint)
    else:
        if config is None:
            raise ValueError("random_init needs a config")
        cfg = load_config(config, overrides)
        torch.manual_seed(cfg.seed)
        model = build_model(cfg).to(device).eval()
        source = f"random init of {config} (seed {cfg.seed})"
    if not any(isinstance(m, AttentionModule) for m in model.modules()):
        raise AnalysisError(
            f"the {cfg.model.name} model of {source} has no attnkit attention module: "
            "there are no attention maps to analyse"
        )
    task = task_of(cfg)
    dataset = task.build_dataset(cfg, split, train=False)
    task.check(cfg, dataset)
    if max_images is not None:
        dataset = Subset(dataset, range(min(max_images, len(dataset))))
    loader = DataLoader(
        dataset,
        batch_size=batch_size or cfg.data.batch_size,
        shuffle=False,
        collate_fn=task.collate,
        num_workers=cfg.data.num_workers,
    )
    save_config(cfg, out_dir / "analysis_config.yaml")
    rows = ParquetRows(out_dir / "records.parquet")
    default_layers = family_of(cfg).analysis_layers
    options = AnalysisOptions(layers=layers or default_layers, zero_threshold=zero_threshold)
    analysis = AttentionAnalysis(model, build_scorers(cfg), options, row_sink=rows)
    start = time.perf_counter()
    try:
        for batch in tqdm(loader, desc="analyze", unit="batch", disable=not progress):
            analysis.update(batch.to(device))
    finally:
        rows.close()
    summary = analysis.summary()
    normalizers = _normalizers(model)
    meta = {
        "source": source,
        "random_init": random_init,
        "split": split,
        "images": len(dataset),
        "batch_size": loader.batch_size,
        "layers": analysis.layers,
        "sites": analysis.sites,
        "normalizers": {
            key: normalizers[key.split("[")[0]]
            for key in analysis.layers
            if key.split("[")[0] in normalizers
        },
        "zero_threshold": zero_threshold,
        "seconds": round(time.perf_counter() - start, 2),
        "config": config_to_dict(cfg),
    }
    write_summary(summary, meta, out_dir)
    return {**summary, "meta": meta}
