"""Look closely at a handful of images: DETR's detections, matches, costs and attention maps.

:func:`inspect_images` runs a model on chosen images of a dataset (batched, padded) and keeps,
per image, everything the attention and matching views of :mod:`attnkit.viz` draw: the decoder
cross-attention of every (chosen) layer, per head, cropped to the image's own unpadded feature
grid (``[L, H, Q, hv, wv]``), the post-processed detections in original pixels, the ground
truth, the Hungarian matches and the matcher's cost terms. Not streaming: meant for a few images.

:func:`load_model` resolves what notebooks call "a model": the name of a shipped reference model
(``"sparsemax"``) or a checkpoint path, optionally re-initialised at random with the same config.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torchvision.ops import box_iou

from attnkit.analysis.paibb import crop_to_unpadded
from attnkit.analysis.recorder import AttentionRecorder
from attnkit.data.coco import collate_detection
from attnkit.data.transforms import original_boxes
from attnkit.models.detr.matcher import HungarianMatcher, cost_terms
from attnkit.models.detr.postprocess import PostProcess
from attnkit.runfiles import resolve_checkpoint
from attnkit.tasks.detection import build_matcher

__all__ = [
    "COST_TERMS",
    "ImageInspection",
    "cross_attention_name",
    "inspect_images",
    "inspect_models",
    "load_model",
]

CROSS_ATTENTION = "transformer.decoder.layers.{}.multihead_attn"
# The matcher's cost terms: key in ``cost_terms`` -> (label, HungarianMatcher weight attribute).
COST_TERMS = {
    "class": ("class", "cost_class"),
    "bbox": ("L1", "cost_bbox"),
    "giou": ("GIoU", "cost_giou"),
}


def cross_attention_name(layer: int) -> str:
    """The module name of DETR's decoder cross-attention in layer ``layer``."""
    return CROSS_ATTENTION.format(layer)


