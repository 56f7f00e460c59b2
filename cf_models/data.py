"""Lightning data modules that feed CF training and evaluation from a prepared split folder.

A prepared split (docs/DESIGN.md, written by ``collab-llm prepare``) holds ``manifest.json``,
``interactions.parquet`` (id-mapped, with a ``split`` column; CF models train on
``split == 'train'`` only) and the protocol's tables (``train/valid/test.parquet``). Three modules:

- ``SequenceDataModule``: SASRec on a next-item protocol (``loo``, ``llara``). Training batches are
  whole user sequences, cut into windows of ``max_len + 1`` items (one causal pass per window,
  every position predicts the next item). Evaluation reads the ``valid`` / ``test`` tables.
- ``InteractionDataModule``: MF with BPR on the implicit interactions (random split). Training
  batches are ``(user, positive, negative)`` triples with negatives drawn uniformly from the items
  the user did not interact with in training. Evaluation is multi-relevant full ranking over the
  user's ``valid`` / ``test`` interactions.
- ``YesNoDataModule``: pointwise training on a Yes/No protocol (``collm``, ``tallrec``): rows
  ``(user, item, label)`` from the ``train`` table; evaluation is AUC / UAUC on ``valid`` / ``test``.

Every module exposes ``n_users`` and ``n_items`` (from the manifest, known at construction so that
the CLI can link them into the model) and ``make_evaluator(stage)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from collab_llm.data import load_split
from collab_llm.errors import require_at_least_one
from cf_models.evaluate import Evaluator, MultiRelevantEvaluator, NextItemEvaluator, YesNoEvaluator

EvalStage = Literal["valid", "test"]


@dataclass(frozen=True)
class Catalog:
    """Largest user and item ids of a split (ids are contiguous from 1; 0 is padding)."""

    n_users: int
    n_items: int


class SplitFolder:
    """A prepared split opened with ``collab_llm.data.load_split``, plus the checks and views CF needs.

    ``table(name, columns)`` names the file and the missing columns; ``items_by_user(splits)`` gives
    each user's chronological items restricted to some values of the ``split`` column.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.prepared = load_split(self.folder)
        self.manifest = self.prepared.manifest

    @property
    def catalog(self) -> Catalog:
        return Catalog(int(self.manifest["n_users"]), int(self.manifest["n_items"]))

    def table(self, name: str, columns: Sequence[str] = ()) -> pd.DataFrame:
        frame = self.prepared.table(name)
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise ValueError(f"{self.folder / (name + '.parquet')}: columns {missing} are missing; has {list(frame.columns)}")
        return frame

    @property
    def interactions(self) -> pd.DataFrame:
        return self.table("interactions", ("user", "item", "timestamp", "split"))

    def items_by_user(self, splits: Sequence[str]) -> dict[int, np.ndarray]:
        """Chronological items of each user restricted to ``split in splits`` (ties keep the file order)."""
        frame = self.interactions
        frame = frame[frame["split"].isin(list(splits))].sort_values(["user", "timestamp"], kind="stable")
        return {int(u): g.to_numpy(dtype=np.int64) for u, g in frame.groupby("user", sort=True)["item"]}


def left_pad(rows: Sequence[np.ndarray | Sequence[int]], length: int | None = None) -> torch.Tensor:
    """Stack variable-length id lists into ``LongTensor[B, L]``, left-padded with 0.

    ``length``: keep the last ``length`` ids of each row (default: the longest row, at least 1).
    """
    rows = [np.asarray(r, dtype=np.int64) for r in rows]
    if length is None:
        length = max([1] + [r.size for r in rows])
    out = np.zeros((len(rows), length), dtype=np.int64)
    for i, r in enumerate(rows):
        r = r[-length:] if length else r[:0]
        if r.size:
            out[i, length - r.size:] = r
    return torch.from_numpy(out)


class _ListDataset(Dataset):
    def __init__(self, rows: list) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int):
        return self.rows[index]


