"""The contract every collaborative-filtering backbone keeps, and its safetensors checkpoint format.

Item ids are contiguous from 1; id 0 is padding. A CF model scores items for a *query*: a user id
(matrix factorisation) or an item history (sequential models such as SASRec). The LLM side only
needs the embeddings; the CF training and evaluation code needs the scores:

- ``item_embeddings(items[...]) -> [..., d]``: the item table (soft tokens for item placeholders).
- ``user_embeddings(users[B]) -> [B, d]``: MF only.
- ``sequence_representation(history[B, L]) -> [B, d]``: sequential models only, history left-padded.
- ``full_scores(users=..., history=...) -> [B, n_items + 1]``: column 0 (padding) is ``-inf``.
- ``pair_scores(items[B, C], users=..., history=...) -> [B, C]``: scores of given items.

A checkpoint folder holds ``config.json`` (the config dataclass plus ``model_type``, ``files``: the sha256
of the other files, and ``made_from``: what it was trained on) and ``model.safetensors`` (+ ``metrics.json``
from ``cf fit``); it is written atomically and read without unpickling anything, checksums verified.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar, Mapping

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from collab_llm.errors import UserError
from collab_llm.fingerprint import canonical_sha256, file_checksums, read_json, verify_checksums
from collab_llm.io import atomic_dir

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
METRICS_NAME = "metrics.json"
FILES_KEY = "files"  # config.json: sha256 of the other files
MADE_FROM_KEY = "made_from"  # config.json: split fingerprint, catalogue hash, seed (cf fit)

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
    #: what the model was made from (``config.json``'s ``made_from``), set by :meth:`from_pretrained`
    made_from: dict[str, Any] | None = None
    #: the fingerprint of the folder it was loaded from (:func:`collab_llm.fingerprint.cf_sha256`)
    source_sha256: str | None = None

    def save_pretrained(self, directory: str | Path, extra_json: Mapping[str, Any] | None = None,
                        made_from: Mapping[str, Any] | None = None) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (+ ``extra_json``: file name -> JSON object, e.g.
        ``metrics.json``) into ``directory`` atomically: the folder appears complete or not at all.

        ``config.json`` also records ``files`` (sha256 of every other file, verified by
        :meth:`from_pretrained`) and ``made_from`` (split fingerprint, seed, ...). An existing non-empty
        ``directory`` is replaced only if it is a CF export (:func:`is_cf_export`).
        """
        directory = Path(directory)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        extra = dict(extra_json or {})
        for name in extra:
            if name in (CONFIG_NAME, WEIGHTS_NAME) or "/" in name or not name.endswith(".json"):
                raise ValueError(f"extra_json file name {name!r} must be a plain *.json name other than {CONFIG_NAME}")
        with atomic_dir(directory, may_replace=lambda p: is_cf_export(p) is None) as tmp:
            save_file(state, str(tmp / WEIGHTS_NAME), metadata={"model_type": self.model_type})
            for name, obj in extra.items():
                (tmp / name).write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
            config = {"model_type": self.model_type, **dataclasses.asdict(self.config),
                      FILES_KEY: file_checksums(tmp, [WEIGHTS_NAME, *extra])}
            if made_from is not None:
                config[MADE_FROM_KEY] = dict(made_from)
            (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> "CFModel":
        """Load a folder written by ``save_pretrained``. Called on ``CFModel`` it dispatches on ``model_type``.

        The sha256 of the files ``config.json`` lists are verified first; a damaged file (garbled or
        truncated weights, bad JSON) is a one-line :class:`~collab_llm.errors.UserError` naming it.
        Folders written before checksums were recorded (no ``files``) load unverified.
        """
        directory = Path(directory)
        config_path = directory / CONFIG_NAME
        weights_path = directory / WEIGHTS_NAME
        for path in (config_path, weights_path):
            if not path.is_file():
                raise FileNotFoundError(f"{path} is missing: not a CF model folder written by save_pretrained")
        raw = read_json(config_path, "CF model config")
        if not isinstance(raw, dict):
            raise UserError(f"{config_path}: not a CF model config (expected a JSON object)")
        fingerprint = canonical_sha256(raw)  # = collab_llm.fingerprint.cf_sha256(directory)
        files = raw.pop(FILES_KEY, None)
        made_from = raw.pop(MADE_FROM_KEY, None)
        if files is not None:
            verify_checksums(directory, files, config_path)
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
        try:
            model = klass(klass.config_class(**raw))
        except (TypeError, ValueError) as error:
            raise UserError(f"{config_path}: {error}") from None
        try:
            state = load_file(str(weights_path), device=str(map_location))
        except Exception as error:  # noqa: BLE001 - safetensors raises its own error types for damaged files
            raise UserError(f"{weights_path}: not a readable safetensors file ({str(error).splitlines()[0][:120]}); "
                            "the file is damaged: write the model again") from None
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as error:
            raise UserError(f"{weights_path}: tensors do not fit {config_path} "
                            f"({str(error).splitlines()[-1].strip()[:160]})") from None
        if missing or unexpected:
            raise ValueError(f"{weights_path}: missing tensors {missing}, unexpected tensors {unexpected}")
        model.eval()
        model.made_from = made_from if isinstance(made_from, dict) else None
        model.source_sha256 = fingerprint
        return model


def is_cf_export(folder: str | Path) -> str | None:
    """Why ``folder`` is not a CF export that :meth:`CFModel.save_pretrained` may replace, or None if it may
    (missing, empty, or only ``config.json`` with a ``model_type``, ``model.safetensors`` and ``*.json`` files)."""
    folder = Path(folder)
    if not folder.is_dir():
        return None if not folder.exists() else "is not a folder"
    entries = sorted(p.name for p in folder.iterdir())
    if not entries:
        return None
    try:
        raw = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raw = None
    if not isinstance(raw, dict) or "model_type" not in raw:
        return f"is a non-empty folder without a CF model config.json (it holds {entries[:3]})"
    other = [e for e in entries if not (folder / e).is_file() or not (e == WEIGHTS_NAME or e.endswith(".json"))]
    if other:
        return f"is a CF model folder that also holds files save_pretrained did not write ({other[:3]})"
    return None


def is_finished_export(folder: str | Path) -> bool:
    """A ``cf fit`` export is finished only together with its metrics: ``config.json`` lists
    ``metrics.json`` among its checksummed files (written in the same atomic step). An export written
    before checksums (no files list) counts as finished when its weights and ``metrics.json`` are there:
    retraining it would silently replace the model that earlier runs were trained with."""
    try:
        raw = json.loads((Path(folder) / CONFIG_NAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    if not isinstance(raw, dict) or not (Path(folder) / WEIGHTS_NAME).is_file():
        return False
    if FILES_KEY not in raw:  # a legacy export
        return (Path(folder) / METRICS_NAME).is_file()
    return METRICS_NAME in (raw.get(FILES_KEY) or {})


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
