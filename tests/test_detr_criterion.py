"""SetCriterion against hand-computed values: CE with no-object weight, L1, GIoU, aux losses."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist

from attnkit.models.detr import HungarianMatcher, SetCriterion

WEIGHTS = {"loss_ce": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}
EOS = 0.1


def val(x: torch.Tensor) -> float:
    return float(x.detach())


class FixedMatcher:
    """A matcher that returns the given assignment, so the expected losses can be worked out."""

    def __init__(self, indices):
        self.indices = [(torch.tensor(q, dtype=torch.int64), torch.tensor(t)) for q, t in indices]

    def __call__(self, outputs, targets):
        return self.indices


def tiny_case(requires_grad: bool = False):
    """Two images, three queries, two classes (index 2 is "no object")."""
    logits = torch.tensor(
        [
            [[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0]],
            [[1.0, 1.0, 1.0], [0.0, 2.0, 0.0], [0.0, 0.0, 0.0]],
        ],
        requires_grad=requires_grad,
    )
    boxes = torch.tensor(
        [
            [[0.3, 0.3, 0.2, 0.2], [0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 0.2, 0.2]],
            [[0.5, 0.5, 0.5, 0.5], [0.25, 0.25, 0.1, 0.1], [0.5, 0.5, 0.5, 0.5]],
        ],
        requires_grad=requires_grad,
    )
    targets = [
        {
            "labels": torch.tensor([1, 0]),
            "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.4, 0.3, 0.2, 0.2]]),
        },
        {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.75, 0.75, 0.1, 0.1]])},
    ]
    # image 0: query 2 <-> target 0 (label 1), query 0 <-> target 1 (label 0);
    # image 1: query 1 <-> target 0 (label 1)
    matcher = FixedMatcher([([2, 0], [0, 1]), ([1], [0])])
    return {"pred_logits": logits, "pred_boxes": boxes}, targets, matcher


def expected_ce() -> float:
    """Weighted mean of the per-query negative log-likelihoods, no-object weight ``EOS``."""
    rows = [
        ([2.0, 0.0, 0.0], 0),
        ([0.0, 1.0, 0.0], 2),
        ([0.0, 0.0, 3.0], 1),
        ([1.0, 1.0, 1.0], 2),
        ([0.0, 2.0, 0.0], 1),
        ([0.0, 0.0, 0.0], 2),
    ]
    num = den = 0.0
    for logits, label in rows:
        nll = math.log(sum(math.exp(v) for v in logits)) - logits[label]
        w = EOS if label == 2 else 1.0
        num += w * nll
        den += w
    return num / den


# L1 and 1 - GIoU per matched pair, worked out by hand (boxes in cxcywh):
# (0.5,0.5,0.2,0.2) vs itself: 0 and 0;
# (0.3,0.3,0.2,0.2) vs (0.4,0.3,0.2,0.2): L1 0.1; IoU 0.02/0.06, hull 0.06 -> 1 - 1/3;
# (0.25,0.25,0.1,0.1) vs (0.75,0.75,0.1,0.1): L1 1.0; IoU 0, hull 0.36 -> 1 + 0.34/0.36.
EXPECTED_BBOX = (0.0 + 0.1 + 1.0) / 3
EXPECTED_GIOU = (0.0 + 2 / 3 + 1 + 0.34 / 0.36) / 3


def test_losses_match_hand_computed_values():
    outputs, targets, matcher = tiny_case()
    criterion = SetCriterion(2, matcher, WEIGHTS, eos_coef=EOS)
    losses = criterion(outputs, targets)
    assert val(losses["loss_ce"]) == pytest.approx(expected_ce(), abs=1e-6)
    assert val(losses["loss_bbox"]) == pytest.approx(EXPECTED_BBOX, abs=1e-6)
    assert val(losses["loss_giou"]) == pytest.approx(EXPECTED_GIOU, abs=1e-5)
    # matched predictions: query 2 of image 0 says "no object" (wrong), the others are right
    assert val(losses["class_error"]) == pytest.approx(100 / 3, abs=1e-4)
    # predicted objects: 2 in image 0 (truth 2), 3 in image 1 (truth 1)
    assert val(losses["cardinality_error"]) == pytest.approx(1.0)
    total = expected_ce() + 5 * EXPECTED_BBOX + 2 * EXPECTED_GIOU
    assert val(losses["loss"]) == pytest.approx(total, abs=1e-5)


def test_aux_losses_get_suffixes_and_count_in_the_total():
    outputs, targets, matcher = tiny_case(requires_grad=True)
    aux = {k: v * 1 for k, v in outputs.items()}
    criterion = SetCriterion(2, matcher, WEIGHTS, eos_coef=EOS)
    losses = criterion({**outputs, "aux_outputs": [aux, aux]}, targets)
    for i in (0, 1):
        assert val(losses[f"loss_ce_{i}"]) == pytest.approx(expected_ce(), abs=1e-6)
        assert val(losses[f"loss_bbox_{i}"]) == pytest.approx(EXPECTED_BBOX, abs=1e-6)
        assert val(losses[f"loss_giou_{i}"]) == pytest.approx(EXPECTED_GIOU, abs=1e-5)
        assert f"cardinality_error_{i}" in losses
    assert "class_error_0" not in losses
    layer = expected_ce() + 5 * EXPECTED_BBOX + 2 * EXPECTED_GIOU
    assert val(losses["loss"]) == pytest.approx(3 * layer, abs=1e-4)
    losses["loss"].backward()
    assert outputs["pred_logits"].grad.abs().sum() > 0
    assert outputs["pred_boxes"].grad[0, 1].abs().sum() == 0  # unmatched: no box gradient
    assert outputs["pred_boxes"].grad[1, 1].abs().sum() > 0

    # an explicit weight for one auxiliary term overrides its base name's weight
    zero_aux = SetCriterion(2, matcher, {**WEIGHTS, "loss_ce_0": 0.0}, eos_coef=EOS)
    losses = zero_aux({**outputs, "aux_outputs": [aux, aux]}, targets)
    assert val(losses["loss"]) == pytest.approx(3 * layer - expected_ce(), abs=1e-4)


def test_box_losses_are_normalised_by_the_number_of_boxes():
    outputs, targets, matcher = tiny_case()
    criterion = SetCriterion(2, matcher, WEIGHTS, eos_coef=EOS)
    one_image = SetCriterion(2, FixedMatcher([([1], [0])]), WEIGHTS, eos_coef=EOS)(
        {k: v[1:] for k, v in outputs.items()}, targets[1:]
    )
    assert val(one_image["loss_bbox"]) == pytest.approx(1.0, abs=1e-6)  # 1 box, L1 1.0
    assert val(criterion(outputs, targets)["loss_bbox"]) == pytest.approx(1.1 / 3, abs=1e-6)
    empty = [{"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}] * 2
    losses = SetCriterion(2, FixedMatcher([([], []), ([], [])]), WEIGHTS, EOS)(outputs, empty)
    assert val(losses["loss_bbox"]) == 0 and val(losses["loss_giou"]) == 0
    assert torch.isfinite(losses["loss"])


def test_with_the_hungarian_matcher_and_no_host_syncs(monkeypatch):
    g = torch.Generator().manual_seed(0)
    outputs = {
        "pred_logits": torch.randn(2, 6, 4, generator=g, requires_grad=True),
        "pred_boxes": torch.rand(2, 6, 4, generator=g).mul(0.3).add(0.2).requires_grad_(),
    }
    targets = [
        {"labels": torch.tensor([0, 2]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.6] * 4])},
        {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.3, 0.4]])},
    ]
    criterion = SetCriterion(3, HungarianMatcher(), WEIGHTS, eos_coef=EOS)

    def no_item(self):
        raise AssertionError("SetCriterion must not call .item() (a host sync per call)")

    monkeypatch.setattr(torch.Tensor, "item", no_item)
    losses = criterion({**outputs, "aux_outputs": [dict(outputs)]}, targets)
    monkeypatch.undo()
    losses["loss"].backward()
    assert set(losses) >= {"loss", "loss_ce", "loss_bbox", "loss_giou", "loss_ce_0"}


def test_num_boxes_is_reduced_over_ranks(tmp_path):
    outputs, targets, matcher = tiny_case()
    criterion = SetCriterion(2, matcher, WEIGHTS, eos_coef=EOS)
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        losses = criterion(outputs, targets)
    finally:
        dist.destroy_process_group()
    assert val(losses["loss_bbox"]) == pytest.approx(EXPECTED_BBOX, abs=1e-6)


def test_unknown_loss_name():
    with pytest.raises(ValueError, match="unknown losses"):
        SetCriterion(2, HungarianMatcher(), WEIGHTS, EOS, losses=("labels", "masks"))
