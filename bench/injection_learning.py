"""Does injection carry the CF signal? Text-only vs hybrid, same budget, data, seed, candidates, rows.

For each part (``--only``; default all three):

- ``planted``: the built-in planted-signal dataset (``collab-llm prepare --dataset planted``), where
  the CF structure is the only signal (titles are meaningless word pairs), or the user's own data
  (``--interactions CSV --items CSV``, the same reader as ``prepare``), reported under the same
  ``planted_*`` keys;
- ``ml100k``: MovieLens-100K leave-one-out, 20 stored candidates per row;
- ``yesno``: CoLLM's ML-1M Yes/No preset (AUC; paired differences clustered by user).

it trains SASRec (or MF for Yes/No) once, then with the same steps, batch, seed and learning rates:

- ``text``: TALLRec, the text-only prompt, ranked by answer likelihood (``llara_movielens`` text
  view; Yes/No: ``collm_movielens``, P(Yes));
- ``hybrid``: the recipe under test (``--hybrid``, default ``head``: the item-scoring head fitted in
  closed form on the LLM's hidden state, soft tokens at word scale), and any other recipe named in
  ``--methods`` (e.g. the papers' ``llara``; Yes/No: ``--yesno-methods``, ``--yesno-hybrid``);

and scores every method on the SAME seeded sample of rows (``--table valid`` while choosing
settings, ``test`` for the report), printing HR@1 / NDCG@10 (AUC) with 95% intervals, the paired
bootstrap interval of (hybrid - text) on the same rows, the permutation check (the trained hybrid
model scored with the soft tokens of shuffled items: if it reads the signal it gets worse), the
"LLM does the work" check (an ablation among the methods, e.g. ``head_l4_last`` / ``head_l4_user_only``:
the same head on a prompt reduced to one soft token; the hybrid is paired with every other method of the
run on the same rows), wall time and training tokens/s. ``--yesno-cf-config`` picks the Yes/No MF (e.g.
``configs/cf/mf_collm_ml1m_folded.yaml``, the MF exported with its biases folded into the tokens).

Usage::

    OMP_NUM_THREADS=2 python bench/injection_learning.py --only planted --table test
    python bench/injection_learning.py --only planted --interactions my.csv --items items.csv

The last line is one JSON object (keys in the issue "Injection that learns").
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@dataclass(frozen=True)
class Recipe:
    """One LLM method of the bench: the CollabLLM arguments and the data view it needs."""

    name: str
    template: str
    regime: str
    scorer: str = "likelihood"
    projector: str = "llara_mlp"
    lr: float = 5e-4
    projector_lr: float | None = None
    head_loss: str = "candidates"
    max_history: int = 10
    train_lora: bool = True
    fine_tune: bool = True
    head_init: str = "least_squares"
    head_init_rows: int = 0  # 0: the run's budget of training prompts (steps x batch size)
    head_ridge: float = 100.0
    head_layer: int | None = None  # None: the final hidden state; k: decoder block k's output
    head_target: str = "default"  # Yes/No alignment target: default (labels, bilinear) / signed_item / user
    yes_no_loss: str = "lm"
    lora_alpha: float = 32.0
    lora_dropout: float = 0.1


def recipes(task: str) -> dict[str, Recipe]:
    """The named recipes (next-item or yes/no)."""
    if task == "next_item":
        return {
            "text": Recipe("text", "llara_movielens", "text"),
            "llara": Recipe("llara", "llara_movielens", "curriculum"),
            "llara_joint": Recipe("llara_joint", "llara_movielens", "joint"),
            # the recipe chosen on planted validation rows: the head fitted in closed form on the budget's
            # training prompts run through the frozen LLM (no gradient steps; fine-tuning after it lowered HR@1)
            "head": Recipe("head", "head_next_item", "joint", scorer="head", projector="scaled_llara_mlp",
                           fine_tune=False),
            "head_finetune": Recipe("head_finetune", "head_next_item", "joint", scorer="head",
                                    projector="scaled_llara_mlp", lr=1e-4, projector_lr=1e-4),
            "head_suffix": Recipe("head_suffix", "head_next_item_suffix", "joint", scorer="head",
                                  projector="scaled_llara_mlp", projector_lr=3e-3),
            "head_catalog": Recipe("head_catalog", "head_next_item", "joint", scorer="head",
                                   projector="scaled_llara_mlp", projector_lr=3e-3, head_loss="catalog"),
            "head_plain": Recipe("head_plain", "head_next_item", "joint", scorer="head", projector="llara_mlp"),
            "head_last_nolora": Recipe("head_last_nolora", "head_last_item", "joint", scorer="head",
                                       projector="scaled_llara_mlp", projector_lr=3e-3, max_history=1,
                                       train_lora=False),
            # "head" reading decoder block 4 (chosen on planted + ML-100K validation rows) and its ablation
            "head_l4": Recipe("head_l4", "head_next_item", "joint", scorer="head", projector="scaled_llara_mlp",
                              fine_tune=False, head_layer=4),
            "head_l4_last": Recipe("head_l4_last", "head_last_item", "joint", scorer="head",
                                   projector="scaled_llara_mlp", max_history=1, fine_tune=False, head_layer=4),
            # ablation of "head": the prompt reduced to the last item's soft token, same closed-form head
            "head_last": Recipe("head_last", "head_last_item", "joint", scorer="head", projector="scaled_llara_mlp",
                                max_history=1, fine_tune=False),
        }
    return {
        "text": Recipe("text", "collm_movielens", "text", lr=1e-4, lora_alpha=16.0, lora_dropout=0.05),
        "collm": Recipe("collm", "collm_movielens", "two_stage", projector="collm_mlp", lr=1e-4,
                        lora_alpha=16.0, lora_dropout=0.05),
        "collm_bce": Recipe("collm_bce", "collm_movielens", "two_stage", projector="collm_mlp", lr=1e-4,
                            lora_alpha=16.0, lora_dropout=0.05, yes_no_loss="bce"),
        "head": Recipe("head", "head_yes_no", "joint", scorer="head", projector="scaled_collm_mlp",
                       lora_alpha=16.0, lora_dropout=0.05, fine_tune=False),
        # block 4, least squares onto +-e_item (chosen on Yes/No validation rows)
        "head_l4": Recipe("head_l4", "head_yes_no", "joint", scorer="head", projector="scaled_collm_mlp",
                          lora_alpha=16.0, lora_dropout=0.05, fine_tune=False, head_layer=4, head_target="signed_item"),
        # block 4 reading the user's token, least squares onto the injected user vector (with the folded MF,
        # --yesno-cf-config configs/cf/mf_collm_ml1m_folded.yaml, that vector carries the biases too), and
        # its ablation: the prompt reduced to the user's soft token
        "head_l4_user": Recipe("head_l4_user", "head_yes_no", "joint", scorer="head", projector="scaled_collm_mlp",
                               lora_alpha=16.0, lora_dropout=0.05, fine_tune=False, head_layer=4, head_target="user"),
        "head_l4_user_only": Recipe("head_l4_user_only", "head_user_only", "joint", scorer="head",
                                    projector="scaled_collm_mlp", lora_alpha=16.0, lora_dropout=0.05, fine_tune=False,
                                    head_layer=4, head_target="user"),
        "head_collm_prompt": Recipe("head_collm_prompt", "collm_movielens", "joint", scorer="head",
                                    projector="scaled_collm_mlp", lr=5e-4, projector_lr=3e-3, lora_alpha=16.0,
                                    lora_dropout=0.05),
    }


def apply_overrides(recipe: Recipe, overrides: list[str]) -> Recipe:
    """``["projector_lr=1e-2", ...]`` applied to a hybrid recipe (the text baseline is left as it is)."""
    if recipe.regime == "text" or not overrides:
        return recipe
    changes: dict[str, Any] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or key not in Recipe.__dataclass_fields__ or key == "name":
            raise SystemExit(f"--set {item!r}: expected FIELD=VALUE with FIELD one of {sorted(Recipe.__dataclass_fields__)}")
        current = getattr(recipe, key)
        if isinstance(current, bool):
            changes[key] = value.lower() in ("1", "true", "yes")
        elif isinstance(current, int):
            changes[key] = int(value)
        elif key == "head_layer":
            changes[key] = None if value.lower() in ("none", "null", "") else int(value)
        elif isinstance(current, float) or (current is None and key.endswith("lr")):
            changes[key] = float(value)
        else:
            changes[key] = value
    return replace(recipe, **changes)


# ------------------------------------------------------------------------------------------ helpers
def log(msg: str) -> None:
    print(msg, flush=True)


def paired_diff(a: np.ndarray, b: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``a - b`` over the same rows and its 95% paired bootstrap interval (rows resampled)."""
    from collab_llm.metrics import paired_difference

    est = paired_difference(np.asarray(a, float), np.asarray(b, float), n_resamples=n, seed=seed)
    return est.value, est.ci_low, est.ci_high


