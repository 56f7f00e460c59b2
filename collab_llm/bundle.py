"""Bundles: everything a trained recommender needs, in one folder, plus merging and adapter swapping.

A bundle folder (written atomically with :func:`collab_llm.io.atomic_dir`)::

    bundle/
      bundle.json          base model (local path or hub id), dtype, template, placeholder tokens and
                           their ids, adapter kind / name, component paths, metrics, command, and the
                           training stage (supervised, or a preference stage: S-DPO / DPO and its start)
      README.md            model card: what is inside, metrics, the exact command, how to load
      adapter/             the LoRA adapter (peft ``save_pretrained``: adapter_config.json +
                           adapter_model.safetensors) or an iLoRA adapter + gate
                           (:func:`collab_llm.ilora.save_ilora_model`)
      projectors/<name>/   each projector (``Projector.save_pretrained``), e.g. ``item``, ``user``
      head/                the item-scoring head (``head.safetensors``: query, key, standardisation), optional
      cf_model/            the frozen CF model (``CFModel.save_pretrained``), optional

``bundle.json`` ``scoring`` records how the bundle scores, the way it was trained: ``scorer``
(``likelihood`` / ``head``), ``yes_no_loss`` (``lm``: softmax over the Yes/No logits; ``bce``: sigmoid of
the Yes logit), ``head_loss``, ``head_layer``, ``head_target``, ``answer_ids``; ``adapter.spec`` the
adapter spec (:mod:`collab_llm.adapters`). Bundles written before these fields read as likelihood scoring
with the Yes/No softmax (:data:`collab_llm.recommender.LEGACY_SCORING`). Write and read a whole bundle with
:meth:`collab_llm.recommender.Recommender.save_pretrained` / ``from_pretrained``.

``bundle.json`` also records ``files`` (the sha256 of every other file) and ``made_from`` (the CF model's
and the split's fingerprints, the backbone's path and config hash, template, seed, budget).
:func:`load_bundle` verifies both before loading anything (``verify=False`` skips it): a changed or damaged
file, or a CF model other than the one the bundle was trained with, is a one-line
:class:`~collab_llm.errors.UserError` naming the file.

The frozen base LLM is *not* copied: ``bundle.json`` names it, and :func:`load_bundle` loads it with
:func:`collab_llm.backbone.load_backbone` (same placeholder tokens, checked to get the same ids) or
puts the adapter on a backbone the caller already holds.

Adapter swapping: one backbone can hold the adapters of several bundles (say one per dataset) as
named peft adapters. Load the first bundle, then pass it as ``base`` when loading the others; call
:meth:`LoadedBundle.activate` to switch (``PeftModel.set_adapter``) without reloading the base::

    ml100k = load_bundle("bundles/ml100k")                       # loads the base, adapter "default"
    ml1m = load_bundle("bundles/ml1m", base=ml100k, adapter_name="ml1m")   # same LLM, 2nd adapter
    ml1m.activate(); ...score with ml1m.model and ml1m.projectors...
    ml100k.activate(); ...

Merging: :func:`merge_bundle` folds the LoRA into a *copy* of the base weights
(``merge_and_unload``) and returns a plain HF model; :func:`save_merged` writes it as an ordinary HF
folder. A per-sample iLoRA gate cannot be merged (refused).
"""

from __future__ import annotations

import copy
import os
import re
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import torch
from peft import PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from collab_llm.backbone import resolve_dtype
from collab_llm.errors import UserError
from collab_llm.fingerprint import all_files, canonical_sha256, file_checksums, read_json
from collab_llm.io import atomic_dir, atomic_file, write_json
from collab_llm.metrics import Estimate

BUNDLE_FORMAT = "collab-llm-bundle"
BUNDLE_VERSION = 1
BUNDLE_CONFIG_NAME = "bundle.json"
ADAPTER_DIR = "adapter"
PROJECTORS_DIR = "projectors"
CF_MODEL_DIR = "cf_model"
HEAD_DIR = "head"
HEAD_WEIGHTS_NAME = "head.safetensors"

