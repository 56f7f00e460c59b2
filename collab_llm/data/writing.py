"""Writing a prepared split folder: parquet tables + ``manifest.json``, atomically.

Folder layout (docs/DESIGN.md): ``items.parquet``, ``users.parquet``, ``interactions.parquet`` (with a
``split`` column in {train, valid, test, unused}) and the protocol's tables, plus ``manifest.json``
with ``protocol``, ``source``, ``source_sha256``, ``seed``, ``filters``, ``tables`` (rows per table),
``n_users``, ``n_items``, protocol-specific ``stats`` and ``files`` (sha256 of every table). The folder is built in a temporary sibling
and renamed (:func:`collab_llm.io.atomic_dir`), so a half-written split never exists.

An existing folder is replaced only when it is a split folder this module wrote (:func:`foreign_content`
finds nothing else in it); anything else is refused with :class:`~collab_llm.errors.UserError`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import collab_llm
from collab_llm.data.interactions import InteractionData
from collab_llm.data.ragged import Ragged
from collab_llm.errors import UserError
from collab_llm.fingerprint import file_checksums
from collab_llm.io import atomic_dir, write_json

SPLITS = ("train", "valid", "test", "unused")
MANIFEST = "manifest.json"
MANIFEST_KEYS = ("protocol", "source", "source_sha256", "tables")
EXTRA_FILES = ("planted.json",)  # written next to the tables by `collab-llm prepare --dataset planted`


def read_split_manifest(folder: str | Path) -> dict | None:
    """The manifest of a split folder written by :func:`write_split`, or None if ``folder`` is not one."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(manifest, dict) or any(k not in manifest for k in MANIFEST_KEYS):
        return None
    if not isinstance(manifest["tables"], dict):
        return None
    return manifest


def foreign_content(folder: str | Path) -> str | None:
    """Why ``folder`` is not a split folder that :func:`write_split` may replace, or None if it may.

    A missing or empty folder may be replaced. Otherwise it must hold a split ``manifest.json`` (with
    ``protocol``, ``source``, ``source_sha256``, ``tables``) and nothing but the files that manifest lists
    (``<table>.parquet``, ``manifest.json``, ``planted.json``).
    """
    folder = Path(folder)
    if folder.is_symlink():
        return "is a symbolic link"
    if os.path.lexists(folder) and not folder.is_dir():
        return "is an existing file, not a folder"
    if not folder.exists():
        return None
    entries = sorted(p.name for p in folder.iterdir())
    if not entries:
        return None
    manifest = read_split_manifest(folder)
    if manifest is None:
        return f"is a non-empty folder without a split manifest.json (it holds {entries[:3]}{' ...' if len(entries) > 3 else ''})"
    allowed = {MANIFEST, *EXTRA_FILES, *(f"{name}.parquet" for name in manifest["tables"])}
    unknown = [e for e in entries if e not in allowed or not (folder / e).is_file() or (folder / e).is_symlink()]
    if unknown:
        return f"is a split folder that also holds files prepare did not write ({unknown[:3]})"
    return None


def require_examples(protocol: str, source: str, counts: Mapping[str, int], why: str) -> None:
    """Refuse to write a split whose train / valid / test example tables (``counts``: rows per table) are
    empty; ``why`` names the protocol's threshold and how many users / rows meet it."""
    empty = [name for name in ("train", "valid", "test") if name in counts and int(counts[name]) == 0]
    if empty:
        raise UserError(f"protocol {protocol} on {source} gives no {'/'.join(empty)} examples ({why}); nothing written "
                        "(use more data or another --protocol)")


def make_table(columns: Mapping[str, np.ndarray | Ragged]) -> pa.Table:
    """Arrow table with explicit types: ints -> int64, floats -> float64, bools -> bool,
    :class:`Ragged` -> ``list<int64>``, strings -> string."""
    arrays: dict[str, pa.Array] = {}
    for name, values in columns.items():
        if isinstance(values, Ragged):
            arrays[name] = values.to_arrow()
            continue
        values = np.asarray(values)
        if values.dtype == bool:
            arrays[name] = pa.array(values, pa.bool_())
        elif np.issubdtype(values.dtype, np.integer):
            arrays[name] = pa.array(values.astype(np.int64), pa.int64())
        elif np.issubdtype(values.dtype, np.floating):
            arrays[name] = pa.array(values.astype(np.float64), pa.float64())
        else:
            arrays[name] = pa.array(values.astype(str), pa.string())
    return pa.table(arrays)


def write_split(
    out: str | Path,
    data: InteractionData,
    split: np.ndarray,
    tables: Mapping[str, pa.Table],
    protocol: str,
    seed: int,
    filters: Mapping[str, object],
    stats: Mapping[str, object],
) -> Path:
    """Write a prepared split folder atomically and return its path.

    Args:
        out: target folder (replaced if it exists, only once the new one is complete, and only if it is a
            split folder written here: see :func:`foreign_content`; anything else raises ``UserError``).
        data: the id-mapped data (its items / users / interactions tables are written).
        split: ``[len(data.interactions)]`` strings in :data:`SPLITS`, aligned with ``data.interactions``.
        tables: protocol tables by name (``"train"`` -> ``train.parquet``).
        protocol: e.g. ``"nextitem/loo"``.
        seed, filters, stats: recorded in the manifest.
    """
    split = np.asarray(split).astype(str)
    if len(split) != len(data.interactions):
        raise ValueError(f"split has {len(split)} entries for {len(data.interactions)} interactions")
    unknown = sorted(set(np.unique(split)) - set(SPLITS))
    if unknown:
        raise ValueError(f"split values {unknown} not in {SPLITS}")
    inter = data.interactions
    inter_table = make_table(
        {
            "user": inter["user"].to_numpy(),
            "item": inter["item"].to_numpy(),
            "rating": inter["rating"].to_numpy(),
            "timestamp": inter["timestamp"].to_numpy(),
            "split": split,
        }
    )
    all_tables: dict[str, pa.Table] = {
        "items": pa.Table.from_pandas(data.items, preserve_index=False),
        "users": pa.Table.from_pandas(data.users, preserve_index=False),
        "interactions": inter_table,
        **tables,
    }
    counts = {s: int((split == s).sum()) for s in SPLITS}
    manifest = {
        "protocol": protocol,
        "source": data.source,
        "source_sha256": data.source_sha256,
        "seed": int(seed),
        "filters": dict(filters),
        "tables": {name: t.num_rows for name, t in all_tables.items()},
        "n_users": data.n_users,
        "n_items": data.n_items,
        "n_interactions": len(inter),
        "interactions_per_split": counts,
        "stats": dict(stats),
        "collab_llm_version": collab_llm.__version__,
    }
    problem = foreign_content(out)
    if problem is not None:
        raise UserError(f"{out}: {problem}; refusing to replace it (choose another --out)")
    with atomic_dir(out, may_replace=lambda p: foreign_content(p) is None) as tmp:
        for name, table in all_tables.items():
            pq.write_table(table, tmp / f"{name}.parquet")
        # sha256 of every table: the manifest's hash is the split's fingerprint (collab_llm.fingerprint)
        manifest["files"] = file_checksums(tmp, [f"{name}.parquet" for name in all_tables])
        write_json(tmp / MANIFEST, manifest)
    return Path(out)


def table_stats(table: pa.Table) -> dict[str, int]:
    """Rows, distinct users and (when present) distinct items / targets of one protocol table."""
    out = {"rows": table.num_rows}
    for col in ("user", "item", "target"):
        if col in table.column_names:
            out[f"{col}s"] = len(np.unique(table.column(col).to_numpy()))
    return out
