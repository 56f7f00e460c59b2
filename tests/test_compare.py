"""The compare command end to end on the tiny model: report files, records, and resume (skip)."""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_llm_fixtures import as_compare_work, make_backbone_dir, make_cf_dirs, make_split  # noqa: E402

from collab_llm import compare  # noqa: E402
from collab_llm.runs import PROFILES  # noqa: E402
from collab_llm.report import REQUIRED_KEYS  # noqa: E402


def _work(tmp_path: Path) -> tuple[Path, Path]:
    """A work folder as compare makes it: the split of its protocol / dataset / seed, a finished CF model."""
    work = tmp_path / "work"
    (work / "cf").mkdir(parents=True)
    shutil.copytree(make_split(tmp_path, "next_item"), work / "ml100k_loo")
    shutil.copytree(make_cf_dirs(tmp_path)["sasrec"], work / "cf" / "sasrec_ml100k_loo-ep1")
    as_compare_work(work / "ml100k_loo", work / "cf" / "sasrec_ml100k_loo-ep1", "nextitem/loo", "ml-100k")
    return work, make_backbone_dir(tmp_path, "llama")


@pytest.mark.slow
def test_compare_end_to_end_and_rerun_skips(tmp_path, monkeypatch):
    work, backbone = _work(tmp_path)
    report = tmp_path / "report"
    profile = replace(PROFILES["smoke"], test_rows=4)
    comp = compare.Comparison("nextitem", ["sasrec", "llara", "ilora", "head"], profile, work, report, backbone=str(backbone))
    path = comp.run()

    assert path == report / "results.md"
    for name in ("results.md", "results.csv", "results.json", "loss_curves.png"):
        assert (report / name).stat().st_size > 0, name
    assert list(report.glob("nextitem*hrat1.png")), "one plot per metric"
    records = json.loads((report / "results.json").read_text())
    assert {r["method"] for r in records} == {"sasrec", "llara", "ilora", "head"}
    for r in records:
        assert all(k in r for k in REQUIRED_KEYS)
        assert r["ci_low"] <= r["value"] <= r["ci_high"]
        assert r["n_test"] == 4
    metrics = {(r["method"], r["metric"]) for r in records}
    assert ("llara", "hr@1") in metrics and ("llara", "ndcg@10") in metrics
    assert ("llara", "gen_hr@1") in metrics and ("llara", "gen_valid_ratio") in metrics
    assert ("sasrec", "hr@1") in metrics
    assert ("head", "hr@1") in metrics and ("head", "gen_hr@1") not in metrics  # the head generates no text
    assert (report / "runs" / "head" / "bundle" / "head" / "head.safetensors").is_file()
    bundle = report / "runs" / "ilora" / "bundle"
    assert (bundle / "bundle.json").exists() and (bundle / "README.md").exists()
    csv = pd.read_csv(report / "results.csv")
    assert len(csv) == len(records)
    md = (report / "results.md").read_text()
    assert "| llara |" in md and "collab-llm fit" in md

    # a rerun skips both finished runs: any attempt to train would fail here
    def boom(*a, **k):
        raise AssertionError("a finished run was run again")

    monkeypatch.setattr(compare.Comparison, "run_llm", boom)
    monkeypatch.setattr(compare.Comparison, "run_cf_alone", boom)
    before = (report / "runs" / "llara" / "result.json").read_text()
    comp.run()
    assert (report / "runs" / "llara" / "result.json").read_text() == before

    # a finished run under another budget is not silently mixed into the report
    other = compare.Comparison("nextitem", ["llara"], replace(profile, llm_steps=3), work, report, backbone=str(backbone))
    with pytest.raises(ValueError, match="another budget"):
        other.run()


def test_compare_rejects_unknown_method(tmp_path):
    with pytest.raises(ValueError, match="no method"):
        compare.Comparison("nextitem", ["collm_typo"], PROFILES["smoke"], tmp_path, tmp_path / "r")


