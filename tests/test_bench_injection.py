"""bench/injection_learning.py end to end on a tiny model and a user's own CSV files (the planted_* keys)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_llm_fixtures import load_bench, make_backbone_dir  # noqa: E402

from collab_llm.data.planted import generate_planted  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    return load_bench("injection_learning")


@pytest.mark.slow
def test_bench_on_user_csv_reports_the_planted_keys(tmp_path):
    data = generate_planted(n_users=40, n_items=60, n_clusters=2, min_length=8, max_length=14, seed=3)
    inter = tmp_path / "inter.csv"
    items = tmp_path / "items.csv"
    data.interactions.assign(user=data.interactions["user"].map(lambda u: f"u{u}")).to_csv(inter, index=False)
    data.items[["item", "title"]].to_csv(items, index=False)
    result = _bench().main([
        "--only", "planted", "--interactions", str(inter), "--items", str(items), "--work", str(tmp_path / "work"),
        "--backbone", str(make_backbone_dir(tmp_path, "llama")), "--methods", "text", "head", "head_last", "--steps", "1",
        "--batch-size", "2", "--eval-batch-size", "3", "--rows", "6", "--cf-max-epochs", "1", "--n-bootstrap", "20",
        "--dtype", "float32", "--threads", "1", "--out", str(tmp_path / "out.json"),
    ])
    for key in ("planted_hr1_sasrec", "planted_hr1_text", "planted_hr1_hybrid", "planted_hr1_permuted",
                "planted_train_s", "train_tok_s", "cpu", "planted_diff_ci_low"):
        assert key in result, key
    assert not any(k.startswith(("ml100k_", "yesno_")) for k in result)  # --only: the skipped parts are absent
    assert result["planted_rows"] == 6 and 0.0 <= result["planted_hr1_hybrid"] <= 1.0
    assert (tmp_path / "work" / "user_loo" / "manifest.json").is_file()  # the user's data, not the planted generator
    assert set(result["cpu"]) == {"model", "isa", "native_bf16"}
    assert (tmp_path / "out.json").is_file()
    # the hybrid against its ablation, paired over the same rows, and rendered
    assert result["planted_diff_hr1_vs_head_last_ci"][0] <= result["planted_diff_hr1_vs_head_last"] <= \
        result["planted_diff_hr1_vs_head_last_ci"][1]
    from collab_llm import readme

    assert "head minus head_last: HR@1" in readme.render_injection(result)
    assert "head minus head_last: HR@1" in readme.render_pairs(result) and "head HR@1" in readme.render_pairs(result)


def test_recipe_overrides_are_typed_and_checked():
    bench = _bench()
    head = bench.recipes("next_item")["head"]
    changed = bench.apply_overrides(head, ["projector_lr=1e-2", "fine_tune=true", "max_history=3", "projector=linear"])
    assert changed.projector_lr == 0.01 and changed.fine_tune is True and changed.max_history == 3
    assert changed.projector == "linear"
    assert bench.apply_overrides(bench.recipes("next_item")["text"], ["lr=1"]).lr == 5e-4  # text baseline untouched
    with pytest.raises(SystemExit, match="FIELD=VALUE"):
        bench.apply_overrides(head, ["nonsense"])


def test_precision_bench_times_both_precisions_on_a_tiny_model(tmp_path):
    from test_llm_fixtures import make_cf_dirs, make_split

    bench = load_bench("precision_step")
    split = make_split(tmp_path, "next_item")
    import pandas as pd

    train = pd.read_parquet(split / "train.parquet")  # rows with 10 history items: pad the tiny split's histories
    train["history"] = [list(h) * 10 for h in train["history"]]
    train.to_parquet(split / "train.parquet")
    result = bench.main(["--split", str(split), "--cf-model", str(make_cf_dirs(tmp_path)["sasrec"]),
                         "--backbone", str(make_backbone_dir(tmp_path, "llama")), "--batch-size", "2", "--rounds", "1",
                         "--warmup", "0", "--threads", "1", "--profile-steps", "1", "--out", str(tmp_path / "p.json")])
    for recipe in ("llara", "head"):
        assert result[f"{recipe}_step_s_fp32"] > 0 and result[f"{recipe}_step_s_bf16"] > 0
        assert result[f"{recipe}_loss_rel_diff"] < 0.05  # the same model in bf16: equal loss within rounding
    for tag in ("fp32", "bf16"):  # the LM step also with HF's full logits and without LoRA dropout
        assert result[f"llara_step_s_{tag}_full"] > 0 and result[f"llara_answer_logits_speedup_{tag}"] > 0
        assert result[f"llara_step_s_{tag}_nodrop"] > 0 and result[f"llara_dropout_share_{tag}"] < 1
        assert result[f"llara_step_s_{tag}_bits16"] > 0 and result[f"llara_bits16_speedup_{tag}"] > 0
        parts = [result[f"llara_profile_{tag}_{part}_s"] for part in bench.PARTS]  # one profiled step split in parts
        assert all(x >= 0 for x in parts) and parts[0] > 0 and parts[1] > 0  # GEMMs and attention were found
    assert result["llara_bound_speedup_bf16"] > 0 and result["llara_gemm_speedup_bf16"] > 0
    assert [bench._part_of(n) for n in ("aten::mm", "aten::_scaled_dot_product_flash_attention_for_cpu",
                                        "aten::random_", "aten::mul")] == list(bench.PARTS)
    assert "head_step_s_fp32_full" not in result  # the head step has no LM head
    assert result["auto_dtype"] in ("float32", "bfloat16") and (tmp_path / "p.json").is_file()


def test_learning_curve_runs_each_budget_once_and_continues_its_file(tmp_path):
    from test_llm_fixtures import make_cf_dirs, make_split

    bench = load_bench("llara_learning_curve")
    split = make_split(tmp_path, "next_item")
    out = tmp_path / "curve.json"
    common = ["--split", str(split), "--cf-model", str(make_cf_dirs(tmp_path)["sasrec"]),
              "--backbone", str(make_backbone_dir(tmp_path, "llama")), "--batch-size", "2", "--eval-batch-size", "3",
              "--rows", "4", "--permute-from", "4", "--n-bootstrap", "20", "--dtype", "float32", "--threads", "1",
              "--out", str(out)]
    first = bench.main(["--budgets", "2", *common])
    assert set(first["budgets"]) == {"2"} and "permuted" not in first["budgets"]["2"]  # below --permute-from
    entry = first["budgets"]["2"]
    assert entry["steps"] == 1 and 0.0 <= entry["hr1"] <= 1.0 and -1.0 <= entry["spearman_vs_sasrec"] <= 1.0
    second = bench.main(["--budgets", "2", "4", *common])  # continues: budget 2 is read back, not retrained
    assert second["budgets"]["2"] == entry and set(second["budgets"]) == {"2", "4"}
    assert "permuted" in second["budgets"]["4"] and second["budgets"]["4"]["steps"] == 2
    with pytest.raises(SystemExit):  # another setting: refused, the file is left as it was
        bench.main(["--budgets", "2", *common[:-2], "--rows", "5", "--out", str(out)])
    assert set(__import__("json").loads(out.read_text())["budgets"]) == {"2", "4"}
    with pytest.raises(SystemExit):
        bench.main(["--budgets", "3", *common])  # not a multiple of the batch size
    from collab_llm import readme

    text = readme.render_learning_curve(second)
    assert "| 2 (1) |" in text and "| 4 (2) |" in text


def test_mf_bias_share_reads_each_part_of_the_score_on_the_same_rows(tmp_path):
    import torch

    from cf_models import MatrixFactorization, MFConfig
    from test_llm_fixtures import N_ITEMS, N_USERS, make_split

    split = make_split(tmp_path, "yes_no")
    mf = MatrixFactorization(MFConfig(n_users=N_USERS, n_items=N_ITEMS, embedding_dim=4, use_bias=True))
    with torch.no_grad():
        mf.item_bias.weight.normal_()
    mf.save_pretrained(tmp_path / "mf")
    bench = load_bench("mf_bias_share")
    result = bench.main(["--split", str(split), "--cf-model", str(tmp_path / "mf"), "--rows", "6", "--tables", "valid",
                         "--out", str(tmp_path / "share.json")])
    for part in ("full", "dot", "item_bias", "user_bias", "dot_plus_item_bias"):
        assert 0.0 <= result[f"valid_auc_{part}"] <= 1.0
    assert not any(k.startswith("test_") for k in result)
    mf.folded().save_pretrained(tmp_path / "folded")
    from collab_llm.errors import UserError

    with pytest.raises(UserError, match="with biases"):
        bench.main(["--split", str(split), "--cf-model", str(tmp_path / "folded"), "--tables", "valid"])


def test_probe_reads_the_most_recent_soft_tokens_per_layer(tmp_path):
    """``bench/injection_probe.py --positions``: one read per layer and m, named ``<layer>@<m>``, and the paired
    line per m; a single m keeps the plain layer names that the committed lever files use."""
    import pandas as pd

    from test_llm_fixtures import make_cf_dirs, make_split

    bench = load_bench("injection_probe")
    split = make_split(tmp_path, "next_item", n_train=12, n_eval=8)
    common = ["--split", str(split), "--cf-model", str(make_cf_dirs(tmp_path)["sasrec"]), "--backbone",
              str(make_backbone_dir(tmp_path, "llama")), "--target", "next_item", "--train-rows", "12", "--rows", "8",
              "--dtype", "float32", "--threads", "1", "--layers", "0", "1"]
    assert len(pd.read_parquet(split / "valid.parquet")) >= 8
    many = bench.main([*common, "--positions", "1", "2", "--paired-layer", "1"])
    assert [r["layer"] for r in many["layers"]] == ["input@1", "layer1@1", "input@2", "layer1@2"]
    assert [r["layer"] for r in many["paired"]] == ["layer1@1", "layer1@2"]
    assert all(r["ci_low"] <= r["hr1_diff_vs_input"] <= r["ci_high"] for r in many["paired"])
    one = bench.main(common)
    assert [r["layer"] for r in one["layers"]] == ["input", "layer1"]
    # the m = 1 read is the last position's: the same figures either way
    assert [r["hr1"] for r in one["layers"]] == [r["hr1"] for r in many["layers"][:2]]
    both = bench.main([*common, "--positions", "2", "--paired-layer", "1", "--with-input"])
    assert [r["layer"] for r in both["layers"]] == ["input", "layer1", "layer1+input"]
    assert [r["layer"] for r in both["paired"]] == ["layer1@2", "layer1+input@2"]
    # the plain reads unchanged by the extra one
    assert [r["hr1"] for r in both["layers"][:2]] == [r["hr1"] for r in many["layers"][2:]]
    lams = bench.main([*common, "--positions", "2", "--paired-layer", "1", "--lam", "10", "100"])
    assert [r["layer"] for r in lams["layers"]] == ["input~10", "layer1~10", "input~100", "layer1~100"]
    assert [r["layer"] for r in lams["paired"]] == ["layer1@2~10", "layer1@2~100"]
    assert [r["hr1"] for r in lams["layers"][:2]] == [r["hr1"] for r in many["layers"][2:]]  # --lam 10 is the default
