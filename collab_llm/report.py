"""Comparison reports: one table (Markdown, CSV, JSON) with 95% intervals, and PNG plots.

A *record* is one metric of one run::

    {"protocol": "nextitem-loo", "method": "llara", "metric": "hr@1", "value": 0.41,
     "ci_low": 0.37, "ci_high": 0.45, "n_test": 943, "train_s": 812.3, "eval_s": 95.1,
     "trainable_params": 1234567, "subset": "all", "command": "...", "config": "..."}

``subset`` is ``all``, ``warm`` or ``cold`` (Yes/No protocol).

*Paired difference* records (:func:`paired_difference_records`) compare an LLM method with a
baseline run on the same test rows -- its protocol's text-only baseline (TALLRec), or, for a
preference stage ``X+sdpo``, its own supervised start ``X``: metric ``diff_vs_tallrec_hr@1`` /
``diff_vs_X_hr@1`` (and ``_ndcg@10``; Yes/No: ``_auc``), value = method - baseline, with the 95% paired
bootstrap interval (one resample of rows -- Yes/No: of users -- serves both methods). They are
computed from the runs' ``predictions_test.parquet`` files and shown in their own table of
``results.md``, one row per (method, baseline).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

from collab_llm.io import atomic_file, write_json

REQUIRED_KEYS = ("protocol", "method", "metric", "value", "ci_low", "ci_high", "n_test", "train_s", "eval_s")
CSV_COLUMNS = (*REQUIRED_KEYS, "subset", "trainable_params", "command", "config")
DIFF_PREFIX = "diff_vs_"


def is_difference(record: Mapping) -> bool:
    """Whether a record is a paired difference between two methods (not a metric of one method)."""
    return str(record["metric"]).startswith(DIFF_PREFIX)


def _check(records: Sequence[Mapping]) -> None:
    for i, r in enumerate(records):
        missing = [k for k in REQUIRED_KEYS if k not in r]
        if missing:
            raise ValueError(f"result record {i} ({r.get('method')!r}) lacks keys {missing}")


def _fmt(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def markdown_table(records: Sequence[Mapping]) -> str:
    """One row per (protocol, method, subset), one column per metric: ``value [low, high]``.

    Paired-difference records are left out (see :func:`differences_table`).
    """
    _check(records)
    metrics: list[str] = []
    rows: dict[tuple, dict] = {}
    for r in records:
        if is_difference(r):
            continue
        if r["metric"] not in metrics:
            metrics.append(r["metric"])
        key = (r["protocol"], r["method"], r.get("subset", "all"))
        row = rows.setdefault(key, {"train_s": r["train_s"], "eval_s": r["eval_s"], "n_test": r["n_test"],
                                    "params": r.get("trainable_params")})
        row[r["metric"]] = f"{_fmt(r['value'])} [{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]"
    head = ["protocol", "method", "subset", *metrics, "n_test", "trainable params", "train s", "eval s"]
    out = io.StringIO()
    out.write("| " + " | ".join(head) + " |\n")
    out.write("|" + "---|" * len(head) + "\n")
    for (protocol, method, subset), row in rows.items():
        params = row["params"]
        cells = [protocol, method, subset, *[row.get(m, "") for m in metrics], str(row["n_test"]),
                 f"{params:,}" if isinstance(params, int) else "-", f"{row['train_s']:.0f}", f"{row['eval_s']:.0f}"]
        out.write("| " + " | ".join(cells) + " |\n")
    return out.getvalue()


def differences_table(records: Sequence[Mapping]) -> str:
    """The paired-difference records as a Markdown table ("" if there are none).

    One row per (protocol, method, baseline, subset), one column per compared metric: ``diff [low,
    high]`` (method minus baseline; an interval excluding 0 is a difference the test rows resolve).
    """
    diffs = [r for r in records if is_difference(r)]
    if not diffs:
        return ""
    metrics: list[str] = []
    rows: dict[tuple, dict] = {}
    for r in diffs:
        metric = r["metric"][len(DIFF_PREFIX):]
        if r.get("baseline") and metric.startswith(f"{r['baseline']}_"):
            metric = metric[len(r["baseline"]) + 1:]
        if metric not in metrics:
            metrics.append(metric)
        key = (r["protocol"], r["method"], str(r.get("baseline", "?")), r.get("subset", "all"))
        row = rows.setdefault(key, {"n_test": r["n_test"], "unit": r.get("resampled", "rows")})
        row[metric] = f"{_fmt(r['value'])} [{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]"
    head = ["protocol", "method", "subset", *[f"{m} diff" for m in metrics], "vs", "n_test", "resampled"]
    out = io.StringIO()
    out.write("| " + " | ".join(head) + " |\n")
    out.write("|" + "---|" * len(head) + "\n")
    for (protocol, method, baseline, subset), row in rows.items():
        cells = [protocol, method, subset, *[row.get(m, "") for m in metrics], baseline, str(row["n_test"]),
                 row["unit"]]
        out.write("| " + " | ".join(cells) + " |\n")
    return out.getvalue()


def _predictions_path(result_path: Path, data: Mapping) -> Path | None:
    """A run's ``predictions_test.parquet``: the path its result names, else the newest under its run folder."""
    named = data.get("predictions")
    if named and Path(named).is_file():
        return Path(named)
    found = sorted(result_path.parent.glob("**/predictions_test.parquet"), key=lambda q: q.stat().st_mtime)
    return found[-1] if found else None


