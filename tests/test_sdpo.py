"""The S-DPO preference stage: the loss against float64 by hand, DPO as k = 1, the beta -> 0 limit, the
reference (= the supervised start, unchanged by training, no second backbone), gradients, iLoRA routing."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_llm_fixtures import N_CANDIDATES, make_backbone_dir, make_cf_dirs, make_split  # noqa: E402

from collab_llm.adapters import ILoRA, LoRA  # noqa: E402
from collab_llm.datamodule import RecDataModule  # noqa: E402
from collab_llm.errors import UserError  # noqa: E402
from collab_llm.module import CollabLLM  # noqa: E402
from collab_llm.sdpo import (  # noqa: E402
    PreferenceConfig,
    preference_answers,
    sample_negatives,
    sdpo_loss,
)

torch.set_num_threads(1)


# ------------------------------------------------------------------------------------------ the loss
def _by_hand(policy: list[list[float]], reference: list[list[float]], beta: float) -> float:
    """The paper's form, -log sigmoid(-log sum_j exp(beta (r_j - r_p))), in plain float64 arithmetic."""
    losses = []
    for pol, ref in zip(policy, reference):
        r = [p - q for p, q in zip(pol, ref)]
        inner = sum(math.exp(beta * (rj - r[0])) for rj in r[1:])
        x = -math.log(inner)
        losses.append(-math.log(1.0 / (1.0 + math.exp(-x))))
    return sum(losses) / len(losses)


def test_loss_matches_hand_computed_float64():
    gen = torch.Generator().manual_seed(0)
    policy = torch.randn(4, 4, generator=gen, dtype=torch.float64) * 3 - 10
    reference = torch.randn(4, 4, generator=gen, dtype=torch.float64) * 3 - 10
    for beta in (0.1, 1.0, 2.5):
        out = sdpo_loss(policy, reference, beta)
        assert out.loss.dtype == torch.float64
        assert out.loss.item() == pytest.approx(_by_hand(policy.tolist(), reference.tolist(), beta), rel=1e-12)
        torch.testing.assert_close(out.chosen_rewards, beta * (policy - reference)[:, 0])
        torch.testing.assert_close(out.rejected_rewards, beta * (policy - reference)[:, 1:])


def test_one_negative_is_dpo():
    gen = torch.Generator().manual_seed(1)
    policy = torch.randn(6, 2, generator=gen, dtype=torch.float64)
    reference = torch.randn(6, 2, generator=gen, dtype=torch.float64)
    beta = 0.7
    dpo = -torch.nn.functional.logsigmoid(
        beta * ((policy[:, 0] - reference[:, 0]) - (policy[:, 1] - reference[:, 1]))
    )
    torch.testing.assert_close(sdpo_loss(policy, reference, beta).per_row, dpo, rtol=1e-12, atol=1e-12)


def test_beta_to_zero_limit():
    k = 3
    gen = torch.Generator().manual_seed(2)
    reference = torch.randn(5, 1 + k, generator=gen, dtype=torch.float64)
    policy = (reference + torch.randn(5, 1 + k, generator=gen, dtype=torch.float64)).requires_grad_(True)
    beta = 1e-7
    out = sdpo_loss(policy, reference, beta)
    assert out.loss.item() == pytest.approx(math.log(1 + k), abs=1e-6)  # every candidate equally likely
    out.loss.backward()
    # gradient / beta -> per row (-k, 1, ..., 1) / (1 + k), averaged over the 5 rows
    expected = torch.tensor([-k] + [1] * k, dtype=torch.float64) / (1 + k) / 5
    torch.testing.assert_close(policy.grad / beta, expected.expand(5, -1), rtol=1e-5, atol=1e-7)
    assert reference.grad is None


