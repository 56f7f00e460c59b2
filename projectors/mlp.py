"""The projectors of the papers: linear, LLaRA's two-layer GELU MLP, CoLLM's 10x ReLU MLP."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from projectors.base import Projector, check_input


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


ProjectorKind = Literal["linear", "llara_mlp", "collm_mlp", "scaled_linear", "scaled_llara_mlp", "scaled_collm_mlp"]


def _plain_projector(kind: str, in_dim: int, out_dim: int) -> Projector:
    if kind == "linear":
        return LinearProjector(in_dim, out_dim)
    if kind == "llara_mlp":
        return LlaraMLP(in_dim, out_dim)
    if kind == "collm_mlp":
        return CollmMLP(in_dim, out_dim)
    raise ValueError(
        f"unknown projector kind {kind!r}; expected 'linear', 'llara_mlp', 'collm_mlp' or 'scaled_' + one of them"
    )


def build_projector(kind: ProjectorKind, in_dim: int, out_dim: int, target_norm: float | None = None) -> Projector:
    """``"linear"`` -> :class:`LinearProjector`, ``"llara_mlp"`` -> :class:`LlaraMLP`,
    ``"collm_mlp"`` -> :class:`CollmMLP`; ``"scaled_<kind>"`` -> :class:`ScaledProjector` around that
    kind, its tokens scaled to ``target_norm`` (required then: the LLM's mean word-embedding norm)."""
    if kind.startswith("scaled_"):
        if target_norm is None:
            raise ValueError(f"projector {kind!r} needs target_norm (the LLM's mean word-embedding norm)")
        return ScaledProjector(in_dim, out_dim, kind[len("scaled_"):], target_norm)
    return _plain_projector(kind, in_dim, out_dim)


class ScaledProjector(Projector):
    """Another projector whose soft tokens are rescaled to a word embedding's norm, times a learned gain.

    ``y = inner(x)``; ``out = gain * target_norm * y / ||y||`` (per token). ``target_norm`` is the mean
    L2 norm of the LLM's word-embedding rows (measured when the model is built), ``gain`` a learned
    scalar starting at 1. Without it the projected tokens of a freshly initialised MLP sit at about a
    third of a word's norm in SmolLM2 (1.03 vs 3.20), so the frozen LLM barely reads them. Not in any
    of the papers: a named option (``projector: scaled_<kind>``).

    Args:
        in_dim, out_dim: as the inner projector's.
        kind: the inner projector (``"linear"``, ``"llara_mlp"``, ``"collm_mlp"``).
        target_norm: the norm each token is scaled to (before the gain).
    """

    def __init__(self, in_dim: int, out_dim: int, kind: str = "llara_mlp", target_norm: float = 1.0) -> None:
        super().__init__()
        if kind not in ("linear", "llara_mlp", "collm_mlp"):
            raise ValueError(f"ScaledProjector: unknown inner kind {kind!r}; expected linear, llara_mlp or collm_mlp")
        if not target_norm > 0:
            raise ValueError(f"ScaledProjector: target_norm must be > 0, got {target_norm}")
        self.in_dim, self.out_dim, self.kind, self.target_norm = in_dim, out_dim, kind, float(target_norm)
        self.net = _plain_projector(kind, in_dim, out_dim).net
        self.gain = nn.Parameter(torch.ones(()))

    def config(self) -> dict[str, Any]:  # type: ignore[override]
        return {"in_dim": self.in_dim, "out_dim": self.out_dim, "kind": self.kind, "target_norm": self.target_norm}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_dim, type(self).__name__)
        y = self.net(x)
        return y * (self.gain * self.target_norm / y.norm(dim=-1, keepdim=True).clamp_min(1e-6))

