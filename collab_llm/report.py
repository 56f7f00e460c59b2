"""Comparison reports: one table (Markdown, CSV, JSON) with 95% intervals, and PNG plots.

A *record* is one metric of one run::

    {"protocol": "nextitem-loo", "method": "llara", "metric": "hr@1", "value": 0.41,
     "ci_low": 0.37, "ci_high": 0.45, "n_test": 943, "train_s": 812.3, "eval_s": 95.1,
     "trainable_params": 1234567, "subset": "all", "command": "...", "config": "..."}

``subset`` is ``all``, ``warm`` or ``cold`` (Yes/No protocol).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from collab_llm.io import atomic_file, write_json

REQUIRED_KEYS = ("protocol", "method", "metric", "value", "ci_low", "ci_high", "n_test", "train_s", "eval_s")
CSV_COLUMNS = (*REQUIRED_KEYS, "subset", "trainable_params", "command", "config")


def _check(records: Sequence[Mapping]) -> None:
    for i, r in enumerate(records):
        missing = [k for k in REQUIRED_KEYS if k not in r]
        if missing:
            raise ValueError(f"result record {i} ({r.get('method')!r}) lacks keys {missing}")


def _fmt(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def markdown_table(records: Sequence[Mapping]) -> str:
    """One row per (protocol, method, subset), one column per metric: ``value [low, high]``."""
    _check(records)
    metrics: list[str] = []
    rows: dict[tuple, dict] = {}
    for r in records:
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
