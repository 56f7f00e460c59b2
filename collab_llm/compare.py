"""Paradigm 1 vs 2 on the same data, candidates, seeds and budget: ``collab-llm compare`` / ``main``.

One comparison = one data protocol + a list of methods:

- next-item (MovieLens-100K, leave-one-out, 20 stored candidates per row): ``sasrec`` (the CF model
  alone, scoring the same candidates of the same sampled rows; its per-row predictions are paired with the
  LLMs'), ``tallrec`` (text-only prompt), ``llara`` (hybrid prompt, curriculum), ``ilora`` (hybrid prompt,
  gated mixture of LoRA experts);
- yes/no (the CoLLM MovieLens-1M preset): ``mf`` (the CF model alone), ``tallrec`` (CoLLM's
  text-only prompt), ``collm`` (two stages: LoRA on text, then the MF projector on hybrid prompts).

Not the papers': ``head`` / ``head_l4`` (both protocols: an item-scoring head fitted in closed form on the
frozen LLM's state, reading the final layer / decoder block 4) and ``head_l4_user`` (Yes/No: block 4 read
at the user's token, the protocol's MF injected folded), the recipes chosen on validation rows (README,
"Injection that learns").

Any prepared split (``--data DIR``, e.g. a user's own interactions prepared by ``collab-llm prepare
--interactions FILE --items FILE --protocol loo``) takes the place of the MovieLens preset: the protocol is
read from its manifest (``--interactions FILE --items FILE`` prepares one into the work folder first, see
:func:`collab_llm.compare_cli.prepare_own`), the CF model is ``--cf-model DIR`` or trained here on it, the prompts' item wording is
``--item-word`` (default ``item``). ``--methods sasrec`` (or ``mf``) scores the CF model alone on the rows the
LLMs are scored on.

Preference stages (next-item): ``X+sdpo`` / ``X+dpo`` for an LLM method ``X`` (``tallrec+sdpo``,
``llara+sdpo``, ``ilora+dpo``, ...) continue ``X``'s finished run of the same report (its bundle is the
start and the frozen reference) with S-DPO / DPO (:mod:`collab_llm.sdpo`) on the same training rows and
candidates, under the same step budget; list ``X`` before it. The report pairs it with ``X``
(``diff_vs_X_*``) as well as with TALLRec.

Every LLM method is the LightningCLI run of ``configs/llm/trainer/cpu.yaml`` +
``configs/llm/data/<protocol>.yaml`` + ``configs/llm/model/<method>.yaml`` (a preference stage: its
start's fragment + ``configs/llm/model/<sdpo|dpo>.yaml``) with the profile's budget as overrides: a typed
:class:`collab_llm.runs.LLMRun` (:meth:`Comparison.llm_run`), whose command the report records and ``--dry-run``
prints, so it can be rerun by hand. Each finished run writes
``<report>/runs/<method>/result.json`` (atomically) with its fingerprint (:meth:`Comparison.run_fingerprint`:
seed, budget, backbone, method config, split and CF model hashes); a rerun skips a finished run only when
its fingerprint is the same, so an interrupted comparison resumes where it stopped, and refuses one made
under another fingerprint (naming what changed) rather than mixing it into the report. The report
(Markdown, CSV, JSON, PNG) is rewritten from all finished runs at the end. The work folder's split and CF
model are reused only if they are what this comparison would make (protocol, dataset, seed; the CF model
finished with its metrics and trained on that split); the report folder is locked while compare runs.
"""

from __future__ import annotations

import json
import math
import shlex
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch

from collab_llm.dropout import DROPOUT_MASKS
from collab_llm.io import atomic_file, write_json
from collab_llm.metrics import Estimate
from collab_llm.presets import (
    CONFIGS,
    PREFERENCE_STAGES,
    PROTOCOLS,
    VARIANT_OF,
    Protocol,
    ProtocolSpec,
    config_name,
    own_baseline,
    split_method,
    split_task,
)
from collab_llm.prompts import WORDINGS, with_wording
from collab_llm.report import (
    differences_table,
    load_records,
    markdown_table,
    paired_difference_records,
    write_report,
)
from collab_llm.runs import (
    DataSettings,
    LLMRun,
    ModelSettings,
    Profile,
    TrainerSettings,
    composed_model,
)

# ---------------------------------------------------------------------------------------- records
TEXT_BASELINE = "tallrec"  # every other run with per-row predictions gets a paired difference to it
INTERVALS = ("Intervals: 95% bootstrap over test rows (AUC, UAUC: over users); paired differences to "
             f"`{TEXT_BASELINE}` (and of a preference stage `X+sdpo` to its start `X`, of "
             + ", ".join(f"`{v}` to `{o}`" for v, o in VARIANT_OF.items()) + ") resample the same rows "
             "(Yes/No: users) for both methods.")


