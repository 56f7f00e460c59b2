"""Planted-signal synthetic data (collab_llm.data.planted) and `collab-llm prepare --dataset planted`."""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from collab_llm.data import load_split, prepare_nextitem
from collab_llm.data.cli import main
from collab_llm.data.planted import (
    PlantedStructure,
    generate_planted,
    generate_planted_with_structure,
    next_item_distribution,
    planted_oracle_hr1,
    planted_oracle_scores,
)

SMALL = dict(n_users=120, n_items=120, n_clusters=4, min_length=8, max_length=16)


def test_deterministic_and_seed_dependent() -> None:
    a, b, c = generate_planted(**SMALL, seed=3), generate_planted(**SMALL, seed=3), generate_planted(**SMALL, seed=4)
    for name in ("interactions", "items", "users"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name))
    assert a.source == "planted" and a.source_sha256 == b.source_sha256 != c.source_sha256
    assert not a.interactions.equals(c.interactions)
    assert a.items["title"].tolist() != c.items["title"].tolist()


def test_tables_sequences_and_timestamps() -> None:
    data, structure = generate_planted_with_structure(**SMALL, seed=1)
    inter = data.interactions
    assert {c: str(t) for c, t in inter.dtypes.items()} == {"user": "int64", "item": "int64", "rating": "float64", "timestamp": "int64"}
    assert data.items.columns.tolist() == ["item", "raw_id", "title"] and data.n_items == 120 and data.n_users == 120
    assert not inter.duplicated(["user", "item"]).any()  # never a repeated item per user
    lengths = inter.groupby("user").size()
    assert lengths.min() >= 8 and lengths.max() <= 16 and len(lengths) == 120
    assert (inter.groupby("user")["timestamp"].diff().dropna() > 0).all()  # strictly increasing per user
    assert inter["user"].is_monotonic_increasing
    assert set(inter["rating"].unique()) <= {1.0, 5.0}
    # near-equal clusters; successors in the item's own cluster; first item in the user's cluster
    sizes = np.bincount(structure.item_cluster[1:])
    assert sizes.max() - sizes.min() <= 1 and len(sizes) == 4
    assert (structure.item_cluster[structure.successors[1:]] == structure.item_cluster[1:, None]).all()
    assert (structure.successors[1:] != np.arange(1, 121)[:, None]).all()
    first = inter.groupby("user")["item"].first()
    assert (structure.item_cluster[first.to_numpy()] == structure.user_cluster[first.index.to_numpy()]).all()


def test_follow_share_and_structure_steps() -> None:
    data, structure = generate_planted_with_structure(n_users=400, n_items=200, n_clusters=4, follow=0.7,
                                                      min_length=20, max_length=30, seed=0)
    inter = data.interactions
    not_first = inter["user"].duplicated().to_numpy()
    share = float((inter["rating"].to_numpy()[not_first] >= 4).mean())
    assert abs(share - 0.7) < 0.02, share  # ~10k steps: sd ~0.005
    # every structure step goes to an unseen successor, or (none left) to the same cluster
    n_succ = n_cluster = 0
    for _, group in inter.groupby("user"):
        items, ratings = group["item"].to_numpy(), group["rating"].to_numpy()
        for k in range(1, len(items)):
            if ratings[k] < 4:
                continue
            succ = structure.successors[items[k - 1]]
            if not set(succ) <= set(items[:k]):
                assert items[k] in succ
                n_succ += 1
            else:
                assert structure.item_cluster[items[k]] == structure.item_cluster[items[k - 1]]
                n_cluster += 1
    assert n_succ > 10 * n_cluster > 0


def test_titles_unique_and_independent_of_clusters() -> None:
    data, structure = generate_planted_with_structure(n_users=10, n_items=400, n_clusters=4, min_length=5, max_length=10, seed=2)
    titles = data.items["title"].tolist()
    assert len(set(titles)) == 400
    assert all(len(t.split()) == 2 and all(w[0].isupper() for w in t.split()) for t in titles)
    words = [set(t.split()) for t in titles]
    same, other = [], []
    for i, j in combinations(range(400), 2):
        (same if structure.item_cluster[i + 1] == structure.item_cluster[j + 1] else other).append(bool(words[i] & words[j]))
    rate_same, rate_other = np.mean(same), np.mean(other)
    assert rate_other > 0.02  # words recur across titles, so the comparison is not vacuous
    assert abs(rate_same - rate_other) < 0.25 * rate_other, (rate_same, rate_other)
    ids = generate_planted(**SMALL, title_style="ids")
    assert ids.items["title"].tolist()[:3] == ["Item 1", "Item 2", "Item 3"]


