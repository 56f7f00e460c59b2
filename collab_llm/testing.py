"""Tiny, randomly initialised causal LMs and a small tokenizer, built offline in milliseconds.

Used by the tests (and by anyone who wants to try the pipeline without a real checkpoint) so that
nothing depends on one architecture: ``family`` picks Llama, Qwen2 or GPT-2.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    LlamaConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

Family = Literal["llama", "qwen2", "gpt2"]

_CORPUS = [
    "This user has watched Toy Story, GoldenEye, Four Rooms, Get Shorty, Copycat in the previous.",
    "Please predict the next movie this user will watch. Choose the answer from the following 20 movie titles:",
    "#Question: A user has given high ratings to the following movies: Heat, Casino, Babe, Sabrina.",
    "Leverage the information to predict whether the user would enjoy the movie titled Jumanji?",
    'Answer with "Yes" or "No". #Answer: Yes No yes no Answer: The user likes and dislikes',
    "0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ .,:;!?'\"()[]<>#-_/&",
]


@lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=["<|endoftext|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return tok.to_str()


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (about 600 tokens) with ``<|endoftext|>`` as EOS and ``<|pad|>`` as PAD."""
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json()),
        eos_token="<|endoftext|>",
        pad_token="<|pad|>",
    )
    return tok


def tiny_causal_lm(
    family: Family = "llama",
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    seed: int = 0,
) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """A tiny random causal LM of the given family and its tokenizer (fp32, eval mode).

    The vocabulary is the tokenizer's; the context is 512 positions.
    """
    tok = tiny_tokenizer()
    vocab = len(tok)
    if family == "llama":
        cfg = LlamaConfig(
            vocab_size=vocab, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
            num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_heads // 2,
            max_position_embeddings=512, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
            bos_token_id=tok.eos_token_id, tie_word_embeddings=False,
        )
    elif family == "qwen2":
        cfg = Qwen2Config(
            vocab_size=vocab, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
            num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_heads // 2,
            max_position_embeddings=512, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
            bos_token_id=tok.eos_token_id, tie_word_embeddings=True,
        )
    elif family == "gpt2":
        cfg = GPT2Config(
            vocab_size=vocab, n_embd=hidden_size, n_layer=num_layers, n_head=num_heads, n_positions=512,
            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=tok.eos_token_id,
        )
    else:
        raise ValueError(f"unknown family {family!r}; expected 'llama', 'qwen2' or 'gpt2'")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    model.eval()
    return model, tok
