"""Score a causal LM's answers: Yes/No probability, candidate log-likelihood, generate-and-parse.

Every function takes a Hugging Face causal LM (plain or wrapped by peft) and *prompt embeddings*
``inputs_embeds: (B, T, H)`` with an ``attention_mask: (B, T)`` that is **left-padded**: row ``i``
is ``[0, ..., 0, 1, ..., 1]`` so that every prompt ends at column ``T - 1``. The embeddings may hold
soft tokens (CF embeddings scattered into placeholder positions by :mod:`collab_llm.injection`);
nothing here looks at token ids of the prompt.

Position ids are computed from the mask (``cumsum - 1``), so a left-padded row is scored exactly as
the same row alone: padding changes neither RoPE phases (Llama, Qwen2) nor learned positions
(GPT-2).

Three ways to read the model:

- :func:`yes_no_scores` (TALLRec, CoLLM): one forward pass, softmax over the ``{Yes, No}`` logits
  at the last prompt position -> ``P(Yes)``.
- :func:`rank_candidates` (LLaRA / iLoRA without generation): log-likelihood of each candidate's
  answer tokens after the prompt. The prompt is encoded once per row; its KV cache is expanded
  ``C`` times (``repeat_interleave``: row ``i``'s copies are rows ``i*C .. i*C+C-1``) and the
  ``C`` candidates are scored in one more forward pass.
- :func:`generate_answers` + :func:`parse_choice` (the papers' HitRatio@1 / ValidRatio): greedy
  (or beam) generation, then the answer is matched against the candidate titles.

The metric helpers at the end turn scores / parsed choices / Yes-No probabilities into
:class:`collab_llm.metrics.Estimate` values with bootstrap intervals.
"""

from __future__ import annotations

import re
import unicodedata
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from torch import Tensor
from transformers import DynamicCache, GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from collab_llm.metrics import (
    Estimate,
    auc_estimate,
    hit_at_k_per_row,
    mean_estimate,
    mrr_per_row,
    ndcg_at_k_per_row,
    paired_auc_difference,
    paired_difference,
    target_ranks,
    uauc_estimate,
)

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "check_left_padded",
    "position_ids_from_mask",
    "resolve_answer_token",
    "encode_answers",
    "yes_no_logits",
    "yes_no_scores",
    "last_hidden_state",
    "answer_lm_loss",
    "rank_candidates",
    "generate_answers",
    "normalize_title",
    "parse_choice",
    "ranking_metrics",
    "generation_metrics",
    "yes_no_metrics",
    "paired_ranking_differences",
    "paired_yes_no_differences",
]


# --------------------------------------------------------------------------------------------
# Padding and positions
# --------------------------------------------------------------------------------------------


def check_left_padded(inputs_embeds: Tensor, attention_mask: Tensor) -> None:
    """Raise ``ValueError`` unless ``attention_mask`` is a left-padded ``(B, T)`` 0/1 mask matching
    ``inputs_embeds: (B, T, H)``, with at least one real token per row."""
    if inputs_embeds.dim() != 3:
        raise ValueError(f"inputs_embeds must be (B, T, H), got shape {tuple(inputs_embeds.shape)}")
    if attention_mask.shape != inputs_embeds.shape[:2]:
        raise ValueError(
            f"attention_mask shape {tuple(attention_mask.shape)} does not match inputs_embeds (B, T) = "
            f"{tuple(inputs_embeds.shape[:2])}"
        )
    mask = attention_mask.long()
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("attention_mask must hold only 0 and 1")
    if mask.shape[1] > 1:
        bad = (mask[:, 1:] < mask[:, :-1]).any(dim=1)
        if bool(bad.any()):
            rows = torch.nonzero(bad).flatten().tolist()
            raise ValueError(
                f"attention_mask rows {rows[:10]} are not left-padded (a 0 follows a 1); the scoring "
                "functions expect prompts padded on the left so that every prompt ends at column T-1"
            )
    empty = mask.sum(dim=1) == 0
    if bool(empty.any()):
        raise ValueError(f"attention_mask rows {torch.nonzero(empty).flatten().tolist()[:10]} are empty")


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """``(B, T)`` position ids counting only real tokens: ``cumsum(mask) - 1``, 0 on padding.

    >>> position_ids_from_mask(torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])).tolist()
    [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]
    """
    mask = attention_mask.long()
    return (mask.cumsum(dim=-1) - 1).clamp_(min=0).masked_fill_(mask == 0, 0)


