"""Where in the frozen LLM is the injected CF signal linearly readable? A probe, no training of the LLM.

Builds the hybrid prompts of a next-item template (default ``head_next_item``: history last, soft
tokens from a freshly initialised projector), runs the FROZEN backbone (no LoRA) once over a sample
of training rows and of validation rows, and fits a ridge regression from the hidden state of the
last prompt position at every layer (standardised per feature; the fit of
:meth:`collab_llm.heads.ItemScoringHead.fit_least_squares`, the recipe's own) to the CF model's query for the row (SASRec's sequence
representation of the history, the vector SASRec scores items with). On the validation rows it
reports per layer: R^2 of the fit, and HR@1 / NDCG@10 of ranking the 20 stored candidates by
``ridge(h) . e_c`` (e_c: the candidates' CF item embeddings; scores as SASRec's). Compared with
SASRec itself on the same rows (the ceiling) and with the same probe on the projected soft token
of the last history item alone (what the input holds before any layer).

If the last layer reads worse than the input, the signal is there but buried by the layers; a head
on the last hidden state then has to learn to dig it out (slow), while an earlier layer or pooled
layers could be read directly.

Usage::

    OMP_NUM_THREADS=2 python bench/injection_probe.py --split work/injection_bench/planted_loo \\
        --cf-model work/injection_bench/cf/sasrec_planted_loo

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--split", required=True)
    p.add_argument("--cf-model", required=True, help="a SASRec saved with save_pretrained")
    p.add_argument("--backbone", default=None)
    p.add_argument("--template", default="head_next_item")
    p.add_argument("--projector", default="scaled_llara_mlp")
    p.add_argument("--train-rows", type=int, default=600)
    p.add_argument("--rows", type=int, default=200, help="validation rows")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--lam", type=float, default=10.0)
    p.add_argument("--target", choices=("sequence", "next_item"), default="sequence",
                   help="regress onto SASRec's sequence representation, or onto the true next item's CF embedding (the labels only)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="also write the JSON result here")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)

    import importlib

    from cf_models.base import CFModel

    importlib.import_module("cf_models.sasrec")  # registers the model type
    from collab_llm import scoring
    from collab_llm.assets import ensure_assets
    from collab_llm.backbone import load_backbone, mean_embedding_norm, resolve_dtype
    from collab_llm.collate import PromptCollator, TableDataset, titles_from_items
    from collab_llm.datamodule import sample_rows
    from collab_llm.heads import ItemScoringHead
    from collab_llm.injection import SoftTokenInjector
    from collab_llm.prompts import ITEM_PLACEHOLDERS, load_template
    from projectors import build_projector

    t0 = time.perf_counter()
    backbone_path = a.backbone or str(ensure_assets().smollm2)
    dtype = resolve_dtype(a.dtype)
    bb = load_backbone(backbone_path, dtype)
    model = bb.model
    cf = CFModel.from_pretrained(a.cf_model).eval()
    torch.manual_seed(a.seed + 1)
    proj = build_projector(a.projector, int(cf.embedding_dim), bb.hidden_size, target_norm=mean_embedding_norm(model)).eval()
    injector = SoftTokenInjector(cf, proj, [bb.placeholder_ids[t] for t in ITEM_PLACEHOLDERS], [])
    split = Path(a.split)
    titles = titles_from_items(pd.read_parquet(split / "items.parquet"))
    collator = PromptCollator(bb.tokenizer, load_template(a.template), titles, bb.placeholder_ids, ["hybrid"], 1024, 10, 1)

    @torch.no_grad()
    def features(rows: pd.DataFrame) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
        ds = TableDataset(rows, "next_item")
        layers: list[list[np.ndarray]] = []
        token, query, cand, seq = [], [], [], []
        for start in range(0, len(ds), a.batch_size):
            batch = collator([ds[i] for i in range(start, min(len(ds), start + a.batch_size))])
            view = batch["hybrid"]
            embeds = injector(model.get_input_embeddings(), view["prompt_input_ids"], view["soft_item_ids"], view["soft_user_ids"])
            mask = view["prompt_attention_mask"]
            out = model.base_model(inputs_embeds=embeds, attention_mask=mask, position_ids=scoring.position_ids_from_mask(mask),
                                   output_hidden_states=True, use_cache=False)
            hs = out.hidden_states  # embeddings, layer 1..L-1 outputs, final (normed) output
            if not layers:
                layers = [[] for _ in hs]
            for i, h in enumerate(hs):
                layers[i].append(h[:, -1].float().numpy())
            token.append(embeds[:, -1].float().numpy())
            seq.append(cf.sequence_representation(batch["history"]).float().numpy())
            if a.target == "sequence":
                query.append(seq[-1])
            else:
                query.append(cf.item_embeddings(batch["target"]).float().numpy())
            cand.append(cf.item_embeddings(batch["candidates"]).float().numpy())
        return [np.concatenate(x) for x in layers], np.concatenate(query), np.concatenate(cand), np.concatenate(seq)

    train = sample_rows(pd.read_parquet(split / "train.parquet"), a.train_rows, a.seed)
    valid = sample_rows(pd.read_parquet(split / "valid.parquet"), a.rows, a.seed)
    h_tr, q_tr, _, _ = features(train)
    h_va, q_va, c_va, s_va = features(valid)
    target = np.array([list(c).index(t) for c, t in zip(valid["candidates"], valid["target"])])

    def rank_metrics(scores: np.ndarray) -> tuple[float, float]:
        t = scores[np.arange(len(scores)), target][:, None]
        ranks = (scores >= t).sum(1) - 1
        return float((ranks == 0).mean()), float(np.where(ranks < 10, 1 / np.log2(ranks + 2), 0).mean())

    result: dict = {"target": a.target, "dtype": dtype, "template": a.template, "train_rows": len(train), "rows": len(valid)}
    hr, nd = rank_metrics(np.einsum("bd,bcd->bc", s_va, c_va))
    result["sasrec_hr1"], result["sasrec_ndcg10"] = round(hr, 4), round(nd, 4)
    print(f"SASRec itself: HR@1 {hr:.3f} NDCG@10 {nd:.3f}", flush=True)
    per_layer = []
    for i, (xtr, xva) in enumerate(zip(h_tr, h_va)):
        head = ItemScoringHead(xtr.shape[1], q_tr.shape[1])  # the recipe's own fit: standardise, then ridge
        head.fit_least_squares(torch.from_numpy(xtr), torch.from_numpy(q_tr), a.lam)
        with torch.no_grad():
            pred = head.query(head.standardize(torch.from_numpy(xva))).double().numpy()
        r2 = 1 - ((pred - q_va) ** 2).sum() / ((q_va - q_tr.mean(0)) ** 2).sum()
        hr, nd = rank_metrics(np.einsum("bd,bcd->bc", pred, c_va))
        name = "input" if i == 0 else ("final" if i == len(h_tr) - 1 else f"layer{i}")
        per_layer.append({"layer": name, "r2": round(float(r2), 4), "hr1": round(hr, 4), "ndcg10": round(nd, 4)})
        print(f"{name:>8}: R^2 {r2:+.3f}  HR@1 {hr:.3f}  NDCG@10 {nd:.3f}", flush=True)
    result["layers"] = per_layer
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    from collab_llm.io import emit_result

    return emit_result(result, a.out, "python bench/injection_probe.py " + " ".join(argv if argv is not None else sys.argv[1:]))


if __name__ == "__main__":
    main()