def test_oracle_on_hand_built_structure() -> None:
    # items 1-4 cluster 0, 5-8 cluster 1; item 1 -> (2: .75, 3: .25); item 3 -> (1, 2)
    successors = np.zeros((9, 2), dtype=np.int64)
    probs = np.zeros((9, 2))
    for i in range(1, 9):
        base = 1 if i <= 4 else 5
        successors[i] = [base + (i - base + 1) % 4, base + (i - base + 2) % 4]
        probs[i] = [0.75, 0.25]
    successors[3] = [1, 2]
    s = PlantedStructure(item_cluster=np.array([-1, 0, 0, 0, 0, 1, 1, 1, 1]), user_cluster=np.array([-1, 1]),
                         successors=successors, successor_probs=probs, follow=0.8)
    np.testing.assert_allclose(planted_oracle_scores(s, [1], [2, 3, 4, 5, 1]), [0.8 * 0.75 + 0.2 / 7, 0.8 * 0.25 + 0.2 / 7, 0.2 / 7, 0.2 / 7, 0])
    np.testing.assert_allclose(planted_oracle_scores(s, [5, 1, 2], [3, 4]), [0.8 * 0.75 + 0.2 / 5, 0.8 * 0.25 + 0.2 / 5])  # 2 -> (3, 4)
    np.testing.assert_allclose(planted_oracle_scores(s, [6, 2], [3, 4, 1]), [0.8 * 0.75 + 0.2 / 6, 0.8 * 0.25 + 0.2 / 6, 0.2 / 6])
    np.testing.assert_allclose(planted_oracle_scores(s, [2, 1], [3, 4]), [0.8 + 0.2 / 6, 0.2 / 6])  # 2 seen: renormalised
    # item 3's successors 1, 2 both seen: uniform over the unseen items of its cluster (only 4)
    np.testing.assert_allclose(planted_oracle_scores(s, [1, 2, 3], [4, 5]), [0.8 + 0.2 / 5, 0.2 / 5])
    np.testing.assert_allclose(planted_oracle_scores(s, [], [1, 5, 6], user=1), [0, 0.25, 0.25])
    assert next_item_distribution(s, [1, 2, 3]).sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="user"):
        planted_oracle_scores(s, [], [1])


def test_oracle_ties_are_pessimistic(tmp_path: Path) -> None:
    data, structure = generate_planted_with_structure(**SMALL, follow=0.0, seed=0)  # every unseen candidate ties
    split = load_split(prepare_nextitem(data, tmp_path / "loo", protocol="loo", seed=0))
    assert planted_oracle_hr1(structure, data, split.table("test")) == 0.0


@pytest.mark.parametrize("kwargs, name", [(dict(n_items=60), "n_items"), (dict(follow=1.5), "follow"),
                                          (dict(max_length=5), "max_length"), (dict(title_style="x"), "title_style"),
                                          (dict(n_clusters=0), "n_clusters"), (dict(min_length=2), "min_length")])
def test_bad_arguments_are_named(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        generate_planted(**{**SMALL, **kwargs})


PLANTED_ARGS = ["--dataset", "planted", "--planted-users", "200", "--planted-items", "200", "--planted-clusters", "4",
                "--planted-min-length", "10", "--planted-max-length", "20", "--seed", "1"]


def test_prepare_cli_planted_loo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*PLANTED_ARGS, "--protocol", "loo", "--out", str(tmp_path / "loo")]) == 0
    assert "oracle HR@1 valid" in capsys.readouterr().out
    split = load_split(tmp_path / "loo")
    assert split.manifest["source"] == "planted" and split.n_users == 200 and split.n_items == 200
    for name in ("train", "valid", "test"):
        table = split.table(name)
        assert len(table) > 0 and (table["candidates"].map(len) == 20).all()
    report = json.loads((tmp_path / "loo" / "planted.json").read_text())
    assert report["params"]["n_users"] == 200 and report["params"]["seed"] == 1 and report["n_test"] == 200
    assert report["oracle_hr1_valid"] > 0.4 and report["oracle_hr1_test"] > 0.4
    assert "planted" in report["description"].lower()


def test_prepare_cli_planted_collm(tmp_path: Path) -> None:
    assert main([*PLANTED_ARGS, "--protocol", "collm", "--out", str(tmp_path / "collm")]) == 0
    split = load_split(tmp_path / "collm")
    for name in ("train", "valid", "test"):
        labels = split.table(name)["label"]
        assert len(labels) > 0 and set(labels.unique()) == {0, 1}
    report = json.loads((tmp_path / "collm" / "planted.json").read_text())
    assert report["oracle_hr1_test"] is None and report["params"]["follow"] == 0.9
