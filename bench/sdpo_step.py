"""Memory and time of one S-DPO step vs one supervised step on the same batch, side by side in one run.

The supervised step is LLaRA's (hybrid prompt, language-modelling loss on the answer + EOS); the S-DPO
step (:mod:`collab_llm.sdpo`) scores the positive and ``k`` negatives of every row twice: a reference pass
(no graph, the start's tensors swapped in) and a policy pass (graph kept), each ONE prompt pass per row
with the ``1 + k`` answers packed over the prompt's KV cache; then backward and AdamW.

Peak RSS is a process-wide high-water mark, so each step kind runs in its own fresh process (this script
re-invoked with ``--child``): the model is built, ``--warmup`` steps run, then ``--rounds`` timed steps;
the child reports its RSS after the build and its peak. The step-time ratio is measured in the S-DPO
child, the two steps interleaved round by round on the same module and batch (median of per-round
ratios, so a change of machine load cancels out); each child's own median step time is printed too.

Data: a prepared next-item split and its SASRec (``--split``, ``--cf-model``), or, by default, a small
planted split and an untrained SASRec made in a temporary folder (a step's cost does not depend on what
the CF model learned). Model: ``--model`` (default: the cached SmolLM2-135M folder of
:func:`collab_llm.assets.find_assets`); ``--tiny`` uses a tiny random Llama (tests).

Usage::

    OMP_NUM_THREADS=2 python bench/sdpo_step.py --batch-size 4 --num-negatives 3 --out results/sdpo_step.json

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def rss_mb() -> float:
    """Current resident set size of this process in MB (Linux ``/proc``)."""
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def peak_rss_mb() -> float:
    """This process's peak resident set size in MB (``ru_maxrss`` is in KB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_inputs(work: Path, model: str | None, tiny: bool, split: str | None, cf_model: str | None) -> dict[str, str]:
    """Backbone folder, split folder and SASRec folder: the given ones, or small ones made under ``work``."""
    if tiny:
        from collab_llm.testing import tiny_causal_lm

        backbone = work / "tiny-llama"
        if not backbone.exists():
            lm, tok = tiny_causal_lm("llama")
            lm.save_pretrained(backbone)
            tok.save_pretrained(backbone)
        model = str(backbone)
    elif model is None:
        from collab_llm.assets import find_assets

        assets = find_assets()
        if assets is None:
            raise SystemExit("sdpo_step: no cached SmolLM2 (run `collab-llm assets`), or pass --model / --tiny")
        model = str(assets.smollm2)
    if split is None:
        from collab_llm.data import prepare_nextitem
        from collab_llm.data.planted import generate_planted

        split_dir = work / "planted_loo"
        if not (split_dir / "manifest.json").exists():
            data = generate_planted(n_users=40, n_items=60, n_clusters=2, min_length=14, max_length=20, seed=0)
            prepare_nextitem(data, split_dir, protocol="loo", seed=0)
        split = str(split_dir)
    if cf_model is None:
        from cf_models.sasrec import SASRec, SASRecConfig

        cf_dir = work / "sasrec"
        if not (cf_dir / "config.json").exists():
            n_items = int(json.loads((Path(split) / "manifest.json").read_text())["n_items"])
            torch.manual_seed(0)
            SASRec(SASRecConfig(n_items=n_items, hidden_size=64, max_len=50)).save_pretrained(cf_dir)
        cf_model = str(cf_dir)
    return {"model": model, "split": split, "cf_model": cf_model}


def build(a: argparse.Namespace, start: str | None):
    """The LLaRA-style module (hybrid prompts, LoRA + projector), with a preference stage from ``start``."""
    from collab_llm.adapters import LoRA
    from collab_llm.module import CollabLLM
    from collab_llm.sdpo import PreferenceConfig

    preference = PreferenceConfig(start, a.beta, a.num_negatives) if start is not None else None
    return CollabLLM(
        backbone_path=a.model, template="llara_movielens", regime="joint", cf_model_path=a.cf_model,
        projector="llara_mlp", dtype=a.dtype, adapter=LoRA(r=8, alpha=32.0, dropout=0.1), learning_rate=1e-5,
        seed=0, preference=preference,
    )


def one_batch(module: Any, split: str, batch_size: int) -> dict[str, Any]:
    """The first ``batch_size`` training rows with the longest histories, collated (hybrid view)."""
    from collab_llm.collate import PromptCollator, TableDataset, titles_from_items

    titles = titles_from_items(pd.read_parquet(Path(split) / "items.parquet"))
    train = pd.read_parquet(Path(split) / "train.parquet")
    order = train["history"].map(len).sort_values(ascending=False, kind="stable").index[:batch_size]
    rows = TableDataset(train.loc[order], "next_item")
    collator = PromptCollator(module.tokenizer, module.template, titles, module.placeholder_ids, ["hybrid"], 2048, 10, 1)
    return collator([rows[i] for i in range(len(rows))])


