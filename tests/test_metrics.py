"""Attention-map metrics: hand-computed values and the thesis's pitfalls 1, 2 and 9."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from attnkit.analysis import (
    RunningStats,
    attention_distance,
    entropy,
    gini,
    support_size,
    zeros_ratio,
)
from attnkit.analysis.metrics import nan_summary


def gini_numpy(c) -> float:
    """Hurley & Rickard's Gini, written out literally."""
    c = np.sort(np.asarray(c, dtype=np.float64))
    n = len(c)
    k = np.arange(1, n + 1)
    return float(1 - 2 * np.sum(c / c.sum() * (n - k + 0.5) / n))


def test_gini_known_values():
    assert gini(torch.full((7,), 1 / 7)).item() == pytest.approx(0.0, abs=1e-7)
    for n in (1, 2, 5, 100):
        assert gini(torch.eye(n)).tolist() == pytest.approx([1 - 1 / n] * n)
    assert gini(torch.tensor([0, 3, 0, 1]) / 4).item() == pytest.approx(0.625)
    assert gini(torch.tensor([0.0, 6.0, 0.0, 2.0])).item() == pytest.approx(0.625)  # scale free


def test_gini_matches_literal_formula_over_leading_dims():
    w = torch.rand(2, 3, 4, 9, dtype=torch.float64) ** 3
    g = gini(w)
    assert g.shape == (2, 3, 4)
    expected = np.apply_along_axis(gini_numpy, -1, w.numpy())
    np.testing.assert_allclose(g.numpy(), expected, atol=1e-12)


def test_gini_masked_equals_gini_of_valid_keys():
    torch.manual_seed(0)
    w = torch.softmax(torch.randn(5, 6, 11), -1)
    mask = torch.rand(5, 6, 11) < 0.4
    mask[0, 0] = False
    mask[0, 1] = True
    mask[0, 1, 3] = False  # one valid key -> 0
    g = gini(w, mask)
    for i in range(5):
        for j in range(6):
            valid = w[i, j][~mask[i, j]]
            if len(valid) == 0:
                assert math.isnan(g[i, j])
            else:
                assert g[i, j].item() == pytest.approx(gini_numpy(valid.numpy()), abs=1e-6)
    assert g[0, 1].item() == pytest.approx(0.0)


def test_gini_padded_keys_do_not_count():
    """Pitfall 9: zeros at padded keys would look like sparsity."""
    w = torch.tensor([0.25, 0.25, 0.25, 0.25, 0.0, 0.0, 0.0, 0.0])
    mask = torch.tensor([False] * 4 + [True] * 4)
    assert gini(w).item() == pytest.approx(0.5)
    assert gini(w, mask).item() == pytest.approx(0.0, abs=1e-7)
    mask_b = torch.tensor([[False] * 4 + [True] * 4])  # [1, K] broadcast over maps
    assert gini(w.expand(3, 8), mask_b).tolist() == pytest.approx([0.0] * 3, abs=1e-7)


def test_pitfall1_all_zero_rows_are_nan_not_averaged_in():
    sparse = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 0.5, 0.5, 0.0]])
    maps = torch.cat([sparse, torch.zeros(2, 4)])  # two all-zero (fully masked) rows
    g = gini(maps)
    assert torch.isnan(g[2:]).all()
    valid_mean = (gini_numpy([0, 1, 0, 0]) + gini_numpy([0, 0.5, 0.5, 0])) / 2  # (0.75 + 0.5) / 2
    assert nan_summary(g)["mean"] == pytest.approx(valid_mean)
    assert nan_summary(g)["count"] == 2
    # The thesis's bug: scoring all-zero rows as 0 and averaging them in halves the mean,
    # and the result drops below a dense softmax map's Gini.
    naive = torch.nan_to_num(g, nan=0.0).mean().item()
    assert naive == pytest.approx(valid_mean / 2)
    assert naive < gini(torch.softmax(torch.tensor([0.0, 3.0, 0.0, 0.0]), -1)).item()


def test_pitfall2_per_head_gini_differs_from_head_averaged():
    one_hot = torch.eye(4)  # [H=4, K=4]: head h attends only to key h
    per_head = gini(one_hot)  # [H]
    averaged = gini(one_hot.mean(0))  # uniform
    assert per_head.tolist() == pytest.approx([0.75] * 4)
    assert averaged.item() == pytest.approx(0.0, abs=1e-7)


def test_zeros_ratio():
    w = torch.tensor([[0.0, 0.5, 0.5, 0.0], [1e-7, 1e-6, 2e-6, 1 - 3.1e-6]])
    assert zeros_ratio(w).tolist() == pytest.approx([0.5, 0.0])
    assert zeros_ratio(w, threshold=1e-6).tolist() == pytest.approx([0.5, 0.5])
    mask = torch.tensor([[True, False, False, False], [False, False, False, False]])
    assert zeros_ratio(w, mask=mask).tolist() == pytest.approx([1 / 3, 0.0])
    assert math.isnan(zeros_ratio(torch.zeros(5)).item())
    assert math.isnan(zeros_ratio(w[0], mask=torch.ones(4, dtype=torch.bool)).item())
    with pytest.raises(TypeError):
        zeros_ratio(w, mask=mask.int())