class CFDataModule(L.LightningDataModule):
    """Base class: a split folder, its catalog sizes and its evaluator."""

    def __init__(self, split_dir: str, batch_size: int, eval_batch_size: int, seed: int, ks: Sequence[int]) -> None:
        super().__init__()
        require_at_least_one({"--data.init_args.batch_size": batch_size, "--data.init_args.eval_batch_size": eval_batch_size})
        self.split = SplitFolder(split_dir)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.seed = seed
        self.ks = tuple(ks)

    @property
    def n_users(self) -> int:
        return self.split.catalog.n_users

    @property
    def n_items(self) -> int:
        return self.split.catalog.n_items

    def make_evaluator(self, stage: EvalStage) -> Evaluator:
        raise NotImplementedError

    def eval_rows(self, stage: EvalStage) -> list:
        """Rows of the ``valid`` or ``test`` evaluation, in a fixed order."""
        raise NotImplementedError

    def _collate_eval(self, rows: list) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def val_dataloader(self) -> DataLoader:
        return DataLoader(_ListDataset(self.eval_rows("valid")), batch_size=self.eval_batch_size, shuffle=False,
                          collate_fn=self._collate_eval)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(_ListDataset(self.eval_rows("test")), batch_size=self.eval_batch_size, shuffle=False,
                          collate_fn=self._collate_eval)


