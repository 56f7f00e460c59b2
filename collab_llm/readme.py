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


def _cpu(r: dict[str, Any]) -> str:
    cpu = r["cpu"]
    return f"{cpu['model']} ({cpu['isa']}, native bf16: {'yes' if cpu['native_bf16'] else 'no'}), {r['threads']} threads, backbone {r['dtype']}"


_LABELS = {
    "sasrec": "SASRec alone", "mf": "MF alone",
    "text": "TALLRec (text-only prompt)",
    "head": "**head** (hybrid prompt, item-scoring head fitted in closed form)",
    "head_last": "ablation: the same head, prompt reduced to the last item's soft token",
    "llara": "LLaRA (hybrid, curriculum, likelihood)",
    "collm": "CoLLM (two stages)",
}


def _label(name: str) -> str:
    if name.endswith("_permuted"):
        return f"check: {name[: -len('_permuted')]} scored with the soft tokens of shuffled items"
    return _LABELS.get(name, name)


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
        if f"{part}_diff_hr1" in r:
            lines += ["", f"Paired over the same rows, {r.get('hybrid_name', 'hybrid')} minus text-only: HR@1 "
                          f"{_signed(r[f'{part}_diff_hr1'], r[f'{part}_diff_hr1_ci'])}, NDCG@10 "
                          f"{_signed(r[f'{part}_diff_ndcg10'], r[f'{part}_diff_ndcg10_ci'])} (95% paired bootstrap)."]
        lines.append("")
    if "yesno_auc_mf" in r:
        lines += [f"**ML-1M Yes/No (CoLLM preset)**, {r.get('yesno_rows', '')} test rows of {r.get('yesno_users', '')} users "
                  f"(AUC intervals: users resampled); the LLM methods train on the same prompts drawn from `train`", "",
                  "| method | AUC | train s |", "|---|---|---|"]
        found = [k[len("yesno_auc_"):] for k in r if k.startswith("yesno_auc_") and not k.endswith("_ci")]
        ordered = [n for n in ("mf", "text") if n in found] + [n for n in found if n not in ("mf", "text", "hybrid")]
        for name in ordered:
            label = _label(name)
            train = r.get(f"yesno_train_s_{name}")
            lines.append(f"| {label} | {_ci(r[f'yesno_auc_{name}'], r.get(f'yesno_auc_{name}_ci'))} | "
                         f"{'' if train is None else f'{train:.0f}'} |")
        if "yesno_diff" in r:
            lines += ["", f"Paired, users resampled: hybrid minus text-only AUC {_signed(r['yesno_diff'], r['yesno_diff_ci'])}."]
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
                  f"{r['gemm_best_bf16'] / 1e9:.0f} GFLOP/s; MFU = 4 x backbone params x tokens / step time / the best rate of the step's precision."]
    return "\n".join(lines).rstrip() + "\n"


#: section name -> (result file, renderer ``(result, repository root) -> markdown``)
SECTIONS: dict[str, tuple[str, Callable[[Any, Path], str]]] = {
    "injection_planted": ("results/injection_planted.json", render_injection),
    "injection_ml100k": ("results/injection_ml100k.json", render_injection),
    "injection_yesno": ("results/injection_yesno.json", render_injection),
    "injection_levers": ("results/injection_levers.json", render_levers),
    "precision": ("results/precision_step.json", render_precision),
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