def test_entropy_and_support():
    k = 13
    assert entropy(torch.full((k,), 1 / k)).item() == pytest.approx(math.log(k))
    assert entropy(torch.tensor([0.0, 1.0, 0.0])).item() == pytest.approx(0.0)
    w = torch.tensor([0.5, 0.5, 0.0, 0.0])
    assert entropy(w).item() == pytest.approx(math.log(2))
    assert math.isnan(entropy(torch.zeros(3)).item())
    assert support_size(torch.tensor([[0.0, 0.2, 0.8], [0.0, 0.0, 0.0]])).tolist() == [2, 0]
    mask = torch.tensor([False, True, False, False])
    assert support_size(w, mask=mask).item() == 1
    assert support_size(torch.tensor([1e-9, 0.3, 0.7]), threshold=1e-6).item() == 2
    assert support_size(w).dtype == torch.int64


def test_attention_distance_hand_made_grids():
    h, w = 2, 5
    k = h * w
    weights = torch.zeros(k, k)
    weights[0, 3] = 1.0  # query (0, 0) -> key (0, 3): 3 cells right
    weights[1, 1 + 5] = 1.0  # query (0, 1) -> key (1, 1): 1 cell down
    weights[2, 9] = 1.0  # query (0, 2) -> key (1, 4): sqrt(1 + 4)
    d = attention_distance(weights, (h, w))
    assert d[:3].tolist() == pytest.approx([3.0, 1.0, math.sqrt(5)])
    assert torch.isnan(d[3:]).all()  # all-zero rows
    uniform = torch.full((3, 3), 1 / 3)
    assert attention_distance(uniform, (1, 3))[1].item() == pytest.approx(2 / 3)
    assert attention_distance(uniform[None, None], (1, 3)).shape == (1, 1, 3)
    # Queries on a 1 x 2 grid scaled onto a 1 x 4 key grid: centres at key columns 0.5, 2.5.
    q = torch.zeros(2, 4)
    q[0, 0] = q[1, 3] = 1.0
    assert attention_distance(q, (1, 4), query_grid_hw=(1, 2)).tolist() == pytest.approx([0.5, 0.5])
    with pytest.raises(ValueError):
        attention_distance(torch.rand(6, 6), (2, 4))


def test_running_stats_matches_numpy():
    torch.manual_seed(1)
    stats, chunks = RunningStats(), []
    for batch in range(4):
        x = torch.rand(batch + 1, 3, 7, dtype=torch.float64)
        x[x < 0.2] = float("nan")
        stats.update("gini/dec0", x, keep_dim=1)
        stats.update("flat", x)
        chunks.append(x)
    data = torch.cat(chunks).numpy()
    per_head = np.moveaxis(data, 1, -1).reshape(-1, 3)
    r = stats.result("gini/dec0")
    assert r["mean"] == pytest.approx(np.nanmean(data))
    assert r["std"] == pytest.approx(np.nanstd(data))
    assert r["count"] == int(np.sum(~np.isnan(data)))
    assert r["per_head"] == pytest.approx(np.nanmean(per_head, 0).tolist())
    assert r["per_head_std"] == pytest.approx(np.nanstd(per_head, 0).tolist())
    flat = stats.result("flat")
    assert flat["mean"] == pytest.approx(np.nanmean(data))
    assert flat["std"] == pytest.approx(np.nanstd(data))
    assert "per_head" not in flat
    assert stats.keys() == ["gini/dec0", "flat"]


def test_running_stats_merge_empty_and_errors():
    a, b = RunningStats(), RunningStats()
    a.update("k", torch.tensor([1.0, 2.0]))
    b.update("k", torch.tensor([3.0, float("nan")]))
    b.update("only_b", torch.tensor([5.0]))
    a.merge(b)
    assert a.result("k")["mean"] == pytest.approx(2.0)
    assert a.result("k")["std"] == pytest.approx(np.std([1.0, 2.0, 3.0]))
    assert a.result("only_b")["mean"] == 5.0
    empty = RunningStats()
    empty.update("nan", torch.full((3,), float("nan")))
    assert math.isnan(empty.result("nan")["mean"]) and empty.result("nan")["count"] == 0
    with pytest.raises(ValueError):
        a.update("k", torch.rand(2, 3), keep_dim=1)
    heads = RunningStats()
    heads.update("h", torch.rand(2, 3), keep_dim=1)
    with pytest.raises(ValueError):
        heads.update("h", torch.rand(2, 4), keep_dim=1)


def test_metrics_keep_float_dtype_and_device():
    w = torch.softmax(torch.randn(2, 5), -1)
    for fn in (gini, zeros_ratio, entropy):
        assert fn(w).dtype == torch.float32
        assert fn(w.double()).dtype == torch.float64
        assert fn(w).device == w.device


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_metrics_on_cuda_match_cpu():
    w = torch.softmax(torch.randn(2, 3, 4, 30), -1)
    mask = torch.rand(2, 1, 1, 30) < 0.3
    for fn in (gini, zeros_ratio, entropy, support_size):
        torch.testing.assert_close(fn(w.cuda(), mask=mask.cuda()).cpu(), fn(w, mask=mask))
    sq = torch.softmax(torch.randn(2, 12, 12), -1)
    torch.testing.assert_close(
        attention_distance(sq.cuda(), (3, 4)).cpu(), attention_distance(sq, (3, 4))
    )
