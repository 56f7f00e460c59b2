"""Integration on the real MovieLens files from the cache (marked ``real``; skipped when the cache is absent)."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from collab_llm.assets import AssetPaths
from collab_llm.data import load_split, prepare_collm, prepare_nextitem, prepare_tallrec, read_movielens_1m, read_movielens_100k

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def ml100k(real_assets: AssetPaths):  # type: ignore[no-untyped-def]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ML-100K has duplicate titles (warned by default)
        return read_movielens_100k(real_assets.ml100k)


def test_ml100k_reader(ml100k) -> None:  # type: ignore[no-untyped-def]
    assert (ml100k.n_users, ml100k.n_items, len(ml100k.interactions)) == (943, 1682, 100_000)
    assert ml100k.items.loc[0, ["raw_id", "title", "release_year"]].tolist() == ["1", "Toy Story", "1995"]
    # ML-100K's own ids survive the natural ordering: raw id "k" -> id k
    assert (ml100k.items["raw_id"].astype(int) == ml100k.items["item"]).all()
    assert (ml100k.users["raw_id"].astype(int) == ml100k.users["user"]).all()
    inter = ml100k.interactions
    assert inter["rating"].between(1, 5).all()
    keys = inter["user"].to_numpy() * 10**10 + inter["timestamp"].to_numpy()
    assert np.all(np.diff(keys) >= 0)  # sorted by (user, timestamp)


def test_ml100k_loo_and_llara(ml100k, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    loo = load_split(prepare_nextitem(ml100k, tmp_path / "loo", protocol="loo", seed=0))
    assert time.perf_counter() - t0 < 30
    inter = ml100k.interactions
    seqs = inter.groupby("user")["item"].apply(list)
    test = loo.table("test")
    assert len(test) == 943 and len(loo.table("valid")) == 943
    assert len(loo.table("train")) == 100_000 - 3 * 943  # positions 1..n-3 of every user
    for r in test.itertuples():
        seq = seqs[r.user]
        assert r.target == seq[-1] and list(r.history) == seq[:-1][-50:]
        assert r.target in r.candidates and not set(r.candidates) - {r.target} & set(seq[:-1])
    cands = np.stack(test["candidates"].to_numpy())
    assert cands.shape == (943, 20) and all(len(set(row)) == 20 for row in cands.tolist())

    llara = load_split(prepare_nextitem(ml100k, tmp_path / "llara", protocol="llara", seed=0))
    assert llara.manifest["tables"]["valid"] == 94 and llara.manifest["tables"]["test"] == 95
    assert len(set(llara.table("train").user)) == 754
    assert llara.table("train")["history"].map(len).between(3, 10).all()
    again = load_split(prepare_nextitem(ml100k, tmp_path / "llara2", protocol="llara", seed=0))
    for name in ("train", "valid", "test"):
        pd.testing.assert_frame_equal(llara.table(name), again.table(name))
    other = load_split(prepare_nextitem(ml100k, tmp_path / "llara3", protocol="llara", seed=1))
    assert set(other.table("test").user) != set(llara.table("test").user)


def test_ml100k_tallrec(ml100k, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    split = load_split(prepare_tallrec(ml100k, tmp_path / "t", seed=0))
    assert [len(split.table(f"train_{k}")) for k in (16, 64, 256)] == [16, 64, 256]
    train = split.table("train")
    assert train["timestamp"].max() <= split.table("valid")["timestamp"].min()
    assert split.table("valid")["timestamp"].max() <= split.table("test")["timestamp"].min()
    assert (split.table("test")["label"] == (split.table("test")["rating"] > 3)).all()
    assert 0.5 < train["label"].mean() < 0.6  # ML-100K: 55% of ratings are 4 or 5


def test_collm_reproduces_published_counts(real_assets: AssetPaths, tmp_path: Path) -> None:
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ml1m = read_movielens_1m(real_assets.ml1m)
    assert (ml1m.n_users, ml1m.n_items, len(ml1m.interactions)) == (6040, 3706, 1_000_209)
    split = load_split(prepare_collm(ml1m, tmp_path / "collm"))
    elapsed = time.perf_counter() - t0
    tables = split.manifest["tables"]
    # CoLLM: "about 33.9k / 10.4k / 7.3k rows, 839 users, 3,256 items"; see collab_llm.data.yesno for the one-off
    assert (tables["train"], tables["valid"], tables["test"]) == (33_891, 10_401, 7_331)
    window = split.manifest["stats"]["window"]
    assert abs(window["users"] - 839) <= 1 and abs(window["items"] - 3256) <= 1
    assert split.manifest["filters"]["slots"] == {"train": [14, 23], "valid": [24, 28], "test": [29, 33]}
    test = split.table("test")
    assert (test["label"] == (test["rating"] >= 4)).all()
    assert 0.3 < test["warm"].mean() < 1.0
    assert {k: tables[f"train_{k}"] for k in (16, 64, 256, 1024)} == {16: 16, 64: 64, 256: 256, 1024: 1024}
    assert elapsed < 60, f"reading ML-1M + CoLLM preset took {elapsed:.1f}s"
