"""Fixed, seeded candidate lists for next-item choice (target + uniformly drawn negatives, shuffled).

Each row's randomness comes from a counter-based hash (splitmix64) of ``(seed, user, position)``,
where ``position`` is the target's index in the user's chronological sequence. So a row's candidates
do not depend on which other rows exist or in which order they are produced: the same seed gives the
same candidates on every rerun, for every protocol that asks for that (user, position).

Negatives are drawn uniformly from the items ``1..n_items`` that are neither the target nor anywhere in
the user's sequence before ``position`` (the full history, not only the stored, capped one). Drawing
with replacement and keeping the first occurrence of each acceptable item is uniform sampling without
replacement over that set.
"""

from __future__ import annotations

import numpy as np

from collab_llm.data.ragged import positions_in_group

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser, elementwise on uint64 (wrapping arithmetic). Same shape as ``x``."""
    with np.errstate(over="ignore"):
        z = np.asarray(x, dtype=np.uint64) + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def row_keys(seed: int, users: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """One uint64 key per row from ``(seed, user, position)``. Shape ``[R]``."""
    with np.errstate(over="ignore"):
        k = splitmix64(np.full(len(users), seed, dtype=np.uint64))
        k = splitmix64(k ^ np.asarray(users, dtype=np.uint64))
        return splitmix64(k ^ np.asarray(positions, dtype=np.uint64))


def _stream(keys: np.ndarray, salt: int, width: int) -> np.ndarray:
    """``[R, width]`` uint64 pseudo-random numbers, row r derived from ``keys[r]`` and ``salt`` only."""
    with np.errstate(over="ignore"):
        base = splitmix64(keys ^ splitmix64(np.uint64(salt)))
        return splitmix64(base[:, None] + np.arange(width, dtype=np.uint64)[None, :] * _GOLDEN)


class SeenIndex:
    """Answers "did user u interact with item i before position p?" for whole arrays at once.

    Built from the protocol's interactions sorted by (user, time); ``p`` counts positions in that order.
    """

    def __init__(self, users: np.ndarray, items: np.ndarray, n_items: int) -> None:
        users = np.asarray(users, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        pos = positions_in_group(users)
        keys = users * (n_items + 1) + items
        order = np.lexsort((pos, keys))
        keys, pos = keys[order], pos[order]
        first = np.ones(len(keys), dtype=bool)
        first[1:] = keys[1:] != keys[:-1]
        self.keys = keys[first]
        self.first_position = pos[first]
        self.n_items = n_items
        # A dense [n_users + 1, n_items + 1] table of first positions when it is small (<= 64M cells):
        # one gather per query instead of a binary search.
        n_cells = (int(users.max(initial=0)) + 1) * (n_items + 1)
        self.dense: np.ndarray | None = None
        if n_cells <= 64_000_000:
            self.dense = np.full(n_cells, np.iinfo(np.int32).max, dtype=np.int32)
            self.dense[self.keys] = self.first_position

    def seen_before(self, users: np.ndarray, items: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Boolean array shaped like ``items``; ``users`` / ``positions`` broadcast against it."""
        query = np.asarray(users, dtype=np.int64) * (self.n_items + 1) + np.asarray(items, dtype=np.int64)
        if self.dense is not None:
            inside = query < len(self.dense)
            return inside & (self.dense[np.where(inside, query, 0)] < positions)
        idx = np.searchsorted(self.keys, query)
        idx_clipped = np.minimum(idx, len(self.keys) - 1)
        found = (idx < len(self.keys)) & (self.keys[idx_clipped] == query)
        return found & (self.first_position[idx_clipped] < positions)


def sample_candidates(
    seen: SeenIndex,
    users: np.ndarray,
    positions: np.ndarray,
    targets: np.ndarray,
    n_items: int,
    n_candidates: int,
    seed: int,
    max_attempts: int = 16,
    chunk_rows: int = 1 << 16,
) -> np.ndarray:
    """Candidate lists for R rows: ``[R, n_candidates]`` int64, target exactly once, shuffled.

    Args:
        seen: index over the user sequences the positions refer to.
        users, positions, targets: ``[R]`` each; position = index of the target in the user's sequence.
        n_items: items are ``1..n_items``.
        n_candidates: list length (target + ``n_candidates - 1`` negatives).
        seed: the protocol seed.
    Raises:
        ValueError: when a row has fewer than ``n_candidates - 1`` acceptable negatives (names the user).
    """
    users = np.asarray(users, dtype=np.int64)
    positions = np.asarray(positions, dtype=np.int64)
    targets = np.asarray(targets, dtype=np.int64)
    if len(users) > chunk_rows:  # rows are independent, so chunking only bounds memory
        parts = [
            sample_candidates(seen, users[a : a + chunk_rows], positions[a : a + chunk_rows],
                              targets[a : a + chunk_rows], n_items, n_candidates, seed, max_attempts, chunk_rows)
            for a in range(0, len(users), chunk_rows)
        ]
        return np.concatenate(parts, axis=0)
    need = n_candidates - 1
    n_rows = len(users)
    keys = row_keys(seed, users, positions)
    negatives = np.zeros((n_rows, need), dtype=np.int64)
    pending = np.arange(n_rows)
    width = 2 * need + 16
    for attempt in range(max_attempts):
        if len(pending) == 0:
            break
        draws = (_stream(keys[pending], attempt, width) % np.uint64(n_items)).astype(np.int64) + 1
        ok = draws != targets[pending, None]
        ok &= ~seen.seen_before(users[pending, None], draws, positions[pending, None])
        # first occurrence of each value within its row
        order = np.argsort(draws, axis=1, kind="stable")
        sorted_draws = np.take_along_axis(draws, order, axis=1)
        repeat_sorted = np.zeros_like(sorted_draws, dtype=bool)
        repeat_sorted[:, 1:] = sorted_draws[:, 1:] == sorted_draws[:, :-1]
        repeat = np.zeros_like(repeat_sorted)
        np.put_along_axis(repeat, order, repeat_sorted, axis=1)
        ok &= ~repeat
        rank = np.cumsum(ok, axis=1)
        done = rank[:, -1] >= need
        take = ok & (rank <= need) & done[:, None]
        negatives[pending[done]] = draws[take].reshape(-1, need)
        pending = pending[~done]
    for row in pending:  # rare: users who have seen most items; exact sampling by hashed keys
        u, p, t = users[row], positions[row], targets[row]
        all_items = np.arange(1, n_items + 1)
        eligible = all_items[(all_items != t) & ~seen.seen_before(np.full(n_items, u), all_items, np.full(n_items, p))]
        if len(eligible) < need:
            raise ValueError(
                f"user {u} (target {t} at position {p}): only {len(eligible)} items are neither the target nor in "
                f"the user's history, but {need} negatives are needed; lower n_candidates or drop such users"
            )
        order = np.argsort(_stream(keys[row : row + 1], 10_000, n_items)[0][eligible - 1], kind="stable")
        negatives[row] = eligible[order[:need]]
    full = np.concatenate([targets[:, None], negatives], axis=1)
    shuffle = np.argsort(_stream(keys, 20_000, n_candidates), axis=1, kind="stable")
    return np.take_along_axis(full, shuffle, axis=1)
