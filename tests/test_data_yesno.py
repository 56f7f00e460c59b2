"""Yes/No protocols (CoLLM months, TALLRec few-shot) on hand-made data with the expected rows written out."""

from __future__ import annotations

import calendar
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from collab_llm.data import load_split, prepare_collm, prepare_tallrec
from collab_llm.data.yesno import last_before, month_slots
from test_data_nextitem import make_data


def ts(year: int, month: int, day: int = 1, hour: int = 0) -> int:
    return calendar.timegm((year, month, day, hour, 0, 0))


def test_month_slots_are_utc_months_from_2000_04() -> None:
    stamps = np.array([ts(2000, 4, 1), ts(2000, 3, 31, 23) + 3599, ts(2001, 1, 15), ts(2003, 2, 28, 17), ts(2000, 4, 30, 23)])
    assert month_slots(stamps).tolist() == [0, -1, 9, 34, 0]


def _yesno_rows(frame: pd.DataFrame) -> list[tuple]:
    return [(int(r.user), int(r.item), int(r.label), float(r.rating), [int(x) for x in r.history], bool(r.warm))
            for r in frame.itertuples()]


def test_collm_rows_written_out(tmp_path: Path) -> None:
    rows = [
        (1, 1, 5.0, ts(2000, 5)),   # slot 1: before the window
        (1, 2, 2.0, ts(2000, 6)),   # slot 2: train
        (1, 3, 4.0, ts(2000, 7)),   # slot 3: train
        (1, 4, 4.0, ts(2000, 7)),   # same second as item 3: not in each other's history
        (1, 5, 1.0, ts(2000, 8)),   # slot 4: valid
        (1, 6, 5.0, ts(2000, 9)),   # slot 5: test
        (2, 2, 4.0, ts(2000, 6, 10)),
        (2, 3, 3.0, ts(2000, 9, 10)),
    ]
    data = make_data(rows, n_items=6, n_users=2)
    split = load_split(prepare_collm(data, tmp_path / "c", n_months=4, train_months=2, valid_months=1, test_months=1,
                                     skip_last_months=0, history_len=2, shots=(2,)))
    assert _yesno_rows(split.table("train")) == [
        (1, 2, 0, 2.0, [1], True), (1, 3, 1, 4.0, [1], True), (1, 4, 1, 4.0, [1], True), (2, 2, 1, 4.0, [], True)]
    assert _yesno_rows(split.table("valid")) == [(1, 5, 0, 1.0, [3, 4], False)]
    assert _yesno_rows(split.table("test")) == [(1, 6, 1, 5.0, [3, 4], False), (2, 3, 0, 3.0, [2], True)]
    assert split.interactions["split"].tolist() == ["unused", "train", "train", "train", "valid", "test", "train", "test"]
    assert split.manifest["filters"]["slots"] == {"train": [2, 3], "valid": [4, 4], "test": [5, 5]}
    assert split.manifest["stats"]["window"] == {"rows": 7, "users": 2, "items": 5, "first_slot": 2, "last_slot": 5}
    few = _yesno_rows(split.table("train_2"))  # TALLRec-style few-shot set drawn from the train pool
    assert len(few) == 2 and set(map(str, few)) <= set(map(str, _yesno_rows(split.table("train"))))
    # skipping the last month shifts the window by one slot
    shifted = load_split(prepare_collm(data, tmp_path / "d", n_months=4, train_months=2, valid_months=1, test_months=1,
                                       skip_last_months=1, shots=(1,)))
    assert shifted.manifest["filters"]["slots"] == {"train": [1, 2], "valid": [3, 3], "test": [4, 4]}
    assert shifted.table("test")["item"].tolist() == [5]


def test_last_before_against_python_reference() -> None:
    rng = np.random.default_rng(1)
    users = np.sort(rng.integers(1, 6, size=200))
    stamps = np.concatenate([np.sort(rng.integers(0, 30, size=(users == u).sum())) for u in range(1, 6)])
    items = rng.integers(1, 50, size=200)
    mask = rng.random(200) < 0.6
    got = last_before(users, stamps, items, mask, k=4).to_lists()
    for n in range(200):
        ref = [int(items[j]) for j in range(200) if users[j] == users[n] and stamps[j] < stamps[n] and mask[j]][-4:]
        assert got[n] == ref


def test_tallrec_rows_and_few_shot_sets(tmp_path: Path) -> None:
    # 10 ratings in global time order t = 1..10, users alternate; label = rating > 3
    rows = [(1, 1, 5.0, 1), (1, 2, 2.0, 3), (1, 3, 4.0, 5), (1, 4, 1.0, 7), (1, 5, 3.0, 9),
            (2, 1, 1.0, 2), (2, 2, 5.0, 4), (2, 6, 4.0, 6), (2, 3, 2.0, 8), (2, 7, 5.0, 10)]
    data = make_data(rows, n_items=7, n_users=2)
    split = load_split(prepare_tallrec(data, tmp_path / "t", seed=0, shots=(1, 3), ratios=(0.6, 0.2, 0.2), history_len=2))
    # first 6 ratings (t <= 6) are the pool; rows need >= 1 earlier rating, so t=1 and t=2 drop out
    train = split.table("train")
    got = [(int(r.user), int(r.item), int(r.label), [int(x) for x in r.liked], [int(x) for x in r.disliked])
           for r in train.itertuples()]
    assert got == [(1, 2, 0, [1], []), (1, 3, 1, [1], [2]), (2, 2, 1, [], [1]), (2, 6, 1, [2], [1])]
    assert [list(h) for h in train.history] == [list(x) for x in train.liked]
    valid = split.table("valid")
    assert valid[["user", "item", "label"]].to_numpy().tolist() == [[1, 4, 0], [2, 3, 0]]
    test = split.table("test")
    assert [(int(r.user), int(r.item), [int(x) for x in r.liked], [int(x) for x in r.disliked], bool(r.warm))
            for r in test.itertuples()] == [(1, 5, [1, 3], [2, 4], False), (2, 7, [2, 6], [1, 3], False)]
    assert valid["warm"].tolist() == [False, True]  # item 4 is not in the pool, item 3 is
    # few-shot sets: nested, drawn from the pool, reproducible
    s1, s3 = split.table("train_1"), split.table("train_3")
    key = lambda f: set(zip(f.user.tolist(), f.item.tolist()))  # noqa: E731
    assert len(s1) == 1 and len(s3) == 3 and key(s1) <= key(s3) <= key(train)
    again = load_split(prepare_tallrec(data, tmp_path / "t2", seed=0, shots=(1, 3), ratios=(0.6, 0.2, 0.2), history_len=2))
    pd.testing.assert_frame_equal(again.table("train_3"), s3)
    assert split.interactions["split"].value_counts().to_dict() == {"train": 6, "valid": 2, "test": 2}
    with pytest.raises(ValueError, match=r"few-shot size 16 must be in 1..4 \(the training pool's rows\)"):
        prepare_tallrec(data, tmp_path / "bad", shots=(16,), ratios=(0.6, 0.2, 0.2))
