"""Sparsity and locality metrics of attention maps, and a streaming summary of them.

An *attention map* is one query's weights over its K keys: the last dim of a tensor
``[..., K]``. Every metric here is computed per map, vectorised over all leading dims, on the
tensor's device, with float64 accumulation; it returns one value per map (``[...]``).

Two rules of the source thesis are built in (DESIGN.md, pitfalls 1, 2 and 9):

- An *empty* map (all-zero weights, e.g. a fully masked row, or no valid key at all) has no
  sparsity: the sparsity metrics return NaN for it, so that a summary drops it
  (:class:`RunningStats` and :func:`nan_summary` ignore NaN) instead of averaging in a 0.
- Padded keys are not keys: pass ``mask`` (``[..., K]`` bool, True = key excluded) and the
  metric is computed over the valid keys only, as if the map had been cropped to them.

Score each head's maps separately and summarise afterwards; averaging heads first measures a
different (denser) map.
"""

from __future__ import annotations

import math
from collections.abc import Hashable

import torch

__all__ = [
    "RunningStats",
    "attention_distance",
    "entropy",
    "gini",
    "nan_summary",
    "support_size",
    "zeros_ratio",
]


def _out_dtype(w: torch.Tensor) -> torch.dtype:
    """The dtype of a metric's result: the input's float dtype, at least float32."""
    if not w.is_floating_point():
        return torch.float32
    return torch.promote_types(w.dtype, torch.float32)


