"""Paired differences to TALLRec in the compare report, and the Yes/No score direction through compare.

The Yes/No tests pin the *direction* of the scores on both of compare's paths: the CF model alone
(``cf_alone_run``: MF pair scores) and the LLM runs (``run_llm``: P(Yes) of the run's
predictions). Replacing a score ``s`` by ``1 - s`` (or ``-s``) anywhere on them makes them fail.
The LLM itself is replaced by a stand-in whose predictions are known (the module's own P(Yes) is
tested in test_llm_module.py), so these run in seconds.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from cf_models.mf import MatrixFactorization, MFConfig
from cf_models.synthetic import write_synthetic_split
from collab_llm import compare, metrics, report, scoring
from collab_llm.module import write_predictions
from collab_llm.runs import PROFILES

sys.path.insert(0, str(Path(__file__).parent))
from test_llm_fixtures import as_compare_work, make_backbone_dir, make_cf_dirs, make_split  # noqa: E402

torch.set_num_threads(1)
N_USERS, N_ITEMS = 40, 30


def _yesno_work(tmp_path: Path) -> Path:
    """A synthetic Yes/No split (label = item parity agrees with user parity) and an MF that has learned it."""
    work = tmp_path / "work"
    write_synthetic_split(work / "ml1m_collm", "yesno", n_users=N_USERS, n_items=N_ITEMS, length=10)
    mf = MatrixFactorization(MFConfig(n_users=N_USERS, n_items=N_ITEMS, embedding_dim=1))
    with torch.no_grad():
        # +1 for odd ids, -1 for even ones: the pair score u * i is +1 exactly when the parities agree
        mf.user_embedding.weight[1:, 0] = torch.tensor([1.0 if u % 2 else -1.0 for u in range(1, N_USERS + 1)])
        mf.item_embedding.weight[1:, 0] = torch.tensor([1.0 if i % 2 else -1.0 for i in range(1, N_ITEMS + 1)])
    mf.save_pretrained(work / "cf" / "mf_ml1m_collm-ep1")
    as_compare_work(work / "ml1m_collm", work / "cf" / "mf_ml1m_collm-ep1", "yesno/collm", "ml-1m")  # as compare makes it
    return work


def _comparison(tmp_path: Path, methods: list[str]) -> compare.Comparison:
    profile = replace(PROFILES["smoke"], test_rows=None, n_bootstrap=100)
    return compare.Comparison("yesno", methods, profile, _yesno_work(tmp_path), tmp_path / "report",
                              backbone="unused-backbone", log=lambda msg: None)


def test_yesno_cf_baseline_auc_keeps_the_score_direction(tmp_path):
    comp = _comparison(tmp_path, ["mf"])
    comp.run()
    test = comp.test_rows()
    assert test["label"].nunique() == 2 and len(test) == 2 * N_USERS
    records = {(r["subset"], r["metric"]): r for r in json.loads((tmp_path / "report" / "results.json").read_text())}
    # the MF ranks every positive above every negative: AUC and UAUC are 1 (an inverted score gives 0)
    assert records[("all", "auc")]["value"] == pytest.approx(1.0)
    assert records[("all", "uauc")]["value"] == pytest.approx(1.0)
    assert records[("all", "auc")]["ci_low"] == pytest.approx(1.0)
    assert not [r for r in records.values() if report.is_difference(r)]  # no TALLRec run, no differences


class _FakeLLMRun:
    """Stands in for the LightningCLI run of one LLM method: known per-row P(Yes) on the shared test rows."""

    def __init__(self, comp: compare.Comparison, method: str, skill: float) -> None:
        test = comp.test_rows()
        rng = np.random.default_rng(len(method))
        labels = test["label"].to_numpy()
        # P(Yes) in (0, 1), higher for positives; skill sets how well it separates them
        p_yes = 1.0 / (1.0 + np.exp(-(skill * (2 * labels - 1) + rng.normal(0, 1.2, labels.size))))
        self.frame = pd.DataFrame({"row_index": np.arange(len(test)), "user": test["user"].to_numpy(),
                                   "label": labels, "score": p_yes, "warm": test["warm"].to_numpy()})
        log_dir = comp.run_dir(method) / "logs" / "version_0"
        self.model = SimpleNamespace(predictions={}, trainable_parameters=lambda: [torch.zeros(3)])
        self.trainer = SimpleNamespace(logger=SimpleNamespace(log_dir=str(log_dir)), test=self.test)
        self.datamodule = None

    def test(self, model, datamodule=None, verbose=False) -> None:  # what CollabLLM.on_test_epoch_end does
        model.predictions["test"] = self.frame
        Path(self.trainer.logger.log_dir).mkdir(parents=True, exist_ok=True)
        write_predictions(self.frame, Path(self.trainer.logger.log_dir) / "predictions_test.parquet")


def test_yesno_llm_auc_is_the_auc_of_p_yes_and_paired_to_tallrec(tmp_path, monkeypatch):
    import collab_llm.llm_cli

    comp = _comparison(tmp_path, ["mf", "tallrec", "collm"])
    skills = {"tallrec": 0.6, "collm": 1.5}

    def fake_cli(args):
        method = next(m for m in skills if any(a.endswith(f"/{compare.PROTOCOLS['yesno'].llm_methods[m].name}")
                                               for a in args))
        return _FakeLLMRun(comp, method, skills[method])

    monkeypatch.setattr(collab_llm.llm_cli, "build_cli", fake_cli)
    monkeypatch.setattr(compare.Comparison, "export_bundle", lambda self, method, *a, **k: self.run_dir(method) / "bundle")
    path = comp.run()

    records = json.loads((tmp_path / "report" / "results.json").read_text())
    by_key = {(r["method"], r["subset"], r["metric"]): r for r in records}
    aucs = {}
    for method in skills:
        result = json.loads((comp.run_dir(method) / "result.json").read_text())
        pred = pd.read_parquet(result["predictions"])
        aucs[method] = metrics.auc(pred["label"], pred["score"])
        assert aucs[method] > 0.6, (method, aucs[method])  # the stand-in's P(Yes) does separate the classes
        # the report's AUC is AUC(labels, P(Yes)) of the predictions file, not of 1 - P(Yes)
        assert by_key[(method, "all", "auc")]["value"] == pytest.approx(aucs[method])
        assert by_key[(method, "all", "uauc")]["value"] == pytest.approx(
            metrics.uauc(pred["user"], pred["label"], pred["score"])[0])
    assert aucs["collm"] > aucs["tallrec"]

    # the paired differences to TALLRec (the baseline): the CF model alone, scored on the same rows (its
    # predictions file pairs with the LLM runs' row by row), and collm
    diffs = [r for r in records if report.is_difference(r)]
    assert [(r["method"], r["metric"]) for r in diffs] == [("mf", "diff_vs_tallrec_auc"), ("collm", "diff_vs_tallrec_auc")]
    mf = pd.read_parquet(json.loads((comp.run_dir("mf") / "result.json").read_text())["predictions"])
    assert mf["user"].tolist() == pd.read_parquet(
        json.loads((comp.run_dir("tallrec") / "result.json").read_text())["predictions"])["user"].tolist()
    assert diffs[0]["value"] == pytest.approx(metrics.auc(mf["label"], mf["score"]) - aucs["tallrec"])
    assert by_key[("mf", "all", "auc")]["value"] == pytest.approx(metrics.auc(mf["label"], mf["score"]))
    d = diffs[1]
    assert d["value"] == pytest.approx(aucs["collm"] - aucs["tallrec"])
    assert d["ci_low"] <= d["value"] <= d["ci_high"] and d["resampled"] == "users" and d["n_test"] == 2 * N_USERS
    md = path.read_text()
    assert "## Paired differences vs tallrec" in md and "| auc diff |" in md
    assert "diff_vs_tallrec" not in md.split("## Paired differences")[0]  # not a column of the main table
    csv = pd.read_csv(tmp_path / "report" / "results.csv")
    assert "diff_vs_tallrec_auc" in set(csv["metric"])


# ------------------------------------------------------------------ next-item: helpers and report records
def _nextitem_frame(hit_rows: list[int], n: int = 6, order: list[int] | None = None) -> pd.DataFrame:
    """Target in column 0; rows in ``hit_rows`` rank it first, the others third (NDCG@10 = 1 / log2(4) = 0.5)."""
    rows = []
    for i in order or range(n):
        scores = [0.9, 0.1, 0.2, 0.0] if i in hit_rows else [0.5, 0.9, 0.8, 0.1]
        rows.append({"row_index": i, "user": 100 + i, "target_index": 0, "scores": scores})
    return pd.DataFrame(rows)


def test_paired_ranking_differences_golden_and_aligned_on_row_index():
    a = _nextitem_frame([0, 1, 2, 3])
    b = _nextitem_frame([0, 1], order=[5, 3, 1, 0, 2, 4])  # another row order: aligned on row_index
    d = scoring.paired_ranking_differences(a, b, n_resamples=200, seed=0)
    assert d["hr@1"].value == pytest.approx(4 / 6 - 2 / 6)
    # rows 2 and 3: a has NDCG 1, b 0.5 -> (2 * 0.5) / 6
    assert d["ndcg@10"].value == pytest.approx(1 / 6)
    assert d["hr@1"].ci_low >= 0.0 and d["ndcg@10"].ci_low >= 0.0  # a never does worse on a row
    same = scoring.paired_ranking_differences(a, a, n_resamples=50, seed=0)
    assert all((e.value, e.ci_low, e.ci_high) == (0.0, 0.0, 0.0) for e in same.values())
    with pytest.raises(ValueError, match="same rows"):
        scoring.paired_ranking_differences(a, b.iloc[:5], n_resamples=10)
    shifted = b.assign(target_index=1)
    with pytest.raises(ValueError, match="target_index"):
        scoring.paired_ranking_differences(a, shifted, n_resamples=10)


def test_paired_difference_records_from_run_results(tmp_path):
    runs = {"sasrec": None, "tallrec": [0, 1], "llara": [0, 1, 2, 3], "ilora": [0, 1]}
    paths = []
    for method, hits in runs.items():
        run = tmp_path / "runs" / method
        run.mkdir(parents=True)
        data = {"records": [{"protocol": "nextitem:ml100k_loo", "method": method, "metric": "hr@1", "seed": 3}],
                "profile": {"n_bootstrap": 100}}
        if hits is not None:
            pred = run / "logs" / "version_0" / "predictions_test.parquet"
            pred.parent.mkdir(parents=True)
            write_predictions(_nextitem_frame(hits), pred)
            data["predictions"] = str(tmp_path / "elsewhere" / "predictions_test.parquet")  # moved: found under the run
        (run / "result.json").write_text(json.dumps(data))
        paths.append(run / "result.json")
    recs = report.paired_difference_records(paths)
    got = {(r["method"], r["metric"]): r for r in recs}
    assert set(got) == {(m, f"diff_vs_tallrec_{k}") for m in ("llara", "ilora") for k in ("hr@1", "ndcg@10")}
    assert got[("llara", "diff_vs_tallrec_hr@1")]["value"] == pytest.approx(2 / 6)
    ilora = got[("ilora", "diff_vs_tallrec_ndcg@10")]
    assert (ilora["value"], ilora["ci_low"], ilora["ci_high"]) == (0.0, 0.0, 0.0)
    for r in recs:
        assert all(k in r for k in report.REQUIRED_KEYS) and r["resampled"] == "rows" and r["n_test"] == 6
    # no baseline run among the results: no differences
    assert report.paired_difference_records([p for p in paths if "tallrec" not in str(p)]) == []
    table = report.differences_table(recs)
    assert "| nextitem:ml100k_loo | llara | all | 0.3333 [" in table and "hr@1 diff" in table
    assert "diff_vs" not in report.markdown_table(recs + [dict(recs[0], metric="hr@1")])


@pytest.mark.slow
def test_nextitem_compare_reports_paired_differences_from_real_runs(tmp_path):
    """The tiny LLM runs' own predictions_test.parquet files feed the differences (about 10 s)."""
    work = tmp_path / "work"
    (work / "cf").mkdir(parents=True)
    shutil.copytree(make_split(tmp_path, "next_item"), work / "ml100k_loo")
    shutil.copytree(make_cf_dirs(tmp_path)["sasrec"], work / "cf" / "sasrec_ml100k_loo-ep1")
    as_compare_work(work / "ml100k_loo", work / "cf" / "sasrec_ml100k_loo-ep1", "nextitem/loo", "ml-100k")
    profile = replace(PROFILES["smoke"], test_rows=4, generate=False)
    comp = compare.Comparison("nextitem", ["tallrec", "llara"], profile, work, tmp_path / "report",
                              backbone=str(make_backbone_dir(tmp_path, "llama")), log=lambda msg: None)
    comp.run()
    records = json.loads((tmp_path / "report" / "results.json").read_text())
    value = {(r["method"], r["metric"]): r["value"] for r in records}
    for metric in ("hr@1", "ndcg@10"):
        assert value[("llara", f"diff_vs_tallrec_{metric}")] == pytest.approx(
            value[("llara", metric)] - value[("tallrec", metric)])
    assert ("tallrec", "diff_vs_tallrec_hr@1") not in value
    assert "## Paired differences vs tallrec" in (tmp_path / "report" / "results.md").read_text()
