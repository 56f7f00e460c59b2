"""A preference stage after supervised tuning: S-DPO (Chen et al., NeurIPS 2024), and DPO as its k = 1 case.

The loss
--------
For a prompt ``x`` (a training row), its positive answer ``e_p`` (the target's title) and ``k`` negative
answers ``e_1 .. e_k`` drawn from the row's stored candidates, with ``r(e) = log pi(e|x) - log pi_ref(e|x)``
(summed answer log-likelihoods of the policy and of the frozen reference)::

    L = -log sigmoid( -log sum_j exp( beta * (r(e_j) - r(e_p)) ) )
      = softplus( logsumexp_j( beta * (r(e_j) - r(e_p)) ) )

With ``k = 1`` this is DPO's ``-log sigmoid(beta * (r(e_p) - r(e_1)))``. As ``beta -> 0`` the loss tends to
``log(1 + k)`` and its gradient to ``beta * (sum_j grad r(e_j) - k grad r(e_p)) / (1 + k)``.

Defaults follow the authors' released script (``chenyuxin1999/S-DPO``, ``softmax_dpo.sh``): ``beta = 1``,
``k = 3`` negatives (``--neg_num 3``), learning rate 1e-5 with warm-up + cosine, 3 epochs; its Python
entry point (``softmax_dpo.py``) defaults to ``beta = 0.1``. The original draws the negatives once per
training row (``random.sample`` over the row's 20 candidates minus the target, at data-processing
time); so do we, seeded by ``(seed, row_index)``: a row has the same negatives in every epoch and on
every rank, and a resumed run draws the same ones.

The reference costs no second backbone
--------------------------------------
The original loads the base LLM twice (policy and reference). Here the reference is the one frozen
backbone with the *start's trainable tensors* (LoRA, projector, iLoRA gate network) swapped in:
:class:`ReferenceWeights` keeps a frozen copy of just those tensors (a few MB) and
:meth:`ReferenceWeights.swapped_in` exchanges ``Parameter.data`` under ``no_grad`` for the reference pass,
then puts the policy's tensors back. So the reference is exactly the supervised model (same soft tokens
through the start's projector, same iLoRA routing through the start's gate), with dropout off (eval mode,
as the original's reference).

Both passes use :func:`collab_llm.scoring.rank_candidates` (one prompt pass per row, the ``1 + k`` answers
packed over the prompt's KV cache); the policy pass keeps the graph. The reference pass runs FIRST, so the
last gate set on an iLoRA model before backward is the policy's (what a recomputed forward would read).
Activation checkpointing is refused: transformers drops the KV cache inside checkpointed layers in training,
which would silently cut the answers off their prompt.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from collab_llm.errors import UserError

if TYPE_CHECKING:
    from collab_llm.module import CollabLLM

#: The paper's released defaults (softmax_dpo.sh).
PAPER_BETA = 1.0
PAPER_NUM_NEGATIVES = 3


@dataclass(frozen=True)
class PreferenceConfig:
    """The ``model.preference`` settings of a preference (S-DPO / DPO) stage.

    Attributes:
        start_from: the supervised run to start from, and the frozen reference: a Lightning checkpoint
            (``.ckpt`` of a ``collab-llm fit`` run of the same model config) or a bundle folder
            (``bundle.json``, e.g. ``<report>/runs/llara/bundle``).
        beta: the preference temperature (the paper's script: 1.0).
        num_negatives: negatives per row, drawn from its stored candidates (the paper's script: 3;
            1 is DPO).
    """

    start_from: str
    beta: float = PAPER_BETA
    num_negatives: int = PAPER_NUM_NEGATIVES

    def __post_init__(self) -> None:
        if not isinstance(self.start_from, str) or not self.start_from:
            raise UserError("model.preference.start_from must name a supervised checkpoint (.ckpt) or bundle folder")
        if not math.isfinite(self.beta) or self.beta <= 0:
            raise UserError(f"model.preference.beta must be a finite number > 0, got {self.beta}")
        if self.num_negatives < 1:
            raise UserError(f"model.preference.num_negatives must be >= 1 (1 = DPO), got {self.num_negatives}")

    @property
    def loss_name(self) -> str:
        """``"dpo"`` for one negative, else ``"sdpo"``."""
        return "dpo" if self.num_negatives == 1 else "sdpo"


# safe to unpickle from a checkpoint of an S-DPO run (hyper-parameters) with torch.load(weights_only=True)
torch.serialization.add_safe_globals([PreferenceConfig])


# --------------------------------------------------------------------------------------------------
# the loss
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreferenceLoss:
    """The S-DPO loss of a batch and its parts.

    Attributes:
        loss: scalar, the mean of ``per_row``.
        per_row: ``(B,)`` loss per row.
        chosen_rewards: ``(B,)`` ``beta * r(e_p)`` (detached).
        rejected_rewards: ``(B, k)`` ``beta * r(e_j)`` (detached).
    """

    loss: Tensor
    per_row: Tensor
    chosen_rewards: Tensor
    rejected_rewards: Tensor


def sdpo_loss(policy_logps: Tensor, reference_logps: Tensor, beta: float) -> PreferenceLoss:
    """S-DPO over ``(B, 1 + k)`` answer log-likelihoods, column 0 the positive, columns 1..k the negatives.

    ``softplus(logsumexp_j(beta * (r_j - r_p)))`` per row with ``r = policy - reference``; equal to
    ``-log sigmoid(-log sum_j exp(...))`` (the paper's form) and, for ``k = 1``, to DPO.
    """
    if policy_logps.shape != reference_logps.shape or policy_logps.dim() != 2 or policy_logps.shape[1] < 2:
        raise ValueError(
            f"sdpo_loss expects two (B, 1 + k) tensors with k >= 1, got {tuple(policy_logps.shape)} and "
            f"{tuple(reference_logps.shape)}"
        )
    ratios = policy_logps - reference_logps.detach()
    chosen, rejected = ratios[:, :1], ratios[:, 1:]
    per_row = F.softplus(torch.logsumexp(beta * (rejected - chosen), dim=1))
    return PreferenceLoss(
        loss=per_row.mean(),
        per_row=per_row,
        chosen_rewards=(beta * chosen[:, 0]).detach(),
        rejected_rewards=(beta * rejected).detach(),
    )


def preference_stats(out: PreferenceLoss, reference_logps: Tensor) -> dict[str, float]:
    """What explains whether the stage helps, per batch (logged as ``train/sdpo_*``).

    ``reward_chosen`` / ``reward_rejected``: mean ``beta * r`` of the positive / negatives;
    ``reward_margin``: mean of ``beta * r(e_p) - max_j beta * r(e_j)``; ``reward_accuracy``: share of rows
    whose positive out-rewards every negative; ``reference_top1``: share of rows whose positive the
    reference already scores above all its sampled negatives (nothing left to learn from such a row but
    a wider margin).
    """
    chosen, rejected = out.chosen_rewards, out.rejected_rewards
    best_rejected = rejected.max(dim=1).values
    ref = reference_logps.detach()
    return {
        "reward_chosen": float(chosen.mean()),
        "reward_rejected": float(rejected.mean()),
        "reward_margin": float((chosen - best_rejected).mean()),
        "reward_accuracy": float((chosen > best_rejected).float().mean()),
        "reference_top1": float((ref[:, 0] > ref[:, 1:].max(dim=1).values).float().mean()),
    }


# --------------------------------------------------------------------------------------------------
# negatives
# --------------------------------------------------------------------------------------------------


def sample_negatives(
    target_index: Tensor, row_index: Tensor, n_candidates: int, num_negatives: int, seed: int
) -> Tensor:
    """``(B, k)`` candidate columns of each row's negatives: ``k`` distinct non-target columns.

    Row ``i``'s draw depends only on ``(seed, row_index[i])``: the same row gets the same negatives in
    every epoch, batch and rank (as the original's once-per-row ``random.sample``).
    """
    if num_negatives > n_candidates - 1:
        raise UserError(
            f"model.preference.num_negatives is {num_negatives}, but a row has only {n_candidates - 1} negative "
            f"candidates; lower --model.preference.num_negatives"
        )
    out = torch.empty(len(target_index), num_negatives, dtype=torch.long)
    for i, (target, row) in enumerate(zip(target_index.tolist(), row_index.tolist())):
        g = torch.Generator().manual_seed(int(seed) * 1_000_003 + 7_919 * int(row) + 17)
        columns = torch.randperm(n_candidates - 1, generator=g)[:num_negatives]
        out[i] = columns + (columns >= int(target)).long()  # skip the target's column
    return out


def preference_answers(
    candidate_token_ids: Sequence[Sequence[Sequence[int]]], target_index: Tensor, negatives: Tensor
) -> list[list[list[int]]]:
    """Per row, the answers' token ids in loss order: the positive, then the ``k`` negatives."""
    return [
        [list(row[int(t)])] + [list(row[int(c)]) for c in cols]
        for row, t, cols in zip(candidate_token_ids, target_index.tolist(), negatives.tolist())
    ]


# --------------------------------------------------------------------------------------------------
# the reference: the start's trainable tensors, frozen
# --------------------------------------------------------------------------------------------------


class ReferenceWeights:
    """A frozen copy of a model's trainable tensors, swapped into the live parameters on demand.

    Not an ``nn.Module``: the copies are in no ``state_dict`` and no checkpoint (they are the start's,
    re-read from ``start_from``), and they follow the parameters' device lazily.
    """

    def __init__(self, named_parameters: Sequence[tuple[str, nn.Parameter]]) -> None:
        if not named_parameters:
            raise ValueError("ReferenceWeights: no trainable parameters to freeze")
        self.names = [n for n, _ in named_parameters]
        self._params = [p for _, p in named_parameters]
        self._values = [p.detach().clone() for p in self._params]

    def __len__(self) -> int:
        return len(self._values)

    def numel(self) -> int:
        """Elements held (the memory the reference costs, in numbers)."""
        return sum(v.numel() for v in self._values)

    def tensors(self) -> dict[str, Tensor]:
        """Name -> the frozen reference value (no copy)."""
        return dict(zip(self.names, self._values))

    @contextlib.contextmanager
    def swapped_in(self, module: nn.Module) -> Iterator[None]:
        """Inside the block ``module`` IS the reference: trainable tensors at their start values, every
        submodule in eval mode (no dropout), no autograd. Everything is restored on exit."""
        modes = [(m, m.training) for m in module.modules()]
        live = [p.data for p in self._params]
        with torch.no_grad():
            for i, (p, value) in enumerate(zip(self._params, self._values)):
                if value.device != p.device or value.dtype != p.dtype:
                    value = self._values[i] = value.to(device=p.device, dtype=p.dtype)
                p.data = value
            module.eval()
            try:
                yield
            finally:
                for p, data in zip(self._params, live):
                    p.data = data
                for m, training in modes:
                    m.training = training


# --------------------------------------------------------------------------------------------------
# the stage: the two passes of a training step
# --------------------------------------------------------------------------------------------------


class PreferenceStage:
    """What a :class:`collab_llm.module.CollabLLM` holds during a preference stage: its settings, the frozen
    reference, and where the start came from.

    Build it with :meth:`start` AFTER every trainable part of the module exists (iLoRA's gate network
    included): it loads the start into the module and freezes a copy of it as the reference.
    """

    def __init__(self, config: PreferenceConfig, reference: ReferenceWeights, source: str) -> None:
        self.config = config
        self.reference = reference
        self.source = source

    @classmethod
    def start(cls, module: "CollabLLM", config: PreferenceConfig) -> "PreferenceStage":
        source = load_start(module, config.start_from)
        named = dict(module.named_parameters())
        return cls(config, ReferenceWeights([(n, named[n]) for n in module.lora_names + module.projector_names]), source)

    @staticmethod
    def answer_logps(module: "CollabLLM", batch: dict[str, Any], mode: str, answers: list[list[list[int]]]) -> Tensor:
        """``(B, A)`` summed log-likelihoods of each row's answers after its prompt (soft tokens and the
        iLoRA gate from the module's current tensors): one prompt pass, the answers packed over its cache
        (:meth:`collab_llm.recommender.Recommender.candidate_logps`)."""
        return module.recommender.candidate_logps(batch, mode, answers)

    def loss(self, module: "CollabLLM", batch: dict[str, Any], mode: str) -> tuple[PreferenceLoss, dict[str, float]]:
        """The S-DPO loss of a training batch in prompt view ``mode``, and :func:`preference_stats`.

        Reference pass first (no graph, start tensors, eval mode), then the policy pass (graph kept).
        """
        candidates = batch["candidates"]
        negatives = sample_negatives(batch["target_index"].cpu(), batch["row_index"].cpu(), int(candidates.shape[1]),
                                     self.config.num_negatives, int(module.hparams.seed))
        answers = preference_answers(batch["candidate_token_ids"], batch["target_index"].cpu(), negatives)
        with self.reference.swapped_in(module):
            reference = self.answer_logps(module, batch, mode, answers)
        policy = self.answer_logps(module, batch, mode, answers)
        out = sdpo_loss(policy, reference, self.config.beta)
        return out, preference_stats(out, reference)

    def record(self) -> dict[str, Any]:
        """The stage as recorded in ``bundle.json``."""
        return {
            "name": self.config.loss_name, "beta": self.config.beta, "num_negatives": self.config.num_negatives,
            "start_from": str(self.config.start_from),
            "reference": "the start's trainable tensors, frozen, on the same backbone",
        }


# --------------------------------------------------------------------------------------------------
# the start: a supervised checkpoint or bundle
# --------------------------------------------------------------------------------------------------


def load_start(module: "CollabLLM", start_from: str | os.PathLike) -> str:
    """Load the supervised start's trainable tensors into ``module``; returns what was read (for logs).

    ``start_from`` is a Lightning checkpoint (its ``state_dict`` must hold exactly the module's trainable
    tensors, as :meth:`collab_llm.module.CollabLLM.on_load_checkpoint` checks) or a bundle folder (adapter,
    projector ``item``, iLoRA gate). A start that does not fit the module's config raises a
    :class:`UserError` naming ``--model.preference.start_from``.
    """
    path = Path(start_from).expanduser()
    flag = "--model.preference.start_from"
    if path.is_dir():
        _load_bundle_start(module, path, flag)
        return f"bundle {path}"
    if path.is_file():
        _load_checkpoint_start(module, path, flag)
        return f"checkpoint {path}"
    raise UserError(f"{path}: not found; {flag} must name a supervised checkpoint (.ckpt) or bundle folder")


def _load_checkpoint_start(module: "CollabLLM", path: Path, flag: str) -> None:
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - re-raised with the flag named
        raise UserError(f"{path}: cannot be read as a Lightning checkpoint ({type(error).__name__}: {error}); "
                        f"check {flag}") from error
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise UserError(f"{path}: has no 'state_dict'; {flag} must name a collab-llm fit checkpoint")
    from collab_llm.recommender import upgrade_state_keys

    state = upgrade_state_keys(state)
    keys = set(state)
    missing = sorted(module.trainable_keys - keys)
    unexpected = sorted(keys - module.trainable_keys)
    if missing or unexpected:
        raise UserError(
            f"{path}: does not fit this model config (missing trainable tensors {missing[:3]}, {len(missing)} in "
            f"all; unexpected {unexpected[:3]}, {len(unexpected)} in all); {flag} must be a run of the same "
            f"model settings (template, projector, LoRA rank and targets, experts)"
        )
    current = module.state_dict()
    for key in sorted(keys):
        if state[key].shape != current[key].shape:
            raise UserError(f"{path}: tensor {key!r} has shape {tuple(state[key].shape)}, this model "
                            f"{tuple(current[key].shape)}; check {flag}")
    module.load_state_dict(state, strict=False)


def _load_bundle_start(module: "CollabLLM", folder: Path, flag: str) -> None:
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file

    from collab_llm.bundle import ADAPTER_DIR, BundleConfig

    try:
        config = BundleConfig.read(folder)
    except (OSError, ValueError) as error:
        raise UserError(f"{error}; check {flag}") from error
    routing = module.recommender.routing
    gate = routing.gate_network if routing is not None else None
    want_kind = "ilora" if gate is not None else "lora"
    if config.adapter_kind != want_kind:
        raise UserError(f"{folder}: holds a {config.adapter_kind} adapter, this model is {want_kind}; check {flag}")
    if config.template != module.hparams.template:
        raise UserError(f"{folder}: was trained with template {config.template!r}, this model uses "
                        f"{module.hparams.template!r}; check {flag}")
    projector = module.injector.projector
    if (projector is None) != ("item" not in config.projectors):
        raise UserError(
            f"{folder}: {'has' if 'item' in config.projectors else 'has no'} item projector, this model "
            f"{'has none' if projector is None else 'has one'} (the reference must be the start exactly); check {flag}"
        )
    adapter = folder / ADAPTER_DIR
    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    expected = get_peft_model_state_dict(module.llm, adapter_name="default", save_embedding_layers=False)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    bad_shape = sorted(k for k in set(tensors) & set(expected) if tensors[k].shape != expected[k].shape)
    if missing or unexpected or bad_shape:
        raise UserError(
            f"{adapter}: adapter does not fit this model (missing {missing[:3]}, unexpected {unexpected[:3]}, "
            f"other shape {bad_shape[:3]}); {flag} must be a run with the same LoRA rank and targets"
        )
    set_peft_model_state_dict(module.llm, tensors, adapter_name="default")
    if projector is not None:
        from projectors import Projector

        loaded = Projector.from_pretrained(folder / config.projectors["item"])
        _copy_state(projector, loaded.state_dict(), folder / config.projectors["item"], flag)
    if gate is not None:
        from collab_llm.ilora import load_ilora

        loaded_gate, _ = load_ilora(adapter)
        _copy_state(gate, loaded_gate.state_dict(), adapter, flag)


def _copy_state(target: nn.Module, state: dict[str, Any], source: Path, flag: str) -> None:
    own = target.state_dict()
    if set(own) != set(state) or any(own[k].shape != state[k].shape for k in own):
        raise UserError(f"{source}: {type(target).__name__} tensors do not fit this model's (other kind or size); "
                        f"check {flag}")
    target.load_state_dict(state, strict=True)
