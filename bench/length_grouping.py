"""Length-grouped training batches vs the plain shuffle, measured side by side in one run.

The same split, template, batch size and number of batches; the plain order is
``DistributedSampler(shuffle=True, seed)`` (the default), the grouped one
:class:`collab_llm.datamodule.LengthGroupedSampler` (``group_by_length: true``). For each prompt
view (text, hybrid) it counts the tokens of the first ``--batches`` training batches: real tokens,
padded tokens (batch x longest row), the padding share, and the ratio of padded tokens (plain /
grouped). With ``--time-steps K`` it also times K training steps (forward + backward of the LM loss
through LoRA on the frozen backbone, ``dtype: auto``) of each order on the text view, the two
orders interleaved batch by batch after a warm-up step, and reports the ratio of their medians and
of their totals.

Usage::

    OMP_NUM_THREADS=2 python bench/length_grouping.py --split work/ml100k_loo --template llara_movielens \\
        --batches 48 --batch-size 8 --time-steps 8

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _batches(split: str, template: str, tokenizer: str, batch_size: int, n: int, grouped: bool, seed: int,
             megabatch: int) -> list[dict[str, Any]]:
    from collab_llm.datamodule import RecDataModule

    dm = RecDataModule(split, template, tokenizer, batch_size=batch_size, seed=seed, group_by_length=grouped,
                       length_megabatch=megabatch)
    dm.setup("fit")
    out = []
    for batch in dm.train_dataloader():
        out.append(batch)
        if len(out) == n:
            break
    return out


def _counts(batches: list[dict[str, Any]], mode: str) -> dict[str, float]:
    real = sum(int(b[mode]["attention_mask"].sum()) for b in batches)
    padded = sum(int(b[mode]["attention_mask"].numel()) for b in batches)
    return {"real_tokens": real, "padded_tokens": padded, "padding_share": round(1 - real / padded, 4)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--split", required=True, help="a prepared split folder")
    p.add_argument("--template", default="llara_movielens")
    p.add_argument("--backbone", default=None, help="HF folder (default: the cached SmolLM2-135M-Instruct)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--batches", type=int, default=48)
    p.add_argument("--megabatch", type=int, default=8)
    p.add_argument("--time-steps", type=int, default=0, help="also time this many training steps of each order")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="also write the result JSON here")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    from collab_llm.assets import find_assets
    from collab_llm.backbone import cpu_description, resolve_dtype
    from collab_llm.io import emit_result

    backbone = a.backbone
    if backbone is None:
        assets = find_assets()
        if assets is None:
            raise SystemExit("no --backbone and no cached SmolLM2 (run `collab-llm assets`)")
        backbone = str(assets.smollm2)
    start = time.perf_counter()
    orders = {name: _batches(a.split, a.template, backbone, a.batch_size, a.batches, name == "grouped", a.seed,
                             a.megabatch) for name in ("plain", "grouped")}
    result: dict[str, Any] = {"cpu": cpu_description(), "threads": torch.get_num_threads(), "split": a.split,
                              "template": a.template, "batch_size": a.batch_size, "batches": a.batches,
                              "megabatch": a.megabatch, "collate_s": round(time.perf_counter() - start, 1)}
    for mode in orders["plain"][0]:
        if mode not in ("text", "hybrid"):
            continue
        for name, batches in orders.items():
            for k, v in _counts(batches, mode).items():
                result[f"{mode}_{name}_{k}"] = v
        result[f"{mode}_padded_tokens_ratio"] = round(
            result[f"{mode}_plain_padded_tokens"] / result[f"{mode}_grouped_padded_tokens"], 3)
        print(f"{mode}: padding share plain {result[f'{mode}_plain_padding_share']:.3f}, grouped "
              f"{result[f'{mode}_grouped_padding_share']:.3f}; padded tokens plain/grouped "
              f"{result[f'{mode}_padded_tokens_ratio']:.3f}", flush=True)
    if a.time_steps:
        from peft import get_peft_model

        from collab_llm.backbone import load_backbone, lora_config

        dtype = resolve_dtype("auto")
        base = load_backbone(backbone, dtype).model
        model = get_peft_model(base, lora_config(base))
        model.train()

        def step(batch: dict[str, Any]) -> float:
            view = batch["text"]
            t0 = time.perf_counter()
            out = model(input_ids=view["input_ids"], attention_mask=view["attention_mask"], labels=view["labels"])
            out.loss.backward()
            model.zero_grad(set_to_none=True)
            return time.perf_counter() - t0

        step(orders["plain"][0])  # warm-up
        times: dict[str, list[float]] = {"plain": [], "grouped": []}
        for i in range(min(a.time_steps, a.batches)):
            for name in ("plain", "grouped") if i % 2 == 0 else ("grouped", "plain"):
                times[name].append(step(orders[name][i]))
        for name, ts in times.items():
            result[f"step_s_median_{name}"] = round(statistics.median(ts), 3)
            result[f"step_s_total_{name}"] = round(sum(ts), 2)
        result["dtype"] = dtype
        result["step_time_ratio_total"] = round(result["step_s_total_plain"] / result["step_s_total_grouped"], 3)
        print(f"text steps: plain {result['step_s_total_plain']:.1f} s, grouped {result['step_s_total_grouped']:.1f} s "
              f"({result['step_time_ratio_total']:.2f}x) over {len(times['plain'])} batches each", flush=True)
    return emit_result(result, a.out, "python bench/length_grouping.py " + " ".join(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
