"""Catalogue of bad inputs to `collab-llm prepare` (issue 11, data layer).

Every case in :data:`CASES` runs the real command line (``collab_llm.cli.main(["prepare", ...])``) on
small files in ``tmp_path`` and asserts:

- exit code 2 (:data:`collab_llm.errors.USER_ERROR_EXIT`), no traceback;
- exactly one line on stderr, ``collab-llm: error: ...``, naming the file (and line / column where
  there is one) and matching the case's patterns (which include the flag that changes the behaviour
  where there is one);
- nothing written or deleted: every path under ``tmp_path`` (files with their bytes, folders, links)
  is the same before and after.

README.md "What happens on bad input (data layer)" counts these cases. The tests after the catalogue
check the other side: what is accepted (30-digit ids, ``--encoding``, ``--overwrite``, empty folders)
and that leftovers of a killed run are cleaned.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd
import pytest

from collab_llm.cli import main as cli_main
from collab_llm.data import load_split
from collab_llm.errors import USER_ERROR_EXIT

# 4 users x 5 items each (users u1..u4, items m1..m9): a valid loo input with --n-candidates 3
GOOD_ROWS = [f"u{u},m{(u + i) % 9 + 1},{1 + (u + i) % 5},{1000 * u + i}" for u in range(1, 5) for i in range(1, 6)]
HEADER = "user,item,rating,timestamp"
GOOD_INTER = HEADER + "\n" + "\n".join(GOOD_ROWS) + "\n"
GOOD_ITEMS = "item,title,genre\n" + "\n".join(f"m{i},Film {i},Drama" for i in range(1, 10)) + "\n"


def inter_with(*rows: str) -> str:
    """The good interactions plus ``rows`` appended (lines 22, 23, ... of the file)."""
    return GOOD_INTER + "\n".join(rows) + "\n"


def items_with(*rows: str) -> str:
    """The good items plus ``rows`` appended (lines 11, 12, ... of the file)."""
    return GOOD_ITEMS + "\n".join(rows) + "\n"


@dataclass
class Case:
    """One bad input: the files of the input folder, extra arguments, and what the error line must say.

    ``args`` replace the defaults (``--protocol loo --out {tmp}/out``) key by key; ``{in}`` / ``{tmp}`` are
    the input folder and ``tmp_path``. ``setup(tmp_path)`` prepares e.g. an existing ``--out``.
    """

    name: str
    patterns: list[str]
    inter: str | bytes = GOOD_INTER
    items: str | bytes = GOOD_ITEMS
    args: dict[str, str | None] = field(default_factory=dict)
    setup: Callable[[Path], None] | None = None
    inter_name: str = "inter.csv"


def _prepared_split(tmp: Path) -> None:
    assert cli_main(_argv(tmp, Case("setup", []))) == 0


def _foreign_folder(tmp: Path) -> None:
    (tmp / "out").mkdir()
    (tmp / "out" / "thesis.tex").write_text("years of work")


def _split_with_extra_file(tmp: Path) -> None:
    _prepared_split(tmp)
    (tmp / "out" / "notes.txt").write_text("mine")


def _fake_manifest(tmp: Path) -> None:
    (tmp / "out").mkdir()
    (tmp / "out" / "manifest.json").write_text(json.dumps({"source": "x", "files": {}}))
    (tmp / "out" / "data.bin").write_bytes(b"\x00\x01")


def _symlink_out(tmp: Path) -> None:
    (tmp / "elsewhere").mkdir()
    (tmp / "elsewhere" / "keep.txt").write_text("keep")
    os.symlink(tmp / "elsewhere", tmp / "out")


def _cache(tmp: Path) -> None:
    (tmp / "cache" / "data").mkdir(parents=True)
    (tmp / "cache" / "data" / "ml-100k.inter").write_text("x")


def _corrupt_parquet(tmp: Path) -> None:
    (tmp / "in" / "inter.parquet").write_bytes(b"PAR1 this is not parquet PAR1")


CASES: list[Case] = [
    # --- interaction file: structure ------------------------------------------------------------------
    Case("missing column", [r"inter\.csv: missing column\(s\) \['rating'\]", r"--rating-col"],
         inter="user,item,timestamp\nu1,m1,5\n"),
    Case("wrong --user-col", [r"inter\.csv: missing column\(s\) \['uid'\]", r"--user-col"], args={"--user-col": "uid"}),
    Case("empty file", [r"inter\.csv: the file is empty"], inter=""),
    Case("header only", [r"inter\.csv: the file has no data rows"], inter=HEADER + "\n"),
    Case("blank lines only", [r"inter\.csv: the file has no header line"], inter="\n\n\n"),
    Case("ragged row", [r"inter\.csv: cannot be parsed", r"line 23"], inter=inter_with("u1,m2,3,5", "u1,m3,3,6,extra")),
    Case("unsupported file type", [r"inter\.xlsx: unsupported file type '\.xlsx'"], inter_name="inter.xlsx"),
    Case("missing file", [r"nope\.csv: file not found"], args={"--interactions": "{in}/nope.csv"}),
    Case("folder as file", [r"sub: file not found \(expected a readable file\)"], args={"--interactions": "{in}/sub"},
         setup=lambda tmp: (tmp / "in" / "sub").mkdir()),
    Case("corrupt parquet", [r"inter\.parquet: not a readable Parquet file"], args={"--interactions": "{in}/inter.parquet"},
         setup=_corrupt_parquet),
    Case("--items missing", [r"inter\.csv: --items is required with --interactions"], args={"--items": None}),
    # --- interaction file: values ----------------------------------------------------------------------
    Case("rating not numeric", [r"inter\.csv line 22: column 'rating' is not a number", r"'five'"],
         inter=inter_with("u1,m2,five,7")),
    Case("rating infinite", [r"inter\.csv line 22: column 'rating' is not a number", r"inf"], inter=inter_with("u1,m2,inf,7")),
    Case("timestamp a date", [r"inter\.csv line 22: column 'timestamp' is not a number \(unix seconds\)", r"2021-01-01"],
         inter=inter_with("u1,m2,3,2021-01-01")),
    Case("timestamp fractional", [r"inter\.csv line 22: column 'timestamp' has value 1\.5; expected whole seconds"],
         inter=inter_with("u1,m2,3,1.5")),
    Case("timestamp negative", [r"inter\.csv line 22: column 'timestamp' has value -3", r"since 1970"],
         inter=inter_with("u1,m2,3,-3")),
    Case("timestamp 1e20", [r"inter\.csv line 22: column 'timestamp' has value 1e\+20", r"up to 7258118400 \(2200-01-01\)"],
         inter=inter_with("u1,m2,3,1e20")),
    Case("timestamp after 2200", [r"inter\.csv line 22: column 'timestamp' has value 8000000000", r"2200-01-01"],
         inter=inter_with("u1,m2,3,8000000000")),
    Case("timestamp in milliseconds", [r"inter\.csv line 2: column 'timestamp'", r"milliseconds"],
         inter=HEADER + "\n" + "\n".join(r.rsplit(",", 1)[0] + f",{1600000000000 + k}" for k, r in enumerate(GOOD_ROWS)) + "\n"),
    Case("empty user", [r"inter\.csv line 22: column 'user' is empty", r"--on-missing-values drop"],
         inter=inter_with(",m2,3,7")),
    Case("user 'None'", [r"inter\.csv line 22: column 'user' holds a missing-value marker \(value 'None'",
                         r"--on-missing-values drop"], inter=inter_with("None,m2,3,7")),
    Case("empty rating", [r"inter\.csv line 22: column 'rating' is empty", r"--on-missing-values drop"],
         inter=inter_with("u1,m2,,7")),
    Case("line after blank lines", [r"inter\.csv line 25: column 'rating' is not a number"],
         inter=GOOD_INTER + "\n\n  \nu1,m2,x,7\n"),
    Case("duplicate pair", [r"inter\.csv line 2: user 'u1' interacts with item 'm3' more than once", r"--on-duplicates drop"],
         inter=inter_with("u1,m3,2,9999")),
    Case("unknown item", [r"inter\.csv line 22: column 'item' value 'm77' has no row in the item file .*items\.csv",
                          r"--on-unknown-items drop"], inter=inter_with("u1,m77,3,7")),
    Case("non-UTF-8 interactions", [r"inter\.csv line 23: bytes b'\\xe9' at byte offset \d+ are not valid utf-8", r"--encoding"],
         inter=inter_with("u1,m2,3,7").encode() + b"caf\xe9,m1,3,8\n"),
    Case("unknown --encoding", [r"inter\.csv: unknown encoding 'klingon'", r"--encoding"], args={"--encoding": "klingon"}),
    # --- item file --------------------------------------------------------------------------------------
    Case("missing title column", [r"items\.csv: missing column\(s\) \['title'\]", r"--title-col"],
         items="item,name\n" + "\n".join(f"m{i},Film {i}" for i in range(1, 10)) + "\n"),
    Case("missing text column", [r"items\.csv: missing column\(s\) \['year'\]", r"--text-cols"],
         args={"--text-cols": "year"}),
    Case("header-only items", [r"items\.csv: the file has no data rows"], items="item,title\n"),
    Case("empty title", [r"items\.csv line 3: column 'title' is empty", r"--on-missing-titles drop"],
         items=GOOD_ITEMS.replace("m2,Film 2,", "m2,,")),
    Case("title 'None'", [r"items\.csv line 3: column 'title' holds a missing-value marker \(value 'None'",
                          r"--on-missing-titles drop"], items=GOOD_ITEMS.replace("m2,Film 2,", "m2,None,")),
    Case("title 'nan'", [r"items\.csv line 4: column 'title' holds a missing-value marker \(value 'nan'"],
         items=GOOD_ITEMS.replace("m3,Film 3,", "m3,nan,")),
    Case("placeholder in title", [r"items\.csv line 5: column 'title' value 'The \[HistoryEmb\] Show' contains the prompt "
                                  r"placeholder '\[HistoryEmb\]'"],
         items=GOOD_ITEMS.replace("m4,Film 4,", "m4,The [HistoryEmb] Show,")),
    Case("placeholder in text column", [r"items\.csv line 10: column 'genre' value '\[UserEmb\]'", r"placeholder"],
         items=GOOD_ITEMS.replace("m9,Film 9,Drama", "m9,Film 9,[UserEmb]"), args={"--text-cols": "genre"}),
    Case("duplicate item id", [r"items\.csv: column 'item' value 'm2' occurs more than once \(.*line 3 and .*line 11\)"],
         items=items_with("m2,Film 2b,Drama")),
    Case("duplicate titles", [r"items\.csv: column 'title': 2 items share a title", r"--on-duplicate-titles"],
         items=GOOD_ITEMS.replace("Film 2,", "Film 1,"), args={"--on-duplicate-titles": "error"}),
    Case("non-UTF-8 items", [r"items\.csv line 3: bytes b'\\xe9' at byte offset 46 are not valid utf-8", r"--encoding"],
         items=GOOD_ITEMS.replace("m2,Film 2,", "m2,Film 2 caf\udce9,").encode("utf-8", "surrogateescape")),
    # --- protocol outputs ---------------------------------------------------------------------------------
    Case("loo: every user too short", [r"inter\.csv: protocol loo on inter gives no train/valid/test examples",
                                       r"0 of 4 users have at least 3 interactions"],
         inter=HEADER + "\n" + "\n".join(GOOD_ROWS[k] for k in (0, 1, 5, 6, 10, 11, 15, 16)) + "\n"),
    Case("llara: every user too short", [r"inter\.csv: protocol llara on inter gives no", r"at least 4 interactions"],
         inter=HEADER + "\n" + "\n".join(GOOD_ROWS[k] for k in (0, 1, 2, 5, 6, 7)) + "\n", args={"--protocol": "llara"}),
    Case("collm: no month window", [r"inter\.csv: protocol collm on inter gives no train/valid/test examples", r"20-month window"],
         args={"--protocol": "collm"}),
    Case("tallrec: too few rows for few-shot sets", [r"inter\.csv: protocol tallrec: few-shot size 16 must be in 1\.\.\d+"],
         args={"--protocol": "tallrec"}),
    Case("--n-candidates too large", [r"inter\.csv: protocol loo on inter: --n-candidates must be in 1\.\.8"],
         args={"--n-candidates": "50"}),
    # --- output folder ------------------------------------------------------------------------------------
    Case("--out is a file", [r"out: is an existing file, not a folder"], setup=lambda tmp: (tmp / "out").write_text("x")),
    Case("--out below a file", [r"out/sub: .*out is a file, not a folder"], args={"--out": "{tmp}/out/sub"},
         setup=lambda tmp: (tmp / "out").write_text("x")),
    Case("--out is the input folder", [r"in: holds the input file .*inter\.csv"], args={"--out": "{in}"}),
    Case("--out holds the input folder", [r"holds the input file .*inter\.csv"], args={"--out": "{tmp}"}),
    Case("--out is an input file", [r"items\.csv: is the input file; refusing"], args={"--out": "{in}/items.csv"}),
    Case("--out is a foreign folder", [r"out: is a non-empty folder without a split manifest\.json", r"thesis\.tex"],
         setup=_foreign_folder),
    Case("--out is a split, no --overwrite", [r"out: already holds a prepared split \(nextitem/loo of inter\)",
                                              r"--overwrite"], setup=_prepared_split),
    Case("--out split with a foreign file", [r"out: is a split folder that also holds files prepare did not write",
                                             r"notes\.txt"], setup=_split_with_extra_file, args={"--overwrite": ""}),
    Case("--out with another manifest", [r"out: is a non-empty folder without a split manifest\.json"], setup=_fake_manifest,
         args={"--overwrite": ""}),
    Case("--out is a symlink", [r"out: is a symbolic link"], setup=_symlink_out, args={"--overwrite": ""}),
    Case("--out inside the asset cache", [r"cache/data/x: overlaps the asset cache"],
         args={"--out": "{tmp}/cache/data/x", "--cache": "{tmp}/cache"}, setup=_cache),
    Case("--out holds the asset cache", [r"overlaps the asset cache"],
         args={"--out": "{tmp}/cache", "--cache": "{tmp}/cache/data", "--dataset": "ml-100k"}, setup=_cache),
    Case("planted: no users", [r"--dataset planted: --planted-users must be >= 1; got 0"],
         args={"--dataset": "planted", "--planted-users": "0"}),
    Case("planted: follow above 1", [r"--dataset planted: --planted-follow must be in \[0, 1\]; got 2\.0"],
         args={"--dataset": "planted", "--planted-follow": "2"}),
]

DEFAULTS = {"--interactions": "{in}/inter.csv", "--items": "{in}/items.csv", "--protocol": "loo", "--out": "{tmp}/out",
            "--n-candidates": "3"}


def _argv(tmp: Path, case: Case) -> list[str]:
    args = {**DEFAULTS, "--interactions": "{in}/" + case.inter_name, **case.args}
    if "--dataset" in case.args:
        args.pop("--interactions"), args.pop("--items")
    argv = ["prepare"]
    for flag, value in args.items():
        if value is None:
            continue
        argv.append(flag)
        if value != "":
            argv.append(value.format(**{"in": str(tmp / "in"), "tmp": str(tmp)}))
    return argv


def snapshot(root: Path) -> dict[str, object]:
    """Every path under ``root``: file bytes, ``"<dir>"``, or ``"-> target"`` for links."""
    out: dict[str, object] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            key = str(path.relative_to(root))
            if path.is_symlink():
                out[key] = f"-> {os.readlink(path)}"
            elif path.is_dir():
                out[key] = "<dir>"
            else:
                out[key] = path.read_bytes()
    return out


def _write_inputs(tmp: Path, case: Case) -> None:
    folder = tmp / "in"
    folder.mkdir()
    for name, content in ((case.inter_name, case.inter), ("items.csv", case.items)):
        path = folder / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())


def run_case(tmp: Path, case: Case, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    _write_inputs(tmp, case)
    if case.setup is not None:
        case.setup(tmp)
    capsys.readouterr()
    before = snapshot(tmp)
    code = cli_main(_argv(tmp, case))
    err = capsys.readouterr().err
    assert snapshot(tmp) == before, "the command wrote or deleted something"
    return code, err


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_clear_line_exit_2_nothing_touched(
    tmp_path: Path, case: Case, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("COLLAB_LLM_DEBUG", raising=False)
    monkeypatch.setenv("COLLAB_LLM_CACHE", str(tmp_path / "no-cache"))
    code, err = run_case(tmp_path, case, capsys)
    assert_one_line_user_error(code, err, case.patterns)


def assert_one_line_user_error(code: int, err: str, patterns: Sequence[str]) -> None:
    """Exit code 2, one ``collab-llm: error: ...`` line on stderr, no traceback, every pattern in it."""
    assert code == USER_ERROR_EXIT, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("collab-llm: error: "), err
    assert "Traceback" not in err
    for pattern in patterns:
        assert re.search(pattern, lines[0]), f"{pattern!r} not in {lines[0]!r}"


def test_catalogue_is_large_enough() -> None:
    assert len(CASES) >= 30 and len({c.name for c in CASES}) == len(CASES)


# --- what is accepted ------------------------------------------------------------------------------------


def _good_run(tmp: Path, case: Case, *extra: str) -> int:
    return cli_main([*_argv(tmp, case), *extra])


def test_thirty_digit_ids_are_strings_mapped_in_natural_order(tmp_path: Path) -> None:
    big = ["123456789012345678901234567890", "99999999999999999999999999999", "000000000000000000000000000007"]
    items = [*big, "5", "6", "8"]
    rows = [f"{u},{items[(k + i) % 6]},3,{10 * k + i}" for k, u in enumerate(big) for i in range(4)]
    case = Case("ids", [], inter=HEADER + "\n" + "\n".join(rows) + "\n",
                items="item,title\n" + "\n".join(f"{b},Film {k}" for k, b in enumerate(items)) + "\n")
    _write_inputs(tmp_path, case)
    assert _good_run(tmp_path, case) == 0
    split = load_split(tmp_path / "out")
    assert split.users["raw_id"].tolist() == [big[2], big[1], big[0]]  # 7 < 10^29 - 1 < 1.2 * 10^29
    assert split.items["raw_id"].tolist() == ["5", "6", big[2], "8", big[1], big[0]]


def test_encoding_flag_reads_latin1(tmp_path: Path) -> None:
    case = Case("latin1", [], items=GOOD_ITEMS.replace("Film 3", "Caf\xe9").encode("latin-1"))
    _write_inputs(tmp_path, case)
    assert _good_run(tmp_path, case, "--encoding", "latin-1") == 0
    assert "Caf\xe9" in load_split(tmp_path / "out").items["title"].tolist()


def test_overwrite_replaces_own_split_and_empty_folder_is_fine(tmp_path: Path) -> None:
    case = Case("ok", [])
    _write_inputs(tmp_path, case)
    (tmp_path / "out").mkdir()  # an empty folder may be written into
    assert _good_run(tmp_path, case) == 0
    assert _good_run(tmp_path, case, "--seed", "3", "--overwrite") == 0
    assert load_split(tmp_path / "out").manifest["seed"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out"]  # no .tmp-* / .old-* left


def test_leftovers_of_a_killed_run_are_cleaned_and_old_split_restored(tmp_path: Path) -> None:
    case = Case("ok", [])
    _write_inputs(tmp_path, case)
    assert _good_run(tmp_path, case) == 0
    # killed between "move the old split aside" and "move the new one in": the old split is .out.old-<pid>
    os.replace(tmp_path / "out", tmp_path / ".out.old-999999999")
    (tmp_path / ".out.tmp-999999999-abc").mkdir()
    (tmp_path / ".out.tmp-999999999-abc" / "train.parquet").write_bytes(b"half")
    (tmp_path / ".other.tmp-999999999-abc").mkdir()  # another target's: not ours to clean
    assert _good_run(tmp_path, case, "--seed", "5", "--overwrite") == 0
    assert load_split(tmp_path / "out").manifest["seed"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.tmp-999999999-abc", "in", "out"]


def test_debug_flag_and_env_show_the_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    case = Case("debug", [], items="item,title\n")
    _write_inputs(tmp_path, case)
    monkeypatch.delenv("COLLAB_LLM_DEBUG", raising=False)
    assert cli_main(["--debug", *_argv(tmp_path, case)]) == USER_ERROR_EXIT
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("collab-llm: error: ")
    monkeypatch.setenv("COLLAB_LLM_DEBUG", "1")
    assert cli_main(_argv(tmp_path, case)) == USER_ERROR_EXIT
    assert "Traceback" in capsys.readouterr().err


def test_parquet_timestamps_out_of_range(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    frame = pd.DataFrame({"user": ["a", "a"], "item": ["m1", "m2"], "rating": [3.0, 4.0],
                          "timestamp": pd.to_datetime(["2001-01-01", "2250-01-01"]).tz_localize("UTC")})
    case = Case("parquet", [], inter_name="inter.parquet")
    _write_inputs(tmp_path, case)
    frame.to_parquet(tmp_path / "in" / "inter.parquet")
    assert cli_main(_argv(tmp_path, case)) == USER_ERROR_EXIT
    assert re.search(r"inter\.parquet row 1: column 'timestamp' has value 2250-01-01", capsys.readouterr().err)
