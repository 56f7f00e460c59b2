"""The frozen LLM backbone: load a Hugging Face causal LM, freeze it, reserve placeholder tokens.

Soft tokens (projected CF embeddings) enter the LLM at *placeholder* positions: the prompt text
contains reserved strings such as ``[HistoryEmb]`` which the tokenizer maps to one special token
each; the embedding rows of those tokens are looked up (the matrix is resized to hold them) but
every placeholder position is overwritten by :mod:`collab_llm.injection` before the transformer
sees it, so the rows are never trained and never influence the output. New rows are set to the
mean of the existing rows so that, with tied embeddings, their logits stay unremarkable.

LoRA targets are resolved per architecture (:func:`default_lora_targets`); GPT-2 uses ``Conv1D``
layers whose weights are stored transposed, so :func:`lora_config` sets ``fan_in_fan_out=True``
there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from collab_llm.assets import resolve_backbone

DType = Literal["auto", "float32", "bfloat16"]

#: CPU flags (``/proc/cpuinfo``) that mean bf16 matmuls run natively (AVX512-BF16, AMX-BF16).
NATIVE_BF16_FLAGS: frozenset[str] = frozenset({"avx512_bf16", "amx_bf16"})

#: Placeholders reserved by default: item soft tokens (LLaRA history and candidates, and items in
#: hybrid Yes/No prompts), the user token and the target-item token (CoLLM).
DEFAULT_PLACEHOLDERS: tuple[str, ...] = ("[HistoryEmb]", "[UserEmb]", "[ItemEmb]")

_LLAMA_LIKE = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
_LORA_TARGETS: dict[str, list[str]] = {
    "llama": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
}
_FAN_IN_FAN_OUT = {"gpt2"}


@dataclass
class Backbone:
    """A frozen causal LM with its tokenizer and the ids of its placeholder tokens.

    Attributes:
        model: the HF causal LM, ``requires_grad=False`` everywhere, in eval mode.
        tokenizer: its tokenizer, with a pad token; callers choose ``padding_side`` per use
            (the collator pads by hand: right for training, left for generation / ranking).
        placeholder_ids: placeholder string -> token id, e.g. ``{"[HistoryEmb]": 49152}``.
    """

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    placeholder_ids: dict[str, int]

    @property
    def hidden_size(self) -> int:
        return int(self.model.get_input_embeddings().weight.shape[1])


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (empty where there is none, e.g. macOS)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_bf16(flags: frozenset[str] | None = None, cuda: bool | None = None) -> bool:
    """Whether bf16 matmuls are native here: a CUDA device with bf16 support, else a CPU with
    AVX512-BF16 or AMX-BF16 (``flags``: the CPU's flags, read from ``/proc/cpuinfo`` when None).
    On AVX2-only CPUs PyTorch emulates bf16 matmuls, hundreds of times slower than fp32."""
    if cuda is None:
        cuda = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if cuda:
        return True
    return bool(NATIVE_BF16_FLAGS & (cpu_flags() if flags is None else flags))


def cpu_description() -> dict[str, Any]:
    """The CPU a figure was measured on: ``{"model": name, "isa": best bf16-relevant ISA, "native_bf16": bool}``
    (``isa``: ``amx`` / ``avx512_bf16`` / ``avx512`` / ``avx2`` / ``other``, from :func:`cpu_flags`)."""
    import platform

    name = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    flags = cpu_flags()
    isa = ("amx" if "amx_bf16" in flags else "avx512_bf16" if "avx512_bf16" in flags else
           "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "other")
    return {"model": name, "isa": isa, "native_bf16": native_bf16(flags, cuda=False)}


def resolve_dtype(dtype: DType, flags: frozenset[str] | None = None, cuda: bool | None = None) -> str:
    """``"auto"`` -> ``"bfloat16"`` where bf16 is native (:func:`native_bf16`), else ``"float32"``;
    other values are returned as they are (after a check)."""
    if dtype == "auto":
        return "bfloat16" if native_bf16(flags, cuda) else "float32"
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype must be 'auto', 'float32' or 'bfloat16', got {dtype!r}")
    return dtype


def mean_embedding_norm(model: torch.nn.Module) -> float:
    """Mean L2 norm of the rows of ``model``'s input word-embedding matrix (the scale of a word)."""
    weight = model.get_input_embeddings().weight
    return float(weight.detach().float().norm(dim=-1).mean())


def _torch_dtype(dtype: DType) -> torch.dtype:
    dtype = resolve_dtype(dtype)  # type: ignore[assignment]
    if dtype == "float32":
        return torch.float32
    if dtype == "bfloat16":
        return torch.bfloat16
    raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {dtype!r}")


def add_placeholder_tokens(tokenizer: PreTrainedTokenizerBase, placeholder_tokens: Sequence[str]) -> dict[str, int]:
    """Register ``placeholder_tokens`` as special tokens (idempotent) and return their ids.

    A pad token is set if the tokenizer has none (its EOS token). Raises if a placeholder would be
    split into several tokens.
    """
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError("tokenizer has neither a pad nor an eos token; cannot pad batches")
        tokenizer.pad_token = tokenizer.eos_token
    if len(set(placeholder_tokens)) != len(placeholder_tokens):
        raise ValueError(f"placeholder tokens must be distinct, got {list(placeholder_tokens)}")
    tokenizer.add_tokens(list(placeholder_tokens), special_tokens=True)
    ids: dict[str, int] = {}
    for token in placeholder_tokens:
        encoded = tokenizer(token, add_special_tokens=False)["input_ids"]
        if len(encoded) != 1:
            raise ValueError(f"placeholder {token!r} tokenizes to {len(encoded)} tokens {encoded}; expected 1")
        ids[token] = int(encoded[0])
    return ids


def load_tokenizer(path: str | Path, placeholder_tokens: Sequence[str] = DEFAULT_PLACEHOLDERS) -> tuple[PreTrainedTokenizerBase, dict[str, int]]:
    """The tokenizer of the model folder ``path`` (``"default"``: :func:`collab_llm.assets.resolve_backbone`) with
    placeholders added (same ids as :func:`load_backbone`)."""
    path = Path(resolve_backbone(path))
    if not (path / "config.json").exists() and not (path / "tokenizer.json").exists():
        raise FileNotFoundError(f"{path}: not a Hugging Face model folder (no config.json / tokenizer.json)")
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    ids = add_placeholder_tokens(tokenizer, placeholder_tokens)
    return tokenizer, ids


def freeze_with_placeholders(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    placeholder_tokens: Sequence[str] = DEFAULT_PLACEHOLDERS,
) -> Backbone:
    """Add placeholders to an in-memory ``model`` / ``tokenizer``, resize the embeddings, freeze.

    New embedding rows (input, and output when untied) are set to the mean of the old rows.
    """
    ids = add_placeholder_tokens(tokenizer, placeholder_tokens)
    old_vocab = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > old_vocab:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        with torch.no_grad():
            emb = model.get_input_embeddings().weight
            emb[old_vocab:] = emb[:old_vocab].mean(dim=0, keepdim=True)
            out = model.get_output_embeddings()
            if out is not None and out.weight.data_ptr() != emb.data_ptr():
                out.weight[old_vocab:] = out.weight[:old_vocab].mean(dim=0, keepdim=True)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    return Backbone(model=model, tokenizer=tokenizer, placeholder_ids=ids)


def load_backbone(
    path: str | Path,
    dtype: DType = "float32",
    placeholder_tokens: Sequence[str] = DEFAULT_PLACEHOLDERS,
) -> Backbone:
    """Load a causal LM from a local HF folder, frozen, in ``dtype``, with placeholder tokens.

    Args:
        path: folder with ``config.json``, weights and tokenizer files (nothing is downloaded); ``"default"``:
            the default backbone in the cache (:func:`collab_llm.assets.resolve_backbone`).
        dtype: weights of the frozen backbone; trainable parts (LoRA, projector) stay float32.
            ``"auto"``: bfloat16 where bf16 matmuls are native (:func:`native_bf16`), else float32.
        placeholder_tokens: strings reserved as single special tokens.
    """
    path = Path(resolve_backbone(path))
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path}: no config.json; expected a local Hugging Face model folder")
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=_torch_dtype(dtype), local_files_only=True)
    return freeze_with_placeholders(model, tokenizer, placeholder_tokens)