@dataclass
class ImageInspection:
    """One image seen through one model (all tensors on the CPU, boxes in original pixels).

    Attributes:
        index: the image's index in the dataset; ``image_id`` its COCO id.
        image: the original image (PIL, RGB).
        layers: decoder layer indices of ``attention``'s first axis.
        attention: ``[L, H, Q, hv, wv]`` cross-attention per layer, head and query over the
            image's unpadded feature grid (each map sums to 1).
        scores, labels, boxes: ``[Q]``, ``[Q]``, ``[Q, 4]`` post-processed predictions per query
            (best real class, its probability, xyxy box).
        gt_boxes, gt_labels: ``[T, 4]`` xyxy, ``[T]`` ground truth.
        match_queries, match_targets: ``[P]`` each: query ``match_queries[k]`` is matched to
            ground truth ``match_targets[k]``.
        costs: the matcher's unweighted cost terms ``{"class", "bbox", "giou"}``, each ``[Q, T]``.
        cost_weights: the matcher's weight of each term (same keys).
        categories: class id -> name.
        score_threshold: scores at or above it count as detections (``detected``).
        model_name: a label for the model (figure titles).
    """

    index: int
    image_id: int
    image: Image.Image
    layers: list[int]
    attention: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    boxes: torch.Tensor
    gt_boxes: torch.Tensor
    gt_labels: torch.Tensor
    match_queries: torch.Tensor
    match_targets: torch.Tensor
    costs: dict[str, torch.Tensor]
    cost_weights: dict[str, float]
    categories: dict[int, str] = field(default_factory=dict)
    score_threshold: float = 0.5
    model_name: str = ""

    @property
    def detected(self) -> torch.Tensor:
        """``[Q]`` bool: the queries whose score reaches the threshold."""
        return self.scores >= self.score_threshold

    @property
    def num_queries(self) -> int:
        return self.attention.shape[2]

    @property
    def num_heads(self) -> int:
        return self.attention.shape[1]

    @property
    def grid(self) -> tuple[int, int]:
        """``(hv, wv)``, the unpadded feature grid of the image."""
        return tuple(self.attention.shape[-2:])

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` of the original image."""
        return (self.image.height, self.image.width)

    def class_name(self, label: int) -> str:
        return self.categories.get(int(label), str(int(label)))

    def target_of(self, query: int) -> int | None:
        """The ground truth matched to ``query``, or None."""
        hit = (self.match_queries == query).nonzero()
        return int(self.match_targets[hit[0, 0]]) if len(hit) else None

    def query_of(self, target: int) -> int | None:
        """The query matched to ground truth ``target``, or None."""
        hit = (self.match_targets == target).nonzero()
        return int(self.match_queries[hit[0, 0]]) if len(hit) else None

    def layer_position(self, layer: int) -> int:
        """Position in ``attention``'s first axis of decoder layer ``layer`` (negative: from
        the last recorded layer)."""
        if layer < 0:
            return len(self.layers) + layer
        if layer not in self.layers:
            raise ValueError(f"decoder layer {layer} was not recorded; recorded: {self.layers}")
        return self.layers.index(layer)

    def weighted_costs(self) -> dict[str, torch.Tensor]:
        """The cost terms as the matcher weighs them, each ``[Q, T]``; they sum to its cost."""
        return {k: self.cost_weights[k] * v for k, v in self.costs.items()}

    def total_cost(self) -> torch.Tensor:
        """The matcher's cost ``[Q, T]``."""
        return sum(self.weighted_costs().values())

    def matched_iou(self) -> torch.Tensor:
        """``[P]`` IoU of each matched (prediction, ground truth) pair."""
        if len(self.match_queries) == 0:
            return torch.zeros(0)
        iou = box_iou(self.boxes[self.match_queries], self.gt_boxes[self.match_targets])
        return iou.diagonal()  # [P]

    def top_targets(self, n: int | None = None) -> list[int]:
        """Ground-truth indices ordered by the score of the query matched to them (best first)."""
        pairs = zip(self.match_targets.tolist(), self.match_queries.tolist())
        order = sorted(pairs, key=lambda p: -float(self.scores[p[1]]))
        return [t for t, _ in order][:n]

    def objects(self) -> list[int]:
        """Queries worth drawing: detections by decreasing score, else the matched queries."""
        detected = self.detected.nonzero().flatten()
        chosen = detected if len(detected) else self.match_queries
        return sorted(chosen.tolist(), key=lambda q: -float(self.scores[q]))


def _record_layers(model, layers: Sequence[int] | None) -> list[int]:
    pattern = re.compile(re.escape(CROSS_ATTENTION).replace(r"\{\}", r"(\d+)") + "$")
    found = (pattern.match(name) for name, _ in model.named_modules())
    available = sorted(int(m.group(1)) for m in found if m)
    if not available:
        raise ValueError("the model has no DETR decoder cross-attention (transformer.decoder...)")
    if layers is None:
        return available
    chosen = [available[i] if i < 0 else i for i in layers]
    missing = [i for i in chosen if i not in available]
    if missing:
        raise ValueError(f"decoder layers {missing} do not exist; the model has {available}")
    return chosen


@torch.no_grad()
def _inspect_batch(model, dataset, indices, matcher, layers, score_threshold, model_name):
    device = next(model.parameters()).device
    batch = collate_detection([dataset[i] for i in indices]).to(device)
    names = [cross_attention_name(i) for i in layers]
    with AttentionRecorder(model, include=names) as recorder:
        outputs = model(batch.images, batch.mask)
    outputs = {k: v for k, v in outputs.items() if k in ("pred_logits", "pred_boxes")}
    matches = matcher(outputs, batch.targets)
    costs = cost_terms(outputs, batch.targets)
    detections = PostProcess()(outputs, batch.targets)
    records = [recorder.last(name) for name in names]
    weights = {k: float(getattr(matcher, attr)) for k, (_, attr) in COST_TERMS.items()}
    out = []
    for b, index in enumerate(indices):
        maps = []
        for rec in records:
            w = rec.weights[b].float()  # [H, Q, K]
            pad = rec.key_padding_mask
            pad = pad[b] if pad is not None else torch.zeros(w.shape[-1], dtype=torch.bool)
            maps.append(crop_to_unpadded(w, rec.key_grid, pad.cpu()))  # [H, Q, hv, wv]
        target = batch.targets[b]
        out.append(
            ImageInspection(
                index=int(index),
                image_id=int(target["image_id"]),
                image=dataset.load_image(index),
                layers=list(layers),
                attention=torch.stack(maps),  # [L, H, Q, hv, wv]
                scores=detections[b]["scores"].cpu(),
                labels=detections[b]["labels"].cpu(),
                boxes=detections[b]["boxes"].cpu(),
                gt_boxes=original_boxes(
                    {k: v.cpu() for k, v in target.items() if torch.is_tensor(v)}
                )[0],
                gt_labels=target["labels"].cpu(),
                match_queries=matches[b][0],
                match_targets=matches[b][1],
                costs={k: v.cpu() for k, v in costs[b].items()},
                cost_weights=weights,
                categories=dict(dataset.categories),
                score_threshold=score_threshold,
                model_name=model_name,
            )
        )
    return out


def inspect_images(
    model,
    dataset,
    indices: Sequence[int],
    matcher: HungarianMatcher | None = None,
    layers: Sequence[int] | None = None,
    score_threshold: float = 0.5,
    batch_size: int | None = None,
    model_name: str = "",
) -> list[ImageInspection]:
    """Run a DETR model on ``dataset[indices]`` and keep what the inspection figures need.

    Args:
        model: a DETR (eval mode is set here).
        dataset: a :class:`~attnkit.data.CocoDetection` with the eval transforms.
        indices: dataset indices of the images.
        matcher: the Hungarian matcher; None: DETR's weights (class 1, L1 5, GIoU 2).
        layers: decoder layer indices to record, 0-based (negative: from the last); None: all.
        score_threshold: a query with this score or more is a detection.
        batch_size: images per forward pass (padded to the largest); None: all at once.
        model_name: a label for figure titles.

    Returns:
        One :class:`ImageInspection` per index, in order.
    """
    model.eval()
    matcher = matcher or HungarianMatcher()
    chosen = _record_layers(model, layers)
    indices = [int(i) for i in indices]
    step = batch_size or max(1, len(indices))
    out = []
    for start in range(0, len(indices), step):
        chunk = indices[start : start + step]
        out += _inspect_batch(model, dataset, chunk, matcher, chosen, score_threshold, model_name)
    return out


def load_model(
    spec: str | Path,
    random_init: bool = False,
    overrides=None,
    device: str = "cpu",
    label: str | None = None,
):
    """``(label, model, cfg)`` from a shipped model name, a checkpoint or a run folder.

    ``spec``: a normalizer name of a shipped model (``"sparsemax"``), a checkpoint path, or a run
    folder (its ``last.pt``). ``random_init``: the same architecture (same config) with fresh
    weights, seeded with ``cfg.seed``: the "before training" baseline. ``label`` defaults to
    the normalizer name of a shipped model, else the file or folder name; " (random init)" is
    appended when re-initialised.
    """
    from attnkit.models import build_model
    from attnkit.models.loading import model_from_checkpoint
    from attnkit.models.reference import REFERENCE_NORMALIZERS, reference_checkpoint

    if str(spec) in REFERENCE_NORMALIZERS:
        path = reference_checkpoint(str(spec))
        label = label or str(spec)
    else:
        path = Path(spec).expanduser()
        label = label or (path.name if path.is_dir() else path.stem)
        path = resolve_checkpoint(path)
    model, cfg = model_from_checkpoint(path, overrides, device=device)
    if random_init:
        torch.manual_seed(cfg.seed)
        model = build_model(cfg).to(device).eval()
        label += " (random init)"
    return label, model, cfg


def _indices_of(dataset, image_ids: Sequence[int] | None, num_images: int) -> list[int]:
    """Dataset indices of COCO ``image_ids`` (None: the first ``num_images`` images)."""
    if image_ids is None:
        return list(range(min(num_images, len(dataset))))
    position = {image_id: k for k, image_id in enumerate(dataset.ids)}
    missing = [i for i in image_ids if int(i) not in position]
    if missing:
        raise ValueError(f"image ids {missing} are not in {dataset.ann_file}")
    return [position[int(i)] for i in image_ids]


def inspect_models(
    models: Sequence[str | Path] | Mapping[str, str | Path],
    image_ids: Sequence[int] | None = None,
    num_images: int = 2,
    include_random_init: bool = False,
    layers: Sequence[int] | None = None,
    score_threshold: float = 0.5,
    data_overrides=None,
    device: str = "cpu",
) -> dict[str, list[ImageInspection]]:
    """:func:`inspect_images` of the same images for several models.

    ``models``: shipped model names, checkpoints or run folders (see :func:`load_model`), or
    ``{label: any of those}``.

    ``image_ids``: COCO image ids (as figure titles show them); None: the first ``num_images``
    of the validation split. ``include_random_init``: each model is followed by its
    random-init twin. ``data_overrides``: dotted config overrides of the models' data section
    (e.g. ``{"data.name": "coco", "data.root": ...}``). Each model uses its own config's eval
    transforms and matcher weights. Returns ``{label: [ImageInspection per image]}``.
    """
    from attnkit.data import build_dataset

    out: dict[str, list[ImageInspection]] = {}
    datasets: dict[str, object] = {}
    if isinstance(models, (str, Path)):
        models = [models]
    named = models.items() if isinstance(models, Mapping) else [(None, m) for m in models]
    for name, spec in named:
        for random_init in (False, True) if include_random_init else (False,):
            label, model, cfg = load_model(spec, random_init, data_overrides, device, name)
            key = repr(cfg.data)
            if key not in datasets:
                datasets[key] = build_dataset(cfg.data, "val", train=False)
            dataset = datasets[key]
            indices = _indices_of(dataset, image_ids, num_images)
            matcher = build_matcher(cfg.loss)
            out[label] = inspect_images(
                model, dataset, indices, matcher, layers, score_threshold, model_name=label
            )
    return out