DType = Literal["float32", "bfloat16"]
AdapterKind = Literal["lora", "ilora"]
_ADAPTER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SUPERVISED_STAGE: dict[str, Any] = {"name": "supervised"}


@dataclass(frozen=True)
class BundleConfig:
    """The contents of ``bundle.json``.

    Attributes:
        base_model: local folder or hub id of the frozen base LLM.
        dtype: the dtype the base ran in (``"float32"`` / ``"bfloat16"``).
        template: prompt template name (``collab_llm/templates/<name>.yaml``) or path.
        placeholder_tokens: reserved placeholder strings, in the order they were added.
        placeholder_ids: their token ids when trained (checked on load).
        adapter_kind: ``"lora"`` or ``"ilora"``.
        adapter_name: the peft adapter name the bundle was trained under.
        projectors: projector role (e.g. ``"item"``) -> folder relative to the bundle.
        cf_model: CF model folder relative to the bundle, or None.
        metrics: metric name -> value (floats; an Estimate is stored as value / ci_low / ci_high / n).
        command: the exact command that produced the bundle.
        task: free text, e.g. ``"next_item"`` / ``"yes_no"``.
        stage: how the trainable tensors were trained: ``{"name": "supervised"}``, or a preference stage
            (:meth:`collab_llm.sdpo.PreferenceStage.record`: ``name`` ``"sdpo"`` / ``"dpo"``, ``beta``,
            ``num_negatives``, ``start_from``, ``reference``). Bundles written before this field read as
            supervised.
        made_from: what the bundle was trained from (``cf_model_sha256``, ``split_sha256``, ``backbone``
            {path, config_sha256}, ``template``, ``seed``, ``budget``); see :func:`collab_llm.fingerprint`.
        files: relative path -> sha256 of every file but ``bundle.json`` (verified by :func:`load_bundle`).
        scoring: how it scores (``scorer``, ``yes_no_loss``, ``head_loss``, ``head_layer``, ``head_target``,
            ``answer_ids``); ``None`` for bundles written before the field (see the module docstring).
        adapter_spec: the adapter spec (``{class_path, init_args}``, :func:`collab_llm.adapters.adapter_from_dict`),
            or ``None`` (older bundles: read from the adapter's own config).
        head: ``{"path": "head", "hidden_size": H, "item_dim": d}`` of the item-scoring head, or ``None``.
    """

    base_model: str
    dtype: DType
    template: str
    placeholder_tokens: tuple[str, ...]
    placeholder_ids: dict[str, int]
    adapter_kind: AdapterKind = "lora"
    adapter_name: str = "default"
    projectors: dict[str, str] = field(default_factory=dict)
    cf_model: str | None = None
    metrics: dict[str, dict[str, float] | float] = field(default_factory=dict)
    command: str | None = None
    task: str | None = None
    stage: dict[str, Any] = field(default_factory=lambda: dict(SUPERVISED_STAGE))
    made_from: dict = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    scoring: dict[str, Any] | None = None
    adapter_spec: dict[str, Any] | None = None
    head: dict[str, Any] | None = None

    def to_dict(self) -> dict:
        return {
            "format": BUNDLE_FORMAT,
            "version": BUNDLE_VERSION,
            "base_model": self.base_model,
            "dtype": self.dtype,
            "template": self.template,
            "placeholder_tokens": list(self.placeholder_tokens),
            "placeholder_ids": dict(self.placeholder_ids),
            "adapter": {"kind": self.adapter_kind, "name": self.adapter_name, "path": ADAPTER_DIR,
                        **({"spec": self.adapter_spec} if self.adapter_spec is not None else {})},
            "projectors": dict(self.projectors),
            "cf_model": self.cf_model,
            "metrics": self.metrics,
            "command": self.command,
            "task": self.task,
            "stage": dict(self.stage),
            **({"scoring": dict(self.scoring)} if self.scoring is not None else {}),
            **({"head": dict(self.head)} if self.head is not None else {}),
            "made_from": self.made_from,
            "files": self.files,
        }

    @classmethod
    def read(cls, folder: str | os.PathLike) -> "BundleConfig":
        path = Path(folder) / BUNDLE_CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; {folder} is not a collab-llm bundle")
        raw = read_json(path, "bundle config")
        if not isinstance(raw, dict):
            raise UserError(f"{path}: not a bundle config (expected a JSON object)")

        def need(key: str, kind: type | tuple[type, ...]):
            if key not in raw:
                raise ValueError(f"{path}: missing field {key!r}")
            if not isinstance(raw[key], kind):
                raise ValueError(f"{path}: field {key!r} should be {kind}, got {type(raw[key]).__name__}")
            return raw[key]

        if raw.get("format") != BUNDLE_FORMAT:
            raise ValueError(f"{path}: field 'format' is {raw.get('format')!r}, expected {BUNDLE_FORMAT!r}")
        if raw.get("version") != BUNDLE_VERSION:
            raise ValueError(f"{path}: field 'version' is {raw.get('version')!r}, this code reads {BUNDLE_VERSION}")
        dtype = need("dtype", str)
        if dtype not in ("float32", "bfloat16", "auto"):  # "auto": written before save_bundle resolved it
            raise ValueError(f"{path}: field 'dtype' is {dtype!r}, expected 'float32' or 'bfloat16'")
        adapter = need("adapter", dict)
        if adapter.get("kind") not in ("lora", "ilora") or not isinstance(adapter.get("name"), str):
            raise ValueError(f"{path}: field 'adapter' should be {{kind: lora|ilora, name: str}}, got {adapter!r}")
        cf = raw.get("cf_model")
        if cf is not None and not isinstance(cf, str):
            raise ValueError(f"{path}: field 'cf_model' should be a folder name or null, got {cf!r}")
        stage = raw.get("stage", SUPERVISED_STAGE)
        if not isinstance(stage, dict) or not isinstance(stage.get("name"), str):
            raise ValueError(f"{path}: field 'stage' should be {{name: str, ...}}, got {stage!r}")
        scoring, head, spec = raw.get("scoring"), raw.get("head"), adapter.get("spec")
        for key, value in (("scoring", scoring), ("head", head), ("adapter.spec", spec)):
            if value is not None and not isinstance(value, dict):
                raise ValueError(f"{path}: field {key!r} should be an object or absent, got {value!r}")
        return cls(
            base_model=need("base_model", str),
            dtype=dtype,
            template=need("template", str),
            placeholder_tokens=tuple(need("placeholder_tokens", list)),
            placeholder_ids={str(k): int(v) for k, v in need("placeholder_ids", dict).items()},
            adapter_kind=adapter["kind"],
            adapter_name=adapter["name"],
            projectors={str(k): str(v) for k, v in need("projectors", dict).items()},
            cf_model=cf,
            metrics=raw.get("metrics") or {},
            command=raw.get("command"),
            task=raw.get("task"),
            stage=dict(stage),
            made_from=dict(raw.get("made_from") or {}),
            files=dict(raw.get("files") or {}),
            scoring=scoring,
            adapter_spec=spec,
            head=head,
        )


