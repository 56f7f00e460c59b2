"""Readers and validation on small hand-written files: id mapping, ordering, and errors a user can act on."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from collab_llm.data import (
    DataValidationError,
    InteractionColumns,
    ItemColumns,
    ValidationOptions,
    read_interactions,
    read_movielens_100k,
)
from collab_llm.data.interactions import natural_order

ITEMS = "item,title,genre\nw,Heat,Crime\nx,Babe,Family\ny,Casino,Crime\nz,Jumanji,Family\n"
GOOD = "user,item,rating,timestamp\nu10,x,5,10\nu2,y,4,20\nu10,z,2,20\nu10,y,3,20\nu2,w,1,5\n"


def _write(tmp_path: Path, inter: str, items: str = ITEMS, suffix: str = ".csv") -> tuple[Path, Path]:
    i, m = tmp_path / f"inter{suffix}", tmp_path / f"items{suffix}"
    i.write_text(inter)
    m.write_text(items)
    return i, m


def test_ids_are_contiguous_naturally_ordered_and_sorted_with_stable_ties(tmp_path: Path) -> None:
    inter, items = _write(tmp_path, GOOD)
    data = read_interactions(inter, items, item_columns=ItemColumns(text=("genre",)))
    # users: u2 < u10 (natural order); items w, x, y, z -> 1..4
    assert data.users.to_dict("list") == {"user": [1, 2], "raw_id": ["u2", "u10"]}
    assert data.items.to_dict("list") == {
        "item": [1, 2, 3, 4], "raw_id": ["w", "x", "y", "z"],
        "title": ["Heat", "Babe", "Casino", "Jumanji"], "genre": ["Crime", "Family", "Crime", "Family"],
    }
    # u10: x@10, then the tie at t=20 in file order: z before y
    expected = pd.DataFrame(
        {"user": [1, 1, 2, 2, 2], "item": [1, 3, 2, 4, 3], "rating": [1.0, 4.0, 5.0, 2.0, 3.0],
         "timestamp": [5, 20, 10, 20, 20]}
    )
    pd.testing.assert_frame_equal(data.interactions, expected)
    assert data.source == "inter" and len(data.source_sha256) == 64


def test_items_without_interactions_are_dropped_unless_asked(tmp_path: Path) -> None:
    inter, items = _write(tmp_path, "user,item,rating,timestamp\n1,y,4,3\n1,w,5,2\n")
    assert read_interactions(inter, items).items["raw_id"].tolist() == ["w", "y"]
    kept = read_interactions(inter, items, options=ValidationOptions(keep_items_without_interactions=True))
    assert kept.items["raw_id"].tolist() == ["w", "x", "y", "z"]
    assert kept.interactions["item"].tolist() == [1, 3]


def test_natural_order() -> None:
    assert natural_order(pd.Series(["10", "9", "1", "9"])).tolist() == ["1", "9", "10"]
    assert natural_order(pd.Series(["1m_10", "1m_2", "1m_1"])).tolist() == ["1m_1", "1m_2", "1m_10"]
    assert natural_order(pd.Series(["b (1995)", "a (1996)"])).tolist() == ["a (1996)", "b (1995)"]


def test_custom_column_names_and_parquet(tmp_path: Path) -> None:
    inter = pd.DataFrame({"uid": ["a", "a", "b"], "iid": [7, 8, 7], "stars": [1.0, 5.0, 3.0],
                          "when": pd.to_datetime([2, 1, 3], unit="s", utc=True)})
    items = pd.DataFrame({"iid": [7, 8], "name": ["Heat", "Babe"]})
    inter.to_parquet(tmp_path / "i.parquet")
    items.to_parquet(tmp_path / "m.parquet")
    data = read_interactions(tmp_path / "i.parquet", tmp_path / "m.parquet",
                             InteractionColumns(user="uid", item="iid", rating="stars", timestamp="when"),
                             ItemColumns(item="iid", title="name"))
    assert data.interactions[["user", "item", "timestamp"]].to_numpy().tolist() == [[1, 2, 1], [1, 1, 2], [2, 1, 3]]
    assert data.items["raw_id"].tolist() == ["7", "8"]


# (interaction file, item file, options, error pattern). Line numbers count the header as line 1.
ERROR_CASES = {
    "missing column": ("user,item,timestamp\n1,x,5\n", ITEMS, ValidationOptions(),
                       r"inter\.csv: missing column\(s\) \['rating'\]; found \['user', 'item', 'timestamp'\]"),
    "rating not numeric": ("user,item,rating,timestamp\n1,x,5,1\n1,y,five,2\n", ITEMS, ValidationOptions(),
                           r"inter\.csv line 3: column 'rating' is not a number \(rating\) \(value 'five'\)"),
    "timestamp not numeric": ("user,item,rating,timestamp\n1,x,5,2021-01-01\n", ITEMS, ValidationOptions(),
                              r"inter\.csv line 2: column 'timestamp' is not a number \(unix seconds\) \(value '2021-01-01'\)"),
    "timestamp fractional": ("user,item,rating,timestamp\n1,x,5,1.5\n", ITEMS, ValidationOptions(),
                             r"inter\.csv line 2: column 'timestamp' has value 1\.5; expected whole seconds"),
    "timestamp negative": ("user,item,rating,timestamp\n1,x,5,3\n1,y,5,-3\n", ITEMS, ValidationOptions(),
                           r"inter\.csv line 3: column 'timestamp' has value -3.*expected seconds since 1970"),
    "empty file": ("", ITEMS, ValidationOptions(), r"inter\.csv: the file is empty"),
    "header only": ("user,item,rating,timestamp\n", ITEMS, ValidationOptions(), r"inter\.csv: the file has no data rows"),
    "empty item file": (GOOD, "item,title\n", ValidationOptions(), r"items\.csv: the file has no data rows"),
    "missing value": ("user,item,rating,timestamp\n1,x,5,1\n,y,4,2\n", ITEMS, ValidationOptions(),
                      r"inter\.csv line 3: column 'user' is empty"),
    "duplicate pair": ("user,item,rating,timestamp\n1,x,5,1\n1,y,4,2\n1,x,3,3\n", ITEMS, ValidationOptions(),
                       r"inter\.csv line 2: user '1' interacts with item 'x' more than once.*1 duplicate row"),
    "unknown item": ("user,item,rating,timestamp\n1,x,5,1\n1,q,4,2\n", ITEMS, ValidationOptions(),
                     r"inter\.csv line 3: column 'item' value 'q' has no row in the item file .*items\.csv"),
    "missing title": (GOOD, "item,title\nw,Heat\nx,\ny,Casino\nz,Jumanji\n", ValidationOptions(),
                      r"items\.csv line 3: column 'title' is empty"),
    "duplicate item id": (GOOD, "item,title\nw,Heat\nx,Babe\nx,Babe 2\ny,Casino\nz,Jumanji\n", ValidationOptions(),
                          r"items\.csv: column 'item' value 'x' occurs more than once \(.*line 3 and .*line 4\)"),
    "duplicate titles": (GOOD, "item,title\nw,Heat\nx,Heat\ny,Casino\nz,Jumanji\n",
                         ValidationOptions(on_duplicate_titles="error"),
                         r"items\.csv: column 'title': 2 items share a title with another item, e.g. 'Heat' for items \['w', 'x'\]"),
    "rating out of range": ("user,item,rating,timestamp\n1,x,5,1\n1,y,6,2\n", ITEMS, ValidationOptions(rating_range=(1, 5)),
                            r"inter\.csv line 3: column 'rating' has rating 6\.0; expected a value in \[1, 5\]"),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_validation_errors_name_file_column_and_row(tmp_path: Path, case: str) -> None:
    inter_text, items_text, options, pattern = ERROR_CASES[case]
    inter, items = _write(tmp_path, inter_text, items_text)
    with pytest.raises(DataValidationError, match=pattern):
        read_interactions(inter, items, options=options)


def test_missing_file_and_unsupported_type(tmp_path: Path) -> None:
    inter, items = _write(tmp_path, GOOD)
    with pytest.raises(DataValidationError, match=r"nope\.csv: file not found"):
        read_interactions(tmp_path / "nope.csv", items)
    (tmp_path / "inter.xlsx").write_text("x")
    with pytest.raises(DataValidationError, match=r"inter\.xlsx: unsupported file type '\.xlsx'"):
        read_interactions(tmp_path / "inter.xlsx", items)
    with pytest.raises(DataValidationError, match=r"ml-100k\.inter: file not found"):
        read_movielens_100k(tmp_path)


# (interaction file, item file, options, expected (raw user, raw item, rating) rows after dropping, warning pattern)
DROP_CASES = {
    "duplicates keep latest": ("user,item,rating,timestamp\n1,x,5,1\n1,y,4,2\n1,x,3,3\n", ITEMS,
                               ValidationOptions(on_duplicates="drop"), [("1", "y", 4.0), ("1", "x", 3.0)],
                               r"more than once"),
    "unknown items": ("user,item,rating,timestamp\n1,x,5,1\n1,q,4,2\n", ITEMS, ValidationOptions(on_unknown_items="drop"),
                      [("1", "x", 5.0)], r"has no row in the item file"),
    "missing values": ("user,item,rating,timestamp\n1,x,5,1\n1,y,,2\n", ITEMS, ValidationOptions(on_missing_values="drop"),
                       [("1", "x", 5.0)], r"column 'rating' is empty"),
    "missing titles": ("user,item,rating,timestamp\n1,x,5,1\n1,y,4,2\n", "item,title\nx,\ny,Casino\n",
                       ValidationOptions(on_missing_titles="drop"), [("1", "y", 4.0)],
                       r"column 'title' is empty|dropped for an empty title"),
}


@pytest.mark.parametrize("case", sorted(DROP_CASES))
def test_drop_policies_drop_and_warn(tmp_path: Path, case: str) -> None:
    inter_text, items_text, options, expected, pattern = DROP_CASES[case]
    inter, items = _write(tmp_path, inter_text, items_text)
    with pytest.warns(UserWarning, match=pattern):
        data = read_interactions(inter, items, options=options)
    got = [
        (data.users["raw_id"].iloc[u - 1], data.items["raw_id"].iloc[i - 1], r)
        for u, i, r in data.interactions[["user", "item", "rating"]].itertuples(index=False)
    ]
    assert got == expected


def test_duplicates_keep_policy_keeps_repeats(tmp_path: Path) -> None:
    inter, items = _write(tmp_path, "user,item,rating,timestamp\n1,x,5,1\n1,y,4,2\n1,x,3,3\n")
    data = read_interactions(inter, items, options=ValidationOptions(on_duplicates="keep"))
    assert data.interactions["item"].tolist() == [1, 2, 1]


def test_recbole_atomic_reader_keeps_cells_verbatim_and_crlf(tmp_path: Path) -> None:
    folder = tmp_path / "ml"
    folder.mkdir()
    (folder / "ml-100k.inter").write_bytes(
        b"user_id:token\titem_id:token\trating:float\ttimestamp:float\r\n2\t10\t4\t100\r\n2\t9\t3\t90\r\n1\t10\t5\t80\r\n"
    )
    (folder / "ml-100k.item").write_bytes(
        b"item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\r\n"
        b"9\tNone\t1995\tDrama\r\n10\t\"Quoted\" Title\t\tComedy\r\n"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = read_movielens_100k(folder)
    assert data.items[["raw_id", "title", "release_year", "genre"]].to_numpy().tolist() == [
        ["9", "None", "1995", "Drama"], ["10", '"Quoted" Title', "", "Comedy"]]
    assert data.interactions.to_numpy().tolist() == [[1, 2, 5.0, 80], [2, 1, 3.0, 90], [2, 2, 4.0, 100]]
    with_year = read_movielens_100k(folder, title_with_year=True)
    assert with_year.items["title"].tolist() == ["None (1995)", '"Quoted" Title']
    assert np.array_equal(with_year.interactions.to_numpy(), data.interactions.to_numpy())
