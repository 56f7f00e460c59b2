"""LoRA dropout with cheaper random masks (``LoRA(dropout_masks="bits16")``).

peft applies ``nn.Dropout`` to the input of every adapted module (7 modules x 30 layers in SmolLM2: 210
masks per training step). On CPU, torch draws each mask element by element from its serial Mersenne
Twister (``bernoulli_``); ``bench/precision_step.py`` measured that at about a quarter of a LLaRA step.

:class:`PackedDropout` is the same dropout (each element kept independently with probability ``1 - p``,
kept elements scaled by ``1 / (1 - p)``, identity in eval mode) with its mask cut from 64-bit random words
of the same torch generator (``Tensor.random_`` over the full int64 range, so ``torch.manual_seed`` and
Lightning's ``seed_everything`` make it reproducible): each word gives four 16-bit uniforms, so a mask of
``n`` elements costs ``n / 4`` draws. The drop probability is ``p`` rounded to a multiple of ``1/65536``
(``0.1 -> 6554/65536``, off by 6e-6), and the scale uses that rounded probability, so the output's
expectation is the input exactly. The random stream differs from ``nn.Dropout``'s, so a run with it does not
repeat a run with peft's masks bit for bit: it is an option, off by default (``dropout_masks="bernoulli"``).
"""

from __future__ import annotations

import math
from typing import Any, Iterator

import torch
from torch import Tensor, nn

#: ``LoRA.dropout_masks`` values: peft's ``nn.Dropout`` (torch's per-element Bernoulli), or :class:`PackedDropout`.
DROPOUT_MASKS = ("bernoulli", "bits16")

_LANES = 4  # 16-bit uniforms per 64-bit random word
_INT64_MIN = -(2**63)


class _MaskedScale(torch.autograd.Function):
    """``x * mask * scale`` with the mask (one byte per element) saved for backward, as ``native_dropout`` does."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, keep: Tensor, scale: float) -> Tensor:
        keep = keep.view(torch.uint8)  # 0 / 1: a multiply by it is much cheaper than by a bool tensor
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return x.mul(keep).mul_(scale)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        (keep,) = ctx.saved_tensors
        return grad.mul(keep).mul_(ctx.scale), None, None


def packed_keep_mask(shape: torch.Size | tuple[int, ...], p: float, generator: torch.Generator | None = None,
                     device: torch.device | str | None = None) -> tuple[Tensor, float]:
    """A boolean keep-mask of ``shape`` on ``device`` (default CPU; each element kept with probability
    ``1 - round(p * 65536) / 65536``) and the matching scale ``1 / keep probability``, from ``ceil(n / 4)``
    64-bit draws of ``generator`` (default: torch's default generator of that device)."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    n = math.prod(int(d) for d in shape)
    words = torch.empty((n + _LANES - 1) // _LANES, dtype=torch.int64, device=device)
    words.random_(_INT64_MIN, None, generator=generator)  # full 64-bit range: raw generator words
    lanes = words.view(torch.int16)[:n]  # uniform on [-32768, 32767]
    dropped = round(p * 65536)
    keep = lanes >= (-32768 + dropped)
    return keep.view(shape), 65536.0 / (65536 - dropped)


class PackedDropout(nn.Module):
    """Drop-in for ``nn.Dropout(p)`` whose mask costs a quarter of the random draws (module docstring)."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = float(p)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep, scale = packed_keep_mask(x.shape, self.p, device=x.device)
        return _MaskedScale.apply(x, keep, scale)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def lora_dropouts(llm: nn.Module) -> Iterator[tuple[nn.ModuleDict, str, nn.Dropout]]:
    """Every peft LoRA dropout of ``llm`` that draws masks: ``(the layer's lora_dropout ModuleDict, adapter
    name, its nn.Dropout)`` (``nn.Identity``, peft's ``p = 0``, is skipped)."""
    for module in list(llm.modules()):
        drops = getattr(module, "lora_dropout", None)
        if isinstance(drops, nn.ModuleDict):
            for name, drop in list(drops.items()):
                if isinstance(drop, nn.Dropout):
                    yield drops, name, drop


def use_packed_dropout(llm: nn.Module) -> int:
    """Replace every peft LoRA dropout (:func:`lora_dropouts`) in ``llm`` by a :class:`PackedDropout` of the
    same ``p``; returns how many were replaced."""
    found = list(lora_dropouts(llm))
    for drops, name, drop in found:
        drops[name] = PackedDropout(drop.p).train(drop.training)
    return len(found)
