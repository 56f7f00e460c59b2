"""The Lightning module: a trainer around a :class:`collab_llm.recommender.Recommender` (a frozen LLM with a
LoRA or iLoRA adapter, fed prompts whose placeholders hold CF soft tokens).

The Recommender (``self.recommender``) embeds, routes, computes the losses and scores; this module adds
the training regimes, optimiser groups, logging, evaluation aggregation and checkpoint hooks.

Trainable: the adapter (LoRA; iLoRA: + its gate network) and the projector (fp32, also when the backbone
runs bf16). Frozen: the backbone and the CF model (``requires_grad=False``, never in the optimizer, never in
checkpoints). Checkpoints hold only the trainable tensors (plus optimizer / scheduler state), so
a checkpoint of a 135M-parameter backbone weighs a few MB; resuming continues exactly.

Training regimes (``regime``: text, joint, curriculum, two_stage; :mod:`collab_llm.regimes`) choose the
prompt view of each batch (:mod:`collab_llm.collate`) and the groups it moves, as functions of the GLOBAL
step (not of a DataLoader worker's counter): identical on every DDP rank and after a resume. CoLLM's two
stages are one run, one checkpoint holding both.

A group that must not move at a step (projector on text-only steps, LoRA in stage 2) has its
gradients set to ``None`` right before the optimizer step, so AdamW skips it (no momentum, no
weight decay); the projector also enters text-only losses as ``0 * sum(params)`` so that DDP sees
every parameter used.

Randomness (LoRA dropout) is re-seeded from ``(seed, global step, rank)`` inside every training
step (``torch.random.fork_rng``), so an interrupted and resumed run reproduces the uninterrupted one.

Evaluation (validation / test) uses :mod:`collab_llm.scoring` on the prompt view (left-padded):
next-item: log-likelihood ranking of the candidates -> HR@1, HR@5, NDCG@5, NDCG@10, MRR (and, with
``eval_generation``, generated HR@1 + ValidRatio); yes/no: P(Yes) -> AUC, UAUC (+ users counted),
warm / cold. Per-row predictions are kept in :attr:`CollabLLM.predictions` and written to
``<log_dir>/predictions_<stage>.parquet`` after a test or a predict run; intervals are 95% bootstrap CIs.

iLoRA is ``CollabLLM(adapter=ILoRA(...))`` (:mod:`collab_llm.adapters`): the Recommender routes its
per-sample gate before every forward / generate of the LLM; its gate network trains (and is frozen in
CoLLM's stage 2) with the LoRA, and training logs ``train/gate_entropy`` and ``train/gate_weight_{k}``.

Preference stage (``preference``, :mod:`collab_llm.sdpo`): the module starts from a supervised run's
trainable tensors and trains the same parts with the S-DPO loss (DPO with one negative) instead of the
language-modelling loss; the frozen reference is that start, swapped in for a no-grad pass.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import lightning as L
import pandas as pd
import torch
from torch import nn

from collab_llm.adapters import ILoRA, LoRA
from collab_llm.backbone import DType
from collab_llm.errors import UserError
from collab_llm.evaluation import eval_metrics, gather_rows, write_predictions
from collab_llm.prompts import Mode
from collab_llm.provenance import MADE_FROM_KEY, check_cf_against_data, check_checkpoint_made_from, run_made_from
from collab_llm.recommender import HeadLoss, Recommender, Scorer, upgrade_state_keys
from collab_llm.regimes import Regime, check_regime, eval_mode, groups_moved, hybrid_probability, train_mode
from collab_llm.schedules import warmup_cosine
from collab_llm.sdpo import PreferenceConfig, PreferenceStage
from projectors.mlp import ProjectorKind

EvalPrompt = Literal["auto", "text", "hybrid"]
_EVAL_SETTINGS = ("eval_prompt", "eval_generation", "max_new_tokens", "num_beams", "length_normalize", "n_bootstrap",
                  "predictions_dir")


def _recommender_part(name: str) -> property:
    """A read-only property of :class:`CollabLLM` returning ``self.recommender.<name>``."""
    return property(lambda self: getattr(self.recommender, name), doc=f"``self.recommender.{name}``")


class CollabLLM(L.LightningModule):
    """Adapter (+ projector) training of a :class:`collab_llm.recommender.Recommender` on recommendation prompts.

    Args:
        backbone_path: local HF model folder.
        template: prompt template name or YAML path (the datamodule's; the CLI links them). Gives
            the task and the answer words.
        regime: see the module docstring.
        cf_model_path: folder of a CF model saved with ``save_pretrained`` (needed unless
            ``regime="text"``).
        cf_fold_biases: inject the folded export of that MF (it needs ``use_bias``): users ``[p_u, 1, b_u]``,
            items ``[q_i, b_i, 1]``, so the soft tokens carry MF's biases
            (:meth:`cf_models.mf.MatrixFactorization.folded`); the saved model is not changed. Not a paper's
            setting (CoLLM injects the embeddings); ``head_l4_user`` uses it.
        projector: projector kind (``"llara_mlp"``, ``"collm_mlp"``, ``"linear"``).
        dtype: backbone weights dtype; trainable parts stay float32.
        adapter: the adapter spec (:mod:`collab_llm.adapters`): :class:`~collab_llm.adapters.LoRA` (rank,
            alpha, dropout, target modules; ``None``: ``LoRA()``, r=8, alpha=16, dropout 0.05, the
            architecture's targets) or :class:`~collab_llm.adapters.ILoRA` (iLoRA's gated experts; needs a
            CF model with a sequence representation, SASRec). In a config: ``adapter: {class_path:
            collab_llm.adapters.ILoRA, init_args: {...}}``.
        learning_rate, weight_decay: AdamW.
        warmup_steps: linear warm-up, then cosine decay to 0 at ``total_steps``.
        total_steps: schedule length; ``None``: ``trainer.estimated_stepping_batches``.
        curriculum_steps: steps for the hybrid probability to reach 1 (``"curriculum"``);
            ``None``: the whole run (``trainer.estimated_stepping_batches``).
        stage1_steps: length of CoLLM's stage 1 (``"two_stage"``).
        eval_prompt: prompt view for evaluation; ``"auto"``: text for ``"text"`` and during stage
            1, else hybrid.
        eval_generation: next-item: also generate answers and parse them (HR@1, ValidRatio).
        max_new_tokens, num_beams: generation settings.
        length_normalize: rank candidates by mean instead of summed token log-likelihood.
        yes_no_loss: Yes/No tasks: ``"lm"`` (TALLRec): cross-entropy of the answer word + EOS, scored
            by ``P(Yes)`` = softmax over the Yes/No logits; ``"bce"`` (CoLLM): binary cross-entropy
            of the Yes logit at the answer position against the label, scored by ``sigmoid`` of
            that logit (one forward of the prompt, no answer tokens).
        gradient_checkpointing: non-reentrant activation checkpointing of the backbone.
        n_bootstrap: bootstrap resamples for the test-time confidence intervals.
        predictions_dir: folder for ``predictions_test.parquet`` / ``predictions_predict.parquet``;
            ``None``: the logger's ``log_dir`` (nothing is written when there is neither).
        seed: seeds the curriculum draws and per-step dropout.
        scorer: ``"likelihood"`` (the papers): the answer's likelihood (next-item: each candidate
            title's log-likelihood; Yes/No: the Yes/No logits). ``"head"``: an
            :class:`collab_llm.heads.ItemScoringHead` reads the LLM's last hidden state of the prompt
            and scores items against their CF embeddings (next-item: the candidates; Yes/No: the
            target item, sigmoid); trained with ``head_loss``. Needs a CF model.
        head_loss: next-item with ``scorer="head"``: softmax cross-entropy over the row's stored
            ``"candidates"`` or over the whole ``"catalog"`` (E4SRec). Yes/No heads use BCE.
        projector_lr: learning rate of the projector and head (own AdamW group, same schedule);
            ``None``: ``learning_rate``.
        head_init: how the head starts, before the first training step (never on a resume):
            ``"least_squares"``: an alignment pass runs ``head_init_rows`` training prompts through
            the frozen LLM (forward only), standardises the hidden states and fits the query by
            ridge regression (``head_ridge``) onto the true next items' CF embeddings (Yes/No: onto
            the labels, :meth:`collab_llm.heads.ItemScoringHead.fit_bilinear`); ``"standardize"``:
            the same pass sets only the feature statistics (random query); ``"none"``: raw states.
        head_init_rows: training rows of the alignment pass (the first rows of a ``seed`` shuffle;
            the same on every DDP rank).
        head_ridge: ridge penalty of the least-squares fit.
        fine_tune: ``False`` (``scorer="head"`` only): the alignment pass is the whole training; the
            training steps that follow do nothing (no forward, no update). The recipe chosen on the
            planted validation rows (README, "Injection that learns").
        train_lora: ``False`` keeps the LoRA weights at their initialisation (``lora_B = 0``: the
            plain backbone); an ablation of the head recipe.
        head_target: what the Yes/No alignment pass fits (next-item: only ``"default"``, the true next
            item's CF embedding): ``"default"``, the labels through the bilinear form
            (:meth:`collab_llm.heads.ItemScoringHead.fit_bilinear`); ``"signed_item"``, least squares
            of the query onto ``+e_item`` for a Yes row and ``-e_item`` for a No row (the labels, one
            d-dimensional target per row); ``"user"``, least squares onto the user's CF embedding
            (MF's user vector, which the prompt injects: the head then recovers MF's score from the
            LLM's state, so its AUC is bounded by MF's).
        head_layer: which hidden state the head reads: ``None``, the final one (after the last
            block and the final norm); ``k``, the output of decoder block ``k`` (1-based), and the
            forward stops there (:func:`collab_llm.scoring.last_hidden_state`).
        preference: a preference stage (:class:`collab_llm.sdpo.PreferenceConfig`: ``start_from``,
            ``beta``, ``num_negatives``): start from that supervised checkpoint or bundle and train
            with S-DPO (DPO for one negative) against it, frozen, as the reference. Next-item
            likelihood scoring only; ``None``: the supervised losses above.
    """

    def __init__(
        self,
        backbone_path: str,
        template: str,
        regime: Regime = "joint",
        cf_model_path: str | None = None,
        projector: ProjectorKind = "llara_mlp",
        dtype: DType = "float32",
        adapter: LoRA | ILoRA | None = None,
        learning_rate: float = 1e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        total_steps: int | None = None,
        curriculum_steps: int | None = None,
        stage1_steps: int = 0,
        eval_prompt: EvalPrompt = "auto",
        eval_generation: bool = False,
        max_new_tokens: int = 32,
        num_beams: int = 1,
        length_normalize: bool = False,
        yes_no_loss: Literal["lm", "bce"] = "lm",
        gradient_checkpointing: bool = False,
        n_bootstrap: int = 1000,
        seed: int = 0,
        predictions_dir: str | None = None,
        scorer: Scorer = "likelihood",
        head_loss: HeadLoss = "candidates",
        projector_lr: float | None = None,
        train_lora: bool = True,
        head_init: Literal["none", "standardize", "least_squares"] = "least_squares",
        head_init_rows: int = 512,
        head_ridge: float = 100.0,
        fine_tune: bool = True,
        head_target: Literal["default", "signed_item", "user"] = "default",
        head_layer: int | None = None,
        preference: PreferenceConfig | None = None,
        cf_fold_biases: bool = False,
    ) -> None:
        super().__init__()
        # Evaluation-only settings stay out of the checkpoint's hyper-parameters: LightningCLI
        # re-applies those over the command line on `test --ckpt_path`, and these must stay settable.
        self.save_hyperparameters(ignore=list(_EVAL_SETTINGS))
        self.eval_prompt: EvalPrompt = eval_prompt
        self.eval_generation = eval_generation
        self.max_new_tokens = max_new_tokens
        self.num_beams = num_beams
        self.length_normalize = length_normalize
        self.n_bootstrap = n_bootstrap
        self.predictions_dir = predictions_dir
        check_regime(regime, cf_model_path is not None, curriculum_steps, stage1_steps)
        self.regime = regime
        if scorer == "head":
            if regime == "text" or cf_model_path is None:
                raise ValueError("scorer='head' scores items against their CF embeddings: it needs cf_model_path "
                                 f"and a hybrid regime (got regime {regime!r})")
            if eval_generation:
                raise ValueError("scorer='head' scores items without generating text; set eval_generation: false")
        if not fine_tune and scorer != "head":
            raise ValueError("fine_tune=False leaves only the head's alignment pass: it needs scorer='head'")
        if head_init not in ("none", "standardize", "least_squares"):
            raise ValueError(f"head_init must be none/standardize/least_squares, got {head_init!r}")
        if head_init_rows < 2:
            raise ValueError(f"head_init_rows must be >= 2, got {head_init_rows}")

        self.recommender = Recommender.build(
            backbone_path, template, cf_model_path=cf_model_path, projector=projector, dtype=dtype, adapter=adapter,
            scorer=scorer, yes_no_loss=yes_no_loss, head_loss=head_loss, head_layer=head_layer,
            head_target=head_target, gradient_checkpointing=gradient_checkpointing, seed=seed,
            cf_fold_biases=cf_fold_biases,
        )
        self.head_init_stats: dict[str, float] = {}
        rec = self.recommender
        if train_lora:
            self.lora_names = [f"recommender.llm.{n}" for n, p in rec.llm.named_parameters() if p.requires_grad]
        else:
            for p in rec.llm.parameters():
                p.requires_grad_(False)
            self.lora_names = []
        trainable = set(self.lora_names)
        if rec.routing is not None:  # iLoRA's gate network: trained, and frozen, with the LoRA
            self.lora_names += [f"recommender.routing.gate_network.{n}" for n, _ in rec.routing.gate_network.named_parameters()]
            trainable |= {f"recommender.routing.gate_network.{k}" for k in rec.routing.gate_network.state_dict()}
        # the "projector" group: projector and head, the new parameters of the injection (own lr)
        self.projector_names: list[str] = []
        for part, module in (("injector.projector", rec.injector.projector), ("head", rec.head)):
            if module is not None:
                self.projector_names += [f"recommender.{part}.{n}" for n, _ in module.named_parameters()]
                trainable |= {f"recommender.{part}.{k}" for k in module.state_dict()}
        self.trainable_keys = trainable
        self.strict_loading = False  # checkpoints hold only trainable tensors; checked in on_load_checkpoint
        self._used_groups: set[str] = set()
        self._run_length: int | None = None
        self._checkpoint_step = 0
        self._eval_rows: list[dict[str, Any]] = []
        self.predictions: dict[str, pd.DataFrame] = {}
        self.last_metrics: dict[str, float] = {}
        self.preference: PreferenceStage | None = None
        self.start_preference(preference)

    def start_preference(self, config: PreferenceConfig | None) -> None:
        """Begin the preference stage (``None``: none): load the start, freeze it as the reference.

        Called last by the constructor, once every trainable part (iLoRA's gate network included) exists.
        """
        if config is None:
            return
        if self.task != "next_item":
            raise UserError(f"model.preference needs a next-item template (answers among candidates); "
                            f"{self.hparams.template!r} is a {self.task} template")
        if self.scorer != "likelihood":
            raise UserError("model.preference trains the answers' likelihoods; set --model.scorer likelihood")
        if self.hparams.gradient_checkpointing:
            raise UserError("model.preference scores answers over the prompt's KV cache, which activation "
                            "checkpointing drops in training; set --model.gradient_checkpointing false")
        self.preference = PreferenceStage.start(self, config)

    def training_stage(self) -> dict[str, Any]:
        """How the trainable tensors were trained, as ``bundle.json`` records it."""
        return self.preference.record() if self.preference is not None else {"name": "supervised"}

    # ------------------------------------------------------------------ parameters
    def trainable_parameters(self) -> list[nn.Parameter]:
        named = dict(self.named_parameters())
        return [named[n] for n in self.lora_names + self.projector_names]

    def configure_optimizers(self) -> Any:
        named = dict(self.named_parameters())
        groups = []
        if self.lora_names:
            groups.append({"params": [named[n] for n in self.lora_names], "lr": self.hparams.learning_rate})
        if self.projector_names:
            lr = self.hparams.projector_lr if self.hparams.projector_lr is not None else self.hparams.learning_rate
            groups.append({"params": [named[n] for n in self.projector_names], "lr": lr})
        optimizer = torch.optim.AdamW(groups, lr=self.hparams.learning_rate, weight_decay=self.hparams.weight_decay)
        total = self.hparams.total_steps
        if total is None:
            total = int(self.trainer.estimated_stepping_batches)
        warmup = self.hparams.warmup_steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, total, warmup))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ regimes
    def hybrid_probability(self, step: int) -> float:
        """P(hybrid prompt) at global step ``step`` for the current regime (:func:`collab_llm.regimes.hybrid_probability`)."""
        length = self.curriculum_length() if self.regime == "curriculum" else 1
        return hybrid_probability(self.regime, step, length, int(self.hparams.stage1_steps))

    def curriculum_length(self) -> int:
        """Steps over which P(hybrid) rises from 0 to 1."""
        if self.hparams.curriculum_steps is not None:
            return int(self.hparams.curriculum_steps)
        if self._run_length is None:
            if self._trainer is None:
                raise RuntimeError("curriculum_steps=None needs a trainer (the run length); set curriculum_steps")
            self._run_length = max(1, int(self.trainer.estimated_stepping_batches))
        return self._run_length

    def on_fit_start(self) -> None:
        self._run_length = None

    def setup(self, stage: str) -> None:
        """Refuse a CF model whose item catalogue is not the data's, before any step (names both folders)."""
        check_cf_against_data(self)

    def made_from(self) -> dict[str, Any]:
        """What this run is made from (recorded in checkpoints and bundles): see :func:`run_made_from`."""
        return run_made_from(self)

    def on_train_start(self) -> None:
        if self.head is None or self.hparams.head_init == "none" or int(self.head.initialized) == 1:
            return  # no head, raw states, or a resumed run (the buffers came with the checkpoint)
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or "train" not in getattr(datamodule, "datasets", {}) or datamodule.collator is None:
            raise RuntimeError("head_init needs a RecDataModule (its training rows and collator); use head_init: none")
        self.initialize_head(datamodule.datasets["train"], datamodule.collator)

    def initialize_head(self, dataset: Any, collator: Any, batch_size: int = 8) -> dict[str, float]:
        """The alignment pass of ``head_init`` (see the class docstring) on ``head_init_rows`` rows of
        ``dataset`` (the first rows of a permutation seeded by ``seed``), collated by ``collator``
        (:meth:`collab_llm.recommender.Recommender.align_head`)."""
        hp = self.hparams
        transfer = (lambda b: self.transfer_batch_to_device(b, self.device, 0)) if self._trainer is not None else None
        self.head_init_stats = self.recommender.align_head(
            dataset, collator, int(hp.head_init_rows), int(hp.seed), hp.head_init, float(hp.head_ridge), batch_size,
            transfer)
        return self.head_init_stats

    def train_mode_at(self, step: int) -> Mode:
        """The prompt view used at global step ``step`` (deterministic in ``(seed, step)``)."""
        return train_mode(self.hybrid_probability(step), step, int(self.hparams.seed))

    def eval_mode(self) -> Mode:
        """The evaluation prompt view: ``eval_prompt``, or for ``"auto"`` :func:`collab_llm.regimes.eval_mode`."""
        if self.eval_prompt != "auto":
            return self.eval_prompt
        step = max(int(self.global_step), self._checkpoint_step)  # test(ckpt_path=...) restores no loop state
        return eval_mode(self.regime, step, int(self.hparams.stage1_steps))

    # ------------------------------------------------------------------ the recommender's parts
    # read-only views of ``self.recommender``'s parts (``module.llm`` is ``module.recommender.llm``)
    llm = _recommender_part("llm")
    injector = _recommender_part("injector")
    head = _recommender_part("head")
    template = _recommender_part("template")
    task = _recommender_part("task")
    tokenizer = _recommender_part("tokenizer")
    placeholder_ids = _recommender_part("placeholder_ids")
    scorer = _recommender_part("scorer")
    yes_no_loss = _recommender_part("yes_no_loss")
    yes_id = _recommender_part("yes_id")
    no_id = _recommender_part("no_id")

    def embed(self, view: dict[str, torch.Tensor], prompt_only: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`collab_llm.recommender.Recommender.embed`."""
        return self.recommender.embed(view, prompt_only)

    def lm_loss(self, batch: dict[str, Any], mode: Mode) -> torch.Tensor:
        """:meth:`collab_llm.recommender.Recommender.lm_loss`."""
        return self.recommender.lm_loss(batch, mode)

    def bce_loss(self, batch: dict[str, Any], mode: Mode) -> torch.Tensor:
        """:meth:`collab_llm.recommender.Recommender.bce_loss`."""
        return self.recommender.bce_loss(batch, mode)

    def head_loss(self, batch: dict[str, Any], mode: Mode) -> torch.Tensor:
        """:meth:`collab_llm.recommender.Recommender.head_loss`."""
        return self.recommender.head_loss(batch, mode)

    def head_scores(self, batch: dict[str, Any], mode: Mode, items: str = "candidates") -> torch.Tensor:
        """:meth:`collab_llm.recommender.Recommender.head_scores`."""
        return self.recommender.head_scores(batch, mode, items)

    def preference_loss(self, batch: dict[str, Any], mode: Mode) -> torch.Tensor:
        """The preference stage's S-DPO loss (:meth:`collab_llm.sdpo.PreferenceStage.loss`); logs its
        rewards, margin and accuracy as ``train/sdpo_*``."""
        out, stats = self.preference.loss(self, batch, mode)
        if self._trainer is not None:
            for key, value in stats.items():
                self.log(f"train/sdpo_{key}", value, batch_size=int(out.per_row.shape[0]))
        return out.loss

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        if not self.hparams.fine_tune:
            return None  # the head was fitted in closed form at train start: nothing left to update
        step = int(self.global_step)
        mode = self.train_mode_at(step)
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(int(self.hparams.seed) * 7_919 + step * 104_729 + int(self.global_rank))
            if self.preference is not None:
                loss = self.preference_loss(batch, mode)
            else:
                loss = self.recommender.loss(batch, mode)
        moved = groups_moved(self.regime, step, int(self.hparams.stage1_steps), mode)
        self._used_groups |= {g for g, names in (("lora", self.lora_names), ("projector", self.projector_names))
                              if g in moved and names}
        if mode == "text" and self.projector_names:
            loss = loss + 0.0 * sum(p.sum() for p in self.injector.projector.parameters())
        self.log("train/loss", loss, prog_bar=True, batch_size=int(batch["users"].shape[0]))
        if self.recommender.routing is not None:  # the gate of the last routed pass (the policy's)
            for key, value in self.recommender.routing.stats().items():
                self.log(f"train/{key}", value, batch_size=int(batch["users"].shape[0]))
        self.log("train/hybrid", float(mode == "hybrid"), batch_size=int(batch["users"].shape[0]))
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        named = dict(self.named_parameters())
        for group, names in (("lora", self.lora_names), ("projector", self.projector_names)):
            if group not in self._used_groups:
                for n in names:
                    named[n].grad = None
        self._used_groups = set()

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def score_batch(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        """Per-row predictions of one batch (next-item: candidate scores; yes/no: P(Yes)) in the evaluation
        prompt view: :meth:`collab_llm.recommender.Recommender.score` with the evaluation settings."""
        return self.recommender.score(batch, self.eval_mode(), self.length_normalize, self.eval_generation,
                                      self.max_new_tokens, self.num_beams)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_rows.extend(self.score_batch(batch))

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_rows.extend(self.score_batch(batch))

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        rows = self.score_batch(batch)
        self._eval_rows.extend(rows)
        return rows

    def on_predict_epoch_start(self) -> None:
        self._eval_rows = []

    def on_predict_epoch_end(self) -> None:
        """Gather every rank's rows and write ``predictions_predict.parquet`` (no metrics; see ``predictions_dir``)."""
        frame = self._gathered_rows()
        self._eval_rows = []
        if frame.empty:
            return
        self.predictions["predict"] = frame
        self._write_predictions("predict")

    def on_validation_epoch_start(self) -> None:
        self._eval_rows = []

    def on_test_epoch_start(self) -> None:
        self._eval_rows = []

    def _gathered_rows(self) -> pd.DataFrame:
        return gather_rows(self._eval_rows, self.trainer.world_size)

    def compute_metrics(self, frame: pd.DataFrame, n_resamples: int) -> dict[str, float]:
        """Metric name -> value (plus ``<name>_ci_low`` / ``_ci_high`` when ``n_resamples > 0``):
        :func:`collab_llm.evaluation.eval_metrics`."""
        return eval_metrics(self.task, frame, n_resamples, self.eval_generation)

    def _finish_eval(self, stage: str, n_resamples: int) -> None:
        frame = self._gathered_rows()
        self._eval_rows = []
        if frame.empty:
            return
        self.predictions[stage] = frame
        metrics = self.compute_metrics(frame, n_resamples)
        if n_resamples == 0:
            metrics = {k: v for k, v in metrics.items() if not k.endswith(("_ci_low", "_ci_high"))}
        self.last_metrics = {f"{stage}/{k}": v for k, v in metrics.items()}
        for key, value in self.last_metrics.items():
            self.log(key, value, sync_dist=False)  # same value on every rank (rows are gathered)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            self._eval_rows = []
            return
        self._finish_eval("val", 0)

    def on_test_epoch_end(self) -> None:
        self._finish_eval("test", int(self.n_bootstrap))
        self._write_predictions("test")

    def _write_predictions(self, stage: str) -> None:
        out = self.predictions_dir if self.predictions_dir is not None else self.trainer.log_dir
        if stage in self.predictions and out is not None and self.trainer.is_global_zero:
            write_predictions(self.predictions[stage], Path(out).expanduser() / f"predictions_{stage}.parquet")

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep only the trainable tensors (LoRA, projector) in ``checkpoint["state_dict"]``; record what
        the run is made from (CF model, backbone, template, split, seed) under ``"collab_llm_made_from"``."""
        state = checkpoint["state_dict"]
        checkpoint["state_dict"] = {k: v for k, v in state.items() if k in self.trainable_keys}
        checkpoint[MADE_FROM_KEY] = self.made_from()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Check what the checkpoint was made from and that it holds exactly the trainable tensors (keys of a
        checkpoint written before the module held a Recommender are renamed first)."""
        check_checkpoint_made_from(self, checkpoint.get(MADE_FROM_KEY))
        checkpoint["state_dict"] = upgrade_state_keys(checkpoint["state_dict"])
        self._checkpoint_step = int(checkpoint.get("global_step", 0))
        keys = set(checkpoint["state_dict"])
        missing = self.trainable_keys - keys
        unexpected = keys - self.trainable_keys
        if missing or unexpected:
            raise KeyError(
                f"checkpoint does not match this model: missing trainable tensors {sorted(missing)[:5]} "
                f"({len(missing)} in all), unexpected {sorted(unexpected)[:5]} ({len(unexpected)} in all)"
            )

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Copies of the trainable tensors (what a checkpoint holds)."""
        return {k: v.detach().clone() for k, v in self.state_dict().items() if k in self.trainable_keys}
