"""bf16 vs fp32 training step of the frozen backbone, measured side by side in one run.

Two copies of the same model are built with the same seed: the backbone's weights in float32, and
in bfloat16 (``dtype: bfloat16``: weights stored in bf16, no autocast; LoRA, projector and head
stay float32). On the same batch, each step (forward + backward + AdamW) is timed after warm-up,
the two precisions interleaved round by round (the speed-up is the median of per-round ratios, so
a change of machine load cancels out). Two steps are timed: the LLaRA hybrid prompt with its LM
loss on the answer (``llara``), and the item-scoring head recipe (``head``: prompt only, no LM head).

Also printed: the loss of both copies on the same batch before any update (eval mode, no dropout:
equal within bf16 rounding), the best GEMM rate of this machine in each precision (several shapes
of the model's own matmuls and 2048^2), the model FLOP utilisation of each step against the best
rate of its precision (``4 * backbone params * tokens / step time``: forward 2, backward to the
activations 2; the frozen weights get no gradient), and what ``dtype: auto`` picks here.

Usage::

    OMP_NUM_THREADS=2 python bench/precision_step.py --split work/injection_bench/ml100k_loo \\
        --cf-model work/injection_bench/cf/sasrec_ml100k_loo

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def gemm_rate(dtype: torch.dtype, shapes: list[tuple[int, int, int]], reps: int = 5) -> dict[str, float]:
    """FLOP/s of ``(m, k) @ (k, n)`` per shape (median of ``reps`` after a warm-up call)."""
    out = {}
    for m, k, n in shapes:
        a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
        torch.mm(a, b)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            torch.mm(a, b)
            times.append(time.perf_counter() - t0)
        out[f"{m}x{k}x{n}"] = 2.0 * m * k * n / statistics.median(times)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--split", required=True, help="a prepared next-item split (loo)")
    p.add_argument("--cf-model", required=True, help="its SASRec (save_pretrained folder)")
    p.add_argument("--backbone", default=None)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--lora-dropout", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)

    from collab_llm.assets import ensure_assets
    from collab_llm.backbone import cpu_flags, native_bf16, resolve_dtype
    from collab_llm.collate import PromptCollator, TableDataset, titles_from_items
    from collab_llm.adapters import LoRA
    from collab_llm.module import CollabLLM

    backbone = a.backbone or str(ensure_assets().smollm2)
    split = Path(a.split)
    titles = titles_from_items(pd.read_parquet(split / "items.parquet"))
    train = pd.read_parquet(split / "train.parquet")
    rows = train[train["history"].map(len) >= 10].iloc[: a.batch_size]
    result: dict[str, Any] = {"auto_dtype": resolve_dtype("auto"), "native_bf16": native_bf16(),
                              "cpu_flags_bf16": sorted(f for f in cpu_flags() if "bf16" in f or f.startswith("amx")),
                              "threads": a.threads, "batch_size": a.batch_size}
    print(f"[precision] dtype auto -> {result['auto_dtype']} (native bf16: {result['native_bf16']}, flags "
          f"{result['cpu_flags_bf16']}), {a.threads} threads", flush=True)

    for recipe, template, scorer, loss_kind in (("llara", "llara_movielens", "likelihood", "lm"),
                                                 ("head", "head_next_item", "head", "head")):
        models = {}
        for tag, dtype in (("fp32", "float32"), ("bf16", "bfloat16")):
            models[tag] = CollabLLM(
                backbone_path=backbone, template=template, regime="joint", cf_model_path=a.cf_model,
                projector="scaled_llara_mlp", dtype=dtype, adapter=LoRA(r=8, alpha=32.0, dropout=a.lora_dropout),
                learning_rate=1e-5, scorer=scorer, head_init="none", seed=0,
            )
        m0 = models["fp32"]
        collator = PromptCollator(m0.tokenizer, m0.template, titles, m0.placeholder_ids, ["hybrid"], 2048, 10, 1)
        ds = TableDataset(rows, "next_item")
        batch = collator([ds[i] for i in range(len(ds))])
        view = batch["hybrid"]
        tokens = int(view["prompt_attention_mask" if loss_kind == "head" else "attention_mask"].numel())

        def loss_of(model: CollabLLM) -> torch.Tensor:
            return model.head_loss(batch, "hybrid") if loss_kind == "head" else model.lm_loss(batch, "hybrid")

        with torch.no_grad():
            for m in models.values():
                m.eval()
            l32, l16 = float(loss_of(models["fp32"])), float(loss_of(models["bf16"]))
            for m in models.values():
                m.train()
        result[f"{recipe}_loss_fp32"], result[f"{recipe}_loss_bf16"] = l32, l16
        result[f"{recipe}_loss_rel_diff"] = abs(l16 - l32) / abs(l32)
        optims = {k: torch.optim.AdamW(m.trainable_parameters(), lr=1e-5) for k, m in models.items()}

        def step(tag: str) -> Callable[[], None]:
            def run() -> None:
                loss = loss_of(models[tag])
                loss.backward()
                optims[tag].step()
                optims[tag].zero_grad(set_to_none=True)
            return run

        for _ in range(a.warmup):
            step("fp32")()
            step("bf16")()
        times: dict[str, list[float]] = {"fp32": [], "bf16": []}
        for _ in range(a.rounds):
            for tag in ("fp32", "bf16"):
                t0 = time.perf_counter()
                step(tag)()
                times[tag].append(time.perf_counter() - t0)
        params = sum(p.numel() for n, p in m0.llm.named_parameters() if "lora_" not in n)
        if loss_kind == "head":  # no LM head in this step: the (tied) output matrix is not multiplied
            params -= m0.llm.get_input_embeddings().weight.numel()
        for tag in times:
            result[f"{recipe}_step_s_{tag}"] = statistics.median(times[tag])
        result[f"{recipe}_speedup_bf16"] = statistics.median(f / b for f, b in zip(times["fp32"], times["bf16"]))
        result[f"{recipe}_tokens_per_step"] = tokens
        result[f"{recipe}_flops_per_step"] = 4.0 * params * tokens
        print(f"[precision] {recipe}: loss fp32 {l32:.5f} bf16 {l16:.5f} (rel diff {result[f'{recipe}_loss_rel_diff']:.2e}); "
              f"step fp32 {result[f'{recipe}_step_s_fp32']:.2f} s, bf16 {result[f'{recipe}_step_s_bf16']:.2f} s: "
              f"bf16 {result[f'{recipe}_speedup_bf16']:.2f}x (median per-round ratio, {a.rounds} rounds, {tokens} tokens/step)",
              flush=True)

    hidden = 576
    shapes = [(512, hidden, 1536), (512, 1536, hidden), (512, hidden, hidden), (2048, 2048, 2048)]
    rates = {tag: gemm_rate(dt, shapes) for tag, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    for tag in rates:
        best = max(rates[tag].values())
        result[f"gemm_best_{tag}"] = best
        result[f"gemm_{tag}"] = rates[tag]
    for recipe in ("llara", "head"):
        for tag in ("fp32", "bf16"):
            result[f"{recipe}_mfu_{tag}"] = result[f"{recipe}_flops_per_step"] / result[f"{recipe}_step_s_{tag}"] / result[f"gemm_best_{tag}"]
    print(f"[precision] best GEMM: fp32 {result['gemm_best_fp32'] / 1e9:.0f} GFLOP/s, bf16 {result['gemm_best_bf16'] / 1e9:.0f} "
          f"GFLOP/s | MFU llara fp32 {result['llara_mfu_fp32']:.2f} bf16 {result['llara_mfu_bf16']:.2f}, head fp32 "
          f"{result['head_mfu_fp32']:.2f} bf16 {result['head_mfu_bf16']:.2f}", flush=True)
    from collab_llm.io import emit_result

    return emit_result(result, a.out, "python bench/precision_step.py " + " ".join(argv if argv is not None else sys.argv[1:]))


if __name__ == "__main__":
    main()
