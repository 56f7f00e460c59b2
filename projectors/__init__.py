"""Projectors: CF embeddings ``(..., d)`` -> LLM soft tokens ``(..., H)``."""

from __future__ import annotations

from projectors.base import Projector
from projectors.mlp import CollmMLP, LinearProjector, LlaraMLP, ProjectorKind, build_projector

__all__ = ["Projector", "LinearProjector", "LlaraMLP", "CollmMLP", "ProjectorKind", "build_projector"]