def test_loss_rejects_bad_shapes_and_settings():
    with pytest.raises(ValueError, match=r"\(B, 1 \+ k\)"):
        sdpo_loss(torch.zeros(3, 1), torch.zeros(3, 1), 1.0)
    with pytest.raises(UserError, match="num_negatives"):
        PreferenceConfig(start_from="x", num_negatives=0)
    with pytest.raises(UserError, match="beta"):
        PreferenceConfig(start_from="x", beta=0.0)
    assert PreferenceConfig(start_from="x").beta == 1.0 and PreferenceConfig(start_from="x").num_negatives == 3


def test_negatives_are_distinct_non_targets_fixed_per_row():
    target = torch.tensor([0, 4, 2, 2])
    rows = torch.tensor([10, 11, 12, 13])
    neg = sample_negatives(target, rows, 5, 4, seed=3)
    for t, cols in zip(target.tolist(), neg.tolist()):
        assert sorted(cols) == sorted(c for c in range(5) if c != t)  # k = C - 1: every other candidate
    a = sample_negatives(target, rows, 20, 3, seed=3)
    b = sample_negatives(target[[2, 0]], rows[[2, 0]], 20, 3, seed=3)  # another batch order: same per row
    torch.testing.assert_close(b, a[[2, 0]])
    assert not torch.equal(a, sample_negatives(target, rows, 20, 3, seed=4))
    assert all(t not in cols for t, cols in zip(target.tolist(), a.tolist()))
    with pytest.raises(UserError, match="num_negatives"):
        sample_negatives(target, rows, 5, 5, seed=0)
    answers = preference_answers([[[c, 100 + c] for c in range(5)]] * 4, target, neg[:, :2])
    assert [a[0][0] for a in answers] == target.tolist() and all(len(a) == 3 for a in answers)


# ------------------------------------------------------------------------------------------ the module
def _supervised(tmp_path: Path, regime: str = "joint", ilora: bool = False, r: int = 4, alpha: float = 8.0,
                dropout: float = 0.1, **kw) -> CollabLLM:
    backbone = make_backbone_dir(tmp_path, "llama")
    cf = make_cf_dirs(tmp_path)
    adapter = ILoRA(r=r, alpha=alpha, dropout=dropout, num_experts=2) if ilora else LoRA(r=r, alpha=alpha, dropout=dropout)
    args = dict(backbone_path=str(backbone), template="llara_movielens", regime=regime,
                cf_model_path=None if regime == "text" else str(cf["sasrec"]), adapter=adapter, learning_rate=5e-2)
    args.update(kw)
    return CollabLLM(**args)


def _randomise(module: CollabLLM, seed: int) -> None:
    """A supervised start that differs from the initialisation (lora_B = 0, gate output = 0)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.3)


def _data(tmp_path: Path, batch_size: int = 2) -> RecDataModule:
    data = RecDataModule(str(make_split(tmp_path, "next_item")), "llara_movielens",
                         str(make_backbone_dir(tmp_path, "llama")), batch_size=batch_size, eval_batch_size=4)
    data.setup("fit")
    return data


def _checkpoint(tmp_path: Path, module: CollabLLM) -> Path:
    path = tmp_path / "start.ckpt"
    torch.save({"state_dict": module.trainable_state(), "global_step": 7}, path)
    return path


def _trainer(tmp_path: Path, **kw) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                     limit_val_batches=0, default_root_dir=str(tmp_path), **kw)


def _all_candidate_logps(module: CollabLLM, batch: dict, mode: str) -> torch.Tensor:
    """The supervised model's own evaluation scores: every candidate, eval mode, no grad."""
    module.eval()
    with torch.no_grad():
        return module.recommender.candidate_logps(batch, mode)


def _picked(scores: torch.Tensor, batch: dict, negatives: torch.Tensor) -> torch.Tensor:
    cols = torch.cat([batch["target_index"][:, None], negatives], dim=1)
    return scores.gather(1, cols)


def _negatives(module: CollabLLM, batch: dict) -> torch.Tensor:
    cfg = module.preference.config
    return sample_negatives(batch["target_index"], batch["row_index"], N_CANDIDATES, cfg.num_negatives,
                            int(module.hparams.seed))


