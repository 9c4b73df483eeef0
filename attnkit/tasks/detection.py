"""Detection (DETR): COCO-format data, the Hungarian set loss, COCO AP with pycocotools."""

from __future__ import annotations

import torch

from attnkit.config.schema import DetectionDataConfig
from attnkit.data.build import build_dataset
from attnkit.data.coco import CocoDetection, collate_detection
from attnkit.errors import DataError
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

    def check(self, cfg, dataset) -> None:
        """Every category id of ``dataset`` must be a class of the model: 0..num_classes - 1.

        DETR's head has ``num_classes + 1`` outputs, the last (index ``num_classes``) meaning
        "no object", so ``num_classes`` is the largest id + 1, not the number of categories
        (COCO's ids 1..90 need 91). An id equal to ``num_classes`` would train as "no object"
        and a larger one crash the loss, so either is a DataError naming the ids, an annotation
        that uses each, the file and the fix.
        """
        while not isinstance(dataset, CocoDetection) and hasattr(dataset, "dataset"):
            dataset = dataset.dataset  # a Subset, or another wrapper
        if not isinstance(dataset, CocoDetection):
            return
        num_classes = cfg.model.num_classes
        ids = dataset.category_ids()
        bad = sorted(i for i in ids if i < 0 or i >= num_classes)
        if not bad:
            return
        shown = ", ".join(
            str(i) if ids[i] is None else f"{i} (annotation {ids[i]})" for i in bad[:5]
        )
        shown += f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        if bad[0] < 0:
            fix = "renumber the categories to ids >= 0"
        else:
            fix = f"set model.num_classes to at least max_id + 1 = {max(ids) + 1}"
        label = "category id" if len(bad) == 1 else "category ids"
        verb = "is" if len(bad) == 1 else "are"
        raise DataError(
            f"{dataset.ann_file}: {label} {shown} {verb} outside the classes 0..{num_classes - 1}"
            f" of model.num_classes={num_classes} (id {num_classes} is DETR's 'no object' "
            f"class): {fix}"
        )