# --------------------------------------------------------------------------------------------
# Answer tokens
# --------------------------------------------------------------------------------------------


def resolve_answer_token(tokenizer: PreTrainedTokenizerBase, word: str, prefix: str | None = None) -> int:
    """The single token id the model emits for ``word`` right after the prompt.

    The collator tokenises ``prompt + answer``; depending on the template the answer follows the
    prompt with or without a space. With ``prefix=None`` both ``" " + word`` and ``word`` are tried
    (in that order) and the first that tokenises to exactly one token wins; pass ``prefix=" "`` or
    ``prefix=""`` to pin the form used by the template.

    Raises:
        ValueError: if no tried form is a single token (the message lists each form's tokens).
    """
    forms = [" " + word, word] if prefix is None else [prefix + word]
    tried = []
    for form in forms:
        ids = tokenizer(form, add_special_tokens=False)["input_ids"]
        if len(ids) == 1:
            return int(ids[0])
        tried.append(f"{form!r} -> {ids} ({tokenizer.convert_ids_to_tokens(ids)})")
    raise ValueError(
        f"answer word {word!r} is not a single token for {type(tokenizer).__name__}: " + "; ".join(tried)
    )


def encode_answers(
    tokenizer: PreTrainedTokenizerBase, titles: Sequence[str], prefix: str = " ", append_eos: bool = True
) -> list[list[int]]:
    """Token ids of each answer ``prefix + title`` (+ EOS), as :func:`rank_candidates` expects.

    Use the same ``prefix`` as the collator puts between the prompt and the answer.
    """
    if append_eos and tokenizer.eos_token_id is None:
        raise ValueError(f"{type(tokenizer).__name__} has no eos_token_id; cannot append EOS to answers")
    out = []
    for title in titles:
        ids = list(tokenizer(prefix + title, add_special_tokens=False)["input_ids"])
        if not ids:
            raise ValueError(f"title {title!r} tokenises to no tokens")
        if append_eos:
            ids.append(int(tokenizer.eos_token_id))
        out.append(ids)
    return out


# --------------------------------------------------------------------------------------------
# Yes / No
# --------------------------------------------------------------------------------------------


def _forward(model: PreTrainedModel, inputs_embeds: Tensor, attention_mask: Tensor, **extra) -> object:
    check_left_padded(inputs_embeds, attention_mask)
    return model(
        inputs_embeds=inputs_embeds,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        **extra,
    )


def yes_no_logits(
    model: PreTrainedModel, inputs_embeds: Tensor, attention_mask: Tensor, yes_id: int, no_id: int
) -> Tensor:
    """``(B, 2)`` float32 logits of ``[Yes, No]`` at the last prompt position (keeps the graph, so it
    can feed a training loss: CoLLM's BCE on the Yes logit, or cross-entropy over the pair)."""
    out = _forward(model, inputs_embeds, attention_mask, use_cache=False, logits_to_keep=1)
    last = out.logits[:, -1, :]  # (B, V)
    return last[:, [yes_id, no_id]].float()


def yes_no_scores(
    model: PreTrainedModel, inputs_embeds: Tensor, attention_mask: Tensor, yes_id: int, no_id: int
) -> Tensor:
    """``P(Yes)`` per row: softmax over the ``{Yes, No}`` logits at the last prompt position.

    Args:
        inputs_embeds: ``(B, T, H)`` left-padded prompt embeddings (ending right before the answer).
        attention_mask: ``(B, T)``.
        yes_id, no_id: from :func:`resolve_answer_token`.

    Returns:
        ``(B,)`` float32 in ``[0, 1]``. One forward pass; call under ``torch.no_grad()`` to evaluate.
    """
    return torch.softmax(yes_no_logits(model, inputs_embeds, attention_mask, yes_id, no_id), dim=-1)[:, 0]


class _StopForward(Exception):
    """Raised by the hook of :func:`last_hidden_state` to end the forward pass after the layer read."""

    def __init__(self, hidden: Tensor) -> None:
        super().__init__("forward stopped after the layer read")
        self.hidden = hidden


