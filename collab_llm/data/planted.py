"""Planted-signal synthetic data: collaborative structure is the ONLY signal, titles say nothing.

What is planted (all seeded by ``seed``):

- **Clusters.** The ``n_items`` items are split at random into ``n_clusters`` hidden clusters of
  near-equal size (sizes differ by at most one). Each user belongs to one cluster (uniform).
- **Chains.** Every item has ``n_successors`` distinct successor items drawn from its own cluster, with
  fixed decreasing transition weights ``2^-k`` normalised (3 successors: 4/7, 2/7, 1/7). Together they
  form one sparse Markov chain per cluster.
- **Sequences.** Each user has ``uniform[min_length, max_length]`` interactions and never repeats an item.
  The first item is uniform over the user's cluster. Each next step, with probability ``follow``, is
  drawn from the *current* (last) item's successors not yet seen (weights renormalised); if all of them
  have been seen, uniformly from the unseen items of the current item's cluster. Otherwise (noise,
  probability ``1 - follow``) it is uniform over all unseen items of the catalogue. A noise step can
  thus move a user onto another cluster's chain (the process is Markov in the last item + seen set).
- **Ratings.** 5.0 for the first item and for every step that followed the structure, 1.0 for a noise
  step: ``rating >= 4`` means "followed the chain" (the CoLLM Yes/No label).
- **Timestamps.** Each user's interactions are evenly spaced over 2000-05-01 .. 2002-03-01 (UTC) with
  seeded jitter, strictly increasing per user, so the ``collm`` preset (month slots from 2000-04, 20-month
  window ending one month before the last) yields non-empty train / valid / test tables.
- **Titles** carry no information: ``title_style="words"`` gives two capitalised pseudo-words
  (``"Velo Mirtan"``) from a small seeded vocabulary, unique per item, assigned in item-id order from an RNG
  stream independent of the cluster and chain draws; ``title_style="ids"`` gives ``"Item 17"``.

The hidden structure is returned by :func:`generate_planted_with_structure` as a
:class:`PlantedStructure`; :func:`planted_oracle_scores` scores candidates by their true probability of
being next (``follow * P_chain(c | last, unseen) + (1 - follow) / n_unseen``, exactly how the generator
draws), and :func:`planted_oracle_hr1` gives the oracle's HR@1 on a next-item table. ``collab-llm
prepare --dataset planted`` writes ``planted.json`` (parameters, description, oracle HR@1 on valid/test
for the next-item protocols) into the split folder.

Example::

    from collab_llm.data.planted import generate_planted_with_structure, planted_oracle_scores
    data, structure = generate_planted_with_structure(n_users=1000, n_items=500, seed=0)
    scores = planted_oracle_scores(structure, history=[3, 17], candidates=[5, 9, 40])
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import numpy as np
import pandas as pd

from collab_llm.data.interactions import InteractionData

#: Version tag of the generator; part of the parameters (and so of ``source_sha256``).
GENERATOR = "planted-v1"
#: Interactions are spread over [START, END) in unix seconds (UTC): 2000-05-01 .. 2002-03-01.
START = 957139200
END = 1014940800
FOLLOW_RATING = 5.0
NOISE_RATING = 1.0

DESCRIPTION = (
    "Planted-signal synthetic data (collab_llm.data.planted): items are split at random into hidden clusters; "
    "every item has n_successors successors in its own cluster with fixed decreasing weights (2^-k, normalised), "
    "forming a sparse Markov chain per cluster. Each user belongs to one cluster, starts at a uniform item of it "
    "and never repeats an item; each next step follows the last item's unseen successors (renormalised; if none "
    "is left, a uniform unseen item of that item's cluster) with probability `follow`, else is uniform over all "
    "unseen items (noise). Ratings are 5.0 for structure steps (and the first item), 1.0 for noise steps. Titles "
    "are independent of the structure, so collaborative structure is the only signal. The oracle knows the "
    "structure and ranks candidates by their true next-item probability; HR@1 counts ties pessimistically "
    "(a hit only when the target scores strictly above every other candidate)."
)


@dataclass(frozen=True)
class PlantedStructure:
    """The hidden structure behind a planted dataset (ids as in the :class:`InteractionData`, index 0 = padding).

    Attributes:
        item_cluster: ``int64[n_items + 1]``, cluster ``0..n_clusters-1`` of each item (``-1`` at index 0).
        user_cluster: ``int64[n_users + 1]``, cluster of each user (``-1`` at index 0).
        successors: ``int64[n_items + 1, n_successors]``, each item's successors, most likely first (row 0 = 0).
        successor_probs: ``float64[n_items + 1, n_successors]``, their transition probabilities (rows sum to 1).
        follow: probability that a step follows the structure.
        params: the generator parameters (as written to ``planted.json``).
    """

    item_cluster: np.ndarray
    user_cluster: np.ndarray
    successors: np.ndarray
    successor_probs: np.ndarray
    follow: float
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def n_items(self) -> int:
        return len(self.item_cluster) - 1

    @property
    def n_clusters(self) -> int:
        return int(self.item_cluster[1:].max()) + 1

    def cluster_items(self, cluster: int) -> np.ndarray:
        """Item ids of one cluster (sorted)."""
        return np.flatnonzero(self.item_cluster == cluster).astype(np.int64)


def _check_args(n_users: int, n_items: int, n_clusters: int, follow: float, min_length: int, max_length: int,
                n_successors: int, title_style: str) -> None:
    if n_users < 1:
        raise ValueError(f"n_users must be >= 1; got {n_users}")
    if n_clusters < 1:
        raise ValueError(f"n_clusters must be >= 1; got {n_clusters}")
    if not 0.0 <= follow <= 1.0:
        raise ValueError(f"follow must be in [0, 1]; got {follow}")
    if min_length < 3:
        raise ValueError(f"min_length must be >= 3 (the loo protocol needs 3 interactions per user); got {min_length}")
    if max_length < min_length:
        raise ValueError(f"max_length must be >= min_length={min_length}; got {max_length}")
    if n_successors < 1:
        raise ValueError(f"n_successors must be >= 1; got {n_successors}")
    if n_items < n_clusters:
        raise ValueError(f"n_items must be >= n_clusters={n_clusters}; got {n_items}")
    smallest = n_items // n_clusters
    if smallest < max_length + n_successors:
        raise ValueError(
            f"n_items={n_items} too small: the smallest cluster (n_items // n_clusters = {smallest} items) must hold at "
            f"least max_length + n_successors = {max_length + n_successors} items (raise n_items, or lower n_clusters / "
            "max_length / n_successors)")
    if title_style not in ("words", "ids"):
        raise ValueError(f"title_style must be 'words' or 'ids'; got {title_style!r}")


def _pseudo_words(rng: np.random.Generator, n: int) -> list[str]:
    """``n`` distinct capitalised pseudo-words of 2-3 consonant-vowel syllables (+ optional final consonant)."""
    onsets = list("bdfgklmnprstvz") + ["br", "st", "tr", "ch", "th"]
    vowels = list("aeiou") + ["ai", "ou"]
    codas = ["", "", "", "n", "r", "l", "s"]
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < n:
        k = int(rng.integers(2, 4))
        word = "".join(onsets[rng.integers(len(onsets))] + vowels[rng.integers(len(vowels))] for _ in range(k))
        word = (word + codas[rng.integers(len(codas))]).capitalize()
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


def _titles(n_items: int, style: str, rng: np.random.Generator) -> list[str]:
    """Unique titles for items 1..n_items, drawn without looking at any structure."""
    if style == "ids":
        return [f"Item {i}" for i in range(1, n_items + 1)]
    vocab = max(32, int(np.ceil(3 * np.sqrt(n_items))))  # small vocabulary: words recur, pairs stay unique
    words = _pseudo_words(rng, vocab)
    pairs: list[str] = []
    used: set[tuple[int, int]] = set()
    while len(pairs) < n_items:
        a, b = (int(x) for x in rng.choice(vocab, size=2, replace=False))
        if (a, b) not in used:
            used.add((a, b))
            pairs.append(f"{words[a]} {words[b]}")
    return pairs


def _follow_distribution(structure: PlantedStructure, last: int, seen: np.ndarray) -> np.ndarray:
    """P(next = i | follow branch) over items ``0..n_items`` given the last item and the seen mask."""
    p = np.zeros(len(seen), dtype=np.float64)
    succ = structure.successors[last]
    open_ = ~seen[succ]
    if open_.any():
        w = structure.successor_probs[last][open_]
        p[succ[open_]] = w / w.sum()
    else:
        pool = (structure.item_cluster == structure.item_cluster[last]) & ~seen
        pool[0] = False
        p[pool] = 1.0 / pool.sum()
    return p


def _seen_mask(n_items: int, history: Sequence[int] | np.ndarray) -> np.ndarray:
    seen = np.zeros(n_items + 1, dtype=bool)
    seen[0] = True  # padding is never a candidate
    seen[np.asarray(history, dtype=np.int64)] = True
    return seen


def next_item_distribution(structure: PlantedStructure, history: Sequence[int] | np.ndarray,
                           user: int | None = None) -> np.ndarray:
    """True ``P(next item = i)`` for ``i = 0..n_items`` (index 0 always 0) given the user's FULL history.

    ``history`` must be every earlier item of the user, chronological (the unseen set depends on all of them).
    An empty history needs ``user``: the first item is uniform over the user's cluster.
    """
    n = structure.n_items
    seen = _seen_mask(n, history)
    if len(history) == 0:
        if user is None:
            raise ValueError("an empty history needs `user` (the first item is uniform over the user's cluster)")
        p = (structure.item_cluster == structure.user_cluster[user]).astype(np.float64)
        return p / p.sum()
    n_unseen = int((~seen).sum())
    p = structure.follow * _follow_distribution(structure, int(history[-1]), seen)
    p[~seen] += (1.0 - structure.follow) / n_unseen
    return p


def planted_oracle_scores(structure: PlantedStructure, history: Sequence[int] | np.ndarray,
                          candidates: Sequence[int] | np.ndarray, user: int | None = None) -> np.ndarray:
    """The oracle's scores ``float64[len(candidates)]``: each candidate's true probability of being next.

    ``follow * P_chain(c | last item, unseen) + (1 - follow) / n_unseen`` for unseen candidates, 0 for items
    already in ``history`` (the user's full chronological history; see :func:`next_item_distribution`).
    """
    return next_item_distribution(structure, history, user)[np.asarray(candidates, dtype=np.int64)]


def generate_planted_with_structure(
    n_users: int = 1000,
    n_items: int = 500,
    n_clusters: int = 10,
    follow: float = 0.9,
    min_length: int = 20,
    max_length: int = 40,
    n_successors: int = 3,
    title_style: Literal["words", "ids"] = "words",
    seed: int = 0,
) -> tuple[InteractionData, PlantedStructure]:
    """Generate a planted-signal dataset (module docstring) and its hidden structure.

    Args:
        n_users, n_items: sizes (ids ``1..n``; every user has ``min_length..max_length`` interactions).
        n_clusters: hidden item / user clusters; ``n_items // n_clusters`` must be ``>= max_length + n_successors``.
        follow: probability that a step follows the chain (the rest is uniform noise).
        min_length, max_length: sequence length range per user (inclusive; ``min_length >= 3``).
        n_successors: successors per item (weights ``2^-k`` normalised, most likely first).
        title_style: ``"words"`` (two pseudo-words, ``"Velo Mirtan"``) or ``"ids"`` (``"Item 17"``).
        seed: everything is a function of the parameters.
    Returns:
        ``(data, structure)``: ``data.source == "planted"``, ``data.source_sha256`` = sha256 of the parameters'
        canonical JSON; ``structure.params`` are those parameters.
    Raises:
        ValueError: naming the offending argument.
    """
    _check_args(n_users, n_items, n_clusters, follow, min_length, max_length, n_successors, title_style)
    params: dict[str, Any] = {
        "generator": GENERATOR, "n_users": int(n_users), "n_items": int(n_items), "n_clusters": int(n_clusters),
        "follow": float(follow), "min_length": int(min_length), "max_length": int(max_length),
        "n_successors": int(n_successors), "title_style": title_style, "seed": int(seed),
    }
    canonical = json.dumps(params, sort_keys=True, separators=(",", ":"))
    # Independent streams: structure, sequences, timestamps, titles.
    rng_struct, rng_seq, rng_time, rng_title = (np.random.default_rng([int(seed), k]) for k in range(4))

    # --- hidden structure --------------------------------------------------------------------------
    item_cluster = np.full(n_items + 1, -1, dtype=np.int64)
    item_cluster[1 + rng_struct.permutation(n_items)] = np.arange(n_items) % n_clusters
    weights = 0.5 ** np.arange(n_successors)
    weights = weights / weights.sum()
    successors = np.zeros((n_items + 1, n_successors), dtype=np.int64)
    for c in range(n_clusters):
        members = np.flatnonzero(item_cluster == c)
        for i in members:
            others = members[members != i]
            successors[i] = rng_struct.choice(others, size=n_successors, replace=False)
    successor_probs = np.zeros((n_items + 1, n_successors), dtype=np.float64)
    successor_probs[1:] = weights
    user_cluster = np.full(n_users + 1, -1, dtype=np.int64)
    user_cluster[1:] = rng_struct.integers(0, n_clusters, size=n_users)
    structure = PlantedStructure(item_cluster, user_cluster, successors, successor_probs, float(follow), params)

    # --- sequences ---------------------------------------------------------------------------------
    lengths = rng_seq.integers(min_length, max_length + 1, size=n_users)
    all_items = np.arange(n_items + 1)
    users_col, items_col, ratings_col = [], [], []
    for u in range(1, n_users + 1):
        seen = np.zeros(n_items + 1, dtype=bool)
        seen[0] = True
        cluster = structure.cluster_items(int(user_cluster[u]))
        item = int(cluster[rng_seq.integers(len(cluster))])
        seq, rates = [item], [FOLLOW_RATING]
        seen[item] = True
        for _ in range(int(lengths[u - 1]) - 1):
            if rng_seq.random() < follow:
                p = _follow_distribution(structure, item, seen)
                item = int(rng_seq.choice(all_items, p=p))
                rates.append(FOLLOW_RATING)
            else:
                unseen = np.flatnonzero(~seen)
                item = int(unseen[rng_seq.integers(len(unseen))])
                rates.append(NOISE_RATING)
            seen[item] = True
            seq.append(item)
        users_col.append(np.full(len(seq), u, dtype=np.int64))
        items_col.append(np.asarray(seq, dtype=np.int64))
        ratings_col.append(np.asarray(rates, dtype=np.float64))

    # --- timestamps: evenly spaced over [START, END) per user, jitter < gap / 2 keeps them increasing ---
    stamps = []
    for n in lengths:
        gap = (END - START) / int(n)
        jitter = rng_time.uniform(-0.4, 0.4, size=int(n)) * gap
        stamps.append(np.floor(START + (np.arange(int(n)) + 0.5) * gap + jitter).astype(np.int64))

    interactions = pd.DataFrame({
        "user": np.concatenate(users_col), "item": np.concatenate(items_col),
        "rating": np.concatenate(ratings_col), "timestamp": np.concatenate(stamps),
    })
    items = pd.DataFrame({
        "item": np.arange(1, n_items + 1, dtype=np.int64),
        "raw_id": [str(i) for i in range(1, n_items + 1)],
        "title": _titles(n_items, title_style, rng_title),
    })
    users = pd.DataFrame({"user": np.arange(1, n_users + 1, dtype=np.int64),
                          "raw_id": [str(u) for u in range(1, n_users + 1)]})
    data = InteractionData(interactions=interactions, items=items, users=users, source="planted",
                           source_sha256=hashlib.sha256(canonical.encode()).hexdigest())
    return data, structure


def generate_planted(
    n_users: int = 1000,
    n_items: int = 500,
    n_clusters: int = 10,
    follow: float = 0.9,
    min_length: int = 20,
    max_length: int = 40,
    n_successors: int = 3,
    title_style: Literal["words", "ids"] = "words",
    seed: int = 0,
) -> InteractionData:
    """The planted-signal dataset alone (see :func:`generate_planted_with_structure` for the arguments)."""
    return generate_planted_with_structure(n_users, n_items, n_clusters, follow, min_length, max_length,
                                           n_successors, title_style, seed)[0]


def planted_oracle_hr1(structure: PlantedStructure, data: InteractionData, table: pd.DataFrame) -> float:
    """The oracle's HR@1 on a next-item table (columns ``user, position, target, candidates``).

    The oracle sees the user's full history (items at positions ``< position`` in ``data``), not the stored
    (possibly capped) one. Ties are pessimistic: a hit only when the target scores strictly above every
    other candidate. Returns NaN for an empty table.
    """
    if len(table) == 0:
        return float("nan")
    inter = data.interactions
    order = inter["user"].to_numpy(np.int64)
    items = inter["item"].to_numpy(np.int64)
    starts = np.searchsorted(order, np.arange(data.n_users + 2))
    hits = 0
    for user, position, target, candidates in zip(table["user"], table["position"], table["target"], table["candidates"]):
        history = items[starts[user]: starts[user] + int(position)]
        cand = np.asarray(candidates, dtype=np.int64)
        scores = planted_oracle_scores(structure, history, cand, int(user))
        t = scores[cand == target][0]
        hits += bool((scores[cand != target] < t).all())
    return hits / len(table)


def planted_report(structure: PlantedStructure, data: InteractionData, tables: dict[str, pd.DataFrame] | None = None) -> dict[str, Any]:
    """What ``planted.json`` holds: parameters, description, and (for next-item tables ``valid`` / ``test``)
    ``oracle_hr1_valid``, ``oracle_hr1_test``, ``n_valid``, ``n_test`` (``None`` for other protocols)."""
    report: dict[str, Any] = {"params": dict(structure.params), "description": DESCRIPTION,
                              "oracle_ties": "pessimistic (hit only if the target scores strictly highest)",
                              "n_users": data.n_users, "n_items": data.n_items, "n_interactions": len(data.interactions)}
    for name in ("valid", "test"):
        table = (tables or {}).get(name)
        ok = table is not None and {"position", "candidates", "target"} <= set(table.columns)
        report[f"oracle_hr1_{name}"] = planted_oracle_hr1(structure, data, table) if ok else None
        report[f"n_{name}"] = len(table) if table is not None else None
    return report
