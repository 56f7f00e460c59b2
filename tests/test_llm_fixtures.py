"""Builders for the LLM tests (no tests here): a tiny prepared split (DESIGN.md formats), tiny CF models, a tiny backbone.

Importable by the test files and by subprocess scripts (DDP, CLI) with ``tests/`` on ``sys.path``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import torch

from cf_models.mf import MatrixFactorization, MFConfig
from cf_models.sasrec import SASRec, SASRecConfig
from collab_llm.io import write_json
from collab_llm.testing import tiny_causal_lm

WORDS = ["Toy", "Story", "Heat", "Casino", "Babe", "Sabrina", "Jumanji", "GoldenEye", "Four", "Rooms", "Copycat", "Shorty"]
N_ITEMS = 24
N_USERS = 8
N_CANDIDATES = 5


def item_titles() -> dict[int, str]:
    return {i: f"{WORDS[(i - 1) % len(WORDS)]} {WORDS[(i * 5) % len(WORDS)]} {i}" for i in range(1, N_ITEMS + 1)}


def make_backbone_dir(root: Path, family: str = "llama") -> Path:
    path = root / f"tiny-{family}"
    if not path.exists():
        model, tok = tiny_causal_lm(family)
        model.save_pretrained(path)
        tok.save_pretrained(path)
    return path


def _next_item_rows(rng: np.random.Generator, n_rows: int) -> pd.DataFrame:
    rows = []
    for r in range(n_rows):
        user = int(rng.integers(1, N_USERS + 1))
        seq = rng.choice(np.arange(1, N_ITEMS + 1), size=int(rng.integers(3, 7)), replace=False).tolist()
        history, target = seq[:-1], seq[-1]
        pool = [i for i in range(1, N_ITEMS + 1) if i not in seq]
        cands = rng.choice(pool, size=N_CANDIDATES - 1, replace=False).tolist() + [target]
        rng.shuffle(cands)
        rows.append({"user": user, "history": history, "target": target, "candidates": [int(c) for c in cands]})
    return pd.DataFrame(rows)


def _yes_no_rows(rng: np.random.Generator, n_rows: int) -> pd.DataFrame:
    rows = []
    for r in range(n_rows):
        user = int(rng.integers(1, N_USERS + 1))
        hist = rng.choice(np.arange(1, N_ITEMS + 1), size=int(rng.integers(1, 5)), replace=False).tolist()
        item = int(rng.integers(1, N_ITEMS + 1))
        label = r % 2  # both classes in every table; also within users over enough rows
        rows.append({
            "user": user, "item": item, "label": label, "rating": 4.0 if label else 2.0, "timestamp": r,
            "history": hist, "warm": bool(r % 3), "liked": hist[:2], "disliked": hist[2:],
        })
    return pd.DataFrame(rows)


def make_split(root: Path, task: str, n_train: int = 8, n_eval: int = 6, seed: int = 0) -> Path:
    """A prepared split folder with items/users/interactions and train/valid/test tables."""
    path = root / f"split-{task}"
    if path.exists():
        return path
    path.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    titles = item_titles()
    pd.DataFrame({"item": list(titles), "raw_id": [str(i) for i in titles], "title": list(titles.values())}).to_parquet(path / "items.parquet")
    pd.DataFrame({"user": np.arange(1, N_USERS + 1), "raw_id": [str(u) for u in range(1, N_USERS + 1)]}).to_parquet(path / "users.parquet")
    pd.DataFrame({"user": [1], "item": [1], "rating": [5.0], "timestamp": [0], "split": ["train"]}).to_parquet(path / "interactions.parquet")
    make = _next_item_rows if task == "next_item" else _yes_no_rows
    counts = {}
    tables = [("train", n_train), ("valid", n_eval), ("test", n_eval)]
    if task == "yes_no":
        tables.append(("train_64", n_train))  # TALLRec few-shot table name
    for name, n in tables:
        frame = make(rng, n)
        frame.to_parquet(path / f"{name}.parquet")
        counts[name] = n
    write_json(path / "manifest.json", {
        "protocol": "llara" if task == "next_item" else "collm", "source": "tests", "source_sha256": "",
        "seed": seed, "filters": {}, "rows": counts, "n_users": N_USERS, "n_items": N_ITEMS,
    })
    return path


def make_cf_dirs(root: Path) -> dict[str, Path]:
    """Tiny MF (user + item tables; ``mf_bias``: with bias terms) and SASRec (item table + sequence encoder)
    saved with save_pretrained."""
    out = {"mf": root / "cf-mf", "sasrec": root / "cf-sasrec", "mf_bias": root / "cf-mf-bias"}
    if not out["mf"].exists():
        torch.manual_seed(0)
        MatrixFactorization(MFConfig(n_users=N_USERS, n_items=N_ITEMS, embedding_dim=8)).save_pretrained(out["mf"])
        SASRec(SASRecConfig(n_items=N_ITEMS, hidden_size=8, num_layers=1, num_heads=2, max_len=10, ffn_dim=16)).save_pretrained(out["sasrec"])
    if not out["mf_bias"].exists():
        torch.manual_seed(1)
        mf = MatrixFactorization(MFConfig(n_users=N_USERS, n_items=N_ITEMS, embedding_dim=8, use_bias=True))
        with torch.no_grad():  # biases start at zero: give them values, so folding them in shows
            mf.user_bias.weight[1:].normal_()
            mf.item_bias.weight[1:].normal_()
        mf.save_pretrained(out["mf_bias"])
    return out


def as_compare_work(split_dir: Path, cf_dir: Path, protocol: str, source: str, seed: int = 0) -> None:
    """Make a test split + CF folder look like what ``compare`` makes for a protocol: the manifest names its
    ``protocol`` (e.g. ``nextitem/loo``), ``source`` (``ml-100k``) and seed, and the CF model is a finished
    export (``metrics.json`` written with it) made from that split."""
    import json

    from cf_models.base import CFModel
    from collab_llm.fingerprint import split_sha256

    manifest = json.loads((split_dir / "manifest.json").read_text())
    manifest.update(protocol=protocol, source=source, seed=seed)
    (split_dir / "manifest.json").write_text(json.dumps(manifest))
    cf = CFModel.from_pretrained(cf_dir)
    cf.save_pretrained(cf_dir, extra_json={"metrics.json": {"train_seconds": 1.0}},
                       made_from={"split_sha256": split_sha256(split_dir), "seed": seed})


def make_module(tmp_path: Path, task: str, *, template: str, projector: str, data_kw: dict, cf_kind: str | None = None,
                **module_kw):
    """A CollabLLM on the tiny backbone, CF model (SASRec for next-item, MF for Yes/No, or ``cf_kind``, a key of
    :func:`make_cf_dirs`) and split, with its RecDataModule; ``regime`` defaults to ``"joint"``."""
    from collab_llm.datamodule import RecDataModule
    from collab_llm.module import CollabLLM

    backbone = make_backbone_dir(tmp_path, "llama")
    cf = make_cf_dirs(tmp_path)
    module_kw.setdefault("regime", "joint")
    module = CollabLLM(backbone_path=str(backbone), template=template, projector=projector,
                       cf_model_path=str(cf[cf_kind or ("sasrec" if task == "next_item" else "mf")]), **module_kw)
    data = RecDataModule(str(make_split(tmp_path, task)), template, str(backbone), **data_kw)
    return module, data


def load_bench(name: str) -> ModuleType:
    """``bench/<name>.py`` as a module (registered in ``sys.modules``: its dataclasses look it up)."""
    path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module

