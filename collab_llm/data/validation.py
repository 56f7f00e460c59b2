"""Validation of raw interaction / item tables, with errors a user can act on.

Every check names the file, the column, and a row (``line N`` for delimited text files, counting the
header as line 1; ``row N`` for Parquet, 0-based) or an example value. Where a user may reasonably
prefer to drop the offending rows and go on, :class:`ValidationOptions` makes that an explicit choice
(default: fail); dropped rows are reported with :func:`warnings.warn`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc


class DataValidationError(ValueError):
    """Raw data that violates the input contract; the message names file, column and row."""


@dataclass(frozen=True)
class ValidationOptions:
    """What to do with data problems that have a sensible 'drop and warn' alternative.

    Args:
        on_missing_values: empty / NaN user, item, rating or timestamp cells.
        on_duplicates: several interactions of one user with one item. ``"drop"`` keeps the latest
            (by timestamp, then file order); ``"keep"`` keeps all of them (repeat consumption; next-item
            targets may then also occur in the history).
        on_unknown_items: interactions on items that have no row in the item file.
        on_missing_titles: items whose title is empty; ``"drop"`` removes the items and their interactions.
        on_duplicate_titles: different items with the same title (ambiguous in prompts and when parsing
            generated answers). ``"warn"`` keeps them and warns.
        rating_range: inclusive ``(low, high)``; ratings outside fail (``None``: no check).
        keep_items_without_interactions: keep metadata-only items in the item table (they then can be
            drawn as candidates); by default the item table holds only items that were interacted with.
    """

    on_missing_values: Literal["error", "drop"] = "error"
    on_duplicates: Literal["error", "drop", "keep"] = "error"
    on_unknown_items: Literal["error", "drop"] = "error"
    on_missing_titles: Literal["error", "drop"] = "error"
    on_duplicate_titles: Literal["error", "warn", "ignore"] = "warn"
    rating_range: tuple[float, float] | None = None
    keep_items_without_interactions: bool = False


@dataclass(frozen=True)
class SourceTable:
    """A raw table as read from disk, with what is needed to point at a row in an error.

    Args:
        frame: the raw cells (identifier columns as ``str``), index ``0..len-1`` in file order.
        path: the file it came from (shown in errors).
        row_label: ``"line"`` (text file; ``line = index + 2``) or ``"row"`` (Parquet; ``row = index``).
    """

    frame: pd.DataFrame
    path: str
    row_label: Literal["line", "row"]

    def where(self, index: int) -> str:
        """Human position of frame row ``index``, e.g. ``"ml-100k.inter line 5"``."""
        number = int(index) + 2 if self.row_label == "line" else int(index)
        return f"{self.path} {self.row_label} {number}"


def show(value: object) -> str:
    """``repr`` of a cell, with numpy scalars shown as plain Python values (``6.0``, not ``np.float64(6.0)``)."""
    if isinstance(value, np.generic):
        value = value.item()
    return repr(value)


def _fail_or_drop(
    table: SourceTable, bad: np.ndarray, policy: str, problem: str, column: str, expected: str
) -> pd.DataFrame:
    """Raise (policy 'error') or drop the rows flagged in boolean ``bad`` with a warning."""
    frame = table.frame
    if not bad.any():
        return frame
    first = int(np.flatnonzero(bad)[0])
    example = frame.iloc[first][column]
    message = (
        f"{table.where(frame.index[first])}: column {column!r} {problem} (value {show(example)}; expected {expected}); "
        f"{int(bad.sum())} row(s) affected"
    )
    if policy == "error":
        raise DataValidationError(message)
    warnings.warn(f"dropping rows: {message}", stacklevel=3)
    return frame.loc[~bad]


def require_columns(table: SourceTable, columns: list[str]) -> None:
    """Fail unless every name in ``columns`` is a column of the table."""
    missing = [c for c in columns if c not in table.frame.columns]
    if missing:
        raise DataValidationError(
            f"{table.path}: missing column(s) {missing}; found {list(table.frame.columns)}. "
            "Pass the right column names (e.g. InteractionColumns(user=..., item=...))."
        )


def require_rows(table: SourceTable) -> None:
    """Fail on a table without data rows."""
    if len(table.frame) == 0:
        raise DataValidationError(f"{table.path}: the file has no data rows (expected at least one)")


def _is_missing(values: pd.Series) -> np.ndarray:
    """NaN / None cells, and text cells that are empty after stripping whitespace. Shape ``[N]``."""
    if values.dtype == object or pd.api.types.is_string_dtype(values.dtype):
        try:
            arr = pa.array(values, from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed objects: fall back to pandas
            text = values.astype("string")
            return (text.isna() | (text.str.strip() == "")).to_numpy(dtype=bool)
        if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
            empty = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(arr)), 0)
            return pc.or_kleene(pc.is_null(arr), pc.fill_null(empty, True)).to_numpy(zero_copy_only=False)
        return pc.is_null(arr, nan_is_null=True).to_numpy(zero_copy_only=False)
    return values.isna().to_numpy(dtype=bool)


def check_missing(table: SourceTable, columns: list[str], policy: str) -> SourceTable:
    """Empty / NaN cells in ``columns``: fail or drop by ``policy``."""
    for column in columns:
        bad = _is_missing(table.frame[column])
        table = SourceTable(
            _fail_or_drop(table, bad, policy, "is empty", column, "a value in every row"), table.path, table.row_label
        )
    return table


def to_numeric(table: SourceTable, column: str, what: str) -> pd.Series:
    """Column as float64; fail on the first cell that is not a number."""
    raw = table.frame[column]
    if pd.api.types.is_bool_dtype(raw.dtype):
        raise DataValidationError(f"{table.path}: column {column!r} is boolean; expected {what}")
    if pd.api.types.is_numeric_dtype(raw.dtype):
        values = raw.astype("float64")
    else:
        try:  # fast path: Arrow's string -> float cast fails as a whole on any bad cell
            cast = pc.cast(pa.array(raw, from_pandas=True), pa.float64())
            values = pd.Series(cast.to_numpy(zero_copy_only=False), index=raw.index, dtype="float64")
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            values = pd.to_numeric(raw, errors="coerce").astype("float64")
    bad = values.isna().to_numpy() & ~raw.isna().to_numpy()
    bad |= ~np.isfinite(values.to_numpy()) & ~values.isna().to_numpy()
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise DataValidationError(
            f"{table.where(table.frame.index[first])}: column {column!r} is not {what} "
            f"(value {show(raw.iloc[first])}); {int(bad.sum())} such row(s)"
        )
    return values


def to_unix_seconds(table: SourceTable, column: str) -> pd.Series:
    """Timestamp column as int64 unix seconds (numbers, or datetimes from Parquet, taken as UTC)."""
    raw = table.frame[column]
    if pd.api.types.is_datetime64_any_dtype(raw.dtype):
        ts = raw.dt.tz_convert("UTC") if getattr(raw.dt, "tz", None) is not None else raw
        return pd.Series(
            ts.to_numpy(dtype="datetime64[s]").astype("int64"), index=raw.index, name=column
        )
    values = to_numeric(table, column, "a number (unix seconds)")
    v = values.to_numpy()
    frac = v != np.floor(v)
    negative = v < 0
    for bad, expected in ((frac, "whole seconds"), (negative, "seconds since 1970 (>= 0)")):
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise DataValidationError(
                f"{table.where(table.frame.index[first])}: column {column!r} has value {show(raw.iloc[first])}; "
                f"expected {expected}; {int(bad.sum())} such row(s)"
            )
    return values.astype("int64")


def check_rating_range(table: SourceTable, ratings: pd.Series, column: str, bounds: tuple[float, float] | None) -> None:
    """Fail on ratings outside the inclusive ``bounds``."""
    if bounds is None:
        return
    low, high = bounds
    bad = ((ratings < low) | (ratings > high)).to_numpy()
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise DataValidationError(
            f"{table.where(ratings.index[first])}: column {column!r} has rating {show(ratings.iloc[first])}; "
            f"expected a value in [{low}, {high}]; {int(bad.sum())} such row(s)"
        )


def check_unique_keys(table: SourceTable, column: str) -> None:
    """Fail when one identifier occurs on two rows of a metadata table."""
    dup = table.frame[column].duplicated(keep=False).to_numpy()
    if dup.any():
        rows = np.flatnonzero(dup)[:2]
        value = table.frame[column].iloc[rows[0]]
        raise DataValidationError(
            f"{table.path}: column {column!r} value {show(value)} occurs more than once "
            f"({table.where(table.frame.index[rows[0]])} and {table.where(table.frame.index[rows[1]])}); "
            "expected one row per item"
        )


def warn_or_fail(policy: str, message: str) -> None:
    """``policy`` 'error' raises, 'warn' warns, 'ignore' does nothing."""
    if policy == "error":
        raise DataValidationError(message)
    if policy == "warn":
        warnings.warn(message, stacklevel=3)