@dataclass
class LoadedBundle:
    """A bundle ready to score.

    Attributes:
        folder: where it was loaded from.
        config: its :class:`BundleConfig`.
        model: the peft model (base + this bundle's adapter, possibly among others). Pass it to
            :mod:`collab_llm.scoring`; call :meth:`activate` first when several bundles share it.
        tokenizer: the base tokenizer with placeholders.
        placeholder_ids: placeholder string -> token id.
        adapter_name: this bundle's adapter name inside ``model``.
        projectors: role -> projector (float32, eval mode).
        cf_model: the CF model or None (eval mode).
        ilora: the :class:`collab_llm.ilora.ILoRAModel` for iLoRA bundles (route before scoring), else None.
    """

    folder: Path
    config: BundleConfig
    model: PeftModel
    tokenizer: PreTrainedTokenizerBase
    placeholder_ids: dict[str, int]
    adapter_name: str
    projectors: dict[str, torch.nn.Module]
    cf_model: torch.nn.Module | None
    ilora: torch.nn.Module | None = None

    def activate(self) -> None:
        """Make this bundle's adapter the active one of the shared peft model (no reload)."""
        if self.adapter_name not in self.model.peft_config:
            raise ValueError(f"adapter {self.adapter_name!r} is not loaded in this model; has {sorted(self.model.peft_config)}")
        self.model.set_adapter(self.adapter_name, inference_mode=True)


