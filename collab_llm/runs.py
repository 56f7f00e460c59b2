"""A comparison's budget and one LLM run of it as typed values: :class:`Profile`, :class:`LLMRun`.

``collab-llm compare`` runs every LLM method as the LightningCLI command ``collab-llm fit`` of shipped
config fragments (trainer, data, model; a preference stage adds its own model fragment) plus overrides.
:class:`LLMRun` is that command as data: the fragments in the order they compose, and the overrides as
typed fields of :class:`ModelSettings`, :class:`DataSettings` and :class:`TrainerSettings`, each field
named after its LightningCLI key (``data.test_sample_seed`` is ``DataSettings.test_sample_seed``, an
``int``). :meth:`LLMRun.args` renders them to arguments in one place (``None``: the fragments' value).

What a method's fragments say (its regime, scorer, template) is read from their composition as the
LightningCLI parses it (:func:`composed_model`), not from the YAML text.

    run = LLMRun(fragments=(trainer, data, model), seed_everything=0,
                 model=ModelSettings(backbone_path="default", dtype="auto", seed=0, n_bootstrap=1000,
                                     warmup_steps=1),
                 data=DataSettings(data_dir=Path("work/ml100k_loo"), batch_size=2, eval_batch_size=8, seed=0,
                                   test_sample=32, test_sample_seed=0),
                 trainer=TrainerSettings(max_steps=8, save_dir=Path("reports/x/runs/llara")))
    run.command()  # 'collab-llm fit --config ... --data.test_sample 32 --data.test_sample_seed 0 ...'
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field, fields, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Sequence

import pandas as pd


@dataclass(frozen=True)
class Profile:
    """The shared budget of one comparison (``compare --profile``; ``compare --dry-run`` prints the commands
    it becomes).

    Args:
        name: profile name (recorded in the report).
        llm_steps: optimizer steps of every LLM method (same for all: same budget).
        batch_size: training prompts per step.
        test_rows: evaluate on a seeded random sample of ``test_rows`` rows of the test table
            (``None``: all), the same sample for every method (:func:`collab_llm.datamodule.sample_rows`).
            Every method, CF models included, is scored on exactly these rows.
        generate: next-item only: also generate answers (greedy) and parse them (the papers'
            HR@1 and ValidRatio).
        max_new_tokens: generation length cap.
        cf_max_epochs: cap on CF training epochs (``None``: the config's, with early stopping).
        dtype: backbone dtype (trainable parts stay fp32); ``"auto"``: bfloat16 where the CPU (or GPU)
            multiplies bf16 natively, else float32 (:func:`collab_llm.backbone.resolve_dtype`).
        n_bootstrap: bootstrap resamples for the 95% intervals.
        eval_batch_size: prompts per evaluation batch.
        warmup_steps: linear learning-rate warm-up of every LLM method (then cosine decay to 0 at
            ``llm_steps``); the configs' 20 warm-up steps would outlast the short profiles.
        per_protocol: fields that differ by protocol (a Yes/No row costs one forward of a short
            prompt, a next-item row a long prompt plus 20 candidates or a generation).
    """

    name: str
    llm_steps: int
    batch_size: int
    test_rows: int | None
    generate: bool
    max_new_tokens: int
    cf_max_epochs: int | None
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    n_bootstrap: int = 1000
    eval_batch_size: int = 8
    warmup_steps: int = 1
    per_protocol: dict[str, dict[str, Any]] = field(default_factory=dict)

    def for_protocol(self, protocol: str) -> "Profile":
        """This profile with ``per_protocol[protocol]``'s fields applied (the overrides themselves dropped)."""
        return replace(self, **self.per_protocol.get(protocol, {}), per_protocol={})


PROFILES: dict[str, Profile] = {
    # the README's main job: about 10 minutes of compute on a 2-core machine
    "quick": Profile("quick", llm_steps=8, batch_size=2, test_rows=32, generate=False, max_new_tokens=32,
                     cf_max_epochs=8),
    # the README's results (results/): both protocols within 90 minutes on a 2-core machine. Sized from
    # costs measured by bench/injection_learning.py (SmolLM2-135M, bf16 weights on an AVX512-BF16 CPU,
    # 2 threads): 48 steps of 8 text prompts ~600 s on ML-100K and ~375 s on Yes/No, ranking 100
    # next-item test rows ~70 s (+ ~2 s a row generated, 64 new tokens at most, as LLaRA), the head's
    # alignment pass over the same 384 prompts ~60 s. On an fp32-only CPU expect about 1.5x longer.
    "full": Profile("full", llm_steps=48, batch_size=8, test_rows=100, generate=True, max_new_tokens=64,
                    cf_max_epochs=None, warmup_steps=3,
                    per_protocol={"yesno": {"test_rows": 500}}),
    # tests: tiny models, seconds
    "smoke": Profile("smoke", llm_steps=2, batch_size=2, test_rows=4, generate=True, max_new_tokens=4,
                     cf_max_epochs=1, dtype="float32", n_bootstrap=50, eval_batch_size=2),
}


def _key(section: str, f: Any) -> str:
    """A settings field's LightningCLI key: ``<section>.<name>``, or ``<section>.<metadata key>``."""
    return f"{section}.{f.metadata.get('key', f.name)}"


def _render(value: Any) -> str:
    if isinstance(value, bool):  # before int: bool is an int
        return "true" if value else "false"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


@dataclass(frozen=True)
class ModelSettings:
    """``--model.*`` overrides of a run (``None``: the model fragments' value)."""

    backbone_path: str
    dtype: str
    seed: int
    n_bootstrap: int
    warmup_steps: int
    cf_model_path: Path | None = None
    preference_start_from: Path | None = field(default=None, metadata={"key": "preference.start_from"})
    regime: str | None = None
    stage1_steps: int | None = None
    template: str | None = None
    eval_generation: bool | None = None
    max_new_tokens: int | None = None
    head_init_rows: int | None = None
    # merged into the fragments' adapter: ``--model.adapter '{"init_args": {...}}'`` keeps their class_path
    # (``--model.adapter.init_args.X`` would reset an ILoRA to the declared LoRA)
    adapter: dict[str, Any] | None = None


@dataclass(frozen=True)
class DataSettings:
    """``--data.*`` overrides of a run (``None``: the data fragment's value).

    ``test_sample`` / ``test_sample_seed`` are :class:`collab_llm.datamodule.RecDataModule`'s: the run is scored
    on :meth:`test_rows` of the test table, the rows compare scores every other method on."""

    data_dir: Path
    batch_size: int
    eval_batch_size: int
    seed: int
    test_sample: int | None = None
    test_sample_seed: int | None = None
    train_table: str | None = None

    def test_rows(self, test: pd.DataFrame) -> pd.DataFrame:
        """The rows of ``test`` this run is scored on (= ``RecDataModule(test_sample=..., test_sample_seed=...)``)."""
        from collab_llm.datamodule import sample_rows

        if self.test_sample is None:
            return test
        return sample_rows(test, self.test_sample, 0 if self.test_sample_seed is None else self.test_sample_seed)


@dataclass(frozen=True)
class TrainerSettings:
    """``--trainer.*`` overrides of a run: a step budget, no validation, a CSV log under ``save_dir``."""

    max_steps: int
    save_dir: Path = field(metadata={"key": "logger.init_args.save_dir"})
    max_epochs: int = -1
    limit_val_batches: int = 0
    log_every_n_steps: int = 1
    log_name: str = field(default="logs", metadata={"key": "logger.init_args.name"})


@dataclass(frozen=True)
class LLMRun:
    """One ``collab-llm fit`` run: ``fragments`` given to ``--config`` in order (later ones override earlier
    ones), then the settings' overrides."""

    fragments: tuple[Path, ...]
    seed_everything: int
    model: ModelSettings
    data: DataSettings
    trainer: TrainerSettings

    def args(self) -> list[str]:
        """The LightningCLI arguments (without the subcommand): the one place a run becomes strings."""
        out = [a for path in self.fragments for a in ("--config", str(path))]
        out += ["--seed_everything", str(self.seed_everything)]
        for section in ("model", "data", "trainer"):
            settings = getattr(self, section)
            for f in fields(settings):
                value = getattr(settings, f.name)
                if value is not None:
                    out += [f"--{_key(section, f)}", _render(value)]
        return out

    def command(self, subcommand: str = "fit") -> str:
        """The shell command of this run (``collab-llm fit --config ... --trainer.max_steps 8 ...``)."""
        return f"collab-llm {subcommand} {shlex.join(self.args())}"


@lru_cache(maxsize=1)
def _model_parser() -> Any:
    """A jsonargparse parser of ``--config`` files holding ``model:`` (:class:`collab_llm.module.CollabLLM`'s
    arguments), as the LLM CLI reads them."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    from collab_llm.module import CollabLLM

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_class_arguments(CollabLLM, "model", fail_untyped=False)
    return parser


def composed_model(fragments: Sequence[Path]) -> Any:
    """The ``model`` arguments that the model ``fragments`` compose to, in order (a jsonargparse namespace:
    ``.regime``, ``.scorer``, ``.template``, ``.learning_rate``, ... with the model's defaults filled in)."""
    from collab_llm.config_guard import check_class_paths

    args = [a for path in fragments for a in ("--config", str(path))]
    check_class_paths(args)
    return _model_parser().parse_args(args).model
