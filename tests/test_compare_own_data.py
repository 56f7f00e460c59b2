"""``collab-llm compare --data`` on a user's own interactions (a small CSV, not MovieLens; tiny backbone):
prepare, compare every method on the same rows and candidates, one report; a rerun with the CF model it
trained given as ``--cf-model`` is the same comparison (every run skipped); refusals are one line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_llm_fixtures import make_backbone_dir, make_cf_dirs  # noqa: E402

from collab_llm import cli, compare  # noqa: E402
from collab_llm.fingerprint import split_sha256  # noqa: E402
from collab_llm.report import REQUIRED_KEYS  # noqa: E402

N_USERS, N_ITEMS, LENGTH = 12, 30, 8
WORDS = ["Red", "Blue", "Kettle", "Lamp", "Chair", "Mug", "Desk", "Sofa", "Rug", "Vase"]


def write_user_csv(folder: Path) -> tuple[Path, Path]:
    """A shop's purchases: string user / product ids, its own column names, unix timestamps, a product file."""
    rng = np.random.default_rng(0)
    rows = []
    for u in range(N_USERS):
        for t, item in enumerate(rng.choice(N_ITEMS, size=LENGTH, replace=False)):
            rows.append({"customer": f"c{u:03d}", "sku": f"p{item:03d}", "stars": float(rng.integers(1, 6)),
                         "ts": 1_600_000_000 + 3600 * (LENGTH * u + t)})
    folder.mkdir(parents=True, exist_ok=True)
    interactions, items = folder / "purchases.csv", folder / "products.csv"
    pd.DataFrame(rows).to_csv(interactions, index=False)
    pd.DataFrame({"sku": [f"p{i:03d}" for i in range(N_ITEMS)],
                  "name": [f"{WORDS[i % 10]} {WORDS[(3 * i + 1) % 10]} {i}" for i in range(N_ITEMS)]}).to_csv(items, index=False)
    return interactions, items


def prepare(tmp_path: Path) -> Path:
    interactions, items = write_user_csv(tmp_path / "shop")
    out = tmp_path / "work" / "shop_loo"
    assert cli.main(["prepare", "--interactions", str(interactions), "--items", str(items), "--user-col", "customer",
                     "--item-col", "sku", "--rating-col", "stars", "--timestamp-col", "ts", "--item-id-col", "sku",
                     "--title-col", "name", "--protocol", "loo", "--n-candidates", "5", "--out", str(out)]) == 0
    return out


@pytest.mark.slow
def test_compare_on_a_users_own_csv_end_to_end(tmp_path, monkeypatch):
    split = prepare(tmp_path)
    backbone = make_backbone_dir(tmp_path, "llama")
    report = tmp_path / "report"
    common = ["--profile", "smoke", "--test-rows", "4", "--backbone", str(backbone), "--work-dir", str(tmp_path / "work"),
              "--report-dir", str(report)]
    methods = ["sasrec", "tallrec", "llara", "head", "llara+sdpo"]
    assert cli.main(["compare", "--data", str(split), "--methods", *methods, *common]) == 0

    records = json.loads((report / "results.json").read_text())
    runs = [r for r in records if not r["metric"].startswith("diff_vs_")]
    assert {r["method"] for r in runs} == set(methods)
    for r in runs:
        assert all(k in r for k in REQUIRED_KEYS)
        assert r["protocol"] == "nextitem:shop_loo" and r["n_test"] == 4
        assert r["ci_low"] <= r["value"] <= r["ci_high"]
    assert {("sasrec", "hr@1"), ("llara", "ndcg@10"), ("head", "hr@1"), ("llara+sdpo", "hr@1")} <= {
        (r["method"], r["metric"]) for r in runs}
    # the CF model alone is scored on the LLMs' rows and candidates: paired with TALLRec like the LLM runs
    assert {r["method"] for r in records if r["metric"] == "diff_vs_tallrec_hr@1"} == {"sasrec", "llara", "head", "llara+sdpo"}
    assert any(r["method"] == "llara+sdpo" and r["metric"] == "diff_vs_llara_hr@1" for r in records)
    # the CF model was trained here on the user's split (early-stopping config), keyed by the split's fingerprint
    (cf_dir,) = (tmp_path / "work" / "cf").iterdir()
    assert cf_dir.name.startswith("sasrec_shop_loo-")
    sha = split_sha256(split)
    for m in methods:
        result = json.loads((report / "runs" / m / "result.json").read_text())
        assert result["fingerprint"]["split_sha256"] == sha
        assert result["n_test_rows"] == 4
    # the prompts name items as items (the default wording with --data), recorded with the run
    bundle = json.loads((report / "runs" / "llara" / "bundle" / "bundle.json").read_text())
    assert "llara_movielens@item" in json.dumps(bundle)
    assert json.loads((report / "runs" / "llara" / "result.json").read_text())["fingerprint"]["item_word"] == "item"
    sasrec = json.loads((report / "runs" / "sasrec" / "result.json").read_text())["records"][0]
    assert "configs/cf/sasrec_loo.yaml" in sasrec["command"]
    # every LLM method scored the same sampled rows the CF model did
    users = None
    for m in ("tallrec", "llara", "head"):
        frame = pd.read_parquet(json.loads((report / "runs" / m / "result.json").read_text())["predictions"])
        users = frame["user"].tolist() if users is None else users
        assert frame["user"].tolist() == users and len(users) == 4

    # the same comparison with that CF model given explicitly: same fingerprints, so every run is skipped
    def boom(*a, **k):
        raise AssertionError("a finished run was run again")

    monkeypatch.setattr(compare.Comparison, "run_llm", boom)
    monkeypatch.setattr(compare.Comparison, "run_cf_alone", boom)
    assert cli.main(["compare", "--data", str(split), "--cf-model", str(cf_dir), "--methods", *methods, *common]) == 0
    info = json.loads((report / "run_info.json").read_text())
    assert sorted(info["resumed"]) == sorted(f"nextitem/{m}" for m in methods)


