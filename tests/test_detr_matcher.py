"""Hungarian matcher: optimal against brute force, cost terms, empty images."""

from __future__ import annotations

import itertools

import pytest
import torch
from torchvision.ops import box_convert, generalized_box_iou

from attnkit.models.detr import HungarianMatcher, cost_terms

NUM_CLASSES = 4


def random_boxes(n: int, g: torch.Generator) -> torch.Tensor:
    """``n`` valid normalised cxcywh boxes."""
    centre = torch.rand(n, 2, generator=g) * 0.6 + 0.2
    size = torch.rand(n, 2, generator=g) * 0.3 + 0.05
    return torch.cat([centre, size], dim=1)


def random_case(num_queries: int, num_targets: list[int], seed: int):
    g = torch.Generator().manual_seed(seed)
    B = len(num_targets)
    outputs = {
        "pred_logits": torch.randn(B, num_queries, NUM_CLASSES + 1, generator=g) * 2,
        "pred_boxes": torch.stack([random_boxes(num_queries, g) for _ in range(B)]),
    }
    targets = [
        {
            "labels": torch.randint(0, NUM_CLASSES, (n,), generator=g),
            "boxes": random_boxes(n, g),
        }
        for n in num_targets
    ]
    return outputs, targets


def hand_cost(outputs, target, i, weights=(1.0, 5.0, 2.0)) -> torch.Tensor:
    """The DESIGN.md cost ``[Q, T]`` of image ``i``, written out directly."""
    prob = outputs["pred_logits"][i].softmax(-1)  # [Q, C+1]
    boxes = outputs["pred_boxes"][i]  # [Q, 4]
    Q, T = boxes.shape[0], target["boxes"].shape[0]
    cost = torch.zeros(Q, T)
    giou = generalized_box_iou(
        box_convert(boxes, "cxcywh", "xyxy"), box_convert(target["boxes"], "cxcywh", "xyxy")
    )
    for q in range(Q):
        for t in range(T):
            l1 = (boxes[q] - target["boxes"][t]).abs().sum()
            p = prob[q, target["labels"][t]]
            cost[q, t] = -weights[0] * p + weights[1] * l1 - weights[2] * giou[q, t]
    return cost


def brute_force_min(cost: torch.Tensor) -> float:
    """The minimal total cost over every injective assignment of targets to queries."""
    Q, T = cost.shape
    if T == 0:
        return 0.0
    return min(
        sum(float(cost[q, t]) for t, q in enumerate(queries))
        for queries in itertools.permutations(range(Q), T)
    )


@pytest.mark.parametrize("num_queries", [3, 4, 5])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matching_is_optimal_against_brute_force(num_queries, seed):
    outputs, targets = random_case(num_queries, [1, 0, 2, 3], seed)
    matcher = HungarianMatcher(1.0, 5.0, 2.0)
    indices = matcher(outputs, targets)
    assert len(indices) == len(targets)
    for i, ((rows, cols), target) in enumerate(zip(indices, targets)):
        T = len(target["labels"])
        assert rows.dtype == torch.int64 and cols.dtype == torch.int64
        assert len(rows) == len(cols) == min(num_queries, T)
        assert len(set(rows.tolist())) == len(rows) and sorted(cols.tolist()) == list(range(T))
        cost = hand_cost(outputs, target, i)
        total = float(cost[rows, cols].sum()) if T else 0.0
        assert total == pytest.approx(brute_force_min(cost), abs=1e-5)


def test_weighted_cost_terms_sum_to_the_matcher_cost():
    outputs, targets = random_case(5, [2, 0, 3], seed=3)
    matcher = HungarianMatcher(cost_class=1.5, cost_bbox=4.0, cost_giou=0.5)
    costs = matcher.cost_matrices(outputs, targets)
    terms = cost_terms(outputs, targets)
    for i, (cost, term, target) in enumerate(zip(costs, terms, targets)):
        assert cost.shape == term["class"].shape == (5, len(target["labels"]))
        combined = 1.5 * term["class"] + 4.0 * term["bbox"] + 0.5 * term["giou"]
        torch.testing.assert_close(combined, cost)
        torch.testing.assert_close(cost, hand_cost(outputs, target, i, (1.5, 4.0, 0.5)))
        prob = outputs["pred_logits"][i].softmax(-1)
        torch.testing.assert_close(term["class"], -prob[:, target["labels"]])
        assert (term["giou"] >= -1).all() and (term["giou"] <= 1).all()


def test_batch_without_any_target():
    outputs, targets = random_case(4, [0, 0], seed=4)
    indices = HungarianMatcher()(outputs, targets)
    assert [(len(r), len(c)) for r, c in indices] == [(0, 0), (0, 0)]
    assert [t["class"].shape for t in cost_terms(outputs, targets)] == [(4, 0), (4, 0)]


def test_more_targets_than_queries_matches_every_query():
    outputs, targets = random_case(3, [5], seed=5)
    ((rows, cols),) = HungarianMatcher()(outputs, targets)
    assert sorted(rows.tolist()) == [0, 1, 2] and len(set(cols.tolist())) == 3
    cost = hand_cost(outputs, targets[0], 0)
    best = min(
        sum(float(cost[q, t]) for q, t in enumerate(chosen))
        for chosen in itertools.permutations(range(5), 3)
    )
    assert float(cost[rows, cols].sum()) == pytest.approx(best, abs=1e-5)


def test_a_matcher_needs_a_cost():
    with pytest.raises(ValueError, match="non-zero cost"):
        HungarianMatcher(0, 0, 0)
