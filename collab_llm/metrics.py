"""Ranking and classification metrics, with bootstrap confidence intervals.

Conventions: a *rank* is the 0-based position of the target in a list sorted by descending score
(rank 0 = the top). Ties are broken pessimistically: an item tied with the target counts as ranked
above it, so a constant scorer never looks good.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from scipy.stats import rankdata


def target_ranks(scores: torch.Tensor, target_index: torch.Tensor) -> torch.Tensor:
    """Rank of each row's target among its scores.

    Args:
        scores: ``(B, N)`` scores, higher is better. Entries set to ``-inf`` are excluded
            (filtered items), unless the target itself is ``-inf``.
        target_index: ``(B,)`` column of the target in ``scores``.

    Returns:
        ``(B,)`` long tensor of 0-based ranks (ties count against the target).
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be (B, N), got shape {tuple(scores.shape)}")
    nan_rows = torch.isnan(scores).any(dim=1).nonzero().flatten()
    if nan_rows.numel():
        # a NaN never compares >=, so a NaN target would silently get rank 0 (a perfect hit)
        raise ValueError(f"scores hold NaN in rows {nan_rows[:10].tolist()}; cannot rank them")
    target_scores = scores.gather(1, target_index.view(-1, 1))
    beats = (scores >= target_scores)
    beats.scatter_(1, target_index.view(-1, 1), False)
    return beats.sum(dim=1)


def _as_ranks(ranks: Sequence[int] | np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(ranks, torch.Tensor):
        ranks = ranks.detach().cpu().numpy()
    arr = np.asarray(ranks)
    if arr.ndim != 1:
        raise ValueError(f"ranks must be 1-D, got shape {arr.shape}")
    if arr.size and arr.min() < 0:
        raise ValueError("ranks are 0-based and must be >= 0")
    return arr


def hit_at_k_per_row(ranks, k: int) -> np.ndarray:
    """1.0 where the target is in the top ``k``, else 0.0."""
    return (_as_ranks(ranks) < k).astype(np.float64)


def ndcg_at_k_per_row(ranks, k: int) -> np.ndarray:
    """With one relevant item: ``1 / log2(rank + 2)`` if ``rank < k`` else 0."""
    r = _as_ranks(ranks).astype(np.float64)
    return np.where(r < k, 1.0 / np.log2(r + 2.0), 0.0)


def mrr_per_row(ranks) -> np.ndarray:
    """Reciprocal rank ``1 / (rank + 1)``."""
    return 1.0 / (_as_ranks(ranks).astype(np.float64) + 1.0)


def hit_ratio_at_k(ranks, k: int) -> float:
    return float(hit_at_k_per_row(ranks, k).mean())


def ndcg_at_k(ranks, k: int) -> float:
    return float(ndcg_at_k_per_row(ranks, k).mean())


def mrr(ranks) -> float:
    return float(mrr_per_row(ranks).mean())


def auc(labels, scores) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties).

    Raises:
        ValueError: if ``labels`` holds only one class or labels/scores differ in length.
    """
    y = np.asarray(labels).astype(np.int64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels ({y.shape[0]}) and scores ({s.shape[0]}) differ in length")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUC needs both classes; got {n_pos} positives and {n_neg} negatives")
    r = rankdata(s)
    return float((r[y == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def uauc(users, labels, scores) -> tuple[float, int]:
    """Mean of per-user AUC over users whose rows contain both classes.

    Returns:
        ``(value, n_users_counted)``; users with a single class are dropped (as CoLLM does).
    """
    u = np.asarray(users).ravel()
    y = np.asarray(labels).astype(np.int64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if not (u.shape == y.shape == s.shape):
        raise ValueError("users, labels and scores must have the same length")
    order = np.argsort(u, kind="stable")
    u, y, s = u[order], y[order], s[order]
    bounds = np.flatnonzero(np.diff(u)) + 1
    values = []
    for yy, ss in zip(np.split(y, bounds), np.split(s, bounds)):
        if 0 < yy.sum() < yy.size:
            values.append(auc(yy, ss))
    if not values:
        return float("nan"), 0
    return float(np.mean(values)), len(values)


@dataclass(frozen=True)
class Estimate:
    """A metric value with its 95% bootstrap interval over test rows."""

    value: float
    ci_low: float
    ci_high: float
    n: int

    def __str__(self) -> str:
        return f"{self.value:.4f} [{self.ci_low:.4f}, {self.ci_high:.4f}]"


def bootstrap(
    statistic: Callable[[np.ndarray], float],
    n_rows: int,
    n_resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(indices)`` over rows resampled with replacement.

    ``statistic`` receives an index array into the test rows. Resamples on which the statistic is
    undefined (returns nan, e.g. AUC with one class) are skipped.
    """
    if n_rows <= 0:
        raise ValueError("bootstrap needs at least one row")
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(n_resamples):
        idx = rng.integers(0, n_rows, size=n_rows)
        try:
            v = statistic(idx)
        except ValueError:
            continue
        if not np.isnan(v):
            stats.append(v)
    if not stats:
        return float("nan"), float("nan")
    lo, hi = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def mean_estimate(per_row: np.ndarray, n_resamples: int = 1000, seed: int = 0) -> Estimate:
    """Mean of per-row values (hits, NDCG terms, ...) with its bootstrap interval."""
    v = np.asarray(per_row, dtype=np.float64)
    lo, hi = bootstrap(lambda idx: float(v[idx].mean()), v.size, n_resamples, seed)
    return Estimate(float(v.mean()), lo, hi, int(v.size))


def auc_estimate(labels, scores, n_resamples: int = 1000, seed: int = 0) -> Estimate:
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    lo, hi = bootstrap(lambda idx: auc(y[idx], s[idx]), y.size, n_resamples, seed)
    return Estimate(auc(y, s), lo, hi, int(y.size))


def uauc_estimate(users, labels, scores, n_resamples: int = 1000, seed: int = 0) -> tuple[Estimate, int]:
    """UAUC with a bootstrap over *users* (rows of one user stay together). Returns (estimate, n_users)."""
    u = np.asarray(users)
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    value, n_users = uauc(u, y, s)
    uniq, inverse = np.unique(u, return_inverse=True)
    per_user = []
    for k in range(uniq.size):
        m = inverse == k
        if 0 < y[m].sum() < m.sum():
            per_user.append(auc(y[m], s[m]))
    pu = np.asarray(per_user)
    if pu.size == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0), 0
    lo, hi = bootstrap(lambda idx: float(pu[idx].mean()), pu.size, n_resamples, seed)
    return Estimate(value, lo, hi, int(y.size)), n_users
