"""Numeric tests of collab_llm.scoring on tiny Llama / Qwen2 / GPT-2 models (offline, seconds)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from collab_llm.metrics import auc, uauc
from collab_llm.scoring import (
    answer_lm_loss,
    check_left_padded,
    encode_answers,
    generate_answers,
    generation_metrics,
    normalize_title,
    parse_choice,
    position_ids_from_mask,
    rank_candidates,
    ranking_metrics,
    resolve_answer_token,
    yes_no_metrics,
    yes_no_scores,
)
from collab_llm.testing import tiny_causal_lm

torch.set_num_threads(1)
FAMILIES = ["llama", "qwen2", "gpt2"]
PROMPTS = [
    "This user has watched Toy Story, GoldenEye, Four Rooms in the previous. Answer:",
    "Heat, Casino. Answer:",
    "Babe Answer:",
]


def left_pad(model, tok, texts):
    """Embed ``texts`` left-padded -> ((B, T, H) embeds, (B, T) mask, token id lists)."""
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    width = max(map(len, ids))
    x = torch.full((len(ids), width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros(len(ids), width, dtype=torch.long)
    for i, row in enumerate(ids):
        x[i, width - len(row):] = torch.tensor(row)
        mask[i, width - len(row):] = 1
    with torch.no_grad():
        embeds = model.get_input_embeddings()(x)
    return embeds, mask, ids


def alone(model, ids):
    with torch.no_grad():
        e = model.get_input_embeddings()(torch.tensor([ids]))
    return e, torch.ones(1, len(ids), dtype=torch.long)


def test_position_ids_from_mask_golden():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    assert position_ids_from_mask(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4], [0, 0, 0, 0, 0]]


def test_right_padding_is_refused():
    e = torch.zeros(2, 3, 4)
    with pytest.raises(ValueError, match="not left-padded"):
        check_left_padded(e, torch.tensor([[1, 1, 0], [1, 1, 1]]))
    with pytest.raises(ValueError, match="empty"):
        check_left_padded(e, torch.tensor([[0, 0, 0], [1, 1, 1]]))


@pytest.mark.parametrize("family", FAMILIES)
def test_resolve_answer_token_roundtrip(family):
    _, tok = tiny_causal_lm(family)
    yes = resolve_answer_token(tok, "Yes")
    no = resolve_answer_token(tok, "No")
    assert yes != no
    # the id is the one the tokenizer gives for the answer as it follows a prompt
    assert tok("Answer: Yes", add_special_tokens=False)["input_ids"][-1] == yes
    assert tok.decode([yes]).strip() == "Yes"
    with pytest.raises(ValueError, match="not a single token"):
        resolve_answer_token(tok, "Supercalifragilistic")


@pytest.mark.parametrize("family", FAMILIES)
def test_yes_no_left_padding_matches_alone_and_reference(family):
    model, tok = tiny_causal_lm(family)
    yes, no = resolve_answer_token(tok, "Yes"), resolve_answer_token(tok, "No")
    embeds, mask, ids = left_pad(model, tok, PROMPTS)
    with torch.no_grad():
        batch = yes_no_scores(model, embeds, mask, yes, no)
        for i, row in enumerate(ids):
            single = yes_no_scores(model, *alone(model, row), yes, no)
            assert abs(batch[i].item() - single.item()) < 1e-5
            # reference: plain forward on token ids, softmax over the two logits
            logits = model(torch.tensor([row])).logits[0, -1]
            ref = torch.softmax(logits[[yes, no]], dim=0)[0]
            assert abs(batch[i].item() - ref.item()) < 1e-5
    assert batch.dtype == torch.float32 and batch.shape == (3,)


def naive_loglik(model, prompt_ids, answer_ids):
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([prompt_ids + answer_ids])).logits[0].float(), dim=-1)
    p = len(prompt_ids)
    return sum(logp[p - 1 + k, t].item() for k, t in enumerate(answer_ids))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("length_normalize", [False, True])
@pytest.mark.parametrize("method", ["packed", "expand"])
def test_rank_candidates_equals_full_forward(family, length_normalize, method):
    model, tok = tiny_causal_lm(family)
    embeds, mask, ids = left_pad(model, tok, PROMPTS)
    titles = [["Heat", "Toy Story (1995)", "Casino"], ["Babe", "Sabrina", "GoldenEye"], ["Jumanji", "Heat", "Four Rooms"]]
    cands = [encode_answers(tok, t) for t in titles]
    assert len({len(c) for row in cands for c in row}) > 1  # lengths differ: padding is exercised
    with torch.no_grad():
        got = rank_candidates(model, embeds, mask, cands, length_normalize=length_normalize, method=method)
    assert got.shape == (3, 3) and got.dtype == torch.float32
    for i in range(3):
        for c in range(3):
            ref = naive_loglik(model, ids[i], cands[i][c])
            if length_normalize:
                ref /= len(cands[i][c])
            assert abs(got[i, c].item() - ref) < 1e-4, (i, c, got[i, c].item(), ref)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_rank_candidates_single_token_answers(family):
    model, tok = tiny_causal_lm(family)
    embeds, mask, ids = left_pad(model, tok, PROMPTS[:2])
    yes, no = resolve_answer_token(tok, "Yes"), resolve_answer_token(tok, "No")
    with torch.no_grad():
        got = rank_candidates(model, embeds, mask, [[[yes], [no]], [[yes], [no]]])
        # log-likelihoods of Yes and No: their softmax over the pair is P(Yes)
        p_yes = yes_no_scores(model, embeds, mask, yes, no)
    assert torch.allclose(torch.softmax(got, dim=1)[:, 0], p_yes, atol=1e-5)


def test_rank_candidates_packed_and_expanded_agree_with_one_candidate_longest():
    # one long answer among short ones: the packed rows differ a lot in length (row padding exercised)
    model, tok = tiny_causal_lm("qwen2")
    embeds, mask, _ = left_pad(model, tok, PROMPTS[:2])
    titles = [["A", "Toy Story (1995) and a much longer title", "B"], ["C", "D", "E"]]
    cands = [encode_answers(tok, t) for t in titles]
    with torch.no_grad():
        packed = rank_candidates(model, embeds, mask, cands, method="packed")
        expand = rank_candidates(model, embeds, mask, cands, method="expand")
    assert torch.allclose(packed, expand, atol=1e-4)
    with pytest.raises(ValueError, match="method must be"):
        rank_candidates(model, embeds, mask, cands, method="tree")


def test_rank_candidates_rejects_ragged_candidate_counts():
    model, tok = tiny_causal_lm("llama")
    embeds, mask, _ = left_pad(model, tok, PROMPTS[:2])
    with pytest.raises(ValueError, match="same, non-zero number of candidates"):
        rank_candidates(model, embeds, mask, [[[5], [6]], [[5]]])


def reference_greedy(model, ids, eos, max_new_tokens):
    """Greedy decoding by full forward passes on token ids (no cache, no padding)."""
    seq = list(ids)
    out = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            nxt = int(model(torch.tensor([seq])).logits[0, -1].argmax())
            if nxt == eos:
                break
            out.append(nxt)
            seq.append(nxt)
    return out



@pytest.mark.parametrize("family", FAMILIES)
def test_answer_lm_loss_equals_hf_loss_and_its_gradients(family):
    """The answer-only-logits loss is HF's causal-LM loss (right-padded rows, ragged answers), and so are the
    gradients of the trainable parts (LoRA under peft); a model type outside the plain-LM-head list takes
    HF's own path (same value)."""
    from peft import LoraConfig, get_peft_model

    model, _ = tiny_causal_lm(family)
    targets = ["c_attn"] if family == "gpt2" else ["q_proj", "v_proj"]
    lm = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=targets,
                                          init_lora_weights=False))
    g = torch.Generator().manual_seed(0)
    embeds = torch.randn(3, 17, 32, generator=g)
    mask = torch.ones(3, 17, dtype=torch.long)
    mask[1, 12:] = 0
    mask[2, 15:] = 0
    labels = torch.full((3, 17), -100)
    labels[0, 10:] = torch.arange(7) + 5
    labels[1, 8:12] = 7
    labels[2, 14] = 3

    def grads(loss):
        params = [p for p in lm.parameters() if p.requires_grad]
        return torch.autograd.grad(loss, params)

    ref = lm(inputs_embeds=embeds, attention_mask=mask, labels=labels, use_cache=False).loss
    got = answer_lm_loss(lm, embeds, mask, labels)
    assert got.item() == pytest.approx(ref.item(), rel=1e-5)
    for a, b in zip(grads(got), grads(ref)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    lm.get_base_model().config.model_type = "unlisted"  # e.g. a model with logit soft-capping
    assert answer_lm_loss(lm, embeds, mask, labels).item() == pytest.approx(ref.item(), rel=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_batch_equals_alone_and_reference_with_eos_stop(family):
    model, tok = tiny_causal_lm(family)
    if family == "gpt2":  # make learned positions matter, so wrong position ids would change answers
        with torch.no_grad():
            model.transformer.wpe.weight.mul_(20.0)
    eos = tok.eos_token_id
    _, _, ids = left_pad(model, tok, PROMPTS)
    # make EOS the greedy choice where row 0 would emit its third token, so stopping is exercised
    third = reference_greedy(model, ids[0], eos, 3)[2]
    with torch.no_grad():
        head = model.get_output_embeddings().weight
        head[eos] = head[third] * 1.5
    refs = [reference_greedy(model, row, eos, 10) for row in ids]
    assert len(refs[0]) < 10  # row 0 stops at EOS before the budget
    embeds, mask, _ = left_pad(model, tok, PROMPTS)
    with torch.no_grad():
        batch = generate_answers(model, embeds, mask, tok, max_new_tokens=10)
        for i, row in enumerate(ids):
            single = generate_answers(model, *alone(model, row), tok, max_new_tokens=10)
            assert batch[i] == single[0]
            assert batch[i] == tok.decode(refs[i], skip_special_tokens=True).strip()


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_generate_beam_search_runs_from_embeddings(family):
    model, tok = tiny_causal_lm(family)
    embeds, mask, ids = left_pad(model, tok, PROMPTS)
    with torch.no_grad():
        beams = generate_answers(model, embeds, mask, tok, max_new_tokens=4, num_beams=3)
        single = generate_answers(model, *alone(model, ids[1]), tok, max_new_tokens=4, num_beams=3)
    assert len(beams) == 3 and beams[1] == single[0]


def test_normalize_title():
    assert normalize_title("  Heat (1995)!") == "heat 1995"
    assert normalize_title("Shawshank Redemption, The") == "shawshank redemption the"


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("Heat (1995)", 1),
        ("heat 1995.", 1),
        ("I think: HEAT", 0),
        ("Heat (1995) or Heat", None),  # names two candidates
        ("Heat (1995) and Casino", None),
        ("Casino", 2),
        ("Casinos", None),  # whole words only
        ("nothing here", None),
        ("", None),
        ("Toy Story 2", 4),  # the longer title wins over "Toy Story"
        ("Toy Story", 3),
    ],
)
def test_parse_choice(answer, expected):
    titles = ["Heat", "Heat (1995)", "Casino", "Toy Story", "Toy Story 2"]
    assert parse_choice(answer, titles) == expected


