"""CF backbones: masking identities of SASRec, score consistency, checkpoints and training steps."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from cf_models import CFModel, MatrixFactorization, MFConfig, SASRec, SASRecConfig
from cf_models.training import MFTask, SASRecTask

torch.set_num_threads(1)


def _sasrec(seed: int = 0, **overrides) -> SASRec:
    torch.manual_seed(seed)
    cfg = dict(n_items=30, hidden_size=16, num_layers=2, num_heads=2, max_len=8, ffn_dim=32, dropout=0.3,
               attention_dropout=0.3)
    cfg.update(overrides)
    return SASRec(SASRecConfig(**cfg)).eval()


def _mf(seed: int = 0, use_bias: bool = True) -> MatrixFactorization:
    torch.manual_seed(seed)
    model = MatrixFactorization(MFConfig(n_users=5, n_items=12, embedding_dim=4, use_bias=use_bias))
    if use_bias:  # non-zero biases so that the bias terms are exercised
        with torch.no_grad():
            model.user_bias.weight.normal_()
            model.item_bias.weight.normal_()
            model.global_bias.fill_(0.7)
    return model.eval()


def test_sasrec_left_padding_does_not_change_the_representation():
    model = _sasrec()
    history = torch.tensor([[3, 7, 1, 9, 4], [0, 0, 0, 5, 6]])
    padded = torch.cat([torch.zeros(2, 3, dtype=torch.long), history], dim=1)
    torch.testing.assert_close(model.sequence_representation(padded), model.sequence_representation(history))
    # every real position too, not only the last
    torch.testing.assert_close(model.encode(padded)[:, 3:], model.encode(history))
    # padded positions come out as zeros
    assert model.encode(padded)[:, :3].abs().max() == 0
    assert model.encode(history)[1, :3].abs().max() == 0


def test_sasrec_is_causal_and_a_later_item_matters():
    model = _sasrec()
    a = torch.tensor([[0, 2, 3, 4, 5, 6]])
    b = a.clone()
    b[0, 4] = 11  # change the item at position 4
    ha, hb = model.encode(a), model.encode(b)
    torch.testing.assert_close(ha[:, :4], hb[:, :4])  # earlier positions do not see it
    assert (ha[:, 4:] - hb[:, 4:]).abs().max() > 1e-4  # it and later positions do


def test_sasrec_keeps_the_most_recent_max_len_items():
    model = _sasrec(max_len=4)
    long = torch.tensor([[9, 8, 1, 2, 3, 4]])
    torch.testing.assert_close(model.sequence_representation(long), model.sequence_representation(long[:, -4:]))


@pytest.mark.parametrize("tie", [True, False])
def test_pair_scores_agree_with_full_scores(tie):
    mf, sas = _mf(), _sasrec(tie_output_embedding=tie)
    users = torch.tensor([1, 3, 5])
    history = torch.tensor([[0, 1, 2], [4, 5, 6], [0, 0, 9]])
    items = torch.tensor([[1, 2, 12], [5, 5, 7], [3, 11, 10]])
    full = mf.full_scores(users=users)
    torch.testing.assert_close(mf.pair_scores(items, users=users), full.gather(1, items))
    torch.testing.assert_close(mf.pair_scores(items[:, 0], users=users), full.gather(1, items[:, :1]).squeeze(1))
    full = sas.full_scores(history=history)
    torch.testing.assert_close(sas.pair_scores(items, history=history), full.gather(1, items))
    for scores in (mf.full_scores(users=users), sas.full_scores(history=history)):
        assert torch.isneginf(scores[:, 0]).all() and torch.isfinite(scores[:, 1:]).all()


def test_mf_score_is_dot_product_plus_biases():
    mf = _mf()
    u, i = torch.tensor([2]), torch.tensor([7])
    expected = (mf.user_embeddings(u) * mf.item_embeddings(i)).sum() + mf.user_bias.weight[2, 0] + \
        mf.item_bias.weight[7, 0] + mf.global_bias
    torch.testing.assert_close(mf.pair_scores(i, users=u), expected.view(1))


def test_accessors_refuse_the_wrong_kind_of_query():
    mf, sas = _mf(), _sasrec()
    assert mf.user_embeddings(torch.tensor([1, 2])).shape == (2, 4)
    assert sas.item_embeddings(torch.tensor([[1, 2, 3]])).shape == (1, 3, 16)
    with pytest.raises(NotImplementedError, match="sequence_representation"):
        sas.user_embeddings(torch.tensor([1]))
    with pytest.raises(NotImplementedError, match="not a sequential model"):
        mf.sequence_representation(torch.tensor([[1, 2]]))
    with pytest.raises(IndexError, match="expected 0..12"):
        mf.item_embeddings(torch.tensor([13]))


def _untied_sasrec(seed: int = 0) -> SASRec:
    return _sasrec(seed, tie_output_embedding=False)


@pytest.mark.parametrize("make", [_mf, _sasrec, _untied_sasrec])
def test_save_and_from_pretrained_round_trip(tmp_path, make):
    model = make(seed=3)
    model.save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["model_type"] == model.model_type
    loaded = CFModel.from_pretrained(tmp_path / "m")
    assert type(loaded) is type(model) and loaded.config == model.config
    users = torch.tensor([1, 2])
    history = torch.tensor([[0, 1, 2], [3, 4, 5]])
    torch.testing.assert_close(loaded.full_scores(users=users, history=history),
                               model.full_scores(users=users, history=history), rtol=0, atol=0)
    # saving again replaces the folder atomically (no leftovers next to it)
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_from_pretrained_checks_the_class(tmp_path):
    _mf().save_pretrained(tmp_path / "mf")
    with pytest.raises(TypeError, match="MatrixFactorization"):
        SASRec.from_pretrained(tmp_path / "mf")
    with pytest.raises(FileNotFoundError, match="config.json"):
        CFModel.from_pretrained(tmp_path / "nothing")


def test_sasrec_one_causal_pass_equals_per_prefix_cross_entropy():
    torch.manual_seed(0)
    task = SASRecTask(n_items=30, hidden_size=16, num_layers=2, num_heads=2, max_len=6, ffn_dim=32)
    task.eval()  # no dropout: the identity is exact
    seq = torch.tensor([[0, 0, 4, 8, 15, 16, 23], [1, 2, 3, 4, 5, 6, 7]])
    history, target = seq[:, :-1], seq[:, 1:]
    loss = task.loss(history, target)
    terms = []
    for b in range(2):
        for t in range(6):
            if history[b, t] == 0:
                continue
            scores = task.model.full_scores(history=history[b:b + 1, :t + 1])
            terms.append(F.cross_entropy(scores, target[b:b + 1, t]))
    torch.testing.assert_close(loss, torch.stack(terms).mean())


@pytest.mark.parametrize("loss", ["ce", "bpr", "bce"])
def test_sasrec_training_steps_reduce_the_loss(loss):
    torch.manual_seed(0)
    task = SASRecTask(n_items=20, hidden_size=16, num_layers=1, num_heads=2, max_len=8, ffn_dim=16,
                      dropout=0.0, attention_dropout=0.0, loss=loss, lr=1e-2)
    # next item = previous + 1 (mod 20)
    starts = torch.arange(16).view(-1, 1)
    seq = (starts + torch.arange(9)) % 20 + 1
    opt = task.configure_optimizers()
    torch.manual_seed(1)
    first = task.loss(seq[:, :-1], seq[:, 1:]).item()
    for _ in range(30):
        opt.zero_grad()
        task.loss(seq[:, :-1], seq[:, 1:]).backward()
        opt.step()
    torch.manual_seed(1)
    assert task.loss(seq[:, :-1], seq[:, 1:]).item() < 0.7 * first


@pytest.mark.parametrize("loss", ["bpr", "bce"])
def test_mf_training_steps_reduce_the_loss(loss):
    torch.manual_seed(0)
    task = MFTask(n_users=8, n_items=10, embedding_dim=8, loss=loss, lr=5e-2)
    users = torch.arange(1, 9).repeat(3)
    items = (users * 3 + torch.arange(24) % 3) % 10 + 1
    batch = {"user": users, "item": items, "negative": (items + 4) % 10 + 1, "label": (items % 2 == users % 2).long()}
    opt = task.configure_optimizers()
    first = task.loss(batch).item()
    for _ in range(40):
        opt.zero_grad()
        task.loss(batch).backward()
        opt.step()
    assert task.loss(batch).item() < 0.5 * first
    with pytest.raises(KeyError, match="negative" if loss == "bpr" else "label"):
        task.loss({"user": users, "item": items})


def test_mf_batch_l2_adds_the_squared_rows_of_the_batch():
    torch.manual_seed(0)
    plain = MFTask(n_users=4, n_items=6, embedding_dim=3, loss="bpr")
    reg = MFTask(n_users=4, n_items=6, embedding_dim=3, loss="bpr", l2_batch=0.5)
    reg.load_state_dict(plain.state_dict())
    batch = {"user": torch.tensor([1, 2]), "item": torch.tensor([3, 4]), "negative": torch.tensor([5, 6])}
    p, q = plain.model.user_embedding.weight, plain.model.item_embedding.weight
    squares = p[[1, 2]].pow(2).sum() + q[[3, 4]].pow(2).sum() + q[[5, 6]].pow(2).sum()
    torch.testing.assert_close(reg.loss(batch) - plain.loss(batch), 0.5 * squares / 2)


def test_sasrec_dropout_keeps_the_expectation_and_is_off_in_eval():
    from cf_models.sasrec import _Dropout

    drop = _Dropout(0.25)
    x = torch.full((200, 500), 3.0)
    torch.manual_seed(0)
    y = drop.train()(x)
    kept = y != 0
    # kept entries are scaled by 1 / (1 - p); the dropped fraction is p (100k draws: SE ~0.0014)
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 4.0))
    assert abs(1 - kept.double().mean().item() - 0.25) < 0.006
    assert torch.equal(drop.eval()(x), x)
    with pytest.raises(ValueError, match="dropout"):
        _Dropout(1.0)


def test_post_layer_norm_sasrec_keeps_padding_invariance_causality_and_round_trips(tmp_path):
    model = _sasrec(layer_norm="post", layer_norm_eps=1e-12, scale_embedding=False)
    history = torch.tensor([[3, 7, 1, 9, 4], [0, 0, 0, 5, 6]])
    padded = torch.cat([torch.zeros(2, 3, dtype=torch.long), history], dim=1)
    torch.testing.assert_close(model.encode(padded)[:, 3:], model.encode(history))
    assert model.encode(padded)[:, :3].abs().max() == 0
    changed = history.clone()
    changed[0, 3] = 11
    ha, hb = model.encode(history), model.encode(changed)
    torch.testing.assert_close(ha[:, :3], hb[:, :3])
    assert (ha[0, 3:] - hb[0, 3:]).abs().max() > 1e-4
    # post-LN: every real position's state is a LayerNorm output (mean 0, unit variance over d)
    real = model.encode(history)[history != 0]
    torch.testing.assert_close(real.mean(-1), torch.zeros(real.shape[0]), atol=1e-5, rtol=0)
    torch.testing.assert_close(real.var(-1, unbiased=False), torch.ones(real.shape[0]), atol=1e-3, rtol=0)
    # and differs from the pre-LN architecture with the same weights
    pre = _sasrec(layer_norm="pre", layer_norm_eps=1e-12, scale_embedding=False)
    pre.load_state_dict(model.state_dict())
    assert (pre.encode(history) - model.encode(history)).abs().max() > 1e-3
    model.save_pretrained(tmp_path / "post")
    loaded = SASRec.from_pretrained(tmp_path / "post")
    assert loaded.config.layer_norm == "post" and loaded.config.scale_embedding is False
    torch.testing.assert_close(loaded.full_scores(history=history), model.full_scores(history=history))
    with pytest.raises(ValueError, match="layer_norm"):
        _sasrec(layer_norm="middle")


def test_sasrec_label_smoothing_is_over_real_items_only():
    torch.manual_seed(0)
    kw = dict(n_items=30, hidden_size=16, num_layers=1, num_heads=2, max_len=6, ffn_dim=16)
    plain = SASRecTask(**kw).eval()
    smooth = SASRecTask(**kw, label_smoothing=0.1).eval()
    smooth.model.load_state_dict(plain.model.state_dict())
    seq = torch.tensor([[0, 0, 4, 8, 15, 16, 23], [1, 2, 3, 4, 5, 6, 7]])
    history, target = seq[:, :-1], seq[:, 1:]
    hidden = plain.model.encode(history)
    valid = (history != 0) & (target != 0)
    logp = torch.log_softmax(hidden[valid] @ plain.model.output_weight[1:].T, dim=-1)  # 30 real items
    nll = -logp.gather(1, (target[valid] - 1)[:, None]).squeeze(1)
    ref = (0.9 * nll + 0.1 * (-logp.mean(dim=1))).mean()
    torch.testing.assert_close(smooth.loss(history, target), ref)
    assert torch.isfinite(smooth.loss(history, target))  # the padding column never gets smoothing mass
    torch.testing.assert_close(plain.loss(history, target), nll.mean())
    with pytest.raises(ValueError, match="label_smoothing applies to loss='ce' only"):
        SASRecTask(**kw, loss="bpr", label_smoothing=0.1)


def test_sasrec_ema_weights_average_the_steps_and_are_evaluated():
    torch.manual_seed(0)
    task = SASRecTask(n_items=20, hidden_size=16, num_layers=1, num_heads=2, max_len=8, ffn_dim=16,
                      dropout=0.0, attention_dropout=0.0, lr=1e-2, ema_decay=0.5)
    assert task.eval_model is task.ema_model and not any(p.requires_grad for p in task.ema_model.parameters())
    seq = (torch.arange(8).view(-1, 1) + torch.arange(9)) % 20 + 1
    opt = task.configure_optimizers()
    expected = {k: v.clone() for k, v in task.model.state_dict().items()}
    for _ in range(3):
        opt.zero_grad()
        task.loss(seq[:, :-1], seq[:, 1:]).backward()
        opt.step()
        task.on_train_batch_end(None, None, 0)
        current = task.model.state_dict()
        for k, v in expected.items():
            if current[k].is_floating_point():
                expected[k] = 0.5 * v + 0.5 * current[k]
    avg = task.ema_model.state_dict()
    for k, v in expected.items():
        if v.is_floating_point():
            torch.testing.assert_close(avg[k], v, msg=k)
    moved = [k for k, v in avg.items() if v.is_floating_point() and not torch.equal(v, task.model.state_dict()[k])]
    assert moved  # the average lags the weights
    task.on_fit_end()  # the average becomes the model
    for k, v in task.ema_model.state_dict().items():
        torch.testing.assert_close(task.model.state_dict()[k], v, rtol=0, atol=0, msg=k)
    with pytest.raises(ValueError, match="ema_decay must be"):
        SASRecTask(n_items=5, ema_decay=1.0)


def test_mf_folded_keeps_every_score_but_the_global_constant_and_needs_biases():
    mf = _mf()
    with torch.no_grad():
        for table in (mf.user_bias, mf.item_bias):
            table.weight.normal_()  # trained biases are not zero
            table.weight[0].zero_()
        mf.global_bias.fill_(0.3)
    folded = mf.folded()
    assert folded.embedding_dim == mf.embedding_dim + 2 and not folded.config.use_bias and folded.config.folded_biases
    users = torch.tensor([1, 2, 3])
    items = torch.tensor([[4, 5, 6], [7, 8, 9], [1, 2, 12]])
    torch.testing.assert_close(folded.pair_scores(items, users=users), mf.pair_scores(items, users=users) - 0.3)
    torch.testing.assert_close(folded.full_scores(users=users)[:, 1:], mf.full_scores(users=users)[:, 1:] - 0.3)
    assert not folded.item_embeddings(torch.tensor([0])).any() and not folded.user_embeddings(torch.tensor([0])).any()
    plain = MatrixFactorization(MFConfig(n_users=4, n_items=5, embedding_dim=3))
    with pytest.raises(ValueError, match="no biases to fold"):
        plain.folded()


def test_mf_task_exports_the_folded_model_only_when_asked_and_only_with_biases():
    from collab_llm.errors import UserError

    task = MFTask(n_users=3, n_items=4, embedding_dim=2, use_bias=True, fold_biases_on_export=True, loss="bce")
    assert task.export_model().embedding_dim == 4 and task.model.embedding_dim == 2  # training keeps the biased model
    assert MFTask(n_users=3, n_items=4, embedding_dim=2, use_bias=True, loss="bce").export_model() is not None
    with pytest.raises(UserError, match="use_bias true"):
        MFTask(n_users=3, n_items=4, embedding_dim=2, fold_biases_on_export=True, loss="bce")
