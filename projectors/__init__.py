"""Projectors: CF embeddings ``(..., d)`` -> LLM soft tokens ``(..., H)``."""

from __future__ import annotations

from projectors.base import Projector
from projectors.mlp import CollmMLP, LinearProjector, LlaraMLP, ProjectorKind, ScaledProjector, build_projector

__all__ = ["Projector", "LinearProjector", "LlaraMLP", "CollmMLP", "ScaledProjector", "ProjectorKind", "build_projector"]
