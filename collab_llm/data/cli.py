"""``collab-llm prepare``: read a dataset, write one protocol split folder.

Examples::

    collab-llm prepare --dataset ml-100k --protocol loo --out splits/ml100k-loo --seed 0
    collab-llm prepare --dataset ml-1m --protocol collm --out splits/ml1m-collm
    collab-llm prepare --dataset planted --protocol loo --out splits/planted-loo --planted-follow 0.9
    collab-llm prepare --interactions my.csv --items items.csv --user-col uid --item-col iid \\
        --protocol random --out splits/mine --on-duplicates drop

Output safety: ``--out`` must be a new path, an empty folder, or a split folder that prepare wrote
(its ``manifest.json`` and tables, nothing else); replacing such a split needs ``--overwrite``. A file,
a symbolic link, a non-empty folder prepare did not write, a folder that holds an input file, and the
asset cache are refused before anything is read or written. Leftover ``.<out>.tmp-*`` / ``.<out>.old-*``
folders of a killed run are cleaned by the next run that writes ``--out``.
"""

from __future__ import annotations

import argparse
import os
import re
import time
from pathlib import Path
from typing import Sequence

from collab_llm.data.interactions import InteractionColumns, InteractionData, ItemColumns
from collab_llm.data.nextitem import prepare_nextitem
from collab_llm.data.random_split import prepare_random_split
from collab_llm.data.readers import read_dataset, read_interactions
from collab_llm.data.validation import ValidationOptions
from collab_llm.data.writing import foreign_content, read_split_manifest
from collab_llm.errors import UserError
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
    p.add_argument("--out", type=Path, required=True,
                   help="split folder to write atomically: a new path, an empty folder, or (with --overwrite) a split "
                        "folder prepare wrote; anything else is refused")
    p.add_argument("--overwrite", action="store_true", help="replace --out when it holds a split prepare wrote earlier")
    p.add_argument("--encoding", default="utf-8", help="text encoding of --interactions / --items CSV/TSV files")
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


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_out(out: Path, inputs: Sequence[Path], cache: Path | None, overwrite: bool) -> None:
    """Refuse an unsafe ``--out`` before anything is read or written (see the module docstring)."""
    target = Path(os.path.abspath(out.expanduser()))
    resolved = target.resolve()
    for parent in target.parents:
        if os.path.lexists(parent) and not parent.is_dir():
            raise UserError(f"{out}: {parent} is a file, not a folder (choose another --out)")
    for path in inputs:
        source = Path(path).expanduser().resolve()
        if _inside(source, resolved):
            what = "is the input file" if source == resolved else f"holds the input file {path}"
            raise UserError(f"{out}: {what}; refusing to write there (choose another --out)")
    if cache is not None:
        root = Path(cache).expanduser().resolve()
        if _inside(root, resolved) or _inside(resolved, root):
            raise UserError(f"{out}: overlaps the asset cache {root}; refusing to write there (choose another --out)")
    problem = foreign_content(target)
    if problem is not None:
        raise UserError(f"{out}: {problem}; refusing to replace it (choose another --out)")
    manifest = read_split_manifest(target)
    if manifest is not None and not overwrite:
        raise UserError(f"{out}: already holds a prepared split ({manifest['protocol']} of {manifest['source']}); "
                        "pass --overwrite to replace it")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.interactions is not None and args.items is None:
        raise UserError(f"{args.interactions}: --items is required with --interactions (the item file with titles)")
    from collab_llm.assets import cache_root

    inputs = [p for p in (args.interactions, args.items) if p is not None]
    check_out(args.out, inputs, cache_root(args.cache), args.overwrite)
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

        try:
            data, structure = generate_planted_with_structure(
                args.planted_users, args.planted_items, args.planted_clusters, args.planted_follow,
                args.planted_min_length, args.planted_max_length, args.planted_successors, args.planted_title_style,
                args.seed)
        except ValueError as error:  # a parameter out of range: name its flag
            message = str(error)
            for name, flag in (("n_users", "users"), ("n_items", "items"), ("n_clusters", "clusters"),
                               ("follow", "follow"), ("min_length", "min-length"), ("max_length", "max-length"),
                               ("n_successors", "successors"), ("title_style", "title-style")):
                message = re.sub(rf"\b{name}\b", f"--planted-{flag}", message)
            raise UserError(f"--dataset planted: {message}") from error
    elif args.dataset is not None:
        from collab_llm.assets import ensure_assets

        paths = ensure_assets(args.cache)
        folder = paths.ml100k if args.dataset == "ml-100k" else paths.ml1m
        data = read_dataset(args.dataset, folder, options, args.title_with_year)
    else:
        data = read_interactions(
            args.interactions, args.items,
            InteractionColumns(args.user_col, args.item_col, args.rating_col, args.timestamp_col),
            ItemColumns(args.item_id_col, args.title_col, tuple(args.text_cols)), options, encoding=args.encoding,
        )
    try:
        if args.protocol in ("loo", "llara"):
            out = prepare_nextitem(data, args.out, protocol=args.protocol, seed=args.seed,
                                   n_candidates=args.n_candidates, max_history=args.max_history)
        elif args.protocol == "random":
            out = prepare_random_split(data, args.out, seed=args.seed)
        elif args.protocol == "collm":
            out = prepare_collm(data, args.out, seed=args.seed)
        else:
            out = prepare_tallrec(data, args.out, seed=args.seed)
    except UserError as error:  # the protocol's own complaints: name the input they are about
        if not str(error).startswith("protocol "):
            raise
        raise UserError(f"{args.interactions or '--dataset ' + str(args.dataset)}: {error}") from error
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
