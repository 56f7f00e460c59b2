"""Next-item protocols on hand-made data (expected rows written out) and the candidate sampler's statistics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from collab_llm.data import InteractionData, load_split, prepare_nextitem, prepare_random_split
from collab_llm.data.candidates import SeenIndex, sample_candidates
from collab_llm.data.ragged import Ragged, group_starts, positions_in_group


def make_data(rows: list[tuple[int, int, float, int]], n_items: int, n_users: int) -> InteractionData:
    """InteractionData from (user, item, rating, timestamp) rows already in (user, time) order."""
    inter = pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"]).astype(
        {"user": "int64", "item": "int64", "rating": "float64", "timestamp": "int64"})
    items = pd.DataFrame({"item": np.arange(1, n_items + 1), "raw_id": [f"i{i}" for i in range(1, n_items + 1)],
                          "title": [f"Movie {i}" for i in range(1, n_items + 1)]})
    users = pd.DataFrame({"user": np.arange(1, n_users + 1), "raw_id": [f"u{u}" for u in range(1, n_users + 1)]})
    return InteractionData(inter, items, users, source="toy", source_sha256="0" * 64)


# user 1: items 5, 3, 8, 1 (times 10, 20, 20, 40: the tie keeps file order), user 2: 2, 3, 4, user 3: 6, 7 (too short)
TOY = make_data(
    [(1, 5, 5.0, 10), (1, 3, 4.0, 20), (1, 8, 2.0, 20), (1, 1, 1.0, 40),
     (2, 2, 3.0, 5), (2, 3, 5.0, 6), (2, 4, 4.0, 7),
     (3, 6, 1.0, 1), (3, 7, 1.0, 2)],
    n_items=30, n_users=3,
)


def _rows(frame: pd.DataFrame) -> list[tuple[int, list[int], int, int]]:
    return [(int(r.user), [int(x) for x in r.history], int(r.target), int(r.position)) for r in frame.itertuples()]


def _check_candidates(frame: pd.DataFrame, seq: dict[int, list[int]], n_items: int, n: int) -> None:
    for r in frame.itertuples():
        cands = [int(c) for c in r.candidates]
        before = set(seq[r.user][: r.position])
        assert len(cands) == n and len(set(cands)) == n
        assert cands.count(r.target) == 1
        assert not (set(cands) - {r.target}) & before
        assert all(1 <= c <= n_items for c in cands)


def test_loo_rows_written_out(tmp_path: Path) -> None:
    out = prepare_nextitem(TOY, tmp_path / "loo", protocol="loo", seed=3, n_candidates=5, max_history=2)
    split = load_split(out)
    assert _rows(split.table("train")) == [(1, [5], 3, 1)]
    assert _rows(split.table("valid")) == [(1, [5, 3], 8, 2), (2, [2], 3, 1)]
    assert _rows(split.table("test")) == [(1, [3, 8], 1, 3), (2, [2, 3], 4, 2)]  # history capped at 2
    assert split.interactions["split"].tolist() == [
        "train", "train", "valid", "test", "train", "valid", "test", "unused", "unused"]
    seq = {1: [5, 3, 8, 1], 2: [2, 3, 4], 3: [6, 7]}
    for name in ("train", "valid", "test"):
        _check_candidates(split.table(name), seq, 30, 5)
    m = split.manifest
    assert m["protocol"] == "nextitem/loo" and m["seed"] == 3 and m["source_sha256"] == "0" * 64
    assert m["tables"]["train"] == 1 and m["tables"]["test"] == 2 and m["n_items"] == 30 and m["n_users"] == 3
    assert m["filters"] == {"min_interactions": 3, "max_history": 2, "min_history": 1, "n_candidates": 5}
    assert m["interactions_per_split"] == {"train": 3, "valid": 2, "test": 2, "unused": 2}


def test_candidates_exclude_full_history_not_only_stored_history(tmp_path: Path) -> None:
    # 7 items; the user saw 1..5 before the test target 6: only item 7 is left as a negative
    data = make_data([(1, i, 5.0, i) for i in range(1, 7)], n_items=7, n_users=1)
    split = load_split(prepare_nextitem(data, tmp_path / "s", protocol="loo", n_candidates=2, max_history=1))
    test = split.table("test")
    assert [int(x) for x in test.history[0]] == [5]
    assert sorted(int(c) for c in test.candidates[0]) == [6, 7]
    with pytest.raises(ValueError, match=r"user 1 \(target 6 at position 5\): only 1 items"):
        prepare_nextitem(data, tmp_path / "t", protocol="loo", n_candidates=3)
    assert not (tmp_path / "t").exists()


def test_llara_chronological_user_order_rows_written_out(tmp_path: Path) -> None:
    # 10 users with 5 items each; user u's last interaction is at time 100 + u, so chronological order is 1..10
    rows = [(u, (u + k) % 20 + 1, 4.0, 10 * k + (100 + u if k == 4 else 0)) for u in range(1, 11) for k in range(5)]
    data = make_data(rows, n_items=20, n_users=10)
    out = prepare_nextitem(data, tmp_path / "llara", protocol="llara", seed=0, n_candidates=4,
                           user_order="chronological", max_history=3)
    split = load_split(out)
    seq = {u: [(u + k) % 20 + 1 for k in range(5)] for u in range(1, 11)}
    train = split.table("train")
    assert sorted(set(train.user)) == list(range(1, 9))
    # a training user gives prefixes with >= 3 history items, history capped at 3
    assert _rows(train[train.user == 2]) == [(2, [3, 4, 5], 6, 3), (2, [4, 5, 6], 7, 4)]
    assert _rows(split.table("valid")) == [(9, [11, 12, 13], 14, 4)]
    assert _rows(split.table("test")) == [(10, [12, 13, 14], 15, 4)]
    for name in ("train", "valid", "test"):
        _check_candidates(split.table(name), seq, 20, 4)
    inter = split.interactions
    assert set(inter.loc[inter.user == 9, "split"]) == {"valid"} and set(inter.loc[inter.user == 10, "split"]) == {"test"}


def test_llara_random_users_are_disjoint_and_reproducible(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = [(u, int(i), 4.0, t) for u in range(1, 41) for t, i in enumerate(rng.choice(60, size=8, replace=False) + 1)]
    data = make_data(rows, n_items=60, n_users=40)
    a = load_split(prepare_nextitem(data, tmp_path / "a", protocol="llara", seed=7))
    b = load_split(prepare_nextitem(data, tmp_path / "b", protocol="llara", seed=7))
    c = load_split(prepare_nextitem(data, tmp_path / "c", protocol="llara", seed=8))
    groups = [set(a.table(n).user) for n in ("train", "valid", "test")]
    assert [len(g) for g in groups] == [32, 4, 4]
    assert not (groups[0] & groups[1]) and not (groups[0] & groups[2]) and not (groups[1] & groups[2])
    for name in ("train", "valid", "test"):
        pd.testing.assert_frame_equal(a.table(name), b.table(name))
    assert [set(c.table(n).user) for n in ("train", "valid", "test")] != groups
    assert len(a.table("train")) == 32 * (8 - 3)


def test_candidates_uniform_and_target_slot_uniform() -> None:
    # 6000 users who all saw items 1..3, target 4 at position 3; negatives from {5..10}: each has chance 3/6
    n_rows = 6000
    users = np.repeat(np.arange(1, n_rows + 1), 3)
    seen = SeenIndex(users, np.tile([1, 2, 3], n_rows), n_items=10)
    cands = sample_candidates(seen, np.arange(1, n_rows + 1), np.full(n_rows, 3), np.full(n_rows, 4),
                              n_items=10, n_candidates=4, seed=11)
    assert cands.shape == (n_rows, 4)
    freq = np.array([(cands == i).any(axis=1).mean() for i in range(1, 11)])
    assert np.all(freq[:3] == 0) and freq[3] == 1.0
    assert np.all(np.abs(freq[4:] - 0.5) < 0.03)  # binomial sd = 0.0065
    slot = np.argmax(cands == 4, axis=1)
    assert np.all(np.abs(np.bincount(slot, minlength=4) / n_rows - 0.25) < 0.025)
    again = sample_candidates(seen, np.arange(1, n_rows + 1), np.full(n_rows, 3), np.full(n_rows, 4),
                              n_items=10, n_candidates=4, seed=11, chunk_rows=1000)
    assert np.array_equal(cands, again)  # rows are independent of chunking / other rows


def test_candidates_fallback_when_rejection_rarely_succeeds() -> None:
    # 200 items, user saw 1..180 before position 180; 19 negatives from the 19 unseen non-target items
    seen = SeenIndex(np.ones(180, dtype=np.int64), np.arange(1, 181), n_items=200)
    cands = sample_candidates(seen, np.array([1]), np.array([180]), np.array([181]), n_items=200, n_candidates=20, seed=0,
                              max_attempts=1)
    assert sorted(cands[0].tolist()) == list(range(181, 201))


def test_random_split_per_user_counts(tmp_path: Path) -> None:
    rows = [(u, i, 3.0, i) for u, n in ((1, 10), (2, 3), (3, 1)) for i in range(1, n + 1)]
    data = make_data(rows, n_items=10, n_users=3)
    split = load_split(prepare_random_split(data, tmp_path / "r", seed=5))
    inter = split.interactions
    counts = inter.groupby(["user", "split"]).size().to_dict()
    assert counts == {(1, "train"): 8, (1, "valid"): 1, (1, "test"): 1, (2, "train"): 2, (2, "test"): 1, (3, "train"): 1}
    assert split.manifest["protocol"] == "random" and split.table_names == ["interactions", "items", "users"]
    again = load_split(prepare_random_split(data, tmp_path / "r2", seed=5)).interactions
    assert inter["split"].tolist() == again["split"].tolist()
    assert len(split.train_interactions()) == 11


def test_ragged_helpers_match_python() -> None:
    src = np.array([10, 11, 12, 13, 14])
    r = Ragged.from_ranges(src, np.array([0, 2, 4, 1]), np.array([2, 2, 5, 4]))
    assert r.to_lists() == [[10, 11], [], [14], [11, 12, 13]]
    assert r.take(np.array([3, 0])).to_lists() == [[11, 12, 13], [10, 11]]
    assert r.to_arrow().to_pylist() == [[10, 11], [], [14], [11, 12, 13]]
    keys = np.array([4, 4, 7, 9, 9, 9])
    assert group_starts(keys).tolist() == [0, 0, 2, 3, 3, 3]
    assert positions_in_group(keys).tolist() == [0, 1, 0, 0, 1, 2]


def test_load_split_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"not a prepared split \(manifest\.json missing\)"):
        load_split(tmp_path)
    split = load_split(prepare_nextitem(TOY, tmp_path / "s", n_candidates=3))
    with pytest.raises(KeyError, match=r"no table 'train_16'"):
        split.table("train_16")
    (split.folder / "test.parquet").unlink()
    with pytest.raises(FileNotFoundError, match=r"test\.parquet: listed in manifest\.json but missing"):
        split.table("test")
