"""Validation of raw interaction / item tables, with errors a user can act on.

Every check names the file, the column, and a row (``line N`` for delimited text files: the physical
1-based line of the file, the header being line 1; ``row N`` for Parquet, 0-based) or an example value.
Where a user may reasonably prefer to drop the offending rows and go on, :class:`ValidationOptions`
makes that an explicit choice (default: fail; the message names the ``collab-llm prepare`` flag);
dropped rows are reported with :func:`warnings.warn`. Errors are :class:`DataValidationError`, a
:class:`~collab_llm.errors.UserError`.

Rejected whatever the options: timestamps outside ``0 .. MAX_TIMESTAMP`` (year 2200) and titles / text
columns containing a prompt placeholder (:data:`collab_llm.prompts.ALL_PLACEHOLDERS`, e.g.
``[HistoryEmb]``). In a user's CSV / Parquet files, identifier and title cells that are pandas'
missing-value markers (``'None'``, ``'nan'``, ``'NULL'``, ...: :data:`MISSING_MARKERS`) count as missing
and are named as such (RecBole atomic files are taken verbatim: a movie may be called "None").
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from typing import Callable, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from collab_llm.errors import UserError
from collab_llm.prompts import ALL_PLACEHOLDERS

MAX_TIMESTAMP = 7258118400  # 2200-01-01T00:00:00Z in unix seconds: later (or negative) timestamps are refused
# pandas' default missing-value markers (lower case): a text cell that reads as one of them is missing
MISSING_MARKERS = frozenset({"#n/a", "#n/a n/a", "#na", "-1.#ind", "-1.#qnan", "-nan", "1.#ind", "1.#qnan",
                             "<na>", "n/a", "na", "null", "nan", "none"})


class DataValidationError(UserError):
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
    line_of: Callable[[int], int] | None = field(default=None, compare=False, repr=False)
    markers_missing: bool = True  # text cells such as 'None' / 'nan' count as missing (False: RecBole files, verbatim)

    def where(self, index: int) -> str:
        """Human position of frame row ``index``, e.g. ``"ml-100k.inter line 5"``.

        ``line_of`` (set by the text readers) maps a data row to its physical line, so blank lines and
        quoted line breaks are counted; without it ``line = index + 2``.
        """
        if self.row_label == "line":
            number = self.line_of(int(index)) if self.line_of is not None else int(index) + 2
        else:
            number = int(index)
        return f"{self.path} {self.row_label} {number}"

    def with_frame(self, frame: pd.DataFrame) -> "SourceTable":
        """The same source with other cells (rows keep their original index, so positions stay right)."""
        return replace(self, frame=frame)


def show(value: object) -> str:
    """``repr`` of a cell, with numpy scalars shown as plain Python values (``6.0``, not ``np.float64(6.0)``)."""
    if isinstance(value, np.generic):
        value = value.item()
    return repr(value)


def _fail_or_drop(
    table: SourceTable, bad: np.ndarray, policy: str, problem: str, column: str, expected: str, flag: str | None = None
) -> pd.DataFrame:
    """Raise (policy 'error') or drop the rows flagged in boolean ``bad`` with a warning.
    ``flag`` (e.g. ``"--on-missing-values drop"``) is named in the error as the way to drop instead."""
    frame = table.frame
    if not bad.any():
        return frame
    first = int(np.flatnonzero(bad)[0])
    example = frame.iloc[first][column]
    if problem == "is empty" and isinstance(example, str) and example.strip():
        problem = "holds a missing-value marker"
    message = (
        f"{table.where(frame.index[first])}: column {column!r} {problem} (value {show(example)}; expected {expected}); "
        f"{int(bad.sum())} row(s) affected"
    )
    if policy == "error" and flag:
        message += f" (pass {flag} to drop them)"
    if policy == "error":
        raise DataValidationError(message)
    warnings.warn(f"dropping rows: {message}", stacklevel=3)
    return frame.loc[~bad]


def require_columns(table: SourceTable, columns: list[str], flags: str = "") -> None:
    """Fail unless every name in ``columns`` is a column of the table; ``flags`` names the options that
    choose the column names (e.g. ``"--user-col/--item-col"``)."""
    missing = [c for c in columns if c not in table.frame.columns]
    if missing:
        hint = f"; pass the right names with {flags}" if flags else ""
        raise DataValidationError(f"{table.path}: missing column(s) {missing}; found {list(table.frame.columns)}{hint}")


def require_rows(table: SourceTable) -> None:
    """Fail on a table without data rows."""
    if len(table.frame) == 0:
        raise DataValidationError(f"{table.path}: the file has no data rows (expected at least one)")


def _is_missing(values: pd.Series, markers: bool = True) -> np.ndarray:
    """NaN / None cells, and text cells that are empty after stripping whitespace (or, with ``markers``,
    one of :data:`MISSING_MARKERS`). Shape ``[N]``."""
    marker_set = MISSING_MARKERS if markers else frozenset()
    if values.dtype == object or pd.api.types.is_string_dtype(values.dtype):
        try:
            arr = pa.array(values, from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed objects: fall back to pandas
            text = values.astype("string")
            stripped = text.str.strip()
            return (text.isna() | (stripped == "") | stripped.str.lower().isin(marker_set)).fillna(True).to_numpy(dtype=bool)
        if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
            trimmed = pc.utf8_lower(pc.utf8_trim_whitespace(arr))
            empty = pc.or_(pc.equal(pc.utf8_length(trimmed), 0),
                           pc.is_in(trimmed, value_set=pa.array(sorted(marker_set), pa.string())))
            return pc.or_kleene(pc.is_null(arr), pc.fill_null(empty, True)).to_numpy(zero_copy_only=False)
        return pc.is_null(arr, nan_is_null=True).to_numpy(zero_copy_only=False)
    return values.isna().to_numpy(dtype=bool)


def check_missing(table: SourceTable, columns: list[str], policy: str, flag: str | None = None) -> SourceTable:
    """Empty / NaN cells (or missing-value markers such as ``'None'``) in ``columns``: fail or drop by ``policy``."""
    for column in columns:
        bad = _is_missing(table.frame[column], table.markers_missing)
        table = table.with_frame(_fail_or_drop(table, bad, policy, "is empty", column, "a value in every row", flag))
    return table


def check_no_placeholders(table: SourceTable, columns: list[str]) -> None:
    """Fail on text cells that contain a prompt placeholder (they would be overwritten by embeddings)."""
    for column in columns:
        text = table.frame[column].astype(str)
        for token in ALL_PLACEHOLDERS:
            bad = text.str.contains(token, regex=False).to_numpy(dtype=bool)
            if bad.any():
                first = int(np.flatnonzero(bad)[0])
                raise DataValidationError(
                    f"{table.where(table.frame.index[first])}: column {column!r} value {show(text.iloc[first])} contains "
                    f"the prompt placeholder {token!r} (reserved for injected embeddings); {int(bad.sum())} such row(s); "
                    "edit these cells")


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
        v = ts.to_numpy(dtype="datetime64[s]").astype("int64")
        bad = (v < 0) | (v > MAX_TIMESTAMP)
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise DataValidationError(
                f"{table.where(table.frame.index[first])}: column {column!r} has value {raw.iloc[first]}; expected a "
                f"time between 1970-01-01 and 2200-01-01; {int(bad.sum())} such row(s)")
        return pd.Series(v, index=raw.index, name=column)
    values = to_numeric(table, column, "a number (unix seconds)")
    v = values.to_numpy()
    frac = v != np.floor(v)
    negative = v < 0
    too_late = v > MAX_TIMESTAMP
    for bad, expected in ((negative, "seconds since 1970 (>= 0)"),
                          (too_late, f"unix seconds up to {MAX_TIMESTAMP} (2200-01-01); milliseconds or another unit "
                                     "must be converted to seconds"),
                          (frac, "whole seconds")):
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