def model_type(model: torch.nn.Module) -> str:
    """The HF ``config.model_type`` of a plain or peft-wrapped model."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "model_type"):
        raise ValueError(f"{type(model).__name__} has no config.model_type")
    return str(config.model_type)


def default_lora_targets(model: torch.nn.Module, override: Sequence[str] | None = None) -> list[str]:
    """LoRA target module names for ``model``'s architecture, or ``override`` when given.

    Llama / Qwen2 / Mistral: all seven linear projections; GPT-2: ``c_attn, c_proj, c_fc``.
    """
    if override is not None:
        if len(override) == 0:
            raise ValueError("LoRA target override is empty; give at least one module name")
        return list(override)
    kind = model_type(model)
    if kind not in _LORA_TARGETS:
        raise ValueError(
            f"no default LoRA targets for model_type {kind!r}; known: {sorted(_LORA_TARGETS)}. "
            "Pass the module names explicitly (lora target_modules)."
        )
    return list(_LORA_TARGETS[kind])


def lora_config(
    model: torch.nn.Module,
    r: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.05,
    target_modules: Sequence[str] | None = None,
) -> LoraConfig:
    """A causal-LM :class:`peft.LoraConfig` with targets resolved for ``model`` (GPT-2: fan_in_fan_out)."""
    return LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=default_lora_targets(model, target_modules),
        fan_in_fan_out=model_type(model) in _FAN_IN_FAN_OUT,
        bias="none",
        task_type="CAUSAL_LM",
    )


#: The name used in docs/DESIGN.md.
resolve_lora_targets = default_lora_targets
