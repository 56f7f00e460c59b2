"""Typed adapter specs: which peft adapter a :class:`collab_llm.recommender.Recommender` trains.

A spec is a small frozen dataclass, chosen in a config by ``class_path`` (LightningCLI)::

    model:
      adapter:
        class_path: collab_llm.adapters.ILoRA
        init_args: {r: 8, alpha: 32.0, dropout: 0.1, num_experts: 4}

or from Python, ``CollabLLM(..., adapter=ILoRA(num_experts=4))``. Each spec builds its runtime part on the
peft model (:meth:`LoRA.routing`): nothing for plain LoRA; for iLoRA an :class:`ILoRARouting` that owns the
gate network and the :class:`collab_llm.ilora.ExpertGate` hooks, and routes a batch
(:meth:`ILoRARouting.condition`). The Recommender calls it before every forward / generate of the LLM, so
no caller routes by hand.

``to_dict`` / :func:`adapter_from_dict` are the spec's form in ``bundle.json`` (``class_path`` +
``init_args``, the config's own form).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from peft import LoraConfig
from torch import Tensor, nn

from collab_llm.backbone import lora_config
from collab_llm.dropout import DROPOUT_MASKS
from collab_llm.ilora import ExpertGate, GateNetwork, ILoRAConfig, ILoRAModel, gate_stats


@dataclass(frozen=True)
class LoRA:
    """An ordinary peft LoRA adapter.

    Attributes:
        r: rank.
        alpha: peft's alpha (scaling ``alpha / r``).
        dropout: LoRA dropout.
        target_modules: module names; ``None``: the architecture's defaults
            (:func:`collab_llm.backbone.default_lora_targets`).
        dropout_masks: how the dropout masks are drawn: ``"bernoulli"`` (peft's ``nn.Dropout``, the
            papers' runs) or ``"bits16"`` (:class:`collab_llm.dropout.PackedDropout`: the same dropout with a
            quarter of the random draws, ``p`` rounded to a multiple of 1/65536; a different random stream).
    """

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    target_modules: list[str] | None = None
    dropout_masks: str = "bernoulli"

    def __post_init__(self) -> None:
        if self.dropout_masks not in DROPOUT_MASKS:
            raise ValueError(f"adapter dropout_masks {self.dropout_masks!r} is not one of {list(DROPOUT_MASKS)}")

    @property
    def kind(self) -> str:
        """``"lora"`` / ``"ilora"``: the adapter kind ``bundle.json`` records."""
        return "lora"

    def peft_config(self, model: nn.Module) -> LoraConfig:
        """The peft config on ``model`` (targets resolved for its architecture)."""
        return lora_config(model, self.r, self.alpha, self.dropout, self.target_modules)

    def routing(self, llm: nn.Module, cf_model: nn.Module | None, seed: int) -> ILoRARouting | None:
        """The per-sample conditioning of the adapter on ``llm``: none for plain LoRA."""
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"class_path": f"collab_llm.adapters.{type(self).__name__}", "init_args": asdict(self)}


@dataclass(frozen=True)
class ILoRA(LoRA):
    """iLoRA (Kong et al., NeurIPS 2024): one rank-``r`` adapter split into ``num_experts`` experts of rank
    ``r / K``, mixed per sample by a gate on the CF model's sequence representation (:mod:`collab_llm.ilora`).

    Defaults follow the paper: r=8, alpha=32 (each expert scaled by ``alpha / r_e`` = 16), dropout 0.1, K=4.

    Attributes (besides :class:`LoRA`'s):
        num_experts: K; ``r`` must be a multiple of it.
        gate_hidden_dim: hidden width of the gate MLP, ``None`` for one linear layer.
    """

    alpha: float = 32.0
    dropout: float = 0.1
    num_experts: int = 4
    gate_hidden_dim: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        ILoRAConfig(num_experts=self.num_experts, lora_rank=self.r, gate_hidden_dim=self.gate_hidden_dim)  # validates

    @property
    def kind(self) -> str:
        return "ilora"

    def routing(self, llm: nn.Module, cf_model: nn.Module | None, seed: int) -> ILoRARouting:
        """Gate network (seeded by ``seed + 2``, zero output layer: uniform gates at the start) and the hooks
        on every ``lora_A`` of ``llm``."""
        if cf_model is None:
            raise ValueError("the iLoRA adapter needs a CF model (cf_model_path): the gate reads its "
                             "sequence_representation")
        config = ILoRAConfig(num_experts=self.num_experts, lora_rank=self.r, lora_alpha=float(self.alpha),
                             gate_in_dim=int(cf_model.embedding_dim), gate_hidden_dim=self.gate_hidden_dim)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 2)
            gate_network = GateNetwork.from_config(config)
        return ILoRARouting(llm, gate_network, config)


def adapter_from_dict(data: dict[str, Any], source: str = "<dict>") -> LoRA:
    """Inverse of :meth:`LoRA.to_dict`; an unknown ``class_path`` or field raises naming ``source``."""
    kinds = {f"collab_llm.adapters.{c.__name__}": c for c in (LoRA, ILoRA)}
    cls = kinds.get(str(data.get("class_path")))
    if cls is None or not isinstance(data.get("init_args"), dict):
        raise ValueError(f"{source}: adapter should be {{class_path: one of {sorted(kinds)}, init_args: {{...}}}}, "
                         f"got {data!r}")
    try:
        return cls(**data["init_args"])
    except TypeError as error:
        raise ValueError(f"{source}: adapter init_args {data['init_args']!r} do not fit {cls.__name__}: {error}") from error


class ILoRARouting(nn.Module):
    """iLoRA's runtime part: the gate network (a submodule: trained, checkpointed) and the
    :class:`collab_llm.ilora.ExpertGate` hooked on ``llm`` (a plain attribute: no state).

    :meth:`condition` sets the gate of a batch; the weights stay set until the next call (through
    backward and a recomputed checkpointed forward).
    """

    def __init__(self, llm: nn.Module, gate_network: GateNetwork, config: ILoRAConfig,
                 gate: ExpertGate | None = None) -> None:
        super().__init__()
        self.gate_network = gate_network
        self.config = config
        if gate is None:
            gate = ExpertGate()
            gate.attach(llm, config.adapter_name, config.num_experts)
        self.expert_gate = gate

    def condition(self, batch: dict[str, Any], cf_model: nn.Module) -> Tensor:
        """Set the gate from ``batch["history"]`` ``(B, L)``: CF sequence representation -> ``(B, K)``
        softmax weights (returned)."""
        history = batch.get("history")
        if history is None:
            raise KeyError(f"iLoRA needs batch['history'] (B, L) for the gate; batch has keys {sorted(batch)}")
        device = next(self.gate_network.parameters()).device
        with torch.no_grad():
            sequence = cf_model.sequence_representation(history.to(device))
        weights = self.gate_network(sequence)
        self.expert_gate.set(weights)
        return weights

    def stats(self) -> dict[str, float]:
        """:func:`collab_llm.ilora.gate_stats` of the gate set last (empty when none is set)."""
        weights = self.expert_gate.weights
        return gate_stats(weights) if weights is not None else {}

    def ilora_model(self, llm: nn.Module) -> ILoRAModel:
        """An :class:`ILoRAModel` view (same peft model, gate network and gate), e.g. to save the adapter."""
        return ILoRAModel(llm, self.gate_network, self.config, gate=self.expert_gate)


# safe to unpickle from a checkpoint's hyper-parameters with torch.load(weights_only=True)
torch.serialization.add_safe_globals([LoRA, ILoRA])
