"""The Recommender: a bundle scores the way it was trained, through the module, `predict` and a reload."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_llm_fixtures import make_backbone_dir, make_cf_dirs, make_module, make_split  # noqa: E402

from collab_llm import scoring  # noqa: E402
from collab_llm.adapters import ILoRA, LoRA  # noqa: E402
from collab_llm.callbacks import WriteBundle  # noqa: E402
from collab_llm.datamodule import RecDataModule  # noqa: E402
from collab_llm.module import CollabLLM  # noqa: E402
from collab_llm.recommender import Recommender, upgrade_state_keys  # noqa: E402


def _module(tmp_path: Path, task: str, adapter=None, **kw) -> tuple[CollabLLM, RecDataModule]:
    next_item = task == "next_item"
    return make_module(tmp_path, task, template="llara_movielens" if next_item else "collm_movielens",
                       projector="llara_mlp" if next_item else "collm_mlp",
                       data_kw={"batch_size": 2, "eval_batch_size": 4},
                       adapter=adapter or LoRA(r=4, alpha=8.0, dropout=0.1), learning_rate=1e-2, n_bootstrap=0, **kw)


def _trainer(tmp_path: Path, **kw) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                     default_root_dir=str(tmp_path), **kw)


def _randomise(module: CollabLLM, seed: int) -> None:
    """Trained-looking tensors: non-zero lora_B and gate output, so that adapter and gate move the scores."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.5)


def _scores(rows: list[dict]) -> dict[int, object]:
    return {r["row_index"]: r.get("score", r.get("scores")) for r in rows}


