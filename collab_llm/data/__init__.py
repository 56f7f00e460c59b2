"""Data layer: read + validate interactions, write protocol splits, load them back.

Quick API (details in each module's docstring; formats in docs/DESIGN.md "Data layer")::

    from collab_llm.assets import ensure_assets
    from collab_llm import data

    paths = ensure_assets()                                  # or find_assets() / the `real_assets` test fixture
    ml100k = data.read_movielens_100k(paths.ml100k)          # -> InteractionData (ids 1..n, 0 = padding)
    ml1m = data.read_movielens_1m(paths.ml1m)                #    options=ValidationOptions(...), title_with_year=False
    own = data.read_interactions("inter.csv", "items.parquet",
                                 data.InteractionColumns(user="uid", item="iid", rating="r", timestamp="ts"),
                                 data.ItemColumns(item="iid", title="name", text=("genre",)),
                                 data.ValidationOptions(on_duplicates="drop"))

    data.prepare_nextitem(ml100k, "splits/ml100k-loo", protocol="loo", seed=0)      # n_candidates=20, max_history=50
    data.prepare_nextitem(ml100k, "splits/ml100k-llara", protocol="llara", seed=0)  # users 8:1:1, history 3..10
    data.prepare_random_split(ml100k, "splits/ml100k-random", ratios=(0.8, 0.1, 0.1), seed=0)
    data.prepare_yesno(ml1m, "splits/ml1m-collm", preset="collm")        # = prepare_collm(...)
    data.prepare_yesno(ml100k, "splits/ml100k-tallrec", preset="tallrec", seed=0)  # + train_16/64/256

    split = data.load_split("splits/ml100k-loo")   # PreparedSplit
    split.manifest, split.items, split.users, split.interactions, split.table("test"), split.train_interactions()

Command line: ``collab-llm prepare --dataset ml-100k --protocol loo --out DIR [--seed 0]`` (protocols loo,
llara, random, collm, tallrec; ``--interactions/--items`` for your own files; see ``collab_llm.data.cli``).
Errors on bad input are ``DataValidationError`` naming file, column and line/row.

Tables: next-item ``user, history, target, candidates, position``; yes/no ``user, item, label, rating,
timestamp, history, warm`` (+ ``liked, disliked`` for tallrec). List columns load as int64 numpy arrays.
``items.parquet``: ``item, raw_id, title, release_year, genre`` for MovieLens.
"""

from collab_llm.data.interactions import InteractionColumns, InteractionData, ItemColumns, build_interaction_data
from collab_llm.data.loading import PreparedSplit, load_split
from collab_llm.data.nextitem import prepare_nextitem
from collab_llm.data.random_split import prepare_random_split
from collab_llm.data.readers import (
    read_dataset,
    read_interactions,
    read_movielens_1m,
    read_movielens_100k,
)
from collab_llm.data.validation import DataValidationError, ValidationOptions
from collab_llm.data.yesno import prepare_collm, prepare_tallrec, prepare_yesno

__all__ = [
    "DataValidationError",
    "InteractionColumns",
    "InteractionData",
    "ItemColumns",
    "PreparedSplit",
    "ValidationOptions",
    "build_interaction_data",
    "load_split",
    "prepare_collm",
    "prepare_nextitem",
    "prepare_random_split",
    "prepare_tallrec",
    "prepare_yesno",
    "read_dataset",
    "read_interactions",
    "read_movielens_100k",
    "read_movielens_1m",
]