# --------------------------------------------------------------------------------------------
# save
# --------------------------------------------------------------------------------------------


def _metric_json(value: float | Estimate) -> dict[str, float] | float:
    if isinstance(value, Estimate):
        return {"value": value.value, "ci_low": value.ci_low, "ci_high": value.ci_high, "n": value.n}
    return float(value)


def _stage_text(stage: Mapping[str, Any]) -> str:
    if stage.get("name") == "supervised":
        return "supervised"
    details = ", ".join(f"{k} `{v}`" for k, v in stage.items() if k != "name")
    return f"{stage.get('name')} ({details})"


def _model_card(config: BundleConfig, folder_name: str) -> str:
    lines = [
        f"# {folder_name}",
        "",
        "A collab-llm bundle: a LoRA adapter for a frozen causal LM, the projector(s) that map",
        "collaborative-filtering embeddings to soft tokens, and the CF model that produces them.",
        "",
        f"- base model: `{config.base_model}` ({config.dtype})",
        f"- adapter: {config.adapter_kind} (`{ADAPTER_DIR}/`, trained as adapter `{config.adapter_name}`)",
        f"- prompt template: `{config.template}`",
        f"- placeholder tokens: {', '.join(f'`{t}`' for t in config.placeholder_tokens) or 'none'}",
        f"- projectors: {', '.join(f'{k} (`{v}/`)' for k, v in config.projectors.items()) or 'none'}",
        f"- CF model: {f'`{config.cf_model}/`' if config.cf_model else 'none'}",
    ]
    if config.task:
        lines.append(f"- task: {config.task}")
    lines.append(f"- training stage: {_stage_text(config.stage)}")
    if config.scoring is not None:
        lines.append(f"- scoring: {config.scoring.get('scorer')} (Yes/No loss `{config.scoring.get('yes_no_loss')}`"
                     f"{', head layer ' + str(config.scoring['head_layer']) if config.scoring.get('head_layer') else ''})")
    lines += ["", "## Metrics", ""]
    if config.metrics:
        lines += ["| metric | value | 95% CI | n |", "|---|---|---|---|"]
        for name, value in config.metrics.items():
            if isinstance(value, dict):
                lines.append(
                    f"| {name} | {value['value']:.4f} | [{value['ci_low']:.4f}, {value['ci_high']:.4f}] | {value['n']} |"
                )
            else:
                lines.append(f"| {name} | {value:.4f} | | |")
    else:
        lines.append("No metrics were recorded.")
    lines += ["", "## Command", "", "```", config.command or "(not recorded)", "```", ""]
    lines += [
        "## Load",
        "",
        "```python",
        "from collab_llm.recommender import Recommender",
        f'rec = Recommender.from_pretrained("{folder_name}")  # loads the base model named in bundle.json',
        "rows = rec.score(batch, \"hybrid\")  # scored the way it was trained",
        "```",
        "",
    ]
    return "\n".join(lines)


