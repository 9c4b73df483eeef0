"""One streamed eval pass that scores the attention of any family's model.

For every batch the recorder captures the chosen attention modules (the family's default sites,
e.g. DETR's decoder cross-attention or every ViT block); every call of every module is scored at
once and dropped, so memory does not grow with the dataset. Following DESIGN.md's pitfalls:

- every query is scored, not only confident detections (3);
- metrics are computed per map and per head, never on head-averaged maps (1, 2);
- padded keys are excluded (4, 9).

Generic map metrics run on any record: Gini, zeros ratio, entropy, support, and, for
self-attention over an image grid (queries = keys), the attention distance in pixels. Task
scorers plug in (``Family.scorers``): PAIBB for detection.

A layout note: a record's weights are ``[N, H, Q, K]`` where ``N`` is the batch or, for windowed
attention, batch x windows (then ``window`` numbers the windows of an image); ``key_grid``
describes the last ``h * w`` keys and ``meta["prefix_tokens"]`` the tokens before them.

Outputs: ``records.parquet`` (one row per image x window x site x head x query with every
metric and the scorers' columns) and ``summary.json``
(``{metric: {layer: {"mean", "std", "per_head": [...]}}}`` plus what scorers add).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from attnkit.analysis.metrics import (
    RunningStats,
    entropy,
    gini,
    support_size,
    zeros_ratio,
)
from attnkit.analysis.recorder import AttentionRecord, AttentionRecorder
from attnkit.attention.layout import KeyLayout

DENSE_THRESHOLD = 1e-6  # the thesis's zero threshold for dense (softmax) maps
MAP_METRICS = ("gini", "zeros_ratio", "entropy", "support", "distance")


@dataclass
class AnalysisOptions:
    layers: list[str] | tuple[str, ...] | None = None  # recorder include patterns; None: all
    zero_threshold: float | None = None  # None: exact zeros for sparse maps, 1e-6 for softmax


class Scorer(Protocol):
    """A task-specific attention score (PAIBB) that plugs into :class:`AttentionAnalysis`."""

    columns: dict[str, Any]
    """Its row columns and their value where it does not apply (fixed parquet schema)."""

    def prepare(self, outputs, batch) -> Any:
        """Per-batch context (Hungarian matches, say), computed once for all sites."""

    def score(
        self, name: str, record: AttentionRecord, batch, context, stats: RunningStats
    ) -> dict[str, np.ndarray] | None:
        """Columns ``[N, H, Q]`` for this site (None: not applicable); updates ``stats``."""


def _threshold_for(module, options: AnalysisOptions) -> float | None:
    if options.zero_threshold is not None:
        return options.zero_threshold
    name = getattr(getattr(module, "normalizer", None), "name", "softmax")
    return DENSE_THRESHOLD if name == "softmax" else None


def layout_of(record: AttentionRecord) -> KeyLayout | None:
    """The record's key layout: emitted as ``meta["layout"]``, else a plain grid of its
    ``key_grid`` after ``meta["prefix_tokens"]`` tokens, else None (keys not on the image)."""
    layout = record.meta.get("layout")
    if layout is None and record.key_grid is not None:
        prefix = int(record.meta.get("prefix_tokens", 0))
        layout = KeyLayout("grid", record.key_grid, prefix_tokens=prefix)
    return layout


def _distance(weights: torch.Tensor, record: AttentionRecord, image_hw) -> torch.Tensor:
    """Mean attention distance ``[N, H, Q]`` of self-attention over image tokens (the queries are
    the keys: a grid, windows or dilated partitions); NaN elsewhere. In pixels of the input
    ``image_hw``, in tokens when the batch has no ``images`` input (``image_hw`` None)."""
    n, h, q, k = weights.shape
    out = torch.full((n, h, q), float("nan"))
    layout = layout_of(record)
    if layout is None or q != k or k != layout.keys_per_row:
        return out
    p, (gh, gw) = layout.prefix_tokens, layout.real_grid  # padded tokens lie beyond the image
    cell = (1.0, 1.0) if image_hw is None else (image_hw[0] / gh, image_hw[1] / gw)
    dist = layout.distances(cell)  # [parts, K', K']
    dist = dist[torch.arange(n) % layout.num_parts]  # [N, K', K']: each row's window
    w = weights[:, :, p:, p:].to(torch.float64)  # [N, H, K', K']
    mass = w.sum(-1)  # [N, H, K']
    mean = torch.einsum("nhqk,nqk->nhq", w, dist) / mass
    out[:, :, p:] = torch.where(mass > 0, mean, torch.nan).float()
    return out


def site_key(record: AttentionRecord) -> str:
    """The layer key of a record: the module name, with ``[call]`` after its first call."""
    return record.name if record.call == 0 else f"{record.name}[{record.call}]"


class AttentionAnalysis:
    """Accumulates per-site, per-head statistics (and optional row records) batch by batch."""

    def __init__(self, model, scorers=(), options: AnalysisOptions | None = None, row_sink=None):
        """``row_sink(columns)`` receives each batch's rows as a dict of equal-length arrays."""
        self.model, self.scorers = model, list(scorers)
        self.options = options or AnalysisOptions()
        self.stats = RunningStats()
        self.row_sink = row_sink
        self.layers: list[str] = []
        self.sites: dict[str, str] = {}
        self.modules = dict(model.named_modules())
        self.images_seen = 0

    @torch.no_grad()
    def update(self, batch) -> None:
        recorder = AttentionRecorder(self.model, include=self.options.layers)
        with recorder:
            outputs = self.model(**batch.inputs)
        contexts = [s.prepare(outputs, batch) for s in self.scorers]
        ids = getattr(batch, "image_ids", None)
        if ids is None:
            ids = list(range(self.images_seen, self.images_seen + len(batch)))
        self.images_seen += len(batch)
        images = batch.inputs.get("images")
        image_hw = None if images is None else tuple(images.shape[-2:])
        for records in recorder.records.values():
            for record in records:
                self._score(record, batch, contexts, ids, image_hw)

    def _score(self, record, batch, contexts, ids, image_hw) -> None:
        key = site_key(record)
        if key not in self.layers:
            self.layers.append(key)
            self.sites[key] = record.site or record.name
        weights = record.weights.float()  # [N, H, Q, K]
        kpm = record.key_padding_mask  # [N, K] or None
        mask = None if kpm is None else kpm[:, None, None, :]  # [N, 1, 1, K]
        unseen = record.meta.get("query_key_mask")  # [N, 1, Q, K]: keys a query may not see
        if unseen is not None:
            unseen = unseen.to(weights.device)
            mask = unseen if mask is None else mask | unseen
        threshold = _threshold_for(self.modules.get(record.name), self.options)
        values = {
            "gini": gini(weights, mask),
            "zeros_ratio": zeros_ratio(weights, threshold, mask),
            "entropy": entropy(weights, mask),
            "support": support_size(weights, mask).float(),
            "distance": _distance(weights, record, image_hw),
        }  # each [N, H, Q]
        for metric, v in values.items():
            if not (metric == "distance" and torch.isnan(v).all()):
                self.stats.update((metric, key), v, keep_dim=1)
        extra = {}
        for scorer, context in zip(self.scorers, contexts):
            extra.update(scorer.score(key, record, batch, context, self.stats) or {})
        if self.row_sink is not None:
            self._add_rows(key, values, extra, ids)

    def _add_rows(self, key, values, extra, ids) -> None:
        """One row per image x window x head x query of this site, as columns."""
        N, H, Q = values["gini"].shape
        if N % len(ids):
            raise ValueError(f"{key}: {N} attention rows do not split over {len(ids)} images")
        windows = N // len(ids)
        lead = torch.arange(N)
        image = torch.tensor(ids, dtype=torch.int64)[lead // windows]  # [N]
        grid = torch.meshgrid(lead, torch.arange(H), torch.arange(Q), indexing="ij")
        size = N * H * Q
        columns = {
            "image_id": image[grid[0]].reshape(-1).numpy(),
            "window": (grid[0] % windows).reshape(-1).numpy(),
            "layer": np.full(size, key, dtype=object),
            "site": np.full(size, self.sites[key], dtype=object),
            "head": grid[1].reshape(-1).numpy(),
            "query": grid[2].reshape(-1).numpy(),
            **{m: values[m].reshape(-1).numpy() for m in MAP_METRICS},
        }
        for scorer in self.scorers:
            for column, default in scorer.columns.items():
                given = extra.get(column)
                columns[column] = (
                    np.asarray(given).reshape(-1)
                    if given is not None
                    else np.full(size, default, dtype=object if isinstance(default, str) else None)
                )
        self.row_sink(columns)

    def summary(self) -> dict:
        """``{metric: {layer: {"mean", "std", "per_head", ...}}}``; nested keys for sub-groups."""
        out: dict = {}
        for key in self.stats.keys():  # noqa: SIM118 - RunningStats is not iterable
            node = out
            for part in key[:-1]:
                node = node.setdefault(part, {})
            node[key[-1]] = self.stats.result(key)
        return out


class ParquetRows:
    """Streams row batches into ``records.parquet`` (one row group per batch and site)."""

    def __init__(self, path: Path):
        self.path, self.writer = path, None

    def __call__(self, columns: dict) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table(columns)
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, table.schema)
        self.writer.write_table(table)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def write_summary(summary: dict, meta: dict, out_dir: Path) -> Path:
    path = out_dir / "summary.json"
    path.write_text(json.dumps({**summary, "meta": meta}, indent=1, allow_nan=True))
    return path
