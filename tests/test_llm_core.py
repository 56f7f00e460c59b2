"""Backbone, templates, collation and soft-token injection on tiny models (llama + another family)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from peft import get_peft_model

from cf_models.mf import MatrixFactorization, MFConfig
from collab_llm import scoring
from collab_llm.backbone import (
    DEFAULT_PLACEHOLDERS,
    default_lora_targets,
    freeze_with_placeholders,
    load_backbone,
    load_tokenizer,
    lora_config,
)
from collab_llm.collate import IGNORE_INDEX, PromptCollator, TableDataset
from collab_llm.injection import SoftTokenInjector, scatter_soft_tokens
from collab_llm.prompts import load_template, render
from collab_llm.testing import tiny_causal_lm
from projectors import LlaraMLP

torch.set_num_threads(1)
FAMILIES = ["llama", "qwen2", "gpt2"]
TITLES = {1: "Toy Story", 2: "GoldenEye", 3: "Four Rooms", 4: "Get Shorty", 5: "Copycat", 6: "Heat", 7: "Casino", 8: "Babe"}


def tiny_backbone(family: str):
    model, tok = tiny_causal_lm(family)
    return freeze_with_placeholders(model, tok, DEFAULT_PLACEHOLDERS)


def next_item_rows() -> list[dict]:
    frame = pd.DataFrame(
        {
            "user": [1, 2],
            "history": [[1, 2, 3], [4, 5]],
            "target": [6, 7],
            "candidates": [[8, 6, 7], [7, 1, 6]],
        }
    )
    ds = TableDataset(frame, "next_item")
    return [ds[i] for i in range(len(ds))]


def yes_no_rows() -> list[dict]:
    frame = pd.DataFrame(
        {
            "user": [1, 2, 3],
            "item": [6, 7, 8],
            "label": [1, 0, 1],
            "rating": [5.0, 2.0, 4.0],
            "timestamp": [1, 2, 3],
            "history": [[1, 2], [3], [4, 5, 1]],
            "warm": [True, False, True],
            "liked": [[1, 2], [3], [4]],
            "disliked": [[5], [], [2, 3]],
        }
    )
    ds = TableDataset(frame, "yes_no")
    return [ds[i] for i in range(len(ds))]


# ------------------------------------------------------------------ backbone
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_load_backbone_from_folder(tmp_path, family):
    model, tok = tiny_causal_lm(family)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    bb = load_backbone(tmp_path, "float32")
    assert set(bb.placeholder_ids) == set(DEFAULT_PLACEHOLDERS)
    assert len(set(bb.placeholder_ids.values())) == 3
    for token, tid in bb.placeholder_ids.items():
        assert bb.tokenizer(f"a {token} b", add_special_tokens=False)["input_ids"].count(tid) == 1
    assert bb.model.get_input_embeddings().weight.shape[0] == len(bb.tokenizer)
    assert not any(p.requires_grad for p in bb.model.parameters())
    # old rows untouched by the resize; new rows are the mean of the old ones
    old = model.get_input_embeddings().weight
    new = bb.model.get_input_embeddings().weight
    torch.testing.assert_close(new[: old.shape[0]], old)
    torch.testing.assert_close(new[old.shape[0]:], old.mean(0, keepdim=True).expand(3, -1))
    tok2, ids2 = load_tokenizer(tmp_path)
    assert ids2 == bb.placeholder_ids
    bf = load_backbone(tmp_path, "bfloat16")
    assert bf.model.get_input_embeddings().weight.dtype == torch.bfloat16


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_targets_and_peft(family):
    bb = tiny_backbone(family)
    targets = default_lora_targets(bb.model)
    expected = {"gpt2": ["c_attn", "c_proj", "c_fc"]}.get(
        family, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    assert targets == expected
    assert default_lora_targets(bb.model, ["q_proj"] if family != "gpt2" else ["c_attn"]) != expected
    with pytest.raises(ValueError, match="empty"):
        default_lora_targets(bb.model, [])
    n_targets = sum(1 for n, _ in bb.model.named_modules() if n.split(".")[-1] in expected)
    assert n_targets == 2 * (4 if family == "gpt2" else 7)  # GPT-2 has c_proj in attention and MLP
    cfg = lora_config(bb.model, r=4, alpha=8, dropout=0.0)
    assert cfg.fan_in_fan_out == (family == "gpt2")
    peft_model = get_peft_model(bb.model, cfg)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    # every targeted linear got an adapter (A and B)
    assert len(trainable) == 2 * n_targets


# ------------------------------------------------------------------ templates
def test_shipped_templates_load_and_validate(tmp_path):
    for name, task in [("llara_movielens", "next_item"), ("collm_movielens", "yes_no"), ("tallrec_movielens", "yes_no")]:
        t = load_template(name)
        assert t.task == task and t.name == name
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntask: yes_no\ntext: 'a {candidates}'\nhybrid: 'b'\n")
    with pytest.raises(ValueError, match="unknown field"):
        load_template(bad)
    bad.write_text("name: x\ntask: yes_no\ntext: 'a'\nhybrid: 'b'\ncolour: red\n")
    with pytest.raises(ValueError, match="unknown keys"):
        load_template(bad)
    with pytest.raises(FileNotFoundError, match="shipped"):
        load_template("no_such_template")


def test_render_llara_hybrid_golden():
    t = load_template("llara_movielens")
    r = render(t, "hybrid", TITLES, user=3, lists={"history": [1, 2], "candidates": [5, 6]}, target=6)
    assert r.text == (
        "This user has watched Toy Story [HistoryEmb], GoldenEye [HistoryEmb] in the previous. Please predict "
        "the next movie this user will watch. Choose the answer from the following 2 movie titles: "
        "Copycat [HistoryEmb], Heat [HistoryEmb]. Answer:"
    )
    assert r.soft_items == [1, 2, 5, 6] and r.soft_users == []
    r = render(load_template("collm_movielens"), "hybrid", TITLES, user=3, lists={"history": [1]}, target=7)
    assert '"Toy Story"' in r.text and "titled Casino with the feature [ItemEmb]" in r.text
    assert r.soft_items == [7] and r.soft_users == [3]
    text = render(load_template("collm_movielens"), "text", TITLES, user=3, lists={"history": [1]}, target=7)
    assert text.soft_items == [] and "[" not in text.text


# ------------------------------------------------------------------ collation
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_collate_next_item_labels_padding_alignment(family):
    bb = tiny_backbone(family)
    tok = bb.tokenizer
    col = PromptCollator(tok, load_template("llara_movielens"), TITLES, bb.placeholder_ids, max_length=400)
    batch = col(next_item_rows())
    assert batch["target_index"].tolist() == [1, 0]
    assert batch["history"].tolist() == [[1, 2, 3], [0, 4, 5]]
    eos = tok.eos_token_id
    for mode in ("text", "hybrid"):
        v = batch[mode]
        for i, row in enumerate(next_item_rows()):
            n = int(v["attention_mask"][i].sum())
            assert v["attention_mask"][i, :n].all() and not v["attention_mask"][i, n:].any()  # right-padded
            answer = v["labels"][i][v["labels"][i] != IGNORE_INDEX].tolist()
            assert answer[-1] == eos and tok.decode(answer[:-1]) == " " + TITLES[row["target"]]
            # the labels are exactly the last tokens of the unpadded input
            assert v["input_ids"][i, n - len(answer):n].tolist() == answer
            # left-padded prompt == the unpadded prompt part of input_ids
            p = int(v["prompt_attention_mask"][i].sum())
            assert v["prompt_attention_mask"][i, -p:].all() and not v["prompt_attention_mask"][i, :-p].any()
            assert v["prompt_input_ids"][i, -p:].tolist() == v["input_ids"][i, : n - len(answer)].tolist()
            assert (v["labels"][i, : n - len(answer)] == IGNORE_INDEX).all()
        assert batch["candidate_token_ids"][0][1] == col.answer_ids(TITLES[6])
    # placeholder alignment: the text before each [HistoryEmb] ends with the title of its soft id
    hv = batch["hybrid"]
    hid = bb.placeholder_ids["[HistoryEmb]"]
    k = 0
    for i in range(2):
        ids = hv["prompt_input_ids"][i].tolist()
        for pos, t in enumerate(ids):
            if t == hid:
                before = tok.decode([x for x in ids[:pos] if x not in (tok.pad_token_id,)], skip_special_tokens=True)
                assert before.rstrip().endswith(TITLES[int(hv["soft_item_ids"][k])]), (before, k)
                k += 1
    assert k == hv["soft_item_ids"].numel() == 3 + 3 + 2 + 3
    assert hv["soft_item_ids"].tolist() == [1, 2, 3, 8, 6, 7, 4, 5, 7, 1, 6]
    assert batch["text"]["soft_item_ids"].numel() == 0


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_collate_truncates_oldest_history_first(family):
    bb = tiny_backbone(family)
    template = load_template("llara_movielens")
    rows = next_item_rows()[:1]
    rows[0]["history"] = [1, 2, 3, 4, 5, 8]
    full = PromptCollator(bb.tokenizer, template, TITLES, bb.placeholder_ids, modes=("hybrid",), max_length=10_000)(rows)
    total = int(full["hybrid"]["attention_mask"].sum())
    # lengths with the last k history items, computed independently
    lengths = {}
    for k in range(7):
        c = PromptCollator(bb.tokenizer, template, TITLES, bb.placeholder_ids, modes=("hybrid",), max_length=10_000)
        r = [dict(rows[0], history=rows[0]["history"][len(rows[0]["history"]) - k:] if k else [])]
        lengths[k] = int(c(r)["hybrid"]["attention_mask"].sum())
    assert lengths[6] == total and all(lengths[k] < lengths[k + 1] for k in range(6))
    budget = lengths[3] + 1  # fits 3 items but not 4
    col = PromptCollator(bb.tokenizer, template, TITLES, bb.placeholder_ids, modes=("hybrid",), max_length=budget)
    b = col(rows)["hybrid"]
    assert b["n_history"].tolist() == [3]
    assert int(b["attention_mask"].sum()) == lengths[3] <= budget
    assert b["soft_item_ids"].tolist()[:3] == [4, 5, 8]  # the most recent three, in order
    with pytest.raises(ValueError, match="row 0 .*max_length=5"):
        PromptCollator(bb.tokenizer, template, TITLES, bb.placeholder_ids, modes=("hybrid",), max_length=5)(rows)
    # min_history=0 may empty the history completely
    col0 = PromptCollator(bb.tokenizer, template, TITLES, bb.placeholder_ids, modes=("hybrid",), max_length=lengths[0], min_history=0)
    assert col0(rows)["hybrid"]["n_history"].tolist() == [0]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_collate_yes_no(family):
    bb = tiny_backbone(family)
    tok = bb.tokenizer
    for name in ("collm_movielens", "tallrec_movielens"):
        template = load_template(name)
        col = PromptCollator(tok, template, TITLES, bb.placeholder_ids, max_length=400)
        assert col.yes_id == scoring.resolve_answer_token(tok, "Yes", prefix=template.answer_prefix)
        assert col.no_id == scoring.resolve_answer_token(tok, "No", prefix=template.answer_prefix)
        batch = col(yes_no_rows())
        assert batch["label"].tolist() == [1, 0, 1] and batch["warm"].tolist() == [True, False, True]
        for mode in ("text", "hybrid"):
            labels = batch[mode]["labels"]
            answers = [lab[lab != IGNORE_INDEX].tolist() for lab in labels]
            assert answers == [[col.yes_id, tok.eos_token_id], [col.no_id, tok.eos_token_id], [col.yes_id, tok.eos_token_id]]
        assert batch["hybrid"]["soft_item_ids"].tolist() == [6, 7, 8]
        assert batch["hybrid"]["soft_user_ids"].tolist() == [1, 2, 3]


def test_collate_rejects_bad_rows():
    bb = tiny_backbone("llama")
    col = PromptCollator(bb.tokenizer, load_template("llara_movielens"), TITLES, bb.placeholder_ids)
    rows = next_item_rows()
    rows[0]["candidates"] = [1, 2, 3]  # target 6 missing
    with pytest.raises(ValueError, match="row 0 .*target 6 appears 0 times"):
        col(rows)
    with pytest.raises(ValueError, match="missing column"):
        TableDataset(pd.DataFrame({"user": [1]}), "next_item", name="train.parquet")


# ------------------------------------------------------------------ injection
def tiny_mf(n_users=5, n_items=8, d=6):
    torch.manual_seed(1)
    return MatrixFactorization(MFConfig(n_users=n_users, n_items=n_items, embedding_dim=d))


def test_scatter_soft_tokens_row_major_and_count_check():
    embeds = torch.zeros(2, 4, 3)
    mask = torch.tensor([[False, True, False, True], [True, False, False, False]])
    soft = torch.arange(9, dtype=torch.float32).view(3, 3)
    out = scatter_soft_tokens(embeds, mask, soft)
    ref = embeds.clone()
    ref[0, 1], ref[0, 3], ref[1, 0] = soft[0], soft[1], soft[2]
    torch.testing.assert_close(out, ref)
    with pytest.raises(ValueError, match="3 soft placeholder position.*2 soft token"):
        scatter_soft_tokens(embeds, mask, soft[:2])


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
def test_injection_overwrites_every_placeholder(family):
    bb = tiny_backbone(family)
    cf = tiny_mf()
    torch.manual_seed(2)
    proj = LlaraMLP(6, bb.hidden_size)
    item_ids = [bb.placeholder_ids[t] for t in ("[HistoryEmb]", "[ItemEmb]")]
    inj = SoftTokenInjector(cf, proj, item_ids, [bb.placeholder_ids["[UserEmb]"]])
    col = PromptCollator(bb.tokenizer, load_template("collm_movielens"), TITLES, bb.placeholder_ids, modes=("hybrid",))
    v = col(yes_no_rows())["hybrid"]
    emb = bb.model.get_input_embeddings()
    out = inj(emb, v["input_ids"], v["soft_item_ids"], v["soft_user_ids"])
    # reference with an explicit loop
    ref = emb(v["input_ids"]).clone()
    k_i = k_u = 0
    for b in range(ref.shape[0]):
        for t in range(ref.shape[1]):
            tid = int(v["input_ids"][b, t])
            if tid in item_ids:
                ref[b, t] = proj(cf.item_embeddings(v["soft_item_ids"][k_i:k_i + 1]))[0]
                k_i += 1
            elif tid == bb.placeholder_ids["[UserEmb]"]:
                ref[b, t] = proj(cf.user_embeddings(v["soft_user_ids"][k_u:k_u + 1]))[0]
                k_u += 1
    torch.testing.assert_close(out, ref)
    # the placeholder embedding rows are never used: scramble them, the LM output is unchanged
    logits = bb.model(inputs_embeds=out, attention_mask=v["attention_mask"]).logits
    with torch.no_grad():
        for tid in bb.placeholder_ids.values():
            emb.weight[tid] = torch.randn(bb.hidden_size) * 100
    out2 = inj(emb, v["input_ids"], v["soft_item_ids"], v["soft_user_ids"])
    torch.testing.assert_close(out2, out)
    logits2 = bb.model(inputs_embeds=out2, attention_mask=v["attention_mask"]).logits
    keep = [i for i in range(logits.shape[-1]) if i not in bb.placeholder_ids.values()]
    torch.testing.assert_close(logits2[..., keep], logits[..., keep])
    # gradients reach the projector, never the CF model
    out.sum().backward()
    assert all(p.grad is not None for p in proj.parameters())
    assert all(p.grad is None for p in cf.parameters())
    # count mismatches fail loudly
    with pytest.raises(ValueError, match="item placeholder"):
        inj(emb, v["input_ids"], v["soft_item_ids"][:-1], v["soft_user_ids"])
    text_inj = SoftTokenInjector(None, None, item_ids, [bb.placeholder_ids["[UserEmb]"]])
    with pytest.raises(ValueError, match="text-only injector"):
        text_inj(emb, v["input_ids"], v["soft_item_ids"], v["soft_user_ids"])