def test_yesno_llm_args_share_the_budget_and_few_shot_set(tmp_path):
    profile = replace(PROFILES["smoke"], llm_steps=10, test_rows=7)
    comp = compare.Comparison("yesno", ["tallrec", "collm"], profile, tmp_path, tmp_path / "r", seed=3)

    def value(args, flag):
        return args[args.index(flag) + 1] if flag in args else None

    collm, tallrec = comp.llm_run("collm").args(), comp.llm_run("tallrec").args()
    assert comp.llm_run("collm").data == comp.llm_run("tallrec").data == comp.data_settings()
    assert (comp.data_settings().test_sample, comp.data_settings().test_sample_seed) == (7, 3)  # typed, not strings
    assert value(collm, "--model.stage1_steps") == "5"  # half of the shared 10 steps is CoLLM's stage 1
    assert value(tallrec, "--model.stage1_steps") is None
    for args in (collm, tallrec):
        assert value(args, "--trainer.max_steps") == "10"
        assert value(args, "--data.train_table") == "train_256"
        assert (value(args, "--data.test_sample"), value(args, "--data.test_sample_seed")) == ("7", "3")


def test_head_method_scores_without_generation_and_aligns_on_the_budget(tmp_path):
    profile = replace(PROFILES["smoke"], llm_steps=6, batch_size=4, generate=True)
    for protocol in ("nextitem", "yesno"):
        comp = compare.Comparison(protocol, ["head"], profile, tmp_path, tmp_path / "r", backbone="unused")
        args = comp.llm_run("head").args()
        last = {flag: args[i + 1] for i, flag in enumerate(args[:-1]) if flag.startswith("--")}  # the last value wins
        assert last["--model.head_init_rows"] == "24"  # the same 24 training prompts as every method
        assert last["--model.eval_generation"] == "false"
        assert comp.model_config("head").scorer == "head" and comp.regime("head") == "joint"


def test_folded_method_runs_on_the_protocols_mf_and_a_bias_free_mf_is_refused_up_front(tmp_path):
    """``head_l4_user`` injects the protocol's own MF folded (no second CF model): its run reads the same CF
    folder as every Yes/No method, with ``cf_fold_biases``; a given MF without biases is refused before any run,
    naming the method and the fix."""
    from collab_llm.errors import UserError

    assert "head_l4_user" in compare.PROTOCOLS["yesno"].default_methods
    comp = compare.Comparison("yesno", ["mf", "collm", "head_l4_user"], PROFILES["smoke"], tmp_path, tmp_path / "r",
                              backbone="unused")
    run, collm = comp.llm_run("head_l4_user"), comp.llm_run("collm")
    assert run.model.cf_model_path == collm.model.cf_model_path == comp.cf_dir
    assert comp.model_config("head_l4_user").cf_fold_biases and not comp.model_config("collm").cf_fold_biases
    assert comp.model_config("head_l4_user").head_layer == 4
    cf = make_cf_dirs(tmp_path)
    compare.Comparison("yesno", ["head_l4_user"], PROFILES["smoke"], tmp_path, tmp_path / "r", cf_model=cf["mf_bias"])
    with pytest.raises(UserError, match=r"without bias terms, but \['head_l4_user'\].*use_bias true"):
        compare.Comparison("yesno", ["mf", "head_l4_user"], PROFILES["smoke"], tmp_path, tmp_path / "r", cf_model=cf["mf"])
    compare.Comparison("yesno", ["mf", "collm"], PROFILES["smoke"], tmp_path, tmp_path / "r", cf_model=cf["mf"])


def test_test_sample_is_the_rows_compare_scores(tmp_path):
    from collab_llm.datamodule import RecDataModule, sample_rows

    split = make_split(tmp_path, "next_item")
    backbone = make_backbone_dir(tmp_path, "llama")
    full = pd.read_parquet(split / "test.parquet")
    n = len(full) // 2
    dm = RecDataModule(str(split), "llara_movielens", str(backbone), test_sample=n, test_sample_seed=5)
    dm.setup("test")
    got = [dm.datasets["test"][i]["user"] for i in range(len(dm.datasets["test"]))]
    expected = sample_rows(full, n, 5)
    assert len(expected) == n and expected["user"].is_monotonic_increasing  # table order kept
    assert expected["user"].tolist() != full["user"].iloc[:n].tolist()  # not simply the first rows
    assert got == expected["user"].tolist()
    assert sample_rows(full, len(full) + 5, 0).equals(full.reset_index(drop=True))
    with pytest.raises(ValueError, match="test_sample must be"):
        RecDataModule(str(split), "llara_movielens", str(backbone), test_sample=0)