def save_bundle(
    folder: str | os.PathLike,
    model: torch.nn.Module,
    base_model: str,
    dtype: DType,
    template: str,
    placeholder_ids: Mapping[str, int],
    projectors: Mapping[str, torch.nn.Module] | None = None,
    cf_model: torch.nn.Module | None = None,
    adapter_name: str = "default",
    metrics: Mapping[str, float | Estimate] | None = None,
    command: str | None = None,
    task: str | None = None,
    stage: Mapping[str, Any] | None = None,
    made_from: Mapping[str, object] | None = None,
    head: torch.nn.Module | None = None,
    scoring: Mapping[str, Any] | None = None,
    adapter_spec: Mapping[str, Any] | None = None,
) -> Path:
    """Write a bundle folder atomically (an existing one is replaced only when the new one is complete).

    Args:
        folder: the bundle folder to create.
        model: a :class:`peft.PeftModel` holding ``adapter_name``, or a
            :class:`collab_llm.ilora.ILoRAModel` (its adapter and gate are saved together).
        base_model: local path or hub id of the frozen base (recorded, not copied).
        dtype: the dtype the base ran in.
        template: the prompt template name or path.
        placeholder_ids: placeholder string -> token id (``Backbone.placeholder_ids``); its key order
            is the order the tokens were added.
        projectors: role -> object with ``save_pretrained(dir)`` (``projectors.Projector``).
        cf_model: object with ``save_pretrained(dir)`` (``cf_models.base.CFModel``) or None.
        adapter_name: which adapter of ``model`` to save (plain LoRA).
        metrics: name -> float or :class:`Estimate`, written to bundle.json and the model card.
        command: the exact command line that produced the bundle.
        task: ``"next_item"`` / ``"yes_no"``.
        stage: the training stage (``CollabLLM.training_stage()``); ``None``: supervised.
        made_from: what it was trained from (:func:`bundle_made_from`); the CF model's fingerprint is
            added from ``cf_model`` when it was loaded from a folder.
        head: an :class:`collab_llm.heads.ItemScoringHead` (its whole state: ``head/head.safetensors``).
        scoring: how it scores (:meth:`collab_llm.recommender.Recommender.scoring_record`).
        adapter_spec: the adapter spec's ``to_dict()``.

    Returns:
        the bundle folder.
    """
    from collab_llm.ilora import ILoRAModel, save_ilora_model

    folder = Path(folder)
    projectors = dict(projectors or {})
    for role in projectors:
        if not _ADAPTER_NAME.match(role):
            raise ValueError(f"projector role {role!r} must be an identifier (it names a folder)")
    if isinstance(model, ILoRAModel):
        kind: AdapterKind = "ilora"
        adapter_name = model.config.adapter_name
    elif isinstance(model, PeftModel):
        kind = "lora"
        if adapter_name not in model.peft_config:
            raise ValueError(f"model has no adapter {adapter_name!r}; has {sorted(model.peft_config)}")
    else:
        raise TypeError(f"model must be a peft PeftModel or an ILoRAModel, got {type(model).__name__}")
    config = BundleConfig(
        base_model=str(base_model),
        dtype=resolve_dtype(dtype),  # what the base ran in here, not "auto"
        template=template,
        placeholder_tokens=tuple(placeholder_ids),
        placeholder_ids={k: int(v) for k, v in placeholder_ids.items()},
        adapter_kind=kind,
        adapter_name=adapter_name,
        projectors={role: f"{PROJECTORS_DIR}/{role}" for role in projectors},
        cf_model=CF_MODEL_DIR if cf_model is not None else None,
        metrics={k: _metric_json(v) for k, v in (metrics or {}).items()},
        command=command,
        task=task,
        stage=dict(stage) if stage is not None else dict(SUPERVISED_STAGE),
        made_from=bundle_made_from(made_from, cf_model),
        scoring=dict(scoring) if scoring is not None else None,
        adapter_spec=dict(adapter_spec) if adapter_spec is not None else None,
        head=({"path": HEAD_DIR, "hidden_size": int(head.query.in_dim), "item_dim": int(head.query.out_dim)}
              if head is not None else None),
    )
    with atomic_dir(folder) as tmp:
        if kind == "ilora":
            save_ilora_model(tmp / ADAPTER_DIR, model)
        else:
            staging = tmp / ".adapter-staging"
            model.save_pretrained(str(staging), selected_adapters=[adapter_name], save_embedding_layers=False)
            # peft writes a non-"default" adapter into a sub-folder named after it
            written = staging if adapter_name == "default" else staging / adapter_name
            if not (written / "adapter_config.json").is_file():
                raise RuntimeError(f"peft did not write {written / 'adapter_config.json'}")
            os.replace(written, tmp / ADAPTER_DIR)
            shutil.rmtree(staging, ignore_errors=True)
        for role, projector in projectors.items():
            projector.save_pretrained(tmp / PROJECTORS_DIR / role)
        if head is not None:
            from safetensors.torch import save

            (tmp / HEAD_DIR).mkdir()
            with atomic_file(tmp / HEAD_DIR / HEAD_WEIGHTS_NAME, "wb") as handle:
                handle.write(save({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}))
        if cf_model is not None:
            cf_model.save_pretrained(tmp / CF_MODEL_DIR, made_from=getattr(cf_model, "made_from", None))
            copied = canonical_sha256(read_json(tmp / CF_MODEL_DIR / "config.json"))
            config = replace(config, made_from={**config.made_from, "cf_model_sha256": copied})
        with atomic_file(tmp / "README.md") as handle:
            handle.write(_model_card(config, folder.name))
        config = replace(config, files=file_checksums(tmp, all_files(tmp, exclude=[BUNDLE_CONFIG_NAME])))
        write_json(tmp / BUNDLE_CONFIG_NAME, config.to_dict())
    return folder


