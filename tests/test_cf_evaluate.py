"""Evaluation of CF models on hand-made cases, and the data modules' batches."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cf_models import MatrixFactorization, MFConfig
from cf_models.data import InteractionDataModule, SequenceDataModule, YesNoDataModule, left_pad
from cf_models.evaluate import (
    MultiRelevantEvaluator,
    NextItemEvaluator,
    YesNoEvaluator,
    full_ranking_ranks,
    multi_relevant_at_k,
)
from cf_models.synthetic import write_synthetic_split

torch.set_num_threads(1)
INF = float("inf")
LOG2_3 = math.log2(3)


def _scores() -> torch.Tensor:
    # items 1..5 score 0.9 > 0.8 > 0.7 > 0.6 > 0.5; column 0 is padding
    return torch.tensor([[-INF, 0.9, 0.8, 0.7, 0.6, 0.5]])


def test_full_ranking_with_and_without_seen_items():
    s = _scores()
    target = torch.tensor([4])
    assert full_ranking_ranks(s, target).tolist() == [3]  # items 1, 2, 3 above
    assert full_ranking_ranks(s, target, exclude=torch.tensor([[0, 1, 2]])).tolist() == [1]  # only 3 above
    # the target is never filtered, even if listed as seen
    assert full_ranking_ranks(s, target, exclude=torch.tensor([[4, 1]])).tolist() == [2]


def test_multi_relevant_ndcg_recall_golden():
    s = _scores().repeat(3, 1)
    relevant = torch.tensor([[2, 5], [1, 0], [4, 5]])
    out = multi_relevant_at_k(s, relevant, k=3)
    # row 0: top-3 = [1, 2, 3], hit at position 1: DCG = 1/log2(3); IDCG (2 relevant) = 1 + 1/log2(3)
    # row 1: item 1 is first -> 1; row 2: no hit in top-3 -> 0
    expected = [(1 / LOG2_3) / (1 + 1 / LOG2_3), 1.0, 0.0]
    torch.testing.assert_close(out["ndcg"], torch.tensor(expected, dtype=torch.float64))
    torch.testing.assert_close(out["recall"], torch.tensor([0.5, 1.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(out["hr"], torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64))
    # more relevant items than k: IDCG is capped at k ones; all of the top-2 relevant -> 1
    out = multi_relevant_at_k(s[:1], torch.tensor([[1, 2, 3]]), k=2)
    assert out["ndcg"].item() == pytest.approx(1.0) and out["recall"].item() == pytest.approx(2 / 3)


def _hand_mf() -> MatrixFactorization:
    """Two users, 1-d embeddings: user 1 likes high item vectors, user 2 low ones."""
    mf = MatrixFactorization(MFConfig(n_users=2, n_items=5, embedding_dim=1))
    with torch.no_grad():
        mf.user_embedding.weight.copy_(torch.tensor([[0.0], [1.0], [-1.0]]))
        mf.item_embedding.weight.copy_(torch.tensor([[0.0], [0.9], [0.8], [0.7], [0.6], [0.5]]))
    return mf.eval()


def test_next_item_evaluator_hand_made():
    ev = NextItemEvaluator(ks=(1, 2))
    batch = {
        "user": torch.tensor([1, 2]),
        "history": torch.tensor([[1, 2], [0, 5]]),
        "target": torch.tensor([3, 4]),
        "seen": torch.tensor([[1, 2], [0, 5]]),
        "candidates": torch.tensor([[3, 1], [4, 2]]),
    }
    ev.update(_hand_mf(), batch)
    r = ev.compute()
    # user 1 scores items in order 1,2,3,4,5: target 3 has rank 2, rank 0 once 1 and 2 are filtered
    # user 2 scores 5,4,3,2,1: target 4 has rank 1, rank 0 once 5 is filtered
    assert r["hr@2"] == pytest.approx(0.5) and r["hr@1"] == 0.0
    assert r["ndcg@2"] == pytest.approx((0 + 1 / LOG2_3) / 2)
    assert r["mrr"] == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert r["filtered/hr@1"] == 1.0 and r["filtered/mrr"] == 1.0
    # candidates: user 1 prefers item 1 over 3 (miss); user 2 prefers 4 over 2 (hit)
    assert r["cand/hr@1"] == pytest.approx(0.5)
    # not-masked top 1 / top 2: user 1 [1] / [1, 2], both seen; user 2 [5] / [5, 4], 5 seen
    assert r["seen_share@1"] == pytest.approx(1.0)
    assert r["seen_share@2"] == pytest.approx((2 / 2 + 1 / 2) / 2)
    assert r["n_rows"] == 2


def test_multi_relevant_evaluator_masks_seen_items():
    ev = MultiRelevantEvaluator(ks=(1,))
    batch = {"user": torch.tensor([1]), "history": torch.tensor([[1]]), "seen": torch.tensor([[1]]),
             "relevant": torch.tensor([[2, 4]])}
    ev.update(_hand_mf(), batch)
    # item 1 is seen and removed, so item 2 (relevant) is first
    assert ev.compute()["ndcg@1"] == pytest.approx(1.0)


def test_yes_no_evaluator_auc_and_uauc():
    ev = YesNoEvaluator()
    batch = {"user": torch.tensor([1, 1, 2, 2, 2]), "item": torch.tensor([1, 5, 1, 2, 5]),
             "label": torch.tensor([1, 0, 0, 1, 1]), "history": torch.zeros(5, 1, dtype=torch.long)}
    ev.update(_hand_mf(), batch)
    r = ev.compute()
    # scores: u1: 0.9 (pos), 0.5 (neg); u2: -0.9 (neg), -0.8 (pos), -0.5 (pos): every pos beats every neg
    # overall: pos {0.9, -0.8, -0.5} vs neg {0.5, -0.9}: pairs won 2 + 1 + 1 = 4 / 6
    assert r["auc"] == pytest.approx(4 / 6)
    assert r["uauc"] == pytest.approx(1.0) and r["uauc_users"] == 2


def test_left_pad():
    out = left_pad([[1, 2, 3], [4], []], length=2)
    assert out.tolist() == [[2, 3], [0, 4], [0, 0]]
    assert left_pad([[1, 2, 3], [4]]).tolist() == [[1, 2, 3], [0, 0, 4]]


def test_sequence_windows_use_every_training_interaction_once(tmp_path):
    folder = write_synthetic_split(tmp_path / "loo", "loo", n_users=6, n_items=40, length=12)
    dm = SequenceDataModule(str(folder), max_len=4, batch_size=4)
    windows = dm.train_windows()
    # 10 training items per user, windows of <= 5 items overlapping by one: sizes 5, 5, 2
    targets = sum(len(w) - 1 for w in windows)
    assert targets == 6 * (10 - 1)  # every training item but the first of each user is a target once
    batch = next(iter(dm.train_dataloader()))
    assert batch["history"].shape == (4, 4) and batch["target"].shape == (4, 4)
    # target is the history shifted by one
    assert torch.equal(batch["history"][:, 1:], batch["target"][:, :-1])
    dm_last = SequenceDataModule(str(folder), max_len=4, windows="last")
    assert len(dm_last.train_windows()) == 6
    rows = dm.eval_rows("test")
    assert len(rows) == 6 and all(r["target"] in r["candidates"] for r in rows)
    assert all(set(r["history"]) <= set(r["seen"]) for r in rows)


def test_bpr_negatives_are_never_training_positives(tmp_path):
    folder = write_synthetic_split(tmp_path / "random", "random", n_users=8, n_items=30, length=20)
    dm = InteractionDataModule(str(folder), batch_size=64)
    positive = dm._positive_matrix()
    batch = next(iter(dm.train_dataloader()))
    assert positive[batch["user"].numpy(), batch["item"].numpy()].all()
    assert not positive[batch["user"].numpy(), batch["negative"].numpy()].any()
    rows = dm.eval_rows("test")
    for r in rows:  # held-out test items are never in the seen set (train + valid)
        assert not np.isin(r["relevant"], r["history"]).any()


def test_yes_no_module_rejects_non_binary_labels(tmp_path):
    folder = write_synthetic_split(tmp_path / "yn", "yesno", n_users=4, n_items=30, length=10)
    dm = YesNoDataModule(str(folder))
    assert len(dm.rows("train")) == 4 * 6
    table = dm.split.table("valid")
    table.loc[0, "label"] = 2
    with pytest.raises(ValueError, match="valid.parquet.*label"):
        dm.rows("valid")


def test_overlapping_windows_cover_every_target_with_longer_contexts(tmp_path):
    folder = write_synthetic_split(tmp_path / "loo", "loo", n_users=3, n_items=40, length=12)
    dm = SequenceDataModule(str(folder), max_len=4, window_stride=2)
    windows = dm.train_windows()
    # 10 training items per user; windows [5, 10), [3, 8), [1, 6), then [0, 4) (it starts at the first item)
    assert [len(w) for w in windows] == [5, 5, 5, 4] * 3
    per_user = dm.split.items_by_user(["train"])
    first_user = next(iter(per_user.values()))
    targets = set(np.concatenate([w[1:] for w in windows[:4]]).tolist())
    assert targets == set(first_user[1:].tolist())
    with pytest.raises(ValueError, match="window_stride"):
        SequenceDataModule(str(folder), max_len=4, window_stride=5)


def test_random_window_offsets_cover_every_target_and_change_with_the_epoch(tmp_path):
    folder = write_synthetic_split(tmp_path / "loo", "loo", n_users=1, n_items=60, length=25)
    dm = SequenceDataModule(str(folder), max_len=4, window_offsets="random", seed=3)
    (seq,) = dm.split.items_by_user(["train"]).values()  # 23 distinct training items
    assert len(set(seq.tolist())) == seq.size == 23
    layouts = set()
    for epoch in range(6):
        windows = dm.train_windows(epoch)
        spans = []
        for w in windows:  # each window is a contiguous slice of the sequence, 2..5 items long
            start = int(np.flatnonzero(seq == w[0])[0])
            assert 2 <= len(w) <= 5 and np.array_equal(seq[start:start + len(w)], w)
            spans.append((start, start + len(w)))
        assert spans[0][1] == seq.size  # the most recent window ends at the last training item
        assert spans[-1][0] == 0  # and the oldest one starts at the first
        targets = set(np.concatenate([w[1:] for w in windows]).tolist())
        assert targets == set(seq[1:].tolist())  # every item but the first is a target
        # after the first shift, windows step back by exactly max_len
        assert all(a[1] - b[1] == 4 for a, b in zip(spans[1:-1], spans[2:]) if b[0] > 0)
        layouts.add(tuple(spans))
        again = dm.train_windows(epoch)  # reproducible within an epoch
        assert all(np.array_equal(a, b) for a, b in zip(windows, again)) and len(windows) == len(again)
    assert len(layouts) > 1  # the shifts are redrawn across epochs
    fixed = SequenceDataModule(str(folder), max_len=4)
    assert all(np.array_equal(a, b) for a, b in zip(fixed.train_windows(0), fixed.train_windows(5)))
    with pytest.raises(ValueError, match="window_offsets"):
        SequenceDataModule(str(folder), max_len=4, window_offsets="shuffled")


@pytest.mark.parametrize("stride,offsets", [(2, "fixed"), (3, "random"), (4, "random"), (1, "fixed")])
def test_each_target_once_trains_every_target_once_with_a_long_context(tmp_path, stride, offsets):
    folder = write_synthetic_split(tmp_path / "loo", "loo", n_users=1, n_items=60, length=25)
    (seq,) = SequenceDataModule(str(folder), max_len=4).split.items_by_user(["train"]).values()
    index = {int(item): i for i, item in enumerate(seq)}  # 23 distinct training items
    for epoch in range(3):
        dm = SequenceDataModule(str(folder), max_len=4, window_stride=stride, window_offsets=offsets,
                                each_target_once=True, seed=epoch)
        rows = dm.train_rows(epoch)
        batch = dm._collate_train(rows)
        history, target = batch["history"], batch["target"]
        # inputs are untouched: the history is still the window shifted by one
        assert torch.equal(history, left_pad([w for w, _ in rows], 5)[:, :-1])
        seen = []
        for h, t in zip(history, target):
            for pos in torch.nonzero((t != 0) & (h != 0)).flatten().tolist():  # as SASRecTask.loss
                context = h[: pos + 1][h[: pos + 1] != 0].tolist()
                item = int(t[pos])
                # the context is the items just before the target: all of them up to max_len - stride + 1
                # (exactly max_len with stride 1, RecBole's per-prefix rows), never fewer
                i = index[item]
                assert context == seq[i - len(context):i].tolist()
                assert len(context) >= min(i, 4 - stride + 1)
                seen.append(item)
        # every training item but the first is a target exactly once (as RecBole's per-prefix rows)
        assert sorted(seen) == sorted(seq[1:].tolist())
    # without it, overlapping windows repeat targets (with shorter contexts)
    plain = SequenceDataModule(str(folder), max_len=4, window_stride=2)
    plain_batch = plain._collate_train(plain.train_rows())
    assert int(((plain_batch["target"] != 0) & (plain_batch["history"] != 0)).sum()) > 22