def test_parse_choice_duplicate_titles_are_ambiguous():
    assert parse_choice("Heat", ["Heat", "heat!", "Babe"]) is None
    assert parse_choice("Babe", ["Heat", "heat!", "Babe"]) == 2


def test_ranking_metrics_golden():
    # targets at column 0; ranks: row0 -> 0, row1 -> 2, row2 -> 6 (ties count against the target)
    scores = torch.tensor(
        [
            [9.0, 1, 2, 3, 4, 5, 6, 7],
            [5.0, 6, 7, 1, 1, 1, 1, 1],
            [1.0, 2, 3, 4, 5, 6, 1, 0],
        ]
    )
    m = ranking_metrics(scores, torch.zeros(3, dtype=torch.long), n_resamples=200)
    assert m["hr@1"].value == pytest.approx(1 / 3)
    assert m["hr@5"].value == pytest.approx(2 / 3)
    assert m["ndcg@5"].value == pytest.approx((1 + 1 / math.log2(4)) / 3)
    assert m["ndcg@10"].value == pytest.approx((1 + 1 / math.log2(4) + 1 / math.log2(8)) / 3)
    assert m["mrr"].value == pytest.approx((1 + 1 / 3 + 1 / 7) / 3)
    assert m["hr@1"].ci_low <= m["hr@1"].value <= m["hr@1"].ci_high and m["hr@1"].n == 3


