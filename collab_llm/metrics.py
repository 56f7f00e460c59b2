"""Ranking and classification metrics, with bootstrap confidence intervals.

Conventions: a *rank* is the 0-based position of the target in a list sorted by descending score
(rank 0 = the top). Ties are broken pessimistically: an item tied with the target counts as ranked
above it, so a constant scorer never looks good.

Intervals are 95% percentile bootstraps. The resampling unit is a test row, or a *cluster* of rows
(``clusters=``, e.g. the user of each row) when rows are not independent: a drawn cluster brings all
its rows along. Yes/No AUC is bootstrapped over users (a user's test rows share that user's
tastes and history, so a row bootstrap would give too narrow intervals). A comparison of two methods
on the same rows uses :func:`paired_difference`: one resample of rows (or users) serves both
methods, so the interval is that of the *difference*, not of each method alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

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


def bootstrap_indices(
    n_rows: int, n_resamples: int = 1000, seed: int = 0, clusters: Sequence | np.ndarray | None = None
) -> Iterator[np.ndarray]:
    """Index arrays of ``n_resamples`` bootstrap resamples of ``n_rows`` rows, from one seeded generator.

    Args:
        n_rows: number of rows ``N``.
        n_resamples: number of resamples ``R``.
        seed: seed of the one ``numpy`` generator all resamples are drawn from.
        clusters: ``None`` (resample rows: each yield is ``(N,)`` draws with replacement), or ``(N,)``
            cluster labels (e.g. the user of each row): each resample draws ``G`` clusters with
            replacement out of the ``G`` distinct labels and yields the indices of all their rows
            (length varies). Clusters are numbered in order of first appearance, so with one row per
            cluster the resamples are exactly the row resamples of the same seed.

    Yields:
        ``R`` integer index arrays into the rows.
    """
    if n_rows <= 0:
        raise ValueError("bootstrap needs at least one row")
    rng = np.random.default_rng(seed)
    if clusters is None:
        for _ in range(n_resamples):
            yield rng.integers(0, n_rows, size=n_rows)
        return
    c = np.asarray(clusters).ravel()
    if c.size != n_rows:
        raise ValueError(f"clusters has {c.size} labels for {n_rows} rows")
    _, first, inverse = np.unique(c, return_index=True, return_inverse=True)
    rank = np.empty(first.size, dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(first.size)
    group = rank[inverse.ravel()]  # cluster number of each row, numbered by first appearance
    order = np.argsort(group, kind="stable")  # rows grouped by cluster, table order inside a cluster
    counts = np.bincount(group, minlength=first.size)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    n_groups = first.size
    for _ in range(n_resamples):
        drawn = rng.integers(0, n_groups, size=n_groups)
        lens = counts[drawn]
        # position inside the concatenation -> position in ``order``: start of its cluster + offset
        offsets = np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens)
        yield order[np.repeat(starts[drawn], lens) + offsets]


def _percentiles(stats: list[float], alpha: float) -> tuple[float, float]:
    if not stats:
        return float("nan"), float("nan")
    lo, hi = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def _defined(statistic: Callable[[np.ndarray], float], idx: np.ndarray) -> float:
    """``statistic(idx)``, or nan where it is undefined (raises ``ValueError`` or returns nan)."""
    try:
        return float(statistic(idx))
    except ValueError:
        return float("nan")


def bootstrap(
    statistic: Callable[[np.ndarray], float],
    n_rows: int,
    n_resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    clusters: Sequence | np.ndarray | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(indices)`` over rows resampled with replacement.

    ``statistic`` receives an index array into the test rows. Resamples on which the statistic is
    undefined (returns nan, e.g. AUC with one class) are skipped. With ``clusters`` (``(n_rows,)``
    labels, e.g. users) whole clusters are resampled instead of rows (:func:`bootstrap_indices`).
    """
    stats = []
    for idx in bootstrap_indices(n_rows, n_resamples, seed, clusters):
        v = _defined(statistic, idx)
        if not np.isnan(v):
            stats.append(v)
    return _percentiles(stats, alpha)


def mean_estimate(per_row: np.ndarray, n_resamples: int = 1000, seed: int = 0) -> Estimate:
    """Mean of per-row values (hits, NDCG terms, ...) with its bootstrap interval."""
    v = np.asarray(per_row, dtype=np.float64)
    lo, hi = bootstrap(lambda idx: float(v[idx].mean()), v.size, n_resamples, seed)
    return Estimate(float(v.mean()), lo, hi, int(v.size))