@pytest.mark.parametrize("regime,mode", [("joint", "hybrid"), ("text", "text")])
def test_reference_is_the_supervised_model_and_training_leaves_it(tmp_path, regime, mode):
    start = _supervised(tmp_path, regime)
    _randomise(start, 0)
    data = _data(tmp_path)
    batch = next(iter(data.train_dataloader()))
    supervised_scores = _all_candidate_logps(start, batch, mode)

    policy = _supervised(tmp_path, regime, preference=PreferenceConfig(str(_checkpoint(tmp_path, start)), 1.0, 3))
    for k, v in start.trainable_state().items():  # the stage starts at the supervised tensors
        torch.testing.assert_close(policy.trainable_state()[k], v, rtol=0, atol=0)
    assert len(policy.preference.reference) == len(policy.trainable_parameters())
    assert policy.preference.reference.numel() == sum(p.numel() for p in policy.trainable_parameters())
    negatives = _negatives(policy, batch)
    answers = preference_answers(batch["candidate_token_ids"], batch["target_index"], negatives)
    expected = _picked(supervised_scores, batch, negatives)

    def reference_logps() -> torch.Tensor:
        with policy.preference.reference.swapped_in(policy):
            return policy.preference.answer_logps(policy, batch, mode, answers)

    torch.testing.assert_close(reference_logps(), expected, rtol=1e-5, atol=1e-5)
    _trainer(tmp_path, max_steps=3).fit(policy, datamodule=data)
    moved = [k for k, v in start.trainable_state().items() if not torch.equal(policy.trainable_state()[k], v)]
    assert any("lora_B" in k for k in moved)
    if regime == "joint":
        assert any("projector" in k for k in moved)
    for name, value in policy.preference.reference.tensors().items():  # the frozen copy never moved
        torch.testing.assert_close(value, start.trainable_state()[name], rtol=0, atol=0)
    policy_after = policy.trainable_state()
    torch.testing.assert_close(reference_logps(), expected, rtol=1e-5, atol=1e-5)
    for k, v in policy.trainable_state().items():  # and the swap put the trained tensors back
        torch.testing.assert_close(v, policy_after[k], rtol=0, atol=0)
    assert not torch.allclose(_picked(_all_candidate_logps(policy, batch, mode), batch, negatives), expected,
                              atol=1e-3)  # the policy did move away from the reference


def test_step_loss_gradients_and_dpo_case(tmp_path):
    start = _supervised(tmp_path)
    _randomise(start, 1)
    ckpt = _checkpoint(tmp_path, start)
    batch = next(iter(_data(tmp_path).train_dataloader()))
    for k in (1, 3):
        policy = _supervised(tmp_path, preference=PreferenceConfig(str(ckpt), 0.5, k), dropout=0.0)
        policy.train()
        out, stats = policy.preference.loss(policy, batch, "hybrid")
        # at the start, policy = reference (dropout off): every reward is 0 and the loss is log(1 + k)
        assert out.loss.item() == pytest.approx(math.log(1 + k), abs=1e-5)
        assert stats["reward_margin"] == pytest.approx(0.0, abs=1e-5) and 0.0 <= stats["reference_top1"] <= 1.0
        with torch.no_grad():  # move the policy, then compare with the formula on the two passes' numbers
            for p in policy.trainable_parameters():
                p.add_(0.05 * torch.randn_like(p))
        out, _ = policy.preference.loss(policy, batch, "hybrid")
        answers = preference_answers(batch["candidate_token_ids"], batch["target_index"], _negatives(policy, batch))
        with torch.no_grad():
            pol = policy.preference.answer_logps(policy, batch, "hybrid", answers).double()
            with policy.preference.reference.swapped_in(policy):
                ref = policy.preference.answer_logps(policy, batch, "hybrid", answers).double()
        assert out.loss.item() == pytest.approx(_by_hand(pol.tolist(), ref.tolist(), 0.5), rel=1e-5)
        if k == 1:
            dpo = -torch.nn.functional.logsigmoid(0.5 * ((pol[:, 0] - ref[:, 0]) - (pol[:, 1] - ref[:, 1]))).mean()
            assert out.loss.item() == pytest.approx(dpo.item(), rel=1e-5)
        out.loss.backward()
        for name, p in policy.named_parameters():
            if name in policy.trainable_keys:
                assert p.grad is not None and p.grad.abs().sum() > 0, name
            else:
                assert p.grad is None, name


