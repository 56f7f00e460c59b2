"""Evaluation aggregation of the Lightning module: per-row predictions gathered over ranks, their metrics
with bootstrap intervals, and the predictions file.

Next-item rows (``scores`` per candidate, ``target_index``, and with generation ``choice``): HR@1, HR@5,
NDCG@5, NDCG@10, MRR (+ ``gen_hr@1``, ``gen_valid_ratio``); Yes/No rows (``score`` = P(Yes), ``label``,
``user``, ``warm``): AUC, UAUC (+ users counted), warm / cold.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from collab_llm import scoring
from collab_llm.io import atomic_file


def gather_rows(rows: list[dict[str, Any]], world_size: int) -> pd.DataFrame:
    """Every rank's rows (``all_gather_object`` under DDP), each table row once (distributed samplers pad
    with repeated rows), sorted by ``row_index``."""
    if world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        parts: list[Any] = [None] * world_size
        torch.distributed.all_gather_object(parts, rows)
        rows = [r for part in parts for r in part]
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    return frame.drop_duplicates("row_index").sort_values("row_index").reset_index(drop=True)


def eval_metrics(task: str, frame: pd.DataFrame, n_resamples: int, generation: bool = False) -> dict[str, float]:
    """Metric name -> value (plus ``<name>_ci_low`` / ``_ci_high`` when ``n_resamples > 0``) and ``n_rows``.
    A Yes/No frame with one class only gives ``n_rows`` alone (AUC undefined)."""
    out: dict[str, float] = {}

    def put(name: str, est: Any) -> None:
        if isinstance(est, (int, np.integer)):
            out[name] = float(est)
            return
        out[name] = float(est.value)
        if n_resamples > 0:
            out[f"{name}_ci_low"], out[f"{name}_ci_high"] = float(est.ci_low), float(est.ci_high)

    n = max(n_resamples, 1)
    if task == "next_item":
        scores = torch.tensor(np.stack(frame["scores"].to_numpy()), dtype=torch.float32)
        target = torch.tensor(frame["target_index"].to_numpy(), dtype=torch.long)
        for name, est in scoring.ranking_metrics(scores, target, n_resamples=n).items():
            put(name, est)
        if generation:
            choices = [None if (c is None or (isinstance(c, float) and math.isnan(c))) else int(c) for c in frame["choice"]]
            for name, est in scoring.generation_metrics(choices, target, n_resamples=n).items():
                put(f"gen_{name}", est)
    else:
        labels = frame["label"].to_numpy()
        if labels.min() == labels.max():
            return {"n_rows": float(len(frame))}  # AUC undefined on one class (tiny sanity runs)
        for name, est in scoring.yes_no_metrics(
            frame["user"].to_numpy(), labels, frame["score"].to_numpy(), frame["warm"].to_numpy(), n_resamples=n
        ).items():
            put(name, est)
    out["n_rows"] = float(len(frame))
    return out


def write_predictions(frame: pd.DataFrame, path: Path) -> None:
    """Write per-row predictions as parquet, atomically."""
    with atomic_file(path, "wb") as handle:
        frame.to_parquet(handle, index=False)