def decoder_layers(transformer: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder blocks of an HF transformer (``layers``: Llama, Qwen2, Mistral; ``h``: GPT-2)."""
    for name in ("layers", "h"):
        blocks = getattr(transformer, name, None)
        if isinstance(blocks, torch.nn.ModuleList):
            return blocks
    raise ValueError(f"{type(transformer).__name__} has no decoder block list (.layers / .h); "
                     "read the final layer (head_layer: null)")


def last_hidden_state(model: PreTrainedModel, inputs_embeds: Tensor, attention_mask: Tensor,
                      layer: int | None = None) -> Tensor:
    """``(B, H)`` hidden state at the last position of left-padded prompts.

    ``layer=None``: after the final norm (the whole transformer); ``layer=k`` (1-based): the output of
    decoder block ``k``, and the forward pass stops there (blocks ``k+1..`` are not run: a head
    reading block 4 of 30 costs about 4/30 of a forward). Runs the transformer without its LM head
    (no logits at all): what an item-scoring head reads (:mod:`collab_llm.heads`). ``model`` may be
    a peft model (LoRA layers active) or a plain HF causal LM; its ``base_model`` (the HF
    transformer, e.g. ``LlamaModel``) is called.
    """
    check_left_padded(inputs_embeds, attention_mask)
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    transformer = causal_lm.base_model
    kwargs = dict(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                  position_ids=position_ids_from_mask(attention_mask), use_cache=False)
    if layer is None:
        return transformer(**kwargs).last_hidden_state[:, -1, :]
    blocks = decoder_layers(transformer)
    if not 1 <= layer <= len(blocks):
        raise ValueError(f"head_layer={layer}: the model has decoder blocks 1..{len(blocks)}")

    def stop(module: torch.nn.Module, args: Any, output: Any) -> None:
        raise _StopForward(output[0] if isinstance(output, tuple) else output)

    handle = blocks[layer - 1].register_forward_hook(stop)
    try:
        transformer(**kwargs)
    except _StopForward as done:
        return done.hidden[:, -1, :]
    finally:
        handle.remove()
    raise RuntimeError(f"decoder block {layer} was not called by {type(transformer).__name__}'s forward")


# Causal LMs whose logits are exactly ``get_output_embeddings()(last_hidden_state)``: their
# ``ForCausalLM.forward`` applies no soft-capping or logit scale (Gemma 2's final_logit_softcapping,
# Cohere's logit_scale, Granite's logits_scaling would be skipped by the shortcut). Others use the
# full-logits path.
PLAIN_LM_HEAD_TYPES = frozenset({"llama", "qwen2", "qwen3", "mistral", "gpt2", "phi3", "smollm3"})


def answer_lm_loss(model: PreTrainedModel, inputs_embeds: Tensor, attention_mask: Tensor, labels: Tensor) -> Tensor:
    """Hugging Face's causal-LM loss (mean cross-entropy of every token whose label is not -100, each
    predicted from the position before it) with the LM head applied ONLY at the positions that predict a
    labelled token: a training prompt of a few hundred tokens has an answer of about ten, so the (B, T, V)
    logits, their log-softmax and the LM head's backward over the whole prompt are skipped. ``model``: a
    plain HF causal LM or a peft model (adapters active); same inputs as ``model(inputs_embeds=...,
    attention_mask=..., labels=...)`` (right-padded prompt + answer), same value within float rounding.
    Model types not in :data:`PLAIN_LM_HEAD_TYPES` take the full-logits path."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(causal_lm.config, "model_type", None) not in PLAIN_LM_HEAD_TYPES:
        return model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels, use_cache=False).loss
    hidden = causal_lm.base_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                  use_cache=False).last_hidden_state  # (B, T, H), after the final norm
    targets = labels[:, 1:].to(hidden.device)
    keep = targets != -100
    logits = causal_lm.get_output_embeddings()(hidden[:, :-1][keep]).float()  # (N, V): answer positions only
    return torch.nn.functional.cross_entropy(logits, targets[keep])


# --------------------------------------------------------------------------------------------
# Candidate ranking by log-likelihood, prompt KV cache reused
# --------------------------------------------------------------------------------------------


