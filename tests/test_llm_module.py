"""The Lightning module on tiny models: frozen parts, regimes, evaluation parity, checkpoints, resume."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_llm_fixtures import make_backbone_dir, make_cf_dirs, make_split  # noqa: E402

from collab_llm import metrics  # noqa: E402
from collab_llm.adapters import LoRA  # noqa: E402
from collab_llm.datamodule import RecDataModule  # noqa: E402
from collab_llm.errors import UserError  # noqa: E402
from collab_llm.module import CollabLLM  # noqa: E402

torch.set_num_threads(1)


def build(tmp_path: Path, family: str, task: str, regime: str, **module_args):
    backbone = make_backbone_dir(tmp_path, family)
    cf = make_cf_dirs(tmp_path)
    template = "llara_movielens" if task == "next_item" else "collm_movielens"
    cf_path = None if regime == "text" else str(cf["sasrec" if task == "next_item" else "mf"])
    module = CollabLLM(
        backbone_path=str(backbone), template=template, regime=regime, cf_model_path=cf_path,
        projector="llara_mlp" if task == "next_item" else "collm_mlp",
        adapter=LoRA(r=4, alpha=8, dropout=0.1), learning_rate=1e-2, **module_args,
    )
    data = RecDataModule(str(make_split(tmp_path, task)), template, str(backbone), batch_size=2, eval_batch_size=4)
    return module, data


def trainer(tmp_path: Path, **kw) -> L.Trainer:
    defaults = dict(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, deterministic=True,
        default_root_dir=str(tmp_path),
    )
    defaults.update(kw)
    return L.Trainer(**defaults)


def frozen_state(module: CollabLLM) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items() if k not in module.trainable_keys}


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_only_lora_and_projector_train(tmp_path, family):
    module, data = build(tmp_path, family, "next_item", "joint")
    before_frozen = frozen_state(module)
    before_train = module.trainable_state()
    assert any(k.startswith("recommender.injector.cf_model.") for k in before_frozen)
    assert {tuple(k.split(".")[:2]) for k in before_train} == {("recommender", "llm"), ("recommender", "injector")}
    # one manual backward: no gradient reaches the backbone or the CF model
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    module.lm_loss(batch, "hybrid").backward()
    for name, p in module.named_parameters():
        if name in module.trainable_keys:
            assert p.requires_grad
        else:
            assert not p.requires_grad and p.grad is None, name
    proj_grads = [p.grad for p in module.injector.projector.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in proj_grads)
    module.zero_grad(set_to_none=True)
    trainer(tmp_path, max_steps=3).fit(module, datamodule=data)
    after_frozen = frozen_state(module)
    for k, v in before_frozen.items():
        torch.testing.assert_close(after_frozen[k], v, rtol=0, atol=0, msg=k)
    after_train = module.trainable_state()
    moved = [k for k in before_train if not torch.equal(before_train[k], after_train[k])]
    assert any("lora_B" in k for k in moved) and any("projector" in k for k in moved)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_curriculum_depends_on_global_step_only(tmp_path, family):
    module, _ = build(tmp_path, family, "next_item", "curriculum", curriculum_steps=200, seed=3)
    assert module.hybrid_probability(0) == 0.0 and module.hybrid_probability(50) == 0.25
    assert module.hybrid_probability(200) == 1.0 and module.hybrid_probability(10_000) == 1.0
    modes = [module.train_mode_at(s) for s in range(400)]
    assert modes == [module.train_mode_at(s) for s in range(400)]  # a function of (seed, step)
    assert modes[0] == "text" and set(modes[200:]) == {"hybrid"}
    # the fraction of hybrid steps in [0, 200) approaches mean(p) = 0.5, and rises over time
    first, second = modes[:100].count("hybrid"), modes[100:200].count("hybrid")
    assert 10 <= first <= 40 and 55 <= second <= 95 and first < second
    # in training, the mode follows trainer.global_step; text steps leave the projector untouched
    module.hparams.curriculum_steps = 4
    seen = []

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append((trainer.global_step, pl_module.train_mode_at(trainer.global_step),
                         {k: v.clone() for k, v in pl_module.injector.projector.state_dict().items()}))

    _, data = build(tmp_path, family, "next_item", "curriculum")
    trainer(tmp_path, max_steps=6, callbacks=[Record()]).fit(module, datamodule=data)
    assert [s for s, _, _ in seen] == list(range(6))
    for (s, mode, proj), (_, _, nxt) in zip(seen, seen[1:]):
        same = all(torch.equal(proj[k], nxt[k]) for k in proj)
        assert same == (mode == "text"), (s, mode)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_two_stage_trains_lora_then_projector(tmp_path, family):
    module, data = build(tmp_path, family, "yes_no", "two_stage", stage1_steps=2)
    snaps = []

    class Snap(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            snaps.append(pl_module.trainable_state())

        def on_train_end(self, trainer, pl_module):
            snaps.append(pl_module.trainable_state())

    t = trainer(tmp_path, max_steps=4, callbacks=[Snap()])
    t.fit(module, datamodule=data)
    assert len(snaps) == 5
    t.save_checkpoint(tmp_path / "two_stage.ckpt")

    def moved(a, b, prefix):
        return any(not torch.equal(a[k], b[k]) for k in a if k.startswith(prefix))

    lora, proj = "recommender.llm.", "recommender.injector.projector."
    assert moved(snaps[0], snaps[2], lora) and not moved(snaps[0], snaps[2], proj)  # stage 1
    assert not moved(snaps[2], snaps[4], lora) and moved(snaps[2], snaps[4], proj)  # stage 2
    assert module.eval_mode() == "hybrid"
    # a fresh module tested from the checkpoint holds both stages and evaluates the hybrid prompt
    fresh, data = build(tmp_path, family, "yes_no", "two_stage", stage1_steps=2, n_bootstrap=10)
    assert fresh.eval_mode() == "text"
    trainer(tmp_path).test(fresh, datamodule=data, ckpt_path=str(tmp_path / "two_stage.ckpt"), verbose=False)
    assert fresh.eval_mode() == "hybrid"
    for k, v in fresh.trainable_state().items():
        torch.testing.assert_close(v, snaps[4][k], rtol=0, atol=0, msg=k)


def _reference_candidate_logp(module: CollabLLM, view, row: int, cand_ids: list[int]) -> float:
    """Sum of log p(candidate tokens) from one full forward of the unpadded prompt + candidate."""
    embeds, mask = module.embed(view, prompt_only=True)
    keep = mask[row].bool()
    prompt = embeds[row, keep]
    cand = module.llm.get_input_embeddings()(torch.tensor(cand_ids))
    seq = torch.cat([prompt, cand], 0)[None]
    logits = module.llm(inputs_embeds=seq).logits[0].float()
    logp = torch.log_softmax(logits, -1)
    n = prompt.shape[0]
    return float(sum(logp[n - 1 + j, t] for j, t in enumerate(cand_ids)))


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_test_metrics_match_reference(tmp_path, family):
    module, data = build(tmp_path, family, "next_item", "joint", n_bootstrap=50, eval_generation=True, max_new_tokens=6)
    t = trainer(tmp_path, logger=L.pytorch.loggers.CSVLogger(str(tmp_path)))
    t.test(module, datamodule=data, verbose=False)
    pred = module.predictions["test"]
    assert len(pred) == 6 and pred["row_index"].tolist() == list(range(6))
    batch = next(iter(data.test_dataloader()))
    view = batch["hybrid"]
    module.eval()
    with torch.no_grad():
        for row in (0, 3):
            for c in (0, 2):
                ref = _reference_candidate_logp(module, view, row, batch["candidate_token_ids"][row][c])
                assert math.isclose(pred["scores"][row][c], ref, rel_tol=1e-4, abs_tol=1e-4)
    scores = np.stack(pred["scores"].to_numpy())
    ranks = metrics.target_ranks(torch.tensor(scores), torch.tensor(pred["target_index"].to_numpy()))
    m = module.last_metrics
    assert m["test/hr@1"] == pytest.approx(metrics.hit_ratio_at_k(ranks, 1))
    assert m["test/ndcg@10"] == pytest.approx(metrics.ndcg_at_k(ranks, 10))
    assert m["test/hr@5_ci_low"] <= m["test/hr@5"] <= m["test/hr@5_ci_high"]
    assert (Path(t.log_dir) / "predictions_test.parquet").exists()
    # generation: HR@1 counts parsed choices equal to the target over ALL rows, ValidRatio parsed ones
    choices = [None if c is None or c != c else int(c) for c in pred["choice"]]
    assert all(isinstance(a, str) for a in pred["answer"])
    hits = [c is not None and c == t for c, t in zip(choices, pred["target_index"])]
    assert m["test/gen_hr@1"] == pytest.approx(float(np.mean(hits)))
    assert m["test/gen_valid_ratio"] == pytest.approx(float(np.mean([c is not None for c in choices])))


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_yes_no_metrics_match_reference(tmp_path, family):
    module, data = build(tmp_path, family, "yes_no", "joint", n_bootstrap=20)
    trainer(tmp_path).test(module, datamodule=data, verbose=False)
    pred = module.predictions["test"]
    batch = next(iter(data.test_dataloader()))
    module.eval()
    with torch.no_grad():
        embeds, mask = module.embed(batch["hybrid"], prompt_only=True)
        row = 1
        keep = mask[row].bool()
        logits = module.llm(inputs_embeds=embeds[row, keep][None]).logits[0, -1]
        ref = torch.softmax(logits[[module.yes_id, module.no_id]].float(), -1)[0]
    assert pred["score"][row] == pytest.approx(float(ref), abs=1e-5)
    assert module.last_metrics["test/auc"] == pytest.approx(metrics.auc(pred["label"], pred["score"]))
    value, n_users = metrics.uauc(pred["user"], pred["label"], pred["score"])
    assert module.last_metrics["test/uauc_users"] == n_users


def test_collm_bce_loss_and_score_match_reference(tmp_path):
    module, data = build(tmp_path, "llama", "yes_no", "joint", n_bootstrap=20, yes_no_loss="bce")
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    module.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        loss = module.bce_loss(batch, "hybrid")
    module.eval()
    with torch.no_grad():
        embeds, mask = module.embed(batch["hybrid"], prompt_only=True)
        yes = []
        for row in range(embeds.shape[0]):  # each row alone, padding dropped: the Yes logit at the end
            keep = mask[row].bool()
            yes.append(module.llm(inputs_embeds=embeds[row, keep][None]).logits[0, -1, module.yes_id].float())
        yes = torch.stack(yes)
        ref = torch.nn.functional.binary_cross_entropy_with_logits(yes, batch["label"].float())
        eval_loss = module.bce_loss(batch, "hybrid")
    assert loss.requires_grad and math.isfinite(float(loss))
    assert float(eval_loss) == pytest.approx(float(ref), abs=1e-5)  # no dropout in eval: exact reference
    trainer(tmp_path).test(module, datamodule=data, verbose=False)
    pred = module.predictions["test"]
    test_batch = next(iter(data.test_dataloader()))
    with torch.no_grad():
        embeds, mask = module.embed(test_batch["hybrid"], prompt_only=True)
        keep = mask[0].bool()
        logit = module.llm(inputs_embeds=embeds[0, keep][None]).logits[0, -1, module.yes_id].float()
    assert pred["score"][0] == pytest.approx(float(torch.sigmoid(logit)), abs=1e-5)  # CoLLM scores sigmoid(Yes)
    with pytest.raises(ValueError, match="yes_no_loss='bce' needs a yes_no template"):
        build(tmp_path, "llama", "next_item", "joint", yes_no_loss="bce")
    with pytest.raises(ValueError, match="yes_no_loss must be"):
        build(tmp_path, "llama", "yes_no", "joint", yes_no_loss="focal")


class StopAfterEpoch(L.Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            trainer.should_stop = True


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_checkpoint_holds_trainable_only_and_resume_is_exact(tmp_path, family):
    regime = "curriculum"
    kwargs = dict(curriculum_steps=5, seed=1)
    full, data = build(tmp_path, family, "next_item", regime, **kwargs)
    trainer(tmp_path, max_epochs=2).fit(full, datamodule=data)
    expected = full.trainable_state()

    ckpt_dir = tmp_path / "ckpt"
    first, data = build(tmp_path, family, "next_item", regime, **kwargs)
    ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=str(ckpt_dir), save_last=True, save_top_k=0)
    trainer(tmp_path, max_epochs=2, enable_checkpointing=True, callbacks=[ckpt, StopAfterEpoch(0)]).fit(first, datamodule=data)
    assert first.global_step == 4  # 8 rows / batch 2, one epoch
    path = ckpt_dir / "last.ckpt"
    state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    assert set(state) == first.trainable_keys
    n_trainable = sum(v.numel() for v in state.values())
    n_all = sum(v.numel() for v in first.state_dict().values())
    assert n_trainable < n_all / 5
    halfway = first.trainable_state()
    assert any(not torch.equal(halfway[k], expected[k]) for k in expected)  # epoch 2 still has work to do

    resumed, data = build(tmp_path, family, "next_item", regime, **kwargs)
    trainer(tmp_path, max_epochs=2).fit(resumed, datamodule=data, ckpt_path=str(path))
    got = resumed.trainable_state()
    assert resumed.global_step == full.global_step == 8
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=0, atol=0, msg=k)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_generation_hit_ratio_and_valid_ratio(tmp_path, monkeypatch, family):
    """Answers naming the target (even rows) or nothing (odd rows): HR@1 = ValidRatio = 1/2."""
    from collab_llm import scoring

    module, data = build(tmp_path, family, "next_item", "joint", n_bootstrap=10, eval_generation=True)
    calls = []

    def fake_generate(model, inputs_embeds, attention_mask, tokenizer, max_new_tokens=64, num_beams=1):
        calls.append(inputs_embeds.shape)
        batch = current["batch"]
        return [
            f"I pick {batch['candidate_titles'][i][int(batch['target_index'][i])]}" if int(batch["row_index"][i]) % 2 == 0
            else "no idea"
            for i in range(inputs_embeds.shape[0])
        ]

    current = {}
    original = module.score_batch

    def spy(batch):
        current["batch"] = batch
        return original(batch)

    monkeypatch.setattr(scoring, "generate_answers", fake_generate)
    monkeypatch.setattr(module, "score_batch", spy)
    trainer(tmp_path).test(module, datamodule=data, verbose=False)
    m = module.last_metrics
    assert calls and m["test/gen_hr@1"] == pytest.approx(0.5) and m["test/gen_valid_ratio"] == pytest.approx(0.5)
    assert module.predictions["test"]["choice"].iloc[0] == module.predictions["test"]["target_index"].iloc[0]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_gradient_checkpointing_gives_the_same_gradients(tmp_path, family):
    grads = []
    for checkpointing in (False, True):
        module, data = build(tmp_path, family, "next_item", "joint", gradient_checkpointing=checkpointing)
        for m in module.llm.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        data.setup("fit")
        batch = next(iter(data.train_dataloader()))
        module.lm_loss(batch, "hybrid").backward()
        grads.append({n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None})
    assert set(grads[0]) == set(grads[1]) and any("projector" in n for n in grads[0])
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-5, atol=1e-6, msg=n)


class Crash(L.Callback):
    """Ends a run abruptly at the start of global step ``step`` (after that step's checkpoint)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise KeyError("simulated crash")


@pytest.mark.parametrize(("step", "group_by_length"), [(2, False), (6, True)])
def test_resume_from_a_mid_epoch_checkpoint_is_exact(tmp_path, step, group_by_length):
    """A run that dies after a checkpoint taken mid-epoch (epoch 0 or 1 of 2, 4 batches each) and is resumed
    from it trains the rest of that epoch on the same batches: weights bit-identical to an uninterrupted run."""
    kwargs = dict(curriculum_steps=5, seed=1)

    def run(ckpt_path=None, **kw):
        module, data = build(tmp_path, "llama", "next_item", "curriculum", **kwargs)
        data.group_by_length = group_by_length
        rows = []

        class Rows(L.Callback):
            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                rows.append(batch["row_index"].tolist())

        callbacks = [Rows(), *kw.pop("callbacks", [])]
        trainer(tmp_path, max_epochs=2, callbacks=callbacks, **kw).fit(module, datamodule=data, ckpt_path=ckpt_path)
        return module, rows

    full, full_rows = run()
    ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), every_n_train_steps=step, save_top_k=1)
    with pytest.raises(KeyError, match="simulated crash"):
        run(callbacks=[ckpt, Crash(step)], enable_checkpointing=True)
    path = next((tmp_path / "ckpt").glob(f"*step={step}.ckpt"))
    resumed, resumed_rows = run(ckpt_path=str(path))
    assert resumed_rows == full_rows[step:]  # the epoch continues after its consumed batches
    assert resumed.global_step == full.global_step == 8
    got, expected = resumed.trainable_state(), full.trainable_state()
    for k in expected:
        assert torch.equal(got[k], expected[k]), k
    # the same checkpoint as an older collab-llm wrote it (no loader position): refused, not resumed inexactly
    old = torch.load(path, map_location="cpu", weights_only=False)
    old.pop("RecDataModule")
    old["loops"]["fit_loop"]["state_dict"].pop("combined_loader")
    torch.save(old, tmp_path / "old.ckpt")
    with pytest.raises(UserError, match=rf"old\.ckpt: a checkpoint taken {step % 4} batches into epoch {step // 4} that "
                                        r"does not record where the training loader was .* end-of-epoch checkpoint"):
        run(ckpt_path=str(tmp_path / "old.ckpt"))
