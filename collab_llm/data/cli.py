"""``collab-llm prepare``: read a dataset, write one protocol split folder.

Examples::

    collab-llm prepare --dataset ml-100k --protocol loo --out splits/ml100k-loo --seed 0
    collab-llm prepare --dataset ml-1m --protocol collm --out splits/ml1m-collm
    collab-llm prepare --dataset planted --protocol loo --out splits/planted-loo --planted-follow 0.9
    collab-llm prepare --interactions my.csv --items items.csv --user-col uid --item-col iid \\
        --protocol random --out splits/mine --on-duplicates drop
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Sequence

from collab_llm.data.interactions import InteractionColumns, InteractionData, ItemColumns
from collab_llm.data.nextitem import prepare_nextitem
from collab_llm.data.random_split import prepare_random_split
from collab_llm.data.readers import read_dataset, read_interactions
from collab_llm.data.validation import ValidationOptions
from collab_llm.data.yesno import prepare_collm, prepare_tallrec

PROTOCOLS = ("loo", "llara", "random", "collm", "tallrec")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="collab-llm prepare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", choices=("ml-100k", "ml-1m", "planted"),
                     help="a cached MovieLens dataset (see `collab-llm assets`), or 'planted': synthetic data whose only "
                          "signal is planted collaborative structure (collab_llm.data.planted; writes planted.json)")
    src.add_argument("--interactions", type=Path, help="your interaction file (.csv/.tsv/.parquet)")
    p.add_argument("--items", type=Path, help="your item file (with --interactions)")
    p.add_argument("--protocol", choices=PROTOCOLS, required=True)
    p.add_argument("--out", type=Path, required=True, help="split folder to write (replaced atomically)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", default=None, help="asset cache (default $COLLAB_LLM_CACHE or ~/.cache/collab_llm)")
    p.add_argument("--title-with-year", action="store_true", help="MovieLens titles as 'Toy Story (1995)'")
    p.add_argument("--n-candidates", type=int, default=20)
    p.add_argument("--max-history", type=int, default=None)
    for name in ("user", "item", "rating", "timestamp"):
        p.add_argument(f"--{name}-col", default=name)
    p.add_argument("--item-id-col", default="item", help="item id column of --items")
    p.add_argument("--title-col", default="title")
    p.add_argument("--text-cols", nargs="*", default=[], help="extra item text columns to keep")
    p.add_argument("--on-duplicates", choices=("error", "drop", "keep"), default="error")
    p.add_argument("--on-unknown-items", choices=("error", "drop"), default="error")
    p.add_argument("--on-missing-values", choices=("error", "drop"), default="error")
    p.add_argument("--on-missing-titles", choices=("error", "drop"), default="error")
    p.add_argument("--on-duplicate-titles", choices=("error", "warn", "ignore"), default="warn")
    g = p.add_argument_group("planted dataset (--dataset planted; generator seed = --seed)")
    for flag, kind, default in (("users", int, 1000), ("items", int, 500), ("clusters", int, 10), ("follow", float, 0.9),
                                ("min-length", int, 20), ("max-length", int, 40), ("successors", int, 3)):
        g.add_argument(f"--planted-{flag}", type=kind, default=default)
    g.add_argument("--planted-title-style", choices=("words", "ids"), default="words")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    options = ValidationOptions(
        on_missing_values=args.on_missing_values, on_duplicates=args.on_duplicates,
        on_unknown_items=args.on_unknown_items, on_missing_titles=args.on_missing_titles,
        on_duplicate_titles=args.on_duplicate_titles,
    )
    t0 = time.perf_counter()
    data: InteractionData
    structure = None
    if args.dataset == "planted":
        from collab_llm.data.planted import generate_planted_with_structure

        data, structure = generate_planted_with_structure(
            args.planted_users, args.planted_items, args.planted_clusters, args.planted_follow,
            args.planted_min_length, args.planted_max_length, args.planted_successors, args.planted_title_style, args.seed)
    elif args.dataset is not None:
        from collab_llm.assets import ensure_assets

        paths = ensure_assets(args.cache)
        folder = paths.ml100k if args.dataset == "ml-100k" else paths.ml1m
        data = read_dataset(args.dataset, folder, options, args.title_with_year)
    else:
        if args.items is None:
            raise SystemExit("--items is required with --interactions")
        data = read_interactions(
            args.interactions, args.items,
            InteractionColumns(args.user_col, args.item_col, args.rating_col, args.timestamp_col),
            ItemColumns(args.item_id_col, args.title_col, tuple(args.text_cols)), options,
        )
    if args.protocol in ("loo", "llara"):
        out = prepare_nextitem(data, args.out, protocol=args.protocol, seed=args.seed,
                               n_candidates=args.n_candidates, max_history=args.max_history)
    elif args.protocol == "random":
        out = prepare_random_split(data, args.out, seed=args.seed)
    elif args.protocol == "collm":
        out = prepare_collm(data, args.out, seed=args.seed)
    else:
        out = prepare_tallrec(data, args.out, seed=args.seed)
    extra = ""
    if structure is not None:
        from collab_llm.data.loading import load_split
        from collab_llm.data.planted import planted_report
        from collab_llm.io import write_json

        split = load_split(out)
        report = planted_report(structure, data, {n: split.table(n) for n in ("valid", "test") if n in split.table_names})
        write_json(Path(out) / "planted.json", report)
        if report["oracle_hr1_test"] is not None:
            extra = f"; oracle HR@1 valid {report['oracle_hr1_valid']:.3f} test {report['oracle_hr1_test']:.3f}"
    print(f"[prepare] {args.protocol} on {data.source}: {out} ({time.perf_counter() - t0:.1f}s){extra}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
