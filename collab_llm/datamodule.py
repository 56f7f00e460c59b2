"""Lightning datamodule: a prepared split folder (docs/DESIGN.md) -> batches of :class:`PromptCollator`.

Reads ``<data_dir>/items.parquet`` (titles) and the example tables ``<table>.parquet`` (next-item
or Yes/No rows, checked against the template's task). The training order is a seeded shuffle that
depends only on ``(seed, epoch)`` (``DistributedSampler`` with the trainer's world size; Lightning
calls ``set_epoch``), so resumed and DDP runs see the same order as uninterrupted ones. With
``group_by_length`` the same shuffle is cut into mega-batches whose rows are sorted by prompt length, so
a batch pads little (:class:`LengthGroupedSampler`; measured by ``bench/length_grouping.py``).

A mid-epoch resume is exact: the training loader is a :class:`ResumableLoader`, whose position (epoch and
batches handed out) the datamodule's ``state_dict`` puts in the checkpoint; the resumed epoch draws the same
permutation and starts after those batches, on every DDP rank alike. A mid-epoch checkpoint without a
position (an older one) is refused rather than resumed inexactly.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Callable, Iterator

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from collab_llm.backbone import load_tokenizer
from collab_llm.collate import PromptCollator, TableDataset, titles_from_items
from collab_llm.errors import UserError, require_at_least_one
from collab_llm.faults import kill_point
from collab_llm.fingerprint import verify_split
from collab_llm.prompts import Mode, Task, load_template


def sample_rows(frame: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """A seeded random sample of ``n`` rows of ``frame`` (all rows if it has fewer), in table order, index reset."""
    if n >= len(frame):
        return frame.reset_index(drop=True)
    chosen = np.sort(np.random.default_rng(seed).choice(len(frame), size=n, replace=False))
    return frame.iloc[chosen].reset_index(drop=True)


def check_batch_sizes(batch_size: int, eval_batch_size: int) -> None:
    """Refuse a batch size below 1 (:class:`~collab_llm.errors.UserError` naming the flags)."""
    require_at_least_one({"--data.batch_size": batch_size, "--data.eval_batch_size": eval_batch_size})


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` (``shuffle=True``, padded, seeded by ``(seed, epoch)``) whose next iteration can
    start after its first ``skip`` indices (a mid-epoch resume, :class:`ResumableLoader`); ``skip`` is reset
    to 0 once used. Subclasses change the epoch's order by overriding :meth:`order`."""

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, seed: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self.skip = 0

    def order(self) -> Iterator[int]:
        """This rank's indices for the current epoch, from its start."""
        return super().__iter__()

    def __iter__(self) -> Iterator[int]:
        skip, self.skip = self.skip, 0
        return itertools.islice(self.order(), skip, None)


