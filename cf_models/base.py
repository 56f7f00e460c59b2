"""The contract every collaborative-filtering backbone keeps, and its safetensors checkpoint format.

Item ids are contiguous from 1; id 0 is padding. A CF model scores items for a *query*: a user id
(matrix factorisation) or an item history (sequential models such as SASRec). The LLM side only
needs the embeddings; the CF training and evaluation code needs the scores:

- ``item_embeddings(items[...]) -> [..., d]``: the item table (soft tokens for item placeholders).
- ``user_embeddings(users[B]) -> [B, d]``: MF only.
- ``sequence_representation(history[B, L]) -> [B, d]``: sequential models only, history left-padded.
- ``full_scores(users=..., history=...) -> [B, n_items + 1]``: column 0 (padding) is ``-inf``.
- ``pair_scores(items[B, C], users=..., history=...) -> [B, C]``: scores of given items.

A checkpoint folder holds ``config.json`` (the config dataclass plus ``model_type``) and
``model.safetensors``; it is written atomically and read without unpickling anything.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from collab_llm.io import atomic_dir

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

# model_type -> class; filled by ``CFModel.__init_subclass__``.
MODEL_REGISTRY: dict[str, type["CFModel"]] = {}


class CFModel(nn.Module):
    """Base class of the CF backbones. Subclasses set ``model_type`` and ``config_class``."""

    model_type: ClassVar[str] = ""
    config_class: ClassVar[type] = object

    def __init_subclass__(cls, **_: Any) -> None:
        super().__init_subclass__()
        if cls.model_type:
            MODEL_REGISTRY[cls.model_type] = cls

    def __init__(self, config: Any) -> None:
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config

    # ---------------------------------------------------------------- interface
    @property
    def n_items(self) -> int:
        return int(self.config.n_items)

    @property
    def embedding_dim(self) -> int:
        raise NotImplementedError

    def item_embeddings(self, items: torch.Tensor) -> torch.Tensor:
        """``items: LongTensor[...]`` -> ``Tensor[..., d]`` rows of the item embedding table."""
        raise NotImplementedError

    def user_embeddings(self, users: torch.Tensor) -> torch.Tensor:
        """``users: LongTensor[B]`` -> ``Tensor[B, d]``."""
        raise NotImplementedError(
            f"{type(self).__name__} has no user embeddings: it represents a user by the item history; "
            "use sequence_representation(history)"
        )

    def sequence_representation(self, history: torch.Tensor) -> torch.Tensor:
        """``history: LongTensor[B, L]`` left-padded with 0 -> ``Tensor[B, d]``."""
        raise NotImplementedError(
            f"{type(self).__name__} is not a sequential model; use user_embeddings(users)"
        )

    def query_representation(
        self, users: torch.Tensor | None = None, history: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The ``[B, d]`` vector that is dotted with item vectors to score items."""
        raise NotImplementedError

    def full_scores(self, users: torch.Tensor | None = None, history: torch.Tensor | None = None) -> torch.Tensor:
        """Scores of every item: ``[B, n_items + 1]``, column 0 (padding) is ``-inf``."""
        raise NotImplementedError

    def pair_scores(
        self, items: torch.Tensor, users: torch.Tensor | None = None, history: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Scores of given items: ``items: LongTensor[B, C]`` (or ``[B]``) -> ``[B, C]`` (or ``[B]``)."""
        raise NotImplementedError

    # ---------------------------------------------------------------- checkpoints
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``directory`` atomically."""
        directory = Path(directory)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        with atomic_dir(directory) as tmp:
            config = {"model_type": self.model_type, **dataclasses.asdict(self.config)}
            (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
            save_file(state, str(tmp / WEIGHTS_NAME), metadata={"model_type": self.model_type})
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> "CFModel":
        """Load a folder written by ``save_pretrained``. Called on ``CFModel`` it dispatches on ``model_type``."""
        directory = Path(directory)
        config_path = directory / CONFIG_NAME
        weights_path = directory / WEIGHTS_NAME
        for path in (config_path, weights_path):
            if not path.is_file():
                raise FileNotFoundError(f"{path} is missing: not a CF model folder written by save_pretrained")
        raw = json.loads(config_path.read_text())
        model_type = raw.pop("model_type", None)
        if model_type not in MODEL_REGISTRY:
            raise ValueError(
                f"{config_path}: field 'model_type' is {model_type!r}; expected one of {sorted(MODEL_REGISTRY)}"
            )
        klass = MODEL_REGISTRY[model_type]
        if cls is not CFModel and not issubclass(klass, cls):
            raise TypeError(f"{config_path} holds a {klass.__name__}, not a {cls.__name__}")
        fields = {f.name for f in dataclasses.fields(klass.config_class)}
        unknown = set(raw) - fields
        if unknown:
            raise ValueError(f"{config_path}: unknown fields {sorted(unknown)} for {klass.config_class.__name__}")
        model = klass(klass.config_class(**raw))
        state = load_file(str(weights_path), device=str(map_location))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{weights_path}: missing tensors {missing}, unexpected tensors {unexpected}")
        model.eval()
        return model


def check_ids(name: str, ids: torch.Tensor, upper: int) -> None:
    """Fail loudly when ``ids`` holds values outside ``[0, upper]`` (0 is padding)."""
    if ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{name} must be an integer tensor, got {ids.dtype}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) > upper):
        raise IndexError(f"{name} holds ids in [{int(ids.min())}, {int(ids.max())}]; expected 0..{upper}")


def mask_padding_column(scores: torch.Tensor) -> torch.Tensor:
    """Set column 0 (the padding id) of ``[B, n_items + 1]`` scores to ``-inf``, in place."""
    scores[:, 0] = float("-inf")
    return scores
