"""README sections generated from the committed result files: they equal what the files render to."""

from __future__ import annotations

import json
from pathlib import Path

from collab_llm import readme

ROOT = Path(__file__).resolve().parents[1]


def test_committed_readme_sections_match_the_result_files():
    text = (ROOT / "README.md").read_text()
    for name, (rel, _) in readme.SECTIONS.items():
        assert f"<!-- generated:{name} -->" in text, name
        assert (ROOT / rel).is_file(), rel
    assert readme.rendered(text) == text, "run: python -m collab_llm.readme"


def test_a_changed_result_changes_the_section(tmp_path):
    (tmp_path / "results" / "levers").mkdir(parents=True)
    (tmp_path / "results" / "levers" / "a.json").write_text(json.dumps({"x_hr1": 0.5, "layers": [{"layer": "final", "hr1": 0.25}]}))
    levers = {"setup": "s", "rows": [{"lever": "L", "data": "D", "source": "a.json", "hr1": "x_hr1", "permuted": "",
                                       "ref": "layers.final.hr1", "note": "n {layers.final.hr1}"}]}
    (tmp_path / "results" / "injection_levers.json").write_text(json.dumps(levers))
    doc = "a\n<!-- generated:injection_levers -->\nold\n<!-- /generated:injection_levers -->\nb\n"
    (tmp_path / "README.md").write_text(doc)
    new = readme.rendered(doc, tmp_path)
    assert "| 1 | L | D | 0.500 |  | 0.250 | n 0.250 |" in new and "old" not in new
    assert readme.main(["--check", "--readme", str(tmp_path / "README.md")]) == 1
    assert readme.main(["--readme", str(tmp_path / "README.md")]) == 0
    assert readme.main(["--check", "--readme", str(tmp_path / "README.md")]) == 0


def _rec(protocol: str, method: str, metric: str, value: float, subset: str = "all", **extra) -> dict:
    return {"protocol": protocol, "method": method, "metric": metric, "subset": subset, "value": value,
            "ci_low": value - 0.1, "ci_high": value + 0.1, "n_test": 100, "train_s": 12.0, "eval_s": 3.0, **extra}


def test_the_comparison_tables_come_from_the_report_records(tmp_path):
    records = [
        _rec("nextitem:ml100k_loo", "tallrec", "hr@1", 0.05), _rec("nextitem:ml100k_loo", "tallrec", "ndcg@10", 0.25),
        _rec("nextitem:ml100k_loo", "head", "hr@1", 0.4), _rec("nextitem:ml100k_loo", "head", "ndcg@10", 0.6),
        _rec("nextitem:ml100k_loo", "head", "diff_vs_tallrec_hr@1", 0.35),
        _rec("nextitem:ml100k_loo", "head", "diff_vs_tallrec_ndcg@10", 0.35),
        _rec("nextitem:ml100k_loo", "head", "diff_vs_sasrec_hr@1", -0.2),  # a run's own baseline
        _rec("nextitem:ml100k_loo", "sasrec", "hr@1", 0.6), _rec("nextitem:ml100k_loo", "sasrec", "ndcg@10", 0.8),
        _rec("yesno:ml1m_collm", "mf", "auc", 0.76), _rec("yesno:ml1m_collm", "mf", "auc", 0.82, subset="warm"),
    ]
    info = {"command": "collab-llm compare --profile full", "wall_s": 600.0, "finished": "2026-12-03 10:00:00",
            "cpu": {"model": "Some CPU", "isa": "avx2", "native_bf16": False}, "threads": 2, "peak_rss_gb": 5.0,
            "resumed": ["yesno/mf"],
            "protocols": {p: {"profile": {"llm_steps": 48, "batch_size": 8, "warmup_steps": 3}, "dtype": "float32",
                              "test_rows": n} for p, n in (("nextitem", 100), ("yesno", 500))}}
    text = readme.render_comparison(records, info)
    lines = text.splitlines()
    # SASRec first, the text baseline next, then the hybrid; one paired row for the head
    rows = [line for line in lines if line.startswith("| ") and "[" in line]
    assert rows[0].startswith("| SASRec alone | 0.600 [0.500, 0.700] | 0.800 [0.700, 0.900] | 12 | 3 |")
    assert rows[1].startswith("| TALLRec (text) | 0.050")
    assert rows[2].startswith("| head (hybrid") and "| +0.350 [+0.250, +0.450] | +0.350" in rows[3]
    assert "| MF alone | 0.760 [0.660, 0.860] | — | 0.820 [0.720, 0.920] | — | 12 | 3 |" in text
    assert "Some CPU (avx2, native bf16: no), 2 torch threads: wall time 10.0 min" in text
    assert "resumed runs (not in the wall time): yesno/mf" in text
    assert "Paired over the same rows, head minus sasrec: HR@1 -0.200 [-0.300, -0.100] (95% paired bootstrap)." in text
    assert "HR@1 (generated)" not in text  # no generation records: no generation columns
    # the section reads run_info.json beside the records
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "run_info.json").write_text(json.dumps(info))
    assert readme.SECTIONS["full_profile"][1](records, tmp_path) == text