def _pad_candidates(candidate_token_ids: Sequence[Sequence[Sequence[int]]], batch: int) -> tuple[Tensor, Tensor]:
    """Right-pad the ``B x C`` candidate token lists to ``(B*C, L)`` ids and a ``(B*C, L)`` mask."""
    if len(candidate_token_ids) != batch:
        raise ValueError(f"candidate_token_ids has {len(candidate_token_ids)} rows, inputs_embeds has {batch}")
    n_cand = {len(row) for row in candidate_token_ids}
    if len(n_cand) != 1 or 0 in n_cand:
        raise ValueError(f"every row needs the same, non-zero number of candidates; got counts {sorted(n_cand)}")
    flat = [list(c) for row in candidate_token_ids for c in row]
    for k, ids in enumerate(flat):
        if not ids:
            raise ValueError(f"candidate {k % len(candidate_token_ids[0])} of row {k // len(candidate_token_ids[0])} is empty")
    length = max(len(ids) for ids in flat)
    ids = torch.zeros(len(flat), length, dtype=torch.long)
    mask = torch.zeros(len(flat), length, dtype=torch.long)
    for k, c in enumerate(flat):
        ids[k, : len(c)] = torch.tensor(c, dtype=torch.long)
        mask[k, : len(c)] = 1
    return ids, mask


def rank_candidates(
    model: PreTrainedModel,
    inputs_embeds: Tensor,
    attention_mask: Tensor,
    candidate_token_ids: Sequence[Sequence[Sequence[int]]],
    length_normalize: bool = False,
    method: str = "packed",
) -> Tensor:
    """Log-likelihood of each candidate answer after its row's prompt.

    Args:
        inputs_embeds: ``(B, T, H)`` left-padded prompt embeddings.
        attention_mask: ``(B, T)``.
        candidate_token_ids: ``B`` rows of ``C`` candidates, each the answer's token ids exactly as
            they follow the prompt in training (title tokens then EOS, see :func:`encode_answers`).
            Lengths may differ.
        length_normalize: divide each sum by the candidate's number of tokens.
        method: how the candidates reuse the prompt's KV cache (both give the same scores, equal to
            scoring every ``prompt + candidate`` in full):

            - ``"packed"`` (default): a row's ``C`` answers are concatenated into ONE continuation of
              its prompt, and a custom 4D attention mask lets each answer token see the prompt and
              the earlier tokens of its own answer only (positions restart after the prompt for
              every answer). The cache is never copied, the batch stays ``B`` (an iLoRA gate set for
              ``B`` rows applies as is), and no padding is computed: ``sum_c (L_c - 1)`` tokens per
              row. Needs a model whose attention accepts a prepared 4D mask (every model built on
              ``transformers.masking_utils``: Llama, Qwen2, GPT-2, Mistral, ...).
            - ``"expand"``: the cache is ``repeat_interleave``'d to ``B*C`` rows and the right-padded
              answers run as ``B*C`` sequences. Works with any cache-aware model, but copies the
              prompt's keys and values ``C`` times (SmolLM2-135M, T=450, C=20: about 0.4 GB per row
              in fp32) and computes the padding.

    Returns:
        ``(B, C)`` float32 ``sum_t log p(a_t | prompt, a_<t)`` (or its mean).
    """
    check_left_padded(inputs_embeds, attention_mask)
    if method not in ("packed", "expand"):
        raise ValueError(f"method must be 'packed' or 'expand', got {method!r}")
    batch = inputs_embeds.shape[0]
    device = inputs_embeds.device
    cand_ids, cand_mask = _pad_candidates(candidate_token_ids, batch)
    cand_ids, cand_mask = cand_ids.to(device), cand_mask.to(device)
    n_cand = len(candidate_token_ids[0])
    length = cand_ids.shape[1]

    config = model.config if hasattr(model, "config") else None
    cache = DynamicCache(config=config)
    prompt_positions = position_ids_from_mask(attention_mask)
    out = model(
        inputs_embeds=inputs_embeds,
        attention_mask=attention_mask,
        position_ids=prompt_positions,
        cache=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    first_logp = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)  # (B, V)
    first_logp = first_logp.repeat_interleave(n_cand, dim=0)  # (B*C, V)
    token_logp = [first_logp.gather(1, cand_ids[:, :1])]  # (B*C, 1)

    if length > 1:
        cache = out.cache if getattr(out, "cache", None) is not None else cache
        if method == "packed":
            token_logp.append(
                _packed_continuation_logp(model, cache, attention_mask, candidate_token_ids, length, inputs_embeds.dtype)
            )
        else:
            token_logp.append(
                _expanded_continuation_logp(model, cache, attention_mask, cand_ids, cand_mask, n_cand, inputs_embeds.dtype)
            )
    per_token = torch.cat(token_logp, dim=1) * cand_mask  # (B*C, L), 0 on padding
    total = per_token.sum(dim=1)
    if length_normalize:
        total = total / cand_mask.sum(dim=1)
    return total.view(batch, n_cand)


