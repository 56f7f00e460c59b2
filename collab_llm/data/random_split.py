"""Per-user random split of interactions (for general CF models such as BPR-MF).

Each user's interactions are shuffled with the seed; the first ``round(ratios[0] * n)`` are train, the
next ``round(ratios[1] * n)`` valid, the rest test (a user with n = 3 gets 2 / 0 / 1 at 80/10/10).
Only ``interactions.parquet`` (its ``split`` column) is written; there are no example tables.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from collab_llm.data.interactions import InteractionData
from collab_llm.data.ragged import positions_in_group
from collab_llm.data.writing import require_examples, write_split


def random_split_labels(users: np.ndarray, ratios: tuple[float, float, float], seed: int) -> np.ndarray:
    """``[N]`` labels in {train, valid, test} for interactions with these ``users`` (any order)."""
    users = np.asarray(users, dtype=np.int64)
    if len(ratios) != 3 or min(ratios) < 0 or sum(ratios) <= 0:
        raise ValueError(f"ratios must be three non-negative numbers; got {ratios}")
    total = float(sum(ratios))
    keys = np.random.default_rng(seed).random(len(users))
    order = np.lexsort((keys, users))
    rank = np.empty(len(users), dtype=np.int64)
    rank[order] = positions_in_group(users[order])
    n = np.bincount(users)[users]
    n_train = np.rint(n * ratios[0] / total).astype(np.int64)
    n_valid = np.rint(n * ratios[1] / total).astype(np.int64)
    labels = np.full(len(users), "test", dtype=object)
    labels[rank < n_train + n_valid] = "valid"
    labels[rank < n_train] = "train"
    return labels.astype(str)


def prepare_random_split(
    data: InteractionData, out: str | Path, ratios: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0
) -> Path:
    """Write a folder whose ``interactions.parquet`` carries a per-user random train/valid/test split."""
    labels = random_split_labels(data.interactions["user"].to_numpy(), ratios, seed)
    stats = {name: int((labels == name).sum()) for name in ("train", "valid", "test")}
    per_user = np.bincount(data.interactions["user"].to_numpy())[1:]
    require_examples("random", data.source, {"train": stats["train"], "test": stats["test"]},
                     f"{len(labels)} interactions of {data.n_users} users split per user at ratios {list(ratios)}; "
                     f"the longest user has {int(per_user.max()) if len(per_user) else 0}")
    return write_split(out, data, labels, {}, "random", seed, {"ratios": list(ratios)}, stats)
