"""Small synthetic prepared-split folders in the docs/DESIGN.md formats, for tests and examples.

The interactions follow a learnable pattern: user ``u`` watches items ``start_u, start_u + 1, ...``
(wrapping around the catalog), so a sequential model can learn "next = previous + 1" and MF can
learn user-specific item neighbourhoods.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from collab_llm.io import atomic_dir, write_json


def _sequences(n_users: int, n_items: int, length: int, rng: np.random.Generator) -> dict[int, np.ndarray]:
    out = {}
    for user in range(1, n_users + 1):
        start = int(rng.integers(0, n_items))
        out[user] = (start + np.arange(length)) % n_items + 1
    return out


def write_synthetic_split(
    folder: str | Path,
    protocol: Literal["loo", "random", "yesno"],
    n_users: int = 30,
    n_items: int = 40,
    length: int = 12,
    seed: int = 0,
) -> Path:
    """Write ``manifest.json``, ``interactions.parquet`` and the protocol's tables into ``folder``.

    ``loo``: last item test, second-to-last valid, next-item tables with 20 candidates.
    ``random``: per user 80/10/10 of a shuffled order (train/valid/test in ``interactions.parquet``).
    ``yesno``: label = item id parity agrees with user id parity; chronological 60/20/20 per user.
    """
    if length < 5 or n_items < length + (20 if protocol == "loo" else 0):
        raise ValueError("need length >= 5 and n_items >= length (+ 20 for loo: room for 19 negative candidates)")
    rng = np.random.default_rng(seed)
    seqs = _sequences(n_users, n_items, length, rng)
    rows = []
    tables: dict[str, list[dict]] = {"train": [], "valid": [], "test": []}
    for user, seq in seqs.items():
        if protocol == "loo":
            splits = ["train"] * (length - 2) + ["valid", "test"]
        elif protocol == "random":
            order = rng.permutation(length)
            n_valid = n_test = max(1, length // 10)
            splits = np.array(["train"] * length, dtype=object)
            splits[order[:n_test]] = "test"
            splits[order[n_test:n_test + n_valid]] = "valid"
            splits = list(splits)
        else:
            a, b = int(0.6 * length), int(0.8 * length)
            splits = ["train"] * a + ["valid"] * (b - a) + ["test"] * (length - b)
        for t, (item, split) in enumerate(zip(seq, splits)):
            label = int(item % 2 == user % 2)
            rows.append({"user": user, "item": int(item), "rating": 4.0 if label else 2.0,
                         "timestamp": 1000 * user + t, "split": split})
            if protocol == "loo" and split in ("valid", "test"):
                history = [int(x) for x in seq[:t]]
                pool = np.setdiff1d(np.arange(1, n_items + 1), np.append(seq[:t], item))
                candidates = np.append(rng.choice(pool, 19, replace=False), item)
                tables[split].append({"user": user, "history": history, "target": int(item),
                                      "candidates": [int(c) for c in rng.permutation(candidates)]})
            if protocol == "yesno":
                positives = [int(x) for x in seq[:t] if x % 2 == user % 2][-10:]
                tables[split].append({"user": user, "item": int(item), "label": label, "rating": 4.0 if label else 2.0,
                                      "timestamp": 1000 * user + t, "history": positives, "warm": True})
    inter = pd.DataFrame(rows).astype({"user": "int64", "item": "int64", "rating": "float64", "timestamp": "int64"})
    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        inter.to_parquet(tmp / "interactions.parquet", index=False)
        pd.DataFrame({"item": np.arange(1, n_items + 1), "raw_id": [str(i) for i in range(1, n_items + 1)],
                      "title": [f"Item {i}" for i in range(1, n_items + 1)]}).to_parquet(tmp / "items.parquet", index=False)
        pd.DataFrame({"user": np.arange(1, n_users + 1), "raw_id": [str(u) for u in range(1, n_users + 1)]}).to_parquet(
            tmp / "users.parquet", index=False)
        counts = {"interactions": len(inter), "items": n_items, "users": n_users}
        if protocol != "random":
            for name, table in tables.items():
                pd.DataFrame(table).to_parquet(tmp / f"{name}.parquet", index=False)
                counts[name] = len(table)
        write_json(tmp / "manifest.json", {
            "protocol": protocol, "source": "synthetic", "source_sha256": "", "seed": seed, "filters": {},
            "tables": counts, "n_users": n_users, "n_items": n_items,
        })
    return folder