def _expanded_continuation_logp(
    model: PreTrainedModel,
    cache: DynamicCache,
    attention_mask: Tensor,
    cand_ids: Tensor,
    cand_mask: Tensor,
    n_cand: int,
    dtype: torch.dtype,
) -> Tensor:
    """``(B*C, L-1)`` log-probs of answer tokens 1..L-1, the cache copied once per candidate."""
    device = cand_ids.device
    length = cand_ids.shape[1]
    cache.batch_repeat_interleave(n_cand)
    step_ids = cand_ids[:, :-1]  # (B*C, L-1): inputs that predict tokens 1..L-1
    step_embeds = model.get_input_embeddings()(step_ids).to(dtype)
    full_mask = torch.cat(
        [attention_mask.long().repeat_interleave(n_cand, dim=0), cand_mask[:, :-1]], dim=1
    )  # (B*C, T + L - 1)
    start = attention_mask.long().sum(dim=1).repeat_interleave(n_cand)  # (B*C,) prompt lengths
    step_positions = start[:, None] + torch.arange(length - 1, device=device)[None, :]
    out = model(
        inputs_embeds=step_embeds,
        attention_mask=full_mask,
        position_ids=step_positions,
        cache=cache,
        use_cache=True,
    )
    logits = out.logits.float()  # (B*C, L-1, V)
    picked = logits.gather(2, cand_ids[:, 1:, None]).squeeze(-1)  # (B*C, L-1)
    return picked - torch.logsumexp(logits, dim=-1)  # log-softmax at the picked ids only


