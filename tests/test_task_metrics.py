"""Classification and dense-regression losses and streamed metrics: hand-computed values,
streamed == one-shot over uneven batches, NaN nodata that must not leak, error messages."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from attnkit.tasks.classification_loss import ClassificationLoss
from attnkit.tasks.classification_metrics import ClassificationMetrics
from attnkit.tasks.dense_loss import DenseRegressionLoss
from attnkit.tasks.dense_metrics import DenseRegressionMetrics

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))]  # fmt: skip

# Three classes; class 2 never appears as a label.
LOGITS = torch.tensor(
    [
        [3.0, 1.0, 0.0],  # label 0, predicted 0, top-2 {0, 1}: hit, hit
        [1.0, 3.0, 0.0],  # label 0, predicted 1, top-2 {1, 0}: miss, hit
        [0.0, 1.0, 3.0],  # label 1, predicted 2, top-2 {2, 1}: miss, hit
        [0.0, 3.0, 1.0],  # label 1, predicted 1, top-2 {1, 2}: hit, hit
        [3.0, 0.0, 1.0],  # label 1, predicted 0, top-2 {0, 2}: miss, miss
    ]
)
LABELS = torch.tensor([0, 0, 1, 1, 1])


def hand_ce(row: list[float], label: int) -> float:
    return math.log(sum(math.exp(v) for v in row)) - row[label]


def assert_same(a: dict, b: dict, rel: float = 1e-12) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], float):
            assert a[key] == pytest.approx(b[key], rel=rel, abs=1e-12, nan_ok=True), key
        elif key == "per_class_accuracy":
            np.testing.assert_allclose(a[key], b[key], rtol=rel)
        else:
            assert a[key] == b[key], key


# ---------------------------------------------------------------- classification metrics


@pytest.mark.parametrize("device", DEVICES)
def test_classification_metrics_by_hand(device):
    m = ClassificationMetrics(3, topk=(1, 2))
    m.update(LOGITS.to(device), LABELS.to(device))
    out = m.compute()
    assert out["top1"] == pytest.approx(2 / 5)
    assert out["top2"] == pytest.approx(4 / 5)
    expected_loss = sum(hand_ce(r, y) for r, y in zip(LOGITS.tolist(), LABELS.tolist())) / 5
    assert out["loss"] == pytest.approx(expected_loss, rel=1e-12)
    assert out["confusion"] == [[1, 1, 0], [1, 1, 1], [0, 0, 0]]
    acc = out["per_class_accuracy"]
    assert acc[:2] == pytest.approx([1 / 2, 1 / 3]) and math.isnan(acc[2])
    assert out["mean_class_accuracy"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert out["num_samples"] == m.num_samples == 5


def test_classification_metrics_topk_above_num_classes_is_dropped():
    m = ClassificationMetrics(3)  # default topk=(1, 5)
    m.update(LOGITS, LABELS)
    out = m.compute()
    assert "top1" in out and "top5" not in out
    m5 = ClassificationMetrics(6)
    m5.update(torch.randn(4, 6), torch.tensor([0, 1, 2, 5]))
    assert {"top1", "top5"} <= m5.compute().keys()


def test_classification_metrics_streamed_equals_one_shot_and_numpy():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(40, 7, generator=g)
    labels = torch.randint(0, 7, (40,), generator=g)
    one = ClassificationMetrics(7)
    one.update(logits, labels)
    streamed = ClassificationMetrics(7)
    for lo, hi in [(0, 3), (3, 4), (4, 4), (4, 25), (25, 40)]:  # uneven, one empty
        streamed.update(logits[lo:hi], labels[lo:hi])
    assert_same(streamed.compute(), one.compute())

    x, y = logits.double().numpy(), labels.numpy()
    order = np.argsort(-x, axis=1)
    out = one.compute()
    assert out["top1"] == pytest.approx(np.mean(order[:, 0] == y))
    assert out["top5"] == pytest.approx(np.mean((order[:, :5] == y[:, None]).any(axis=1)))
    logp = x - np.log(np.exp(x).sum(axis=1, keepdims=True))
    assert out["loss"] == pytest.approx(-logp[np.arange(40), y].mean(), rel=1e-12)
    assert np.trace(out["confusion"]) == round(out["top1"] * 40)


def test_classification_metrics_reset_and_empty():
    m = ClassificationMetrics(3, topk=(1,))
    out = m.compute()
    assert math.isnan(out["top1"]) and math.isnan(out["loss"]) and out["num_samples"] == 0
    m.update(LOGITS, LABELS)
    m.reset()
    assert m.num_samples == 0 and m.compute()["confusion"] == [[0] * 3] * 3


def test_classification_metrics_errors():
    m = ClassificationMetrics(3)
    with pytest.raises(ValueError, match=r"label 3 is out of range for num_classes=3"):
        m.update(LOGITS[:2], torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"label -1 is out of range for num_classes=3"):
        m.update(LOGITS[:2], torch.tensor([-1, 0]))
    with pytest.raises(ValueError, match=r"logits must have shape \[B, 3\], got \(2, 4\)"):
        m.update(torch.zeros(2, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"labels must have shape \[2\]"):
        m.update(LOGITS[:2], torch.tensor([0, 1, 2]))
    assert m.num_samples == 0  # a rejected batch leaves no trace
    with pytest.raises(ValueError, match="exceeds num_classes=3"):
        ClassificationMetrics(3, topk=(4, 5))


# ---------------------------------------------------------------- classification loss


def test_classification_loss_plain_and_dict():
    crit = ClassificationLoss()
    logits = LOGITS.clone().requires_grad_(True)
    out = crit(logits, LABELS)
    expected = sum(hand_ce(r, y) for r, y in zip(LOGITS.tolist(), LABELS.tolist())) / 5
    assert out["loss"].item() == pytest.approx(expected, rel=1e-6)
    assert out["loss_ce"] is out["loss"]
    assert out["accuracy"].dim() == 0 and out["accuracy"].item() == pytest.approx(2 / 5)
    assert not out["accuracy"].requires_grad
    out["loss"].backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    assert crit({"logits": LOGITS}, LABELS)["loss"].item() == pytest.approx(expected, rel=1e-6)


def test_classification_loss_label_smoothing_matches_formula():
    eps = 0.2
    out = ClassificationLoss(label_smoothing=eps)(LOGITS.double(), LABELS)
    total = 0.0
    for row, y in zip(LOGITS.tolist(), LABELS.tolist()):
        lse = math.log(sum(math.exp(v) for v in row))
        nll = [lse - v for v in row]  # -log p_c
        total += (1 - eps) * nll[y] + eps * sum(nll) / len(row)
    assert out["loss"].item() == pytest.approx(total / 5, rel=1e-12)


def test_classification_loss_errors():
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\)"):
            ClassificationLoss(label_smoothing=bad)
    with pytest.raises(KeyError, match="no 'logits' key"):
        ClassificationLoss()({"pred": LOGITS}, LABELS)
    with pytest.raises(ValueError, match=r"targets must have shape \[5\]"):
        ClassificationLoss()(LOGITS, LABELS[:3])


# ---------------------------------------------------------------- dense loss

# 2x2 example; the bottom-right pixel is nodata and holds NaN. Errors pred - target on the
# valid pixels: 1, -0.5, -2.
PRED = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])  # [1, 1, 2, 2]
TARGET = torch.tensor([[[[0.0, 2.5], [5.0, math.nan]]]])
VALID = torch.tensor([[[[True, True], [True, False]]]])
HAND = {
    # kind: (loss, d loss / d pred at the four pixels)
    "l1": ((1 + 0.5 + 2) / 3, [1 / 3, -1 / 3, -1 / 3, 0.0]),
    "l2": ((1 + 0.25 + 4) / 3, [2 / 3, -1 / 3, -4 / 3, 0.0]),
    # beta = 1: |e| < 1 -> e^2 / 2, else |e| - 1/2
    "smooth_l1": ((0.5 + 0.125 + 1.5) / 3, [1 / 3, -0.5 / 3, -1 / 3, 0.0]),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", sorted(HAND))
def test_dense_loss_by_hand_with_nan_nodata(kind, device):
    pred = PRED.clone().to(device).requires_grad_(True)
    out = DenseRegressionLoss(kind)(pred, {"target": TARGET.to(device), "valid": VALID.to(device)})
    assert out[f"loss_{kind}"] is out["loss"]
    assert torch.isfinite(out["loss"])
    assert out["loss"].item() == pytest.approx(HAND[kind][0], rel=1e-6)
    out["loss"].backward()
    assert torch.isfinite(pred.grad).all()
    assert pred.grad.flatten().tolist() == pytest.approx(HAND[kind][1], rel=1e-6)


@pytest.mark.parametrize("kind", sorted(HAND))
def test_dense_loss_accepts_3d_and_dict_and_equals_valid_only(kind):
    crit = DenseRegressionLoss(kind, beta=0.7)
    a = crit({"pred": PRED[:, 0]}, {"target": TARGET[:, 0], "valid": VALID[:, 0]})["loss"]
    v = VALID.flatten()
    b = crit(
        PRED.flatten()[v].view(1, 1, 3),
        {
            "target": TARGET.flatten()[v].view(1, 1, 3),
            "valid": torch.ones(1, 1, 3, dtype=torch.bool),
        },
    )
    assert a.item() == pytest.approx(b["loss"].item(), rel=1e-6)
    # Without a mask, the finite target pixels are the valid ones.
    c = crit(PRED, {"target": TARGET})["loss"]
    assert c.item() == pytest.approx(a.item(), rel=1e-6)


def test_dense_loss_all_invalid_is_zero_with_grad():
    pred = PRED.clone().requires_grad_(True)
    target = torch.full_like(PRED, math.nan)
    out = DenseRegressionLoss("l2")(pred, {"target": target, "valid": torch.zeros_like(VALID)})
    assert out["loss"].item() == 0.0 and out["loss"].grad_fn is not None
    out["loss"].backward()
    assert torch.equal(pred.grad, torch.zeros_like(PRED))


def test_dense_loss_errors():
    with pytest.raises(ValueError, match=r"kind must be one of .* got 'huber'"):
        DenseRegressionLoss("huber")
    with pytest.raises(ValueError, match="beta must be > 0"):
        DenseRegressionLoss("smooth_l1", beta=0.0)
    targets = {"target": TARGET, "valid": VALID}
    with pytest.raises(
        ValueError, match=r"\(1, 1, 2, 3\) does not match target shape \(1, 1, 2, 2\)"
    ):
        DenseRegressionLoss()(torch.zeros(1, 1, 2, 3), targets)
    with pytest.raises(ValueError, match=r"valid mask shape \(1, 2, 1\)"):
        DenseRegressionLoss()(PRED, {"target": TARGET, "valid": VALID[:, 0, :, :1]})
    with pytest.raises(
        ValueError, match=r"prediction must have one channel, got shape \(1, 2, 2, 2\)"
    ):
        DenseRegressionLoss()(torch.zeros(1, 2, 2, 2), targets)
    with pytest.raises(KeyError, match="no 'pred' key"):
        DenseRegressionLoss()({"logits": PRED}, targets)


# ---------------------------------------------------------------- dense metrics


@pytest.mark.parametrize("device", DEVICES)
def test_dense_metrics_match_numpy_over_uneven_batches(device):
    rng = np.random.default_rng(0)
    b, h, w = 11, 5, 7
    target = 100.0 + rng.normal(size=(b, 1, h, w))  # a large mean: R^2 must not cancel away
    pred = target + rng.normal(scale=0.3, size=target.shape)
    valid = rng.random(target.shape) > 0.25
    target[~valid] = np.nan
    m = DenseRegressionMetrics(bins=[99.0, 100.0, 101.0])
    for lo, hi in [(0, 1), (1, 5), (5, 5), (5, 7), (7, 11)]:
        sl = slice(lo, hi)
        m.update(
            torch.tensor(pred[sl], dtype=torch.float64, device=device),
            torch.tensor(target[sl], dtype=torch.float64, device=device),
            torch.tensor(valid[sl], device=device),
        )
    out = m.compute()
    y, p = target[valid], pred[valid]
    e = p - y
    assert out["num_pixels"] == m.num_pixels == valid.sum()
    assert out["mae"] == pytest.approx(np.abs(e).mean(), rel=1e-9)
    assert out["rmse"] == pytest.approx(np.sqrt((e**2).mean()), rel=1e-9)
    assert out["bias"] == pytest.approx(e.mean(), rel=1e-9)
    r2 = 1 - (e**2).sum() / ((y - y.mean()) ** 2).sum()
    assert out["r2"] == pytest.approx(r2, rel=1e-9)
    assert sum(bin_["count"] for bin_ in out["per_bin"]) == valid.sum()
    for bin_ in out["per_bin"]:
        sel = (y >= bin_["lo"]) & (y < bin_["hi"])
        assert bin_["count"] == sel.sum()
        assert bin_["mae"] == pytest.approx(np.abs(e[sel]).mean(), rel=1e-9)


def test_dense_metrics_per_bin_by_hand():
    target = torch.tensor([-1.0, 0.0, 0.5, 1.0, 2.0, 5.0, math.nan]).view(1, 1, 7)
    errors = torch.tensor([1.0, -2.0, 2.0, 0.5, 3.0, -1.0, 0.0]).view(1, 1, 7)
    valid = torch.isfinite(target)
    m = DenseRegressionMetrics(bins=[0, 1, 2, 10])
    m.update(target + errors, target, valid)
    bins = m.compute()["per_bin"]
    assert [(b["lo"], b["hi"]) for b in bins] == [
        (-math.inf, 0.0), (0.0, 1.0), (1.0, 2.0), (2.0, 10.0), (10.0, math.inf)
    ]  # fmt: skip
    # (-inf, 0): {-1}; [0, 1): {0, 0.5}; [1, 2): {1}; [2, 10): {2, 5}; [10, inf): empty
    assert [b["count"] for b in bins] == [1, 2, 1, 2, 0]
    assert [b["mae"] for b in bins[:4]] == pytest.approx([1.0, 2.0, 0.5, 2.0])
    assert [b["rmse"] for b in bins[:4]] == pytest.approx([1.0, 2.0, 0.5, math.sqrt(5)])
    assert [b["bias"] for b in bins[:4]] == pytest.approx([1.0, 0.0, 0.5, 1.0])
    assert all(math.isnan(bins[4][k]) for k in ("mae", "rmse", "bias"))


def test_dense_metrics_by_hand_reset_and_empty():
    m = DenseRegressionMetrics()
    m.update(PRED, TARGET, VALID)  # errors 1, -0.5, -2 on targets 0, 2.5, 5
    out = m.compute()
    assert "per_bin" not in out and out["num_pixels"] == 3
    assert out["mae"] == pytest.approx(3.5 / 3)
    assert out["rmse"] == pytest.approx(math.sqrt(5.25 / 3))
    assert out["bias"] == pytest.approx(-1.5 / 3)
    assert out["r2"] == pytest.approx(1 - 5.25 / 12.5)  # SS_tot = 2.5^2 + 0 + 2.5^2
    m.reset()
    m.update(PRED, TARGET, torch.zeros_like(VALID))
    out = m.compute()
    assert out["num_pixels"] == 0 and all(math.isnan(out[k]) for k in ("mae", "rmse", "r2"))


def test_dense_metrics_errors():
    with pytest.raises(ValueError, match="strictly increasing, got \\[1.0, 1.0\\]"):
        DenseRegressionMetrics(bins=[1.0, 1.0])
    with pytest.raises(ValueError, match="at least one edge"):
        DenseRegressionMetrics(bins=[])
    m = DenseRegressionMetrics()
    with pytest.raises(ValueError, match=r"\(1, 3, 2\) does not match target shape \(1, 1, 2, 2\)"):
        m.update(torch.zeros(1, 3, 2), TARGET, VALID)
    with pytest.raises(TypeError, match="bool"):
        m.update(PRED, TARGET, VALID.float())
