"""Projector base: maps CF embeddings ``(..., in_dim)`` to LLM soft tokens ``(..., out_dim)``.

Saved as a folder with ``config.json`` (class name + typed constructor arguments) and
``model.safetensors``, written atomically; :meth:`Projector.from_pretrained` rebuilds the right
subclass from the config without unpickling anything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from collab_llm.io import atomic_dir, write_json

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class Projector(nn.Module):
    """A trainable map ``Tensor[..., in_dim] -> Tensor[..., out_dim]`` (kept in float32).

    Subclasses register themselves in :attr:`registry`, set ``in_dim``, ``out_dim`` and the
    module ``net``, and override :meth:`config` when their constructor takes more than
    ``(in_dim, out_dim)``.
    """

    registry: ClassVar[dict[str, type["Projector"]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        Projector.registry[cls.__name__] = cls

    in_dim: int
    out_dim: int
    net: nn.Module

    def config(self) -> dict[str, int]:
        """The constructor's keyword arguments (saved in ``config.json``)."""
        return {"in_dim": self.in_dim, "out_dim": self.out_dim}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., in_dim) -> (..., out_dim)``."""
        check_input(x, self.in_dim, type(self).__name__)
        return self.net(x)

    def save_pretrained(self, directory: str | Path) -> None:
        """Write ``config.json`` and ``model.safetensors`` to ``directory`` (atomically replaced)."""
        with atomic_dir(directory) as tmp:
            write_json(tmp / CONFIG_NAME, {"class": type(self).__name__, "args": self.config()})
            state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
            save_file(state, str(tmp / WEIGHTS_NAME))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "Projector":
        """Rebuild a projector saved by :meth:`save_pretrained` (any registered subclass)."""
        directory = Path(directory)
        cfg_path = directory / CONFIG_NAME
        if not cfg_path.exists():
            raise FileNotFoundError(f"{cfg_path}: missing; not a saved projector folder")
        with open(cfg_path) as handle:
            cfg = json.load(handle)
        if not isinstance(cfg, dict) or "class" not in cfg or "args" not in cfg:
            raise ValueError(f"{cfg_path}: expected keys 'class' and 'args', got {cfg!r}")
        name = cfg["class"]
        if name not in Projector.registry:
            raise ValueError(f"{cfg_path}: unknown projector class {name!r}; known {sorted(Projector.registry)}")
        klass = Projector.registry[name]
        if cls is not Projector and not issubclass(klass, cls):
            raise ValueError(f"{cfg_path}: holds a {name}, not a {cls.__name__}")
        model = klass(**cfg["args"])
        state = load_file(str(directory / WEIGHTS_NAME))
        model.load_state_dict(state, strict=True)
        return model


def check_input(x: torch.Tensor, in_dim: int, who: str) -> None:
    if x.shape[-1] != in_dim:
        raise ValueError(f"{who}: expected input (..., {in_dim}), got shape {tuple(x.shape)}")