def report_records(result_paths: Sequence[Path]) -> list[dict[str, Any]]:
    """The runs' records plus their paired differences to :data:`TEXT_BASELINE` and to their own baseline
    (:func:`own_baseline`: a preference stage's start, a variant's original), from their predictions."""
    return (load_records(result_paths) + paired_difference_records(result_paths, baseline=TEXT_BASELINE)
            + paired_difference_records(result_paths, baseline=own_baseline))


def estimates_to_records(
    estimates: dict[str, Estimate | int], base: dict[str, Any], prefix: str = ""
) -> list[dict[str, Any]]:
    """Turn ``{"hr@1": Estimate, "warm/auc": Estimate, "uauc_users": 812, ...}`` into report records.

    Keys ``warm/x`` / ``cold/x`` become ``subset="warm"/"cold"``; integer entries (user counts)
    are attached to the record of the metric they count (``uauc_users`` -> ``uauc``).
    """
    records = []
    counts = {k: v for k, v in estimates.items() if not isinstance(v, Estimate)}
    for key, est in estimates.items():
        if not isinstance(est, Estimate):
            continue
        subset, _, metric = key.rpartition("/")
        rec = dict(base)
        rec.update(
            metric=prefix + metric, subset=subset or "all", value=est.value, ci_low=est.ci_low,
            ci_high=est.ci_high, n_test=est.n,
        )
        users = counts.get(f"{key}_users")
        if users is not None:
            rec["n_users_counted"] = int(users)
        records.append(rec)
    return records


@torch.no_grad()
def cf_alone_run(
    protocol: Protocol, cf_dir: Path, test: pd.DataFrame, n_resamples: int, max_history: int = 50
) -> tuple[dict[str, Estimate | int], pd.DataFrame]:
    """The CF model alone on the test rows ``test`` (the LLMs' sample, in its order): its estimates and its
    per-row predictions in the LLM runs' format (``row_index`` = position in ``test``, as the LLM runs number
    the sampled rows; next-item ``scores`` of the stored candidates + ``target_index``; Yes/No ``score``), so
    the report pairs it with the LLM runs row by row."""
    from cf_models.base import CFModel
    from cf_models.data import left_pad

    from collab_llm import scoring

    model = CFModel.from_pretrained(cf_dir).eval()
    base = pd.DataFrame({"row_index": np.arange(len(test)), "user": test["user"].to_numpy()})
    if protocol == "nextitem":
        history = left_pad(list(test["history"]), max_history)
        cands = torch.tensor(np.stack(test["candidates"].to_numpy()), dtype=torch.long)
        scores = model.pair_scores(cands, history=history).float()
        target = (cands == torch.tensor(test["target"].to_numpy()).view(-1, 1)).float().argmax(1)
        frame = base.assign(target=test["target"].to_numpy(), target_index=target.numpy(), scores=list(scores.numpy()))
        return scoring.ranking_metrics(scores, target, n_resamples=n_resamples), frame
    users = torch.tensor(test["user"].to_numpy(), dtype=torch.long)
    items = torch.tensor(test["item"].to_numpy(), dtype=torch.long)
    scores = model.pair_scores(items, users=users).float()
    frame = base.assign(item=test["item"].to_numpy(), label=test["label"].to_numpy(), score=scores.numpy(),
                        warm=test["warm"].to_numpy())
    return scoring.yes_no_metrics(test["user"].to_numpy(), test["label"].to_numpy(), scores,
                                  test["warm"].to_numpy(), n_resamples=n_resamples), frame


