"""bench/sdpo_stage_stats.py: first/last-window means of a preference stage's logged quantities."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("sdpo_stage_stats", ROOT / "bench" / "sdpo_stage_stats.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_first_and_last_window_means(tmp_path):
    bench = _bench()
    rows = {"epoch": [0] * 6, "step": [5, 0, 1, 2, 3, 4]}
    for name, col in bench.COLUMNS.items():
        rows[col] = [50.0, 0.0, 10.0, 20.0, 30.0, 40.0]  # out of order: sorted by step
    path = tmp_path / "metrics.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    out = bench.main([str(path), "--window", "2", "--out", str(tmp_path / "s.json")])
    assert out["steps"] == 6 and out["loss_first"] == 5.0 and out["reward_margin_last"] == 45.0
    pd.DataFrame({"step": [0], "train/loss": [1.0]}).to_csv(path, index=False)
    with pytest.raises(SystemExit, match="no preference-stage columns"):
        bench.stage_stats(path)