def test_generation_metrics_golden():
    m = generation_metrics([0, None, 2, 1], [0, 1, 3, 1], n_resamples=200)
    assert m["hr@1"].value == pytest.approx(2 / 4)
    assert m["valid_ratio"].value == pytest.approx(3 / 4)


def test_yes_no_metrics_match_reference_and_split_warm_cold():
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(6), 5)
    labels = rng.integers(0, 2, size=30)
    labels[:2] = [0, 1]
    scores = rng.random(30)
    warm = np.arange(30) < 20
    m = yes_no_metrics(users, labels, scores, warm=warm, n_resamples=100)
    assert m["auc"].value == pytest.approx(auc(labels, scores))
    ref_uauc, ref_users = uauc(users, labels, scores)
    assert m["uauc"].value == pytest.approx(ref_uauc) and m["uauc_users"] == ref_users
    assert m["warm/auc"].value == pytest.approx(auc(labels[warm], scores[warm]))
    assert m["cold/auc"].value == pytest.approx(auc(labels[~warm], scores[~warm]))
    assert m["warm/auc"].n == 20 and m["cold/auc"].n == 10
    # a cold subset with one class has an undefined AUC -> nan, not a crash
    labels2 = labels.copy()
    labels2[~warm] = 1
    m2 = yes_no_metrics(users, labels2, scores, warm=warm, n_resamples=50)
    assert math.isnan(m2["cold/auc"].value) and m2["cold/uauc_users"] == 0


