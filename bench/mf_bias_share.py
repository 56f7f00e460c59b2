"""How much of an MF model's Yes/No signal lives in its bias terms, which CoLLM-style injection drops?

An MF with biases scores ``<p_u, q_i> + b_u + b_i + b``; the soft tokens the LLM side injects are
``p_u`` and ``q_i`` only (unless the model is exported folded, ``fold_biases_on_export``). On the same
seeded sample of rows as ``bench/injection_learning.py`` (``--yesno-rows``, ``--seed``) this prints the
AUC of the full score and of each part: the inner product alone (the most a head reading the injected
tokens of the unfolded model can recover), the item bias alone, the user bias alone, and the inner
product plus the item bias. Reading only exported weights, it runs in seconds.

Usage::

    python bench/mf_bias_share.py --split work/injection_bench/ml1m_collm \
        --cf-model work/injection_bench/cf/mf_ml1m_collm --out results/levers/mf_bias_share.json

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@torch.no_grad()
def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--split", required=True, help="a prepared Yes/No split")
    p.add_argument("--cf-model", required=True, help="an exported MF model with biases (use_bias: true), unfolded")
    p.add_argument("--rows", type=int, default=500, help="rows per table (the seeded sample of the injection bench)")
    p.add_argument("--tables", nargs="+", default=["valid", "test"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    from cf_models.base import CFModel
    from cf_models.mf import MatrixFactorization
    from collab_llm.datamodule import sample_rows
    from collab_llm.errors import UserError
    from collab_llm.io import emit_result
    from collab_llm.metrics import auc

    model = CFModel.from_pretrained(args.cf_model).eval()
    if not isinstance(model, MatrixFactorization) or not model.config.use_bias:
        raise UserError(f"--cf-model {args.cf_model}: needs an MF export with biases (use_bias: true, not folded)")
    result: dict[str, Any] = {"cf_model": args.cf_model, "split": args.split, "rows": args.rows, "seed": args.seed}
    for table in args.tables:
        rows = sample_rows(pd.read_parquet(Path(args.split) / f"{table}.parquet"), args.rows, args.seed)
        users = torch.tensor(rows["user"].to_numpy())
        items = torch.tensor(rows["item"].to_numpy())
        labels = rows["label"].to_numpy()
        dot = (model.user_embeddings(users) * model.item_embeddings(items)).sum(-1)
        b_u = model.user_bias(users).squeeze(-1)
        b_i = model.item_bias(items).squeeze(-1)
        parts = {"full": model.pair_scores(items, users=users), "dot": dot, "item_bias": b_i, "user_bias": b_u,
                 "dot_plus_item_bias": dot + b_i}
        for name, s in parts.items():
            result[f"{table}_auc_{name}"] = round(auc(labels, s.float().numpy()), 4)
        print(f"[mf-bias] {table}: " + ", ".join(f"{k} {result[f'{table}_auc_{k}']:.3f}" for k in parts), flush=True)
    return emit_result(result, args.out, "python bench/mf_bias_share.py " + " ".join(argv if argv is not None else sys.argv[1:]))


if __name__ == "__main__":
    main()