class SequenceDataModule(CFDataModule):
    """Next-item protocol for sequential models. See the module docstring.

    Args:
        split_dir: prepared split folder (``loo`` or ``llara``).
        max_len: positions per training window (the model's ``max_len``); a training window holds
            ``max_len + 1`` items: inputs are the first ``max_len``, targets the last ``max_len``.
        windows: ``"all"`` cuts each training sequence into windows from its end backwards (every
            training interaction is a target once); ``"last"`` keeps only the most recent window.
        min_window: windows with fewer items are dropped (2 = at least one input and one target).
        window_stride: step between consecutive window ends with ``windows="all"`` (default
            ``max_len``: windows overlap by one item, so every training item is a target once; a
            smaller stride repeats targets with longer contexts at a higher cost per epoch).
        window_offsets: ``"fixed"``: the same windows every epoch. ``"random"`` (with
            ``windows="all"``): the most recent window still ends at the last training item, but the
            older windows are shifted back by a random ``1..window_stride`` items per user, redrawn
            every epoch, so an item that starts a window (little left context) in one epoch gets a
            long context in another; every training item is still a target at least once per epoch.
            Needs ``trainer.reload_dataloaders_every_n_epochs: 1`` to be redrawn (``train_dataloader``
            seeds each epoch with ``seed + epoch``).
        each_target_once: with overlapping windows (``window_stride < max_len`` or random offsets),
            a target held by two windows carries loss only in the older one, where it sits later and
            sees a longer context; the newer window keeps those positions as inputs (context for its
            later targets) with target 0. Every training item but a user's first is then a target
            exactly once, with at least ``max_len - window_stride + 1`` items of context (or its whole
            history): with ``window_stride=1`` this is RecBole's every-prefix-is-a-row training, at
            up to ``max_len`` times the encoder cost.
    """

    def __init__(
        self,
        split_dir: str,
        max_len: int = 50,
        windows: Literal["all", "last"] = "all",
        min_window: int = 2,
        window_stride: int | None = None,
        window_offsets: Literal["fixed", "random"] = "fixed",
        each_target_once: bool = False,
        batch_size: int = 128,
        eval_batch_size: int = 512,
        seed: int = 0,
        ks: Sequence[int] = (5, 10, 20),
    ) -> None:
        super().__init__(split_dir, batch_size, eval_batch_size, seed, ks)
        self.max_len = max_len
        self.windows = windows
        self.min_window = min_window
        self.window_stride = max_len if window_stride is None else window_stride
        if not 1 <= self.window_stride <= max_len:
            raise ValueError(f"window_stride must be in 1..max_len={max_len}, got {window_stride}")
        if window_offsets not in ("fixed", "random"):
            raise ValueError(f"window_offsets must be 'fixed' or 'random', got {window_offsets!r}")
        self.window_offsets = window_offsets
        self.each_target_once = each_target_once
        self._train_sequences: list[np.ndarray] | None = None

    def train_sequences(self) -> list[np.ndarray]:
        """Each user's chronological training items (users in id order), read once."""
        if self._train_sequences is None:
            self._train_sequences = list(self.split.items_by_user(["train"]).values())
        return self._train_sequences

    def train_rows(self, epoch: int = 0) -> list[tuple[np.ndarray, int]]:
        """Training windows of up to ``max_len + 1`` chronological items, users in id order, each with
        the number of its leading targets that carry no loss (always 0 unless ``each_target_once``).

        ``epoch`` only matters with ``window_offsets="random"`` (the shifts are drawn from
        ``numpy.random.default_rng([seed, epoch])``).
        """
        out = []
        span = self.max_len + 1
        rng = np.random.default_rng([self.seed, epoch]) if self.window_offsets == "random" else None
        for seq in self.train_sequences():
            ends = []
            end = seq.size
            while end >= self.min_window:
                ends.append(end)
                if self.windows == "last" or end <= span:
                    break  # only the most recent window, or this one already starts at the first item
                if len(ends) == 1 and rng is not None:
                    # the next window ends 1..stride items earlier: its targets overlap or abut
                    # this one's (end - max_len .. end - 1), so no item is skipped
                    end -= int(rng.integers(1, self.window_stride + 1))
                else:
                    end -= self.window_stride
            for k, end in enumerate(ends):
                skip = 0
                if self.each_target_once and k + 1 < len(ends):
                    # the older window (ending ends[k + 1]) holds this window's first
                    # max_len - shift targets at later positions, i.e. with longer contexts
                    skip = max(0, self.max_len - (end - ends[k + 1]))
                out.append((seq[max(0, end - span):end], skip))
        return out

    def train_windows(self, epoch: int = 0) -> list[np.ndarray]:
        """The windows of ``train_rows`` (see there)."""
        return [window for window, _ in self.train_rows(epoch)]

    def _collate_train(self, rows: list[tuple[np.ndarray, int]]) -> dict[str, torch.Tensor]:
        seq = left_pad([window for window, _ in rows], self.max_len + 1)
        target = seq[:, 1:].clone()
        for i, (window, skip) in enumerate(rows):
            if skip:  # the window's targets fill the last len(window) - 1 positions
                first = self.max_len - (len(window) - 1)
                target[i, first:first + skip] = 0
        return {"history": seq[:, :-1], "target": target}

    def train_dataloader(self) -> DataLoader:
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        generator = torch.Generator().manual_seed(self.seed + 1_000_003 * epoch)
        return DataLoader(
            _ListDataset(self.train_rows(epoch)), batch_size=self.batch_size, shuffle=True,
            collate_fn=self._collate_train, generator=generator,
        )

    def eval_rows(self, stage: EvalStage) -> list[dict]:
        """Rows of the ``valid`` / ``test`` table with ``seen`` = history plus the user's training items."""
        table = self.split.table(stage, ("user", "history", "target", "candidates"))
        train_items = self.split.items_by_user(["train"])
        empty = np.zeros(0, dtype=np.int64)
        rows = []
        for user, history, target, candidates in zip(
            table["user"].to_numpy(), table["history"], table["target"].to_numpy(), table["candidates"]
        ):
            history = np.asarray(history, dtype=np.int64)
            seen = np.union1d(history, train_items.get(int(user), empty))
            rows.append({"user": int(user), "history": history, "target": int(target),
                         "candidates": np.asarray(candidates, dtype=np.int64), "seen": seen})
        return rows

    def _collate_eval(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        return {
            "user": torch.tensor([r["user"] for r in rows]),
            "history": left_pad([r["history"] for r in rows], self.max_len),
            "target": torch.tensor([r["target"] for r in rows]),
            "candidates": torch.from_numpy(np.stack([r["candidates"] for r in rows])),
            "seen": left_pad([r["seen"] for r in rows]),
        }

    def make_evaluator(self, stage: EvalStage) -> Evaluator:
        return NextItemEvaluator(self.ks)


class InteractionDataModule(CFDataModule):
    """Implicit-feedback training pairs with sampled negatives; multi-relevant full-ranking evaluation.

    Args:
        split_dir: prepared split folder whose ``interactions.parquet`` has train/valid/test rows
            (the ``random`` protocol; ``loo`` works too, with one relevant item per user).
        history_len: length of the chronological ``history`` given to sequential models at evaluation.
    """

    def __init__(
        self,
        split_dir: str,
        batch_size: int = 2048,
        eval_batch_size: int = 512,
        history_len: int = 50,
        seed: int = 0,
        ks: Sequence[int] = (5, 10, 20),
    ) -> None:
        super().__init__(split_dir, batch_size, eval_batch_size, seed, ks)
        self.history_len = history_len
        self._rng = np.random.default_rng(seed)
        self._positive: np.ndarray | None = None

    def _positive_matrix(self) -> np.ndarray:
        """``bool[n_users + 1, n_items + 1]``: True where the user has a training interaction."""
        if self._positive is None:
            train = self.split.interactions
            train = train[train["split"] == "train"]
            m = np.zeros((self.n_users + 1, self.n_items + 1), dtype=bool)
            m[train["user"].to_numpy(), train["item"].to_numpy()] = True
            m[:, 0] = True  # never sample padding
            self._positive = m
        return self._positive

    def sample_negatives(self, users: np.ndarray) -> np.ndarray:
        """One uniform negative per user among items without a training interaction (rejection sampling)."""
        positive = self._positive_matrix()
        neg = self._rng.integers(1, self.n_items + 1, size=users.size)
        for _ in range(100):
            bad = positive[users, neg]
            if not bad.any():
                return neg
            neg[bad] = self._rng.integers(1, self.n_items + 1, size=int(bad.sum()))
        raise RuntimeError("could not sample negatives: a user has interacted with (almost) every item")

    def _collate_train(self, rows: list[tuple[int, int]]) -> dict[str, torch.Tensor]:
        pairs = np.asarray(rows, dtype=np.int64)
        return {
            "user": torch.from_numpy(pairs[:, 0]),
            "item": torch.from_numpy(pairs[:, 1]),
            "negative": torch.from_numpy(self.sample_negatives(pairs[:, 0])),
        }

    def train_dataloader(self) -> DataLoader:
        train = self.split.interactions
        train = train[train["split"] == "train"]
        rows = list(zip(train["user"].to_numpy().tolist(), train["item"].to_numpy().tolist()))
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(_ListDataset(rows), batch_size=self.batch_size, shuffle=True,
                          collate_fn=self._collate_train, generator=generator)

    def eval_rows(self, stage: EvalStage) -> list[dict]:
        """One row per user with held-out items in ``stage``; ``seen`` = train (+ valid for test) items."""
        seen_splits = ["train"] if stage == "valid" else ["train", "valid"]
        seen = self.split.items_by_user(seen_splits)
        relevant = self.split.items_by_user([stage])
        empty = np.zeros(0, dtype=np.int64)
        return [{"user": u, "history": seen.get(u, empty), "relevant": items} for u, items in relevant.items()]

    def _collate_eval(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        return {
            "user": torch.tensor([r["user"] for r in rows]),
            "history": left_pad([r["history"] for r in rows], self.history_len),
            "seen": left_pad([r["history"] for r in rows]),
            "relevant": left_pad([r["relevant"] for r in rows]),
        }

    def make_evaluator(self, stage: EvalStage) -> Evaluator:
        return MultiRelevantEvaluator(self.ks)


class YesNoDataModule(CFDataModule):
    """Pointwise ``(user, item, label)`` rows of a Yes/No protocol (CoLLM's MF training).

    Args:
        split_dir: prepared split folder of the ``collm`` or ``tallrec`` protocol.
        train_table: which table to train on (``train``, or a few-shot ``train_64`` ...).
        history_len: length of the ``history`` column given to sequential models.
    """

    def __init__(
        self,
        split_dir: str,
        train_table: str = "train",
        batch_size: int = 1024,
        eval_batch_size: int = 4096,
        history_len: int = 10,
        seed: int = 0,
    ) -> None:
        super().__init__(split_dir, batch_size, eval_batch_size, seed, ks=())
        self.train_table = train_table
        self.history_len = history_len

    def rows(self, table: str) -> list[tuple[int, int, int, np.ndarray]]:
        frame = self.split.table(table, ("user", "item", "label", "history"))
        labels = frame["label"].to_numpy()
        if not np.isin(labels, (0, 1)).all():
            raise ValueError(f"{self.split.folder / (table + '.parquet')}: column 'label' must be 0/1")
        return list(zip(frame["user"].to_numpy().tolist(), frame["item"].to_numpy().tolist(),
                        labels.tolist(), [np.asarray(h, dtype=np.int64) for h in frame["history"]]))

    def _collate(self, rows: list[tuple[int, int, int, np.ndarray]]) -> dict[str, torch.Tensor]:
        users, items, labels, histories = zip(*rows)
        return {
            "user": torch.tensor(users),
            "item": torch.tensor(items),
            "label": torch.tensor(labels),
            "history": left_pad(histories, self.history_len),
        }

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(_ListDataset(self.rows(self.train_table)), batch_size=self.batch_size, shuffle=True,
                          collate_fn=self._collate, generator=generator)

    def eval_rows(self, stage: EvalStage) -> list[tuple[int, int, int, np.ndarray]]:
        return self.rows(stage)

    def _collate_eval(self, rows: list[tuple[int, int, int, np.ndarray]]) -> dict[str, torch.Tensor]:
        return self._collate(rows)

    def make_evaluator(self, stage: EvalStage) -> Evaluator:
        return YesNoEvaluator()