def test_own_data_refusals_are_one_line(tmp_path, capsys):
    split = prepare(tmp_path)
    other = make_cf_dirs(tmp_path)  # 24 items: another catalogue
    cases = [
        (["--data", str(tmp_path / "shop")], "not a prepared split"),
        (["--data", str(split), "--protocol", "yesno"], "is one nextitem split"),
        (["--data", str(split), "--cf-model", str(other["mf"])], "a 'mf' model"),
        (["--data", str(split), "--cf-model", str(other["sasrec"]), "--methods", "sasrec"], "items but the split"),
    ]
    for args, expected in cases:
        code = cli.main(["compare", *args, "--profile", "smoke", "--work-dir", str(tmp_path / "work"),
                         "--report-dir", str(tmp_path / "r"), "--backbone", str(tmp_path / "none")])
        err = capsys.readouterr().err.strip()
        assert code == 2 and expected in err and "\n" not in err, (args, err)


@pytest.mark.slow
def test_compare_on_a_users_own_yes_no_split(tmp_path):
    """A Yes/No split of the user's CSV (TALLRec's protocol, its few-shot train_256): compare reads the protocol
    from the manifest, trains MF on it (early-stopping config) and runs the Yes/No methods on the same rows."""
    rng = np.random.default_rng(1)
    rows = [{"customer": f"c{u:03d}", "sku": f"p{item:03d}", "stars": float(rng.integers(1, 6)), "ts": 1_600_000_000 + 60 * k}
            for k, (u, item) in enumerate((u, i) for u in range(40) for i in rng.choice(N_ITEMS, size=10, replace=False))]
    (tmp_path / "shop").mkdir()
    pd.DataFrame(rows).sample(frac=1.0, random_state=0).to_csv(tmp_path / "shop" / "ratings.csv", index=False)
    _, items = write_user_csv(tmp_path / "shop")
    split = tmp_path / "work" / "shop_yesno"
    assert cli.main(["prepare", "--interactions", str(tmp_path / "shop" / "ratings.csv"), "--items", str(items),
                     "--user-col", "customer", "--item-col", "sku", "--rating-col", "stars", "--timestamp-col", "ts",
                     "--item-id-col", "sku", "--title-col", "name", "--protocol", "tallrec", "--out", str(split)]) == 0
    report = tmp_path / "report"
    assert cli.main(["compare", "--data", str(split), "--methods", "mf", "tallrec", "collm", "--profile", "smoke",
                     "--test-rows", "12", "--item-word", "book", "--backbone", str(make_backbone_dir(tmp_path, "llama")),
                     "--work-dir", str(tmp_path / "work"), "--report-dir", str(report)]) == 0
    records = json.loads((report / "results.json").read_text())
    assert {(r["method"], r["metric"]) for r in records} >= {("mf", "auc"), ("tallrec", "auc"), ("collm", "auc"),
                                                             ("mf", "diff_vs_tallrec_auc"), ("collm", "diff_vs_tallrec_auc")}
    assert {r["protocol"] for r in records} == {"yesno:shop_yesno"}
    assert all(r["n_test"] == 12 for r in records if r["metric"] == "auc" and r["subset"] == "all")
    (cf_dir,) = (tmp_path / "work" / "cf").iterdir()
    assert cf_dir.name.startswith("mf_shop_yesno-")
    assert "collm_movielens@book" in (report / "runs" / "collm" / "bundle" / "bundle.json").read_text()


