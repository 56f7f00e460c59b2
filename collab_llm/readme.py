"""README sections generated from result files, so the figures in the README cannot go stale.

A generated section sits between ``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->`` in
README.md; :func:`refresh` rewrites every section from its result file, and a test checks that the
committed README equals what the committed result files render to.

Sections:

- ``injection_planted`` / ``injection_ml100k`` / ``injection_yesno``: ``results/injection_<part>.json``
  (``bench/injection_learning.py --only <part> --out ...``): text-only vs the hybrid recipe, paired
  intervals.
- ``injection_levers``: ``results/injection_levers.json``: every lever tried on validation rows.
- ``precision``: ``results/precision_step.json`` (``bench/precision_step.py --out ...``).
- ``full_profile``: ``results/results.json`` + ``results/run_info.json`` (``collab-llm compare --profile
  full ... --export results``): every method's metrics and paired differences to TALLRec.
- ``main_job``: ``results/main_job/`` (``collab-llm main --export results/main_job``).
- ``own_data``: ``results/own_data_planted/`` (``collab-llm compare --data <planted split> --export ...``): the
  "Your own data" commands, timed on the planted dataset.
- ``injection_planted_l4``, ``length_grouping``, ``sdpo_step``: the benches' ``--out`` files;
  ``sdpo_ml100k`` / ``sdpo_planted``: ``results/sdpo_ml100k/``, ``results/sdpo_planted/`` (``compare --methods X
  X+sdpo --export`` + ``stage_stats.json``).

Usage::

    python -m collab_llm.readme            # rewrite the sections of README.md
    python -m collab_llm.readme --check    # exit 1 if README.md differs from the result files
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]


def _ci(value: float, ci: list[float] | None) -> str:
    if ci is None:
        return f"{value:.3f}"
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def _signed(value: float, ci: list[float]) -> str:
    return f"{value:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]"


def _cpu_name(cpu: dict[str, Any]) -> str:
    """``{"model", "isa", "native_bf16"}`` (:func:`collab_llm.backbone.cpu_description`) as one phrase."""
    return f"{cpu['model']} ({cpu['isa']}, native bf16: {'yes' if cpu['native_bf16'] else 'no'})"


def _cpu(r: dict[str, Any]) -> str:
    return f"{_cpu_name(r['cpu'])}, {r['threads']} thread{'' if r['threads'] == 1 else 's'}, backbone {r['dtype']}"


_LABELS = {
    "sasrec": "SASRec alone", "mf": "MF alone",
    "text": "TALLRec (text-only prompt)",
    "head": "**head** (hybrid prompt, item-scoring head fitted in closed form)",
    "head_last": "ablation: the same head, prompt reduced to the last item's soft token",
    "head_l4": "**head_l4** (the head reading decoder block 4)",
    "head_l4_last": "ablation: head_l4, prompt reduced to the last item's soft token",
    "llara": "LLaRA (hybrid, curriculum, likelihood)",
    "collm": "CoLLM (two stages)",
    "head_l4_user": "**head_l4_user** (block 4 read at the user's token, least squares onto the injected user vector)",
    "head_l4_user_only": "ablation: head_l4_user, prompt reduced to the user's soft token",
}


def _label(name: str) -> str:
    if name.endswith("_permuted"):
        return f"check: {name[: -len('_permuted')]} scored with the soft tokens of shuffled items"
    return _LABELS.get(name, name)


def _pairs(r: dict[str, Any], prefix: str) -> list[tuple[str, str]]:
    """``(other, key)`` of a bench result's paired differences of its hybrid: ``prefix`` itself against the
    text-only baseline (the issue's headline keys), ``prefix + "_vs_<other>"`` against another method."""
    out = []
    for key in r:
        if key == prefix:
            out.append(("text-only", key))
        elif key.startswith(prefix + "_vs_") and not key.endswith("_ci"):
            out.append((key[len(prefix) + 4:], key))
    return out


def _paired_lines(r: dict[str, Any], part: str) -> list[str]:
    """One sentence per paired difference of the hybrid in ``part`` (planted / ml100k / yesno)."""
    if part == "yesno":
        return [f"Paired, users resampled: {r.get('yesno_hybrid_name', 'hybrid')} minus {other} AUC "
                f"{_signed(r[key], r[key + '_ci'])}." for other, key in _pairs(r, "yesno_diff")]
    lines = []
    for other, key in _pairs(r, f"{part}_diff_hr1"):
        ndcg = key.replace("_diff_hr1", "_diff_ndcg10", 1)
        lines.append(f"Paired over the same rows, {r.get('hybrid_name', 'hybrid')} minus {other}: HR@1 "
                     f"{_signed(r[key], r[key + '_ci'])}, NDCG@10 {_signed(r[ndcg], r[ndcg + '_ci'])} "
                     "(95% paired bootstrap).")
    return lines


def render_injection(r: dict[str, Any], root: Path = ROOT) -> str:
    """Markdown of one ``bench/injection_learning.py`` result."""
    lines = [
        f"Measured by `{r['command']}` on {_cpu(r)}; every LLM method: {r['steps']} steps x "
        f"{r['batch_size']} prompts, same seed, data, stored candidates and rows ({r['table']} rows). "
        f"Wall time of the whole run: {r['wall_s'] / 60:.1f} min.",
        "",
    ]
    for part, title in (("planted", "planted-signal data (project generator, defaults)"), ("ml100k", "MovieLens-100K leave-one-out")):
        if f"{part}_hr1_sasrec" not in r:
            continue
        lines += [f"**{title}**, {r.get(part + '_rows', '')} rows scored", "",
                  "| method | HR@1 | NDCG@10 | train s | train tokens/s |", "|---|---|---|---|---|"]
        names = []
        for key in r:  # SASRec, the text baseline, then each hybrid method followed by its permutation check
            if key.startswith(f"{part}_hr1_") and key.endswith("_ci"):
                names.append(key[len(f"{part}_hr1_"):-3])
        bases = [n for n in names if n not in ("sasrec", "text") and not n.endswith("_permuted")]
        names = ["sasrec"] + [n for n in names if n == "text"] + [
            x for b in bases for x in (b, f"{b}_permuted") if x in names]
        for name in names:
            hr, nd = r[f"{part}_hr1_{name}"], r[f"{part}_ndcg10_{name}"]
            train = r.get(f"{part}_train_s_{name}", r.get(f"{part}_cf_train_s") if name == "sasrec" else None)
            tok = r.get(f"{part}_tok_s_{name}")
            lines.append(f"| {_label(name)} | {_ci(hr, r.get(f'{part}_hr1_{name}_ci'))} | {_ci(nd, r.get(f'{part}_ndcg10_{name}_ci'))} | "
                         f"{'' if train is None else f'{train:.0f}'} | {'' if tok is None else f'{tok:.0f}'} |")
        for line in _paired_lines(r, part):
            lines += ["", line]
        lines.append("")
    if "yesno_auc_mf" in r:
        lines += [f"**ML-1M Yes/No (CoLLM preset)**, {r.get('yesno_rows', '')} test rows of {r.get('yesno_users', '')} users "
                  f"(AUC intervals: users resampled); the LLM methods train on the same prompts drawn from `train`"
                  + (f"; the MF (alone and injected): `{r['yesno_cf_config']}`" if "yesno_cf_config" in r else ""), "",
                  "| method | AUC | train s |", "|---|---|---|"]
        found = [k[len("yesno_auc_"):] for k in r if k.startswith("yesno_auc_") and not k.endswith("_ci")]
        ordered = [n for n in ("mf", "text") if n in found] + [n for n in found if n not in ("mf", "text", "hybrid")]
        for name in ordered:
            label = _label(name)
            train = r.get(f"yesno_train_s_{name}")
            lines.append(f"| {label} | {_ci(r[f'yesno_auc_{name}'], r.get(f'yesno_auc_{name}_ci'))} | "
                         f"{'' if train is None else f'{train:.0f}'} |")
        for line in _paired_lines(r, "yesno"):
            lines += ["", line]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _lookup(data: Any, path: str) -> Any:
    """``"a.b"`` in nested dicts; a list of dicts is indexed by its ``layer`` field (probe results)."""
    for part in path.split("."):
        if isinstance(data, list):
            data = next(item for item in data if item.get("layer") == part)
        else:
            data = data[part]
    return data


def render_pairs(r: dict[str, Any], root: Path = ROOT) -> str:
    """Only the paired differences of one ``bench/injection_learning.py`` result (e.g. its hybrid against an
    ablation), for a run whose table another section already shows; with the compared methods' own figures."""
    own, lines = [], []
    for part in ("planted", "ml100k"):
        pairs = _pairs(r, f"{part}_diff_hr1")
        if pairs:
            names = [r["hybrid_name"]] + [other for other, _ in pairs if other != "text-only"]
            own += [f"{name} HR@1 {r[f'{part}_hr1_{name}']:.3f}" for name in names]
            lines += [f"- {part}, {r[f'{part}_rows']} rows: {line}" for line in _paired_lines(r, part)]
    if _pairs(r, "yesno_diff"):
        names = [r["yesno_hybrid_name"]] + [other for other, _ in _pairs(r, "yesno_diff") if other != "text-only"]
        own += [f"{name} AUC {r[f'yesno_auc_{name}']:.3f}" for name in names]
        lines += [f"- Yes/No: {line}" for line in _paired_lines(r, "yesno")]
    head = f"Measured by `{r['command']}` on {_cpu(r)} ({r['table']} rows; in this run: {', '.join(own)}):"
    return "\n".join([head, "", *lines]).rstrip() + "\n"


def render_levers(levers: dict[str, Any], root: Path = ROOT) -> str:
    """Markdown table of the levers tried (``results/injection_levers.json``); every number is read
    from the result file the row names (``results/levers/``)."""
    lines = [levers["setup"], "", "| # | lever | data | HR@1 (Yes/No: AUC) | soft tokens permuted | CF model alone, same rows | note |",
             "|---|---|---|---|---|---|---|"]
    for i, row in enumerate(levers["rows"], 1):
        data = json.loads((root / "results" / "levers" / row["source"]).read_text())

        def value(key: str) -> str:
            return f"{float(_lookup(data, key)):.3f}" if key else ""

        note = re.sub(r"\{([^}]+)\}", lambda m: value(m.group(1)), row.get("note", ""))
        lines.append(f"| {i} | {row['lever']} | {row['data']} | {value(row['hr1'])} | {value(row.get('permuted', ''))} | "
                     f"{value(row['ref'])} | {note} |")
    return "\n".join(lines).rstrip() + "\n"


def render_precision(r: dict[str, Any], root: Path = ROOT) -> str:
    """Markdown of one ``bench/precision_step.py`` result."""
    lines = [f"`dtype: auto` picks **{r['auto_dtype']}** here (native bf16: {r['native_bf16']}, flags {', '.join(r['cpu_flags_bf16']) or 'none'}); "
             f"{r['threads']} threads, batch {r['batch_size']}.", "",
             "| step | fp32 s | bf16 s | bf16 speed-up | loss fp32 / bf16 (rel. diff) | MFU fp32 / bf16 |", "|---|---|---|---|---|---|"]
    for recipe in ("llara", "head"):
        lines.append(
            f"| {recipe} | {r[f'{recipe}_step_s_fp32']:.2f} | {r[f'{recipe}_step_s_bf16']:.2f} | {r[f'{recipe}_speedup_bf16']:.2f}x | "
            f"{r[f'{recipe}_loss_fp32']:.4f} / {r[f'{recipe}_loss_bf16']:.4f} ({r[f'{recipe}_loss_rel_diff']:.1e}) | "
            f"{r[f'{recipe}_mfu_fp32']:.2f} / {r[f'{recipe}_mfu_bf16']:.2f} |")
    lines += ["", f"Best GEMM rate measured in the same run: fp32 {r['gemm_best_fp32'] / 1e9:.0f} GFLOP/s, bf16 "
                  f"{r['gemm_best_bf16'] / 1e9:.0f} GFLOP/s; MFU = 4 x backbone params x tokens / step time / the best rate "
                  "of the step's precision (the LM head counted at the answer positions only)."]
    if "llara_answer_logits_speedup_bf16" in r:
        lines += ["", "The llara step with Hugging Face's own loss (`labels=`: logits, log-softmax and their backward at "
                      f"every position), interleaved on the same weights: fp32 {r['llara_step_s_fp32_full']:.2f} s, bf16 "
                      f"{r['llara_step_s_bf16_full']:.2f} s; the answer-only logits that training uses "
                      f"(`scoring.answer_lm_loss`) are **{r['llara_answer_logits_speedup_fp32']:.2f}x** faster in fp32 and "
                      f"**{r['llara_answer_logits_speedup_bf16']:.2f}x** in bf16 (median per-round ratios)."]
    if "llara_dropout_share_bf16" in r:
        lines += ["", f"The same llara step with LoRA dropout off (p {r.get('lora_dropout', 0.1)} -> 0, no random masks): "
                      f"fp32 {r['llara_step_s_fp32_nodrop']:.2f} s, bf16 {r['llara_step_s_bf16_nodrop']:.2f} s (bf16 "
                      f"{r['llara_speedup_bf16_nodrop']:.2f}x fp32): drawing the masks takes "
                      f"{r['llara_dropout_share_fp32']:.0%} of the fp32 step and {r['llara_dropout_share_bf16']:.0%} of the bf16 one."]
    if "llara_bits16_speedup_bf16" in r:
        lines += ["", "The same llara step with the masks drawn packed (`LoRA(dropout_masks: bits16)`: four 16-bit uniforms "
                      f"per 64-bit draw of torch's generator): fp32 {r['llara_step_s_fp32_bits16']:.2f} s, bf16 "
                      f"{r['llara_step_s_bf16_bits16']:.2f} s (bf16 {r['llara_speedup_bf16_bits16']:.2f}x fp32), "
                      f"**{r['llara_bits16_speedup_fp32']:.2f}x** (fp32) and **{r['llara_bits16_speedup_bf16']:.2f}x** (bf16) "
                      "faster than with peft's masks."]
    if "llara_bound_speedup_bf16" in r:
        names = {"gemm": "GEMMs", "attention": "attention (SDPA)", "masks": "mask drawing", "other": "everything else"}
        lines += ["", f"Where the time goes ({r.get('profile_steps', 1)} more packed-mask llara steps of each precision, "
                      "interleaved, under `torch.profiler`; self CPU seconds, the median per part):", "", "| part | fp32 s | bf16 s | bf16 speed-up |", "|---|---|---|---|"]
        for part, name in names.items():  # bench/precision_step.py's PARTS
            f32, b16 = r[f"llara_profile_fp32_{part}_s"], r[f"llara_profile_bf16_{part}_s"]
            lines.append(f"| {name} | {f32:.2f} | {b16:.2f} | {f32 / b16:.2f}x |" if b16 > 0 else
                         f"| {name} | {f32:.2f} | {b16:.2f} |  |")
        lines += ["", "If everything but the GEMMs and attention cost nothing, this step's bf16 / fp32 ratio would be "
                      f"({r['llara_profile_fp32_gemm_s']:.2f} + {r['llara_profile_fp32_attention_s']:.2f}) / "
                      f"({r['llara_profile_bf16_gemm_s']:.2f} + {r['llara_profile_bf16_attention_s']:.2f}) = "
                      f"**{r['llara_bound_speedup_bf16']:.2f}x**."]
    return "\n".join(lines).rstrip() + "\n"


_METHODS = {
    "sasrec": "SASRec alone", "mf": "MF alone", "tallrec": "TALLRec (text)",
    "llara": "LLaRA (hybrid, curriculum)", "ilora": "iLoRA (4 experts)", "collm": "CoLLM (MF tokens, two stages)",
    "head": "head (hybrid, item-scoring head fitted in closed form, final hidden state)",
    "head_l4": "**head_l4** (the same head reading decoder block 4)",
    "head_l4_user": "**head_l4_user** (block 4 read at the user's token, onto the MF's folded user vector)",
}


def _by_key(records: list[dict[str, Any]]) -> dict[tuple[str, str, str, str], dict[str, Any]]:
    return {(r["protocol"].split(":")[0], r["method"], r.get("subset", "all"), r["metric"]): r for r in records}


def _first_record(by: dict[tuple[str, str, str, str], dict[str, Any]], protocol: str, method: str) -> dict[str, Any]:
    """A run's first metric record (its train / eval seconds), not a paired difference."""
    return next(r for k, r in by.items() if k[0] == protocol and k[1] == method and not k[3].startswith("diff_"))


def _cell(rec: dict[str, Any] | None, signed: bool = False) -> str:
    if rec is None:
        return "—"
    fmt = "{:+.3f}" if signed else "{:.3f}"
    return f"{fmt.format(rec['value'])} [{fmt.format(rec['ci_low'])}, {fmt.format(rec['ci_high'])}]"


def _setup(info: dict[str, Any], protocol: str) -> str:
    spec = info["protocols"][protocol]
    prof = spec["profile"]
    return (f"{prof['llm_steps']} steps x {prof['batch_size']} prompts per LLM method (lr warm-up {prof['warmup_steps']} "
            f"steps, then cosine), backbone {spec['dtype']}, {spec['test_rows']} seeded test rows (the same for every method)")


def _machine(info: dict[str, Any]) -> str:
    cpu = info["cpu"]
    calls = info.get("invocations") or [info]
    if len(calls) > 1:
        parts = "; ".join(f"{i['wall_s'] / 60:.1f} min" + (f" (resumed: {', '.join(i['resumed'])})" if i.get("resumed") else "")
                          for i in calls)
        wall = f"wall time {info['wall_s'] / 60:.1f} min in {len(calls)} invocations ({parts})"
    else:
        resumed = f"; resumed runs (not in the wall time): {', '.join(info['resumed'])}" if info.get("resumed") else ""
        wall = f"wall time {info['wall_s'] / 60:.1f} min{resumed}"
    return (f"`{info['command']}` on {_cpu_name(cpu)}, "
            f"{info['threads']} torch threads: {wall}, peak memory {info['peak_rss_gb']:.1f} GiB (finished {info['finished']}).")


def _subset(key: str) -> tuple[str, str]:
    """``"warm/auc"`` -> ``("warm", "auc")``; ``"auc"`` -> ``("all", "auc")``."""
    subset, _, metric = key.rpartition("/")
    return subset or "all", metric


def render_comparison(records: list[dict[str, Any]], info: dict[str, Any]) -> str:
    """Markdown tables of a ``collab-llm compare`` report (``results.json``) and its ``run_info.json``."""
    by = _by_key(records)
    lines = [f"Measured by {_machine(info)}", ""]
    order = list(_METHODS)
    for protocol in ("nextitem", "yesno"):
        methods = sorted({m for (p, m, _, _) in by if p == protocol},
                         key=lambda m: (order.index(m) if m in order else len(order), m))
        if not methods:
            continue
        split = next(r["protocol"].split(":")[1] for r in records if r["protocol"].startswith(protocol + ":"))
        gen = any((protocol, m, "all", "gen_hr@1") in by for m in methods)
        if protocol == "nextitem":
            lines += [f"**Next-item ({split})**: {_setup(info, protocol)}; ranked over the 20 stored candidates"
                      + (", and generated (greedy) + parsed as in LLaRA" if gen else "") + ".", ""]
            cols = [("HR@1 (ranked)", "hr@1"), ("NDCG@10 (ranked)", "ndcg@10")]
            if gen:
                cols += [("HR@1 (generated)", "gen_hr@1"), ("ValidRatio", "gen_valid_ratio")]
            paired_metrics = [("HR@1", "hr@1"), ("NDCG@10", "ndcg@10")]
        else:
            lines += [f"**Yes/No ({split})**: {_setup(info, protocol)}; AUC intervals resample users.", ""]
            cols = [("AUC", "auc"), ("UAUC", "uauc"), ("AUC warm", "warm/auc"), ("AUC cold", "cold/auc")]
            paired_metrics = [("AUC", "auc")]
        lines += ["| method | " + " | ".join(c for c, _ in cols) + " | train s | eval s |",
                  "|---|" + "---|" * (len(cols) + 2)]
        for m in methods:
            first = _first_record(by, protocol, m)
            lines.append(f"| {_METHODS.get(m, m)} | " + " | ".join(_cell(by.get((protocol, m, *_subset(k)))) for _, k in cols)
                         + f" | {first['train_s']:.0f} | {first['eval_s']:.0f} |")

        def diff(m: str, base: str, metric: str) -> dict[str, Any] | None:
            return by.get((protocol, m, "all", f"diff_vs_{base}_{metric}"))

        first_metric = paired_metrics[0][1]
        paired = [m for m in methods if diff(m, "tallrec", first_metric)]
        if paired:
            lines += ["", "Paired 95% intervals of each method minus TALLRec on the same rows"
                      + (" (users resampled)" if protocol == "yesno" else "") + ":", "",
                      "| method | " + " | ".join(f"Δ {c}" for c, _ in paired_metrics) + " |",
                      "|---|" + "---|" * len(paired_metrics)]
            for m in paired:
                lines.append(f"| {_METHODS.get(m, m)} | "
                             + " | ".join(_cell(diff(m, "tallrec", k), signed=True) for _, k in paired_metrics) + " |")
        for m in methods:  # a variant or a preference stage against its own baseline (compare.own_baseline)
            for base in sorted({key[3][len("diff_vs_"):-len(first_metric) - 1] for key in by
                                if key[:2] == (protocol, m) and key[3].startswith("diff_vs_")
                                and key[3].endswith("_" + first_metric)} - {"tallrec"}):
                cells = ", ".join(f"{c} {_cell(diff(m, base, k), signed=True)}" for c, k in paired_metrics if diff(m, base, k))
                lines += ["", f"Paired over the same rows, {m} minus {base}: {cells} (95% paired bootstrap)."]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _comparison_section(folder: str) -> Callable[[Any, Path], str]:
    def render(records: Any, root: Path) -> str:
        return render_comparison(records, json.loads((root / folder / "run_info.json").read_text()))
    return render


def render_learning_curve(r: dict[str, Any], root: Path = ROOT) -> str:
    """Markdown of one ``bench/llara_learning_curve.py`` result (the budgets measured so far)."""
    budgets = sorted(r["budgets"], key=int)
    lines = [f"Measured by `{r['command']}` on {_cpu_name(r['cpu'])}, {r['threads']} threads, backbone {r['dtype']}: "
             f"`{r['method']}` trained from the same start at each budget (batch {r['batch_size']}, lr {r['lr']:g}, "
             f"warm-up {r['warmup_fraction']} of the steps, the curriculum and cosine schedule spanning each run), "
             f"scored on the same {r['rows']} {r['table']} rows. Chance HR@1 {r['chance_hr1']:.3f}; SASRec alone on "
             f"these rows: HR@1 {_ci(r['sasrec']['hr1'], r['sasrec']['hr1_ci'])}.", "",
             "| training prompts (steps) | HR@1 | NDCG@10 | soft tokens permuted: HR@1 / NDCG@10 | Spearman with SASRec's scores | "
             "training loss first / last eighth | train s | train tokens/s |",
             "|---|---|---|---|---|---|---|---|"]
    for b in budgets:
        e = r["budgets"][b]
        perm = (f"{e['permuted']['hr1']:.3f} / {e['permuted']['ndcg10']:.3f}") if "permuted" in e else ""
        lines.append(f"| {int(b):,} ({e['steps']}) | {_ci(e['hr1'], e['hr1_ci'])} | {_ci(e['ndcg10'], e['ndcg10_ci'])} | "
                     f"{perm} | {e['spearman_vs_sasrec']:+.3f} | {e['loss_first']:.3f} / {e['loss_last']:.3f} | "
                     f"{e['train_s']:.0f} | {e['tok_s']:.0f} |")
    return "\n".join(lines).rstrip() + "\n"


def render_length_grouping(r: dict[str, Any], root: Path = ROOT) -> str:
    """Markdown of one ``bench/length_grouping.py`` result."""
    lines = [f"Measured by `{r['command']}` on {_cpu_name(r['cpu'])}, {r['threads']} threads: the first {r['batches']} training "
             f"batches of {r['batch_size']} prompts in each order (mega-batches of {r['megabatch']} batches).", "",
             "| prompt view | padding share, plain shuffle | padding share, grouped | padded tokens plain / grouped |",
             "|---|---|---|---|"]
    for mode in ("text", "hybrid"):
        if f"{mode}_padded_tokens_ratio" in r:
            lines.append(f"| {mode} | {r[f'{mode}_plain_padding_share']:.3f} | {r[f'{mode}_grouped_padding_share']:.3f} | "
                         f"{r[f'{mode}_padded_tokens_ratio']:.3f}x |")
    if "step_time_ratio_total" in r:
        lines += ["", f"Training steps on the text view ({r['dtype']} backbone, LoRA, the two orders interleaved): "
                      f"{r['step_s_total_plain']:.1f} s plain vs {r['step_s_total_grouped']:.1f} s grouped over the same "
                      f"number of batches, **{r['step_time_ratio_total']:.2f}x**."]
    return "\n".join(lines).rstrip() + "\n"


def render_sdpo_step(r: dict[str, Any], root: Path = ROOT) -> str:
    """Markdown of one ``bench/sdpo_step.py`` result."""
    return (f"Measured by `{r['command']}` on {_cpu_name(r['cpu'])}, {r['threads']} threads, backbone {r['dtype']}, batch of "
            f"{r['batch_size']} LLaRA prompts ({r['prompt_tokens']} prompt tokens), {r['num_negatives']} negatives:\n\n"
            "| | supervised step (LLaRA, LM loss) | S-DPO step | ratio |\n|---|---|---|---|\n"
            f"| peak RSS (own process) | {r['peak_rss_mb_supervised']:.0f} MB | {r['peak_rss_mb_sdpo']:.0f} MB | "
            f"**{r['peak_rss_ratio']:.2f}x** (target <= 1.2x) |\n"
            f"| step time (median) | {r['step_s_supervised']:.2f} s | {r['step_s_sdpo']:.2f} s | "
            f"**{r['step_time_ratio']:.2f}x** (interleaved rounds) |\n\n"
            f"The reference is a frozen copy of {r['reference_numel']:,} trainable values, not a second backbone.\n")


_STAGE_STATS = (("loss", "S-DPO loss"), ("reward_margin", "reward margin (positive - negatives)"),
                ("reward_accuracy", "reward accuracy"), ("reference_top1", "reference ranks the positive first among 1 + k"))


def render_preference(records: list[dict[str, Any]], root: Path, folder: str) -> str:
    """Markdown of a supervised method vs the same + a preference stage (``compare --methods X X+sdpo``),
    with the paired difference to the start and the stage's logged quantities (``stage_stats.json``)."""
    info = json.loads((root / folder / "run_info.json").read_text())
    by = _by_key(records)
    protocol = next(iter(info["protocols"]))
    methods = info["protocols"][protocol]["methods"]
    lines = [f"Measured by {_machine(info)}", "",
             f"{_setup(info, protocol)}; the stage starts from the supervised run's bundle (also its frozen reference).", "",
             "| method | HR@1 (ranked) | NDCG@10 (ranked) | HR@1 (generated) | ValidRatio | train s |", "|---|---|---|---|---|---|"]
    for m in methods:
        first = _first_record(by, protocol, m)
        lines.append(f"| {_METHODS.get(m, m)} | " + " | ".join(_cell(by.get((protocol, m, "all", k)))
                                                             for k in ("hr@1", "ndcg@10", "gen_hr@1", "gen_valid_ratio"))
                     + f" | {first['train_s']:.0f} |")
    for m in methods:
        start = m.partition("+")[0]
        if start != m and (protocol, m, "all", f"diff_vs_{start}_hr@1") in by:
            lines += ["", f"Paired over the same rows, {m} minus {start}: HR@1 "
                          f"{_cell(by[(protocol, m, 'all', f'diff_vs_{start}_hr@1')], signed=True)}, NDCG@10 "
                          f"{_cell(by[(protocol, m, 'all', f'diff_vs_{start}_ndcg@10')], signed=True)} (95% paired bootstrap)."]
    # stage_stats*.json: one per stage (the log's run names its column)
    stats = [json.loads(p.read_text()) for p in sorted((root / folder).glob("stage_stats*.json"))]
    if stats:
        names = [re.search(r"runs/([^/]+)/logs", st["log"]).group(1) for st in stats]
        commands = "; ".join(f"`{st['command']}`" for st in stats)
        lines += ["", f"The stages' logs ({commands}), means over the first -> last {stats[0]['window']} of their "
                      f"{stats[0]['steps']} steps:", "",
                  "| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for key, label in _STAGE_STATS:
            lines.append(f"| {label} | " + " | ".join(f"{st[key + '_first']:.3f} -> {st[key + '_last']:.3f}" for st in stats) + " |")
    return "\n".join(lines).rstrip() + "\n"


#: section name -> (result file, renderer ``(result, repository root) -> markdown``)
SECTIONS: dict[str, tuple[str, Callable[[Any, Path], str]]] = {
    "injection_planted": ("results/injection_planted.json", render_injection),
    "injection_ml100k": ("results/injection_ml100k.json", render_injection),
    "injection_yesno": ("results/injection_yesno.json", render_injection),
    "injection_planted_l4": ("results/injection_planted_l4.json", render_injection),
    "injection_yesno_folded": ("results/injection_yesno_folded.json", render_injection),
    "injection_planted_l4_ablation": ("results/injection_planted_l4_ablation.json", render_pairs),
    "injection_levers": ("results/injection_levers.json", render_levers),
    "precision": ("results/precision_step.json", render_precision),
    "llara_curve": ("results/llara_curve.json", render_learning_curve),
    "length_grouping": ("results/length_grouping.json", render_length_grouping),
    "sdpo_step": ("results/sdpo_step.json", render_sdpo_step),
    "sdpo_ml100k": ("results/sdpo_ml100k/results.json", lambda recs, root: render_preference(recs, root, "results/sdpo_ml100k")),
    "sdpo_planted": ("results/sdpo_planted/results.json", lambda recs, root: render_preference(recs, root, "results/sdpo_planted")),
    "full_profile": ("results/results.json", _comparison_section("results")),
    "main_job": ("results/main_job/results.json", _comparison_section("results/main_job")),
    "own_data": ("results/own_data_planted/results.json", _comparison_section("results/own_data_planted")),
}


def _pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- generated:{name} -->\n)(.*?)(<!-- /generated:{name} -->)", re.S)


def rendered(readme: str, root: Path = ROOT) -> str:
    """``readme`` with every generated section whose result file exists re-rendered."""
    for name, (rel, render) in SECTIONS.items():
        path = root / rel
        if not path.exists() or not _pattern(name).search(readme):
            continue
        text = render(json.loads(path.read_text()), root)
        readme = _pattern(name).sub(lambda m: m.group(1) + text + m.group(3), readme)
    return readme


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m collab_llm.readme", description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true")
    p.add_argument("--readme", default=str(ROOT / "README.md"))
    a = p.parse_args(argv)
    path = Path(a.readme)
    old = path.read_text()
    new = rendered(old, path.parent)
    if a.check:
        if new != old:
            print(f"{path}: generated sections differ from the result files; run python -m collab_llm.readme", file=sys.stderr)
            return 1
        return 0
    if new != old:
        path.write_text(new)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
