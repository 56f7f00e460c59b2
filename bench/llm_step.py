"""Benchmark the LLM side: training step cost of soft-token injection, and ranking vs generation.

Measured side by side in one run, on one machine, with ``--threads`` torch threads:

1. Training step (forward + backward + AdamW) of LoRA (+ projector) on the SAME hybrid batch of
   LLaRA MovieLens prompts, once with the placeholders left as ordinary token embeddings
   ("text, equal length": no CF lookup, no projector) and once with soft tokens injected
   (SASRec item table -> LLaRA MLP -> ``masked_scatter``): the difference is the injection
   overhead (target <= 10%). Each in fp32 and, with ``--bf16 on`` (default: only on CPUs with
   native bf16, AVX512-BF16 / AMX), under ``torch.autocast(bfloat16)`` of the frozen backbone
   (trainable weights stay fp32): on an AVX2-only CPU PyTorch emulates bf16 matmuls ~30x slower
   than fp32, so a bf16 step of SmolLM2 would take many minutes. The natural, shorter text-only
   prompt is timed too. (bf16 weights without autocast, fp32 and bf16 interleaved round by round, MFU
   against the best GEMM rate of each precision: ``bench/precision_step.py``.)
2. Evaluation per test row: candidate ranking by log-likelihood (prompt KV cache reused for the 20
   candidates) vs greedy generation of up to ``--max-new-tokens`` tokens + parsing, on the same rows,
   with HR@1 of each (and ValidRatio of generation).
3. A bf16 matmul FLOP rate (2048 x 2048, same threads) and
   ``train_mfu = 4 * backbone params * tokens per step / step time / rate``
   (4 = forward 2 + backward-to-activations 2; the frozen backbone has no weight gradients; tokens =
   padded B x T of the batch; params include the tied LM head once). ``train_mfu_vs_fp32_rate``
   divides by the fp32 matmul rate instead (the meaningful one where bf16 is emulated).

The LoRA is freshly initialised (B = 0) and the CF model is a randomly initialised SASRec unless
``--cf-model`` / ``--bundle`` name trained ones, so the HR@1 values measure the zero-shot base model:
they check that both evaluation paths run on the same rows, not the method.

Usage (a few minutes on 2 CPU cores with SmolLM2-135M)::

    OMP_NUM_THREADS=2 python bench/llm_step.py --train-steps 3 --eval-rows 8

The last line printed is one JSON object with keys ``text_step_s, hybrid_step_s,
injection_overhead, rank_s_per_row, generate_s_per_row, rank_speedup, hr1_rank, hr1_generate,
valid_ratio, train_mfu`` (fp32 step times) plus the bf16 and context fields.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

# Run from anywhere: import the working tree's packages (collab_llm, cf_models, projectors) even when the
# editable install predates some of them.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


@dataclass(frozen=True)
class BenchArgs:
    model: str | None
    split: str | None
    cf_model: str | None
    threads: int
    batch_size: int
    train_steps: int
    warmup_steps: int
    eval_rows: int
    eval_batch_size: int
    max_new_tokens: int
    max_history: int
    bf16: str
    bf16_steps: int
    matmul_reps: int
    out: str | None


def parse_args(argv: list[str] | None = None) -> BenchArgs:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="HF model folder (default: the cached SmolLM2-135M-Instruct); 'tiny' for a smoke run")
    p.add_argument("--split", default=None, help="prepared next-item split folder (default: ML-100K 'loo' in the cache, prepared if missing)")
    p.add_argument("--cf-model", default=None, help="CF model folder (save_pretrained); default: a random SASRec")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=2, help="training rows per step")
    p.add_argument("--train-steps", type=int, default=3, help="timed steps per variant")
    p.add_argument("--warmup-steps", type=int, default=1, help="untimed steps per variant")
    p.add_argument("--eval-rows", type=int, default=8, help="test rows for ranking vs generation")
    p.add_argument("--eval-batch-size", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--max-history", type=int, default=10)
    p.add_argument("--bf16", choices=("auto", "on", "off"), default="auto",
                   help="also time bf16-autocast steps; auto: only where the CPU has native bf16 (AVX512-BF16 / AMX)")
    p.add_argument("--bf16-steps", type=int, default=1, help="timed bf16 steps per variant (no warm-up)")
    p.add_argument("--matmul-reps", type=int, default=1, help="timed 2048^2 bf16 matmuls")
    p.add_argument("--out", default=None, help="also write the JSON result here")
    a = p.parse_args(argv)
    for name in ("threads", "batch_size", "train_steps", "eval_rows", "eval_batch_size", "max_new_tokens", "bf16_steps", "matmul_reps"):
        if getattr(a, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}")
    return BenchArgs(
        model=a.model, split=a.split, cf_model=a.cf_model, threads=a.threads, batch_size=a.batch_size,
        train_steps=a.train_steps, warmup_steps=a.warmup_steps, eval_rows=a.eval_rows,
        eval_batch_size=a.eval_batch_size, max_new_tokens=a.max_new_tokens, max_history=a.max_history,
        bf16=a.bf16, bf16_steps=a.bf16_steps, matmul_reps=a.matmul_reps, out=a.out,
    )


def log(msg: str) -> None:
    print(msg, flush=True)


def resolve_model(arg: str | None, workdir: Path) -> Path:
    if arg == "tiny":
        from collab_llm.testing import tiny_causal_lm

        model, tok = tiny_causal_lm("llama", hidden_size=64, num_layers=2, num_heads=4)
        path = workdir / "tiny-llama"
        model.save_pretrained(str(path))
        tok.save_pretrained(str(path))
        return path
    if arg is not None:
        return Path(arg)
    from collab_llm.assets import cache_root

    path = cache_root() / "models" / "SmolLM2-135M-Instruct"
    if not (path / "config.json").is_file():
        raise SystemExit(f"{path}: no converted SmolLM2 folder; run `python -m collab_llm.assets` first or pass --model")
    return path


def resolve_split(arg: str | None) -> Path:
    if arg is not None:
        return Path(arg)
    from collab_llm import data
    from collab_llm.assets import cache_root

    root = cache_root()
    out = root / "splits" / "ml100k-loo-seed0"
    if not (out / "manifest.json").is_file():
        src = root / "data" / "ml-100k"
        if not (src / "ml-100k.inter").is_file():
            raise SystemExit(f"{src}: MovieLens-100K missing; run `python -m collab_llm.assets` first or pass --split")
        log(f"preparing the ML-100K 'loo' split in {out}")
        data.prepare_nextitem(data.read_movielens_100k(src), out, protocol="loo", seed=0)
    return out


def resolve_cf(arg: str | None, n_items: int, workdir: Path) -> tuple[Path, str]:
    if arg is not None:
        return Path(arg), "given"
    from cf_models.sasrec import SASRec, SASRecConfig

    torch.manual_seed(0)
    path = workdir / "sasrec-random"
    SASRec(SASRecConfig(n_items=n_items, hidden_size=64)).save_pretrained(path)
    return path, "random SASRec (64-d)"


def timed(fn: Callable[[], Any], steps: int, warmup: int) -> tuple[float, list[float]]:
    """Median wall time of ``steps`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def matmul_rate(dtype: torch.dtype, n: int = 2048, reps: int = 1) -> float:
    """FLOP/s of an ``n x n`` matmul in ``dtype`` (median of ``reps`` calls), with the current thread count."""
    small = torch.randn(256, 256, dtype=dtype)
    torch.mm(small, small)  # warm the kernel on a small problem: an emulated bf16 2048^2 call takes minutes
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    med, _ = timed(lambda: torch.mm(a, b), reps, 0)
    return 2.0 * n**3 / med


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    t_start = time.perf_counter()

    from collab_llm import scoring
    from collab_llm.collate import PromptCollator, TableDataset, titles_from_items
    from collab_llm.data import load_split
    from collab_llm.adapters import LoRA
    from collab_llm.module import CollabLLM

    workdir = Path(tempfile.mkdtemp(prefix="llm_step-"))
    model_path = resolve_model(args.model, workdir)
    split = load_split(resolve_split(args.split))
    cf_path, cf_kind = resolve_cf(args.cf_model, split.n_items, workdir)
    log(f"model {model_path} | split {split.folder if hasattr(split, 'folder') else ''} | CF {cf_kind} | threads {args.threads} "
        f"| cpus {os.cpu_count()} | load avg before {load_before[0]:.2f}")

    module = CollabLLM(
        backbone_path=str(model_path),
        template="llara_movielens",
        regime="joint",
        cf_model_path=str(cf_path),
        projector="llara_mlp",
        dtype="float32",
        adapter=LoRA(r=8, alpha=16.0, dropout=0.05),
        n_bootstrap=200,
    )
    llm = module.llm
    tokenizer = module.tokenizer
    titles = titles_from_items(split.items, "items")
    collator = PromptCollator(
        tokenizer, module.template, titles, module.placeholder_ids, ("text", "hybrid"),
        max_length=2048, max_history=args.max_history,
    )
    train_frame = split.table("train")
    full = train_frame[train_frame["history"].map(len) >= args.max_history]  # rows with a full-length history
    if len(full) < args.batch_size:
        raise SystemExit(f"only {len(full)} training rows have >= {args.max_history} history items")
    train = TableDataset(full.iloc[: args.batch_size], "next_item", "train")
    batch = collator([train[i] for i in range(args.batch_size)])
    hybrid, text = batch["hybrid"], batch["text"]
    backbone_params = sum(p.numel() for n, p in llm.named_parameters() if "lora_" not in n)
    trainable = module.trainable_parameters()
    optimizer = torch.optim.AdamW(trainable, lr=1e-5)
    tokens_equal = int(hybrid["input_ids"].numel())
    log(f"batch {args.batch_size} rows: hybrid/equal-length T={hybrid['input_ids'].shape[1]} "
        f"({int(hybrid['attention_mask'].sum())} real tokens, {int(hybrid['soft_item_ids'].numel())} soft tokens), "
        f"text T={text['input_ids'].shape[1]} | backbone params {backbone_params / 1e6:.1f}M, "
        f"trainable {sum(p.numel() for p in trainable) / 1e6:.2f}M")

    module.train()

    def step(view: dict[str, torch.Tensor], inject: bool, bf16: bool) -> None:
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
        with ctx:
            if inject:
                embeds, mask = module.embed(view, prompt_only=False)
            else:
                embeds, mask = llm.get_input_embeddings()(view["input_ids"]), view["attention_mask"]
            loss = llm(inputs_embeds=embeds, attention_mask=mask, labels=view["labels"], use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    result: dict[str, Any] = {}
    from collab_llm.backbone import native_bf16

    use_bf16 = args.bf16 == "on" or (args.bf16 == "auto" and native_bf16(cuda=False))
    result["bf16_steps_timed"] = use_bf16
    result["cpu_capability"] = str(torch.backends.cpu.get_cpu_capability())
    if not use_bf16:
        log(f"bf16-autocast steps skipped: CPU capability {result['cpu_capability']} has no native bf16 "
            "(emulated bf16 matmuls run far slower than fp32, see the rates below); --bf16 on forces them")
    precisions = [("fp32", False)] + ([("bf16", True)] if use_bf16 else [])
    for tag, bf16 in precisions:
        # bf16 warms up like fp32 (a cold first bf16 step once read 24.8 s against 1.87 s warm)
        n_steps, n_warm = (args.train_steps, args.warmup_steps) if not bf16 else (args.bf16_steps, max(1, args.warmup_steps))
        # The variants are interleaved (text, hybrid, natural, text, hybrid, ...) and the overhead is the
        # median of per-round ratios, so a change of machine load between rounds cancels out.
        variants = {
            "text": lambda: step(hybrid, False, bf16),
            "hybrid": lambda: step(hybrid, True, bf16),
            "natural": lambda: step(text, False, bf16),
        }
        for _ in range(n_warm):
            for fn in variants.values():
                fn()
        times: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(n_steps):
            for name, fn in variants.items():
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        t_text, t_hyb, t_nat = (statistics.median(times[k]) for k in ("text", "hybrid", "natural"))
        overhead = statistics.median(h / t for h, t in zip(times["hybrid"], times["text"])) - 1.0
        suffix = "" if tag == "fp32" else "_bf16"
        result[f"text_step_s{suffix}"] = t_text
        result[f"hybrid_step_s{suffix}"] = t_hyb
        result[f"text_natural_step_s{suffix}"] = t_nat
        result[f"injection_overhead{suffix}"] = overhead
        result[f"step_times{suffix}"] = times
        log(f"[{tag}] step s (median of {n_steps}, interleaved): text(equal length) {t_text:.3f} "
            f"({tokens_equal / t_text:.0f} tok/s) | hybrid {t_hyb:.3f} ({tokens_equal / t_hyb:.0f} tok/s) | "
            f"overhead (median per-round ratio) {100 * overhead:+.1f}% | text(natural, T={text['input_ids'].shape[1]}) "
            f"{t_nat:.3f} | all {times}")
    # iLoRA (collab_llm.ilora): the same fp32 hybrid step with the rank-8 LoRA split into 4 gated experts
    # (softmax gate on SASRec's sequence representation, set before the forward): hooks + gate MLP cost.
    from collab_llm.ilora import ExpertGate, GateNetwork

    gate_net = GateNetwork(int(module.injector.cf_model.embedding_dim), 4, None, zero_init_output=False)
    gate = ExpertGate()
    optimizer_ilora = torch.optim.AdamW(trainable + list(gate_net.parameters()), lr=1e-5)

    def ilora_step() -> None:
        gate.attach(llm, "default", num_experts=4)  # hooks on every lora_A (microseconds)
        with torch.no_grad():
            sequence = module.injector.cf_model.sequence_representation(batch["history"])
        gate.set(gate_net(sequence))
        embeds, mask = module.embed(hybrid, prompt_only=False)
        loss = llm(inputs_embeds=embeds, attention_mask=mask, labels=hybrid["labels"], use_cache=False).loss
        loss.backward()
        optimizer_ilora.step()
        optimizer_ilora.zero_grad(set_to_none=True)
        gate.detach()  # the plain-LoRA steps and the evaluation below run ungated

    # plain LoRA (same total rank 8) and iLoRA steps interleaved on the same hybrid batch; the overhead is
    # the median of per-round ratios, so load changes between rounds cancel out
    for _ in range(args.warmup_steps):
        ilora_step()
    lora_times: list[float] = []
    ilora_times: list[float] = []
    for _ in range(args.train_steps):
        t0 = time.perf_counter()
        step(hybrid, True, False)
        lora_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ilora_step()
        ilora_times.append(time.perf_counter() - t0)
    lora_params = sum(p.numel() for n, p in llm.named_parameters() if p.requires_grad)
    projector_params = sum(p.numel() for p in module.injector.projector.parameters())
    gate_params = sum(p.numel() for p in gate_net.parameters())
    result["lora_step_s"] = statistics.median(lora_times)
    result["ilora_step_s"] = statistics.median(ilora_times)
    result["ilora_overhead"] = statistics.median(i / l for i, l in zip(ilora_times, lora_times)) - 1.0
    result["ilora_gate_params"] = gate_params
    result["gate_param_fraction"] = gate_params / (lora_params + projector_params)
    log(f"[fp32] plain LoRA r=8 step {result['lora_step_s']:.3f} s | iLoRA (K=4 x r_e=2) step "
        f"{result['ilora_step_s']:.3f} s | overhead (median per-round ratio) {100 * result['ilora_overhead']:+.1f}% | "
        f"gate params {gate_params} = {result['gate_param_fraction']:.4%} of LoRA ({lora_params}) + projector "
        f"({projector_params}) | all lora {lora_times} ilora {ilora_times}")
    result["tokens_per_step"] = tokens_equal
    result["text_tokens_per_s"] = tokens_equal / result["text_step_s"]
    result["hybrid_tokens_per_s"] = tokens_equal / result["hybrid_step_s"]

    t0 = time.perf_counter()
    rate = matmul_rate(torch.bfloat16, reps=args.matmul_reps)
    rate_fp32 = matmul_rate(torch.float32, reps=3)
    result["bf16_matmul_flops"] = rate
    result["fp32_matmul_flops"] = rate_fp32
    flops_per_step = 4.0 * backbone_params * tokens_equal
    result["train_mfu"] = flops_per_step / result["hybrid_step_s"] / rate
    result["train_mfu_vs_fp32_rate"] = flops_per_step / result["hybrid_step_s"] / rate_fp32
    if "hybrid_step_s_bf16" in result:
        result["train_mfu_bf16"] = flops_per_step / result["hybrid_step_s_bf16"] / rate
    log(f"matmul 2048^2: bf16 {rate / 1e9:.2f} GFLOP/s, fp32 {rate_fp32 / 1e9:.2f} GFLOP/s "
        f"({time.perf_counter() - t0:.0f} s) | train_mfu (fp32 step / bf16 rate) {result['train_mfu']:.3f}, "
        f"vs fp32 rate {result['train_mfu_vs_fp32_rate']:.3f}"
        + (f", bf16 step {result['train_mfu_bf16']:.3f}" if "train_mfu_bf16" in result else ""))

    # ---------------------------------------------------------------- evaluation
    module.eval()
    test = TableDataset(split.table("test"), "next_item", "test")
    n_rows = min(args.eval_rows, len(test))
    scores, targets, choices, answers = [], [], [], []
    t_rank = t_expand = t_gen = t_prompt = 0.0
    eval_batches = []
    max_abs_packed_vs_expand = 0.0
    with torch.no_grad():
        for start in range(0, n_rows, args.eval_batch_size):
            rows = [test[i] for i in range(start, min(n_rows, start + args.eval_batch_size))]
            b = collator(rows)
            embeds, mask = module.embed(b["hybrid"], prompt_only=True)
            eval_batches.append((embeds, mask))
            t0 = time.perf_counter()  # the prompt pass alone: the floor shared by both evaluation ways
            llm(inputs_embeds=embeds, attention_mask=mask, position_ids=scoring.position_ids_from_mask(mask),
                use_cache=True, logits_to_keep=1)
            t_prompt += time.perf_counter() - t0
            t0 = time.perf_counter()
            s = scoring.rank_candidates(llm, embeds, mask, b["candidate_token_ids"], method="packed")
            t_rank += time.perf_counter() - t0
            t0 = time.perf_counter()
            s_expand = scoring.rank_candidates(llm, embeds, mask, b["candidate_token_ids"], method="expand")
            t_expand += time.perf_counter() - t0
            max_abs_packed_vs_expand = max(max_abs_packed_vs_expand, float((s - s_expand).abs().max()))
            t0 = time.perf_counter()
            ans = scoring.generate_answers(llm, embeds, mask, tokenizer, max_new_tokens=args.max_new_tokens)
            t_gen += time.perf_counter() - t0
            scores.append(s)
            targets.append(b["target_index"])
            answers += ans
            choices += [scoring.parse_choice(a, t) for a, t in zip(ans, b["candidate_titles"])]
    all_scores, all_targets = torch.cat(scores), torch.cat(targets)
    rank_m = scoring.ranking_metrics(all_scores, all_targets, n_resamples=200)
    gen_m = scoring.generation_metrics(choices, all_targets, n_resamples=200)
    result.update(
        rank_s_per_row=t_rank / n_rows,
        generate_s_per_row=t_gen / n_rows,
        rank_speedup=t_gen / t_rank,
        rank_expand_s_per_row=t_expand / n_rows,
        packed_vs_expand_speedup=t_expand / t_rank,
        max_abs_packed_vs_expand=max_abs_packed_vs_expand,
        prompt_pass_s_per_row=t_prompt / n_rows,
        rank_speedup_bound=t_gen / t_prompt,
        hr1_rank=rank_m["hr@1"].value,
        hr1_generate=gen_m["hr@1"].value,
        valid_ratio=gen_m["valid_ratio"].value,
        eval_rows=n_rows,
        mean_answer_chars=sum(len(a) for a in answers) / n_rows,
    )
    log(f"eval on {n_rows} test rows: rank {result['rank_s_per_row']:.3f} s/row (HR@1 {rank_m['hr@1']}) | generate "
        f"{result['generate_s_per_row']:.3f} s/row (HR@1 {gen_m['hr@1']}, ValidRatio {gen_m['valid_ratio']}) | "
        f"ranking {result['rank_speedup']:.1f}x faster")
    log(f"ranking ways: packed {result['rank_s_per_row']:.3f} s/row vs expanded cache "
        f"{result['rank_expand_s_per_row']:.3f} s/row ({result['packed_vs_expand_speedup']:.2f}x; scores differ by "
        f"<= {max_abs_packed_vs_expand:.1e}) | the prompt pass alone {result['prompt_pass_s_per_row']:.3f} s/row, so "
        f"no ranking can beat generation by more than {result['rank_speedup_bound']:.2f}x here")
    log(f"example answer: {answers[0]!r}")

    # ---------------------------------------------------------------- merged LoRA vs base model speed
    # the same prompt passes (last-position logits) through: the LoRA model unmerged, the LoRA merged into
    # the base weights (merge_and_unload), and the plain base model; rounds interleaved, median per variant
    import copy

    from collab_llm.backbone import load_backbone

    with torch.no_grad():
        for p_ in llm.parameters():
            if p_.requires_grad:  # a non-trivial adapter (fresh LoRA has B = 0)
                p_.add_(torch.randn_like(p_) * 1e-3)
        merged = copy.deepcopy(llm).merge_and_unload()
        base = load_backbone(str(model_path), "float32").model
        variants = {"lora_unmerged": llm, "lora_merged": merged, "base": base}
        diff = 0.0
        for embeds, mask in eval_batches[:1]:
            kw = dict(inputs_embeds=embeds, attention_mask=mask, position_ids=scoring.position_ids_from_mask(mask),
                      use_cache=False, logits_to_keep=1)
            diff = float((llm(**kw).logits - merged(**kw).logits).abs().max())
        times: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(3):
            for name, model in variants.items():
                t0 = time.perf_counter()
                for embeds, mask in eval_batches:
                    model(inputs_embeds=embeds, attention_mask=mask, position_ids=scoring.position_ids_from_mask(mask),
                          use_cache=False, logits_to_keep=1)
                times[name].append((time.perf_counter() - t0) / n_rows)
    med = {k: statistics.median(v) for k, v in times.items()}
    result.update(
        unmerged_prompt_s_per_row=med["lora_unmerged"], merged_prompt_s_per_row=med["lora_merged"],
        base_prompt_s_per_row=med["base"], merged_vs_base=med["lora_merged"] / med["base"] - 1,
        unmerged_vs_base=med["lora_unmerged"] / med["base"] - 1, merged_max_abs_logit_diff=diff,
    )
    log(f"prompt pass per row (median of 3): base {med['base']:.3f} s | LoRA merged {med['lora_merged']:.3f} s "
        f"({result['merged_vs_base']:+.1%}) | LoRA unmerged {med['lora_unmerged']:.3f} s ({result['unmerged_vs_base']:+.1%}) "
        f"| merged vs unmerged logits max |diff| {diff:.1e}")
    del merged, base

    load_after = os.getloadavg()
    result.update(
        threads=args.threads, batch_size=args.batch_size, train_steps=args.train_steps, cf_model=cf_kind,
        model=str(model_path), load_avg_before=load_before[0], load_avg_after=load_after[0],
        wall_s=time.perf_counter() - t_start,
    )
    log(f"wall {result['wall_s']:.1f} s | load avg after {load_after[0]:.2f}")
    if args.out:
        from collab_llm.io import write_json

        write_json(args.out, result)
    keys = ["text_step_s", "hybrid_step_s", "injection_overhead", "rank_s_per_row", "generate_s_per_row",
            "rank_speedup", "hr1_rank", "hr1_generate", "valid_ratio", "train_mfu",
            "lora_step_s", "ilora_step_s", "ilora_overhead", "gate_param_fraction",
            "rank_expand_s_per_row", "prompt_pass_s_per_row", "rank_speedup_bound", "merged_vs_base"]
    ordered = {k: result[k] for k in keys} | {k: v for k, v in result.items() if k not in keys}
    print(json.dumps(ordered))
    return ordered


if __name__ == "__main__":
    main(sys.argv[1:])
