"""Ragged int64 lists (histories, candidates) built without Python loops, stored as Arrow ``list<int64>``.

A :class:`Ragged` is ``values`` (flat, int64) and ``offsets`` (``len = n_rows + 1``): row ``r`` is
``values[offsets[r]:offsets[r + 1]]``. The workhorse is :meth:`Ragged.from_ranges`, which takes
row ``r`` as the slice ``source[start[r]:end[r]]`` of one flat array (e.g. all users' chronological
item sequences concatenated), so a million prefix histories cost a few numpy calls.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa


@dataclass(frozen=True)
class Ragged:
    """``n_rows`` variable-length int64 rows: ``values[offsets[r]:offsets[r+1]]``."""

    values: np.ndarray
    offsets: np.ndarray

    @staticmethod
    def from_ranges(source: np.ndarray, start: np.ndarray, end: np.ndarray) -> "Ragged":
        """Row ``r`` = ``source[start[r]:end[r]]`` (``start <= end``, both int arrays of length n_rows)."""
        start = np.asarray(start, dtype=np.int64)
        end = np.asarray(end, dtype=np.int64)
        lengths = end - start
        if (lengths < 0).any():
            raise ValueError("Ragged.from_ranges: every start must be <= its end")
        offsets = np.zeros(len(start) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        index = np.repeat(start - offsets[:-1], lengths) + np.arange(offsets[-1], dtype=np.int64)
        return Ragged(np.asarray(source, dtype=np.int64)[index], offsets)

    @staticmethod
    def from_matrix(matrix: np.ndarray) -> "Ragged":
        """Every row of a 2-D ``[n_rows, width]`` array as one list."""
        n, width = matrix.shape
        return Ragged(np.ascontiguousarray(matrix, dtype=np.int64).reshape(-1), np.arange(n + 1, dtype=np.int64) * width)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def take(self, rows: np.ndarray) -> "Ragged":
        """The rows ``rows`` (int indices), in that order."""
        rows = np.asarray(rows, dtype=np.int64)
        return Ragged.from_ranges(self.values, self.offsets[rows], self.offsets[rows + 1])

    def to_arrow(self) -> pa.ListArray:
        return pa.ListArray.from_arrays(pa.array(self.offsets, pa.int32() if self.offsets[-1] < 2**31 else pa.int64()),
                                        pa.array(self.values, pa.int64())).cast(pa.list_(pa.int64()))

    def to_lists(self) -> list[list[int]]:
        """Plain Python lists (for tests and small tables)."""
        return [self.values[a:b].tolist() for a, b in zip(self.offsets[:-1], self.offsets[1:])]


def group_starts(sorted_keys: np.ndarray) -> np.ndarray:
    """For a sorted key array, the index where each element's run of equal keys starts. Shape ``[N]``."""
    n = len(sorted_keys)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    new = np.ones(n, dtype=bool)
    new[1:] = sorted_keys[1:] != sorted_keys[:-1]
    starts = np.flatnonzero(new)
    return starts[np.cumsum(new) - 1]


def positions_in_group(sorted_keys: np.ndarray) -> np.ndarray:
    """0-based position of each element within its run of equal keys (keys sorted). Shape ``[N]``."""
    return np.arange(len(sorted_keys), dtype=np.int64) - group_starts(sorted_keys)
