"""The ``collab-llm compare`` / ``collab-llm main`` command lines over :class:`collab_llm.compare.Comparison`:
flags, several protocols into one combined report, ``run_info.json``, ``--export``, ``--dry-run``."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Sequence

import torch

from collab_llm import compare
from collab_llm.compare import INTERVALS, Comparison, report_records
from collab_llm.dropout import DROPOUT_MASKS
from collab_llm.io import write_json
from collab_llm.presets import PROTOCOLS, split_task
from collab_llm.prompts import WORDINGS
from collab_llm.report import write_report
from collab_llm.runs import PROFILES


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=compare.__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--protocol", nargs="+", choices=sorted(PROTOCOLS), default=None,
                   help="one protocol, or several: each runs into <report-dir>/<protocol>/ and a combined "
                        "report is written in <report-dir> (default: nextitem; with --data: the split's)")
    p.add_argument("--data", default=None,
                   help="a prepared split of any dataset (collab-llm prepare --interactions FILE --items FILE "
                        "--protocol loo|llara|collm|tallrec --out DIR) instead of the protocol's MovieLens preset")
    p.add_argument("--interactions", default=None,
                   help="your interaction file (.csv/.tsv/.parquet), with --items: compare first runs collab-llm prepare "
                        "into <work-dir>/<file name>_<prepare-protocol>-<hash> (reused on a rerun); prepare's column and "
                        "validation flags (--user-col, --item-col, --title-col, --on-duplicates, ...) pass through")
    p.add_argument("--items", default=None, help="your item file (with --interactions)")
    p.add_argument("--prepare-protocol", choices=("loo", "llara", "collm", "tallrec"), default="loo",
                   help="the split prepare makes of --interactions (default: loo, next-item leave-one-out)")
    p.add_argument("--cf-model", default=None,
                   help="a CF model trained on that split (collab-llm cf fit --export_dir DIR; next-item: sasrec, "
                        "Yes/No: mf); default: compare trains the protocol's CF config into <work-dir>/cf")
    p.add_argument("--methods", nargs="+", default=None,
                   help="methods to compare (default: the protocol's: nextitem: sasrec tallrec llara ilora head head_l4; "
                        "yesno: mf tallrec collm head head_l4 head_l4_user); next-item also X+sdpo / X+dpo after an LLM method X (a "
                        "preference stage started from X's run)")
    p.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    p.add_argument("--llm-steps", type=_positive_int, default=None, help="override the profile's LLM training steps")
    p.add_argument("--test-rows", type=_positive_int, default=None, help="override the profile's number of test rows")
    p.add_argument("--work-dir", default="work", help="prepared splits and CF models (shared by comparisons)")
    p.add_argument("--item-word", choices=sorted(WORDINGS), default=None,
                   help="how the prompts name items (movie: the templates' MovieLens wording; book, product, item); "
                        "default: movie on the presets, item with --data")
    p.add_argument("--dropout-masks", choices=DROPOUT_MASKS, default=None,
                   help="how every LLM method draws its LoRA dropout masks: bernoulli (peft's, the methods' configs) "
                        "or bits16 (the same dropout from a quarter of the random draws: faster, another random stream)")
    p.add_argument("--report-dir", default=None, help="default: reports/<protocol or --data folder name>-<profile>")
    p.add_argument("--backbone", default=None, help="HF model folder (default: SmolLM2-135M from the cache)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dry-run", action="store_true",
                   help="print the command behind each method (the profile's budget spelled out) and run nothing")
    p.add_argument("--export", default=None,
                   help="also copy the report's files (results.md/.csv/.json, PNGs; no runs, no weights) here")
    return p


def _protocols(ns: argparse.Namespace) -> list[str]:
    """``--protocol`` as given, else the ``--data`` split's, else ``nextitem``."""
    from collab_llm.errors import UserError

    if ns.data is None:
        return ns.protocol or ["nextitem"]
    task = split_task(Path(ns.data))
    if ns.protocol not in (None, [task]):
        raise UserError(f"--protocol {' '.join(ns.protocol)}: --data {ns.data} is one {task} split (leave --protocol out)")
    return [task]


def _comparison(ns: argparse.Namespace, protocol: str | None = None, report_dir: Path | None = None) -> Comparison:
    protocol = protocol or _protocols(ns)[0]
    profile = PROFILES[ns.profile].for_protocol(protocol)
    if ns.llm_steps is not None:
        profile = replace(profile, llm_steps=ns.llm_steps)
    if ns.test_rows is not None:
        profile = replace(profile, test_rows=ns.test_rows)
    methods = ns.methods or list(PROTOCOLS[protocol].default_methods)
    name = Path(ns.data).resolve().name if ns.data is not None else protocol
    report = report_dir or Path(ns.report_dir or f"reports/{name}-{profile.name}")
    item_word = ns.item_word or ("item" if ns.data is not None else None)
    return Comparison(protocol, methods, profile, Path(ns.work_dir), Path(report), ns.backbone, ns.seed,
                      item_word=item_word, dropout_masks=ns.dropout_masks,
                      data=None if ns.data is None else Path(ns.data),
                      cf_model=None if ns.cf_model is None else Path(ns.cf_model))