def child(a: argparse.Namespace) -> dict[str, Any]:
    """One step kind in this (fresh) process: RSS after the build, peak RSS over the steps, step times."""
    torch.set_num_threads(a.threads)
    kind = a.child
    module = build(a, a.start if kind == "sdpo" else None)
    module.train()
    batch = one_batch(module, a.split, a.batch_size)
    optimizer = torch.optim.AdamW(module.trainable_parameters(), lr=1e-5)
    losses = {"supervised": lambda: module.lm_loss(batch, "hybrid"),
              "sdpo": lambda: module.preference_loss(batch, "hybrid")}

    def step(which: str) -> Callable[[], float]:
        def run() -> float:
            t0 = time.perf_counter()
            losses[which]().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return time.perf_counter() - t0
        return run

    built = rss_mb()
    for _ in range(a.warmup):
        step(kind)()
    times = [step(kind)() for _ in range(a.rounds)]
    out: dict[str, Any] = {"kind": kind, "rss_built_mb": built, "peak_rss_mb": peak_rss_mb(),
                           "step_s": statistics.median(times),
                           "prompt_tokens": int(batch["hybrid"]["prompt_attention_mask"].sum())}
    if kind == "sdpo":  # the time ratio on one module and batch, interleaved (peak RSS already read)
        ratios = []
        for _ in range(a.rounds):
            sup, pref = step("supervised")(), step("sdpo")()
            ratios.append(pref / sup)
        out["interleaved_time_ratio"] = statistics.median(ratios)
        out["reference_numel"] = module.preference.reference.numel()
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="HF model folder (default: the cached SmolLM2-135M)")
    p.add_argument("--tiny", action="store_true", help="a tiny random Llama instead of --model (tests)")
    p.add_argument("--split", default=None, help="a prepared next-item split (default: a small planted one)")
    p.add_argument("--cf-model", default=None, help="its SASRec folder (default: an untrained SASRec)")
    p.add_argument("--work", default=None, help="where default inputs are made (default: a temporary folder)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--num-negatives", type=int, default=3, help="S-DPO negatives per row (the paper's 3)")
    p.add_argument("--beta", type=float, default=1.0)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None)
    p.add_argument("--child", choices=["supervised", "sdpo"], default=None, help=argparse.SUPPRESS)
    p.add_argument("--start", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child is not None:
        print(json.dumps(child(a)), flush=True)
        return {}
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory(prefix="sdpo_step_") as tmp:
        work = Path(a.work) if a.work else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        inputs = make_inputs(work, a.model, a.tiny, a.split, a.cf_model)
        a.model, a.split, a.cf_model = inputs["model"], inputs["split"], inputs["cf_model"]
        start = work / "start.ckpt"  # the supervised start: the module's initial trainable tensors
        torch.save({"state_dict": build(a, None).trainable_state()}, start)
        base = [sys.executable, str(Path(__file__).resolve()), "--model", a.model, "--split", a.split,
                "--cf-model", a.cf_model, "--batch-size", str(a.batch_size), "--num-negatives", str(a.num_negatives),
                "--beta", str(a.beta), "--dtype", a.dtype, "--rounds", str(a.rounds), "--warmup", str(a.warmup),
                "--threads", str(a.threads), "--start", str(start)]
        runs = {}
        for kind in ("supervised", "sdpo"):
            done = subprocess.run([*base, "--child", kind], capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise SystemExit(f"sdpo_step: the {kind} child failed:\n{done.stderr[-4000:]}")
            runs[kind] = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"[sdpo_step] {kind}: RSS {runs[kind]['rss_built_mb']:.0f} MB built, peak {runs[kind]['peak_rss_mb']:.0f} "
                  f"MB; step {runs[kind]['step_s']:.3f} s (median of {a.rounds})", flush=True)
    from collab_llm.backbone import cpu_description

    sup, sdpo = runs["supervised"], runs["sdpo"]
    result: dict[str, Any] = {
        "model": a.model, "tiny": a.tiny, "dtype": a.dtype, "threads": a.threads, "batch_size": a.batch_size,
        "num_negatives": a.num_negatives, "beta": a.beta, "prompt_tokens": sup["prompt_tokens"],
        "peak_rss_mb_supervised": sup["peak_rss_mb"], "peak_rss_mb_sdpo": sdpo["peak_rss_mb"],
        "peak_rss_ratio": sdpo["peak_rss_mb"] / sup["peak_rss_mb"],
        "step_rss_mb_supervised": sup["peak_rss_mb"] - sup["rss_built_mb"],
        "step_rss_mb_sdpo": sdpo["peak_rss_mb"] - sdpo["rss_built_mb"],
        "step_s_supervised": sup["step_s"], "step_s_sdpo": sdpo["step_s"],
        "step_time_ratio": sdpo["interleaved_time_ratio"], "reference_numel": sdpo["reference_numel"],
        "cpu": cpu_description(),
    }
    print(f"[sdpo_step] peak RSS S-DPO / supervised: {result['peak_rss_ratio']:.3f}x (target <= 1.2x); step time "
          f"{result['step_time_ratio']:.2f}x (interleaved, median per-round ratio)", flush=True)
    from collab_llm.io import emit_result

    return emit_result(result, a.out, "python bench/sdpo_step.py " + " ".join(argv if argv is not None else sys.argv[1:]))


if __name__ == "__main__":
    main()
