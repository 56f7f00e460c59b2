"""Lightning modules that train the CF backbones, and the callback that restores the best epoch.

- ``SASRecTask``: one causal pass per training window ``history [B, L] -> hidden [B, L, d]``; every
  non-padded position ``t`` predicts ``target[:, t]`` (the next item). ``loss="ce"`` (default) is
  softmax cross-entropy over all items; ``"bpr"`` / ``"bce"`` use one uniform negative per position.
- ``MFTask``: ``loss="bpr"`` on ``(user, item, negative)`` triples, or ``loss="bce"`` on
  ``(user, item, label)`` rows (CoLLM's MF on the Yes/No protocol).

Validation and test delegate to the data module's evaluator (``cf_models.evaluate``); metrics are
logged as ``valid/<name>`` and ``test/<name>`` (e.g. ``valid/ndcg@10``, ``test/auc``).
``n_users`` / ``n_items`` are linked from the data module by the CLI (``cf_models.cli``).
"""

from __future__ import annotations

import copy
from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback

from cf_models.base import CFModel
from cf_models.evaluate import Evaluator
from cf_models.mf import MatrixFactorization, MFConfig
from cf_models.sasrec import SASRec, SASRecConfig
from collab_llm.errors import UserError, require_at_least_one
from collab_llm.schedules import warmup_cosine


LR_SCHEDULES = ("constant", "cosine")


class CFTask(L.LightningModule):
    """Shared optimiser and evaluation loop. Subclasses build ``self.model`` and ``training_step``.

    The learning rate is constant (``lr_schedule="constant"``, default) or follows a linear warm-up
    over ``warmup_steps`` optimizer steps and then a cosine decay to ``lr * min_lr_ratio`` at the last
    step Lightning expects (``trainer.estimated_stepping_batches``: ``max_epochs`` x steps per epoch,
    whether or not early stopping ends the fit sooner).
    """

    model: CFModel

    def __init__(
        self, lr: float, weight_decay: float, lr_schedule: Literal["constant", "cosine"] = "constant", warmup_steps: int = 0,
        min_lr_ratio: float = 0.0,
    ) -> None:
        super().__init__()
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {lr_schedule!r}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        if not 0.0 <= min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
        self.lr = lr
        self.weight_decay = weight_decay
        self.lr_schedule = lr_schedule
        self.warmup_steps = warmup_steps
        self.min_lr_ratio = min_lr_ratio
        self._evaluator: Evaluator | None = None
        # Exact (float64) results of the last validation / test epoch, keyed by stage.
        self.last_results: dict[str, dict[str, float]] = {}

    def lr_factor(self, step: int, total_steps: int) -> float:
        """Multiplier of ``lr`` at optimizer step ``step`` (0-based) of ``total_steps``."""
        if self.lr_schedule == "constant":
            return 1.0
        return warmup_cosine(step, total_steps, self.warmup_steps, self.min_lr_ratio)

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        if self.lr_schedule == "constant":
            return optimizer
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: self.lr_factor(step, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _start_eval(self, stage: Literal["valid", "test"]) -> None:
        datamodule = self.trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "make_evaluator"):
            raise RuntimeError(f"{type(self).__name__} evaluates through a cf_models.data data module")
        self._evaluator = datamodule.make_evaluator(stage)

    def _end_eval(self, stage: Literal["valid", "test"]) -> None:
        if self._evaluator is None:
            raise RuntimeError("evaluation ended before it started")
        results = self._evaluator.compute()
        self.last_results[stage] = results
        self.log_dict({f"{stage}/{k}": v for k, v in results.items()}, prog_bar=False, sync_dist=False)
        self._evaluator = None

    def on_validation_epoch_start(self) -> None:
        self._start_eval("valid")

    @property
    def eval_model(self) -> CFModel:
        """The weights validation and test score (subclasses may keep an average)."""
        return self.model

    def export_model(self) -> CFModel:
        """The model ``cf fit --export_dir`` writes (subclasses may transform it: MF folds its biases)."""
        return self.model

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluator.update(self.eval_model, batch)

    def on_validation_epoch_end(self) -> None:
        self._end_eval("valid")

    def on_test_epoch_start(self) -> None:
        self._start_eval("test")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluator.update(self.eval_model, batch)

    def on_test_epoch_end(self) -> None:
        self._end_eval("test")