def ranks_from_scores(scores: np.ndarray, target_index: np.ndarray) -> np.ndarray:
    """0-based rank of the target, ties counted against it."""
    t = scores[np.arange(len(scores)), target_index][:, None]
    return (scores >= t).sum(1) - 1


def per_row_metrics(scores: np.ndarray, target_index: np.ndarray) -> dict[str, np.ndarray]:
    """Per-row HR@1 and NDCG@10 of (N, C) candidate scores."""
    ranks = ranks_from_scores(scores, target_index)
    return {"hr1": (ranks == 0).astype(float), "ndcg10": np.where(ranks < 10, 1 / np.log2(ranks + 2), 0.0)}


def item_permutation(split: Path, seed: int) -> np.ndarray:
    """Item id -> another item id (padding 0 kept), seeded: the permutation check's shuffled soft tokens."""
    n_items = int(pd.read_parquet(split / "items.parquet")["item"].max())
    perm = np.arange(n_items + 1)
    perm[1:] = np.random.default_rng(seed + 17).permutation(np.arange(1, n_items + 1))
    return perm


# ------------------------------------------------------------------------------------------ data
def prepare_planted(work: Path, args: argparse.Namespace) -> Path:
    from collab_llm import data

    split = work / ("user_loo" if args.interactions else "planted_loo")
    if (split / "manifest.json").exists():
        return split
    if args.interactions:
        from collab_llm.data.interactions import InteractionColumns, ItemColumns
        from collab_llm.data.validation import ValidationOptions

        raw = data.read_interactions(Path(args.interactions), Path(args.items), InteractionColumns(),
                                     ItemColumns(), ValidationOptions())
        data.prepare_nextitem(raw, split, protocol="loo", seed=args.seed)
    else:
        from collab_llm.data.cli import main as prepare_main

        prepare_main(["--dataset", "planted", "--protocol", "loo", "--out", str(split), "--seed", str(args.seed)])
    return split


