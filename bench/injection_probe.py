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

``--positions m [m ...]``: also read the states at the soft-token positions of the ``m`` most recent
history items, concatenated (oldest first; zeros where a history is shorter); ``m = 1`` is the last
position, what the head recipes read. At ``m > 1`` the "input" row is a linear read-out of the ``m``
most recent soft tokens themselves, without the LLM: a layer reading more than it, on the same rows
(the paired line, per ``--paired-layer``), is the LLM adding to its CF input.

Usage::

    OMP_NUM_THREADS=2 python bench/injection_probe.py --split work/injection_bench/planted_loo \\
        --cf-model work/injection_bench/cf/sasrec_planted_loo
    # the m most recent soft tokens' states, blocks 2 / 4 / 8 / final against the input (levers 35-36):
    OMP_NUM_THREADS=2 python bench/injection_probe.py --split work/injection_bench/ml100k_loo \
        --cf-model work/injection_bench/cf/sasrec_ml100k_loo --target next_item --train-rows 384 --lam 100 \
        --positions 1 3 5 --layers 0 2 4 8 30 --out results/levers/probe_ml100k_positions.json
    # the same on 8 times the alignment rows (levers 37-38):
    OMP_NUM_THREADS=2 python bench/injection_probe.py --split work/injection_bench/ml100k_loo \
        --cf-model work/injection_bench/cf/sasrec_ml100k_loo --target next_item --train-rows 3072 --rows 200 --lam 100 \
        --positions 1 3 5 --layers 0 2 4 8 30 --out results/levers/probe_ml100k_positions_3072.json
    # ridge strengths swept, each layer also read next to its input (lever 39), then the chosen setting on
    # test rows, once (lever 40):
    OMP_NUM_THREADS=2 python bench/injection_probe.py --split work/injection_bench/ml100k_loo \
        --cf-model work/injection_bench/cf/sasrec_ml100k_loo --target next_item --train-rows 3072 --rows 200 \
        --lam 100 1000 10000 --positions 1 3 5 --layers 0 4 --with-input --out results/levers/probe_ml100k_with_input_3072.json
    OMP_NUM_THREADS=2 python bench/injection_probe.py --split work/injection_bench/ml100k_loo \
        --cf-model work/injection_bench/cf/sasrec_ml100k_loo --target next_item --train-rows 3072 --rows 200 --table test \
        --lam 10000 --positions 5 --layers 0 4 --out results/levers/probe_ml100k_positions5_test.json
    # the ridge sweep at the head recipes' 384 prompts (lever 41):
    OMP_NUM_THREADS=2 python bench/injection_probe.py --split work/injection_bench/ml100k_loo \
        --cf-model work/injection_bench/cf/sasrec_ml100k_loo --target next_item --train-rows 384 --rows 200 \
        --lam 100 1000 10000 --positions 1 3 5 --layers 0 4 --out results/levers/probe_ml100k_lams_384.json

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
    p.add_argument("--table", choices=("valid", "test"), default="valid",
                   help="the table the rows are scored on: settings are chosen on valid; test confirms a chosen one once")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--lam", type=float, nargs="+", default=[10.0],
                   help="ridge strength(s); with several, every read is made at each (names get ~<lam>)")
    p.add_argument("--target", choices=("sequence", "next_item"), default="sequence",
                   help="regress onto SASRec's sequence representation, or onto the true next item's CF embedding (the labels only)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="also write the JSON result here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--positions", type=int, nargs="+", default=[1],
                   help="read the states at the soft tokens of the m most recent history items, concatenated")
    p.add_argument("--layers", type=int, nargs="+", default=None,
                   help="hidden-state indices to probe (0: the input, k: decoder block k's output; default: all)")
    p.add_argument("--with-input", action="store_true",
                   help="also read each layer's states concatenated with the input soft tokens they came from: if that "
                        "reads more than the input alone (paired), the layer's states hold signal the input lacks")
    p.add_argument("--paired-layer", type=int, default=4,
                   help="paired HR@1 interval of this layer minus the input, per m")
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

    placeholder_ids = torch.tensor([bb.placeholder_ids[t] for t in ITEM_PLACEHOLDERS if t in bb.placeholder_ids])
    widest = max(a.positions)

    def recent_positions(ids: torch.Tensor) -> torch.Tensor:
        """``(B, widest)`` positions of the most recent history soft tokens, oldest first; -1 where absent."""
        out = torch.full((ids.shape[0], widest), -1, dtype=torch.long)
        for b, row in enumerate(torch.isin(ids, placeholder_ids)):
            pos = row.nonzero().squeeze(-1)[-widest:]
            out[b, widest - len(pos):] = pos
        return out

    def gather(h: torch.Tensor, pos: torch.Tensor) -> np.ndarray:
        """``(B, widest, H)`` states at ``pos`` (zeros at -1)."""
        picked = h[torch.arange(h.shape[0])[:, None], pos.clamp(min=0)]
        return (picked * (pos >= 0)[..., None]).float().numpy()

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
            pos = recent_positions(view["prompt_input_ids"])
            assert bool((pos[:, -1] == pos.new_full((len(pos),), embeds.shape[1] - 1)).all()), "the prompt must end with a soft token"
            for i, h in enumerate(hs):
                layers[i].append(gather(h, pos))
            token.append(embeds[:, -1].float().numpy())
            seq.append(cf.sequence_representation(batch["history"]).float().numpy())
            if a.target == "sequence":
                query.append(seq[-1])
            else:
                query.append(cf.item_embeddings(batch["target"]).float().numpy())
            cand.append(cf.item_embeddings(batch["candidates"]).float().numpy())
        return [np.concatenate(x) for x in layers], np.concatenate(query), np.concatenate(cand), np.concatenate(seq)

    train = sample_rows(pd.read_parquet(split / "train.parquet"), a.train_rows, a.seed)
    valid = sample_rows(pd.read_parquet(split / f"{a.table}.parquet"), a.rows, a.seed)  # the rows scored
    h_tr, q_tr, _, _ = features(train)
    h_va, q_va, c_va, s_va = features(valid)
    target = np.array([list(c).index(t) for c, t in zip(valid["candidates"], valid["target"])])

    def rank_metrics(scores: np.ndarray) -> tuple[float, float]:
        t = scores[np.arange(len(scores)), target][:, None]
        ranks = (scores >= t).sum(1) - 1
        return float((ranks == 0).mean()), float(np.where(ranks < 10, 1 / np.log2(ranks + 2), 0).mean())

    result: dict = {"target": a.target, "dtype": dtype, "template": a.template, "train_rows": len(train), "rows": len(valid),
                    "table": a.table,
                    "threads": a.threads}
    hr, nd = rank_metrics(np.einsum("bd,bcd->bc", s_va, c_va))
    result["sasrec_hr1"], result["sasrec_ndcg10"] = round(hr, 4), round(nd, 4)
    print(f"SASRec itself: HR@1 {hr:.3f} NDCG@10 {nd:.3f}", flush=True)
    from collab_llm.metrics import paired_difference

    per_layer, paired = [], []
    chosen = a.layers if a.layers is not None else list(range(len(h_tr)))

    def read(xtr: np.ndarray, xva: np.ndarray, lam: float) -> tuple[float, float, float, np.ndarray]:
        """The recipe's own fit (standardise, then ridge) of ``xtr`` onto the targets; on the validation rows:
        R^2, HR@1, NDCG@10 and the per-row hits."""
        head = ItemScoringHead(xtr.shape[1], q_tr.shape[1])
        head.fit_least_squares(torch.from_numpy(xtr), torch.from_numpy(q_tr), lam)
        with torch.no_grad():
            pred = head.query(head.standardize(torch.from_numpy(xva))).double().numpy()
        r2 = 1 - ((pred - q_va) ** 2).sum() / ((q_va - q_tr.mean(0)) ** 2).sum()
        scores = np.einsum("bd,bcd->bc", pred, c_va)
        hr, nd = rank_metrics(scores)
        return float(r2), hr, nd, (scores.argmax(1) == target).astype(float)

    def record(name: str, m: int, tag: str, r2: float, hr: float, nd: float) -> None:
        # one read per layer, or (several --positions) per layer and m: "layer4@3"; several ridges: "layer4@3~1000"
        per_layer.append({"layer": (name if len(a.positions) == 1 else f"{name}@{m}") + tag, "r2": round(r2, 4),
                          "hr1": round(hr, 4), "ndcg10": round(nd, 4)})
        print(f"m={m} {name + tag:>8}: R^2 {r2:+.3f}  HR@1 {hr:.3f}  NDCG@10 {nd:.3f}", flush=True)

    def pair(name: str, m: int, hits: np.ndarray, base: np.ndarray, tag: str = "") -> None:
        d = paired_difference(hits, base, seed=a.seed)
        paired.append({"layer": f"{name}@{m}{tag}", "hr1_diff_vs_input": round(d.value, 4),
                       "ci_low": round(d.ci_low, 4), "ci_high": round(d.ci_high, 4)})
        print(f"m={m}{tag}: {name} minus input, HR@1 {d.value:+.3f} [{d.ci_low:+.3f}, {d.ci_high:+.3f}] "
              "(paired bootstrap, same rows)", flush=True)

    for m in a.positions:
        xs = {i: tuple(h[i][:, widest - m:].reshape(len(h[i]), -1) for h in (h_tr, h_va)) for i in set(chosen) | {0}}
        for lam in a.lam:
            tag = "" if len(a.lam) == 1 else f"~{lam:g}"  # several ridge strengths: "layer4@3~1000"
            hits: dict[int, np.ndarray] = {}
            both: dict[int, np.ndarray] = {}
            for i in chosen:
                r2, hr, nd, hits[i] = read(*xs[i], lam)
                name = "input" if i == 0 else ("final" if i == len(h_tr) - 1 else f"layer{i}")
                record(name, m, tag, r2, hr, nd)
                if a.with_input and i != 0:  # the layer's states next to the input they came from
                    r2, hr, nd, both[i] = read(*(np.concatenate([x0, x], axis=1) for x0, x in zip(xs[0], xs[i])), lam)
                    record(f"{name}+input", m, tag, r2, hr, nd)
            if 0 in hits and a.paired_layer in hits and a.paired_layer != 0:
                pair(f"layer{a.paired_layer}", m, hits[a.paired_layer], hits[0], tag)
                if a.paired_layer in both:
                    pair(f"layer{a.paired_layer}+input", m, both[a.paired_layer], hits[0], tag)
    result["layers"] = per_layer
    if paired:
        result["paired"] = paired
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    from collab_llm.io import emit_result

    return emit_result(result, a.out, "python bench/injection_probe.py " + " ".join(argv if argv is not None else sys.argv[1:]))


if __name__ == "__main__":
    main()