def test_ilora_gate_routes_both_passes(tmp_path):
    start = _supervised(tmp_path, ilora=True)
    _randomise(start, 2)
    policy = _supervised(tmp_path, ilora=True, preference=PreferenceConfig(str(_checkpoint(tmp_path, start)), 1.0, 2))
    assert any(n.startswith("recommender.routing.gate_network.") for n in policy.preference.reference.names)
    routing, start_routing = policy.recommender.routing, start.recommender.routing
    with torch.no_grad():  # a trained policy: its gate now routes differently from the start's
        for p in routing.gate_network.parameters():
            p.add_(torch.randn_like(p))
    batch = next(iter(_data(tmp_path).train_dataloader()))
    sequence = policy.injector.cf_model.sequence_representation(batch["history"])
    with torch.no_grad():
        start_gate, policy_gate = start_routing.gate_network(sequence), routing.gate_network(sequence)
    assert not torch.allclose(start_gate, policy_gate, atol=1e-3)
    seen: list[torch.Tensor] = []
    original_set = routing.expert_gate.set

    def spy(weights: torch.Tensor) -> None:
        seen.append(weights.detach().clone())
        original_set(weights)

    routing.expert_gate.set = spy
    policy.train()
    out, _ = policy.preference.loss(policy, batch, "hybrid")
    assert len(seen) == 2  # one routing per pass
    torch.testing.assert_close(seen[0], start_gate)  # reference pass: the start's gate
    torch.testing.assert_close(seen[1], policy_gate)  # policy pass: the trained gate, still set for backward
    torch.testing.assert_close(routing.expert_gate.weights.detach(), policy_gate)
    out.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in routing.gate_network.parameters())


def test_bundle_start_and_stage_recorded(tmp_path):
    from collab_llm.bundle import BundleConfig, save_bundle

    start = _supervised(tmp_path)
    _randomise(start, 3)
    folder = save_bundle(tmp_path / "bundle", start.llm, base_model="tiny", dtype="float32",
                         template="llara_movielens", placeholder_ids=start.placeholder_ids,
                         projectors={"item": start.injector.projector}, cf_model=start.injector.cf_model)
    assert BundleConfig.read(folder).stage == {"name": "supervised"}
    policy = _supervised(tmp_path, preference=PreferenceConfig(str(folder), 1.0, 1))
    for k, v in start.trainable_state().items():
        torch.testing.assert_close(policy.trainable_state()[k], v, rtol=0, atol=0)
    stage = policy.training_stage()
    assert stage["name"] == "dpo" and stage["num_negatives"] == 1 and stage["start_from"] == str(folder)
    again = save_bundle(tmp_path / "sdpo_bundle", policy.llm, base_model="tiny", dtype="float32",
                        template="llara_movielens", placeholder_ids=policy.placeholder_ids,
                        projectors={"item": policy.injector.projector}, stage=stage)
    assert BundleConfig.read(again).stage == stage
    assert "dpo" in (again / "README.md").read_text()


def test_bad_starts_name_the_flag(tmp_path):
    text = _supervised(tmp_path, "text")
    text_ckpt = _checkpoint(tmp_path, text)
    with pytest.raises(UserError, match="preference.start_from"):  # a text-only start for a hybrid model
        _supervised(tmp_path, preference=PreferenceConfig(str(text_ckpt)))
    with pytest.raises(UserError, match="not found.*preference.start_from"):
        _supervised(tmp_path, preference=PreferenceConfig(str(tmp_path / "missing")))
    with pytest.raises(UserError, match="gradient_checkpointing"):
        _supervised(tmp_path, "text", gradient_checkpointing=True, preference=PreferenceConfig(str(text_ckpt)))
    with pytest.raises(UserError, match="next-item"):
        _supervised(tmp_path, "text", template="collm_movielens", preference=PreferenceConfig(str(text_ckpt)))


