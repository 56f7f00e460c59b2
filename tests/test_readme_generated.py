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
