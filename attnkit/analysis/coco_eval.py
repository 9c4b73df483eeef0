"""COCO detection metrics with pycocotools, streamed over a loader."""

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


@torch.no_grad()
def evaluate_detection(model, postprocess, loader, coco_gt, device, amp_dtype=None, progress=True):
    """Run ``model`` over ``loader``; returns (metrics dict, COCO results list)."""
    from tqdm.auto import tqdm

    model.eval()
    results, image_ids = [], []
    for batch in tqdm(loader, desc="eval", unit="batch", disable=not progress, leave=False):
        batch = batch.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            outputs = model(batch.images, batch.mask)
        sizes = torch.stack([t["orig_size"] for t in batch.targets]).to(device)
        detections = postprocess(outputs, sizes)
        ids = [int(t["image_id"]) for t in batch.targets]
        image_ids += ids
        results += to_coco_results(ids, detections)
    return coco_metrics(coco_gt, results, image_ids), results