def test_dry_run_prints_each_methods_command_and_runs_nothing(tmp_path, capsys, monkeypatch):
    split = prepare(tmp_path)
    monkeypatch.setattr(compare.Comparison, "run", lambda self: pytest.fail("--dry-run ran the comparison"))
    capsys.readouterr()
    assert cli.main(["compare", "--dry-run", "--data", str(split), "--profile", "quick", "--methods", "sasrec", "llara", "llara+sdpo",
                     "--backbone", "some/backbone", "--work-dir", str(tmp_path / "work")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# sasrec: the CF model alone, trained once\ncollab-llm cf fit --config ")
    assert "configs/cf/sasrec_loo.yaml" in out and "--trainer.max_epochs 8" in out  # the quick profile's cap
    llara = out.split("# llara\n")[1].splitlines()[0]
    for piece in ("collab-llm fit --config", "configs/llm/model/llara.yaml", "--trainer.max_steps 8", "--data.batch_size 2",
                  "--data.test_sample 32", "--data.test_sample_seed 0", "--model.template llara_movielens@item",
                  f"--data.data_dir {split}", "--model.backbone_path some/backbone"):
        assert piece in llara, piece
    assert "configs/llm/model/sdpo.yaml" in out.split("# llara+sdpo\n")[1]
    assert not (tmp_path / "work" / "cf").exists() and not Path("reports/shop_loo-quick").exists()


def test_dry_run_spells_out_the_full_profile(tmp_path, capsys):
    """The README's full budget without reading code: every override the full profile makes, and the test step."""
    split = prepare(tmp_path)
    capsys.readouterr()
    assert cli.main(["compare", "--dry-run", "--data", str(split), "--profile", "full", "--methods", "llara", "head",
                     "--backbone", "some/backbone", "--work-dir", str(tmp_path / "work")]) == 0
    out = capsys.readouterr().out
    fit, test = out.split("# llara\n")[1].splitlines()[:2]
    for piece in ("--trainer.max_steps 48", "--data.batch_size 8", "--data.test_sample 100", "--model.warmup_steps 3",
                  "--model.eval_generation true", "--model.max_new_tokens 64", "--model.dtype auto",
                  "--model.n_bootstrap 1000", "--trainer.limit_val_batches 0"):
        assert piece in fit, piece
    assert test.startswith("collab-llm test " + fit[len("collab-llm fit "):] + " --ckpt_path ")
    assert test.endswith("runs/llara/logs/version_0/checkpoints/last.ckpt")
    head = out.split("# head\n")[1].splitlines()[0]
    assert "--model.head_init_rows 384" in head and "--model.eval_generation false" in head


def test_compare_prepares_a_users_csv_itself(tmp_path, capsys, monkeypatch):
    """``compare --interactions --items`` + prepare's column flags: one step from a CSV (prepare's own CLI into the
    work folder); --dry-run first prepares nothing; a rerun reuses the split; refusals name the flag."""
    interactions, items = write_user_csv(tmp_path / "shop")
    columns = ["--user-col", "customer", "--item-col", "sku", "--rating-col", "stars", "--timestamp-col", "ts",
               "--item-id-col", "sku", "--title-col", "name", "--n-candidates", "5"]
    common = ["--interactions", str(interactions), "--items", str(items), *columns, "--methods", "sasrec",
              "--profile", "smoke", "--work-dir", str(tmp_path / "work"), "--report-dir", str(tmp_path / "r")]
    capsys.readouterr()
    assert cli.main(["compare", "--dry-run", *common]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# the split, prepared first\ncollab-llm prepare --interactions ") and "--user-col customer" in out
    assert not (tmp_path / "work").exists()

    assert cli.main(["compare", *common]) == 0
    (split,) = (p for p in (tmp_path / "work").iterdir() if p.name.startswith("purchases_loo-"))
    assert json.loads((split / "manifest.json").read_text())["protocol"] == "nextitem/loo"
    records = json.loads((tmp_path / "r" / "results.json").read_text())
    assert {r["protocol"] for r in records} == {f"nextitem:{split.name}"}

    import collab_llm.data.cli as prepare_cli

    monkeypatch.setattr(prepare_cli, "main", lambda *a, **k: pytest.fail("the prepared split was prepared again"))
    capsys.readouterr()
    assert cli.main(["compare", "--dry-run", *common]) == 0
    assert "# the split, prepared earlier" in capsys.readouterr().out
    assert cli.main(["compare", *common]) == 0  # the finished run is skipped too

    for args, expected in ((["--interactions", str(interactions)], "--items FILE is required"),
                           (["--interactions", str(tmp_path / "nope.csv"), "--items", str(items)], "no such file"),
                           (["--data", str(split), "--interactions", str(interactions), "--items", str(items)], "not both")):
        code = cli.main(["compare", *args, "--work-dir", str(tmp_path / "work")])
        err = capsys.readouterr().err.strip()
        assert code == 2 and expected in err and "\n" not in err, (args, err)
    with pytest.raises(SystemExit):  # prepare's flags only with --interactions
        cli.main(["compare", "--user-col", "customer", "--work-dir", str(tmp_path / "work")])