# ------------------------------------------------------------------------------------------ configs, CLI
@pytest.mark.parametrize("method,stage", [("llara", "sdpo"), ("tallrec", "dpo"), ("ilora", "sdpo")])
def test_preference_fragments_fit_through_the_cli(tmp_path, monkeypatch, method, stage):
    import yaml

    from collab_llm.llm_cli import build_cli

    monkeypatch.chdir(tmp_path)
    configs = Path(__file__).resolve().parents[1] / "configs" / "llm"
    fragment = yaml.safe_load((configs / "model" / f"{stage}.yaml").read_text())["model"]["preference"]
    assert (fragment["beta"], fragment["num_negatives"]) == (1.0, 3 if stage == "sdpo" else 1)
    regime = "text" if method == "tallrec" else "joint"
    start = _supervised(tmp_path, regime, ilora=method == "ilora", r=8, alpha=32.0)
    _randomise(start, 4)
    args = [
        "fit", "--config", str(configs / "trainer" / "cpu.yaml"), "--config", str(configs / "data" / "ml100k_loo.yaml"),
        "--config", str(configs / "model" / f"{method}.yaml"), "--config", str(configs / "model" / f"{stage}.yaml"),
        "--model.regime", regime, "--model.preference.start_from", str(_checkpoint(tmp_path, start)),
        "--model.backbone_path", str(make_backbone_dir(tmp_path, "llama")),
        "--data.data_dir", str(make_split(tmp_path, "next_item")), "--trainer.fast_dev_run", "1",
        "--trainer.enable_progress_bar", "false", "--data.batch_size", "2", "--data.eval_batch_size", "6",
        "--model.n_bootstrap", "10",
    ]
    if method != "tallrec":
        args += ["--model.cf_model_path", str(make_cf_dirs(tmp_path)["sasrec"])]
    if method == "ilora":
        args += ["--model.adapter.num_experts", "2"]
    cli = build_cli(args)
    model = cli.model
    assert isinstance(model.recommender.adapter, ILoRA) == (method == "ilora")
    assert model.preference is not None and model.training_stage()["name"] == stage
    assert model.hparams.learning_rate == 1e-5 and model.regime == regime
    assert cli.trainer.global_step == 1
    assert 0.0 <= model.last_metrics["val/hr@1"] <= 1.0
    moved = [k for k, v in start.trainable_state().items() if not torch.equal(model.trainable_state()[k], v)]
    assert moved  # one S-DPO step moved the start's tensors


# ------------------------------------------------------------------------------------------ compare
def test_compare_preference_methods_args_and_validation(tmp_path):
    from dataclasses import replace

    from collab_llm import compare, presets
    from collab_llm.runs import PROFILES

    profile = replace(PROFILES["smoke"], llm_steps=5)
    comp = compare.Comparison("nextitem", ["tallrec", "llara", "tallrec+sdpo", "llara+dpo"], profile, tmp_path,
                              tmp_path / "r", backbone="unused")
    for method, start, regime, stage in (("tallrec+sdpo", "tallrec", "text", "sdpo"), ("llara+dpo", "llara", "joint", "dpo")):
        run = comp.llm_run(method)
        args = run.args()
        last = {flag: args[i + 1] for i, flag in enumerate(args[:-1]) if flag.startswith("--")}
        assert last["--model.preference.start_from"] == str(tmp_path / "r" / "runs" / start / "bundle")
        assert last["--model.regime"] == regime and comp.regime(method) == regime
        assert last["--trainer.max_steps"] == "5"  # the same budget as its start
        configs = [args[i + 1] for i, a in enumerate(args) if a == "--config"]
        assert configs[-2:] == [str(comp.spec.llm_methods[start]), str(compare.PREFERENCE_STAGES[stage])]
        assert ("--model.cf_model_path" in args) == (start != "tallrec")
        assert comp.model_config(method).learning_rate == 1e-5  # the stage's fragment wins
        assert run.model.preference_start_from == tmp_path / "r" / "runs" / start / "bundle" and run.model.regime == regime
    assert presets.start_method("llara+sdpo") == "llara" and presets.start_method("llara") is None
    with pytest.raises(ValueError, match="list 'llara' before it"):
        compare.Comparison("nextitem", ["llara+sdpo", "llara"], profile, tmp_path, tmp_path / "r")
    with pytest.raises(ValueError, match="preference stage"):
        compare.Comparison("nextitem", ["llara", "llara+ppo"], profile, tmp_path, tmp_path / "r")
    with pytest.raises(ValueError, match="head"):
        compare.Comparison("nextitem", ["head", "head+sdpo"], profile, tmp_path, tmp_path / "r")
    with pytest.raises(ValueError, match="preference stage"):
        compare.Comparison("yesno", ["tallrec", "tallrec+sdpo"], profile, tmp_path, tmp_path / "r")


