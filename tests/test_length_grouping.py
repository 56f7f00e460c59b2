"""Length-grouped training batches: the same rows per epoch, seeded, each batch of similar length."""

from __future__ import annotations

import numpy as np
import pytest
from torch.utils.data import DistributedSampler

from collab_llm.datamodule import LengthGroupedSampler


class _Rows:
    def __init__(self, lengths: list[int]) -> None:
        self.lengths = lengths

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> int:
        return self.lengths[i]


def _padding_share(order: list[int], lengths: list[int], batch: int) -> float:
    rows = np.array([lengths[i] for i in order]).reshape(-1, batch)
    return 1 - rows.sum() / (rows.max(1) * batch).sum()


def test_same_rows_as_the_plain_shuffle_less_padding_and_seeded():
    lengths = list(np.random.default_rng(0).integers(50, 400, size=256))
    ds = _Rows(lengths)
    grouped = LengthGroupedSampler(ds, lambda i: lengths[i], batch_size=8, megabatch=8, seed=3)
    plain = DistributedSampler(ds, num_replicas=1, rank=0, shuffle=True, seed=3)
    a, b = list(grouped), list(plain)
    assert sorted(a) == sorted(b) == list(range(256))  # every row once per epoch
    assert a != b
    assert _padding_share(a, lengths, 8) < 0.5 * _padding_share(b, lengths, 8)
    # within a mega-batch of 64 rows, the batches are length-sorted slices
    assert list(LengthGroupedSampler(ds, lambda i: lengths[i], 8, 8, seed=3)) == a  # seeded
    grouped.set_epoch(1)
    assert list(grouped) != a and sorted(grouped) == sorted(a)  # a new order each epoch


def test_replicas_split_each_global_batch_and_cover_every_row():
    lengths = list(np.random.default_rng(1).integers(10, 100, size=101))  # not a multiple: padded like DistributedSampler
    shares = [list(LengthGroupedSampler(_Rows(lengths), lambda i: lengths[i], 4, 2, num_replicas=2, rank=r, seed=0))
              for r in range(2)]
    assert len(shares[0]) == len(shares[1]) == len(DistributedSampler(_Rows(lengths), num_replicas=2, rank=0))
    assert set(shares[0]) | set(shares[1]) == set(range(101))
    for k in range(0, len(shares[0]), 4):  # rank 0's and rank 1's k-th batches come from one sorted global batch
        b0, b1 = shares[0][k:k + 4], shares[1][k:k + 4]
        assert all(lengths[i] >= lengths[j] for i, j in zip(b0, b1))  # strided from a descending order


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="batch_size and megabatch"):
        LengthGroupedSampler(_Rows([1, 2]), lambda i: i, batch_size=0)


def test_collator_length_proxy_follows_the_titles():
    from collab_llm.collate import PromptCollator

    col = PromptCollator.__new__(PromptCollator)  # the proxy needs titles and max_history only
    col.titles, col.max_history = {1: "a" * 10, 2: "b" * 30, 3: "c"}, 2
    short = {"history": [3, 3, 1], "candidates": [3]}
    long = {"history": [1, 2, 2], "candidates": [2]}
    assert col.length_proxy(long) > col.length_proxy(short)
    assert col.length_proxy({"history": [2, 1, 1]}) == col.length_proxy({"history": [1, 1]})  # cut to max_history


def test_bench_counts_padding_and_times_both_orders(tmp_path):
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_llm_fixtures import load_bench, make_backbone_dir, make_split

    bench = load_bench("length_grouping")
    split = make_split(tmp_path, "next_item", n_train=16)
    out = tmp_path / "r.json"
    result = bench.main(["--split", str(split), "--backbone", str(make_backbone_dir(tmp_path, "llama")),
                         "--batch-size", "2", "--batches", "4", "--megabatch", "2", "--time-steps", "2",
                         "--threads", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    for mode in ("text", "hybrid"):
        plain, grouped = result[f"{mode}_plain_padded_tokens"], result[f"{mode}_grouped_padded_tokens"]
        assert result[f"{mode}_padded_tokens_ratio"] == round(plain / grouped, 3)
        assert 0 <= result[f"{mode}_grouped_padding_share"] < 1
    assert result["step_s_total_plain"] > 0 and result["step_s_total_grouped"] > 0


@pytest.mark.parametrize("grouped", [False, True])
def test_a_resumed_loader_continues_each_rank_where_the_uninterrupted_one_is(grouped):
    """The training loader's position (epoch, batches handed out) restores the rest of that epoch on every
    DDP rank, and only that epoch: the next one starts at its beginning."""
    from collab_llm.datamodule import ResumableLoader, ResumableSampler

    lengths = list(np.random.default_rng(1).integers(10, 100, size=37))  # padded: 38 rows, 19 per rank

    def loader(rank: int) -> ResumableLoader:
        sampler = (LengthGroupedSampler(_Rows(lengths), lambda i: lengths[i], 3, 2, num_replicas=2, rank=rank, seed=4)
                   if grouped else ResumableSampler(_Rows(lengths), num_replicas=2, rank=rank, seed=4))
        return ResumableLoader(list(range(37)), sampler, 3, collate_fn=list)

    for rank in (0, 1):
        full = loader(rank)
        full.sampler.set_epoch(2)
        epoch = list(full)
        assert len(epoch) == len(full) == 7 and full.state_dict() == {"epoch": 2, "batches": 7}
        cut = loader(rank)
        cut.sampler.set_epoch(2)
        it = iter(cut)
        head = [next(it) for _ in range(3)]
        assert head == epoch[:3] and cut.state_dict() == {"epoch": 2, "batches": 3}
        resumed = loader(rank)
        resumed.load_state_dict(cut.state_dict())
        resumed.sampler.set_epoch(2)
        assert list(resumed) == epoch[3:] and resumed.state_dict() == {"epoch": 2, "batches": 7}
        assert list(resumed) == epoch  # the position is used once
        other = loader(rank)
        other.load_state_dict({"epoch": 1, "batches": 3})
        other.sampler.set_epoch(2)
        assert list(other) == epoch  # a position in another epoch does not apply
