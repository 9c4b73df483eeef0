"""PAIBB as an analysis scorer of the detection task (DETR's decoder cross-attention).

For each image, the Hungarian-matched (query, ground truth) pairs are scored with
:func:`attnkit.analysis.paibb.box_and_total_mass` on the query's map cropped to the image's
unpadded grid (pitfalls 4, 9) against the box in float pixels of the original image (pitfall 5).
Statistics: per head, head-averaged, and per head by COCO size bucket.
"""

from __future__ import annotations

import numpy as np
import torch

from attnkit.analysis.paibb import box_and_total_mass, crop_to_unpadded, mass_ratio
from attnkit.data.stats import SIZE_BUCKETS, size_bucket
from attnkit.data.transforms import original_boxes
from attnkit.tasks.detection import build_matcher

CROSS_ATTENTION_SUFFIX = "multihead_attn"


class PaibbScorer:
    """Adds ``gt_index``, ``paibb`` and ``size_bucket`` columns for the matched queries."""

    columns = {"gt_index": -1, "paibb": float("nan"), "size_bucket": ""}

    def __init__(self, cfg):
        self.matcher = build_matcher(cfg.loss)

    def prepare(self, outputs, batch):
        return self.matcher(outputs, batch.targets), outputs["pred_logits"].shape[1]

    def score(self, name, record, batch, context, stats):
        matches, num_queries = context
        weights = record.weights.float()  # [B, H, Q, K]
        # The object queries' maps over the image grid: the decoder cross-attention.
        if not (
            record.name.endswith(CROSS_ATTENTION_SUFFIX)
            and record.key_grid is not None
            and weights.shape[2] == num_queries
        ):
            return None
        B, H, Q = weights.shape[:3]
        gt_index = torch.full((B, H, Q), -1, dtype=torch.int64)
        paibb_col = torch.full((B, H, Q), float("nan"))
        bucket_col = np.full((B, H, Q), "", dtype=object)
        per_head_all, head_avg_all, buckets_all = [], [], []
        kpm = record.key_padding_mask
        for b, (q_idx, t_idx) in enumerate(matches):
            if len(q_idx) == 0:
                continue
            maps = weights[b, :, q_idx, :].transpose(0, 1)  # [P, H, K]
            pad = kpm[b] if kpm is not None else torch.zeros(maps.shape[-1], dtype=torch.bool)
            maps = crop_to_unpadded(maps, record.key_grid, pad)  # [P, H, hv, wv]
            boxes, areas = original_boxes(batch.targets[b])
            size = tuple(int(v) for v in batch.targets[b]["orig_size"])
            inside, total = box_and_total_mass(maps, size, boxes[t_idx])  # [P, H] each
            per_head = mass_ratio(inside, total, maps)  # [P, H]
            head_avg_all.append(mass_ratio(inside.mean(1), total.mean(1), maps))  # [P]
            buckets = [size_bucket(a) for a in areas[t_idx].tolist()]
            per_head_all.append(per_head)
            buckets_all += buckets
            gt_index[b, :, q_idx] = t_idx
            paibb_col[b, :, q_idx] = per_head.T.float()  # [H, P]
            bucket_col[b][:, q_idx.numpy()] = np.asarray(buckets, dtype=object)[None, :]
        if per_head_all:
            per_head = torch.cat(per_head_all)  # [sum P, H]
            stats.update(("paibb", name), per_head, keep_dim=1)
            stats.update(("paibb_head_avg", name), torch.cat(head_avg_all))
            for bucket in SIZE_BUCKETS:
                sel = torch.tensor([bk == bucket for bk in buckets_all], dtype=torch.bool)
                if sel.any():
                    stats.update(("paibb_by_size", name, bucket), per_head[sel], keep_dim=1)
        return {"gt_index": gt_index, "paibb": paibb_col, "size_bucket": bucket_col}
