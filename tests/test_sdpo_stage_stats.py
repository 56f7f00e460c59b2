"""bench/sdpo_stage_stats.py: first/last-window means of a preference stage's logged quantities."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_llm_fixtures import load_bench  # noqa: E402


def _bench():
    return load_bench("sdpo_stage_stats")


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