def prepare_ml(work: Path, which: str, seed: int) -> Path:
    from collab_llm import data
    from collab_llm.assets import ensure_assets

    split = work / ("ml100k_loo" if which == "ml100k" else "ml1m_collm")
    if (split / "manifest.json").exists():
        return split
    paths = ensure_assets(log=log)
    if which == "ml100k":
        data.prepare_nextitem(data.read_dataset("ml-100k", paths.ml100k), split, protocol="loo", seed=seed)
    else:
        data.prepare_yesno(data.read_dataset("ml-1m", paths.ml1m), split, preset="collm", seed=seed)
    return split


def train_cf(split: Path, config: Path, out: Path, seed: int, max_epochs: int | None) -> tuple[Path, float]:
    if (out / "config.json").exists():
        return out, float(json.loads((out / "metrics.json").read_text()).get("train_seconds", float("nan")))
    from cf_models.cli import fit

    args = ["--config", str(config), "--data.init_args.split_dir", str(split), "--export_dir", str(out),
            "--seed_everything", str(seed)]
    if max_epochs is not None:
        args += ["--trainer.max_epochs", str(max_epochs)]
    res = fit(args)
    return out, res.train_seconds


@torch.no_grad()
def cf_scores(cf_dir: Path, rows: pd.DataFrame, task: str) -> np.ndarray:
    import importlib

    from cf_models.base import CFModel
    from cf_models.data import left_pad

    for name in ("cf_models.mf", "cf_models.sasrec"):
        importlib.import_module(name)  # registers the model types

    model = CFModel.from_pretrained(cf_dir).eval()
    if task == "next_item":
        history = left_pad(list(rows["history"]), 50)
        cands = torch.tensor(np.stack(rows["candidates"].to_numpy()), dtype=torch.long)
        return model.pair_scores(cands, history=history).float().numpy()
    users = torch.tensor(rows["user"].to_numpy(), dtype=torch.long)
    items = torch.tensor(rows["item"].to_numpy(), dtype=torch.long)
    return model.pair_scores(items, users=users).float().numpy()