def prepare_own(ns: argparse.Namespace, extra: Sequence[str]) -> str | None:
    """``--interactions FILE --items FILE`` (+ ``extra``: prepare's own flags): ``collab-llm prepare`` (its CLI,
    :func:`collab_llm.data.cli.main`) into ``<work-dir>/<interactions stem>_<prepare-protocol>-<key>``, ``key`` the hash
    of both files' contents, the prepare arguments and ``--seed``; a rerun finds it there and reuses it (checksums
    verified). Returns that folder for ``--data``; with ``--dry-run`` prints the prepare command and returns ``None``
    if the folder is not there yet."""
    from collab_llm.data.cli import main as prepare_main
    from collab_llm.errors import UserError
    from collab_llm.fingerprint import canonical_sha256, sha256_file, verify_split

    if ns.data is not None:
        raise UserError(f"--interactions {ns.interactions}: give either --data DIR (a prepared split) or "
                        "--interactions FILE --items FILE, not both")
    if ns.items is None:
        raise UserError(f"--interactions {ns.interactions}: --items FILE is required too (the item file with titles)")
    for flag, path in (("--interactions", ns.interactions), ("--items", ns.items)):
        if not Path(path).is_file():
            raise UserError(f"{flag} {path}: no such file")
    args = ["--interactions", str(ns.interactions), "--items", str(ns.items), "--protocol", ns.prepare_protocol,
            "--seed", str(ns.seed), *extra]
    key = canonical_sha256({"files": [sha256_file(ns.interactions), sha256_file(ns.items)], "args": args[4:]})
    out = Path(ns.work_dir) / f"{Path(ns.interactions).stem}_{ns.prepare_protocol}-{key[:8]}"
    command = f"collab-llm prepare {shlex.join([*args, '--out', str(out)])}"
    if (out / "manifest.json").is_file():
        verify_split(out)
        if ns.dry_run:
            print(f"# the split, prepared earlier\n# {command}", flush=True)
    elif ns.dry_run:
        print(f"# the split, prepared first\n{command}\n# then the methods on {out} (their commands need the "
              "split: rerun --dry-run after preparing it)", flush=True)
        return None
    else:
        print(f"[compare] preparing {ns.interactions} -> {out}", flush=True)
        prepare_main([*args, "--out", str(out)])
    return str(out)


def write_combined(comparisons: Sequence[Comparison], out_dir: Path, title: str) -> Path:
    """One report over several comparisons' finished runs (records, metric plots, loss curves)."""
    paths, curves = [], {}
    for comp in comparisons:
        for m in comp.methods:
            path = comp.run_dir(m) / "result.json"
            if path.exists():
                paths.append(path)
                curve = json.loads(path.read_text()).get("loss_curve") or []
                if curve:
                    curves[f"{comp.protocol}/{m}"] = [tuple(x) for x in curve]
    pre = "".join(
        f"- `{c.protocol}` ({c.spec.split_name}): profile `{c.profile.name}` ({c.profile}), seed {c.seed}.\n"
        for c in comparisons
    ) + f"\n{INTERVALS}\n"
    return write_report(report_records(paths), out_dir, curves, title=title, preamble=pre)


def write_run_info(report_dir: Path, command: str, wall_s: float, comparisons: Sequence[Comparison]) -> Path:
    """``<report_dir>/run_info.json``: the machine and the wall time of the commands that wrote the report
    (the README's generated tables state them). ``resumed`` lists the runs this command found finished.
    A command that resumed runs adds itself to the previous ``invocations`` (so ``wall_s``, their sum,
    covers every run of the report); one that ran everything starts a new list."""
    import resource

    from collab_llm.backbone import cpu_description, resolve_dtype

    this = {
        "command": command, "wall_s": round(wall_s, 1),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime()),
        "cpu": cpu_description(), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "resumed": [f"{c.protocol}/{m}" for c in comparisons for m in c.skipped],
    }
    path = report_dir / "run_info.json"
    previous: list[dict[str, Any]] = []
    if this["resumed"] and path.exists():
        try:
            old = json.loads(path.read_text())
            previous = list(old.get("invocations") or [{k: v for k, v in old.items() if k != "protocols"}])
        except (ValueError, AttributeError):
            previous = []
    invocations = previous + [this]
    info = dict(this)  # the latest invocation's fields, then the totals
    info.update(
        wall_s=round(sum(float(i["wall_s"]) for i in invocations), 1),
        peak_rss_gb=max(float(i["peak_rss_gb"]) for i in invocations),
        invocations=invocations,
        protocols={c.protocol: {"profile": asdict(c.profile), "dtype": resolve_dtype(c.profile.dtype),
                                "methods": list(c.methods), "test_rows": len(c.test_rows())} for c in comparisons},
    )
    write_json(path, info)
    return path