def paired_difference_records(
    results: Iterable[Path], baseline: str | Callable[[str], str | None] = "tallrec", n_resamples: int | None = None
) -> list[dict]:
    """Paired differences of every run to a baseline run of its protocol, on the same test rows.

    Args:
        results: run ``result.json`` files (as written by ``collab-llm compare``); runs are grouped by
            their records' ``protocol``. A run takes part only if its per-row predictions
            (``predictions_test.parquet``, LLM runs) can be found, the baseline's too.
        baseline: the method every other one is compared with (the text-only TALLRec), or a function
            giving each method's own baseline (``None``: none), e.g. a preference stage's start.
        n_resamples: bootstrap resamples (default: the run profile's ``n_bootstrap``, else 1000).

    Returns:
        Records (the module docstring's keys) with ``metric = "diff_vs_<baseline>_<m>"``, ``value``
        = method - baseline, ``ci_low`` / ``ci_high`` = 95% paired bootstrap interval, ``baseline``,
        ``resampled`` (``rows``; Yes/No AUC: ``users``), ``train_s = 0`` and ``eval_s`` = seconds spent
        on the bootstrap. Next-item: HR@1 and NDCG@10 (rows resampled); Yes/No: AUC (users resampled,
        :func:`collab_llm.scoring.paired_yes_no_differences`). Seed: the run's ``seed``.
    """
    import pandas as pd

    from collab_llm import scoring

    runs: dict[str, dict[str, tuple[Path, Mapping, Mapping]]] = defaultdict(dict)
    for path in results:
        path = Path(path)
        data = json.loads(path.read_text())
        recs = data.get("records") or []
        preds = _predictions_path(path, data)
        if recs and preds is not None:
            runs[recs[0]["protocol"]][recs[0]["method"]] = (preds, recs[0], data)
    baseline_of = baseline if callable(baseline) else (lambda method: baseline)
    out: list[dict] = []
    for protocol, by_method in runs.items():
        for method, (preds, first, data) in by_method.items():
            base = baseline_of(method)
            if base is None or base == method or base not in by_method:
                continue
            base_frame = pd.read_parquet(by_method[base][0])
            frame = pd.read_parquet(preds)
            n = n_resamples or int((data.get("profile") or {}).get("n_bootstrap") or 1000)
            seed = int(first.get("seed", 0))
            start = time.perf_counter()
            if "scores" in frame and "target_index" in frame:
                diffs, unit = scoring.paired_ranking_differences(frame, base_frame, n, seed), "rows"
            elif "label" in frame and "score" in frame:
                diffs, unit = scoring.paired_yes_no_differences(frame, base_frame, n, seed), "users"
            else:
                raise ValueError(f"{preds}: neither next-item (scores, target_index) nor Yes/No (label, score) predictions")
            seconds = time.perf_counter() - start
            for metric, est in diffs.items():
                out.append({
                    "protocol": protocol, "method": method, "metric": f"{DIFF_PREFIX}{base}_{metric}",
                    "subset": "all", "value": est.value, "ci_low": est.ci_low, "ci_high": est.ci_high,
                    "n_test": est.n, "train_s": 0.0, "eval_s": seconds, "baseline": base, "resampled": unit,
                    "seed": seed, "profile": first.get("profile"),
                })
    return out


