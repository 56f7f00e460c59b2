"""At what budget, if any, does the papers' LLaRA formulation start to learn the planted signal?

The issue "Injection that learns" asks for HR@1 of LLaRA (hybrid prompt, curriculum from text to
hybrid prompts, answer-likelihood ranking; the recipe ``llara`` of ``bench/injection_learning.py``,
unchanged) against its training budget on the planted-signal data. Every budget is its own run from the
same start (same seed, data and learning rate; the warm-up is the same sixth of the steps as the bench's
8 of 48, and the curriculum and cosine schedule span the run), scored on the same seeded sample of rows.
Per budget it records HR@1 / NDCG@10 with 95% intervals, the permutation check (the same trained model
scored with the soft tokens of shuffled items; from ``--permute-from`` prompts on), the mean per-row
Spearman correlation of the model's candidate scores with SASRec's (does the model rank like the CF
model it reads?), the training loss at the start and end, wall time and training tokens/s.

The result file is rewritten (atomically) after every budget, so an interrupted run keeps what it
measured and a rerun with the same settings continues from the first missing budget.

Usage::

    python bench/llara_learning_curve.py --budgets 32 128 512 2048 --out results/llara_curve.json

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import injection_learning as bench  # noqa: E402  (the same recipes, training and scoring code)


def spearman_rows(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over rows of the Spearman correlation of two (N, C) score matrices (average ranks for ties)."""
    from scipy.stats import spearmanr

    vals = []
    for x, y in zip(a, b):
        if np.ptp(x) == 0 or np.ptp(y) == 0:
            vals.append(0.0)
            continue
        vals.append(float(spearmanr(x, y).statistic))
    return float(np.mean(vals))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budgets", type=int, nargs="+", default=[32, 128, 512, 2048],
                   help="training prompts per run (each a multiple of --batch-size)")
    p.add_argument("--method", default="llara", help="a next-item recipe of bench/injection_learning.py")
    p.add_argument("--work", default="work/injection_bench", help="folder for the split and the CF model (reused)")
    p.add_argument("--split", default=None, help="a prepared next-item split instead of the built-in planted data "
                                                     "(with --cf-model)")
    p.add_argument("--cf-model", default=None, help="the exported SASRec model of --split")
    p.add_argument("--backbone", default=None)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--eval-batch-size", type=int, default=8)
    p.add_argument("--rows", type=int, default=200)
    p.add_argument("--table", choices=("valid", "test"), default="valid")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"))
    p.add_argument("--permute-from", type=int, default=512, help="run the permutation check from this budget on")
    p.add_argument("--n-bootstrap", type=int, default=2000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="the result file (rewritten after every budget; a rerun continues it)")
    args = p.parse_args(argv)
    if (args.split is None) != (args.cf_model is None):
        p.error("--split and --cf-model go together")
    for b in args.budgets:
        if b <= 0 or b % args.batch_size:
            p.error(f"--budgets {b}: each budget must be a positive multiple of --batch-size {args.batch_size}")
    torch.set_num_threads(args.threads)
    if args.backbone is None:
        from collab_llm.assets import ensure_assets

        args.backbone = str(ensure_assets(log=bench.log).smollm2)
    from collab_llm.backbone import cpu_description, resolve_dtype
    from collab_llm.datamodule import sample_rows
    from collab_llm.io import emit_result, write_json
    from collab_llm.metrics import mean_estimate

    recipe = bench.recipes("next_item")[args.method]
    cpu = cpu_description()
    settings = {"data": str(args.split or "planted"), "method": args.method, "batch_size": args.batch_size, "rows": args.rows, "table": args.table,
                "seed": args.seed, "dtype": resolve_dtype(args.dtype), "lr": recipe.lr, "warmup_fraction": "1/6"}
    result: dict[str, Any] = {**settings, "cpu": cpu, "threads": args.threads, "budgets": {}}
    if args.out and Path(args.out).exists():
        old = json.loads(Path(args.out).read_text())
        old.setdefault("data", "planted")  # files written before --split existed
        if all(old.get(k) == v for k, v in settings.items()):
            result["budgets"] = old.get("budgets", {})
            bench.log(f"[curve] continuing {args.out}: budgets done {sorted(map(int, result['budgets']))}")
        else:
            p.error(f"--out {args.out}: holds a curve with other settings; name another file")
    bench.log(f"[curve] CPU {cpu['model']} ({cpu['isa']}, native bf16: {cpu['native_bf16']}), dtype {settings['dtype']}, "
              f"{args.threads} threads; {args.method}, budgets {args.budgets} prompts, {args.table} rows")

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.split:
        split, cf_dir = Path(args.split), Path(args.cf_model)
    else:
        split = bench.prepare_planted(work, argparse.Namespace(interactions=None, items=None, seed=args.seed))
        cf_dir, _ = bench.train_cf(split, ROOT / "configs" / "cf" / "sasrec_planted_loo.yaml",
                                   work / "cf" / f"sasrec_{split.name}", args.seed, None)
    rows = sample_rows(pd.read_parquet(split / f"{args.table}.parquet"), args.rows, args.seed)
    target_index = np.array([list(c).index(t) for c, t in zip(rows["candidates"], rows["target"])])
    perm = bench.item_permutation(split, args.seed)

    def metrics(scores: np.ndarray) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in bench.per_row_metrics(scores, target_index).items():
            e = mean_estimate(v, args.n_bootstrap, args.seed)
            out[k] = round(e.value, 4)
            out[f"{k}_ci"] = [round(e.ci_low, 4), round(e.ci_high, 4)]
        return out

    sasrec = bench.cf_scores(cf_dir, rows, "next_item")
    result["sasrec"] = metrics(sasrec)
    result["chance_hr1"] = round(float(np.mean([1.0 / len(c) for c in rows["candidates"]])), 4)
    t_all = time.perf_counter()
    for budget in args.budgets:
        if str(budget) in result["budgets"]:
            continue
        steps = budget // args.batch_size
        run = argparse.Namespace(backbone=args.backbone, dtype=args.dtype, seed=args.seed, steps=steps,
                                 warmup=max(1, steps // 6), batch_size=args.batch_size,
                                 eval_batch_size=args.eval_batch_size)
        model, stats = bench.train_llm(recipe, split, cf_dir, run, "train")
        t0 = time.perf_counter()
        scores = bench.score_llm(model, recipe, split, rows, run)
        entry: dict[str, Any] = {"steps": steps, "warmup": run.warmup, **metrics(scores),
                                 "spearman_vs_sasrec": round(spearman_rows(scores, sasrec), 4),
                                 "train_s": round(stats["train_s"], 1), "tok_s": round(stats["tok_s"], 1),
                                 "loss_first": stats["loss_first"], "loss_last": stats["loss_last"],
                                 "eval_s": round(time.perf_counter() - t0, 1)}
        if recipe.regime != "text" and budget >= args.permute_from:
            entry["permuted"] = metrics(bench.score_llm(model, recipe, split, rows, run, permute=perm))
        del model
        result["budgets"][str(budget)] = entry
        bench.log(f"[curve] {budget:>5} prompts ({steps} steps): HR@1 {entry['hr1']} {entry['hr1_ci']}, "
                  f"NDCG@10 {entry['ndcg10']}, Spearman vs SASRec {entry['spearman_vs_sasrec']:+.3f}, "
                  f"loss {entry['loss_first']:.3f} -> {entry['loss_last']:.3f}, train {entry['train_s']:.0f} s"
                  + (f", permuted HR@1 {entry['permuted']['hr1']}" if "permuted" in entry else ""))
        if args.out:
            write_json(args.out, result)
    result["wall_s_this_run"] = round(time.perf_counter() - t_all, 1)
    return emit_result(result, args.out, "python bench/llara_learning_curve.py " + " ".join(argv if argv is not None else sys.argv[1:]))


if __name__ == "__main__":
    main()
