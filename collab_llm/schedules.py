"""Learning-rate schedules shared by the CF trainers (:mod:`cf_models.training`) and the LLM trainer
(:mod:`collab_llm.module`): one definition both import, so neither reaches into the other's training code."""

from __future__ import annotations

import math


def warmup_cosine(step: int, total_steps: int, warmup_steps: int = 0, floor: float = 0.0) -> float:
    """Learning-rate multiplier at optimizer step ``step`` (0-based): linear warm-up over
    ``warmup_steps``, then a cosine decay from 1 to ``floor`` at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