class SASRecTask(CFTask):
    """Train ``cf_models.sasrec.SASRec``; arguments mirror ``SASRecConfig`` plus the optimisation ones.

    Args:
        n_items: largest item id (linked from the data module).
        loss: ``"ce"`` full softmax over all items; ``"bpr"`` / ``"bce"`` with one sampled negative.
        label_smoothing: ``"ce"`` only: smoothing mass spread over the real items (never the padding id).
        lr_schedule, warmup_steps, min_lr_ratio: see ``CFTask``.
        ema_decay: keep an exponential moving average of the weights (updated after every optimizer
            step, ``ema = decay * ema + (1 - decay) * w``); validation and test score the average,
            and at the end of fit (after the best-epoch restore) it becomes the model's weights.
            ``None``: off.
    """

    def __init__(
        self,
        n_items: int,
        hidden_size: int = 64,
        num_layers: int = 2,
        num_heads: int = 2,
        max_len: int = 50,
        ffn_dim: int = 256,
        dropout: float = 0.2,
        attention_dropout: float = 0.2,
        tie_output_embedding: bool = True,
        layer_norm: Literal["pre", "post"] = "pre",
        layer_norm_eps: float = 1e-5,
        scale_embedding: bool = True,
        loss: Literal["ce", "bpr", "bce"] = "ce",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        label_smoothing: float = 0.0,
        ema_decay: float | None = None,
        lr_schedule: Literal["constant", "cosine"] = "constant",
        warmup_steps: int = 0,
        min_lr_ratio: float = 0.0,
    ) -> None:
        super().__init__(lr, weight_decay, lr_schedule, warmup_steps, min_lr_ratio)
        self.save_hyperparameters()
        require_at_least_one({f"--model.init_args.{k}": v for k, v in (
            ("hidden_size", hidden_size), ("num_layers", num_layers), ("num_heads", num_heads), ("max_len", max_len),
            ("ffn_dim", ffn_dim))})
        if hidden_size % num_heads:
            raise UserError(f"--model.init_args.hidden_size ({hidden_size}) must be a multiple of "
                            f"--model.init_args.num_heads ({num_heads})")
        if not 0.0 <= label_smoothing < 1.0:
            raise UserError(f"--model.init_args.label_smoothing must be in [0, 1), got {label_smoothing}")
        if label_smoothing > 0 and loss != "ce":
            raise UserError(f"--model.init_args.label_smoothing applies to loss='ce' only, got loss={loss!r}")
        if ema_decay is not None and not 0.0 <= ema_decay < 1.0:
            raise UserError(f"--model.init_args.ema_decay must be in [0, 1) or null, got {ema_decay}")
        self.loss_name = loss
        self.label_smoothing = label_smoothing
        self.ema_decay = ema_decay
        self.model = SASRec(SASRecConfig(
            n_items=n_items, hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads,
            max_len=max_len, ffn_dim=ffn_dim, dropout=dropout, attention_dropout=attention_dropout,
            tie_output_embedding=tie_output_embedding, layer_norm=layer_norm, layer_norm_eps=layer_norm_eps,
            scale_embedding=scale_embedding,
        ))
        self.ema_model: SASRec | None = None
        if ema_decay is not None:
            self.ema_model = copy.deepcopy(self.model).requires_grad_(False)

    @property
    def eval_model(self) -> CFModel:
        """The weights validation and test score: the moving average when ``ema_decay`` is set."""
        return self.ema_model if self.ema_model is not None else self.model

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.ema_model is None:
            return
        d = float(self.ema_decay)
        with torch.no_grad():
            for avg, cur in zip(self.ema_model.parameters(), self.model.parameters()):
                avg.mul_(d).add_(cur.detach(), alpha=1.0 - d)
            for avg, cur in zip(self.ema_model.buffers(), self.model.buffers()):
                avg.copy_(cur)

    def on_fit_end(self) -> None:
        # after KeepBestWeights (callbacks run first) restored the best epoch, average included
        if self.ema_model is not None:
            self.model.load_state_dict(self.ema_model.state_dict())

    def loss(self, history: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``history, target: [B, L]``, ``target[:, t]`` is the item after ``history[:, t]`` (0 = no target)."""
        hidden = self.model.encode(history)  # [B, L, d]
        valid = (history != 0) & (target != 0)
        h = hidden[valid]  # [N, d]
        pos = target[valid]  # [N]
        if self.loss_name == "ce":
            if self.label_smoothing > 0:  # smoothing over the real items only (id 0 is padding)
                logits = h @ self.model.output_weight[1:].T  # [N, n_items]
                return F.cross_entropy(logits, pos - 1, label_smoothing=self.label_smoothing)
            logits = h @ self.model.output_weight.T  # [N, n_items + 1]
            logits[:, 0] = float("-inf")
            return F.cross_entropy(logits, pos)
        neg = torch.randint(1, self.model.n_items + 1, pos.shape, device=pos.device)
        pos_score = (h * F.embedding(pos, self.model.output_weight)).sum(-1)
        neg_score = (h * F.embedding(neg, self.model.output_weight)).sum(-1)
        if self.loss_name == "bpr":
            return -F.logsigmoid(pos_score - neg_score).mean()
        return F.binary_cross_entropy_with_logits(pos_score, torch.ones_like(pos_score)) + \
            F.binary_cross_entropy_with_logits(neg_score, torch.zeros_like(neg_score))

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch["history"], batch["target"])
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["history"].shape[0])
        return loss


class MFTask(CFTask):
    """Train ``cf_models.mf.MatrixFactorization`` with BPR (sampled negatives) or BCE (explicit labels).

    Args:
        n_users, n_items: largest ids (linked from the data module).
        loss: ``"bpr"`` needs batches with ``negative`` (``InteractionDataModule``); ``"bce"`` needs
            ``label`` (``YesNoDataModule``).
        weight_decay: Adam's L2 on every parameter at every step (rows absent from the batch too).
        fold_biases_on_export: export :meth:`~cf_models.mf.MatrixFactorization.folded` (needs ``use_bias``):
            the biases become two embedding columns, so the LLM side's soft tokens carry them (the test
            metrics are the unfolded model's; folding changes no ranking or AUC).
        l2_batch: L2 on the embedding rows used by the batch, ``l2_batch * sum ||row||^2 / B`` (the
            original BPR regulariser: rare items are not shrunk when they are not sampled).
        lr_schedule, warmup_steps, min_lr_ratio: see ``CFTask``.
    """

    def __init__(
        self,
        n_users: int,
        n_items: int,
        embedding_dim: int = 64,
        use_bias: bool = False,
        init_std: float = 0.1,
        loss: Literal["bpr", "bce"] = "bpr",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        l2_batch: float = 0.0,
        lr_schedule: Literal["constant", "cosine"] = "constant",
        warmup_steps: int = 0,
        min_lr_ratio: float = 0.0,
        fold_biases_on_export: bool = False,
    ) -> None:
        super().__init__(lr, weight_decay, lr_schedule, warmup_steps, min_lr_ratio)
        self.save_hyperparameters()
        require_at_least_one({"--model.init_args.embedding_dim": embedding_dim})
        if fold_biases_on_export and not use_bias:
            raise UserError("--model.init_args.fold_biases_on_export true needs --model.init_args.use_bias true "
                            "(there are no biases to fold)")
        self.fold_biases_on_export = fold_biases_on_export
        self.loss_name = loss
        self.l2_batch = l2_batch
        self.model = MatrixFactorization(MFConfig(
            n_users=n_users, n_items=n_items, embedding_dim=embedding_dim, use_bias=use_bias, init_std=init_std,
        ))

    def export_model(self) -> CFModel:
        return self.model.folded() if self.fold_biases_on_export else self.model

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.loss_name == "bpr":
            if "negative" not in batch:
                raise KeyError("loss='bpr' needs batches with a 'negative' column (use InteractionDataModule)")
            pos = self.model.pair_scores(batch["item"], users=batch["user"])
            neg = self.model.pair_scores(batch["negative"], users=batch["user"])
            return -F.logsigmoid(pos - neg).mean() + self._l2(batch["user"], batch["item"], batch["negative"])
        if "label" not in batch:
            raise KeyError("loss='bce' needs batches with a 'label' column (use YesNoDataModule)")
        scores = self.model.pair_scores(batch["item"], users=batch["user"])
        return F.binary_cross_entropy_with_logits(scores, batch["label"].float()) + \
            self._l2(batch["user"], batch["item"])

    def _l2(self, users: torch.Tensor, *items: torch.Tensor) -> torch.Tensor:
        """``l2_batch * (sum of squared user and item rows of the batch) / B``; 0 when ``l2_batch == 0``."""
        if self.l2_batch == 0:
            return torch.zeros((), device=users.device)
        total = self.model.user_embeddings(users).pow(2).sum()
        for it in items:
            total = total + self.model.item_embeddings(it).pow(2).sum()
        return self.l2_batch * total / users.shape[0]

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["user"].shape[0])
        return loss


class KeepBestWeights(Callback):
    """Keep the model weights of the best validation epoch in memory and restore them when fit ends.

    Args:
        monitor: logged metric, e.g. ``valid/ndcg@10`` or ``valid/auc``.
        mode: ``"max"`` or ``"min"``.
    """

    def __init__(self, monitor: str, mode: Literal["max", "min"] = "max") -> None:
        super().__init__()
        self.monitor = monitor
        self.mode = mode
        self.best_score: float | None = None
        self.best_epoch: int | None = None
        self._best_state: dict[str, torch.Tensor] | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if self.monitor not in trainer.callback_metrics:
            raise KeyError(f"KeepBestWeights: metric {self.monitor!r} was not logged; have {sorted(trainer.callback_metrics)}")
        score = float(trainer.callback_metrics[self.monitor])
        better = self.best_score is None or (score > self.best_score if self.mode == "max" else score < self.best_score)
        if better:
            self.best_score = score
            self.best_epoch = trainer.current_epoch
            self._best_state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._best_state is not None:
            pl_module.load_state_dict(self._best_state)