# ------------------------------------------------------------------------------------------ LLM runs
def train_llm(recipe: Recipe, split: Path, cf_dir: Path | None, args: argparse.Namespace, train_table: str) -> tuple[Any, dict[str, float]]:
    import lightning as L

    from collab_llm.datamodule import RecDataModule
    from collab_llm.adapters import LoRA
    from collab_llm.module import CollabLLM

    L.seed_everything(args.seed, verbose=False)
    model = CollabLLM(
        backbone_path=args.backbone, template=recipe.template, regime=recipe.regime,
        cf_model_path=None if recipe.regime == "text" else str(cf_dir), projector=recipe.projector,
        dtype=args.dtype, adapter=LoRA(r=8, alpha=recipe.lora_alpha, dropout=recipe.lora_dropout),
        learning_rate=recipe.lr, warmup_steps=args.warmup, total_steps=args.steps,
        stage1_steps=args.steps // 2 if recipe.regime == "two_stage" else 0,
        curriculum_steps=args.steps if recipe.regime == "curriculum" else None,
        scorer=recipe.scorer, head_loss=recipe.head_loss, projector_lr=recipe.projector_lr,
        train_lora=recipe.train_lora, head_init=recipe.head_init,
        head_init_rows=recipe.head_init_rows or args.steps * args.batch_size, head_ridge=recipe.head_ridge, head_layer=recipe.head_layer, head_target=recipe.head_target, yes_no_loss=recipe.yes_no_loss, seed=args.seed, n_bootstrap=0,
    )
    modes = ["text"] if recipe.regime == "text" else (["hybrid"] if recipe.regime == "joint" else ["text", "hybrid"])
    dm = RecDataModule(
        data_dir=str(split), template=recipe.template, tokenizer_path=args.backbone, modes=modes,
        train_table=train_table, max_length=1024, max_history=recipe.max_history, batch_size=args.batch_size,
        eval_batch_size=args.eval_batch_size, seed=args.seed,
    )
    tokens = [0]  # real tokens of the prompt views trained on (for tokens/s)
    head = recipe.scorer == "head" or recipe.yes_no_loss == "bce"

    class Count(L.Callback):
        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            mode = pl_module.train_mode_at(int(trainer.global_step))
            key = "prompt_attention_mask" if head else "attention_mask"
            tokens[0] += int(batch[mode][key].sum())

    losses: list[float] = []

    class Losses(L.Callback):
        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            losses.append(float(outputs["loss"]) if isinstance(outputs, dict) else float(outputs))

    trainer = L.Trainer(
        accelerator="cpu", devices=1, precision="32-true", max_steps=args.steps, max_epochs=-1,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, num_sanity_val_steps=0, gradient_clip_val=1.0, callbacks=[Count(), Losses()],
    )
    t0 = time.perf_counter()
    if recipe.fine_tune:
        trainer.fit(model, datamodule=dm)
    else:  # closed form only: the alignment pass over the budget's training prompts, no gradient step
        dm.setup("fit")
        model.initialize_head(dm.datasets["train"], dm.collator, batch_size=args.batch_size)
    train_s = time.perf_counter() - t0
    align = dict(model.head_init_stats)
    tokens[0] += int(align.get("tokens", 0))  # forward-only tokens of the alignment pass
    first = float(np.mean(losses[: max(1, len(losses) // 8)])) if losses else None
    last = float(np.mean(losses[-max(1, len(losses) // 8):])) if losses else None
    return model, {"train_s": train_s, "tokens": tokens[0], "tok_s": tokens[0] / train_s,
                   "loss_first": first, "loss_last": last, "align_s": float(align.get("seconds", 0.0))}


@torch.no_grad()
def score_llm(model: Any, recipe: Recipe, split: Path, rows: pd.DataFrame, args: argparse.Namespace,
              permute: np.ndarray | None = None) -> np.ndarray:
    """Per-row scores of ``rows`` (next-item: (N, C) candidate scores; yes/no: (N,) P(Yes)).

    ``permute``: item id -> item id map applied to the soft tokens of the prompt only (the check
    that a model reading the signal gets worse when its tokens are of other items).
    """
    from collab_llm.backbone import load_tokenizer
    from collab_llm.collate import PromptCollator, TableDataset, titles_from_items

    model.eval()
    tok, ph = load_tokenizer(args.backbone)
    titles = titles_from_items(pd.read_parquet(split / "items.parquet"))
    mode = "text" if recipe.regime == "text" else "hybrid"
    collator = PromptCollator(tok, model.template, titles, ph, [mode], 1024, recipe.max_history, 1)
    ds = TableDataset(rows, model.task)
    out: list[Any] = []
    for start in range(0, len(ds), args.eval_batch_size):
        batch = collator([ds[i] for i in range(start, min(len(ds), start + args.eval_batch_size))])
        if permute is not None:
            view = batch[mode]
            view["soft_item_ids"] = torch.as_tensor(permute)[view["soft_item_ids"]]
            if view["soft_user_ids"].numel():
                raise ValueError("the permutation check permutes item tokens only")
        for r in model.score_batch(batch):
            out.append(r["scores"] if model.task == "next_item" else r["score"])
    model.train()
    return np.asarray(out, dtype=np.float64)


# ------------------------------------------------------------------------------------------ parts
def run_nextitem(part: str, split: Path, args: argparse.Namespace, result: dict[str, Any]) -> None:
    work = Path(args.work)
    cf_config = ROOT / "configs" / "cf" / ("sasrec_planted_loo.yaml" if part == "planted" else "sasrec_ml100k_loo.yaml")
    cf_dir, cf_train_s = train_cf(split, cf_config, work / "cf" / f"sasrec_{split.name}", args.seed,
                                  args.cf_max_epochs)
    from collab_llm.datamodule import sample_rows
    from collab_llm.metrics import mean_estimate

    rows = sample_rows(pd.read_parquet(split / f"{args.table}.parquet"), args.rows, args.seed)
    target_index = np.array([list(c).index(t) for c, t in zip(rows["candidates"], rows["target"])])
    result[f"{part}_rows"] = len(rows)
    result["hybrid_name"] = args.hybrid
    per_row: dict[str, dict[str, np.ndarray]] = {}

    def record(name: str, scores: np.ndarray) -> None:
        per_row[name] = per_row_metrics(scores, target_index)
        est = {k: mean_estimate(v, args.n_bootstrap, args.seed) for k, v in per_row[name].items()}
        for k, e in est.items():
            result[f"{part}_{k}_{name}"] = round(e.value, 4)
            result[f"{part}_{k}_{name}_ci"] = [round(e.ci_low, 4), round(e.ci_high, 4)]
        log(f"[{part}] {name:>16}: HR@1 {est['hr1']}  NDCG@10 {est['ndcg10']}")

    record("sasrec", cf_scores(cf_dir, rows, "next_item"))
    result[f"{part}_cf_train_s"] = round(cf_train_s, 1)
    all_recipes = recipes("next_item")
    perm = item_permutation(split, args.seed)
    for name in args.methods:
        recipe = apply_overrides(all_recipes[name], args.set)
        model, stats = train_llm(recipe, split, cf_dir, args, "train")
        result[f"{part}_train_s_{name}"] = round(stats["train_s"], 1)
        result[f"{part}_tok_s_{name}"] = round(stats["tok_s"], 1)
        result[f"{part}_align_s_{name}"] = round(stats["align_s"], 1)
        result[f"{part}_loss_{name}"] = [stats["loss_first"], stats["loss_last"]]
        log(f"[{part}] {name}: trained {args.steps} steps x {args.batch_size} in {stats['train_s']:.0f} s "
            f"(alignment pass {stats['align_s']:.0f} s) "
            f"({stats['tok_s']:.0f} tok/s), loss {stats['loss_first']} -> {stats['loss_last']}")
        t0 = time.perf_counter()
        record(name, score_llm(model, recipe, split, rows, args))
        result[f"{part}_eval_s_{name}"] = round(time.perf_counter() - t0, 1)
        if recipe.regime != "text" and args.permutation_check:
            record(f"{name}_permuted", score_llm(model, recipe, split, rows, args, permute=perm))
        del model
    # the headline keys
    hybrid = args.hybrid if args.hybrid in per_row else None
    if hybrid:
        result[f"{part}_hr1_hybrid"] = result[f"{part}_hr1_{hybrid}"]
        result[f"{part}_ndcg10_hybrid"] = result[f"{part}_ndcg10_{hybrid}"]
        if f"{hybrid}_permuted" in per_row:
            result[f"{part}_hr1_permuted"] = result[f"{part}_hr1_{hybrid}_permuted"]
        result[f"{part}_train_s"] = result[f"{part}_train_s_{hybrid}"]
        result[f"{part}_hr1_hybrid_over_sasrec"] = round(result[f"{part}_hr1_hybrid"] / max(result[f"{part}_hr1_sasrec"], 1e-9), 3)
    for other in [n for n in args.methods if hybrid and n != hybrid and n in per_row]:
        keys = "" if other == "text" else f"_vs_{other}"  # text: the headline keys; others: e.g. an ablation
        for k in ("hr1", "ndcg10"):
            v, lo, hi = paired_diff(per_row[hybrid][k], per_row[other][k], args.n_bootstrap, args.seed)
            result[f"{part}_diff_{k}{keys}"] = round(v, 4)
            result[f"{part}_diff_{k}{keys}_ci"] = [round(lo, 4), round(hi, 4)]
            log(f"[{part}] {hybrid} - {other}, paired over the same {len(rows)} rows: {k} {v:+.3f} [{lo:+.3f}, {hi:+.3f}]")
    if f"{part}_diff_hr1_ci" in result:
        result[f"{part}_diff_ci_low"] = result[f"{part}_diff_hr1_ci"][0]


def run_yesno(split: Path, args: argparse.Namespace, result: dict[str, Any]) -> None:
    from collab_llm.datamodule import sample_rows
    from collab_llm.metrics import auc_estimate, paired_auc_difference

    work = Path(args.work)
    config = Path(args.yesno_cf_config)
    # the shipped config keeps its old folder name (models trained before the option existed are reused)
    name = "mf_ml1m_collm" if config.stem == "mf_collm_ml1m" else config.stem
    cf_dir, cf_train_s = train_cf(split, config, work / "cf" / name, args.seed, None)
    result["yesno_cf_config"] = str(config.relative_to(ROOT) if config.is_relative_to(ROOT) else config)
    rows = sample_rows(pd.read_parquet(split / f"{args.table}.parquet"), args.yesno_rows, args.seed)
    labels = rows["label"].to_numpy()
    users = rows["user"].to_numpy()
    result["yesno_rows"] = len(rows)
    result["yesno_hybrid_name"] = args.yesno_hybrid
    result["yesno_users"] = int(len(np.unique(users)))
    scores: dict[str, np.ndarray] = {"mf": cf_scores(cf_dir, rows, "yes_no")}
    all_recipes = recipes("yes_no")
    for name in args.yesno_methods:
        recipe = apply_overrides(all_recipes[name], args.set)
        model, stats = train_llm(recipe, split, cf_dir, args, "train_256" if args.yesno_train == "few" else "train")
        result[f"yesno_train_s_{name}"] = round(stats["train_s"], 1)
        result[f"yesno_align_s_{name}"] = round(stats["align_s"], 1)
        result[f"yesno_loss_{name}"] = [stats["loss_first"], stats["loss_last"]]
        log(f"[yesno] {name}: trained in {stats['train_s']:.0f} s ({stats['tok_s']:.0f} tok/s), "
            f"loss {stats['loss_first']} -> {stats['loss_last']}")
        scores[name] = score_llm(model, recipe, split, rows, args)
        del model
    for name, s in scores.items():
        est = auc_estimate(labels, s, n_resamples=args.n_bootstrap, seed=args.seed, users=users)  # users resampled
        result[f"yesno_auc_{name}"] = round(est.value, 4)
        result[f"yesno_auc_{name}_ci"] = [round(est.ci_low, 4), round(est.ci_high, 4)]
        log(f"[yesno] {name:>8}: AUC {result[f'yesno_auc_{name}']:.4f} {result[f'yesno_auc_{name}_ci']} (users resampled)")
    if args.yesno_hybrid in scores:
        result["yesno_auc_hybrid"] = result[f"yesno_auc_{args.yesno_hybrid}"]
    for other in [n for n in args.yesno_methods if n != args.yesno_hybrid and args.yesno_hybrid in scores]:
        est = paired_auc_difference(labels, scores[args.yesno_hybrid], scores[other], users=users,
                                    n_resamples=args.n_bootstrap, seed=args.seed)
        key = "yesno_diff" if other == "text" else f"yesno_diff_vs_{other}"  # text: the headline keys
        result[key] = round(est.value, 4)
        result[f"{key}_ci"] = [round(est.ci_low, 4), round(est.ci_high, 4)]
        log(f"[yesno] {args.yesno_hybrid} - {other} AUC, paired, users resampled: {est.value:+.4f} "
            f"[{est.ci_low:+.4f}, {est.ci_high:+.4f}]")
    if "yesno_diff_ci" in result:
        result["yesno_diff_ci_low"] = result["yesno_diff_ci"][0]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="+", choices=("planted", "ml100k", "yesno"), default=["planted", "ml100k", "yesno"])
    p.add_argument("--interactions", help="your interaction file: replaces the planted dataset (planted_* keys)")
    p.add_argument("--items", help="your item file (with --interactions)")
    p.add_argument("--work", default="work/injection_bench", help="folder for splits and CF models (reused)")
    p.add_argument("--backbone", default=None, help="HF model folder (default: the cached SmolLM2-135M-Instruct)")
    p.add_argument("--methods", nargs="+", default=["text", "head"], help="next-item recipes (see recipes())")
    p.add_argument("--hybrid", default="head", help="the next-item recipe reported as 'hybrid'")
    p.add_argument("--yesno-methods", nargs="+", default=["text", "head"])
    p.add_argument("--yesno-hybrid", default="head")
    p.add_argument("--yesno-cf-config", default=str(ROOT / "configs" / "cf" / "mf_collm_ml1m.yaml"),
                   help="the MF config trained for the Yes/No part (e.g. configs/cf/mf_collm_ml1m_nobias.yaml: "
                        "CoLLM's MF without bias terms)")
    p.add_argument("--yesno-train", choices=("few", "all"), default="all",
                   help="LLM training rows for Yes/No: the few-shot train_256 or all of train (drawn in order of the seeded shuffle)")
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                   help="override a field of every LLM recipe except text (e.g. projector_lr=1e-2 lr=1e-3 projector=llara_mlp): the levers")
    p.add_argument("--steps", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--eval-batch-size", type=int, default=8)
    p.add_argument("--warmup", type=int, default=8)
    p.add_argument("--rows", type=int, default=200, help="next-item rows scored (a seeded sample)")
    p.add_argument("--yesno-rows", type=int, default=1000)
    p.add_argument("--table", choices=("valid", "test"), default="valid",
                   help="valid while choosing settings; test for the report")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"))
    p.add_argument("--cf-max-epochs", type=int, default=None)
    p.add_argument("--n-bootstrap", type=int, default=2000)
    p.add_argument("--no-permutation-check", dest="permutation_check", action="store_false")
    p.add_argument("--out", default=None, help="also write the JSON result to this file (atomically)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if (args.interactions is None) != (args.items is None):
        p.error("--interactions and --items go together")
    torch.set_num_threads(args.threads)
    if args.backbone is None:
        from collab_llm.assets import ensure_assets

        args.backbone = str(ensure_assets(log=log).smollm2)
    from collab_llm.backbone import resolve_dtype

    from collab_llm.backbone import cpu_description

    cpu = cpu_description()
    result: dict[str, Any] = {"overrides": args.set, "cpu": cpu, "dtype": resolve_dtype(args.dtype), "threads": args.threads,
                              "steps": args.steps, "batch_size": args.batch_size, "table": args.table}
    log(f"[bench] CPU {cpu['model']} ({cpu['isa']}, native bf16: {cpu['native_bf16']}), dtype {result['dtype']}, "
        f"{args.threads} threads; {args.steps} steps x {args.batch_size} prompts per method; {args.table} rows")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    token_rates = []
    if "planted" in args.only:
        run_nextitem("planted", prepare_planted(work, args), args, result)
        token_rates += [v for k, v in result.items() if k.startswith("planted_tok_s_")]
    if "ml100k" in args.only:
        run_nextitem("ml100k", prepare_ml(work, "ml100k", args.seed), args, result)
        token_rates += [v for k, v in result.items() if k.startswith("ml100k_tok_s_")]
    if "yesno" in args.only:
        run_yesno(prepare_ml(work, "yesno", args.seed), args, result)
    if token_rates:
        result["train_tok_s"] = round(float(np.mean(token_rates)), 1)
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    from collab_llm.io import emit_result

    return emit_result(result, args.out, "python bench/injection_learning.py " + " ".join(argv if argv is not None else sys.argv[1:]))


if __name__ == "__main__":
    main()
