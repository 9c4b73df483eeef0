"""One streamed eval pass that scores DETR's attention: Gini, zeros ratio, entropy, PAIBB.

For every batch the recorder captures the chosen attention modules (by default the decoder
cross-attention of every layer); the maps are scored at once and dropped, so memory does not
grow with the dataset. Following DESIGN.md's pitfalls:

- every query is scored, not only confident detections (3);
- metrics are computed per map and per head, never on head-averaged maps unless asked (1, 2);
- padded keys are excluded, and PAIBB maps are cropped to each image's unpadded grid before
  upsampling to its original size (4, 9);
- boxes stay in float pixels of the original image; no rounding (5).

Outputs: ``records.parquet`` (one row per image x layer x head x query with every metric;
PAIBB on the Hungarian-matched queries) and ``summary.json``
(``{metric: {layer: {"mean", "std", "per_head": [...]}}}`` plus ``paibb_by_size``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import box_convert

from attnkit.analysis.metrics import RunningStats, entropy, gini, support_size, zeros_ratio
from attnkit.analysis.paibb import box_and_total_mass, crop_to_unpadded, mass_ratio
from attnkit.analysis.recorder import AttentionRecorder
from attnkit.data.stats import SIZE_BUCKETS, size_bucket

DEFAULT_LAYERS = ["*decoder.layers.*.multihead_attn"]
CROSS_ATTENTION_SUFFIX = "multihead_attn"
DENSE_THRESHOLD = 1e-6  # the thesis's zero threshold for dense (softmax) maps
MAP_METRICS = ("gini", "zeros_ratio", "entropy", "support")


@dataclass
class AnalysisOptions:
    layers: list[str] | None = None  # recorder include patterns
    zero_threshold: float | None = None  # None: exact zeros for sparse maps, 1e-6 for softmax


def _threshold_for(module, options: AnalysisOptions) -> float | None:
    if options.zero_threshold is not None:
        return options.zero_threshold
    name = getattr(getattr(module, "normalizer", None), "name", "softmax")
    return DENSE_THRESHOLD if name == "softmax" else None


def _original_boxes(target: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Ground-truth boxes as float xyxy pixels of the original image, and their original areas."""
    oh, ow = (int(v) for v in target["orig_size"])
    h, w = (int(v) for v in target["size"])
    boxes = box_convert(target["boxes"].float(), "cxcywh", "xyxy")
    boxes = boxes * torch.tensor([ow, oh, ow, oh], dtype=torch.float32)  # [T, 4]
    areas = target["area"].float() * (oh * ow) / (h * w)  # undo the resize's area scaling
    return boxes, areas