def test_bce_bundle_scores_identically_through_module_predict_and_reload(tmp_path):
    """A bundle trained with CoLLM's BCE Yes/No loss: the module (test), `predict` and the bundle written by
    `fit` (WriteBundle) and reloaded give the same P(Yes) = sigmoid of the Yes logit, not the softmax."""
    module, data = _module(tmp_path, "yes_no", yes_no_loss="bce")
    bundle = tmp_path / "bundle"
    trainer = _trainer(tmp_path, max_steps=3, callbacks=[WriteBundle(str(bundle))])
    trainer.fit(module, datamodule=data)
    record = json.loads((bundle / "bundle.json").read_text())
    assert record["scoring"]["yes_no_loss"] == "bce" and record["scoring"]["scorer"] == "likelihood"
    assert record["adapter"]["spec"] == LoRA(r=4, alpha=8.0, dropout=0.1).to_dict()
    assert record["made_from"]["template"] == "collm_movielens" and record["files"]

    module.eval()
    data.setup("test")
    batches = list(data.test_dataloader())
    from_module = _scores([r for b in batches for r in module.score_batch(b)])
    from_predict = _scores([r for rows in _trainer(tmp_path).predict(module, datamodule=data) for r in rows])
    loaded = Recommender.from_pretrained(bundle)
    assert loaded.yes_no_loss == "bce" and not loaded.training
    from_bundle = _scores([r for b in batches for r in loaded.score(b, "hybrid")])
    assert from_module.keys() == from_predict.keys() == from_bundle.keys() and len(from_module) == 6
    assert from_predict == from_module
    assert from_bundle == from_module
    # the recorded loss matters: the Yes/No softmax of the same model gives other scores
    with torch.no_grad():
        embeds, mask = loaded.embed(batches[0]["hybrid"], prompt_only=True)
        softmax = scoring.yes_no_scores(loaded.llm, embeds, mask, loaded.yes_id, loaded.no_id)
    first = [from_module[i] for i in batches[0]["row_index"].tolist()]
    assert max(abs(a - b) for a, b in zip(first, softmax.tolist())) > 1e-3

    # a bundle written before bundle.json recorded its scoring reads as the Yes/No softmax ("lm")
    del record["scoring"], record["adapter"]["spec"]
    (bundle / "bundle.json").write_text(json.dumps(record))
    legacy = Recommender.from_pretrained(bundle)
    assert legacy.yes_no_loss == "lm" and legacy.adapter == LoRA(r=4, alpha=8.0, dropout=0.1, target_modules=legacy.adapter.target_modules)
    legacy_scores = [r["score"] for r in legacy.score(batches[0], "hybrid")]
    torch.testing.assert_close(torch.tensor(legacy_scores), softmax.float(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", ["ilora", "head"])
def test_ilora_and_head_bundles_reload_with_the_same_scores(tmp_path, kind):
    """iLoRA (per-row gates routed by the reloaded adapter) and the item-scoring head (its whole state, read at
    decoder block 1) score the same rows identically after save_pretrained / from_pretrained."""
    if kind == "ilora":
        module, data = _module(tmp_path, "next_item", adapter=ILoRA(r=4, alpha=8.0, dropout=0.0, num_experts=2))
    else:
        module, data = _module(tmp_path, "next_item", scorer="head", head_init="none", head_layer=1)
    _randomise(module, 5)
    module.eval()
    data.setup("test")
    batch = next(iter(data.test_dataloader()))
    expected = module.score_batch(batch)
    folder = module.recommender.save_pretrained(tmp_path / "bundle", stage=module.training_stage())
    loaded = Recommender.from_pretrained(folder)
    assert type(loaded.adapter) is type(module.recommender.adapter) and loaded.scorer == module.scorer
    got = loaded.score(batch, "hybrid")
    assert _scores(got) == _scores(expected)
    if kind == "ilora":
        gates = loaded.routing.expert_gate.weights
        assert (gates[0] - gates[1]).abs().max() > 1e-3  # rows really get their own gates
    else:
        assert loaded.head_layer == 1
        assert torch.equal(loaded.head.std, module.head.std)


def test_old_checkpoint_keys_are_renamed():
    state = {"llm.base_model.x.lora_A.default.weight": 1, "injector.projector.net.0.weight": 2, "head.mean": 3,
             "gate_network.net.bias": 4, "recommender.llm.y": 5}
    assert upgrade_state_keys(state) == {
        "recommender.llm.base_model.x.lora_A.default.weight": 1, "recommender.injector.projector.net.0.weight": 2,
        "recommender.head.mean": 3, "recommender.routing.gate_network.net.bias": 4, "recommender.llm.y": 5,
    }


def test_collab_llm_fit_writes_the_bundle_through_the_cli(tmp_path, monkeypatch):
    """`collab-llm fit ... --trainer.callbacks+=collab_llm.callbacks.WriteBundle`: the run ends with a verified
    bundle recording CoLLM's BCE loss and the config's LoRA spec, its card naming the scoring."""
    from collab_llm.bundle import verify_bundle
    from collab_llm.llm_cli import build_cli

    monkeypatch.chdir(tmp_path)
    configs = Path(__file__).resolve().parents[1] / "configs" / "llm"
    bundle = tmp_path / "out" / "bundle"
    args = [
        "fit", "--config", str(configs / "trainer" / "cpu.yaml"), "--config", str(configs / "data" / "ml1m_collm.yaml"),
        "--config", str(configs / "model" / "collm_yes_no.yaml"), "--model.yes_no_loss", "bce",
        "--model.backbone_path", str(make_backbone_dir(tmp_path, "llama")),
        "--model.cf_model_path", str(make_cf_dirs(tmp_path)["mf"]), "--model.stage1_steps", "1",
        "--data.data_dir", str(make_split(tmp_path, "yes_no")), "--trainer.fast_dev_run", "1",
        "--trainer.enable_progress_bar", "false", "--data.batch_size", "2", "--data.eval_batch_size", "6",
        "--model.n_bootstrap", "10",
        "--trainer.callbacks+=collab_llm.callbacks.WriteBundle", "--trainer.callbacks.dirpath", str(bundle),
    ]
    cli = build_cli(args)
    assert cli.trainer.global_step == 1
    config = verify_bundle(bundle)
    assert config.scoring["yes_no_loss"] == "bce" and config.adapter_spec["class_path"] == "collab_llm.adapters.LoRA"
    assert config.adapter_spec["init_args"]["target_modules"] == ["q_proj", "v_proj"]
    assert config.made_from["template"] == "collm_movielens" and config.made_from["cf_model_sha256"]
    assert "Yes/No loss `bce`" in (bundle / "README.md").read_text()


def test_two_bundles_share_one_backbone(tmp_path):
    """Adapter swapping through the Recommender: the second bundle goes onto the first one's LLM as a second
    named adapter; each scores as its own module once activated."""
    modules, folders, expected = [], [], []
    for seed in (1, 2):
        module, data = _module(tmp_path, "next_item", seed=seed)
        _randomise(module, seed)
        module.eval()
        data.setup("test")
        batch = next(iter(data.test_dataloader()))
        expected.append(_scores(module.score_batch(batch)))
        folders.append(module.recommender.save_pretrained(tmp_path / f"bundle{seed}"))
        modules.append(module)
    first = Recommender.from_pretrained(folders[0])
    second = Recommender.from_pretrained(folders[1], base=first)
    assert second.llm is first.llm and sorted(first.llm.peft_config) == ["bundle2", "default"]
    second.bundle.activate()
    assert _scores(second.score(batch, "hybrid")) == expected[1]
    first.bundle.activate()
    assert _scores(first.score(batch, "hybrid")) == expected[0]
