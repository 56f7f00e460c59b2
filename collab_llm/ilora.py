"""iLoRA: a per-instance, softmax-gated mixture of LoRA experts on stock peft (Kong et al., NeurIPS 2024).

The trick
---------
iLoRA splits ONE ordinary peft LoRA adapter of total rank ``r = K * r_e`` into ``K`` experts of rank
``r_e``: expert ``k`` owns rows ``k*r_e : (k+1)*r_e`` of ``lora_A`` (shape ``(r, in)``) and the
matching columns of ``lora_B`` (shape ``(out, r)``). A gate network maps the frozen SASRec sequence
representation of each sample to softmax weights ``g`` of shape ``(B, K)``. The gate is computed once
per sequence and shared by every layer, token and decoding step.

For a LoRA layer peft computes ``y = W x + s * B A drop(x)`` with ``s = alpha / r``. A forward hook on
``lora_A[adapter]`` multiplies its ``(B, T, r)`` output by ``K * g`` repeated ``r_e`` times along the
last axis, so the layer computes::

    y = W x + s * B diag(K g ⊗ 1_{r_e}) A drop(x)
      = W x + sum_k g_k * (K * alpha / r) * B_k A_k drop(x)
      = W x + sum_k g_k * s_e * B_k A_k drop(x)          with s_e = alpha / r_e (iLoRA's scaling)

because ``lora_B`` is linear. With the paper's r=8, K=4, alpha=32: peft's ``s = 4``, iLoRA's
``s_e = 16``. With equal gates ``g_k = 1/K`` the multiplier ``K g_k`` is 1 and the layer is exactly an
ordinary r=8, alpha=32 LoRA; with ``K = 1`` it is plain LoRA whatever the gate. peft applies its dropout
to ``x`` *before* ``lora_A``, so one dropout mask is shared by all experts and the hook (on the output of
``lora_A``) is exact with dropout on.

What is refused, loudly
-----------------------
- merging (``merge_adapter`` / ``merge_and_unload``) while a gate is attached: peft would merge the
  ungated sum. :class:`ExpertGate` installs a per-instance ``merge`` guard on every hooked LoRA layer
  (no global patching of peft), so ``peft_model.merge_and_unload()`` raises before touching any weight.
  A fixed gate (one user, or a cluster) can be folded into ``lora_A``'s rows and merged with
  :func:`fold_fixed_gate` / :meth:`ILoRAModel.merge_fixed_gate`. Calling peft's merge on a model whose
  gate was detached by hand is unsupported (it merges the ungated LoRA, as peft documents);
- mixed-batch ``adapter_names`` (peft's per-row adapter routing would slice the batch under the gate);
- LoRA on embedding layers, non-``nn.Linear`` ``lora_A`` (conv), DoRA and other LoRA variants,
  ``lora_bias``, rsLoRA / ``set_scale`` (the scaling must be ``alpha / r``), rank not divisible by K;
- a forward through a gated layer with no gate set, a gate batch that does not divide the hooked batch,
  and a gate that requires grad inside a training forward run without autograd (reentrant activation
  checkpointing: gradients could not reach the gate; use ``use_reentrant=False``).

Batch expansion: when the hooked batch is ``n`` times the gate batch (beam search,
``num_return_sequences``, candidate expansion), the gate is ``repeat_interleave``'d ``n`` times, which is
how ``transformers.generate`` and :func:`collab_llm.scoring.rank_candidates` expand rows (row ``i``'s
copies are contiguous). Any other mismatch raises.

Lifetime: ``ExpertGate.set(weights)`` keeps the weights until the next ``set``/``clear``, so they stay
valid through ``backward`` and through the recomputed forward of non-reentrant activation checkpointing.
The gate lives on an object owned by the module that uses it; there is no global state. A module that
uses iLoRA calls ``gate.set(gate_net(cf.sequence_representation(history)))`` before every forward or
generate of the LLM (:meth:`ILoRAModel.route` does exactly that).

Saving: ``save_ilora`` / ``load_ilora`` write the gate network (with its buffers) and
:class:`ILoRAConfig`. :func:`save_ilora_model` also writes the peft adapter, with ``peft_type`` in its
``adapter_config.json`` set to a marker so that a plain ``PeftModel.from_pretrained`` fails loudly
instead of silently giving an ungated model; :func:`load_ilora_model` reads it back, and plain-LoRA
loaders can call :func:`assert_not_ilora_folder`.

Training: ``CollabLLM(adapter=ILoRA(...))`` (:class:`collab_llm.adapters.ILoRA`; config:
``configs/llm/experiments/ilora.yaml``); its :class:`collab_llm.adapters.ILoRARouting` sets the gate from
``batch["history"]`` before every forward / generate the :class:`collab_llm.recommender.Recommender` runs.
Deep copies of a gated model are refused (the copy would share, or silently lose, the hooks): detach first.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save
from torch import Tensor, nn

from collab_llm.io import atomic_file, write_json

ILORA_CONFIG_NAME = "ilora_config.json"
GATE_WEIGHTS_NAME = "ilora_gate.safetensors"
ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
ILORA_FORMAT_VERSION = 1
#: ``peft_type`` written into an iLoRA folder's adapter_config.json: peft cannot map it to a config class,
#: so ``PeftModel.from_pretrained`` raises (a KeyError showing this text) instead of loading ungated.
ILORA_PEFT_TYPE_MARKER = "ILORA: gated LoRA experts, load with collab_llm.ilora.load_ilora_model"


# --------------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ILoRAConfig:
    """Shape of an iLoRA adapter: K experts of rank ``lora_rank // num_experts`` and the gate network.

    Paper defaults (Llama-2-7B, MovieLens): r=8, K=4 (r_e=2), alpha=32, gate input = SASRec's 64-d
    sequence representation.

    Attributes:
        num_experts: K, the number of experts (>= 1).
        lora_rank: r, the total rank of the single peft adapter; must be divisible by K.
        lora_alpha: peft's alpha. peft scales by ``alpha / r``, each iLoRA expert by ``alpha / r_e``.
        gate_in_dim: size d of the sequence representation fed to the gate.
        gate_hidden_dim: hidden width of the gate MLP, or None for a single linear layer.
        adapter_name: the peft adapter that carries the experts.
    """

    num_experts: int = 4
    lora_rank: int = 8
    lora_alpha: float = 32.0
    gate_in_dim: int = 64
    gate_hidden_dim: int | None = None
    adapter_name: str = "default"

    def __post_init__(self) -> None:
        if self.num_experts < 1:
            raise ValueError(f"ILoRAConfig.num_experts must be >= 1, got {self.num_experts}")
        if self.lora_rank < 1 or self.lora_rank % self.num_experts != 0:
            raise ValueError(
                f"ILoRAConfig.lora_rank ({self.lora_rank}) must be a positive multiple of num_experts "
                f"({self.num_experts}): each expert is a chunk of lora_rank // num_experts rows of lora_A"
            )
        if self.gate_in_dim < 1:
            raise ValueError(f"ILoRAConfig.gate_in_dim must be >= 1, got {self.gate_in_dim}")
        if self.gate_hidden_dim is not None and self.gate_hidden_dim < 1:
            raise ValueError(f"ILoRAConfig.gate_hidden_dim must be None or >= 1, got {self.gate_hidden_dim}")

    @property
    def expert_rank(self) -> int:
        """r_e = r / K."""
        return self.lora_rank // self.num_experts

    @property
    def expert_scaling(self) -> float:
        """iLoRA's per-expert scaling alpha / r_e (16 for the paper's r=8, K=4, alpha=32)."""
        return self.lora_alpha / self.expert_rank

    def lora_config(
        self, target_modules: list[str], lora_dropout: float = 0.1, fan_in_fan_out: bool = False
    ) -> LoraConfig:
        """The ordinary peft ``LoraConfig`` (rank r, alpha) whose rank chunks are the experts.

        ``fan_in_fan_out=True`` for GPT-2's Conv1D targets. rsLoRA, DoRA and lora_bias stay off (refused
        by :meth:`ExpertGate.attach`).
        """
        return LoraConfig(
            r=self.lora_rank,
            lora_alpha=self.lora_alpha,
            lora_dropout=lora_dropout,
            target_modules=list(target_modules),
            fan_in_fan_out=fan_in_fan_out,
            bias="none",
            task_type="CAUSAL_LM",
        )

    def to_dict(self) -> dict[str, Any]:
        return {"format_version": ILORA_FORMAT_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>") -> ILoRAConfig:
        """Inverse of :meth:`to_dict`; unknown or missing fields raise naming ``source``."""
        data = dict(data)
        version = data.pop("format_version", None)
        if version != ILORA_FORMAT_VERSION:
            raise ValueError(f"{source}: format_version is {version!r}, expected {ILORA_FORMAT_VERSION}")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        missing = sorted(names - set(data))
        if unknown or missing:
            raise ValueError(f"{source}: unknown fields {unknown}, missing fields {missing} for ILoRAConfig")
        return cls(**data)


# --------------------------------------------------------------------------------------------------
# gate network
# --------------------------------------------------------------------------------------------------


class GateNetwork(nn.Module):
    """Maps a sequence representation ``(B, in_dim)`` to softmax expert weights ``(B, K)`` (float32).

    ``hidden_dim=None``: ``Linear(in_dim, K)``; otherwise ``Linear(in_dim, hidden) -> GELU ->
    Linear(hidden, K)``. No BatchNorm (the original's running statistics were missing from its
    checkpoints; a plain MLP has none to lose). With ``zero_init_output=True`` the last layer starts at
    zero, so training starts from uniform gates, i.e. exactly the plain rank-r LoRA.
    """

    def __init__(
        self, in_dim: int, num_experts: int, hidden_dim: int | None = None, zero_init_output: bool = True
    ) -> None:
        super().__init__()
        if in_dim < 1 or num_experts < 1:
            raise ValueError(f"GateNetwork needs in_dim >= 1 and num_experts >= 1, got {in_dim}, {num_experts}")
        self.in_dim = in_dim
        self.num_experts = num_experts
        self.hidden_dim = hidden_dim
        if hidden_dim is None:
            self.net: nn.Module = nn.Linear(in_dim, num_experts)
            last = self.net
        else:
            last = nn.Linear(hidden_dim, num_experts)
            self.net = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), last)
        if zero_init_output:
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    @classmethod
    def from_config(cls, config: ILoRAConfig, zero_init_output: bool = True) -> GateNetwork:
        return cls(config.gate_in_dim, config.num_experts, config.gate_hidden_dim, zero_init_output)

    def forward(self, sequence_representation: Tensor) -> Tensor:
        """``(B, in_dim)`` -> softmax weights ``(B, K)`` in float32 (each row sums to 1)."""
        if sequence_representation.dim() != 2 or sequence_representation.shape[1] != self.in_dim:
            raise ValueError(
                f"GateNetwork expects a (B, {self.in_dim}) sequence representation, "
                f"got shape {tuple(sequence_representation.shape)}"
            )
        first = next(self.parameters())
        logits = self.net(sequence_representation.to(dtype=first.dtype, device=first.device))
        return torch.softmax(logits.float(), dim=-1)


def gate_stats(weights: Tensor) -> dict[str, float]:
    """Logging statistics of a batch of gate weights ``(B, K)``.

    Returns ``gate_entropy`` (mean over rows of ``-sum_k g_k log g_k``, in nats, max ``log K`` for
    uniform gates), ``gate_entropy_normalized`` (that divided by ``log K``; 1.0 when K = 1) and
    ``gate_weight_{k}`` (mean weight of expert k over the batch).
    """
    if weights.dim() != 2 or weights.shape[0] == 0:
        raise ValueError(f"gate_stats expects non-empty (B, K) weights, got shape {tuple(weights.shape)}")
    w = weights.detach().double()
    entropy = -(w * torch.log(w.clamp_min(1e-30))).sum(dim=-1).mean().item()
    k = w.shape[1]
    stats = {
        "gate_entropy": entropy,
        "gate_entropy_normalized": entropy / math.log(k) if k > 1 else 1.0,
    }
    for i, mean in enumerate(w.mean(dim=0).tolist()):
        stats[f"gate_weight_{i}"] = mean
    return stats


# --------------------------------------------------------------------------------------------------
# hooks
# --------------------------------------------------------------------------------------------------


def _gated_lora_layers(peft_model: nn.Module, adapter_name: str, num_experts: int) -> list[tuple[str, LoraLayer]]:
    """Every LoRA layer carrying ``adapter_name``, validated for gating; raises naming the culprit."""
    layers: list[tuple[str, LoraLayer]] = []
    for name, module in peft_model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        if adapter_name in module.lora_embedding_A:
            raise ValueError(
                f"iLoRA: layer {name!r} is a LoRA on an embedding (nn.Embedding target); experts are rank "
                f"chunks of lora_A's output and embeddings have no lora_A Linear: remove it from target_modules"
            )
        if adapter_name not in module.lora_A:
            continue
        lora_a = module.lora_A[adapter_name]
        if type(lora_a) is not nn.Linear:
            raise ValueError(
                f"iLoRA: layer {name!r} has lora_A of type {type(lora_a).__name__}, expected nn.Linear "
                f"(only Linear / GPT-2 Conv1D targets are supported; the rank axis must be the last one)"
            )
        rank = module.r[adapter_name]
        if rank % num_experts != 0:
            raise ValueError(
                f"iLoRA: layer {name!r} has LoRA rank {rank}, not divisible by num_experts={num_experts}"
            )
        if adapter_name in module.lora_variant or module.use_dora.get(adapter_name, False):
            raise ValueError(f"iLoRA: layer {name!r} uses a LoRA variant (e.g. DoRA); only vanilla LoRA is gated")
        if module.lora_bias.get(adapter_name, False):
            raise ValueError(f"iLoRA: layer {name!r} has lora_bias=True; a bias on lora_B would not be gated")
        expected = module.lora_alpha[adapter_name] / rank
        if not math.isclose(module.scaling[adapter_name], expected, rel_tol=1e-9):
            raise ValueError(
                f"iLoRA: layer {name!r} has scaling {module.scaling[adapter_name]}, expected alpha / r = {expected} "
                f"(rsLoRA and set_scale are not supported: the expert multiplier K assumes alpha / r)"
            )
        if module.merged:
            raise ValueError(f"iLoRA: layer {name!r} already has merged adapters {module.merged_adapters}; unmerge first")
        layers.append((name, module))
    if not layers:
        raise ValueError(f"iLoRA: no LoRA layer with adapter {adapter_name!r} found in {type(peft_model).__name__}")
    return layers


class _LoraAHook:
    """Forward hook on ``lora_A[adapter]``: output ``(B', ..., r)`` times ``K * gate`` repeated ``r_e`` times."""

    def __init__(self, gate: ExpertGate, layer_name: str, expert_rank: int) -> None:
        self.gate = gate
        self.layer_name = layer_name
        self.expert_rank = expert_rank

    def __call__(self, module: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor:
        gate = self.gate.expanded_weights(output.shape[0], self.layer_name, module.training)
        # (B', K) -> (B', r): expert k's r_e rank components share g_k; times K to turn peft's alpha / r
        # into iLoRA's alpha / r_e.
        multiplier = gate.repeat_interleave(self.expert_rank, dim=-1) * self.gate.num_experts
        if multiplier.shape[-1] != output.shape[-1]:
            raise RuntimeError(
                f"iLoRA: lora_A of {self.layer_name!r} returned rank {output.shape[-1]}, expected "
                f"{multiplier.shape[-1]} = num_experts * expert_rank"
            )
        shape = (output.shape[0],) + (1,) * (output.dim() - 2) + (output.shape[-1],)
        return output * multiplier.to(output.dtype).view(shape)


class _AdapterNamesCheck:
    """Forward post-hook (with kwargs) on a gated LoRA layer: refuses peft's mixed-batch ``adapter_names``.

    peft injects ``adapter_names`` with a pre-hook registered at call time (after ours), so the check runs
    after the layer: the result is never returned.
    """

    def __init__(self, layer_name: str) -> None:
        self.layer_name = layer_name

    def __call__(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        if kwargs.get("adapter_names") is not None:
            raise ValueError(
                f"iLoRA: mixed-batch adapter_names reached gated layer {self.layer_name!r}; per-row adapter routing "
                f"is not supported with a gated adapter (it slices the batch under the gate)"
            )


class _MergeRefusal:
    """Instance-level replacement for ``LoraLayer.merge`` while a gate is attached."""

    def __init__(self, layer_name: str) -> None:
        self.layer_name = layer_name

    def __call__(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        raise RuntimeError(
            f"iLoRA: refusing to merge gated LoRA layer {self.layer_name!r}: a per-instance gate cannot be merged "
            f"into the base weights (peft would merge the ungated sum). For a fixed gate use "
            f"ILoRAModel.merge_fixed_gate(weights) or ExpertGate.detach() + fold_fixed_gate(...) + merge_and_unload()"
        )


class ExpertGate:
    """Per-sample expert weights applied by forward hooks on every ``lora_A[adapter]`` of a peft model.

    Owned by the module that uses iLoRA (no global state). Usage::

        gate = ExpertGate()
        gate.attach(peft_model, "default", num_experts=4)
        gate.set(gate_net(cf.sequence_representation(history)))   # (B, K), before every forward/generate
        out = peft_model(inputs_embeds=..., attention_mask=...)
        out.loss.backward()                                       # the gate stays set through backward
        gate.detach()                                             # removes hooks and merge guards

    Deep copies are refused (a copied model would share or lose its hooks silently); detach first.
    """

    def __init__(self) -> None:
        self._weights: Tensor | None = None
        self._handles: list[Any] = []
        self._guarded: list[LoraLayer] = []
        self.num_experts: int = 0
        self.adapter_name: str | None = None
        self.model: nn.Module | None = None  # the peft model whose layers are hooked

    def __deepcopy__(self, memo: dict[int, Any]) -> ExpertGate:
        raise RuntimeError("iLoRA: deep-copying a model with an attached ExpertGate is not supported; detach() first")

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    @property
    def weights(self) -> Tensor | None:
        """The (B, K) weights last given to :meth:`set`, or None."""
        return self._weights

    def attach(self, peft_model: nn.Module, adapter_name: str, num_experts: int) -> None:
        """Hook every ``lora_A[adapter_name]`` of ``peft_model`` (validated, see module docstring)."""
        if self.attached:
            raise RuntimeError(f"iLoRA: this ExpertGate is already attached (adapter {self.adapter_name!r}); detach() first")
        layers = _gated_lora_layers(peft_model, adapter_name, num_experts)
        for name, layer in layers:
            if "merge" in vars(layer):
                raise RuntimeError(f"iLoRA: layer {name!r} is already gated by another ExpertGate")
        self.num_experts = num_experts
        self.adapter_name = adapter_name
        self.model = peft_model
        for name, layer in layers:
            expert_rank = layer.r[adapter_name] // num_experts
            lora_a = layer.lora_A[adapter_name]
            self._handles.append(lora_a.register_forward_hook(_LoraAHook(self, name, expert_rank)))
            self._handles.append(layer.register_forward_hook(_AdapterNamesCheck(name), with_kwargs=True))
            layer.merge = _MergeRefusal(name)  # instance attribute: shadows LoraLayer.merge for this layer only
            self._guarded.append(layer)

    def detach(self) -> None:
        """Remove all hooks and merge guards and forget the weights (the adapter becomes plain LoRA)."""
        for handle in self._handles:
            handle.remove()
        for layer in self._guarded:
            if isinstance(vars(layer).get("merge"), _MergeRefusal):
                del layer.merge
        self._handles = []
        self._guarded = []
        self._weights = None
        self.adapter_name = None
        self.num_experts = 0
        self.model = None

    def set(self, weights: Tensor) -> None:
        """Set the per-sample expert weights ``(B, K)``; kept until the next :meth:`set` or :meth:`clear`.

        Keep the tensor's graph (do not detach it) to train the gate network.
        """
        if not self.attached:
            raise RuntimeError("iLoRA: ExpertGate.set called before attach()")
        if weights.dim() != 2 or weights.shape[1] != self.num_experts or weights.shape[0] == 0:
            raise ValueError(
                f"iLoRA: gate weights must have shape (B, {self.num_experts}) with B >= 1, got {tuple(weights.shape)}"
            )
        if not weights.is_floating_point():
            raise TypeError(f"iLoRA: gate weights must be floating point, got {weights.dtype}")
        self._weights = weights

    def clear(self) -> None:
        """Forget the weights; a gated forward now raises until the next :meth:`set`."""
        self._weights = None

    def expanded_weights(self, batch: int, layer_name: str = "?", training: bool = False) -> Tensor:
        """The gate for a hooked batch of ``batch`` rows: ``(batch, K)``.

        ``batch == n * B`` repeats each row ``n`` times contiguously (``repeat_interleave``, as generate's
        beam / return-sequence expansion does); anything else raises.
        """
        weights = self._weights
        if weights is None:
            raise RuntimeError(
                f"iLoRA: gated layer {layer_name!r} ran with no gate set; call ExpertGate.set(weights) "
                f"(or ILoRAModel.route) before every forward / generate"
            )
        if training and weights.requires_grad and not torch.is_grad_enabled():
            raise RuntimeError(
                f"iLoRA: gated layer {layer_name!r} ran in training mode without autograd while the gate requires "
                f"grad: gradients would not reach the gate. Reentrant activation checkpointing does this; enable it "
                f"with use_reentrant=False (or compute the gate under torch.no_grad for inference)"
            )
        gate_batch = weights.shape[0]
        if batch == gate_batch:
            return weights
        if batch % gate_batch != 0:
            raise RuntimeError(
                f"iLoRA: gated layer {layer_name!r} got a batch of {batch} rows but the gate has {gate_batch}; "
                f"expected a multiple (beam / candidate expansion with repeat_interleave). Mixed-batch "
                f"adapter_names and sub-batching are not supported"
            )
        return weights.repeat_interleave(batch // gate_batch, dim=0)


def fold_fixed_gate(peft_model: nn.Module, adapter_name: str, num_experts: int, weights: Tensor) -> None:
    """Fold one fixed gate ``(K,)`` into ``lora_A``'s rows, in place, so plain peft computes the gated model.

    Row block ``k`` of every ``lora_A[adapter_name].weight`` is multiplied by ``K * weights[k]``; afterwards
    the adapter is an ordinary LoRA equal to the gated one with that gate for every sample, and
    ``peft_model.merge_and_unload()`` merges it exactly. The model must not have an attached gate.
    """
    if weights.dim() != 1 or weights.shape[0] != num_experts:
        raise ValueError(f"iLoRA: a fixed gate must have shape ({num_experts},), got {tuple(weights.shape)}")
    layers = _gated_lora_layers(peft_model, adapter_name, num_experts)
    for name, layer in layers:
        if isinstance(vars(layer).get("merge"), _MergeRefusal):
            raise RuntimeError(f"iLoRA: layer {name!r} still has an ExpertGate attached; detach() before folding")
    with torch.no_grad():
        for _, layer in layers:
            lora_a = layer.lora_A[adapter_name].weight  # (r, in)
            expert_rank = lora_a.shape[0] // num_experts
            row_scale = (weights.detach().to(torch.float64) * num_experts).repeat_interleave(expert_rank)
            lora_a.copy_((lora_a.to(torch.float64) * row_scale[:, None].to(lora_a.device)).to(lora_a.dtype))


# --------------------------------------------------------------------------------------------------
# wrapper
# --------------------------------------------------------------------------------------------------


class ILoRAModel(nn.Module):
    """A peft LoRA model whose adapter is gated per sample by :class:`GateNetwork`.

    Owns ``peft_model`` (frozen base + the rank-r adapter), ``gate_network`` and the :class:`ExpertGate`
    that links them. Trainable: the adapter and the gate network (both float32 even over a bf16 base).
    ``gate``: an ExpertGate already attached to ``peft_model`` (e.g. the one a Lightning module owns), to
    share instead of attaching a new one.
    """

    def __init__(
        self, peft_model: PeftModel, gate_network: GateNetwork, config: ILoRAConfig, gate: ExpertGate | None = None
    ) -> None:
        super().__init__()
        if gate_network.num_experts != config.num_experts or gate_network.in_dim != config.gate_in_dim:
            raise ValueError(
                f"iLoRA: gate network (in_dim={gate_network.in_dim}, K={gate_network.num_experts}) does not match "
                f"config (gate_in_dim={config.gate_in_dim}, num_experts={config.num_experts})"
            )
        adapter_cfg = peft_model.peft_config.get(config.adapter_name)
        if adapter_cfg is None:
            raise ValueError(f"iLoRA: peft model has no adapter {config.adapter_name!r}")
        if adapter_cfg.r != config.lora_rank or float(adapter_cfg.lora_alpha) != float(config.lora_alpha):
            raise ValueError(
                f"iLoRA: adapter {config.adapter_name!r} has r={adapter_cfg.r}, alpha={adapter_cfg.lora_alpha}; "
                f"config says r={config.lora_rank}, alpha={config.lora_alpha}"
            )
        if adapter_cfg.use_rslora:
            raise ValueError("iLoRA: rsLoRA scaling is not supported (the expert multiplier K assumes alpha / r)")
        self.peft_model = peft_model
        self.gate_network = gate_network
        self.config = config
        if gate is None:
            gate = ExpertGate()
            gate.attach(peft_model, config.adapter_name, config.num_experts)
        elif gate.model is not peft_model or gate.adapter_name != config.adapter_name or gate.num_experts != config.num_experts:
            raise ValueError(
                f"iLoRA: the given ExpertGate is attached to {type(gate.model).__name__} adapter {gate.adapter_name!r} "
                f"with K={gate.num_experts}; expected this peft model, adapter {config.adapter_name!r}, K={config.num_experts}"
            )
        self.gate = gate

    def route(self, sequence_representation: Tensor) -> Tensor:
        """Compute the gate ``(B, K)`` from ``(B, d)`` and set it for the next forward / generate."""
        weights = self.gate_network(sequence_representation)
        self.gate.set(weights)
        return weights

    def forward(
        self,
        sequence_representation: Tensor,
        input_ids: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
    ) -> Any:
        """Route, then run the peft model; returns its ``CausalLMOutputWithPast`` (logits ``(B, T, V)``)."""
        self.route(sequence_representation)
        return self.peft_model(
            input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels
        )

    @torch.no_grad()
    def generate(
        self,
        sequence_representation: Tensor,
        input_ids: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        attention_mask: Tensor | None = None,
        max_new_tokens: int = 64,
        num_beams: int = 1,
        num_return_sequences: int = 1,
    ) -> Tensor:
        """Route, then deterministic (greedy / beam) generation from LEFT-padded prompts.

        Returns generate's token tensor ``(B * num_return_sequences, ...)`` (prompt + new tokens for
        ``input_ids``, new tokens only for ``inputs_embeds``).
        """
        self.route(sequence_representation)
        return self.peft_model.generate(
            input_ids=input_ids,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            num_beams=num_beams,
            num_return_sequences=num_return_sequences,
            do_sample=False,
        )

    def merge_adapter(self) -> None:
        raise RuntimeError(
            "iLoRA: merge_adapter is refused: a per-instance gate cannot be merged; use merge_fixed_gate(weights)"
        )

    def merge_and_unload(self) -> None:
        raise RuntimeError(
            "iLoRA: merge_and_unload is refused: a per-instance gate cannot be merged; use merge_fixed_gate(weights)"
        )

    def merge_fixed_gate(self, weights: Tensor) -> nn.Module:
        """Fold one fixed gate ``(K,)`` into the adapter and merge it; returns the merged base model.

        Consumes this wrapper: the gate is detached and the adapter's lora_A rows are rescaled in place.
        Deep-copy the wrapper's parts beforehand if you still need the gated model.
        """
        self.gate.detach()
        fold_fixed_gate(self.peft_model, self.config.adapter_name, self.config.num_experts, weights)
        return self.peft_model.merge_and_unload()


# --------------------------------------------------------------------------------------------------
# save / load
# --------------------------------------------------------------------------------------------------


def save_ilora(folder: str | os.PathLike, gate_network: GateNetwork, config: ILoRAConfig) -> None:
    """Write ``ilora_config.json`` and ``ilora_gate.safetensors`` (parameters AND buffers) into ``folder``.

    Each file is written atomically; other files in ``folder`` (adapter, projector...) are left alone.
    """
    if gate_network.num_experts != config.num_experts or gate_network.in_dim != config.gate_in_dim:
        raise ValueError("save_ilora: gate network and config disagree on num_experts / gate_in_dim")
    if gate_network.hidden_dim != config.gate_hidden_dim:
        raise ValueError(
            f"save_ilora: gate network hidden_dim {gate_network.hidden_dim} != config.gate_hidden_dim "
            f"{config.gate_hidden_dim}"
        )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in gate_network.state_dict().items()}
    with atomic_file(folder / GATE_WEIGHTS_NAME, "wb") as handle:
        handle.write(save(tensors))
    write_json(folder / ILORA_CONFIG_NAME, config.to_dict())


def read_ilora_config(folder: str | os.PathLike) -> ILoRAConfig:
    path = Path(folder) / ILORA_CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"iLoRA: {path} not found (not an iLoRA folder)")
    with open(path) as handle:
        return ILoRAConfig.from_dict(json.load(handle), source=str(path))


def load_ilora(folder: str | os.PathLike) -> tuple[GateNetwork, ILoRAConfig]:
    """Inverse of :func:`save_ilora`: the gate network (eval mode, float32) and its config.

    Every tensor of the gate's state_dict must be in the file with the right shape, and nothing else.
    """
    config = read_ilora_config(folder)
    path = Path(folder) / GATE_WEIGHTS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"iLoRA: {path} not found")
    tensors = load_file(str(path))
    gate_network = GateNetwork.from_config(config)
    expected = gate_network.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(f"iLoRA: {path}: missing tensors {missing}, unexpected tensors {unexpected}")
    for key, value in tensors.items():
        if value.shape != expected[key].shape:
            raise ValueError(f"iLoRA: {path}: tensor {key!r} has shape {tuple(value.shape)}, expected {tuple(expected[key].shape)}")
    gate_network.load_state_dict(tensors, strict=True)
    gate_network.eval()
    return gate_network, config


def is_ilora_folder(folder: str | os.PathLike) -> bool:
    return (Path(folder) / ILORA_CONFIG_NAME).is_file()


def assert_not_ilora_folder(folder: str | os.PathLike) -> None:
    """For plain-LoRA loaders: raise if ``folder`` holds an iLoRA adapter (loading it plainly drops the gate)."""
    if is_ilora_folder(folder):
        raise ValueError(
            f"{folder} holds an iLoRA adapter ({ILORA_CONFIG_NAME}); loading it as plain LoRA would drop the "
            f"per-sample gate. Use collab_llm.ilora.load_ilora_model"
        )


def save_ilora_model(folder: str | os.PathLike, model: ILoRAModel) -> None:
    """Write the adapter (peft's files, ``peft_type`` replaced by the iLoRA marker) plus :func:`save_ilora`.

    ``folder`` gets ``adapter_config.json``, ``adapter_model.safetensors``, ``ilora_config.json`` and
    ``ilora_gate.safetensors``; each written atomically.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    adapter = model.config.adapter_name
    # Only the LoRA tensors: with save_embedding_layers="auto" peft would add the whole (resized, possibly
    # tied) embedding matrix of a backbone that got placeholder tokens.
    state = get_peft_model_state_dict(model.peft_model, adapter_name=adapter, save_embedding_layers=False)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    with atomic_file(folder / ADAPTER_WEIGHTS_NAME, "wb") as handle:
        handle.write(save(tensors))
    adapter_cfg = model.peft_model.peft_config[adapter].to_dict()
    adapter_cfg = {k: sorted(v) if isinstance(v, set) else v for k, v in adapter_cfg.items()}  # as peft does
    adapter_cfg["peft_type"] = ILORA_PEFT_TYPE_MARKER
    write_json(folder / ADAPTER_CONFIG_NAME, adapter_cfg)
    save_ilora(folder, model.gate_network, model.config)


def load_ilora_model(base_model: nn.Module, folder: str | os.PathLike) -> ILoRAModel:
    """Inverse of :func:`save_ilora_model`: wrap ``base_model`` (modified in place by peft) with the gated adapter."""
    folder = Path(folder)
    gate_network, config = load_ilora(folder)
    cfg_path = folder / ADAPTER_CONFIG_NAME
    with open(cfg_path) as handle:
        adapter_cfg = json.load(handle)
    if adapter_cfg.get("peft_type") != ILORA_PEFT_TYPE_MARKER:
        raise ValueError(f"iLoRA: {cfg_path}: peft_type is {adapter_cfg.get('peft_type')!r}, expected the iLoRA marker")
    adapter_cfg["peft_type"] = "LORA"
    lora_config = LoraConfig.from_peft_type(**adapter_cfg)
    lora_config.inference_mode = False
    peft_model = get_peft_model(base_model, lora_config, adapter_name=config.adapter_name)
    weights_path = folder / ADAPTER_WEIGHTS_NAME
    tensors = load_file(str(weights_path))
    expected = set(get_peft_model_state_dict(peft_model, adapter_name=config.adapter_name, save_embedding_layers=False))
    missing = sorted(expected - set(tensors))
    unexpected = sorted(set(tensors) - expected)
    if missing or unexpected:
        raise ValueError(f"iLoRA: {weights_path}: missing tensors {missing[:5]}, unexpected tensors {unexpected[:5]}")
    set_peft_model_state_dict(peft_model, tensors, adapter_name=config.adapter_name)
    return ILoRAModel(peft_model, gate_network, config)
