"""bench/cf_backbones.py on a tiny synthetic split: the JSON summary and the extra-seed spread."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from cf_models.synthetic import write_synthetic_split

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("cf_backbones_bench", ROOT / "bench" / "cf_backbones.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_reports_each_seed_and_their_mean(tmp_path, monkeypatch):
    bench = _bench()
    split = write_synthetic_split(tmp_path / "loo", "loo", n_users=12, n_items=40, length=12)
    monkeypatch.setitem(bench.RUNS, "sasrec", ("configs/cf/sasrec_ml100k_loo.yaml", str(split), []))
    monkeypatch.chdir(tmp_path)
    summary = bench.main(["--threads", "1", "--only", "sasrec", "--seeds", "1,2"])
    rows = summary["sasrec_seeds"]
    assert [r["seed"] for r in rows] == ["config", 1, 2]
    assert rows[0]["ndcg10"] == summary["sasrec_ndcg10"] and rows[0]["hr10"] == summary["sasrec_hr10"]
    assert summary["sasrec_mean_ndcg10"] == pytest.approx(sum(r["ndcg10"] for r in rows) / 3)
    assert summary["sasrec_mean_hr10"] == pytest.approx(sum(r["hr10"] for r in rows) / 3)
    # the seeds really differ (different init, dropout and batches): the validation curves part
    assert len({r["best_valid"] for r in rows}) > 1
    with pytest.raises(SystemExit, match="comma-separated integers"):
        bench.main(["--only", "sasrec", "--seeds", "one"])