def auc_estimate(
    labels, scores, n_resamples: int = 1000, seed: int = 0, users: Sequence | np.ndarray | None = None
) -> Estimate:
    """AUC with its 95% bootstrap interval.

    Args:
        labels: ``(N,)`` 0/1 labels.
        scores: ``(N,)`` scores, higher = more likely positive.
        users: ``(N,)`` user of each row, or ``None``. Given, the bootstrap resamples *users* (all
            rows of a drawn user come along), which is what the Yes/No report uses: one user's test
            rows are correlated. ``None`` resamples rows.
    """
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    lo, hi = bootstrap(lambda idx: auc(y[idx], s[idx]), y.size, n_resamples, seed, clusters=users)
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


Statistic = Callable[[np.ndarray], float]


def paired_difference(
    a: Statistic | Sequence[float] | np.ndarray,
    b: Statistic | Sequence[float] | np.ndarray,
    n_rows: int | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    clusters: Sequence | np.ndarray | None = None,
) -> Estimate:
    """Difference ``metric(a) - metric(b)`` of two methods scored on the SAME rows, with a paired interval.

    Each resample draws one index array (rows, or whole clusters with ``clusters``) from one seeded
    generator and evaluates *both* methods on it, so the interval is the percentile interval of the
    resampled differences: row-to-row variation common to both methods cancels out.

    Args:
        a, b: each either a ``(N,)`` array of per-row values aligned by row (e.g. HR@1 hits or NDCG@10
            terms; the metric is their mean), or a statistic ``f(idx) -> float`` of an index array
            ``idx`` into the ``N`` rows (e.g. ``lambda idx: auc(labels[idx], scores_a[idx])``).
        n_rows: ``N``; needed when both ``a`` and ``b`` are statistics, else checked against the arrays.
        n_resamples: bootstrap resamples ``R``.
        seed: seed of the one generator (:func:`bootstrap_indices`).
        alpha: ``0.05`` gives the 95% interval.
        clusters: ``(N,)`` cluster labels (e.g. users) to resample clusters instead of rows, or ``None``.

    Returns:
        :class:`Estimate` with ``value = metric(a) - metric(b)`` on all rows, the interval of the
        resampled differences (resamples where either metric is undefined are skipped) and ``n = N``.
        Two identical methods give exactly 0 with a zero-width interval.
    """
    sizes = {np.asarray(x).size for x in (a, b) if not callable(x)}
    if n_rows is not None:
        sizes.add(int(n_rows))
    if len(sizes) != 1:
        raise ValueError(f"paired_difference needs both methods on the same rows; got sizes {sorted(sizes)}"
                         if sizes else "paired_difference needs n_rows when both methods are statistics")
    n = sizes.pop()

    def as_statistic(x: Statistic | Sequence[float] | np.ndarray) -> Statistic:
        if callable(x):
            return x
        v = np.asarray(x, dtype=np.float64).ravel()
        return lambda idx: float(v[idx].mean())

    fa, fb = as_statistic(a), as_statistic(b)
    everything = np.arange(n)
    value = _defined(fa, everything) - _defined(fb, everything)
    diffs = []
    for idx in bootstrap_indices(n, n_resamples, seed, clusters):
        d = _defined(fa, idx) - _defined(fb, idx)
        if not np.isnan(d):
            diffs.append(d)
    lo, hi = _percentiles(diffs, alpha)
    return Estimate(float(value), lo, hi, int(n))


def paired_auc_difference(
    labels, scores_a, scores_b, users: Sequence | np.ndarray | None = None, n_resamples: int = 1000,
    seed: int = 0, alpha: float = 0.05,
) -> Estimate:
    """``AUC(scores_a) - AUC(scores_b)`` on the same ``(N,)`` labelled rows, paired bootstrap interval.

    Args:
        labels: ``(N,)`` 0/1 labels (shared by both methods).
        scores_a, scores_b: ``(N,)`` scores of the two methods, aligned by row.
        users: ``(N,)`` user of each row: resample users (all rows of a drawn user), as the Yes/No
            report does; ``None`` resamples rows.
    """
    y = np.asarray(labels).astype(np.int64).ravel()
    sa = np.asarray(scores_a, dtype=np.float64).ravel()
    sb = np.asarray(scores_b, dtype=np.float64).ravel()
    if not (y.shape == sa.shape == sb.shape):
        raise ValueError(f"labels {y.shape}, scores_a {sa.shape} and scores_b {sb.shape} must have the same length")
    return paired_difference(lambda idx: auc(y[idx], sa[idx]), lambda idx: auc(y[idx], sb[idx]), n_rows=y.size,
                             n_resamples=n_resamples, seed=seed, alpha=alpha, clusters=users)