def write_report(
    records: Sequence[Mapping],
    out_dir: str | Path,
    loss_curves: Mapping[str, Sequence[tuple[int, float]]] | None = None,
    title: str = "collab-llm comparison",
    preamble: str = "",
) -> Path:
    """Write ``results.md``, ``results.csv``, ``results.json`` and PNG plots into ``out_dir``.

    Returns the path of ``results.md``.
    """
    _check(records)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", list(records))
    with atomic_file(out / "results.csv") as fh:
        w = csv.DictWriter(fh, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in records:
            w.writerow({k: r.get(k, "") for k in CSV_COLUMNS})
    plots = plot_metrics(records, out)
    if loss_curves:
        plots.append(plot_loss_curves(loss_curves, out / "loss_curves.png"))
    md = [f"# {title}\n", preamble, "\n", markdown_table(records), "\n"]
    diffs = differences_table(records)
    if diffs:
        baselines = sorted({str(r.get("baseline", "?")) for r in records if is_difference(r)})
        md += [f"## Paired differences vs {', '.join(baselines)}\n\n",
               "Method minus baseline on the same test rows; 95% paired bootstrap interval (the same "
               "resamples for both methods; Yes/No AUC: users resampled with all their rows).\n\n",
               diffs, "\n"]
    md += [f"![{p.stem}]({p.name})\n" for p in plots]
    commands = {(r["method"], r.get("command")) for r in records if r.get("command")}
    if commands:
        md.append("\n## Commands\n\n")
        md += [f"- {m}: `{c}`\n" for m, c in sorted(commands)]
    with atomic_file(out / "results.md") as fh:
        fh.write("".join(md))
    return out / "results.md"


def plot_metrics(records: Sequence[Mapping], out_dir: Path) -> list[Path]:
    """One PNG per (protocol, metric): a bar per method (and subset) with its 95% CI as error bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[tuple[str, str], list[Mapping]] = defaultdict(list)
    for r in records:
        groups[(r["protocol"], r["metric"])].append(r)
    paths = []
    for (protocol, metric), rs in groups.items():
        labels = [r["method"] + ("" if r.get("subset", "all") == "all" else f" ({r['subset']})") for r in rs]
        vals = [r["value"] for r in rs]
        err = [[max(0.0, r["value"] - r["ci_low"]) for r in rs], [max(0.0, r["ci_high"] - r["value"]) for r in rs]]
        fig, ax = plt.subplots(figsize=(max(4, 1.1 * len(rs) + 2), 3.5))
        ax.bar(range(len(rs)), vals, yerr=err, capsize=4, color="#4C72B0")
        ax.set_xticks(range(len(rs)), labels, rotation=20, ha="right")
        ax.set_ylabel(metric)
        ax.set_title(f"{protocol}: {metric} (95% bootstrap CI)")
        fig.tight_layout()
        # portable file names: no ':' (Windows), '/' or spaces
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{protocol}_{metric}".replace("@", "at"))
        path = out_dir / f"{safe}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def plot_loss_curves(curves: Mapping[str, Sequence[tuple[int, float]]], path: Path) -> Path:
    """Training loss against step, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, pts in curves.items():
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, label=name)
    ax.set_xlabel("training step")
    ax.set_ylabel("loss")
    ax.set_title("training loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def load_records(paths: Iterable[Path]) -> list[dict]:
    """Concatenate the ``records`` of several run ``result.json`` files."""
    out: list[dict] = []
    for p in paths:
        with open(p) as fh:
            data = json.load(fh)
        if "records" not in data:
            raise ValueError(f"{p}: expected a 'records' list in the run result")
        out.extend(data["records"])
    return out
