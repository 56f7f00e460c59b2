"""The projectors of the papers: linear, LLaRA's two-layer GELU MLP, CoLLM's 10x ReLU MLP."""

from __future__ import annotations

from typing import Literal

from torch import nn

from projectors.base import Projector


class LinearProjector(Projector):
    """``Linear(in_dim, out_dim)``: ``(..., in_dim) -> (..., out_dim)``."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        self.net = nn.Linear(in_dim, out_dim)


class LlaraMLP(Projector):
    """LLaRA: ``Linear(d, H) -> GELU -> Linear(H, H)``; ``(..., d) -> (..., H)``."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        self.net = nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))


class CollmMLP(Projector):
    """CoLLM: ``Linear(d, m*d) -> ReLU -> Linear(m*d, H)`` with ``m = hidden_multiplier`` (10)."""

    def __init__(self, in_dim: int, out_dim: int, hidden_multiplier: int = 10) -> None:
        super().__init__()
        self.in_dim, self.out_dim, self.hidden_multiplier = in_dim, out_dim, hidden_multiplier
        hidden = hidden_multiplier * in_dim
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))

    def config(self) -> dict[str, int]:
        return {"in_dim": self.in_dim, "out_dim": self.out_dim, "hidden_multiplier": self.hidden_multiplier}


ProjectorKind = Literal["linear", "llara_mlp", "collm_mlp"]


def build_projector(kind: ProjectorKind, in_dim: int, out_dim: int) -> Projector:
    """``"linear"`` -> :class:`LinearProjector`, ``"llara_mlp"`` -> :class:`LlaraMLP`,
    ``"collm_mlp"`` -> :class:`CollmMLP`."""
    if kind == "linear":
        return LinearProjector(in_dim, out_dim)
    if kind == "llara_mlp":
        return LlaraMLP(in_dim, out_dim)
    if kind == "collm_mlp":
        return CollmMLP(in_dim, out_dim)
    raise ValueError(f"unknown projector kind {kind!r}; expected 'linear', 'llara_mlp' or 'collm_mlp'")
