"""The validated, id-mapped interaction data every protocol starts from.

Raw identifiers (strings such as ``"196"``, ``"1m_1"`` or ``"Toy Story (1995)"``) are mapped to
contiguous ``int64`` ids starting at 1; id 0 is reserved for padding. Raw ids are ordered naturally
(numerically when every raw id is an integer, else as strings), so ML-100K keeps its own numbering.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from collab_llm.data.validation import (
    DataValidationError,
    SourceTable,
    ValidationOptions,
    check_missing,
    check_no_placeholders,
    check_rating_range,
    check_unique_keys,
    require_columns,
    require_rows,
    show,
    to_numeric,
    to_unix_seconds,
    warn_or_fail,
)


@dataclass(frozen=True)
class InteractionColumns:
    """Column names of a raw interaction table (user, item, rating, timestamp)."""

    user: str = "user"
    item: str = "item"
    rating: str = "rating"
    timestamp: str = "timestamp"


@dataclass(frozen=True)
class ItemColumns:
    """Column names of a raw item table: identifier, title, and extra text columns to carry along."""

    item: str = "item"
    title: str = "title"
    text: tuple[str, ...] = ()


@dataclass(frozen=True)
class InteractionData:
    """Validated interactions with contiguous ids (see docs/DESIGN.md, "Data layer").

    Attributes:
        interactions: ``user:int64, item:int64, rating:float64, timestamp:int64`` (unix seconds), sorted by
            (user, timestamp, original file order); ids in ``1..n_users`` / ``1..n_items``.
        items: ``item:int64, raw_id:str, title:str`` (+ text columns), one row per item id ``1..n_items``.
        users: ``user:int64, raw_id:str``, one row per user id ``1..n_users``.
        source: short dataset name (``"ml-100k"``, ``"ml-1m"``, or the interaction file name).
        source_sha256: sha256 of the source files (goes into every manifest).
    """

    interactions: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame
    source: str
    source_sha256: str

    def __post_init__(self) -> None:
        expected = {"user": "int64", "item": "int64", "rating": "float64", "timestamp": "int64"}
        for col, dtype in expected.items():
            if col not in self.interactions.columns or str(self.interactions[col].dtype) != dtype:
                raise TypeError(f"InteractionData.interactions needs column {col}:{dtype}; got {dict(self.interactions.dtypes)}")
        for name, frame, key in (("items", self.items, "item"), ("users", self.users, "user")):
            ids = frame[key].to_numpy()
            if not np.array_equal(ids, np.arange(1, len(frame) + 1)):
                raise ValueError(f"InteractionData.{name}[{key!r}] must be 1..{len(frame)} in order")
        if self.interactions["user"].min() < 1 or self.interactions["user"].max() > len(self.users):
            raise ValueError("InteractionData.interactions['user'] outside 1..n_users")
        if self.interactions["item"].min() < 1 or self.interactions["item"].max() > len(self.items):
            raise ValueError("InteractionData.interactions['item'] outside 1..n_items")

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return len(self.items)


def natural_order(raw_ids: pd.Series) -> np.ndarray:
    """Unique raw ids (str) in natural order: by (text prefix, trailing integer) when every id ends in
    digits (``"2" < "10"``, ``"1m_2" < "1m_10"``), else lexicographically."""
    unique = pd.unique(raw_ids.astype(str)).astype(str)
    parts = pd.Series(unique).str.extract(r"^(.*?)(\d+)$")
    if parts[1].notna().all():
        # Compare the numbers as digit strings (length first, leading zeros stripped): exact for any length,
        # so 30-digit ids never overflow an int64.
        digits = parts[1].str.lstrip("0").replace("", "0")
        key = pd.DataFrame({"prefix": parts[0].to_numpy(), "n_digits": digits.str.len().to_numpy(),
                            "digits": digits.to_numpy(), "raw": unique})
        return key.sort_values(["prefix", "n_digits", "digits", "raw"], kind="stable")["raw"].to_numpy().astype(str)
    return np.sort(unique)


def build_interaction_data(
    inter: SourceTable,
    items: SourceTable,
    columns: InteractionColumns,
    item_columns: ItemColumns,
    options: ValidationOptions,
    source: str,
    source_sha256: str,
    column_flags: bool = True,
) -> InteractionData:
    """Validate raw tables and map ids; the one place where every reader ends up.

    Args:
        inter: raw interactions (identifier cells as ``str``).
        items: raw item metadata.
        columns / item_columns: where the fields are.
        options: what to do with fixable problems.
        column_flags: name ``collab-llm prepare``'s column flags (``--user-col`` ...) when a column is missing
            (False for the MovieLens readers, whose columns are fixed).
    Returns:
        InteractionData with ``n_users`` / ``n_items`` counting only users / items that have interactions
        (unless ``options.keep_items_without_interactions``).
    """
    require_rows(inter)
    require_rows(items)
    require_columns(inter, [columns.user, columns.item, columns.rating, columns.timestamp],
                    "--user-col/--item-col/--rating-col/--timestamp-col" if column_flags else "")
    require_columns(items, [item_columns.item, item_columns.title, *item_columns.text],
                    "--item-id-col/--title-col/--text-cols" if column_flags else "")

    # --- item metadata -------------------------------------------------------------------------
    check_missing(items, [item_columns.item], "error")
    items = items.with_frame(items.frame.assign(**{item_columns.item: items.frame[item_columns.item].astype(str).str.strip()}))
    check_unique_keys(items, item_columns.item)
    all_item_ids = set(items.frame[item_columns.item])
    items = check_missing(items, [item_columns.title], options.on_missing_titles, "--on-missing-titles drop")
    check_no_placeholders(items, [item_columns.title, *item_columns.text])
    meta = items.frame
    untitled = all_item_ids - set(meta[item_columns.item])  # dropped for lack of a title (policy 'drop')
    titles = meta[item_columns.title].astype(str).str.strip()
    dup_titles = titles.duplicated(keep=False)
    if dup_titles.any():
        example = titles[dup_titles].iloc[0]
        ids = meta.loc[dup_titles & (titles == example), item_columns.item].tolist()[:3]
        warn_or_fail(
            options.on_duplicate_titles,
            f"{items.path}: column {item_columns.title!r}: {int(dup_titles.sum())} items share a title with another "
            f"item, e.g. {show(example)} for items {[str(i) for i in ids]}; prompts cannot tell them apart "
            "(--on-duplicate-titles chooses error, warn or ignore; for MovieLens --title-with-year disambiguates most)",
        )

    # --- interactions --------------------------------------------------------------------------
    inter = check_missing(inter, [columns.user, columns.item, columns.rating, columns.timestamp], options.on_missing_values,
                          "--on-missing-values drop")
    frame = inter.frame
    ratings = to_numeric(inter, columns.rating, "a number (rating)")
    check_rating_range(inter, ratings, columns.rating, options.rating_range)
    stamps = to_unix_seconds(inter, columns.timestamp)
    raw = pd.DataFrame(
        {
            "raw_user": frame[columns.user].astype(str).str.strip().to_numpy(),
            "raw_item": frame[columns.item].astype(str).str.strip().to_numpy(),
            "rating": ratings.to_numpy(),
            "timestamp": stamps.to_numpy(),
            "order": np.arange(len(frame)),
        },
        index=frame.index,
    )

    if untitled:
        on_untitled = raw["raw_item"].isin(untitled).to_numpy()
        if on_untitled.any():
            warnings.warn(
                f"dropping rows: {int(on_untitled.sum())} interaction(s) in {inter.path} on "
                f"{len(untitled)} item(s) dropped for an empty title", stacklevel=2)
            raw = raw.loc[~on_untitled]
    known = raw["raw_item"].isin(set(meta[item_columns.item]))
    if not known.all():
        bad = np.flatnonzero(~known.to_numpy())
        message = (
            f"{inter.where(raw.index[bad[0]])}: column {columns.item!r} value {show(raw['raw_item'].iloc[bad[0]])} has no row "
            f"in the item file {items.path}; {len(bad)} interaction(s) on "
            f"{raw.loc[~known, 'raw_item'].nunique()} unknown item(s) (pass --on-unknown-items drop to drop them)"
        )
        if options.on_unknown_items == "error":
            raise DataValidationError(message)
        warnings.warn(f"dropping rows: {message}", stacklevel=2)
        raw = raw.loc[known.to_numpy()]
    if len(raw) == 0:
        raise DataValidationError(f"{inter.path}: no interactions left after dropping rows (see the warnings above)")

    # --- id maps ---------------------------------------------------------------------------------
    user_raw = natural_order(raw["raw_user"])
    if options.keep_items_without_interactions:
        item_raw = natural_order(meta[item_columns.item])
    else:
        item_raw = natural_order(raw["raw_item"])
    user_codes = pd.Categorical(raw["raw_user"], categories=user_raw).codes.astype(np.int64) + 1
    item_codes = pd.Categorical(raw["raw_item"], categories=item_raw).codes.astype(np.int64) + 1
    interactions = pd.DataFrame(
        {
            "user": user_codes,
            "item": item_codes,
            "rating": raw["rating"].to_numpy(dtype=np.float64),
            "timestamp": raw["timestamp"].to_numpy(dtype=np.int64),
            "order": raw["order"].to_numpy(),
        },
        index=raw.index,
    )
    # Chronological order within each user, ties kept in file order.
    interactions = interactions.sort_values(["user", "timestamp", "order"], kind="stable")
    dup = interactions.duplicated(["user", "item"], keep="last")
    if dup.any() and options.on_duplicates != "keep":
        first = interactions.loc[dup].sort_values("order").iloc[0]
        message = (
            f"{inter.where(first.name)}: user {str(user_raw[int(first['user']) - 1])!r} interacts with item "
            f"{str(item_raw[int(first['item']) - 1])!r} more than once (columns {columns.user!r}, {columns.item!r}); "
            f"{int(dup.sum())} duplicate row(s) "
            "(pass --on-duplicates drop to keep the latest, or --on-duplicates keep to keep all)"
        )
        if options.on_duplicates == "error":
            raise DataValidationError(message)
        warnings.warn(f"dropping rows: {message}", stacklevel=2)
        interactions = interactions.loc[~dup.to_numpy()]
        # Dropping duplicates keeps one row of every (user, item) pair, so the id maps stay contiguous.
    interactions = interactions.drop(columns="order").reset_index(drop=True)
    meta_by_id = meta.set_index(item_columns.item)
    item_table = pd.DataFrame(
        {
            "item": np.arange(1, len(item_raw) + 1, dtype=np.int64),
            "raw_id": item_raw.astype(str),
            "title": titles.set_axis(meta[item_columns.item].to_numpy()).loc[item_raw].to_numpy().astype(str),
        }
    )
    for col in item_columns.text:
        item_table[col] = meta_by_id.loc[item_raw, col].astype(str).to_numpy()
    user_table = pd.DataFrame({"user": np.arange(1, len(user_raw) + 1, dtype=np.int64), "raw_id": user_raw.astype(str)})
    return InteractionData(
        interactions=interactions,
        items=item_table,
        users=user_table,
        source=source,
        source_sha256=source_sha256,
    )