def _packed_continuation_logp(
    model: PreTrainedModel,
    cache: DynamicCache,
    attention_mask: Tensor,
    candidate_token_ids: Sequence[Sequence[Sequence[int]]],
    length: int,
    dtype: torch.dtype,
) -> Tensor:
    """``(B*C, L-1)`` log-probs of answer tokens 1..L-1, all answers of a row in one sequence.

    Row ``b``'s inputs are ``a_c[0 .. L_c-2]`` for every candidate ``c``, concatenated (``Q_b``
    tokens; rows right-padded to ``Q = max_b Q_b``). Query ``q`` of answer ``c`` at offset ``t``
    has position ``P_b + t`` (``P_b`` = the row's prompt length) and sees the row's real prompt
    tokens plus answer ``c``'s tokens ``0..t``; its logits predict ``a_c[t + 1]``. Padding queries
    see the prompt only and are dropped.
    """
    device = attention_mask.device
    batch, prompt_len = attention_mask.shape
    n_cand = len(candidate_token_ids[0])
    inputs: list[list[int]] = []
    segment: list[list[int]] = []  # per query: candidate index
    offset: list[list[int]] = []  # per query: position within its answer
    for row in candidate_token_ids:
        ids, seg, off = [], [], []
        for c, cand in enumerate(row):
            steps = list(cand[:-1])
            ids += steps
            seg += [c] * len(steps)
            off += range(len(steps))
        inputs.append(ids)
        segment.append(seg)
        offset.append(off)
    q_len = max(len(ids) for ids in inputs)
    ids_t = torch.zeros(batch, q_len, dtype=torch.long)
    seg_t = torch.full((batch, q_len), -1, dtype=torch.long)
    off_t = torch.zeros(batch, q_len, dtype=torch.long)
    for b in range(batch):
        n = len(inputs[b])
        ids_t[b, :n] = torch.tensor(inputs[b], dtype=torch.long)
        seg_t[b, :n] = torch.tensor(segment[b], dtype=torch.long)
        off_t[b, :n] = torch.tensor(offset[b], dtype=torch.long)
    ids_t, seg_t, off_t = ids_t.to(device), seg_t.to(device), off_t.to(device)

    # (B, Q, T + Q) visibility: the real prompt tokens, then earlier-or-same tokens of the same answer.
    q_index = torch.arange(q_len, device=device)
    same_answer = (seg_t[:, :, None] == seg_t[:, None, :]) & (seg_t[:, :, None] >= 0)
    causal = q_index[None, :, None] >= q_index[None, None, :]
    own = same_answer & causal
    own = own | torch.eye(q_len, dtype=torch.bool, device=device)[None]  # padding queries see themselves
    prompt_visible = attention_mask.bool()[:, None, :].expand(batch, q_len, prompt_len)
    visible = torch.cat([prompt_visible, own], dim=2)
    mask = torch.zeros(batch, 1, q_len, prompt_len + q_len, dtype=dtype, device=device)
    mask.masked_fill_(~visible[:, None], torch.finfo(dtype).min)

    prompt_lengths = attention_mask.long().sum(dim=1)
    positions = prompt_lengths[:, None] + off_t
    step_embeds = model.get_input_embeddings()(ids_t).to(dtype)
    out = model(inputs_embeds=step_embeds, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True)
    logits = out.logits.float()  # (B, Q, V)
    targets = torch.zeros(batch, q_len, dtype=torch.long, device=device)
    for b, row in enumerate(candidate_token_ids):
        nxt = [tok for cand in row for tok in cand[1:]]  # a_c[t + 1] for every query, in order
        targets[b, : len(nxt)] = torch.tensor(nxt, dtype=torch.long)
    logp = logits.gather(2, targets[:, :, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)  # (B, Q)

    # Scatter back to the (B*C, L-1) layout of the expanded path (0 where an answer is shorter).
    result = torch.zeros(batch * n_cand, length - 1, dtype=torch.float32, device=device)
    valid = seg_t >= 0
    rows = (torch.arange(batch, device=device)[:, None] * n_cand + seg_t.clamp(min=0))[valid]
    result[rows, off_t[valid]] = logp[valid]
    return result


# --------------------------------------------------------------------------------------------
# Generation and parsing
# --------------------------------------------------------------------------------------------


def generate_answers(
    model: PreTrainedModel,
    inputs_embeds: Tensor,
    attention_mask: Tensor,
    tokenizer: PreTrainedTokenizerBase,
    max_new_tokens: int = 64,
    num_beams: int = 1,
) -> list[str]:
    """Greedy (``num_beams=1``) or beam-search answers from left-padded prompt embeddings.

    Generation stops at the tokenizer's EOS; the new tokens (prompt excluded) are decoded without
    special tokens and stripped. Positions come from the attention mask, so a row gives the same
    answer in any batch.

    Returns:
        ``B`` strings.
    """
    check_left_padded(inputs_embeds, attention_mask)
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError(f"{type(tokenizer).__name__} has no eos_token_id; generation could not stop")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        num_beams=num_beams,
        do_sample=False,
        eos_token_id=eos,
        pad_token_id=pad,
    )
    new_tokens = model.generate(
        inputs_embeds=inputs_embeds,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        generation_config=config,
    )
    # With inputs_embeds and no input_ids, generate returns only the new tokens: (B, <= max_new_tokens).
    answers = []
    for row in new_tokens.tolist():
        if eos in row:
            row = row[: row.index(eos)]
        answers.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    return answers


_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)