def test_run_info_adds_a_resuming_invocation_and_restarts_on_a_fresh_one(tmp_path):
    import json
    from types import SimpleNamespace

    from collab_llm.compare_cli import write_run_info

    def comp(skipped):
        return SimpleNamespace(protocol="nextitem", skipped=skipped, profile=PROFILES["smoke"], methods=["sasrec", "head"],
                               test_rows=lambda: [1, 2, 3])

    path = write_run_info(tmp_path, "collab-llm compare a", 100.0, [comp([])])
    first = json.loads(path.read_text())
    assert first["wall_s"] == 100.0 and len(first["invocations"]) == 1 and first["cpu"]["model"]
    assert first["protocols"]["nextitem"]["test_rows"] == 3 and first["protocols"]["nextitem"]["dtype"] == "float32"
    resumed = json.loads(write_run_info(tmp_path, "collab-llm compare b", 30.0, [comp(["sasrec"])]).read_text())
    assert resumed["wall_s"] == 130.0 and [i["command"] for i in resumed["invocations"]] == [
        "collab-llm compare a", "collab-llm compare b"]
    assert resumed["resumed"] == ["nextitem/sasrec"]
    fresh = json.loads(write_run_info(tmp_path, "collab-llm compare c", 7.0, [comp([])]).read_text())
    assert fresh["wall_s"] == 7.0 and len(fresh["invocations"]) == 1


def test_dropout_masks_reach_every_llm_run_and_its_fingerprint(tmp_path):
    """``--dropout-masks bits16``: every LLM method's LightningCLI run builds its adapter with packed masks (the
    flag reaches the model through the run's arguments), the run fingerprint records it (a finished run with
    peft's masks is not reused for it), and an unknown value is refused in one line."""
    from collab_llm.dropout import PackedDropout
    from collab_llm.errors import UserError
    from collab_llm.llm_cli import build_cli

    work, backbone = _work(tmp_path)
    profile = replace(PROFILES["smoke"], test_rows=4)
    comp = compare.Comparison("nextitem", ["sasrec", "tallrec", "ilora"], profile, work, tmp_path / "r",
                              backbone=str(backbone), dropout_masks="bits16")
    plain = compare.Comparison("nextitem", ["sasrec", "tallrec", "ilora"], profile, work, tmp_path / "r",
                               backbone=str(backbone))
    for method in ("tallrec", "ilora"):
        args = comp.llm_run(method).args()
        assert json.loads(args[args.index("--model.adapter") + 1]) == {"init_args": {"dropout_masks": "bits16"}}
        assert "--model.adapter" not in plain.llm_run(method).args()
        assert comp.run_fingerprint(method, early=True)["dropout_masks"] == "bits16"
        assert "dropout_masks" not in plain.run_fingerprint(method, early=True)
    cli = build_cli(comp.llm_run("ilora").args(), run=False)
    rec = cli.model.recommender  # the method config's class and fields kept, the masks' field merged in
    assert rec.adapter.dropout_masks == "bits16" and type(rec.adapter).__name__ == "ILoRA"
    assert (rec.adapter.num_experts, rec.adapter.r, rec.adapter.dropout) == (4, 8, 0.1)
    assert any(isinstance(m, PackedDropout) for m in rec.llm.modules())
    assert "dropout_masks" not in comp.run_fingerprint("sasrec", early=True)  # the CF model has no LoRA
    with pytest.raises(UserError, match="--dropout-masks 'fast'"):
        compare.Comparison("nextitem", ["tallrec"], profile, work, tmp_path / "r", dropout_masks="fast")