def export_report(report_dir: Path, dest: Path) -> None:
    """Copy a report's files (no runs: no weights, no predictions) into ``dest``."""
    import shutil

    dest.mkdir(parents=True, exist_ok=True)
    for path in sorted(report_dir.iterdir()):
        if path.is_file() and path.suffix in (".md", ".csv", ".json", ".png"):
            shutil.copy2(path, dest / path.name)


def main(argv: Sequence[str] | None = None) -> int:
    """``collab-llm compare``."""
    parser = _parser("collab-llm compare")
    ns, extra = parser.parse_known_args(argv)
    if extra and ns.interactions is None:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    start = time.perf_counter()
    if ns.interactions is not None:
        ns.data = prepare_own(ns, extra)
        if ns.data is None:  # --dry-run before the split exists: its prepare command was printed
            return 0
    ns.protocol = _protocols(ns)
    if ns.cf_model is not None and len(ns.protocol) > 1:
        parser.error("--cf-model applies to one protocol")
    if ns.dry_run:
        if ns.methods is not None and len(ns.protocol) > 1:
            parser.error("--methods applies to one protocol; with several, each runs its default methods")
        for protocol in ns.protocol:
            print("\n".join(_comparison(ns, protocol).commands()), flush=True)
        return 0
    if len(ns.protocol) == 1:
        comps = [_comparison(ns)]
        comps[0].run()
        report_dir = comps[0].report_dir
    else:
        if ns.methods is not None:
            parser.error("--methods applies to one protocol; with several, each runs its default methods")
        report_dir = Path(ns.report_dir or f"reports/{'+'.join(ns.protocol)}-{ns.profile}")
        comps = [_comparison(ns, p, report_dir / p) for p in ns.protocol]
        for comp in comps:
            comp.run()
        path = write_combined(comps, report_dir, title=f"collab-llm: {' + '.join(ns.protocol)}, profile {ns.profile}")
        print(f"[compare] combined report: {path}", flush=True)
    _finish(ns, report_dir, "collab-llm compare", argv, time.perf_counter() - start, comps)
    return 0


def _finish(ns: argparse.Namespace, report_dir: Path, prog: str, argv: Sequence[str] | None, wall_s: float,
            comps: Sequence[Comparison]) -> None:
    """Write ``run_info.json`` and copy the report to ``--export`` (if given)."""
    args = list(sys.argv[1:] if argv is None else argv)
    write_run_info(report_dir, " ".join([prog, shlex.join(args)]).strip(), wall_s, comps)
    if ns.export:
        export_report(report_dir, Path(ns.export))
        print(f"[compare] report files copied to {ns.export}", flush=True)


def main_job(argv: Sequence[str] | None = None) -> int:
    """``collab-llm main``: the quick next-item comparison on MovieLens-100K with SmolLM2-135M."""
    ns = _parser("collab-llm main").parse_args(argv)
    if ns.interactions is not None:
        _parser("collab-llm main").error("--interactions: use collab-llm compare (main is the MovieLens job)")
    comp = _comparison(ns)
    if ns.dry_run:
        print("\n".join(comp.commands()), flush=True)
        return 0
    print(
        f"collab-llm main: next-item comparison on MovieLens-100K (leave-one-out, 20 candidates) with "
        f"SmolLM2-135M on the CPU: {', '.join(comp.methods)}; profile '{comp.profile.name}' "
        f"({comp.profile.llm_steps} LoRA steps of {comp.profile.batch_size} prompts per LLM method, "
        f"{comp.profile.test_rows} test users). About 3 minutes on 2 cores with native bf16 (measured: 3.1), about 8 with fp32 "
        f"only (measured: 7.4), plus the set-up "
        f"on a first run; finished runs are skipped on a rerun. Report: {comp.report_dir}/results.md",
        flush=True,
    )
    start = time.perf_counter()
    path = comp.run()
    wall_s = time.perf_counter() - start
    _finish(ns, comp.report_dir, "collab-llm main", argv, wall_s, [comp])
    print(f"collab-llm main: done in {wall_s:.0f} s; report at {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