@pytest.mark.real
def test_real_smollm2_padding_cache_and_generation_parity(real_assets):
    """SmolLM2-135M (fp32): Yes/No are single tokens; a left-padded batch scores, ranks and generates
    as each row alone; KV-cache ranking equals full forward passes."""
    from collab_llm.backbone import load_backbone

    backbone = load_backbone(real_assets.smollm2)
    model, tok = backbone.model, backbone.tokenizer
    yes, no = resolve_answer_token(tok, "Yes"), resolve_answer_token(tok, "No")
    assert tok.decode([yes]).strip() == "Yes" and tok.decode([no]).strip() == "No"
    prompts = [
        'A user has given high ratings to Heat (1995), Casino (1995). Would the user enjoy Babe (1995)? Answer with "Yes" or "No". Answer:',
        "Is Toy Story (1995) a movie? Answer:",
    ]
    embeds, mask, ids = left_pad(model, tok, prompts)
    titles = [["Babe (1995)", "Heat (1995)", "GoldenEye (1995)"], ["Yes", "No, it is not", "Toy Story (1995)"]]
    cands = [encode_answers(tok, t) for t in titles]
    with torch.no_grad():
        p_yes = yes_no_scores(model, embeds, mask, yes, no)
        ranks = rank_candidates(model, embeds, mask, cands)
        answers = generate_answers(model, embeds, mask, tok, max_new_tokens=6)
        for i, row in enumerate(ids):
            e1, m1 = alone(model, row)
            assert abs(p_yes[i].item() - yes_no_scores(model, e1, m1, yes, no).item()) < 1e-4
            assert answers[i] == generate_answers(model, e1, m1, tok, max_new_tokens=6)[0]
            for c in range(3):
                assert abs(ranks[i, c].item() - naive_loglik(model, row, cands[i][c])) < 1e-3
