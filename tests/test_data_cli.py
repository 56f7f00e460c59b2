"""`collab-llm prepare` on a user's own files (no cache needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from collab_llm.data import load_split
from collab_llm.data.cli import main
from collab_llm.errors import UserError


def test_prepare_cli_on_own_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # user u rates items (u + i) % 9 + 1 for i = 1..5: items 1, 3..9 occur (item 2 never does)
    rows = "\n".join(f"u{u},m{(u + i) % 9 + 1},{1 + (u + i) % 5},{100 * u + i}" for u in range(1, 5) for i in range(1, 6))
    (tmp_path / "inter.csv").write_text("uid,iid,stars,ts\n" + rows + "\n")
    (tmp_path / "items.csv").write_text("iid,name\n" + "\n".join(f"m{i},Film {i}" for i in range(1, 30)) + "\n")
    argv = ["--interactions", str(tmp_path / "inter.csv"), "--items", str(tmp_path / "items.csv"),
            "--user-col", "uid", "--item-col", "iid", "--rating-col", "stars", "--timestamp-col", "ts",
            "--item-id-col", "iid", "--title-col", "name", "--protocol", "loo", "--out", str(tmp_path / "out"),
            "--n-candidates", "3", "--seed", "4"]
    assert main(argv) == 0
    assert "[prepare] loo on inter" in capsys.readouterr().out
    split = load_split(tmp_path / "out")
    assert split.manifest["seed"] == 4 and split.n_users == 4 and split.n_items == 8
    assert split.manifest["tables"]["test"] == 4 and split.manifest["tables"]["train"] == 4 * 2
    assert split.items["title"].tolist() == [f"Film {i}" for i in (1, 3, 4, 5, 6, 7, 8, 9)]
    with pytest.raises(UserError, match=r"inter\.csv: --items is required with --interactions"):
        main(["--interactions", str(tmp_path / "inter.csv"), "--protocol", "loo", "--out", str(tmp_path / "x")])