def normalize_title(text: str) -> str:
    """Case-, whitespace- and punctuation-insensitive form: ``"Heat (1995)" -> "heat 1995"``."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(_NON_WORD.sub(" ", text).split())


def parse_choice(answer: str, candidate_titles: Sequence[str]) -> int | None:
    """Index of the single candidate whose title the answer names, else ``None``.

    Titles are matched as whole-word runs of the normalised answer (see :func:`normalize_title`).
    A match inside a longer matching title's span is discarded, so ``"Heat (1995)"`` names
    ``"Heat (1995)"`` and not also ``"Heat"``. The answer names a candidate only if exactly one
    candidate remains; two candidates with the same normalised title are indistinguishable and
    give ``None`` when named.
    """
    norm_answer = f" {normalize_title(answer)} "
    spans: list[tuple[int, int, int]] = []  # (start, end, candidate index)
    for index, title in enumerate(candidate_titles):
        norm = normalize_title(title)
        if not norm:
            continue
        needle = f" {norm} "
        start = norm_answer.find(needle)
        while start != -1:
            spans.append((start, start + len(needle), index))
            start = norm_answer.find(needle, start + 1)
    kept = {
        i
        for (s, e, i) in spans
        if not any(s2 <= s and e <= e2 and (e2 - s2) > (e - s) for (s2, e2, _) in spans)
    }
    return kept.pop() if len(kept) == 1 else None


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def ranking_metrics(
    scores: Tensor, target_index: Tensor, n_resamples: int = 1000, seed: int = 0
) -> dict[str, Estimate]:
    """HR@1, HR@5, NDCG@5, NDCG@10, MRR of ``(B, C)`` candidate scores (ties count against the target).

    Args:
        scores: ``(B, C)``, e.g. from :func:`rank_candidates`.
        target_index: ``(B,)`` column of each row's target.
    """
    ranks = target_ranks(scores.detach().float().cpu(), target_index.detach().long().cpu())
    return {
        "hr@1": mean_estimate(hit_at_k_per_row(ranks, 1), n_resamples, seed),
        "hr@5": mean_estimate(hit_at_k_per_row(ranks, 5), n_resamples, seed),
        "ndcg@5": mean_estimate(ndcg_at_k_per_row(ranks, 5), n_resamples, seed),
        "ndcg@10": mean_estimate(ndcg_at_k_per_row(ranks, 10), n_resamples, seed),
        "mrr": mean_estimate(mrr_per_row(ranks), n_resamples, seed),
    }


def generation_metrics(
    choices: Sequence[int | None], target_index: Sequence[int] | Tensor, n_resamples: int = 1000, seed: int = 0
) -> dict[str, Estimate]:
    """HitRatio@1 (parsed choice == target, over all rows) and ValidRatio (choice is not None)."""
    targets = np.asarray(target_index.tolist() if isinstance(target_index, Tensor) else target_index)
    if len(choices) != targets.size:
        raise ValueError(f"{len(choices)} choices but {targets.size} targets")
    hits = np.array([c is not None and c == t for c, t in zip(choices, targets)], dtype=np.float64)
    valid = np.array([c is not None for c in choices], dtype=np.float64)
    return {
        "hr@1": mean_estimate(hits, n_resamples, seed),
        "valid_ratio": mean_estimate(valid, n_resamples, seed),
    }


def yes_no_metrics(
    users: Sequence[int] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    scores: Sequence[float] | np.ndarray | Tensor,
    warm: Sequence[bool] | np.ndarray | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Estimate | int]:
    """AUC and UAUC (with the number of users UAUC counted), overall and on warm / cold rows.

    Keys: ``auc``, ``uauc``, ``uauc_users``; with ``warm`` also ``warm/...`` and ``cold/...`` for
    each subset that has rows. A subset holding one class only gets ``nan`` estimates (AUC is
    undefined there); the overall set must hold both classes (else ``ValueError``).

    Intervals are clustered by user: AUC's (overall, warm, cold) bootstrap resamples *users* with
    all their rows (:func:`collab_llm.metrics.auc_estimate` with ``users``), because one user's
    test rows are correlated; UAUC's resamples users' per-user AUCs.
    """
    u = np.asarray(users)
    y = np.asarray(labels).astype(np.int64)
    s = np.asarray(scores.detach().float().cpu().numpy() if isinstance(scores, Tensor) else scores, dtype=np.float64)
    if not (u.shape == y.shape == s.shape):
        raise ValueError(f"users {u.shape}, labels {y.shape} and scores {s.shape} must have the same length")
    out: dict[str, Estimate | int] = {}

    def fill(prefix: str, m: np.ndarray, strict: bool) -> None:
        yy, ss, uu = y[m], s[m], u[m]
        if not strict and (yy.sum() == 0 or yy.sum() == yy.size):
            nan = Estimate(float("nan"), float("nan"), float("nan"), int(yy.size))
            out[prefix + "auc"], out[prefix + "uauc"], out[prefix + "uauc_users"] = nan, nan, 0
            return
        out[prefix + "auc"] = auc_estimate(yy, ss, n_resamples, seed, users=uu)
        est, n_users = uauc_estimate(uu, yy, ss, n_resamples, seed)
        out[prefix + "uauc"], out[prefix + "uauc_users"] = est, n_users

    fill("", np.ones(y.size, dtype=bool), strict=True)
    if warm is not None:
        w = np.asarray(warm).astype(bool)
        if w.shape != y.shape:
            raise ValueError(f"warm has shape {w.shape}, labels {y.shape}")
        for name, m in (("warm/", w), ("cold/", ~w)):
            if m.any():
                fill(name, m, strict=False)
    return out


def _aligned(frame_a: pd.DataFrame, frame_b: pd.DataFrame, shared: Sequence[str]) -> pd.DataFrame:
    """Inner join of two per-row prediction frames on ``row_index``; both must hold the same rows."""
    ia, ib = set(frame_a["row_index"]), set(frame_b["row_index"])
    if ia != ib or len(ia) != len(frame_a) or len(ib) != len(frame_b):
        raise ValueError(
            f"paired comparison needs the same rows in both prediction frames (row_index): {len(frame_a)} "
            f"vs {len(frame_b)} rows, {len(ia ^ ib)} row indices in only one of them"
        )
    merged = frame_a.merge(frame_b, on="row_index", suffixes=("_a", "_b")).sort_values("row_index")
    for col in shared:
        if col in frame_a and col in frame_b and not (merged[f"{col}_a"] == merged[f"{col}_b"]).all():
            raise ValueError(f"paired comparison: column {col!r} differs between the two frames on the same row_index")
    return merged.reset_index(drop=True)


def paired_ranking_differences(
    frame_a: pd.DataFrame, frame_b: pd.DataFrame, n_resamples: int = 1000, seed: int = 0
) -> dict[str, Estimate]:
    """Paired differences (a - b) of HR@1 and NDCG@10 between two next-item prediction frames.

    Args:
        frame_a, frame_b: per-row predictions (``predictions_test.parquet``) with columns
            ``row_index``, ``scores`` (list of ``C`` candidate scores) and ``target_index``; the
            same rows (``row_index``) in both, in any order.

    Returns:
        ``{"hr@1": Estimate, "ndcg@10": Estimate}`` of ``metric(a) - metric(b)`` with the 95%
        paired bootstrap interval over rows (:func:`collab_llm.metrics.paired_difference`).
    """
    m = _aligned(frame_a, frame_b, ("target_index", "user"))
    ranks = {}
    for side in ("a", "b"):
        scores = torch.tensor(np.stack(m[f"scores_{side}"].to_numpy()), dtype=torch.float32)
        target = torch.tensor(m[f"target_index_{side}"].to_numpy(), dtype=torch.long)
        ranks[side] = target_ranks(scores, target)
    return {
        "hr@1": paired_difference(hit_at_k_per_row(ranks["a"], 1), hit_at_k_per_row(ranks["b"], 1),
                                  n_resamples=n_resamples, seed=seed),
        "ndcg@10": paired_difference(ndcg_at_k_per_row(ranks["a"], 10), ndcg_at_k_per_row(ranks["b"], 10),
                                     n_resamples=n_resamples, seed=seed),
    }


def paired_yes_no_differences(
    frame_a: pd.DataFrame, frame_b: pd.DataFrame, n_resamples: int = 1000, seed: int = 0
) -> dict[str, Estimate]:
    """Paired difference (a - b) of AUC between two Yes/No prediction frames, clustered by user.

    Args:
        frame_a, frame_b: per-row predictions with columns ``row_index``, ``user``, ``label`` and
            ``score`` (P(Yes)); the same rows in both (labels and users must agree row by row).

    Returns:
        ``{"auc": Estimate}`` of ``AUC(a) - AUC(b)``; the bootstrap resamples users with all their
        rows (:func:`collab_llm.metrics.paired_auc_difference`).
    """
    m = _aligned(frame_a, frame_b, ("label", "user"))
    return {"auc": paired_auc_difference(m["label_a"].to_numpy(), m["score_a"].to_numpy(), m["score_b"].to_numpy(),
                                         users=m["user_a"].to_numpy(), n_resamples=n_resamples, seed=seed)}
