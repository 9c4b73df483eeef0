"""Detection (DETR): COCO-format data, the Hungarian set loss, COCO AP with pycocotools."""

from __future__ import annotations

import torch

from attnkit.config.schema import DetectionDataConfig
from attnkit.data.build import build_dataset
from attnkit.data.coco import collate_detection
from attnkit.models.detr import HungarianMatcher, PostProcess, SetCriterion
from attnkit.models.detr.config import LossConfig
from attnkit.tasks.base import Task
from attnkit.tasks.coco_metrics import coco_metrics, to_coco_results

__all__ = ["DetectionEvaluator", "DetectionTask", "build_matcher"]


def build_matcher(loss_cfg: LossConfig) -> HungarianMatcher:
    """The Hungarian matcher with the costs of a detection ``loss`` section."""
    return HungarianMatcher(loss_cfg.cost_class, loss_cfg.cost_bbox, loss_cfg.cost_giou)


class DetectionEvaluator:
    """Post-processes each batch into COCO results; COCO AP / AR over all of them at the end."""

    def __init__(self, coco_gt):
        self.coco_gt, self.postprocess = coco_gt, PostProcess()
        self.results: list[dict] = []
        self.image_ids: list[int] = []

    def update(self, outputs, batch) -> None:
        sizes = torch.stack([t["orig_size"] for t in batch.targets]).to(batch.images.device)
        detections = self.postprocess(outputs, sizes)
        ids = [int(t["image_id"]) for t in batch.targets]
        self.image_ids += ids
        self.results += to_coco_results(ids, detections)

    def compute(self) -> dict[str, float]:
        return coco_metrics(self.coco_gt, self.results, self.image_ids)

    def artifacts(self) -> dict:
        return {"detections.json": self.results}


class DetectionTask(Task):
    """DETR's detection: padded image batches, the set criterion, pycocotools AP."""

    name = "detection"
    data_schema = DetectionDataConfig
    loss_schema = LossConfig
    key_metric = "AP"

    def build_dataset(self, cfg, split, train=None):
        return build_dataset(cfg.data, split, train)

    def collate(self, samples):
        return collate_detection(samples)

    def build_criterion(self, cfg):
        loss = cfg.loss
        weights = {"loss_ce": loss.class_weight, "loss_bbox": loss.bbox_weight}
        weights["loss_giou"] = loss.giou_weight
        return SetCriterion(
            cfg.model.num_classes, build_matcher(loss), weights, eos_coef=loss.eos_coef
        )

    def build_evaluator(self, cfg, dataset):
        return DetectionEvaluator(dataset.coco)
