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


# ------------------------------------------------------------------ clustered and paired bootstrap
def test_paired_difference_of_identical_methods_is_exactly_zero():
    rng = np.random.default_rng(1)
    hits = rng.integers(0, 2, 50).astype(float)
    est = metrics.paired_difference(hits, hits.copy(), n_resamples=200, seed=3)
    assert (est.value, est.ci_low, est.ci_high, est.n) == (0.0, 0.0, 0.0, 50)
    labels, scores = rng.integers(0, 2, 40), rng.normal(size=40)
    users = np.repeat(np.arange(10), 4)
    auc_diff = metrics.paired_auc_difference(labels, scores, scores.copy(), users=users, n_resamples=200, seed=3)
    assert (auc_diff.value, auc_diff.ci_low, auc_diff.ci_high) == (0.0, 0.0, 0.0)


def test_paired_difference_golden_and_paired_resamples():
    # a hits rows 0-3, b hits rows 0-1: difference = 4/8 - 2/8 = 0.25
    a = np.array([1, 1, 1, 1, 0, 0, 0, 0], dtype=float)
    b = np.array([1, 1, 0, 0, 0, 0, 0, 0], dtype=float)
    est = metrics.paired_difference(a, b, n_resamples=500, seed=0)
    assert est.value == pytest.approx(0.25)
    # per row a - b is 0 or 1 and never negative: every resampled difference is >= 0 (an unpaired
    # bootstrap, drawing a's and b's rows separately, would give negative differences too)
    assert 0.0 <= est.ci_low <= est.value <= est.ci_high <= 1.0
    # the same resamples for both: the paired difference equals the bootstrap of the per-row differences
    lo, hi = metrics.bootstrap(lambda idx: float((a - b)[idx].mean()), 8, n_resamples=500, seed=0)
    assert (est.ci_low, est.ci_high) == (pytest.approx(lo), pytest.approx(hi))
    # a statistic of the index array gives the same as its per-row values
    by_fn = metrics.paired_difference(lambda idx: float(a[idx].mean()), b, n_resamples=500, seed=0)
    assert (by_fn.value, by_fn.ci_low, by_fn.ci_high) == (est.value, est.ci_low, est.ci_high)
    with pytest.raises(ValueError, match="same rows"):
        metrics.paired_difference(a, b[:5])
    with pytest.raises(ValueError, match="n_rows"):
        metrics.paired_difference(lambda idx: 0.0, lambda idx: 0.0)


def test_paired_auc_difference_golden():
    labels = [1, 0, 1, 0]
    # a: both positives above both negatives -> 1.0; b = test_auc_with_ties_golden's scores -> 0.625
    est = metrics.paired_auc_difference(labels, [0.9, 0.2, 0.8, 0.1], [0.8, 0.8, 0.3, 0.1], n_resamples=300, seed=0)
    assert est.value == pytest.approx(0.375)
    assert est.n == 4
    assert est.ci_low <= est.value <= est.ci_high


def test_cluster_bootstrap_with_one_row_per_user_is_the_row_bootstrap():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 60)
    scores = labels + rng.normal(0, 1.0, 60)
    users = rng.permutation(1000)[:60]  # one row per user, users in no particular order
    rows = metrics.auc_estimate(labels, scores, n_resamples=200, seed=4)
    clustered = metrics.auc_estimate(labels, scores, n_resamples=200, seed=4, users=users)
    assert (clustered.ci_low, clustered.ci_high) == (rows.ci_low, rows.ci_high)
    for a, b in zip(metrics.bootstrap_indices(60, 5, 9), metrics.bootstrap_indices(60, 5, 9, clusters=users)):
        assert a.tolist() == b.tolist()


def test_cluster_bootstrap_keeps_a_users_rows_together():
    users = np.array([5, 5, 2, 9, 2, 5])
    groups = {5: {0, 1, 5}, 2: {2, 4}, 9: {3}}
    for idx in metrics.bootstrap_indices(6, 50, 0, clusters=users):
        drawn = users[idx]
        for u in set(drawn.tolist()):
            # a drawn user brings all its rows, each as often as the user was drawn
            rows = idx[drawn == u]
            times = len(rows) // len(groups[u])
            assert sorted(rows.tolist()) == sorted(list(groups[u]) * times)
        assert sum(len(idx[users[idx] == u]) // len(groups[u]) for u in groups) == 3  # 3 users drawn


def test_clustered_auc_interval_is_wider_when_a_users_rows_are_copies():
    # 20 users, each with 10 identical rows: only 20 independent observations, not 200
    rng = np.random.default_rng(0)
    labels1 = rng.integers(0, 2, 20)
    scores1 = labels1 + rng.normal(0, 1.5, 20)
    labels, scores, users = np.repeat(labels1, 10), np.repeat(scores1, 10), np.repeat(np.arange(20), 10)
    rows = metrics.auc_estimate(labels, scores, n_resamples=300, seed=0)
    clustered = metrics.auc_estimate(labels, scores, n_resamples=300, seed=0, users=users)
    assert clustered.value == rows.value
    assert clustered.ci_high - clustered.ci_low > 2 * (rows.ci_high - rows.ci_low)
    # the clustered interval is the one of the 20 distinct rows (resampled the same way)
    distinct = metrics.auc_estimate(labels1, scores1, n_resamples=300, seed=0)
    assert (clustered.ci_low, clustered.ci_high) == (pytest.approx(distinct.ci_low), pytest.approx(distinct.ci_high))


def test_yes_no_auc_interval_is_clustered_by_user():
    from collab_llm.scoring import yes_no_metrics

    rng = np.random.default_rng(2)
    labels1 = rng.integers(0, 2, 20)
    scores1 = labels1 + rng.normal(0, 1.5, 20)
    labels, scores, users = np.repeat(labels1, 10), np.repeat(scores1, 10), np.repeat(np.arange(20), 10)
    warm = np.tile([True, False], 100)
    out = yes_no_metrics(users, labels, scores, warm, n_resamples=200, seed=1)
    for prefix in ("", "warm/", "cold/"):
        m = warm if prefix == "warm/" else ~warm if prefix == "cold/" else np.ones(200, bool)
        want = metrics.auc_estimate(labels[m], scores[m], n_resamples=200, seed=1, users=users[m])
        got = out[prefix + "auc"]
        assert (got.value, got.ci_low, got.ci_high) == (want.value, want.ci_low, want.ci_high), prefix