class LengthGroupedSampler(ResumableSampler):
    """``DistributedSampler``'s seeded shuffle, regrouped so that each batch holds rows of similar length.

    The epoch's permutation (the same as ``DistributedSampler(shuffle=True, seed=seed)``'s, padded the
    same way) is cut into mega-batches of ``megabatch`` global batches (``batch_size`` x replicas rows);
    each mega-batch is sorted by ``length(index)`` (longest first) and cut into global batches, whose
    order is then shuffled (seeded by ``seed`` and the epoch). Rank ``r`` takes every replicas-th row of
    each global batch, so every rank's batch holds rows of similar length. Deterministic in ``(seed,
    epoch)``; ``length`` is called lazily, once per index.
    """

    def __init__(self, dataset: Dataset, length: Callable[[int], int], batch_size: int, megabatch: int = 8,
                 num_replicas: int = 1, rank: int = 0, seed: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, seed=seed)
        if batch_size < 1 or megabatch < 1:
            raise ValueError(f"batch_size and megabatch must be >= 1, got {batch_size}, {megabatch}")
        self.length = length
        self.batch_size = batch_size
        self.megabatch = megabatch
        self._lengths: dict[int, int] = {}

    def _len_of(self, index: int) -> int:
        if index not in self._lengths:
            self._lengths[index] = int(self.length(index))
        return self._lengths[index]

    def order(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        indices = torch.randperm(len(self.dataset), generator=g).tolist()  # type: ignore[arg-type]
        pad = self.total_size - len(indices)
        indices += (indices * (pad // max(len(indices), 1) + 1))[:pad]
        step = self.batch_size * self.num_replicas
        batches = []
        for start in range(0, len(indices), step * self.megabatch):
            mega = sorted(indices[start:start + step * self.megabatch], key=self._len_of, reverse=True)
            batches += [mega[i:i + step] for i in range(0, len(mega), step)]
        shuffle = torch.randperm(len(batches), generator=torch.Generator().manual_seed(self.seed + self.epoch + 1)).tolist()
        flat = [i for b in shuffle for i in batches[b]]
        return iter(flat[self.rank:self.total_size:self.num_replicas])


class ResumableLoader(DataLoader):
    """A training ``DataLoader`` over a seeded ``DistributedSampler`` whose position survives a checkpoint.

    ``state_dict()`` = ``{"epoch": e, "batches": b}``: ``b`` batches of epoch ``e`` handed out (Lightning
    fetches a sized loader's batches one at a time, so at a checkpoint these are the batches trained on).
    After ``load_state_dict`` the next iteration of epoch ``e`` skips the sampler's first ``b * batch_size``
    indices (nothing is collated for them); any other epoch starts at its beginning. Each DDP rank
    skips the same number of batches of its own shard, which is where an uninterrupted run would be.
    ``len()`` stays the full epoch's: Lightning counts the batches already done from its own state.
    The epoch is read when the first batch is drawn, after Lightning's ``set_epoch``.

    ``done_in_epoch`` (the datamodule's: Lightning's count of this epoch's finished batches while fitting,
    else ``None``) is compared with the batches skipped: a checkpoint taken mid-epoch without a loader
    position (written before it was recorded) cannot resume exactly and is refused
    (:class:`~collab_llm.errors.UserError` naming it and what to do).
    """

    def __init__(self, dataset: Dataset, sampler: ResumableSampler, batch_size: int,
                 done_in_epoch: Callable[[], tuple[int, str] | None] | None = None,
                 collate_fn: Callable[[list[Any]], Any] | None = None, num_workers: int = 0) -> None:
        super().__init__(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate_fn,
                         num_workers=num_workers, persistent_workers=num_workers > 0)
        self.done_in_epoch = done_in_epoch
        self._position: dict[str, int] = {}
        self._resume_at: dict[str, int] = {}

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        return self._batches()

    def _batches(self) -> Iterator[Any]:
        sampler: ResumableSampler = self.sampler  # type: ignore[assignment]
        epoch = int(sampler.epoch)
        done = self._resume_at.get("batches", 0) if self._resume_at.get("epoch") == epoch else 0
        self._resume_at = {}
        expected = self.done_in_epoch() if self.done_in_epoch is not None else None
        if expected is not None and expected[0] != done:
            raise UserError(
                f"{expected[1]}: a checkpoint taken {expected[0]} batches into epoch {epoch} that does not record "
                "where the training loader was (written by an older collab-llm), so resuming it would train on "
                "other batches than an uninterrupted run; resume from an end-of-epoch checkpoint (--ckpt_path) "
                "or train from the start")
        sampler.skip = done * int(self.batch_size or 1)
        self._position = {"epoch": epoch, "batches": done}
        for batch in super().__iter__():
            kill_point("train_batch")  # kill -9 tests only (collab_llm.faults)
            done += 1
            self._position = {"epoch": epoch, "batches": done}
            yield batch

    def state_dict(self) -> dict[str, int]:
        return dict(self._position)

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self._resume_at = {k: int(state_dict[k]) for k in ("epoch", "batches") if k in state_dict}


class RecDataModule(L.LightningDataModule):
    """Batches of prompts for one prepared split.

    Args:
        data_dir: prepared split folder (``items.parquet``, ``train.parquet``, ...).
        template: prompt template name or YAML path.
        tokenizer_path: model folder whose tokenizer to use (the backbone's; the CLI links it).
        modes: prompt views to build per batch ("text", "hybrid").
        train_table, val_table, test_table: table names (e.g. ``train_64`` for TALLRec few-shot).
        max_length: token budget of prompt + answer.
        max_history: items kept per list field before rendering (None: all).
        min_history: truncation never goes below this many items.
        batch_size, eval_batch_size, num_workers: loaders.
        seed: training shuffle seed.
        limit_rows: keep only the first rows of every table (smoke tests).
        test_sample: evaluate on a seeded random sample of this many test rows, kept in table order
            (:func:`sample_rows`; ``None``: all). A budget-limited comparison scores every method on
            the same sample (rows taken from the top of a user-sorted table would cover few users).
        test_sample_seed: the sample's seed.
        group_by_length: batch training rows of similar prompt length (:class:`LengthGroupedSampler`,
            mega-batches of ``length_megabatch`` batches): less padding, a different but equally
            seeded order. Off by default (the papers' order).
        length_megabatch: batches per mega-batch when grouping by length.
    """

    def __init__(
        self,
        data_dir: str,
        template: str,
        tokenizer_path: str,
        modes: list[Mode] = ["text", "hybrid"],  # noqa: B006 - jsonargparse needs a literal default
        train_table: str = "train",
        val_table: str = "valid",
        test_table: str = "test",
        max_length: int = 1024,
        max_history: int | None = 10,
        min_history: int = 1,
        batch_size: int = 8,
        eval_batch_size: int = 8,
        num_workers: int = 0,
        seed: int = 0,
        limit_rows: int | None = None,
        test_sample: int | None = None,
        test_sample_seed: int = 0,
        group_by_length: bool = False,
        length_megabatch: int = 8,
    ) -> None:
        super().__init__()
        self.data_dir = Path(data_dir).expanduser()
        self.template = load_template(template)
        self.task: Task = self.template.task
        self.tokenizer_path = tokenizer_path
        self.modes = list(modes)
        self.tables = {"train": train_table, "val": val_table, "test": test_table}
        self.max_length = max_length
        self.max_history = max_history
        self.min_history = min_history
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.limit_rows = limit_rows
        check_batch_sizes(batch_size, eval_batch_size)
        if test_sample is not None and test_sample < 1:
            raise ValueError(f"test_sample must be >= 1 or None, got {test_sample}")
        self.test_sample = test_sample
        self.test_sample_seed = test_sample_seed
        self.group_by_length = group_by_length
        self.length_megabatch = length_megabatch
        self.collator: PromptCollator | None = None
        self.datasets: dict[str, TableDataset] = {}
        self._train_loader: ResumableLoader | None = None
        self._train_position: dict[str, int] = {}

    def state_dict(self) -> dict[str, Any]:
        """The training loader's position (:class:`ResumableLoader`), stored in checkpoints."""
        return {"train_position": self._train_loader.state_dict() if self._train_loader is not None else {}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume the training order where the checkpoint left it. Lightning restores a datamodule before it
        builds the training loader (its own loader-state restore comes after ``configure_optimizers`` has
        already built the loader to count the steps, too late), so the position is handed over here."""
        self._train_position = dict(state_dict.get("train_position", {}))

    def _read(self, name: str) -> pd.DataFrame:
        path = self.data_dir / f"{name}.parquet"
        if not path.exists():
            raise FileNotFoundError(f"{path}: table missing from the prepared split {self.data_dir}")
        frame = pd.read_parquet(path)
        if self.limit_rows is not None:
            frame = frame.iloc[: self.limit_rows]
        return frame

    def setup(self, stage: str | None = None) -> None:
        if self.collator is None:
            verify_split(self.data_dir)  # the tables' sha256 against the manifest's (collab_llm.fingerprint)
            tokenizer, placeholder_ids = load_tokenizer(self.tokenizer_path)
            titles = titles_from_items(self._read_items(), str(self.data_dir / "items.parquet"))
            self.collator = PromptCollator(
                tokenizer, self.template, titles, placeholder_ids, self.modes,
                self.max_length, self.max_history, self.min_history,
            )
        wanted = {"fit": ["train", "val"], "validate": ["val"], "test": ["test"], "predict": ["test"]}
        for split in wanted.get(stage or "fit", ["train", "val", "test"]):
            if split not in self.datasets:
                name = self.tables[split]
                frame = self._read(name)
                if split == "test" and self.test_sample is not None:
                    frame = sample_rows(frame, self.test_sample, self.test_sample_seed)
                self.datasets[split] = TableDataset(frame, self.task, f"{self.data_dir / name}.parquet")

    def _read_items(self) -> pd.DataFrame:
        path = self.data_dir / "items.parquet"
        if not path.exists():
            raise FileNotFoundError(f"{path}: items table missing from the prepared split")
        return pd.read_parquet(path)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self.datasets:
            raise RuntimeError(f"{split} data not set up; call setup() first")
        ds = self.datasets[split]
        if shuffle:
            world = self.trainer.world_size if self.trainer is not None else 1
            rank = self.trainer.global_rank if self.trainer is not None else 0
            if self.group_by_length:
                collator = self.collator
                assert collator is not None
                sampler = LengthGroupedSampler(ds, lambda i: collator.length_proxy(ds[i]), self.batch_size,
                                               self.length_megabatch, num_replicas=world, rank=rank, seed=self.seed)
            else:
                sampler = ResumableSampler(ds, num_replicas=world, rank=rank, seed=self.seed)
            loader = ResumableLoader(ds, sampler, self.batch_size, self._done_in_epoch, self.collator, self.num_workers)
            loader.load_state_dict(self._train_position)
            self._train_position = {}  # handed over once
            self._train_loader = loader
            return loader
        return DataLoader(
            ds,
            batch_size=self.eval_batch_size,
            shuffle=False,
            collate_fn=self.collator,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def _done_in_epoch(self) -> tuple[int, str] | None:
        """While fitting: Lightning's count of the current epoch's finished batches (restored from a checkpoint
        on resume) and the checkpoint's path; else ``None``."""
        trainer = self.trainer
        if trainer is None or not trainer.training:
            return None
        return int(trainer.fit_loop.epoch_loop.batch_progress.current.ready), str(trainer.ckpt_path)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
