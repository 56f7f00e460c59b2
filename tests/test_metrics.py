"""Golden values for collab_llm.metrics, every number worked out by hand in the comments."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from collab_llm import metrics

torch.set_num_threads(1)
INF = float("inf")


def test_target_ranks_counts_ties_against_the_target():
    scores = torch.tensor([[0.5, 0.9, 0.5, 0.1]] * 3)
    # target 0 (0.5): beaten by 0.9 and tied with col 2 -> rank 2; target 1 (0.9) -> 0; target 3 (0.1) -> 3
    ranks = metrics.target_ranks(scores, torch.tensor([0, 1, 3]))
    assert ranks.tolist() == [2, 0, 3]


def test_target_ranks_skips_minus_inf_unless_target_is_minus_inf():
    scores = torch.tensor([[-INF, 0.2, 0.3], [-INF, -INF, 1.0]])
    # row 0, target col 1: only col 2 beats it, col 0 is filtered -> 1
    # row 1, target col 0 (-inf): col 1 ties (-inf >= -inf), col 2 beats -> 2
    assert metrics.target_ranks(scores, torch.tensor([1, 0])).tolist() == [1, 2]


def test_target_ranks_refuses_nan_scores():
    # without the check a NaN target would beat nothing and get rank 0
    with pytest.raises(ValueError, match="NaN in rows \\[1\\]"):
        metrics.target_ranks(torch.tensor([[0.1, 0.2], [float("nan"), 0.3]]), torch.tensor([0, 0]))


def test_hit_ndcg_mrr_golden():
    ranks = [0, 1, 3, 10]
    assert metrics.hit_ratio_at_k(ranks, 1) == pytest.approx(0.25)
    assert metrics.hit_ratio_at_k(ranks, 5) == pytest.approx(0.75)
    assert metrics.hit_ratio_at_k(ranks, 11) == pytest.approx(1.0)
    # NDCG@5 = (1/log2(2) + 1/log2(3) + 1/log2(5) + 0) / 4 = (1 + 0.63092975 + 0.43067656) / 4
    assert metrics.ndcg_at_k(ranks, 5) == pytest.approx((1 + 0.6309297535714575 + 0.43067655807339306) / 4)
    # rank 3 is outside the top 3 -> only ranks 0 and 1 count
    assert metrics.ndcg_at_k(ranks, 3) == pytest.approx((1 + 0.6309297535714575) / 4)
    # MRR = (1 + 1/2 + 1/4 + 1/11) / 4
    assert metrics.mrr(ranks) == pytest.approx((1 + 0.5 + 0.25 + 1 / 11) / 4)


def test_negative_rank_is_rejected():
    with pytest.raises(ValueError, match="0-based"):
        metrics.hit_ratio_at_k([0, -1], 1)


def test_auc_with_ties_golden():
    # pairs (pos, neg): (0.8, 0.8) tie -> 0.5, (0.8, 0.1) -> 1, (0.3, 0.8) -> 0, (0.3, 0.1) -> 1  => 2.5 / 4
    assert metrics.auc([1, 0, 1, 0], [0.8, 0.8, 0.3, 0.1]) == pytest.approx(0.625)
    # a constant scorer is exactly 0.5
    assert metrics.auc([1, 0, 0, 1, 0], [3.0] * 5) == pytest.approx(0.5)


def test_auc_needs_both_classes():
    with pytest.raises(ValueError, match="both classes"):
        metrics.auc([1, 1], [0.1, 0.2])


def test_uauc_drops_single_class_users_golden():
    users = [1, 1, 1, 2, 2, 3, 3]
    labels = [1, 0, 0, 1, 1, 0, 1]
    scores = [0.9, 0.1, 0.95, 0.3, 0.2, 0.4, 0.6]
    # user 1: pos 0.9 vs negs (0.1 -> 1, 0.95 -> 0) = 0.5; user 2: one class, dropped; user 3: 1.0
    value, n_users = metrics.uauc(users, labels, scores)
    assert n_users == 2
    assert value == pytest.approx(0.75)
    # row order does not matter
    perm = [6, 2, 4, 0, 5, 3, 1]
    value2, n2 = metrics.uauc(np.array(users)[perm], np.array(labels)[perm], np.array(scores)[perm])
    assert (value2, n2) == (pytest.approx(0.75), 2)


def test_bootstrap_ci_brackets_value_and_is_reproducible():
    per_row = np.array([0, 1, 0, 1, 1, 0, 1, 1], dtype=float)
    a = metrics.mean_estimate(per_row, n_resamples=300, seed=7)
    b = metrics.mean_estimate(per_row, n_resamples=300, seed=7)
    c = metrics.mean_estimate(per_row, n_resamples=300, seed=8)
    assert a.value == pytest.approx(0.625)
    assert a.ci_low <= a.value <= a.ci_high
    assert a.ci_low < a.ci_high
    assert (a.ci_low, a.ci_high) == (b.ci_low, b.ci_high)
    assert (a.ci_low, a.ci_high) != (c.ci_low, c.ci_high)
    # resampled means of 0/1 values are multiples of 1/8
    assert a.ci_low * 8 == pytest.approx(round(a.ci_low * 8))


def test_bootstrap_of_constant_rows_is_a_point():
    lo, hi = metrics.bootstrap(lambda idx: float(np.full(5, 0.3)[idx].mean()), 5, n_resamples=50, seed=0)
    assert lo == pytest.approx(0.3) and hi == pytest.approx(0.3)


def test_auc_estimate_brackets_value():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    scores = labels + rng.normal(0, 1.0, 200)
    est = metrics.auc_estimate(labels, scores, n_resamples=200, seed=0)
    assert est.ci_low <= est.value <= est.ci_high
    assert est.value == pytest.approx(metrics.auc(labels, scores))
    assert not math.isnan(est.ci_low)