class AttentionAnalysis:
    """Accumulates per-layer, per-head statistics (and optional row records) batch by batch."""

    def __init__(self, model, matcher, options: AnalysisOptions | None = None, row_sink=None):
        """``row_sink(columns)`` receives each batch's rows as a dict of equal-length arrays."""
        self.model, self.matcher = model, matcher
        self.options = options or AnalysisOptions()
        self.stats = RunningStats()
        self.row_sink = row_sink
        self.layers: list[str] = []
        self.modules = dict(model.named_modules())

    @torch.no_grad()
    def update(self, batch) -> None:
        recorder = AttentionRecorder(self.model, include=self.options.layers or DEFAULT_LAYERS)
        with recorder:
            outputs = self.model(batch.images, batch.mask)
        matches = self.matcher(outputs, batch.targets)
        for name, records in recorder.records.items():
            if name not in self.layers:
                self.layers.append(name)
            self._score_layer(name, records[-1], batch, matches, outputs["pred_logits"].shape[1])

    def _score_layer(self, name, record, batch, matches, num_queries: int) -> None:
        weights = record.weights.float()  # [B, H, Q, K]
        kpm = record.key_padding_mask  # [B, K] or None
        mask = None if kpm is None else kpm[:, None, None, :]  # [B, 1, 1, K]
        threshold = _threshold_for(self.modules[name], self.options)
        values = {
            "gini": gini(weights, mask),
            "zeros_ratio": zeros_ratio(weights, threshold, mask),
            "entropy": entropy(weights, mask),
            "support": support_size(weights, mask).float(),
        }  # each [B, H, Q]
        for metric, v in values.items():
            self.stats.update((metric, name), v, keep_dim=1)
        # PAIBB needs the object queries' maps over the image grid: DETR's decoder
        # cross-attention (``multihead_attn``), not the self-attention of any layer.
        is_cross = (
            name.endswith(CROSS_ATTENTION_SUFFIX)
            and record.key_grid is not None
            and weights.shape[2] == num_queries
        )
        paibb_per_image = (
            self._paibb(name, record, weights, batch, matches) if is_cross else [None] * len(batch)
        )
        if self.row_sink is not None:
            self._add_rows(name, values, paibb_per_image, batch)

    def _paibb(self, name, record, weights, batch, matches) -> list:
        """PAIBB of the matched pairs of each image: ``[(queries, gt, [P, H], buckets)]``.

        Statistics are updated once per batch (per head, head-averaged, by size bucket).
        """
        out, per_head_all, head_avg_all, buckets_all = [], [], [], []
        kpm = record.key_padding_mask
        for b, (q_idx, t_idx) in enumerate(matches):
            if len(q_idx) == 0:
                out.append(None)
                continue
            maps = weights[b, :, q_idx, :].transpose(0, 1)  # [P, H, K]
            pad = kpm[b] if kpm is not None else torch.zeros(maps.shape[-1], dtype=torch.bool)
            maps = crop_to_unpadded(maps, record.key_grid, pad)  # [P, H, hv, wv]
            boxes, areas = _original_boxes(batch.targets[b])
            size = tuple(int(v) for v in batch.targets[b]["orig_size"])
            inside, total = box_and_total_mass(maps, size, boxes[t_idx])  # [P, H] each
            per_head = mass_ratio(inside, total, maps)  # [P, H]
            head_avg_all.append(mass_ratio(inside.mean(1), total.mean(1), maps))  # [P]
            buckets = [size_bucket(a) for a in areas[t_idx].tolist()]
            per_head_all.append(per_head)
            buckets_all += buckets
            out.append((q_idx, t_idx, per_head, buckets))
        if per_head_all:
            per_head = torch.cat(per_head_all)  # [sum P, H]
            self.stats.update(("paibb", name), per_head, keep_dim=1)
            self.stats.update(("paibb_head_avg", name), torch.cat(head_avg_all))
            for bucket in SIZE_BUCKETS:
                sel = torch.tensor([bk == bucket for bk in buckets_all], dtype=torch.bool)
                if sel.any():
                    self.stats.update(("paibb_by_size", name, bucket), per_head[sel], keep_dim=1)
        return out

    def _add_rows(self, name, values, paibb_per_image, batch) -> None:
        """One row per image x head x query of this layer, as columns (no per-row Python)."""
        B, H, Q = values["gini"].shape
        gt_index = torch.full((B, H, Q), -1, dtype=torch.int64)
        paibb_col = torch.full((B, H, Q), float("nan"))
        bucket_col = np.full((B, H, Q), "", dtype=object)
        for b, item in enumerate(paibb_per_image):
            if item is not None:
                q_idx, t_idx, per_head, buckets = item
                gt_index[b, :, q_idx] = t_idx
                paibb_col[b, :, q_idx] = per_head.T.float()  # [H, P]
                bucket_col[b][:, q_idx.numpy()] = np.asarray(buckets, dtype=object)[None, :]
        image_ids = torch.tensor([int(t["image_id"]) for t in batch.targets])
        grid = torch.meshgrid(image_ids, torch.arange(H), torch.arange(Q), indexing="ij")
        columns = {
            "image_id": grid[0].reshape(-1).numpy(),
            "layer": np.full(B * H * Q, name, dtype=object),
            "head": grid[1].reshape(-1).numpy(),
            "query": grid[2].reshape(-1).numpy(),
            **{m: values[m].reshape(-1).numpy() for m in MAP_METRICS},
            "gt_index": gt_index.reshape(-1).numpy(),
            "paibb": paibb_col.reshape(-1).numpy(),
            "size_bucket": bucket_col.reshape(-1),
        }
        self.row_sink(columns)

    def summary(self) -> dict:
        """``{metric: {layer: {"mean", "std", "per_head", ...}}}`` and ``paibb_by_size``."""
        out: dict = {}
        for key in self.stats.keys():  # noqa: SIM118 - RunningStats is not iterable
            result = self.stats.result(key)
            if key[0] == "paibb_by_size":
                _, layer, bucket = key
                out.setdefault("paibb_by_size", {}).setdefault(layer, {})[bucket] = result
            else:
                metric, layer = key
                out.setdefault(metric, {})[layer] = result
        return out


class ParquetRows:
    """Streams row batches into ``records.parquet`` (one row group per batch and layer)."""

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
