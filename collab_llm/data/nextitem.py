"""Next-item choice protocols: ``loo`` (leave-one-out) and ``llara`` (LLaRA / iLoRA preset).

Output tables ``train`` / ``valid`` / ``test``, one row per example (docs/DESIGN.md)::

    user:int64  history:list<int64> (chronological, most recent last)  target:int64
    candidates:list<int64> (n_candidates items, shuffled, target once, none in the user's earlier items)
    position:int64 (index of the target in the user's chronological sequence; 0-based)

Sequences are the user's interactions in chronological order, ties on timestamps kept in the order of
the source file (that is how :class:`InteractionData` is sorted).

``loo`` — every user with at least ``min_interactions`` (3) interactions; the last item is the test
target, the second-to-last the validation target, the rest is the training part. Training examples are
every prefix of the training part with a non-empty history: targets at positions ``1 .. n-3``, history
= all earlier items. Validation / test history = everything before the target. Every stored history is
capped to its most recent ``max_history`` (50) items; candidates still exclude the full history.
``interactions.parquet``'s split: positions ``0..n-3`` train, ``n-2`` valid, ``n-1`` test; users with
fewer than ``min_interactions`` are ``unused``.

``llara`` — users with at least ``min_history + 1`` (4) interactions are assigned to train / valid / test
8:1:1 (``ratios``). LLaRA's paper says "chronological order" while its code splits already time-ordered
sequences; we read it as: the *items within each sequence* are in chronological order, and the *users*
are split at random with the seed (``user_order="random"``, default). ``user_order="chronological"``
instead orders users by the time of their last interaction (earliest 80% train, latest 10% test), the
other reading. Train users give one example per prefix with at least ``min_history`` (3) items, history =
the previous ``max_history`` (10) items at most; valid / test users give one row each: target = their
last item, history = the ``max_history`` items before it. Split sizes for n eligible users:
``round(0.8 n)`` train, ``round(0.1 n)`` valid, the rest test (ML-100K: 754 / 94 / 95).
``interactions.parquet``'s split is the user's group (all of a valid user's interactions are ``valid``),
so a CF model trained on ``split == 'train'`` never sees held-out users.

Candidates: target + ``n_candidates - 1`` negatives drawn uniformly (seeded, per row; see
:mod:`collab_llm.data.candidates`) from items not in the user's sequence before the target and not the
target, then shuffled. Train rows carry them too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa

from collab_llm.data.candidates import SeenIndex, sample_candidates
from collab_llm.data.interactions import InteractionData
from collab_llm.data.ragged import Ragged, group_starts, positions_in_group
from collab_llm.data.writing import make_table, require_examples, table_stats, write_split
from collab_llm.errors import UserError


def _example_table(
    rows: np.ndarray,
    users: np.ndarray,
    items: np.ndarray,
    starts: np.ndarray,
    positions: np.ndarray,
    max_history: int,
    seen: SeenIndex,
    n_items: int,
    n_candidates: int,
    seed: int,
) -> pa.Table:
    """Examples whose targets are the interactions at flat indices ``rows`` (into the sorted arrays)."""
    hist_start = np.maximum(starts[rows], rows - max_history)
    history = Ragged.from_ranges(items, hist_start, rows)
    candidates = sample_candidates(seen, users[rows], positions[rows], items[rows], n_items, n_candidates, seed)
    return make_table(
        {
            "user": users[rows],
            "history": history,
            "target": items[rows],
            "candidates": Ragged.from_matrix(candidates),
            "position": positions[rows],
        }
    )


def _split_sizes(n: int, ratios: tuple[float, float, float]) -> tuple[int, int, int]:
    total = sum(ratios)
    n_train = int(round(n * ratios[0] / total))
    n_valid = int(round(n * ratios[1] / total))
    return n_train, n_valid, n - n_train - n_valid


def prepare_nextitem(
    data: InteractionData,
    out: str | Path,
    protocol: Literal["loo", "llara"] = "loo",
    seed: int = 0,
    n_candidates: int = 20,
    max_history: int | None = None,
    min_history: int | None = None,
    min_interactions: int = 3,
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1),
    user_order: Literal["random", "chronological"] = "random",
) -> Path:
    """Write a next-item split folder (see the module docstring) and return its path.

    Args:
        data: validated interactions.
        out: folder to write (atomically).
        protocol: ``"loo"`` or ``"llara"``.
        seed: candidates (both protocols) and the user split (``llara``).
        n_candidates: list length including the target (20 in LLaRA).
        max_history: stored history cap (default 50 for ``loo``, 10 for ``llara``).
        min_history: fewest history items for an example (default 1 for ``loo``, 3 for ``llara``).
        min_interactions: ``loo`` only: users with fewer interactions are left out (``unused``).
        ratios, user_order: ``llara`` only: user split.
    """
    if protocol not in ("loo", "llara"):
        raise ValueError(f"unknown next-item protocol {protocol!r}; expected 'loo' or 'llara'")
    if max_history is None:
        max_history = 50 if protocol == "loo" else 10
    if min_history is None:
        min_history = 1 if protocol == "loo" else 3
    if max_history < min_history or min_history < 0:
        raise UserError(f"need 0 <= min_history <= max_history (--max-history); got {min_history}, {max_history}")
    if n_candidates < 1 or n_candidates > data.n_items:
        raise UserError(f"protocol {protocol} on {data.source}: --n-candidates must be in 1..{data.n_items} "
                        f"(the number of items); got {n_candidates}")

    inter = data.interactions
    users = inter["user"].to_numpy(np.int64)
    items = inter["item"].to_numpy(np.int64)
    starts = group_starts(users)
    positions = positions_in_group(users)
    lengths = np.bincount(users, minlength=data.n_users + 1)[users]
    seen = SeenIndex(users, items, data.n_items)
    split = np.full(len(inter), "unused", dtype=object)
    rows_of = {}

    if protocol == "loo":
        eligible = lengths >= max(min_interactions, 3)
        split[eligible & (positions <= lengths - 3)] = "train"
        split[eligible & (positions == lengths - 2)] = "valid"
        split[eligible & (positions == lengths - 1)] = "test"
        rows_of["train"] = np.flatnonzero((split == "train") & (positions >= min_history))
        rows_of["valid"] = np.flatnonzero((split == "valid") & (positions >= min_history))
        rows_of["test"] = np.flatnonzero((split == "test") & (positions >= min_history))
        filters = {"min_interactions": max(min_interactions, 3), "max_history": max_history,
                   "min_history": min_history, "n_candidates": n_candidates}
    else:
        eligible_users = np.flatnonzero(np.bincount(users, minlength=data.n_users + 1) >= min_history + 1)
        if user_order == "random":
            ordered = np.random.default_rng(seed).permutation(eligible_users)
        elif user_order == "chronological":
            last_time = np.zeros(data.n_users + 1, dtype=np.int64)
            np.maximum.at(last_time, users, inter["timestamp"].to_numpy(np.int64))
            ordered = eligible_users[np.lexsort((eligible_users, last_time[eligible_users]))]
        else:
            raise ValueError(f"unknown user_order {user_order!r}; expected 'random' or 'chronological'")
        n_train, n_valid, _ = _split_sizes(len(ordered), ratios)
        group = np.full(data.n_users + 1, "unused", dtype=object)
        group[ordered[:n_train]] = "train"
        group[ordered[n_train : n_train + n_valid]] = "valid"
        group[ordered[n_train + n_valid :]] = "test"
        split = group[users]
        last = positions == lengths - 1
        rows_of["train"] = np.flatnonzero((split == "train") & (positions >= min_history))
        rows_of["valid"] = np.flatnonzero((split == "valid") & last)
        rows_of["test"] = np.flatnonzero((split == "test") & last)
        filters = {"min_history": min_history, "max_history": max_history, "n_candidates": n_candidates,
                   "ratios": list(ratios), "user_order": user_order}

    per_user = np.bincount(users, minlength=data.n_users + 1)[1:]
    longest = int(per_user.max()) if len(per_user) else 0
    if protocol == "loo":
        need = max(min_interactions, 3)
        why = (f"{int((per_user >= need).sum())} of {data.n_users} users have at least {need} interactions, the loo "
               f"threshold; train examples need users with at least {need + min_history} items; the longest user has {longest}")
    else:
        why = (f"{len(eligible_users)} of {data.n_users} users have at least {min_history + 1} interactions, the llara "
               f"threshold, split {n_train}/{n_valid}/{len(ordered) - n_train - n_valid} at ratios {list(ratios)}; "
               f"the longest user has {longest}")
    require_examples(protocol, data.source, {name: len(rows) for name, rows in rows_of.items()}, why)
    tables = {
        name: _example_table(rows, users, items, starts, positions, max_history, seen, data.n_items, n_candidates, seed)
        for name, rows in rows_of.items()
    }
    stats = {name: table_stats(t) for name, t in tables.items()}
    return write_split(out, data, split.astype(str), tables, f"nextitem/{protocol}", seed, filters, stats)
