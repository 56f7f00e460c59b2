"""What a preference stage did, from its training log: the S-DPO quantities over the first and last steps.

Reads the Lightning CSV log of an ``X+sdpo`` / ``X+dpo`` run (``runs/<method>/logs/version_*/metrics.csv``)
and prints, for the first and the last ``--window`` steps, the means of the loss, the reward margin
(positive minus mean negative reward, ``r = log pi - log pi_ref``), the reward accuracy (share of rows
whose positive has the largest reward) and the reference's top-1 share (how often the supervised start
already ranks the positive above all its sampled negatives). These are the measures to read when the
stage does not help.

Usage::

    python bench/sdpo_stage_stats.py reports/full/nextitem/runs/llara+sdpo/logs/version_1/metrics.csv \\
        --out results/sdpo_ml100k/stage_stats.json

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

COLUMNS = {"loss": "train/loss", "reward_margin": "train/sdpo_reward_margin",
           "reward_accuracy": "train/sdpo_reward_accuracy", "reference_top1": "train/sdpo_reference_top1",
           "reward_chosen": "train/sdpo_reward_chosen", "reward_rejected": "train/sdpo_reward_rejected"}


def stage_stats(metrics_csv: str | Path, window: int = 8) -> dict[str, Any]:
    """Means of :data:`COLUMNS` over the first and the last ``window`` logged steps."""
    frame = pd.read_csv(metrics_csv)
    missing = [c for c in COLUMNS.values() if c not in frame.columns]
    if missing:
        raise SystemExit(f"{metrics_csv}: no preference-stage columns {missing} (not an X+sdpo / X+dpo run's log)")
    frame = frame.dropna(subset=[COLUMNS["loss"]]).sort_values("step")
    out: dict[str, Any] = {"steps": int(len(frame)), "window": window}
    for name, col in COLUMNS.items():
        out[f"{name}_first"] = round(float(frame[col].head(window).mean()), 4)
        out[f"{name}_last"] = round(float(frame[col].tail(window).mean()), 4)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("metrics_csv")
    p.add_argument("--window", type=int, default=8)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    from collab_llm.io import emit_result

    result = stage_stats(a.metrics_csv, a.window)
    result["log"] = a.metrics_csv
    return emit_result(result, a.out, "python bench/sdpo_stage_stats.py " + " ".join(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
