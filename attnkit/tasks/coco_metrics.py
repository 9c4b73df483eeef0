"""COCO detection metrics with pycocotools: detections to COCO results, AP / AR from them."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import torch

# The order of COCOeval.stats for bounding boxes.
COCO_METRICS = (
    "AP",
    "AP50",
    "AP75",
    "AP_S",
    "AP_M",
    "AP_L",
    "AR1",
    "AR10",
    "AR100",
    "AR_S",
    "AR_M",
    "AR_L",
)


def to_coco_results(image_ids, detections: list[dict]) -> list[dict]:
    """Post-processed detections (absolute xyxy) -> COCO results (xywh, one dict per box)."""
    results = []
    for image_id, det in zip(image_ids, detections):
        boxes = det["boxes"].detach().cpu().float()
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
        for box, score, label in zip(xywh, det["scores"].tolist(), det["labels"].tolist()):
            results.append(
                {
                    "image_id": int(image_id),
                    "category_id": int(label),
                    "bbox": box,
                    "score": float(score),
                }
            )
    return results


def coco_metrics(coco_gt, results: list[dict], image_ids=None) -> dict[str, float]:
    """AP, AP50, AP75, AP_S/M/L (and ARs) of ``results`` against the ground truth ``coco_gt``."""
    if not results:
        return dict.fromkeys(COCO_METRICS, 0.0)
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        if image_ids is not None:
            evaluator.params.imgIds = sorted(int(i) for i in image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    # pycocotools reports -1 where a bucket has no ground truth; keep it as NaN-free 0 / -1 info.
    return {name: float(np.float64(v)) for name, v in zip(COCO_METRICS, evaluator.stats)}