# ---------------------------------------------------------------------------------------- runs
@dataclass
class Comparison:
    """One comparison: protocol, methods, profile, folders."""

    protocol: Protocol
    methods: list[str]
    profile: Profile
    work_dir: Path
    report_dir: Path
    backbone: str | None = None
    seed: int = 0
    log: Callable[[str], None] = print
    data: Path | None = None  # a prepared split (any dataset) instead of the protocol's MovieLens preset
    cf_model: Path | None = None  # a CF export made from that split (default: trained into the work folder)
    item_word: str | None = None  # the prompts' item wording (collab_llm.prompts.WORDINGS; None: the templates')
    dropout_masks: str | None = None  # every LLM method's LoRA dropout masks (collab_llm.dropout; None: the configs')

    def __post_init__(self) -> None:
        from collab_llm.errors import UserError  # wrong --protocol / --methods: one line, exit 2

        if self.protocol not in PROTOCOLS:
            raise UserError(f"unknown protocol {self.protocol!r}; expected one of {sorted(PROTOCOLS)}")
        spec = PROTOCOLS[self.protocol]
        if self.data is not None:
            spec = self._own_data_spec(spec)
        if self.cf_model is not None:
            spec = self._own_cf_spec(spec)
        known = {spec.cf_method, *spec.llm_methods}
        unknown = [m for m in self.methods if split_method(m)[0] not in known]
        if unknown:
            raise UserError(f"--methods: protocol {self.protocol!r} has no method(s) {unknown}; known: {sorted(known)} "
                            f"(and <method>+{'|'.join(PREFERENCE_STAGES)} after an LLM method)")
        self.spec = spec
        for i, method in enumerate(self.methods):
            start, stage = split_method(method)
            if stage is None:
                continue
            if stage not in PREFERENCE_STAGES or start not in spec.llm_methods or self.protocol != "nextitem":
                raise UserError(f"{method!r}: a preference stage is <next-item LLM method>+<"
                                f"{'|'.join(PREFERENCE_STAGES)}>; known LLM methods: {sorted(spec.llm_methods)}")
            if self.model_config(start).scorer == "head":
                raise UserError(f"{method!r}: a preference stage trains answer likelihoods; {start!r} scores with a head")
            if start not in self.methods[:i]:
                raise UserError(f"{method!r} starts from the finished {start!r} run of this report: list {start!r} "
                                f"before it in --methods")
        if self.cf_model is not None:
            self._check_foldable(spec)
        if self.item_word is not None and self.item_word not in WORDINGS:
            raise UserError(f"--item-word {self.item_word!r}: expected one of {sorted(WORDINGS)}")
        if self.dropout_masks is not None and self.dropout_masks not in DROPOUT_MASKS:
            raise UserError(f"--dropout-masks {self.dropout_masks!r}: expected one of {list(DROPOUT_MASKS)}")
        self.profile = self.profile.for_protocol(self.protocol)
        self._test_rows: pd.DataFrame | None = None
        self.work_dir = Path(self.work_dir)
        self.report_dir = Path(self.report_dir)
        self.skipped: list[str] = []  # methods found finished by run() (resumed, not rerun)

    def _own_data_spec(self, spec: ProtocolSpec) -> ProtocolSpec:
        """The protocol's methods and configs on the prepared split ``data``: its folder name names it in the
        report, its manifest says what it was made from, and a CF model trained here uses ``own_cf_config``."""
        from collab_llm.errors import UserError
        from collab_llm.fingerprint import split_manifest

        self.data = Path(self.data)
        task = split_task(self.data)
        if task != self.protocol:
            raise UserError(f"--data {self.data}: a {task} split, not a {self.protocol} one (leave --protocol out, "
                            "compare reads it from the split)")
        manifest = split_manifest(self.data)
        return replace(spec, dataset=str(manifest.get("source")), prepare_protocol=str(manifest.get("protocol")),
                       split_name=self.data.resolve().name, cf_config=spec.own_cf_config or spec.cf_config)

    def _own_cf_spec(self, spec: ProtocolSpec) -> ProtocolSpec:
        """The given CF export must be the protocol's kind of model (``sasrec`` next-item, ``mf`` Yes/No)."""
        from collab_llm.errors import UserError
        from collab_llm.fingerprint import read_json

        self.cf_model = Path(self.cf_model)
        raw = read_json(self.cf_model / "config.json", "CF model config (--cf-model)")
        kind = raw.get("model_type") if isinstance(raw, dict) else None
        if kind != spec.cf_method:
            raise UserError(f"--cf-model {self.cf_model}: a {kind!r} model; the {self.protocol} methods need a "
                            f"{spec.cf_method!r} model (collab-llm cf fit --config {spec.own_cf_config or spec.cf_config})")
        return spec

    def _check_foldable(self, spec: ProtocolSpec) -> None:
        """A method that injects the MF folded (``cf_fold_biases``, e.g. ``head_l4_user``) needs the given MF to
        have bias terms: refused here, before any run, rather than when that method's run starts."""
        from collab_llm.errors import UserError
        from collab_llm.fingerprint import read_json

        folding = [m for m in self.methods if m in spec.llm_methods and self.model_config(m).cf_fold_biases]
        raw = read_json(Path(self.cf_model) / "config.json", "CF model config (--cf-model)")
        if folding and not (isinstance(raw, dict) and raw.get("use_bias")):
            raise UserError(f"--cf-model {self.cf_model}: an MF without bias terms, but {folding} inject MF's biases "
                            "folded into its embeddings: train it with --model.init_args.use_bias true, or leave "
                            f"{folding} out of --methods")

    @property
    def split_dir(self) -> Path:
        if self.data is not None:
            return self.data
        return self.work_dir / (self.spec.split_name + self._seed_suffix)

    @property
    def cf_dir(self) -> Path:
        if self.cf_model is not None:
            return self.cf_model
        name = self.spec.split_name
        if self.data is not None:  # a user's split: its name alone may be reused by another split
            from collab_llm.fingerprint import short

            name = f"{name}-{short(self.split_sha256())[:8]}"
        # a profile that caps the CF model's epochs (quick: 8) trains its own, so which profile ran first in a work
        # folder never changes another's CF model (and its report)
        cap = self.profile.cf_max_epochs
        epochs = "" if cap is None else f"-ep{cap}"
        return self.work_dir / "cf" / f"{self.spec.cf_method}_{name}{self._seed_suffix}{epochs}"

    def split_sha256(self) -> str:
        """The split's fingerprint (the hash of its manifest, which lists every table's sha256)."""
        from collab_llm.fingerprint import split_sha256

        return split_sha256(self.split_dir)

    @property
    def _seed_suffix(self) -> str:
        """Work folders of seed 0 keep their plain names; another seed prepares and trains its own."""
        return "" if self.seed == 0 else f"-seed{self.seed}"

    def run_dir(self, method: str) -> Path:
        return self.report_dir / "runs" / method

    def backbone_path(self) -> str:
        """``--backbone``, else the default backbone in the cache (:func:`collab_llm.assets.resolve_backbone`); the
        MovieLens presets fetch the assets first (a first run downloads them), a user's split does not need them."""
        from collab_llm.assets import ensure_assets, resolve_backbone

        if self.backbone is None and self.data is None:
            ensure_assets(log=self.log)
        return resolve_backbone(self.backbone, flag="--backbone")

    # ------------------------------------------------------------------ stages
    def prepare(self) -> None:
        """Prepare the split (once) and train the CF model (once); both are reused by every run."""
        from collab_llm import data
        from collab_llm.assets import ensure_assets

        if not self.reusable_split():
            paths = ensure_assets(log=self.log)
            self.log(f"[compare] preparing {self.spec.dataset} / {self.spec.prepare_protocol} -> {self.split_dir}")
            folder = paths.ml100k if self.spec.dataset == "ml-100k" else paths.ml1m
            raw = data.read_dataset(self.spec.dataset, folder)
            if self.spec.prepare_protocol in ("loo", "llara"):
                data.prepare_nextitem(raw, self.split_dir, protocol=self.spec.prepare_protocol, seed=self.seed)
            else:
                data.prepare_yesno(raw, self.split_dir, preset=self.spec.prepare_protocol, seed=self.seed)
        if not self.reusable_cf():
            self.log(f"[compare] training the CF model ({self.spec.cf_method}) -> {self.cf_dir}")
            from cf_models.cli import fit

            args = self.cf_args()
            start = time.perf_counter()
            res = fit(args)
            self.log(f"[compare] CF model trained in {time.perf_counter() - start:.0f} s: "
                     f"{json.dumps({k: round(v, 4) for k, v in res.test_metrics.items()})}")

    def cf_args(self) -> list[str]:
        args = ["--config", str(self.spec.cf_config), "--data.init_args.split_dir", str(self.split_dir),
                "--export_dir", str(self.cf_dir), "--seed_everything", str(self.seed)]
        if self.profile.cf_max_epochs is not None:
            args += ["--trainer.max_epochs", str(self.profile.cf_max_epochs)]
        return args

    def test_rows(self) -> pd.DataFrame:
        """The shared test rows (read once, after the split is prepared): what every method is scored on."""
        if self._test_rows is None:  # the LLM runs' own test sample (their DataSettings)
            self._test_rows = self.data_settings().test_rows(pd.read_parquet(self.split_dir / "test.parquet"))
        return self._test_rows

    def llm_run(self, method: str) -> LLMRun:
        """The LightningCLI run of an LLM method: the trainer, data and model fragments with the profile's budget,
        this comparison's seed, split, CF model and backbone, and the method's own overrides."""
        p = self.profile
        start, stage = split_method(method)
        fragments = self.model_fragments(method)
        model = composed_model(fragments)
        head = model.scorer == "head"  # scores items without generating text; aligns on the budget's prompts
        regime = self.regime(method)
        return LLMRun(
            fragments=(CONFIGS / "llm" / "trainer" / "cpu.yaml", self.spec.data_config, *fragments),
            seed_everything=self.seed,
            model=ModelSettings(
                backbone_path=self.backbone_path(), dtype=p.dtype, seed=self.seed, n_bootstrap=p.n_bootstrap,
                warmup_steps=p.warmup_steps,
                cf_model_path=self.cf_dir if self.uses_cf_model(method) else None,
                # a preference stage starts from (and is held to) its start's finished run of this report
                preference_start_from=None if stage is None else self.run_dir(start) / "bundle",
                regime=None if stage is None else regime,
                # CoLLM within the shared budget: stage 1 (LoRA, text prompts) is the first half of the steps
                stage1_steps=max(1, p.llm_steps // 2) if regime == "two_stage" else None,
                template=None if self.item_word is None else with_wording(str(model.template), self.item_word),
                eval_generation=(not head and p.generate) if self.protocol == "nextitem" else (False if head else None),
                max_new_tokens=p.max_new_tokens if self.protocol == "nextitem" else None,
                head_init_rows=p.llm_steps * p.batch_size if head else None,
                adapter=None if self.dropout_masks is None else {"init_args": {"dropout_masks": self.dropout_masks}},
            ),
            data=self.data_settings(),
            trainer=TrainerSettings(max_steps=p.llm_steps, save_dir=self.run_dir(method)),
        )

    def data_settings(self) -> DataSettings:
        """The data overrides every LLM method shares, the test sample included (:meth:`test_rows`)."""
        p = self.profile
        return DataSettings(data_dir=self.split_dir, batch_size=p.batch_size, eval_batch_size=p.eval_batch_size,
                            seed=self.seed, test_sample=p.test_rows,
                            test_sample_seed=None if p.test_rows is None else self.seed,
                            train_table=self.spec.train_table)

    def commands(self) -> list[str]:
        """The command behind each method, as its report records it, without running anything: the budget's
        overrides spelled out (``compare --dry-run``; this is how a profile's budget is written down for users),
        then for an LLM method the ``collab-llm test`` of its last checkpoint (compare tests the trained model)."""
        out = []
        for method in self.methods:
            if method != self.spec.cf_method:
                run = self.llm_run(method)
                ckpt = run.trainer.save_dir / run.trainer.log_name / "version_0" / "checkpoints" / "last.ckpt"
                out.append(f"# {method}\n{run.command()}\n{run.command('test')} --ckpt_path {shlex.quote(str(ckpt))}")
            elif self.cf_model is not None:
                out.append(f"# {method}: the CF model alone, given: --cf-model {self.cf_dir}")
            else:
                out.append(f"# {method}: the CF model alone, trained once\ncollab-llm cf fit {shlex.join(self.cf_args())}")
        return out

    def model_fragments(self, method: str) -> tuple[Path, ...]:
        """The model fragments of a method, in order (a preference stage: its start's, then the stage's)."""
        start, stage = split_method(method)
        return (self.spec.llm_methods[start],) + ((PREFERENCE_STAGES[stage],) if stage is not None else ())

    def model_config(self, method: str) -> Any:
        """The ``model`` arguments a method's fragments compose to (:func:`collab_llm.runs.composed_model`)."""
        return composed_model(self.model_fragments(method))

    def regime(self, method: str) -> str:
        """The ``model.regime`` of a method (a preference stage: ``text`` after a text-only start, else ``joint``)."""
        start, stage = split_method(method)
        regime = str(self.model_config(start).regime)
        return regime if stage is None or regime == "text" else "joint"

    def base_record(self, method: str) -> dict[str, Any]:
        return {"protocol": f"{self.protocol}:{self.spec.split_name}", "method": method, "profile": self.profile.name,
                "seed": self.seed}

    def run_cf_alone(self) -> dict[str, Any]:
        method = self.spec.cf_method
        metrics_path = self.cf_dir / "metrics.json"
        train_s = float(json.loads(metrics_path.read_text()).get("train_seconds", float("nan"))) if metrics_path.exists() else float("nan")
        from cf_models.base import CFModel

        n_params = sum(p.numel() for p in CFModel.from_pretrained(self.cf_dir).parameters())
        start = time.perf_counter()
        est, frame = cf_alone_run(self.protocol, self.cf_dir, self.test_rows(), self.profile.n_bootstrap)
        eval_s = time.perf_counter() - start
        predictions = self.run_dir(method) / "predictions_test.parquet"
        with atomic_file(predictions, "wb") as handle:
            frame.to_parquet(handle)
        if self.cf_model is not None:  # given, not trained here
            command, config = f"given: --cf-model {self.cf_dir}", str(self.cf_dir / "config.json")
        else:
            command, config = "collab-llm cf fit " + shlex.join(self.cf_args()), config_name(self.spec.cf_config)
        base = self.base_record(method) | {
            "train_s": train_s, "eval_s": eval_s, "trainable_params": int(n_params), "command": command, "config": config,
        }
        return {"records": estimates_to_records(est, base), "loss_curve": [], "predictions": str(predictions)}

    def run_llm(self, method: str) -> dict[str, Any]:
        from collab_llm import scoring
        from collab_llm.llm_cli import build_cli

        run = self.llm_run(method)
        self.log(f"[compare] {method}: training {self.profile.llm_steps} steps x {self.profile.batch_size} prompts")
        start = time.perf_counter()
        with warnings.catch_warnings():
            # we pass args on purpose while sys.argv holds this command's own arguments
            warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter.*")
            cli = build_cli(["fit", *run.args()])  # (quiet_known_noise: no litlogger tip, no known deprecations)
        train_s = time.perf_counter() - start
        model, trainer = cli.model, cli.trainer
        self.log(f"[compare] {method}: trained in {train_s:.0f} s; evaluating")
        start = time.perf_counter()
        trainer.test(model, datamodule=cli.datamodule, verbose=False)
        eval_s = time.perf_counter() - start
        frame = model.predictions["test"]
        expected = self.test_rows()
        if "user" in frame and frame["user"].tolist() != expected["user"].tolist():
            raise RuntimeError(f"[compare] {method}: scored {len(frame)} test rows that differ from the "
                               f"{len(expected)} shared ones (users out of order or missing)")
        n_params = sum(p.numel() for p in model.trainable_parameters())  # LoRA + projector (+ iLoRA gate)
        base = self.base_record(method) | {
            "train_s": train_s, "eval_s": eval_s, "trainable_params": int(n_params),
            "command": run.command(),
            "config": " + ".join(config_name(p) for p in self.model_fragments(method)),
        }
        n = self.profile.n_bootstrap
        if self.protocol == "nextitem":
            scores = torch.tensor(np.stack(frame["scores"].to_numpy()), dtype=torch.float32)
            target = torch.tensor(frame["target_index"].to_numpy(), dtype=torch.long)
            records = estimates_to_records(scoring.ranking_metrics(scores, target, n_resamples=n), base)
            if self.profile.generate and model.eval_generation:  # a head run generates no text
                choices = [None if c is None or (isinstance(c, float) and math.isnan(c)) else int(c)
                           for c in frame["choice"]]
                records += estimates_to_records(scoring.generation_metrics(choices, target, n_resamples=n), base,
                                                prefix="gen_")
        else:
            est = scoring.yes_no_metrics(frame["user"].to_numpy(), frame["label"].to_numpy(),
                                         frame["score"].to_numpy(), frame["warm"].to_numpy(), n_resamples=n)
            records = estimates_to_records(est, base)
        bundle = self.export_bundle(method, model, records, base["command"])
        return {"records": records, "loss_curve": read_loss_curve(Path(trainer.logger.log_dir) / "metrics.csv"),
                "predictions": str(Path(trainer.logger.log_dir) / "predictions_test.parquet"), "bundle": str(bundle)}

    def export_bundle(self, method: str, model: Any, records: list[dict[str, Any]], command: str) -> Path:
        """Write the trained run as a bundle (adapter, projector, CF model, gate, card) under its run folder."""
        metrics = {r["metric"] if r.get("subset", "all") == "all" else f"{r['subset']}/{r['metric']}": float(r["value"])
                   for r in records}
        return model.recommender.save_pretrained(
            self.run_dir(method) / "bundle", metrics=metrics, command=command, stage=model.training_stage(),
            made_from={**model.made_from(), **self.run_fingerprint(method), "template": model.hparams.template},
        )

    # ------------------------------------------------------------------ fingerprints and reuse
    def uses_cf_model(self, method: str) -> bool:
        return method == self.spec.cf_method or split_method(method)[0] != "tallrec"

    def run_fingerprint(self, method: str, early: bool = False) -> dict[str, Any]:
        """What a run is made from: seed, budget (profile), method config (the hash of its config files),
        backbone (path + config hash; LLM methods), and unless ``early``: the split's and the CF model's
        fingerprints. Two runs with the same fingerprint are the same run."""
        from collab_llm.fingerprint import backbone_fingerprint, canonical_sha256, cf_sha256

        if method == self.spec.cf_method:
            # the MovieLens presets keep their config's hash; on a user's split the CF model's own fingerprint
            # (cf_model_sha256 below: weights + the config it was trained with) says it all, trained here or given
            configs = [self.spec.cf_config] if self.data is None and self.cf_model is None else []
        else:
            configs = [CONFIGS / "llm" / "trainer" / "cpu.yaml", self.spec.data_config, *self.model_fragments(method)]
        out: dict[str, Any] = {
            "seed": self.seed, "profile": json.loads(json.dumps(asdict(self.profile))),
            "method_config_sha256": canonical_sha256({config_name(c): c.read_text() for c in configs}),
            "backbone": None if method == self.spec.cf_method else backbone_fingerprint(self.backbone_path()),
        }
        if self.item_word is not None and method != self.spec.cf_method:
            out["item_word"] = self.item_word  # absent when the templates' own words are used (as before)
        if self.dropout_masks is not None and method != self.spec.cf_method:
            out["dropout_masks"] = self.dropout_masks  # absent: the method configs' (peft's Bernoulli masks)
        if not early:
            out["split_sha256"] = self.split_sha256()
            out["cf_model_sha256"] = cf_sha256(self.cf_dir) if self.uses_cf_model(method) else None
        return out

    def finished(self, method: str, early: bool = False) -> bool:
        """Whether ``method`` has a finished run with this comparison's fingerprint (then it is skipped).

        A finished run with another fingerprint is refused, naming what differs (use another
        ``--report-dir`` or delete the run folder); ``early`` checks what is known before the split and
        CF model are ready (seed, budget, backbone, method config)."""
        from collab_llm.errors import UserError
        from collab_llm.fingerprint import read_json, short

        path = self.run_dir(method) / "result.json"
        if not path.exists():
            return False
        stored = read_json(path, "compare run result")
        if not isinstance(stored, dict):
            raise UserError(f"{path}: not a compare run result (expected a JSON object); delete {path.parent}")
        fingerprint = stored.get("fingerprint")
        if not isinstance(fingerprint, dict):  # written before fingerprints: the budget and the records' seed
            records = stored.get("records") or []
            fingerprint = {"profile": stored.get("profile"),
                           "seed": records[0].get("seed") if records and isinstance(records[0], dict) else None}
        current = self.run_fingerprint(method, early=early)
        labels = {"seed": "seed", "profile": "budget", "backbone": "backbone", "method_config_sha256": "method config",
                  "split_sha256": "data split", "cf_model_sha256": "CF model", "item_word": "item wording",
                  "dropout_masks": "dropout masks"}
        optional = ("item_word", "dropout_masks")  # absent = the templates' own words, the configs' masks
        for key, label in labels.items():
            if key in optional:
                fingerprint, current = {key: None, **fingerprint}, {key: None, **current}
            if key not in current or key not in fingerprint:
                continue
            old, new = fingerprint[key], current[key]
            if key == "backbone" and isinstance(old, dict) and isinstance(new, dict):
                if old.get("config_sha256") == new.get("config_sha256") and old.get("path") == new.get("path"):
                    continue
            elif old == new:
                continue
            show = (lambda v: short(v) if isinstance(v, str) and len(v) == 64 else v)
            raise UserError(f"{path}: this run finished under another {label} ({show(old)}), not {show(new)}; "
                            f"use another --report-dir or delete {path.parent} to run it again")
        return True

    def reusable_split(self) -> bool:
        """True if the work folder holds the split this comparison needs; False if there is none; a folder
        compare would not have made (another protocol, dataset or seed, or not a split) is refused."""
        from collab_llm.errors import UserError
        from collab_llm.fingerprint import split_manifest, verify_split

        folder = self.split_dir
        if self.data is not None:  # the user's split: checked (checksums), never prepared or replaced here
            verify_split(folder)
            return True
        if _absent(folder):
            return False
        hint = "use another --work-dir, or move the folder away"
        manifest_path = folder / "manifest.json"
        if folder.is_symlink() or not folder.is_dir() or not manifest_path.is_file():
            raise UserError(f"{folder}: not a split folder compare made (no manifest.json); {hint}")
        verify_split(folder)
        manifest = split_manifest(folder)
        want = {"protocol": self.spec.prepare_protocol, "source": self.spec.dataset, "seed": self.seed}
        got = {"protocol": str(manifest.get("protocol", "")).rsplit("/", 1)[-1], "source": manifest.get("source"),
               "seed": manifest.get("seed")}
        if got != want:
            raise UserError(f"{folder}: holds a split of {got['source']} / {got['protocol']} / seed {got['seed']}, not the "
                            f"{want['source']} / {want['protocol']} / seed {want['seed']} this comparison needs; {hint}")
        return True

    def reusable_cf(self) -> bool:
        """True if the work folder holds a finished CF model (with its metrics) trained on this split and
        seed; False if there is none or a CF export without metrics (a killed run's: trained again); a
        folder that is not a CF export, or one trained on another split or seed, is refused."""
        from cf_models.base import CFModel, is_cf_export, is_finished_export
        from collab_llm.errors import UserError
        from collab_llm.fingerprint import check_cf_matches_split

        folder = self.cf_dir
        if self.cf_model is not None:  # the user's CF model: checked against the split, never trained here
            problem = is_cf_export(folder) if folder.is_dir() else "is not a folder"
            if problem is not None:
                raise UserError(f"--cf-model {folder}: {problem}; pass a folder written by collab-llm cf fit --export_dir")
            model = CFModel.from_pretrained(folder)  # verifies the checksums
            check_cf_matches_split(folder, model.n_items, model.made_from, self.split_dir)
            return True
        if _absent(folder):
            return False
        problem = "is a symbolic link" if folder.is_symlink() else is_cf_export(folder)
        if problem is not None:
            raise UserError(f"{folder}: {problem}; compare did not make it: use another --work-dir, or move it away")
        if not is_finished_export(folder):
            self.log(f"[compare] {folder}: a CF model without its metrics (an interrupted export): training it again")
            return False
        model = CFModel.from_pretrained(folder)  # verifies the checksums
        made = model.made_from or {}
        check_cf_matches_split(folder, model.n_items, made, self.split_dir)
        if made.get("seed") is not None and made.get("seed") != self.seed:
            raise UserError(f"{folder / 'config.json'}: the CF model was trained with seed {made.get('seed')}, "
                            f"this comparison uses seed {self.seed}; use another --work-dir, or move it away")
        return True

    def run(self) -> Path:
        """Run every method not finished yet, then rewrite the report. Returns ``results.md``.

        The report folder is locked meanwhile (:func:`collab_llm.io.output_lock`): a second compare into
        it is refused, naming this one's process."""
        from collab_llm.console import quiet_known_noise
        from collab_llm.io import output_lock

        quiet_known_noise()
        with output_lock(self.report_dir, command="collab-llm compare"):
            return self._run()

    def _run(self) -> Path:
        from collab_llm.console import StageClock, duration

        for method in self.methods:  # before any work: a finished run of another seed / budget / backbone
            self.finished(method, early=True)
        clock = StageClock(self.methods, self.log, kind=lambda m: "CF" if m == self.spec.cf_method else "LLM")
        self.prepare()
        self.log(f"[compare] split and CF model ready (elapsed {duration(clock.clock() - clock.start)})")
        test_rows = self.test_rows()
        for method in self.methods:  # methods run in order: a preference stage after its start
            result_path = self.run_dir(method) / "result.json"
            if self.finished(method):
                clock.skipped(method, f"already finished ({result_path}), skipped")
                self.skipped.append(method)
                continue
            clock.started(method)
            torch.manual_seed(self.seed)
            result = self.run_cf_alone() if method == self.spec.cf_method else self.run_llm(method)
            result["profile"] = asdict(self.profile)
            result["fingerprint"] = self.run_fingerprint(method)
            result["n_test_rows"] = len(test_rows)
            write_json(result_path, result)
            clock.finished(method)
        return self.write()

    def write(self) -> Path:
        results = [self.run_dir(m) / "result.json" for m in self.methods if (self.run_dir(m) / "result.json").exists()]
        records = report_records(results)
        curves = {}
        for m, path in zip(self.methods, results):
            curve = json.loads(path.read_text()).get("loss_curve") or []
            if curve:
                curves[m] = [tuple(x) for x in curve]
        words = f", item wording `{self.item_word}`" if self.item_word is not None else ""
        if self.dropout_masks is not None:
            words += f", LoRA dropout masks `{self.dropout_masks}`"
        pre = (f"Protocol `{self.protocol}` ({self.spec.split_name}), profile `{self.profile.name}` "
               f"({self.profile}), seed {self.seed}{words}. {INTERVALS}")
        path = write_report(records, self.report_dir, curves, title=f"collab-llm: {self.protocol}", preamble=pre)
        self.log("\n" + markdown_table(records) + differences_table(records))
        self.log(f"[compare] report: {path}")
        return path


def _absent(folder: Path) -> bool:
    """No work folder there yet: missing, or an empty real directory (nothing to reuse, nothing to refuse)."""
    return not folder.exists() or (folder.is_dir() and not folder.is_symlink() and not any(folder.iterdir()))


def read_loss_curve(metrics_csv: Path) -> list[tuple[int, float]]:
    """``(step, train/loss)`` pairs from a Lightning CSVLogger file ([] if absent)."""
    if not metrics_csv.exists():
        return []
    frame = pd.read_csv(metrics_csv)
    col = next((c for c in ("train/loss_step", "train/loss") if c in frame.columns), None)
    if col is None:
        return []
    frame = frame.dropna(subset=[col])
    return [(int(s), float(v)) for s, v in zip(frame["step"], frame[col])]
