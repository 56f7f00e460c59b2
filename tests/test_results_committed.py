"""The committed full-profile report (results/) is complete and the README quotes it as measured."""

from __future__ import annotations

import json
from pathlib import Path

from collab_llm.report import REQUIRED_KEYS

ROOT = Path(__file__).resolve().parents[1]


def test_results_json_has_both_protocols_and_the_required_fields():
    records = json.loads((ROOT / "results" / "results.json").read_text())
    assert records and all(set(REQUIRED_KEYS) <= set(r) for r in records)
    methods = {(r["protocol"].split(":")[0], r["method"]) for r in records}
    assert methods == {("nextitem", m) for m in ("sasrec", "tallrec", "llara", "ilora", "head", "head_l4")} | {
        ("yesno", m) for m in ("mf", "tallrec", "collm", "head", "head_l4", "head_l4_user")}
    for r in records:
        assert r["ci_low"] <= r["value"] <= r["ci_high"], r
        assert r["n_test"] > 0 and r["train_s"] >= 0 and r["eval_s"] >= 0
    for name in ("results.md", "results.csv", "loss_curves.png"):
        assert (ROOT / "results" / name).is_file(), name
    assert list((ROOT / "results").glob("*.png")), "metric plots"
    # no data, no weights
    assert not [p for p in (ROOT / "results").rglob("*") if p.suffix in (".parquet", ".safetensors", ".bin", ".pt")]


def test_readme_quotes_the_committed_numbers():
    readme = (ROOT / "README.md").read_text()
    wanted = {"hr@1", "ndcg@10", "gen_hr@1", "gen_valid_ratio", "auc", "uauc"}
    records = json.loads((ROOT / "results" / "results.json").read_text())
    quoted = 0
    for r in records:
        if r["metric"] in wanted and (r.get("subset", "all") == "all" or r["metric"] == "auc"):
            cell = f"{r['value']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
            assert cell in readme, (r["protocol"], r["method"], r.get("subset"), r["metric"], cell)
            quoted += 1
    assert quoted >= 20
