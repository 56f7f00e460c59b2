"""bf16 vs fp32 training step of the frozen backbone, measured side by side in one run.

Two copies of the same model are built with the same seed: the backbone's weights in float32, and
in bfloat16 (``dtype: bfloat16``: weights stored in bf16, no autocast; LoRA, projector and head
stay float32). On the same batch, each step (forward + backward + AdamW) is timed after warm-up,
the two precisions interleaved round by round (the speed-up is the median of per-round ratios, so
a change of machine load cancels out). Two steps are timed: the LLaRA hybrid prompt with its LM
loss on the answer (``llara``), and the item-scoring head recipe (``head``: prompt only, no LM head).
The ``llara`` step is also timed with Hugging Face's own loss (``labels=``: logits at every position),
interleaved with the others on the same weights: the speed-up of the answer-only logits
(:func:`collab_llm.scoring.answer_lm_loss`, what training uses) in each precision; and with LoRA dropout
off (its Bernoulli masks, one per adapted module and step, drawn by the CPU's serial generator): their
share of the step; and with the masks drawn packed (``LoRA(dropout_masks="bits16")``,
:class:`collab_llm.dropout.PackedDropout`: four 16-bit uniforms per 64-bit draw): what that option saves.

Where the time goes: ``--profile-steps`` more steps of each precision (packed masks, interleaved) run
under ``torch.profiler``, and the self time of their ops (median over those steps) is split into GEMMs (``aten::mm`` / ``addmm`` / ``bmm``), attention (the SDPA
kernels), mask drawing (``bernoulli_`` / ``random_``) and everything else. With those, the best
bf16 / fp32 ratio the step could reach if everything but the GEMMs and attention cost nothing is printed:
the bound the hardware's kernels set on the issue's ">= 2x" target.

Also printed: the loss of both copies on the same batch before any update (eval mode, no dropout:
equal within bf16 rounding), the best GEMM rate of this machine in each precision (several shapes
of the model's own matmuls and 2048^2), the model FLOP utilisation of each step against the best
rate of its precision (``4 * backbone params * tokens / step time``: forward 2, backward to the
activations 2; the frozen weights get no gradient; the LM head counted at the answer positions only),
and what ``dtype: auto`` picks here.

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


#: The parts of a profiled step: op-name predicates on ``torch.profiler``'s self CPU time (first match wins).
PARTS = ("gemm", "attention", "masks", "other")


def _part_of(name: str) -> str:
    if name in ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"):
        return "gemm"
    if "scaled_dot_product" in name or "flash_attention" in name:
        return "attention"
    if name in ("aten::bernoulli_", "aten::random_"):
        return "masks"
    return "other"


def profile_step(step: Callable[[], None]) -> dict[str, float]:
    """Self CPU seconds of one ``step`` under ``torch.profiler``, summed per :data:`PARTS` entry (the
    profiler's own overhead lands in the ops it wraps, mostly the small ones: "other")."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    out = dict.fromkeys(PARTS, 0.0)
    for event in prof.key_averages():
        out[_part_of(event.key)] += event.self_cpu_time_total / 1e6
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
    p.add_argument("--profile-steps", type=int, default=3, help="profiled steps per precision (the median per part)")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)

    from collab_llm.assets import ensure_assets
    from collab_llm.backbone import cpu_flags, native_bf16, resolve_dtype
    from collab_llm.collate import PromptCollator, TableDataset, titles_from_items
    from collab_llm.dropout import PackedDropout, lora_dropouts
    from collab_llm.adapters import LoRA
    from collab_llm.module import CollabLLM

    backbone = a.backbone or str(ensure_assets().smollm2)
    split = Path(a.split)
    titles = titles_from_items(pd.read_parquet(split / "items.parquet"))
    train = pd.read_parquet(split / "train.parquet")
    rows = train[train["history"].map(len) >= 10].iloc[: a.batch_size]
    result: dict[str, Any] = {"auto_dtype": resolve_dtype("auto"), "native_bf16": native_bf16(),
                              "cpu_flags_bf16": sorted(f for f in cpu_flags() if "bf16" in f or f.startswith("amx")),
                              "threads": a.threads, "batch_size": a.batch_size, "lora_dropout": a.lora_dropout,
                              "profile_steps": a.profile_steps}
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

        def loss_of(model: CollabLLM, full_logits: bool = False) -> torch.Tensor:
            if loss_kind == "head":
                return model.head_loss(batch, "hybrid")
            if full_logits:  # Hugging Face's own loss: logits (and their backward) at every position
                rec = model.recommender
                embeds, mask = rec.embed(view, prompt_only=False)
                return rec.llm(inputs_embeds=embeds, attention_mask=mask, labels=view["labels"], use_cache=False).loss
            return model.lm_loss(batch, "hybrid")

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
            base, _, variant = tag.partition("_")
            # peft's LoRA dropouts, each with a PackedDropout of the same p to swap in (dropout_masks="bits16")
            dicts = [(d, k, drop, PackedDropout(drop.p)) for d, k, drop in lora_dropouts(models[base])]

            def run() -> None:
                if variant == "nodrop":  # LoRA dropout off for this step: no random masks drawn
                    for _, _, drop, _ in dicts:
                        drop.p = 0.0
                if variant == "bits16":  # the same dropout with packed masks (dropout_masks="bits16")
                    for d, k, _, packed in dicts:
                        d[k] = packed
                try:
                    loss = loss_of(models[base], full_logits=variant == "full")
                    loss.backward()
                finally:
                    for _, _, drop, _ in dicts:
                        drop.p = a.lora_dropout
                    for d, k, peft_drop, _ in dicts:
                        d[k] = peft_drop
                optims[base].step()
                optims[base].zero_grad(set_to_none=True)
            return run

        # the LM-loss step also timed with HF's full-logits loss (the same weights, interleaved): what
        # answer-only logits (collab_llm.scoring.answer_lm_loss) save
        # and without LoRA dropout (its random masks: one per adapted module and step)
        tags = ("fp32", "bf16") if loss_kind == "head" else ("fp32", "bf16", "fp32_full", "bf16_full", "fp32_nodrop",
                                                              "bf16_nodrop", "fp32_bits16", "bf16_bits16")
        steps = {tag: step(tag) for tag in tags}  # built once: only the steps themselves are timed
        for _ in range(a.warmup):
            for tag in tags:
                steps[tag]()
        times: dict[str, list[float]] = {tag: [] for tag in tags}
        for _ in range(a.rounds):
            for tag in tags:
                t0 = time.perf_counter()
                steps[tag]()
                times[tag].append(time.perf_counter() - t0)
        params = sum(p.numel() for n, p in m0.llm.named_parameters() if "lora_" not in n)
        # the (tied) output matrix multiplies only the positions that predict an answer token (answer-only
        # logits), none in the head step
        lm_head = m0.llm.get_input_embeddings().weight.numel()
        answer_tokens = 0 if loss_kind == "head" else int((view["labels"][:, 1:] != -100).sum())
        for tag in times:
            result[f"{recipe}_step_s_{tag}"] = statistics.median(times[tag])
        result[f"{recipe}_speedup_bf16"] = statistics.median(f / b for f, b in zip(times["fp32"], times["bf16"]))
        for tag in ("fp32", "bf16"):
            if f"{tag}_full" in times:
                result[f"{recipe}_answer_logits_speedup_{tag}"] = statistics.median(
                    f / b for f, b in zip(times[f"{tag}_full"], times[tag]))
                result[f"{recipe}_dropout_share_{tag}"] = statistics.median(
                    1.0 - n / d for n, d in zip(times[f"{tag}_nodrop"], times[tag]))
        for variant in ("nodrop", "bits16"):
            if f"fp32_{variant}" in times:
                result[f"{recipe}_speedup_bf16_{variant}"] = statistics.median(
                    f / b for f, b in zip(times[f"fp32_{variant}"], times[f"bf16_{variant}"]))
        for tag in ("fp32", "bf16"):
            if f"{tag}_bits16" in times:  # peft's masks -> packed masks, same precision
                result[f"{recipe}_bits16_speedup_{tag}"] = statistics.median(
                    d / b for d, b in zip(times[tag], times[f"{tag}_bits16"]))
        if loss_kind == "lm":  # where the time goes: --profile-steps profiled steps per precision, packed masks
            profiled: dict[str, list[dict[str, float]]] = {"fp32": [], "bf16": []}
            for _ in range(a.profile_steps):  # interleaved, as the timed rounds
                for tag in profiled:
                    profiled[tag].append(profile_step(steps[f"{tag}_bits16"]))
            for tag, runs in profiled.items():
                for part in PARTS:
                    result[f"{recipe}_profile_{tag}_{part}_s"] = statistics.median(run[part] for run in runs)
            g32, a32 = result[f"{recipe}_profile_fp32_gemm_s"], result[f"{recipe}_profile_fp32_attention_s"]
            g16, a16 = result[f"{recipe}_profile_bf16_gemm_s"], result[f"{recipe}_profile_bf16_attention_s"]
            result[f"{recipe}_gemm_speedup_bf16"] = g32 / g16
            result[f"{recipe}_attention_speedup_bf16"] = a32 / a16
            result[f"{recipe}_bound_speedup_bf16"] = (g32 + a32) / (g16 + a16)
        result[f"{recipe}_tokens_per_step"] = tokens
        result[f"{recipe}_flops_per_step"] = 4.0 * ((params - lm_head) * tokens + lm_head * answer_tokens)
        print(f"[precision] {recipe}: loss fp32 {l32:.5f} bf16 {l16:.5f} (rel diff {result[f'{recipe}_loss_rel_diff']:.2e}); "
              f"step fp32 {result[f'{recipe}_step_s_fp32']:.2f} s, bf16 {result[f'{recipe}_step_s_bf16']:.2f} s: "
              f"bf16 {result[f'{recipe}_speedup_bf16']:.2f}x (median per-round ratio, {a.rounds} rounds, {tokens} tokens/step)",
              flush=True)
        if f"{recipe}_answer_logits_speedup_bf16" in result:
            print(f"[precision] {recipe}: HF's full-logits loss fp32 {result[f'{recipe}_step_s_fp32_full']:.2f} s, bf16 "
                  f"{result[f'{recipe}_step_s_bf16_full']:.2f} s: answer-only logits "
                  f"{result[f'{recipe}_answer_logits_speedup_fp32']:.2f}x (fp32), "
                  f"{result[f'{recipe}_answer_logits_speedup_bf16']:.2f}x (bf16)", flush=True)
            print(f"[precision] {recipe}: packed dropout masks fp32 {result[f'{recipe}_step_s_fp32_bits16']:.2f} s, bf16 "
                  f"{result[f'{recipe}_step_s_bf16_bits16']:.2f} s (bf16 {result[f'{recipe}_speedup_bf16_bits16']:.2f}x): "
                  f"{result[f'{recipe}_bits16_speedup_fp32']:.2f}x (fp32) / {result[f'{recipe}_bits16_speedup_bf16']:.2f}x "
                  "(bf16) faster than with peft's masks", flush=True)
            for tag in ("fp32", "bf16"):
                print(f"[precision] {recipe} {tag} profiled step (packed masks): " + ", ".join(
                    f"{part} {result[f'{recipe}_profile_{tag}_{part}_s']:.2f} s" for part in PARTS), flush=True)
            print(f"[precision] {recipe}: bf16 / fp32 on the GEMMs {result[f'{recipe}_gemm_speedup_bf16']:.2f}x, on attention "
                  f"{result[f'{recipe}_attention_speedup_bf16']:.2f}x; if all else cost nothing the step could reach "
                  f"{result[f'{recipe}_bound_speedup_bf16']:.2f}x", flush=True)
            print(f"[precision] {recipe}: without LoRA dropout fp32 {result[f'{recipe}_step_s_fp32_nodrop']:.2f} s, bf16 "
                  f"{result[f'{recipe}_step_s_bf16_nodrop']:.2f} s (bf16 {result[f'{recipe}_speedup_bf16_nodrop']:.2f}x): "
                  f"dropout's masks take {result[f'{recipe}_dropout_share_fp32']:.0%} of the fp32 step, "
                  f"{result[f'{recipe}_dropout_share_bf16']:.0%} of the bf16 one", flush=True)

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
