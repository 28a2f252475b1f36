"""The streaming side of `data.cache` without Ray: batch sizes, the seeded shuffle buffer,
reading a part into memory, and the `auto` choice."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from app.data.shards import MB, ShardHandle, batch_sizes, buffer_rows, choose_cache, read_all, shuffled_batches


def blocks_of(rows: int, cuts: list[int]) -> list[dict[str, np.ndarray]]:
    """Rows 0..rows-1 (y is the row number; x_num and x_cat derive from it), cut into blocks
    at `cuts`, as read-only views like those read from the object store."""
    y = np.arange(rows, dtype=np.int64)
    columns = {"x_num": np.stack([y, -y], axis=1).astype(np.float32), "x_cat": (y % 7)[:, None], "y": y}
    for a in columns.values():
        a.flags.writeable = False
    edges = [0, *cuts, rows]
    return [{c: a[lo:hi] for c, a in columns.items()} for lo, hi in itertools.pairwise(edges)]


@pytest.mark.parametrize(("rows", "steps"), [(10, 1), (10, 3), (1001, 16), (7, 7), (64, 5)])
def test_batch_sizes_are_those_memory_mode_cuts(rows, steps):
    expected = [len(part) for part in torch.tensor_split(torch.arange(rows), steps)]
    assert batch_sizes(rows, steps) == expected


@pytest.mark.parametrize(("rows", "capacity", "steps"), [(1000, 128, 9), (1000, 5000, 9), (333, 64, 333),
                                                        (50, 10, 1), (1000, 0, 20)])
def test_every_row_once_in_batches_of_the_planned_sizes(rows, capacity, steps):
    sizes = batch_sizes(rows, steps)
    batches = list(shuffled_batches(blocks_of(rows, [100, 101, 400]), sizes, capacity, seed=3))
    assert [len(b["y"]) for b in batches] == sizes
    seen = np.concatenate([b["y"] for b in batches])
    assert sorted(seen.tolist()) == list(range(rows))
    for b in batches:  # the columns of a row stay together
        assert np.array_equal(b["x_num"][:, 0], b["y"]) and np.array_equal(b["x_cat"][:, 0], b["y"] % 7)


def test_order_depends_on_the_seed_and_the_rows_only():
    sizes = batch_sizes(1000, 10)

    def order(cuts, seed):
        return np.concatenate([b["y"] for b in shuffled_batches(blocks_of(1000, cuts), sizes, 200, seed)])

    first = order([100, 500], seed=1)
    assert np.array_equal(first, order([100, 500], seed=1))  # a replayed epoch
    assert np.array_equal(first, order([3, 4, 999], seed=1))  # blocks cut elsewhere: the same
    assert np.array_equal(first, order([], seed=1))
    assert not np.array_equal(first, order([100, 500], seed=2))  # another epoch or rank
    assert not np.array_equal(first, np.arange(1000))  # shuffled


def test_a_batch_draws_only_from_rows_the_buffer_can_have_reached():
    # Bounded memory: batch i is drawn from the first capacity + i * batch rows of the
    # stream, so the buffer never reads ahead; and it mixes rows from all of its span.
    capacity, batch = 100, 10
    sizes = batch_sizes(1000, 100)
    batches = list(shuffled_batches(blocks_of(1000, [250, 500]), sizes, capacity, seed=0))
    for i, b in enumerate(batches):
        assert b["y"].max() < capacity + i * batch
    assert batches[0]["y"].max() > batch  # not the stream's first rows in order


def test_a_short_stream_is_shuffled_whole():
    batches = list(shuffled_batches(blocks_of(30, [10]), [12, 9, 9], capacity=1000, seed=5))
    seen = np.concatenate([b["y"] for b in batches])
    assert sorted(seen.tolist()) == list(range(30)) and not np.array_equal(seen, np.arange(30))


class ListIterator:
    """Stands in for the DataIterator of a handle: the blocks as Ray Data hands them."""

    def __init__(self, blocks):
        self.blocks = blocks

    def iter_batches(self, **_):
        return iter(self.blocks)


def test_read_all_fills_one_array_per_column_in_row_order():
    handle = ShardHandle(ListIterator(blocks_of(500, [1, 250])), rows=500, size_bytes=500 * 24)
    arrays = read_all(handle)
    assert np.array_equal(arrays["y"], np.arange(500))
    assert arrays["x_num"].shape == (500, 2) and arrays["x_num"].dtype == np.float32
    assert arrays["x_cat"].shape == (500, 1) and arrays["x_num"].flags.writeable
    with pytest.raises(RuntimeError, match="holds 500 rows, 600 expected"):
        read_all(ShardHandle(ListIterator(blocks_of(500, [])), rows=600, size_bytes=0))


def test_auto_streams_only_shards_over_half_the_budget():
    assert choose_cache("memory", shard_bytes=10**12, budget_bytes=MB, budget_from="x") == ("memory", "data.cache")
    assert choose_cache("stream", shard_bytes=1, budget_bytes=10**12, budget_from="x")[0] == "stream"
    cache, why = choose_cache("auto", shard_bytes=50 * MB, budget_bytes=128 * MB, budget_from="scaling.memory_per_worker_mb")
    assert cache == "memory" and "within half of its 128 MiB budget (scaling.memory_per_worker_mb)" in why
    cache, why = choose_cache("auto", shard_bytes=65 * MB, budget_bytes=128 * MB, budget_from="the node")
    assert cache == "stream" and "65.0 MiB, is over half" in why


def test_shuffle_buffer_takes_an_eighth_of_the_budget_and_at_least_two_batches():
    handle = ShardHandle(None, rows=1000, size_bytes=100_000)  # 100 bytes a row
    assert buffer_rows(handle, budget_bytes=8 * MB) == MB // 100
    assert buffer_rows(handle, budget_bytes=64 * 1024 * MB) == 64 * MB // 100  # at most 64 MiB, whatever the budget
    batches = list(shuffled_batches(blocks_of(100, []), [25] * 4, capacity=1, seed=0))
    assert batches[0]["y"].max() >= 25  # drawn from two batches' worth of rows, not one


def test_scoring_batches_cover_the_part_in_order_whatever_the_blocks():
    handle = ShardHandle(ListIterator(blocks_of(1000, [1, 300, 301])), rows=1000, size_bytes=0)
    batches = list(handle.batches(256))
    assert [len(b["y"]) for b in batches] == [256, 256, 256, 232]
    assert np.array_equal(np.concatenate([b["y"] for b in batches]), np.arange(1000))
    assert all(b["x_num"].flags.writeable for b in batches)  # copies, not the read-only blocks
