"""The ``collab-llm`` command: a thin dispatcher over the stages.

    collab-llm assets                      fetch MovieLens + SmolLM2 into the cache (offline afterwards)
    collab-llm prepare ...                 validated, id-mapped, split tables for one data protocol
    collab-llm cf fit --config ...         train a CF backbone (MF, SASRec) with Lightning
    collab-llm fit|test|predict --config   train / evaluate an LLM recommender (LightningCLI)
    collab-llm compare ...                 run several methods on the same data and write a report
    collab-llm verify PATH [--split DIR]   check a split, CF model or bundle: checksums, fingerprints
    collab-llm main                        the quick next-item comparison on MovieLens-100K + SmolLM2

Heavy imports happen inside each subcommand so that ``--help`` answers at once.

User errors (:class:`collab_llm.errors.UserError`, e.g. a bad input file or an unsafe output folder,
and ``FileNotFoundError``) print one line ``collab-llm: error: ...`` on stderr and exit with code 2;
the traceback is shown only with the global ``--debug`` flag (``collab-llm --debug prepare ...``) or
``COLLAB_LLM_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Sequence

from collab_llm.errors import USER_ERROR_EXIT, UserError, user_error_in

_LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")

_EPILOG = """\
typical session:
  collab-llm assets
  collab-llm prepare --dataset ml-100k --protocol loo --out work/ml100k_loo
  collab-llm cf fit --config configs/cf/sasrec_ml100k_loo.yaml
  collab-llm fit --config configs/llm/experiments/llara.yaml
  collab-llm compare --help
your own data (every method, same candidates and rows, one report):
  collab-llm prepare --interactions my.csv --items items.csv --protocol loo --out work/mine
  collab-llm compare --data work/mine --profile quick --item-word product
Each subcommand has its own --help.
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="collab-llm",
        description="LLM-based recommendation with collaborative signal injected into a frozen LLM.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--debug", action="store_true",
                   help="show the traceback of user errors (also: COLLAB_LLM_DEBUG=1); they exit with code 2 either way")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    a = sub.add_parser("assets", help="fetch MovieLens-100K/1M and SmolLM2-135M into the cache")
    a.add_argument("--cache", default=None, help="cache folder (default: $COLLAB_LLM_CACHE or ~/.cache/collab_llm)")
    sub.add_parser("prepare", help="prepare a data protocol (run 'collab-llm prepare --help')", add_help=False)
    sub.add_parser("cf", help="train / test a CF backbone (run 'collab-llm cf --help')", add_help=False)
    for name in _LIGHTNING_SUBCOMMANDS:
        sub.add_parser(name, help=f"LightningCLI {name} of an LLM recommender from YAML configs", add_help=False)
    sub.add_parser("compare", help="compare methods on one protocol and write a report", add_help=False)
    sub.add_parser("main", help="the quick comparison on MovieLens-100K + SmolLM2 (README's main job)", add_help=False)
    v = sub.add_parser("verify", help="check a split, CF model or bundle folder (checksums, what it was made from)")
    v.add_argument("path", help="a split folder (manifest.json), CF model folder (config.json) or bundle (bundle.json)")
    v.add_argument("--split", default=None, help="with a CF model: also check it against this split's item catalogue")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("COLLAB_LLM_DEBUG", "").strip() not in ("", "0")
    while argv and argv[0] == "--debug":
        debug, argv = True, argv[1:]
    try:
        try:
            return _dispatch(argv)
        except ValueError as error:  # a config parser's wrapper around a user error: report the error itself
            cause = user_error_in(error)
            if cause is None or cause is error:
                raise
            raise cause from error
    except (UserError, FileNotFoundError) as error:
        if debug:
            traceback.print_exc()
        message = str(error).replace("\r", " ").replace("\n", " ").strip() or type(error).__name__
        print(f"collab-llm: error: {message}", file=sys.stderr)
        return USER_ERROR_EXIT


def _dispatch(argv: list[str]) -> int:
    parser = _parser()
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    command, rest = argv[0], argv[1:]
    if command == "assets":
        args = parser.parse_args(argv)
        from collab_llm.assets import ensure_assets

        ensure_assets(args.cache)
        return 0
    if command == "prepare":
        from collab_llm.data.cli import main as prepare_main

        return prepare_main(rest) or 0
    if command == "cf":
        from cf_models.cli import main as cf_main

        return cf_main(rest) or 0
    if command in _LIGHTNING_SUBCOMMANDS:
        from collab_llm.llm_cli import main as llm_main

        return llm_main([command, *rest]) or 0
    if command == "compare":
        from collab_llm.compare_cli import main as compare_main

        return compare_main(rest) or 0
    if command == "main":
        from collab_llm.compare_cli import main_job

        return main_job(rest) or 0
    if command == "verify":
        return verify(parser.parse_args(argv))
    parser.error(f"unknown command {command!r}")
    return 2


def verify(args: argparse.Namespace) -> int:
    """``collab-llm verify PATH``: verify an artifact folder and print one line ``ok: <kind> <path> <fingerprint>``."""
    from pathlib import Path

    from collab_llm import fingerprint as fp

    path = Path(args.path)
    if (path / "bundle.json").is_file():
        from collab_llm.bundle import verify_bundle

        config = verify_bundle(path)
        if config.cf_model is not None:
            from cf_models.base import CFModel

            CFModel.from_pretrained(path / config.cf_model)
        kind, digest = "bundle", fp.canonical_sha256(fp.read_json(path / "bundle.json"))
    elif (path / "manifest.json").is_file():
        from collab_llm.data import load_split

        load_split(path)
        kind, digest = "split", fp.split_sha256(path)
    elif (path / "config.json").is_file() or (path / "model.safetensors").is_file():
        import importlib

        from cf_models.base import CFModel

        for name in ("cf_models.mf", "cf_models.sasrec"):
            importlib.import_module(name)  # registers the model types

        model = CFModel.from_pretrained(path)
        if args.split:
            fp.check_cf_matches_split(path, model.n_items, model.made_from, args.split)
        kind, digest = "CF model", model.source_sha256
    else:
        raise UserError(f"{path}: not a split (manifest.json), CF model (config.json) or bundle (bundle.json) folder")
    print(f"ok: {kind} {path} sha256 {digest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