@pytest.mark.slow
def test_compare_smoke_with_preference_stages(tmp_path):
    """tallrec, tallrec+sdpo and llara, llara+dpo end to end on the tiny model; paired differences to the start."""
    import json
    from dataclasses import replace

    from test_compare import _work  # the compare test's work folder: tiny split + SASRec, tiny backbone

    from collab_llm import compare
    from collab_llm.bundle import BundleConfig
    from collab_llm.runs import PROFILES

    work, backbone = _work(tmp_path)
    profile = replace(PROFILES["smoke"], test_rows=4, generate=False)
    report = tmp_path / "report"
    comp = compare.Comparison("nextitem", ["tallrec", "tallrec+sdpo", "llara", "llara+dpo"], profile, work, report,
                              backbone=str(backbone), log=lambda msg: None)
    comp.run()
    records = json.loads((report / "results.json").read_text())
    value = {(r["method"], r["metric"]): r["value"] for r in records}
    for method, start in (("tallrec+sdpo", "tallrec"), ("llara+dpo", "llara")):
        for metric in ("hr@1", "ndcg@10"):
            assert value[(method, f"diff_vs_{start}_{metric}")] == pytest.approx(
                value[(method, metric)] - value[(start, metric)])
        stage = BundleConfig.read(report / "runs" / method / "bundle").stage
        assert stage["name"] == method.split("+")[1] and stage["start_from"] == str(report / "runs" / start / "bundle")
    assert BundleConfig.read(report / "runs" / "llara" / "bundle").stage == {"name": "supervised"}
    assert ("llara+dpo", "diff_vs_tallrec_hr@1") in value  # and still against the text baseline
    md = (report / "results.md").read_text()
    assert "## Paired differences vs llara, tallrec" in md and "| llara+dpo |" in md


# ------------------------------------------------------------------------------------------ bench
@pytest.mark.slow
def test_sdpo_step_bench_on_the_tiny_model(tmp_path):
    from test_llm_fixtures import load_bench

    bench = load_bench("sdpo_step")
    result = bench.main(["--tiny", "--work", str(tmp_path / "work"), "--batch-size", "2", "--rounds", "1",
                         "--warmup", "0", "--threads", "1", "--num-negatives", "2", "--out", str(tmp_path / "r.json")])
    for key in ("peak_rss_mb_supervised", "peak_rss_mb_sdpo", "step_s_supervised", "step_s_sdpo"):
        assert result[key] > 0, key
    assert result["peak_rss_ratio"] == pytest.approx(result["peak_rss_mb_sdpo"] / result["peak_rss_mb_supervised"])
    assert result["step_time_ratio"] > 0 and result["num_negatives"] == 2 and result["tiny"] is True
    assert result["reference_numel"] > 0  # the reference: a copy of the trainable tensors only
    assert (tmp_path / "r.json").is_file() and (tmp_path / "work" / "planted_loo" / "manifest.json").is_file()
