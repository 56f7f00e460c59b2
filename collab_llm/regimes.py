"""Training regimes as pure functions of the global step: which prompt view a step trains on, which
parameter groups it moves, and which view evaluation uses (:class:`collab_llm.module.CollabLLM` calls them).

- ``"text"``: text-only prompts, LoRA only, no CF model (TALLRec).
- ``"joint"``: hybrid prompts, LoRA + projector trained together.
- ``"curriculum"`` (LLaRA): at step ``s`` the batch is hybrid with probability
  ``p = min(1, s / curriculum_length)``, drawn from a generator seeded by ``(seed, s)``: a function of the
  GLOBAL step, identical on every DDP rank and after a resume.
- ``"two_stage"`` (CoLLM): steps ``< stage1_steps`` train LoRA on text prompts (projector frozen); later
  steps train only the projector on hybrid prompts (LoRA frozen).
"""

from __future__ import annotations

from typing import Literal

import torch

from collab_llm.prompts import Mode

Regime = Literal["text", "joint", "curriculum", "two_stage"]
REGIMES = ("text", "joint", "curriculum", "two_stage")


def check_regime(regime: str, has_cf_model: bool, curriculum_steps: int | None, stage1_steps: int) -> None:
    """Refuse (ValueError) an unknown regime or settings it cannot run with."""
    if regime not in REGIMES:
        raise ValueError(f"regime must be text/joint/curriculum/two_stage, got {regime!r}")
    if regime != "text" and not has_cf_model:
        raise ValueError(f"regime {regime!r} injects soft tokens and needs cf_model_path")
    if regime == "curriculum" and curriculum_steps is not None and curriculum_steps <= 0:
        raise ValueError(f"curriculum_steps must be > 0, got {curriculum_steps}")
    if regime == "two_stage" and stage1_steps <= 0:
        raise ValueError(f"two_stage needs stage1_steps > 0, got {stage1_steps}")


def hybrid_probability(regime: Regime, step: int, curriculum_length: int, stage1_steps: int) -> float:
    """P(hybrid prompt) at global step ``step``."""
    if regime == "text":
        return 0.0
    if regime == "joint":
        return 1.0
    if regime == "curriculum":
        return min(1.0, step / curriculum_length)
    return 0.0 if step < stage1_steps else 1.0


def train_mode(p_hybrid: float, step: int, seed: int) -> Mode:
    """The prompt view of global step ``step`` given its hybrid probability (deterministic in ``(seed, step)``)."""
    if p_hybrid <= 0.0:
        return "text"
    if p_hybrid >= 1.0:
        return "hybrid"
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(step))
    return "hybrid" if float(torch.rand((), generator=g)) < p_hybrid else "text"


def groups_moved(regime: Regime, step: int, stage1_steps: int, mode: Mode) -> set[str]:
    """The parameter groups a step of view ``mode`` updates: ``"lora"`` (adapter + iLoRA gate) except in
    CoLLM's stage 2, ``"projector"`` (projector + head) on hybrid steps."""
    groups = set()
    if not (regime == "two_stage" and step >= stage1_steps):
        groups.add("lora")
    if mode == "hybrid":
        groups.add("projector")
    return groups


def eval_mode(regime: Regime, step: int, stage1_steps: int) -> Mode:
    """The evaluation view for ``eval_prompt: auto``: text for ``"text"`` and during stage 1, else hybrid."""
    if regime == "text" or (regime == "two_stage" and step < stage1_steps):
        return "text"
    return "hybrid"
