"""Train the three reference CF backbones from their configs and print their test figures.

    OMP_NUM_THREADS=2 .venv/bin/python bench/cf_backbones.py [--threads 2] [--only sasrec,bpr,collm_mf]

Runs exactly what ``collab-llm cf fit --config configs/cf/<name>.yaml`` runs (``cf_models.cli.fit``),
preparing the split folders under ``work/`` first when they are missing (``collab-llm prepare``).
Targets (RecBole / CoLLM reference figures):

- SASRec, ML-100K leave-one-out, full ranking, history NOT masked: NDCG@10 >= 0.0694, HR@10 >= 0.1421,
  trained in under 5 minutes on 2 CPU cores.
- BPR-MF 64-d, ML-100K random 80/10/10, full ranking with seen items removed: NDCG@10 >= 0.2931
  (multi-relevant NDCG as RecBole computes it).
- MF with BCE, ML-1M CoLLM Yes/No protocol: test AUC >= 0.6482.

The last printed line is one JSON object with every figure and wall time. ``--seeds 1,2`` also trains
each model with those seeds (``seed_everything`` and the data seed) after the config's own, to show
the spread: ``<name>_seeds`` lists every seed's headline figures and ``<name>_mean_<metric>`` their
mean (config seed included); the other keys stay those of the config's seed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

# name -> (config, split folder, prepare arguments)
RUNS = {
    "sasrec": ("configs/cf/sasrec_ml100k_loo.yaml", "work/ml100k_loo", ["--dataset", "ml-100k", "--protocol", "loo"]),
    "bpr": ("configs/cf/bpr_ml100k_random.yaml", "work/ml100k_random", ["--dataset", "ml-100k", "--protocol", "random"]),
    "collm_mf": ("configs/cf/mf_collm_ml1m.yaml", "work/ml1m_collm", ["--dataset", "ml-1m", "--protocol", "collm"]),
}

# the figures each run's targets are stated in
HEADLINE = {"sasrec": ("ndcg@10", "hr@10"), "bpr": ("ndcg@10", "recall@10"), "collm_mf": ("auc",)}

# the folder names the LLM configs read (configs/llm/**: cf_model_path)
EXPORT_NAMES = {"sasrec": "sasrec_ml100k_loo", "bpr": "bpr_ml100k_random", "collm_mf": "mf_ml1m_collm"}


def _ensure_split(folder: Path, prepare_args: list[str]) -> None:
    if (folder / "manifest.json").is_file():
        return
    from collab_llm.data.cli import main as prepare_main

    print(f"[bench] preparing {folder}", flush=True)
    prepare_main([*prepare_args, "--out", str(folder)])


def _headline(name: str, result, seed: int | None) -> dict:
    """One seed's headline test figures, best validation score and training time (``seed=None``: the config's)."""
    row = {"seed": "config" if seed is None else seed, "best_valid": result.best_valid,
           "best_epoch": result.best_epoch, "train_s": round(result.train_seconds, 1)}
    row.update({key.replace("@", ""): result.test_metrics[key] for key in HEADLINE[name]})
    return row


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--only", default="sasrec,bpr,collm_mf", help="comma-separated subset of " + ",".join(RUNS))
    parser.add_argument("--export_root", default=None, help="also export each model under this folder")
    parser.add_argument("--seeds", default="", help="extra seeds to train each model with, e.g. 1,2 (not exported)")
    args = parser.parse_args(argv)
    try:
        extra_seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise SystemExit(f"--seeds takes comma-separated integers, got {args.seeds!r}") from None
    torch.set_num_threads(args.threads)
    os.chdir(ROOT)
    from cf_models.cli import fit

    summary: dict[str, float | int | str] = {"threads": args.threads, "load_avg_1m_at_start": os.getloadavg()[0]}
    for name in args.only.split(","):
        if name not in RUNS:
            raise SystemExit(f"unknown run {name!r}; expected one of {sorted(RUNS)}")
        config, split, prepare_args = RUNS[name]
        _ensure_split(ROOT / split, prepare_args)
        base_args = ["--config", config, "--data.init_args.split_dir", split]
        cli_args = list(base_args)
        if args.export_root:
            cli_args += ["--export_dir", str(Path(args.export_root) / EXPORT_NAMES[name])]
        start = time.perf_counter()
        cpu_start = time.process_time()
        result = fit(cli_args)
        wall = time.perf_counter() - start
        print(f"[bench] {name}: {json.dumps(result.as_dict(), sort_keys=True)}", flush=True)
        t = result.test_metrics
        summary[f"{name}_train_s"] = round(result.train_seconds, 1)
        summary[f"{name}_total_s"] = round(wall, 1)
        summary[f"{name}_cpu_s"] = round(time.process_time() - cpu_start, 1)
        summary[f"{name}_epochs"] = result.epochs_run
        summary[f"{name}_best_epoch"] = result.best_epoch if result.best_epoch is not None else -1
        if name == "sasrec":
            for key in ("ndcg@10", "hr@10", "mrr", "filtered/ndcg@10", "filtered/hr@10", "cand/hr@1", "seen_share@10"):
                summary["sasrec_" + key.replace("filtered/", "filtered_").replace("cand/", "cand_").replace("@", "")] = t[key]
        elif name == "bpr":
            for key in ("ndcg@10", "recall@10", "hr@10"):
                summary["bpr_" + key.replace("@", "")] = t[key]
        else:
            summary["collm_mf_auc"] = t["auc"]
            summary["collm_mf_uauc"] = t["uauc"]
            summary["collm_mf_uauc_users"] = int(t["uauc_users"])
        if extra_seeds:
            per_seed = [_headline(name, result, seed=None)]
            for seed in extra_seeds:
                other = fit([*base_args, "--seed_everything", str(seed), "--data.init_args.seed", str(seed)])
                per_seed.append(_headline(name, other, seed))
                print(f"[bench] {name} seed {seed}: {json.dumps(per_seed[-1], sort_keys=True)}", flush=True)
            summary[f"{name}_seeds"] = per_seed
            for key in HEADLINE[name]:
                metric = key.replace("@", "")
                summary[f"{name}_mean_{metric}"] = sum(r[metric] for r in per_seed) / len(per_seed)
    summary["load_avg_1m_at_end"] = os.getloadavg()[0]
    print(json.dumps(summary, sort_keys=True), flush=True)
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