def _valid_counts(w: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Number of valid keys per map, as float64 ``[...]``."""
    if mask is None:
        return torch.full(w.shape[:-1], float(w.shape[-1]), dtype=torch.float64, device=w.device)
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor (True = key excluded), got {mask.dtype}")
    return (~mask).sum(-1, dtype=torch.float64).expand(w.shape[:-1])


def _masked(w: torch.Tensor, mask: torch.Tensor | None, fill: float = 0.0) -> torch.Tensor:
    """``w`` with the excluded keys set to ``fill`` (broadcasting ``mask`` to ``w``)."""
    return w if mask is None else w.masked_fill(mask, fill)


def _mass(w: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Total weight of the valid keys per map, float64 ``[...]``."""
    return _masked(w, mask).sum(-1, dtype=torch.float64)


def gini(w: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Gini index of each attention map (Hurley & Rickard 2009), ``[..., K] -> [...]``.

    With the N valid weights sorted ascending, c(1) <= ... <= c(N):
    G = 1 - 2 * sum_k (c(k) / ||c||_1) * (N - k + 1/2) / N.
    It is 0 for a uniform map and 1 - 1/N for a one-hot map, is scale invariant, and (unlike
    the zeros ratio) also grades dense maps. Weights must be non-negative.

    Args:
        w: attention weights ``[..., K]``.
        mask: optional bool ``[..., K]`` (broadcastable), True at keys to exclude (padding);
            the index is then that of the map cropped to its valid keys (N = valid keys).

    Returns:
        ``[...]``; NaN for an empty map (all-zero weights or no valid key), never 0, so that a
        summary can drop it (pitfall 1).
    """
    k = w.shape[-1]
    n = _valid_counts(w, mask)  # [...]
    # Excluded keys sort first; a valid key at sorted position p (0-based) is then the
    # (p - (K - N) + 1)-th smallest valid weight, so N - k + 1/2 = K - p - 1/2 whatever N is.
    s = torch.sort(_masked(w, mask, float("-inf")), dim=-1).values  # [..., K]
    pos = torch.arange(k, device=w.device, dtype=torch.float64)  # [K]
    if mask is not None:
        s = torch.where(pos >= (k - n).unsqueeze(-1), s, 0.0)
    s = s.to(torch.float64)
    weighted = (s * (k - pos - 0.5)).sum(-1)  # [...]
    total = s.sum(-1)  # [...]
    g = 1.0 - 2.0 * weighted / (total * n)
    g = torch.where((total > 0) & (n > 0), g, torch.full_like(g, math.nan))
    return g.to(_out_dtype(w))


def zeros_ratio(
    w: torch.Tensor, threshold: float | None = None, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Fraction of the valid keys of each map whose weight is zero, ``[..., K] -> [...]``.

    Args:
        w: attention weights ``[..., K]``.
        threshold: None counts exact zeros (sparse normalizers); a number counts weights
            ``<= threshold`` (the thesis used 1e-6 for softmax, which is never exactly 0).
        mask: optional bool ``[..., K]``, True at keys to exclude (padding).

    Returns:
        ``[...]``; NaN for an empty map (all-zero weights or no valid key): an all-zero row is
        not a sparse attention distribution and would inflate the ratio (pitfall 1).
    """
    n = _valid_counts(w, mask)
    zero = w == 0 if threshold is None else w <= threshold  # [..., K]
    if mask is not None:
        zero = zero & ~mask
    r = zero.sum(-1, dtype=torch.float64) / n  # [...]
    r = torch.where(_mass(w, mask) > 0, r, torch.full_like(r, math.nan))
    return r.to(_out_dtype(w))


def entropy(w: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Shannon entropy of each map in nats, with 0 log 0 = 0, ``[..., K] -> [...]``.

    The weights are taken as they are (a map normalised over its valid keys sums to 1); the
    entropy of a uniform map over K keys is log K. NaN for an empty map.
    """
    x = _masked(w, mask).to(torch.float64)
    h = -torch.special.xlogy(x, x).sum(-1)  # [...]
    h = torch.where(x.sum(-1) > 0, h, torch.full_like(h, math.nan))
    return h.to(_out_dtype(w))


def support_size(
    w: torch.Tensor, mask: torch.Tensor | None = None, threshold: float | None = None
) -> torch.Tensor:
    """Number of valid keys with a nonzero weight (``> threshold`` if given) per map, int64.

    A count is well defined for every map: an empty map has support 0 (filter on it).
    """
    nonzero = w != 0 if threshold is None else w > threshold  # [..., K]
    if mask is not None:
        nonzero = nonzero & ~mask
    return nonzero.sum(-1)


def _grid_positions(
    hw: tuple[int, int], onto: tuple[int, int], device: torch.device
) -> torch.Tensor:
    """Row-major cell centres of grid ``hw`` in the cell coordinates of grid ``onto``, ``[h*w, 2]``."""
    (h, w), (ho, wo) = hw, onto
    rows = (torch.arange(h, device=device, dtype=torch.float64) + 0.5) * (ho / h) - 0.5  # [h]
    cols = (torch.arange(w, device=device, dtype=torch.float64) + 0.5) * (wo / w) - 0.5  # [w]
    return torch.stack(torch.meshgrid(rows, cols, indexing="ij"), -1).reshape(h * w, 2)


def attention_distance(
    w: torch.Tensor,
    grid_hw: tuple[int, int],
    query_grid_hw: tuple[int, int] | None = None,
    cell_size: tuple[float, float] = (1.0, 1.0),
) -> torch.Tensor:
    """Attention-weighted mean distance (key-grid cells, or pixels) from each query to its keys.

    Args:
        w: self-attention weights ``[..., Q, K]`` with the K keys a row-major ``grid_hw`` grid
            (non-square allowed).
        grid_hw: ``(h, w)`` of the key grid, h * w = K.
        query_grid_hw: ``(hq, wq)`` of the query grid when Q != K; query cell centres are scaled
            onto the key grid. Default: the queries are the keys (Q = K).
        cell_size: ``(height, width)`` of one key-grid cell in pixels (a ViT's patch size, a
            backbone's stride): distances are then in pixels. Default: in cells.

    Returns:
        ``[..., Q]``: sum_k w_qk * ||pos(q) - pos(k)|| / sum_k w_qk (Euclidean); NaN for an
        all-zero row.
    """
    h, wd = grid_hw
    q, k = w.shape[-2:]
    if h * wd != k:
        raise ValueError(f"grid {grid_hw} has {h * wd} cells but the maps have K = {k} keys")
    qhw = grid_hw if query_grid_hw is None else tuple(query_grid_hw)
    if qhw[0] * qhw[1] != q:
        raise ValueError(f"query grid {qhw} has {qhw[0] * qhw[1]} cells but Q = {q}")
    keys = _grid_positions((h, wd), (h, wd), w.device)  # [K, 2]
    queries = _grid_positions(qhw, (h, wd), w.device)  # [Q, 2]
    scale = torch.tensor(cell_size, dtype=torch.float64, device=w.device)  # [2]
    dist = torch.cdist(queries * scale, keys * scale)  # [Q, K]
    x = w.to(torch.float64)
    num = torch.einsum("...qk,qk->...q", x, dist)  # [..., Q]
    mass = x.sum(-1)  # [..., Q]
    d = torch.where(mass > 0, num / mass, torch.full_like(num, math.nan))
    return d.to(_out_dtype(w))


class RunningStats:
    """Streaming mean and standard deviation of metric values, per key, NaN ignored.

    An eval pass scores each batch's maps and calls :meth:`update`; only counts, means and
    sums of squared deviations (float64, merged with Chan et al.'s parallel update) are kept,
    never the maps or the values. With ``keep_dim`` the statistics are kept separately along
    one dim (e.g. the head dim of per-map values ``[B, H, Q]``), and :meth:`result` also gives
    them per entry (``"per_head"``), while ``"mean"``/``"std"`` pool all entries.

    Example::

        stats = RunningStats()
        for batch in loader:
            ...
            stats.update(("gini", name), gini(maps), keep_dim=1)  # maps [B, H, Q, K]
        summary = stats.results()  # {("gini", name): {"mean", "std", "count", "per_head", ...}}
    """

    def __init__(self) -> None:
        self._state: dict[Hashable, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self._kept: dict[Hashable, bool] = {}

    def __contains__(self, key: Hashable) -> bool:
        return key in self._state

    def keys(self) -> list[Hashable]:
        """The keys seen so far, in first-update order."""
        return list(self._state)

    @staticmethod
    def _batch(values: torch.Tensor, keep_dim: int | None):
        """Count, mean and M2 of the non-NaN values, ``[]`` or ``[values.shape[keep_dim]]``."""
        x = torch.as_tensor(values).detach().to(torch.float64)
        x = (
            x.reshape(-1, 1)
            if keep_dim is None
            else x.movedim(keep_dim, -1).reshape(-1, x.shape[keep_dim])
        )
        ok = ~torch.isnan(x)  # [M, D]
        n = ok.sum(0, dtype=torch.float64)  # [D]
        x0 = torch.where(ok, x, 0.0)
        mean = x0.sum(0) / n.clamp_min(1)  # [D]
        m2 = torch.where(ok, (x - mean) ** 2, 0.0).sum(0)  # [D]
        if keep_dim is None:
            n, mean, m2 = n[0], mean[0], m2[0]
        return n.cpu(), mean.cpu(), m2.cpu()

    def update(self, key: Hashable, values: torch.Tensor, keep_dim: int | None = None) -> None:
        """Add ``values`` (any shape, NaN ignored) to the statistics of ``key``.

        ``keep_dim`` keeps separate statistics along that dim (same size at every update of
        the key); all other dims are pooled.
        """
        nb, mb, m2b = self._batch(values, keep_dim)
        if key not in self._state:
            self._state[key] = (nb, mb, m2b)
            self._kept[key] = keep_dim is not None
            return
        if self._kept[key] != (keep_dim is not None):
            raise ValueError(f"key {key!r}: keep_dim given at some updates and not at others")
        self._state[key] = self._merge(self._state[key], (nb, mb, m2b), key)

    @staticmethod
    def _merge(a, b, key):
        """Chan et al.'s combination of two (count, mean, M2) triples."""
        (na, ma, m2a), (nb, mb, m2b) = a, b
        if na.shape != nb.shape:
            raise ValueError(f"key {key!r}: kept dim of size {nb.shape} after {na.shape}")
        n = na + nb
        delta = mb - ma
        frac = nb / n.clamp_min(1)
        mean = ma + delta * frac
        m2 = m2a + m2b + delta**2 * na * frac
        return n, mean, m2

    def merge(self, other: RunningStats) -> RunningStats:
        """Fold ``other``'s statistics (e.g. another process's) into this one; returns self."""
        for key, state in other._state.items():
            if key in self._state:
                if self._kept[key] != other._kept[key]:
                    raise ValueError(f"key {key!r}: kept dim on one side only")
                self._state[key] = self._merge(self._state[key], state, key)
            else:
                self._state[key] = tuple(t.clone() for t in state)
                self._kept[key] = other._kept[key]
        return self

    def result(self, key: Hashable) -> dict:
        """``{"mean", "std", "count"}`` of ``key`` (population std; NaN when count is 0).

        With a kept dim also ``"per_head"`` (means), ``"per_head_std"`` and ``"per_head_count"``,
        one entry per index of the kept dim; ``"mean"``/``"std"`` then pool all of them.
        """
        n, mean, m2 = self._state[key]
        out = {}
        if self._kept[key]:
            out = {
                "per_head": _floats(torch.where(n > 0, mean, math.nan)),
                "per_head_std": _floats(torch.where(n > 0, (m2 / n.clamp_min(1)).sqrt(), math.nan)),
                "per_head_count": [int(c) for c in n.tolist()],
            }
            ok = n > 0
            total = n.sum()
            pooled_mean = (n * torch.where(ok, mean, 0.0)).sum() / total.clamp_min(1)
            spread = torch.where(ok, n * (mean - pooled_mean) ** 2, 0.0).sum()
            n, mean, m2 = total, pooled_mean, m2.sum() + spread
        count = int(n)
        head = {
            "mean": float(mean) if count else math.nan,
            "std": math.sqrt(float(m2) / count) if count else math.nan,
            "count": count,
        }
        return {**head, **out}

    def results(self) -> dict:
        """:meth:`result` of every key."""
        return {key: self.result(key) for key in self._state}


def _floats(t: torch.Tensor) -> list[float]:
    return [float(v) for v in t.tolist()]


def nan_summary(values: torch.Tensor, keep_dim: int | None = None) -> dict:
    """Mean and std of ``values`` ignoring NaN, as :meth:`RunningStats.result` gives them."""
    stats = RunningStats()
    stats.update(None, values, keep_dim)
    return stats.result(None)
