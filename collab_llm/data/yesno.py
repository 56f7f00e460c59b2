"""Yes/No preference protocols: ``collm`` (CoLLM on ML-1M) and ``tallrec`` (TALLRec on ML-100K).

Output tables ``train`` / ``valid`` / ``test`` (docs/DESIGN.md), one row per (user, item) rating::

    user:int64  item:int64  label:int64 (0/1)  rating:float64  timestamp:int64
    history:list<int64>  (the user's last 10 liked items before the row, chronological)
    warm:bool            (user and item both occur in the train table)
    liked / disliked:list<int64>   (tallrec only: last 10 liked / last 10 disliked items before the row)

"Before the row" means a strictly earlier timestamp: interactions in the same second as the row are
never in its history (the order of same-second ratings in MovieLens is arbitrary, and this way no row
can see a rating made "at the same time"). Histories are drawn from all of the user's interactions in
the data, also those outside the protocol's time window.

``collm`` — label = rating >= 4. Months are slots counted from 2000-04 (slot 0), in UTC. The window is
``n_months`` (20) slots, ``train_months`` / ``valid_months`` / ``test_months`` = 10 / 5 / 5 in time order.
The window ends ``skip_last_months`` (1) before the data's last month: on ML-1M (slots 0..34, 2000-04 ..
2003-02) the window is slots 14..33 (2001-06 .. 2003-01), and this reproduces CoLLM's published row
counts exactly (train 33,891 / valid 10,401 / test 7,331, i.e. "33.9k / 10.4k / 7.3k"); with the last
month included the counts would be 31,750 / 8,854 / 7,534. The window has 838 users and 3,255 items,
one fewer of each than the published 839 / 3,256; we believe CoLLM reports ``max id + 1`` of 0-based ids
(or counts a padding id), which we cannot check without its data files. Like ``tallrec``, it also writes
TALLRec-style few-shot training sets ``train_16/64/256/1024`` (nested, one seeded permutation of ``train``)
for LLM tuning at a small budget; ``train`` stays the whole pool (the CF models train on it).

``tallrec`` — label = rating > 3. TALLRec does not publish its split; we split *all* interactions
chronologically (global time order, ties by user then file order): the first ``ratios[0]`` (80%) are the
training pool, the next 10% valid, the last 10% test. Rows need at least ``min_history`` (1) earlier
rated items (liked or disliked). ``train.parquet`` is the whole pool; the few-shot sets
``train_16/64/256.parquet`` are the first k rows of one seeded permutation of the pool (so they are
nested: train_16 is inside train_64 is inside train_256). ``warm`` refers to the whole pool.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa

from collab_llm.data.interactions import InteractionData
from collab_llm.errors import UserError
from collab_llm.data.ragged import Ragged, group_starts
from collab_llm.data.writing import make_table, require_examples, table_stats, write_split


def month_slots(timestamps: np.ndarray, origin_year: int = 2000, origin_month: int = 4) -> np.ndarray:
    """Month index of unix-second timestamps (UTC), 0 for the origin month. Shape like ``timestamps``."""
    months = np.asarray(timestamps, dtype=np.int64).astype("datetime64[s]").astype("datetime64[M]").astype(np.int64)
    origin = (origin_year - 1970) * 12 + (origin_month - 1)
    return months - origin


def last_before(users: np.ndarray, timestamps: np.ndarray, items: np.ndarray, mask: np.ndarray, k: int) -> Ragged:
    """For every interaction, the last ``k`` items with ``mask`` True of the same user at strictly earlier times.

    Args:
        users, timestamps, items, mask: ``[N]`` each, sorted by (user, timestamp).
        k: cap (most recent kept).
    Returns:
        Ragged with N rows, each chronological (most recent last).
    """
    mask = np.asarray(mask, dtype=bool)
    before = np.cumsum(mask) - mask  # masked items at earlier flat positions
    # same (user, second) -> same history: use the count at the first row of the tie group
    new_group = np.ones(len(users), dtype=bool)
    new_group[1:] = (users[1:] != users[:-1]) | (timestamps[1:] != timestamps[:-1])
    tie_start = np.flatnonzero(new_group)[np.cumsum(new_group) - 1]
    end = before[tie_start]
    user_begin = before[group_starts(users)]
    start = np.maximum(user_begin, end - k)
    return Ragged.from_ranges(items[mask], start, end)


def _yesno_table(rows: np.ndarray, cols: dict[str, np.ndarray], lists: dict[str, Ragged], warm: np.ndarray) -> pa.Table:
    out: dict[str, np.ndarray | Ragged] = {name: values[rows] for name, values in cols.items()}
    out.update({name: r.take(rows) for name, r in lists.items()})
    out["warm"] = warm
    return make_table(out)


def _warm(rows: np.ndarray, users: np.ndarray, items: np.ndarray, train_rows: np.ndarray) -> np.ndarray:
    return np.isin(users[rows], np.unique(users[train_rows])) & np.isin(items[rows], np.unique(items[train_rows]))


def few_shot_tables(pool: pa.Table, shots: tuple[int, ...], seed: int, protocol: str = "yesno") -> dict[str, pa.Table]:
    """``train_k`` tables: the first ``k`` rows of one seeded permutation of ``pool`` (nested sets), in pool order."""
    permutation = np.random.default_rng(seed).permutation(pool.num_rows)
    out = {}
    for k in shots:
        if not 0 < k <= pool.num_rows:
            raise UserError(f"protocol {protocol}: few-shot size {k} must be in 1..{pool.num_rows} (the training pool's rows); "
                            "use more data")
        out[f"train_{k}"] = pool.take(pa.array(np.sort(permutation[:k])))
    return out


def prepare_collm(
    data: InteractionData,
    out: str | Path,
    seed: int = 0,
    n_months: int = 20,
    train_months: int = 10,
    valid_months: int = 5,
    test_months: int = 5,
    skip_last_months: int = 1,
    history_len: int = 10,
    like_threshold: float = 4.0,
    shots: tuple[int, ...] = (16, 64, 256, 1024),
) -> Path:
    """CoLLM's ML-1M Yes/No protocol (module docstring). The split is deterministic; ``seed`` draws the
    TALLRec-style few-shot training sets ``train_16/64/256/1024`` (nested, from the ``train`` pool)."""
    if train_months + valid_months + test_months != n_months:
        raise ValueError(f"train/valid/test months {train_months}+{valid_months}+{test_months} must sum to n_months={n_months}")
    inter = data.interactions
    users = inter["user"].to_numpy(np.int64)
    items = inter["item"].to_numpy(np.int64)
    stamps = inter["timestamp"].to_numpy(np.int64)
    ratings = inter["rating"].to_numpy(np.float64)
    labels = (ratings >= like_threshold).astype(np.int64)
    slots = month_slots(stamps)
    last = int(slots.max()) - skip_last_months
    first = last - n_months + 1
    bounds = {
        "train": (first, first + train_months - 1),
        "valid": (first + train_months, first + train_months + valid_months - 1),
        "test": (last - test_months + 1, last),
    }
    split = np.full(len(inter), "unused", dtype=object)
    for name, (lo, hi) in bounds.items():
        split[(slots >= lo) & (slots <= hi)] = name
    history = last_before(users, stamps, items, labels == 1, history_len)
    cols = {"user": users, "item": items, "label": labels, "rating": ratings, "timestamp": stamps}
    rows_of = {name: np.flatnonzero(split == name) for name in ("train", "valid", "test")}
    require_examples("collm", data.source, {name: len(rows) for name, rows in rows_of.items()},
                     f"the {n_months}-month window ending {skip_last_months} month(s) before the last one is split "
                     f"{train_months}/{valid_months}/{test_months} months; the data span {int(slots.max() - slots.min()) + 1} month(s)")
    tables = {
        name: _yesno_table(rows, cols, {"history": history}, _warm(rows, users, items, rows_of["train"]))
        for name, rows in rows_of.items()
    }
    tables.update(few_shot_tables(tables["train"], shots, seed, "collm"))
    window = np.flatnonzero(split != "unused")
    stats = {name: table_stats(t) for name, t in tables.items()}
    stats["window"] = {"rows": len(window), "users": len(np.unique(users[window])), "items": len(np.unique(items[window])),
                       "first_slot": first, "last_slot": last}
    filters = {"like_threshold": like_threshold, "label": f"rating >= {like_threshold}", "origin_month": "2000-04",
               "n_months": n_months, "months": [train_months, valid_months, test_months],
               "skip_last_months": skip_last_months, "slots": {k: list(v) for k, v in bounds.items()},
               "history_len": history_len, "history": "liked items at strictly earlier timestamps",
               "shots": list(shots)}
    return write_split(out, data, split.astype(str), tables, "yesno/collm", seed, filters, stats)


def prepare_tallrec(
    data: InteractionData,
    out: str | Path,
    seed: int = 0,
    shots: tuple[int, ...] = (16, 64, 256),
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1),
    history_len: int = 10,
    like_above: float = 3.0,
    min_history: int = 1,
) -> Path:
    """TALLRec's Yes/No protocol with few-shot training sets (module docstring)."""
    inter = data.interactions
    users = inter["user"].to_numpy(np.int64)
    items = inter["item"].to_numpy(np.int64)
    stamps = inter["timestamp"].to_numpy(np.int64)
    ratings = inter["rating"].to_numpy(np.float64)
    labels = (ratings > like_above).astype(np.int64)
    liked = last_before(users, stamps, items, labels == 1, history_len)
    disliked = last_before(users, stamps, items, labels == 0, history_len)
    enough = (liked.lengths + disliked.lengths) >= min_history

    order = np.lexsort((np.arange(len(inter)), users, stamps))  # global time, ties by user then file order
    total = sum(ratios)
    n_train = int(round(len(order) * ratios[0] / total))
    n_valid = int(round(len(order) * ratios[1] / total))
    split = np.empty(len(inter), dtype=object)
    split[order[:n_train]] = "train"
    split[order[n_train : n_train + n_valid]] = "valid"
    split[order[n_train + n_valid :]] = "test"
    require_examples("tallrec", data.source,
                     {name: int(((split == name) & enough).sum()) for name in ("train", "valid", "test")},
                     f"{len(order)} interactions split {n_train}/{n_valid}/{len(order) - n_train - n_valid} in time; "
                     f"{int(enough.sum())} have at least {min_history} earlier item(s)")
    cutoffs = {"train_end_timestamp": int(stamps[order[n_train - 1]]), "valid_end_timestamp": int(stamps[order[n_train + n_valid - 1]])}

    cols = {"user": users, "item": items, "label": labels, "rating": ratings, "timestamp": stamps}
    lists = {"history": liked, "liked": liked, "disliked": disliked}
    rows_of = {name: np.flatnonzero((split == name) & enough) for name in ("train", "valid", "test")}
    tables = {
        name: _yesno_table(rows, cols, lists, _warm(rows, users, items, rows_of["train"]))
        for name, rows in rows_of.items()
    }
    tables.update(few_shot_tables(tables["train"], shots, seed, "tallrec"))
    stats = {name: table_stats(t) for name, t in tables.items()}
    stats.update(cutoffs)
    filters = {"label": f"rating > {like_above}", "ratios": list(ratios), "shots": list(shots),
               "history_len": history_len, "min_history": min_history,
               "split": "global chronological", "history": "items at strictly earlier timestamps"}
    return write_split(out, data, split.astype(str), tables, "yesno/tallrec", seed, filters, stats)


def prepare_yesno(
    data: InteractionData, out: str | Path, preset: Literal["collm", "tallrec"] = "collm", seed: int = 0
) -> Path:
    """``prepare_collm`` or ``prepare_tallrec`` with their defaults."""
    if preset == "collm":
        return prepare_collm(data, out, seed=seed)
    if preset == "tallrec":
        return prepare_tallrec(data, out, seed=seed)
    raise ValueError(f"unknown yes/no preset {preset!r}; expected 'collm' or 'tallrec'")