def bundle_made_from(made_from: Mapping[str, object] | None, cf_model: torch.nn.Module | None) -> dict:
    """``made_from`` plus, when ``cf_model`` was loaded from a folder, the fingerprint of that folder
    (``cf_model_source_sha256``) and what the CF model was itself made from (``cf_made_from``)."""
    out = dict(made_from or {})
    source = getattr(cf_model, "source_sha256", None)
    if source and "cf_model_source_sha256" not in out:
        out["cf_model_source_sha256"] = source
    cf_made = getattr(cf_model, "made_from", None)
    if cf_made and "cf_made_from" not in out:
        out["cf_made_from"] = cf_made
    return out


def verify_bundle(folder: str | os.PathLike, config: BundleConfig | None = None) -> BundleConfig:
    """Check a bundle before loading it: the CF model inside is the one it was trained with, and every
    file has the sha256 ``bundle.json`` records. Raises a one-line :class:`UserError` naming the file."""
    from collab_llm.fingerprint import mismatch, short, verify_checksums

    folder = Path(folder)
    config = config or BundleConfig.read(folder)
    path = folder / BUNDLE_CONFIG_NAME
    recorded = config.made_from.get("cf_model_sha256")
    if config.cf_model is not None and recorded:
        cf_config = folder / config.cf_model / "config.json"
        current = canonical_sha256(read_json(cf_config, "CF model config"))
        if current != recorded:
            mismatch("CF model", short(str(recorded)), path, f"CF model {short(current)}", folder / config.cf_model,
                     "the bundle was trained with another CF model; put that one back (or train a bundle with this one)")
    if config.files:
        verify_checksums(folder, config.files, path)
    return config


# --------------------------------------------------------------------------------------------
# load and swap
# --------------------------------------------------------------------------------------------


def _has_lora_layers(model: torch.nn.Module) -> bool:
    return any(isinstance(m, BaseTunerLayer) for m in model.modules())


def _check_placeholders(config: BundleConfig, ids: Mapping[str, int], folder: Path) -> None:
    for token, expected in config.placeholder_ids.items():
        got = ids.get(token)
        if got != expected:
            raise ValueError(
                f"{folder / BUNDLE_CONFIG_NAME}: placeholder {token!r} had token id {expected} when trained, "
                f"but the base given has {got}; load the base with placeholder_tokens={list(config.placeholder_tokens)}"
            )


