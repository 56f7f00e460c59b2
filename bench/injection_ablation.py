"""Does a trained hybrid model use its soft tokens? An ablation on VALIDATION rows (never test).

Loads a bundle (LLaRA next-item, or CoLLM Yes/No) as a :class:`collab_llm.recommender.Recommender`, which
scores it the way it was trained (a BCE-trained CoLLM by the sigmoid of its Yes logit), and scores the same
validation rows three ways:

1. ``hybrid``: the prompt with the real soft tokens (what the model was trained and tested on);
2. ``shuffled``: the same prompt, but every soft token comes from another item (and user): ids are
   mapped through one fixed random permutation, so the tokens keep their distribution and lose
   their meaning;
3. ``text``: the text-only prompt (no soft tokens at all).

If (1) and (2) score alike, the model has not learned to read the collaborative signal (too few
steps, a projector that learns too slowly, or a bug in injection); if (1) beats (2), the signal is
used. It also prints the norms of the projected soft tokens next to the LLM's word embeddings.

Usage::

    OMP_NUM_THREADS=2 python bench/injection_ablation.py --bundle reports/full/nextitem/runs/llara/bundle \\
        --split work/ml100k_loo --rows 48

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", required=True)
    p.add_argument("--split", required=True, help="the prepared split the bundle was trained on")
    p.add_argument("--rows", type=int, default=48, help="validation rows (a seeded sample)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)

    from collab_llm import scoring
    from collab_llm.collate import PromptCollator, TableDataset, titles_from_items
    from collab_llm.data import load_split
    from collab_llm.datamodule import sample_rows
    from collab_llm.recommender import Recommender

    t_start = time.perf_counter()
    rec = Recommender.from_pretrained(a.bundle)  # scores the way it was trained (yes_no_loss, scorer, iLoRA gate)
    if rec.injector.cf_model is None or rec.injector.projector is None:
        raise SystemExit(f"{a.bundle}: a text-only bundle has no soft tokens to ablate")
    template = rec.template
    split = load_split(a.split)
    ids = rec.placeholder_ids
    collator = PromptCollator(rec.tokenizer, template, titles_from_items(split.items, "items"), ids,
                              ("text", "hybrid"), max_length=2048, max_history=10)
    rows = sample_rows(split.table("valid"), a.rows, a.seed)
    data = TableDataset(rows, template.task, "valid")
    g = torch.Generator().manual_seed(a.seed + 1)
    item_perm = torch.cat([torch.zeros(1, dtype=torch.long), torch.randperm(split.n_items, generator=g) + 1])
    user_perm = torch.cat([torch.zeros(1, dtype=torch.long), torch.randperm(split.n_users, generator=g) + 1])
    embedding = rec.llm.get_input_embeddings()
    key = "scores" if template.task == "next_item" else "score"
    out: dict[str, list] = {"hybrid": [], "shuffled": [], "text": []}
    targets, labels, users, warm = [], [], [], []
    soft_norms = []
    with torch.no_grad():
        for start in range(0, len(data), a.batch_size):
            batch = collator([data[i] for i in range(start, min(len(data), start + a.batch_size))])
            hy = batch["hybrid"]
            shuffled = {**batch, "hybrid": {**hy, "soft_item_ids": item_perm[hy["soft_item_ids"]],
                                            "soft_user_ids": user_perm[hy["soft_user_ids"]]}}
            embeds, _ = rec.embed(hy, prompt_only=True)
            mask_items, _ = rec.injector.placeholder_masks(hy["prompt_input_ids"])
            soft_norms.append(embeds[mask_items].norm(dim=-1))
            # one gate per row (iLoRA: from the history), the same for the three views
            for name, (b, mode) in {"hybrid": (batch, "hybrid"), "shuffled": (shuffled, "hybrid"),
                                    "text": (batch, "text")}.items():
                out[name].append(torch.tensor([r[key] for r in rec.score(b, mode)]))
            if template.task == "next_item":
                targets.append(batch["target_index"])
            else:
                labels += batch["label"].tolist()
                users += batch["users"].tolist()
                warm += batch["warm"].tolist() if "warm" in batch else [True] * len(batch["users"])

    word_norm = embedding.weight[: len(rec.tokenizer) - len(ids)].norm(dim=-1)
    soft = torch.cat(soft_norms)
    result: dict = {"bundle": str(a.bundle), "rows": len(data), "task": template.task,
                    "soft_token_norm_mean": float(soft.mean()), "word_embedding_norm_mean": float(word_norm.mean())}
    scores = {k: torch.cat(v) for k, v in out.items()}
    if template.task == "next_item":
        target = torch.cat(targets)
        for name, s in scores.items():
            m = scoring.ranking_metrics(s, target, n_resamples=200)
            result[f"{name}_hr@1"], result[f"{name}_ndcg@10"] = m["hr@1"].value, m["ndcg@10"].value
            result[f"{name}_ndcg@10_ci"] = [m["ndcg@10"].ci_low, m["ndcg@10"].ci_high]
        top = {k: s.argmax(dim=1) for k, s in scores.items()}
        result["top1_changed_by_shuffling"] = float((top["hybrid"] != top["shuffled"]).float().mean())
    else:
        for name, s in scores.items():
            m = scoring.yes_no_metrics(np.array(users), np.array(labels), s.numpy(), np.array(warm), n_resamples=200)
            result[f"{name}_auc"], result[f"{name}_auc_ci"] = m["auc"].value, [m["auc"].ci_low, m["auc"].ci_high]
    result["mean_abs_score_change_by_shuffling"] = float((scores["hybrid"] - scores["shuffled"]).abs().mean())
    result["wall_s"] = time.perf_counter() - t_start
    for k, v in result.items():
        print(f"{k}: {v}", flush=True)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
