"""The item-scoring head recipe: head maths, scaled projector, projector learning rate, dtype auto, training."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_llm_fixtures import make_backbone_dir, make_cf_dirs, make_module  # noqa: E402
from test_llm_module import trainer  # noqa: E402

from collab_llm import scoring  # noqa: E402
from collab_llm.backbone import load_backbone, mean_embedding_norm, native_bf16, resolve_dtype  # noqa: E402
from collab_llm.heads import ItemScoringHead  # noqa: E402
from collab_llm.adapters import LoRA  # noqa: E402
from collab_llm.module import CollabLLM  # noqa: E402
from projectors import Projector, ScaledProjector, build_projector  # noqa: E402

torch.set_num_threads(1)


def test_head_scores_are_query_dot_key_and_start_in_cf_space():
    torch.manual_seed(0)
    head = ItemScoringHead(hidden_size=6, item_dim=4)
    h = torch.randn(3, 6)
    cands = torch.randn(3, 5, 4)
    catalog = torch.randn(7, 4)
    q = head.query(h)  # before any fit the statistics are mean 0, std 1
    # the key starts as the identity: the score is <query(h), e>
    assert torch.allclose(head(h, cands), torch.einsum("bd,bcd->bc", q, cands), atol=1e-6)
    assert torch.allclose(head(h, catalog), q @ catalog.T, atol=1e-6)
    with pytest.raises(ValueError, match="items must be"):
        head(h, torch.randn(2, 5, 4))


def test_least_squares_fit_standardises_outliers_and_recovers_a_linear_map():
    torch.manual_seed(0)
    head = ItemScoringHead(hidden_size=6, item_dim=3)
    h = torch.randn(200, 6)
    h[:, 2] = 300.0 + 50.0 * h[:, 2]  # an LLM-style outlier feature
    z = (h - h.mean(0)) / h.std(0)
    truth = torch.randn(3, 6)
    y = z @ truth.T + 0.5
    head.fit_least_squares(h, y, ridge=1e-6)
    assert int(head.initialized) == 1
    assert torch.allclose(head.standardize(h).mean(0), torch.zeros(6), atol=1e-4)
    assert torch.allclose(head.query(head.standardize(h)), y, atol=1e-3)
    again = ItemScoringHead(hidden_size=6, item_dim=3)
    again.load_state_dict(head.state_dict())  # statistics and fit are state: checkpoints and bundles keep them
    assert torch.equal(again.standardize(h), head.standardize(h)) and int(again.initialized) == 1


def test_folded_query_equals_standardise_then_query():
    torch.manual_seed(0)
    head = ItemScoringHead(hidden_size=6, item_dim=3)
    h = torch.randn(50, 6) * torch.tensor([1.0, 2.0, 300.0, 0.5, 1.0, 4.0]) + 7.0
    head.fit_least_squares(h, torch.randn(50, 3), ridge=1.0)
    assert torch.allclose(head.folded_query()(h), head.query(head.standardize(h)), atol=1e-3)


def test_bilinear_fit_separates_yes_from_no():
    torch.manual_seed(0)
    head = ItemScoringHead(hidden_size=8, item_dim=4)
    h, e = torch.randn(300, 8), torch.randn(300, 4)
    m = torch.randn(4, 8)
    labels = ((e * (h @ m.T)).sum(1) > 0).long()  # label = sign of a bilinear form
    head.fit_bilinear(h, e, labels, ridge=1.0)
    score = head(h, e.unsqueeze(1))[:, 0]
    from collab_llm.metrics import auc

    assert auc(labels.numpy(), score.detach().numpy()) > 0.95


def test_scaled_projector_norm_gain_and_round_trip(tmp_path):
    torch.manual_seed(0)
    proj = build_projector("scaled_llara_mlp", 4, 8, target_norm=3.2)
    assert isinstance(proj, ScaledProjector)
    y = proj(torch.randn(5, 4))
    assert torch.allclose(y.norm(dim=-1), torch.full((5,), 3.2), atol=1e-4)
    with torch.no_grad():
        proj.gain.fill_(0.5)
    assert torch.allclose(proj(torch.randn(2, 4)).norm(dim=-1), torch.full((2,), 1.6), atol=1e-4)
    proj.save_pretrained(tmp_path / "p")
    again = Projector.from_pretrained(tmp_path / "p")
    x = torch.randn(3, 4)
    assert torch.equal(again(x), proj(x))
    with pytest.raises(ValueError, match="target_norm"):
        build_projector("scaled_linear", 4, 8)


def test_dtype_auto_follows_cpu_flags():
    assert resolve_dtype("auto", flags=frozenset({"avx2", "fma"}), cuda=False) == "float32"
    assert resolve_dtype("auto", flags=frozenset({"avx512f", "avx512_bf16"}), cuda=False) == "bfloat16"
    assert resolve_dtype("auto", flags=frozenset({"amx_bf16", "amx_tile"}), cuda=False) == "bfloat16"
    assert resolve_dtype("auto", flags=frozenset(), cuda=True) == "bfloat16"
    assert resolve_dtype("float32", flags=frozenset({"amx_bf16"}), cuda=False) == "float32"
    assert not native_bf16(frozenset({"avx512f", "avx2"}), cuda=False)
    with pytest.raises(ValueError, match="dtype"):
        resolve_dtype("float16")  # type: ignore[arg-type]


def test_last_hidden_state_is_the_lm_head_input(tmp_path):
    backbone = load_backbone(make_backbone_dir(tmp_path, "llama"))
    model = backbone.model
    ids = torch.tensor([[0, 0, 5, 6, 7], [3, 4, 5, 6, 7]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    embeds = model.get_input_embeddings()(ids)
    hidden = scoring.last_hidden_state(model, embeds, mask)
    logits = model(inputs_embeds=embeds, attention_mask=mask, position_ids=scoring.position_ids_from_mask(mask)).logits[:, -1]
    assert torch.allclose(model.get_output_embeddings()(hidden), logits, atol=1e-4)
    assert mean_embedding_norm(model) > 0


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_an_inner_layer_is_read_and_the_forward_stops_there(tmp_path, family):
    model = load_backbone(make_backbone_dir(tmp_path, family)).model
    ids = torch.tensor([[0, 0, 5, 6, 7], [3, 4, 5, 6, 7]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    embeds = model.get_input_embeddings()(ids)
    blocks = scoring.decoder_layers(model.base_model)
    out = model(inputs_embeds=embeds, attention_mask=mask, position_ids=scoring.position_ids_from_mask(mask),
                output_hidden_states=True)
    hooks_before = [len(b._forward_hooks) for b in blocks]
    calls = []
    handles = [b.register_forward_hook(lambda m, a, o, i=i: calls.append(i)) for i, b in enumerate(blocks, 1)]
    try:
        for k in range(1, len(blocks)):
            calls.clear()
            hidden = scoring.last_hidden_state(model, embeds, mask, layer=k)
            assert torch.allclose(hidden, out.hidden_states[k][:, -1], atol=1e-5), k  # block k's output
            assert calls == list(range(1, k + 1))  # the blocks after k never ran
    finally:
        for h in handles:
            h.remove()
    assert [len(b._forward_hooks) for b in blocks] == hooks_before  # the stop hooks are removed
    with pytest.raises(ValueError, match="decoder blocks 1.."):
        scoring.last_hidden_state(model, embeds, mask, layer=len(blocks) + 1)


def _head_module(tmp_path, task="next_item", **kw):
    next_item = task == "next_item"
    return make_module(tmp_path, task, template="head_next_item" if next_item else "collm_movielens",
                       projector="scaled_llara_mlp" if next_item else "scaled_collm_mlp",
                       data_kw={"modes": ["hybrid"], "batch_size": 4, "eval_batch_size": 4},
                       adapter=LoRA(r=4, alpha=8, dropout=0.0), learning_rate=1e-3, scorer="head", **kw)


@pytest.mark.parametrize("head_loss", ["candidates", "catalog"])
def test_head_recipe_trains_lora_projector_head_with_own_lr(tmp_path, head_loss):
    module, data = _head_module(tmp_path, head_loss=head_loss, projector_lr=5e-2, head_init_rows=6)
    before = module.trainable_state()
    assert int(before["recommender.head.initialized"]) == 0
    assert any(k.startswith("recommender.head.") for k in before) and any(k.startswith("recommender.llm.") for k in before)
    t = trainer(tmp_path, max_steps=3)
    t.fit(module, datamodule=data)
    groups = t.optimizers[0].param_groups
    assert [g["initial_lr"] for g in groups] == [1e-3, 5e-2]
    after = module.trainable_state()
    assert int(after["recommender.head.initialized"]) == 1 and not torch.equal(before["recommender.head.std"], after["recommender.head.std"])
    for prefix in ("recommender.llm.", "recommender.injector.projector.", "recommender.head."):
        assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith(prefix)), prefix
    # the head scores the stored candidates: one score per candidate, the rows' own
    data.setup("test")
    batch = next(iter(data.test_dataloader()))
    module.eval()
    rows = module.score_batch(batch)
    assert len(rows[0]["scores"]) == batch["candidates"].shape[1]
    direct = module.head_scores(batch, "hybrid", "candidates")
    assert torch.allclose(torch.tensor(rows[0]["scores"]), direct[0].float(), atol=1e-5)


def test_alignment_pass_fits_the_frozen_llm_states_and_is_not_rerun_on_resume(tmp_path):
    module, data = _head_module(tmp_path, head_init_rows=8)
    data.setup("fit")
    module.initialize_head(data.datasets["train"], data.collator)
    fitted = module.trainable_state()
    # the fit equals a ridge regression computed here on the same rows
    n = 8
    order = torch.randperm(len(data.datasets["train"]), generator=torch.Generator().manual_seed(5))[:n]
    batch = data.collator([data.datasets["train"][int(i)] for i in order])
    module.llm.eval()
    embeds, mask = module.embed(batch["hybrid"], prompt_only=True)
    with torch.no_grad():
        h = scoring.last_hidden_state(module.llm, embeds, mask).float()
        y = module.injector.cf_model.item_embeddings(batch["target"]).float()
    ref = ItemScoringHead(h.shape[1], y.shape[1])
    ref.fit_least_squares(h, y, ridge=100.0)
    assert torch.allclose(ref.query.net.weight, fitted["recommender.head.query.net.weight"], atol=1e-4)
    # a module whose head is already initialised (a resumed run) keeps it at train start
    module.head.query.net.weight.data.add_(1.0)
    marked = module.head.query.net.weight.detach().clone()
    t = trainer(tmp_path, max_steps=1)
    t.fit(module, datamodule=data)
    assert int(module.head.initialized) == 1
    assert (module.head.query.net.weight - marked).abs().max() < 0.5  # one small step, no refit


def test_head_without_lora_keeps_the_backbone_plain(tmp_path):
    module, data = _head_module(tmp_path, train_lora=False, head_init_rows=4)
    before = module.trainable_state()
    assert not any(k.startswith("recommender.llm.") for k in before)
    lora_before = {n: p.detach().clone() for n, p in module.llm.named_parameters() if "lora_" in n}
    trainer(tmp_path, max_steps=2).fit(module, datamodule=data)
    assert all(torch.equal(lora_before[n], p) for n, p in module.llm.named_parameters() if "lora_" in n)


def test_yes_no_head_is_a_sigmoid_of_the_target_logit(tmp_path):
    module, data = _head_module(tmp_path, task="yes_no", head_init_rows=6)
    trainer(tmp_path, max_steps=2).fit(module, datamodule=data)
    data.setup("test")
    batch = next(iter(data.test_dataloader()))
    module.eval()
    rows = module.score_batch(batch)
    logit = module.head_scores(batch, "hybrid", "target")[:, 0]
    assert torch.allclose(torch.tensor([r["score"] for r in rows]), torch.sigmoid(logit).float(), atol=1e-6)


def test_head_refuses_text_regime_and_generation(tmp_path):
    backbone = make_backbone_dir(tmp_path, "llama")
    cf = make_cf_dirs(tmp_path)
    with pytest.raises(ValueError, match="hybrid regime"):
        CollabLLM(backbone_path=str(backbone), template="head_next_item", regime="text", scorer="head")
    with pytest.raises(ValueError, match="eval_generation"):
        CollabLLM(backbone_path=str(backbone), template="head_next_item", regime="joint", scorer="head",
                  cf_model_path=str(cf["sasrec"]), eval_generation=True)


@pytest.mark.parametrize("target", ["signed_item", "user"])
def test_yes_no_alignment_targets_are_least_squares_fits(tmp_path, target):
    module, data = _head_module(tmp_path, task="yes_no", head_init_rows=8, head_target=target, head_layer=1)
    data.setup("fit")
    module.initialize_head(data.datasets["train"], data.collator)
    order = torch.randperm(len(data.datasets["train"]), generator=torch.Generator().manual_seed(5))[:8]
    batch = data.collator([data.datasets["train"][int(i)] for i in order])
    module.llm.eval()
    embeds, mask = module.embed(batch["hybrid"], prompt_only=True)
    cf = module.injector.cf_model
    with torch.no_grad():
        h = scoring.last_hidden_state(module.llm, embeds, mask, layer=1).float()
        if target == "user":
            y = cf.user_embeddings(batch["users"]).float()
        else:
            y = (2.0 * batch["label"].float() - 1.0)[:, None] * cf.item_embeddings(batch["item"]).float()
    ref = ItemScoringHead(h.shape[1], y.shape[1])
    ref.fit_least_squares(h, y, ridge=100.0)
    assert torch.allclose(ref.query.net.weight, module.head.query.net.weight, atol=1e-4)
    assert torch.allclose(ref.query.net.bias, module.head.query.net.bias, atol=1e-5)


def test_head_target_and_layer_are_checked(tmp_path):
    backbone = make_backbone_dir(tmp_path, "llama")
    cf = make_cf_dirs(tmp_path)
    with pytest.raises(ValueError, match="head_target"):
        CollabLLM(backbone_path=str(backbone), template="head_next_item", regime="joint", scorer="head",
                  cf_model_path=str(cf["sasrec"]), head_target="user")
    with pytest.raises(ValueError, match="head_layer"):
        CollabLLM(backbone_path=str(backbone), template="llara_movielens", regime="joint",
                  cf_model_path=str(cf["sasrec"]), head_layer=2)


def test_folded_injection_carries_mf_biases_and_round_trips_through_a_bundle(tmp_path):
    """``cf_fold_biases``: the injected model is the saved MF's folded export (its inner products are MF's scores
    but the global bias; where it came from is kept), the saved MF is not changed, the Yes/No user head reads
    the folded user vector, and a bundle reloads it as saved (not folded twice) with the same scores."""
    from cf_models.base import CFModel
    from collab_llm.recommender import Recommender

    module, data = _head_module(tmp_path, task="yes_no", cf_kind="mf_bias", cf_fold_biases=True, head_init_rows=8,
                                head_target="user", head_layer=1)
    saved = CFModel.from_pretrained(make_cf_dirs(tmp_path)["mf_bias"])
    cf = module.injector.cf_model
    assert cf.config.folded_biases and not cf.config.use_bias and cf.embedding_dim == saved.embedding_dim + 2
    assert cf.source_sha256 == saved.source_sha256 and cf.made_from == saved.made_from
    users, items = torch.tensor([1, 2, 3]), torch.tensor([4, 1, 2])
    with torch.no_grad():
        want = saved.pair_scores(users=users, items=items) - saved.global_bias
        got = (cf.user_embeddings(users) * cf.item_embeddings(items)).sum(-1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    data.setup("fit")
    module.initialize_head(data.datasets["train"], data.collator)
    assert module.head.query.net.weight.shape[0] == cf.embedding_dim  # fitted onto the folded user vectors
    module.eval()
    data.setup("test")
    batch = next(iter(data.test_dataloader()))
    expected = [r["score"] for r in module.score_batch(batch)]
    loaded = Recommender.from_pretrained(module.recommender.save_pretrained(tmp_path / "bundle"))
    assert loaded.injector.cf_model.embedding_dim == cf.embedding_dim
    assert [r["score"] for r in loaded.score(batch, "hybrid")] == pytest.approx(expected, abs=1e-6)


def test_folding_needs_an_mf_with_biases(tmp_path):
    backbone = make_backbone_dir(tmp_path, "llama")
    cf = make_cf_dirs(tmp_path)
    for kind in ("mf", "sasrec"):
        with pytest.raises(ValueError, match="use_bias: true"):
            CollabLLM(backbone_path=str(backbone), template="head_yes_no", regime="joint", scorer="head",
                      cf_model_path=str(cf[kind]), cf_fold_biases=True)
    with pytest.raises(ValueError, match="needs cf_model_path"):
        CollabLLM(backbone_path=str(backbone), template="collm_movielens", regime="text", cf_fold_biases=True)