def load_bundle(
    folder: str | os.PathLike,
    base: "object | None" = None,
    adapter_name: str | None = None,
    base_model: str | None = None,
    verify: bool = True,
) -> LoadedBundle:
    """Load a bundle, onto a fresh base, an already-loaded :class:`collab_llm.backbone.Backbone`, or
    next to another bundle's adapter.

    Args:
        folder: the bundle folder.
        base: ``None`` (load the base named in bundle.json, or ``base_model``), a ``Backbone``
            (its model is wrapped in place by peft; it must not hold LoRA layers yet), or a
            :class:`LoadedBundle` whose peft model receives this adapter as a second named adapter
            (adapter swapping; plain LoRA only).
        adapter_name: name for this adapter; default: the bundle's own name for a new model,
            the bundle folder's name (made an identifier) when added next to another bundle.
        base_model: override the base path of bundle.json when ``base`` is None (e.g. the
            bundle was trained on another machine).
        verify: check the CF model's fingerprint and every file's sha256 first (:func:`verify_bundle`);
            ``False`` loads whatever is there.
    """
    from collab_llm.backbone import Backbone, load_backbone
    from collab_llm.ilora import load_ilora_model

    folder = Path(folder)
    config = BundleConfig.read(folder)
    if verify:
        verify_bundle(folder, config)
    adapter_dir = folder / ADAPTER_DIR
    if not (adapter_dir / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{adapter_dir / 'adapter_config.json'}: missing; the bundle has no adapter")

    ilora = None
    if isinstance(base, LoadedBundle):
        if config.adapter_kind == "ilora" or base.ilora is not None:
            raise ValueError(
                f"{folder}: adapter swapping is supported for plain LoRA bundles only (iLoRA hooks are bound to "
                "one adapter); load iLoRA bundles on their own backbone"
            )
        name = adapter_name or re.sub(r"\W", "_", folder.name)
        if not _ADAPTER_NAME.match(name):
            name = f"a_{name}"
        if name in base.model.peft_config:
            raise ValueError(f"adapter name {name!r} is already used by this model; pass adapter_name=")
        _check_placeholders(config, base.placeholder_ids, folder)
        base.model.load_adapter(str(adapter_dir), adapter_name=name, is_trainable=False)
        model, tokenizer, ids = base.model, base.tokenizer, base.placeholder_ids
    else:
        if base is None:
            backbone = load_backbone(base_model or config.base_model, config.dtype, config.placeholder_tokens)
        elif isinstance(base, Backbone):
            backbone = base
            if _has_lora_layers(backbone.model):
                raise ValueError(
                    "the Backbone's model already holds LoRA layers; to add a second bundle pass the first "
                    "LoadedBundle as base= (adapter swapping)"
                )
        else:
            raise TypeError(f"base must be None, a Backbone or a LoadedBundle, got {type(base).__name__}")
        _check_placeholders(config, backbone.placeholder_ids, folder)
        tokenizer, ids = backbone.tokenizer, backbone.placeholder_ids
        if config.adapter_kind == "ilora":
            if adapter_name is not None and adapter_name != config.adapter_name:
                raise ValueError(f"{folder}: an iLoRA adapter keeps its trained name {config.adapter_name!r}")
            ilora = load_ilora_model(backbone.model, adapter_dir)
            ilora.eval()
            model = ilora.peft_model
            name = config.adapter_name
        else:
            name = adapter_name or config.adapter_name
            model = PeftModel.from_pretrained(backbone.model, str(adapter_dir), adapter_name=name, is_trainable=False)
        model.eval()

    projectors = {}
    if config.projectors:
        from projectors import Projector

        for role, rel in config.projectors.items():
            projectors[role] = Projector.from_pretrained(folder / rel).float().eval()
    cf_model = None
    if config.cf_model is not None:
        from cf_models.base import CFModel

        cf_model = CFModel.from_pretrained(folder / config.cf_model).eval()
    loaded = LoadedBundle(
        folder=folder,
        config=config,
        model=model,
        tokenizer=tokenizer,
        placeholder_ids=dict(ids),
        adapter_name=name,
        projectors=projectors,
        cf_model=cf_model,
        ilora=ilora,
    )
    loaded.activate()
    return loaded


def load_head(folder: str | os.PathLike, config: BundleConfig) -> torch.nn.Module:
    """The bundle's :class:`collab_llm.heads.ItemScoringHead` (float32, eval mode), every tensor checked."""
    from safetensors.torch import load_file

    from collab_llm.heads import ItemScoringHead

    spec = config.head or {}
    path = Path(folder) / str(spec.get("path", HEAD_DIR)) / HEAD_WEIGHTS_NAME
    if not path.is_file():
        raise UserError(f"{path}: missing; the bundle records a head ({Path(folder) / BUNDLE_CONFIG_NAME})")
    head = ItemScoringHead(int(spec["hidden_size"]), int(spec["item_dim"]))
    tensors = load_file(str(path))
    own = head.state_dict()
    if set(tensors) != set(own) or any(tensors[k].shape != own[k].shape for k in own):
        raise UserError(f"{path}: tensors {sorted(tensors)} do not fit a head of hidden size {spec['hidden_size']}, "
                        f"item size {spec['item_dim']}")
    head.load_state_dict(tensors, strict=True)
    return head.eval()


# --------------------------------------------------------------------------------------------
# merge
# --------------------------------------------------------------------------------------------


def merge_bundle(bundle: LoadedBundle) -> PreTrainedModel:
    """A plain HF model with this bundle's LoRA merged into a *copy* of the base weights.

    The shared peft model is left untouched (other adapters keep working). Merging into a bf16 base
    rounds the merged weights to bf16. iLoRA bundles are refused: a per-sample gate cannot be merged
    (fold a fixed gate with ``ILoRAModel.merge_fixed_gate`` if that is what you want).
    """
    if bundle.ilora is not None or bundle.config.adapter_kind == "ilora":
        raise ValueError(
            f"{bundle.folder}: an iLoRA adapter has a per-sample gate and cannot be merged into the base "
            "(see collab_llm.ilora.ILoRAModel.merge_fixed_gate for a fixed gate)"
        )
    clone = copy.deepcopy(bundle.model)
    merged = clone.merge_and_unload(adapter_names=[bundle.adapter_name])
    merged.eval()
    for p in merged.parameters():
        p.requires_grad_(False)
    return merged


def save_merged(bundle: LoadedBundle, folder: str | os.PathLike) -> Path:
    """Write the merged model and its tokenizer (with placeholders) as an ordinary HF folder, atomically.

    The projectors and CF model are copied next to it (``projectors/``, ``cf_model/``) with a
    ``bundle.json`` whose adapter is absent, so soft-token prompts still work on the merged model.
    """
    folder = Path(folder)
    merged = merge_bundle(bundle)
    with atomic_dir(folder) as tmp:
        merged.save_pretrained(str(tmp))
        bundle.tokenizer.save_pretrained(str(tmp))
        for role, rel in bundle.config.projectors.items():
            shutil.copytree(bundle.folder / rel, tmp / "collab_llm" / rel)
        if bundle.config.cf_model is not None:
            shutil.copytree(bundle.folder / bundle.config.cf_model, tmp / "collab_llm" / bundle.config.cf_model)
        write_json(
            tmp / "collab_llm" / "merged_from.json",
            {"bundle": str(bundle.folder), "adapter_name": bundle.adapter_name, **bundle.config.to_dict()},
        )
    return folder


def bundle_components(folder: str | os.PathLike) -> Sequence[str]:
    """Relative paths of every file in a bundle (for listings and tests)."""
    root = Path(folder)
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
