"""Deterministic per-worker shards of materialized datasets, cut on the driver, and the two
ways a worker reads its shard (`data.cache`): into memory once, or streamed every epoch.

    python -m app train --config c.yaml --set data.cache=stream

Ray Train's default `DataConfig` streams each dataset to the workers through
`streaming_split`, which assigns blocks in whatever order they finish: fine for
throughput, but a restarted worker group would see different shards and could not
replay an epoch exactly. Here the driver cuts each preprocessed split into contiguous
row ranges that differ in size by at most one row, once per possible worker count,
before training starts. Cutting runs Ray tasks, so doing it up front also means the
workers never wait for CPUs that the training workers themselves are holding. A small
input, prepared in the driver, skips Ray Data altogether (`HeldShards`): the same row
ranges, read from one object per split.

A streamed shard passes through a seeded shuffle buffer whose output depends only on the
shard's rows (always the same, in the same order) and the seed, never on where blocks end
or when they arrive: an epoch replays exactly after a restart in both modes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray.train

from app import ray_compat
from app.config import ScalingConfig
from app.data.store_pages import StorePages

COLUMNS = ("x_num", "x_cat", "y")  # the model-ready arrays of a split (app/data/prepare.py)
MB = 2**20
# Blocks larger than this are re-cut before the shards are: a worker maps each block it
# reads whole, and streaming holds a few (the one being read and those prefetched).
MAX_BLOCK_BYTES = 8 * MB
PREFETCH_BLOCKS = 2
# `auto` keeps a shard in memory while it takes at most this share of the worker's budget;
# the rest is the worker process itself (Python, torch, the model, optimizer state, batches).
FIT_SHARE = 0.5
# A streaming worker's shuffle buffer takes this share of its budget, up to BUFFER_MAX_BYTES:
# a worker's memory then stays flat however large its shard (and budget) grows.
BUFFER_SHARE = 0.125
BUFFER_MAX_BYTES = 64 * MB


def bounded_blocks(ds, max_bytes: int = MAX_BLOCK_BYTES):
    """`ds`, with its blocks re-cut into near-equal ones of at most about `max_bytes` if any
    is larger. Order-preserving and deterministic, so the shards cut from it are too."""
    sizes = ray_compat.block_sizes(ds)
    if max(sizes, default=0) <= max_bytes:
        return ds
    return ds.repartition(math.ceil(sum(sizes) / max_bytes)).materialize()


def cut(ds, world_size: int) -> list:
    """`world_size` contiguous, near-equal, disjoint parts that cover every row once."""
    if world_size == 1:
        return [ds]
    n = ds.count()
    if world_size > n:
        raise ValueError(f"cannot cut {n} rows into {world_size} non-empty shards")
    return ds.split_at_indices([n * i // world_size for i in range(1, world_size)])


@dataclass(frozen=True)
class ShardHandle:
    """What `ray.train.get_dataset_shard` hands a worker here: its part of a split, and that
    part's size, known before a row is read (the worker plans its epoch and chooses how to
    cache from them)."""

    iterator: Any  # ray.data.DataIterator over the part, in row order; or a HeldPart
    rows: int
    size_bytes: int

    def blocks(self) -> Iterator[dict[str, np.ndarray]]:
        """The part's blocks in row order, as read-only numpy views, a few fetched ahead. As
        each block arrives, this process unmaps the object store's pages it has read so far
        (app/data/store_pages.py; a page it reads again is mapped again at its next touch): a
        worker that reads its part every epoch maps about a block of the store at a time, not
        every page it has ever read (nor those that tasks it ran before wrote)."""
        if isinstance(self.iterator, HeldPart):
            source = self.iterator.blocks()
        else:
            source = self.iterator.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=PREFETCH_BLOCKS)
        pages = StorePages()
        for block in source:
            pages.release(block.values())
            yield block

    def batches(self, rows: int) -> Iterator[dict[str, np.ndarray]]:
        """The part in batches of `rows` rows (the last one shorter), in row order, each a copy
        of its own: a worker holds one batch and the blocks being read, never the part."""
        stream = RowStream(self.blocks())
        while batch := stream.take(rows):
            yield batch


class PresplitShards(ray.train.DataConfig):
    """Hands rank r a `ShardHandle` of the r-th pre-cut part of each dataset for the current
    world size."""

    def __init__(self, datasets: dict[str, Any], world_sizes: range):
        super().__init__()
        self._datasets = {name: bounded_blocks(ds) for name, ds in datasets.items()}
        self._parts = {size: self._cut(size) for size in world_sizes}

    def _cut(self, world_size: int) -> dict[str, list]:
        return {name: cut(ds, world_size) for name, ds in self._datasets.items()}

    def configure(self, datasets, world_size, worker_handles=None, worker_node_ids=None, **kwargs):
        if world_size not in self._parts:  # not planned for: cut now (needs a free CPU)
            self._parts[world_size] = self._cut(world_size)
        parts = self._parts[world_size]
        for ds in (p for by_name in parts.values() for p in by_name):
            # A worker reads its part as a small Ray Data job (once, or every epoch when
            # streaming); progress bars of that would reach the driver's terminal as noise
            # between the per-epoch lines.
            ds.context.enable_progress_bars = False
        return [{name: ShardHandle(p[rank].iterator(), p[rank].count(), p[rank].size_bytes())
                 for name, p in parts.items() if name in datasets} for rank in range(world_size)]


class HeldShards:
    """The shards of a small input, prepared in the driver (app/data/prepare.py), without
    Ray Data: each split's model-ready arrays go to the object store once, as one object, and
    rank r of W reads rows [n·r//W, n·(r+1)//W) of them, the rows `cut` would give it,
    whatever W. The workers get this object in their loop config instead of datasets: for a
    few thousand rows, Ray Data's jobs and actors cost seconds, the rows nothing."""

    def __init__(self, splits: dict[str, dict[str, np.ndarray]]):
        self._held = {name: (ray.put(arrays), len(arrays["y"]), row_bytes(arrays)) for name, arrays in splits.items()}

    def handle(self, name: str, rank: int, world_size: int) -> ShardHandle:
        ref, n, size = self._held[name]
        start, stop = n * rank // world_size, n * (rank + 1) // world_size
        return ShardHandle(HeldPart(ref, start, stop), stop - start, size * (stop - start))


@dataclass(frozen=True)
class HeldPart:
    """Rows [start, stop) of a split held in the object store as one object (`HeldShards`)."""

    ref: Any  # ray.ObjectRef of {column: array}
    start: int
    stop: int

    def blocks(self) -> Iterator[dict[str, np.ndarray]]:
        """The rows as read-only views of the object in shared memory (no copy), cut into
        blocks of at most about MAX_BLOCK_BYTES as Ray Data's are."""
        arrays = ray.get(self.ref)
        step = max(1, MAX_BLOCK_BYTES // max(1, row_bytes(arrays)))
        for at in range(self.start, self.stop, step):
            yield {c: a[at:min(at + step, self.stop)] for c, a in arrays.items()}


def row_bytes(arrays: dict[str, np.ndarray]) -> int:
    return sum(a.dtype.itemsize * math.prod(a.shape[1:]) for a in arrays.values())


# ---------------------------------------------------------------- on a worker: which way


def choose_cache(mode: str, *, shard_bytes: int, budget_bytes: float, budget_from: str) -> tuple[str, str]:
    """(`memory` or `stream`, why): `data.cache` as set, or for `auto`, `stream` when the
    shard would take more than `FIT_SHARE` of the worker's memory budget."""
    if mode != "auto":
        return mode, "data.cache"
    fits = shard_bytes <= FIT_SHARE * budget_bytes
    why = (f"auto: a worker's shard of train + valid, {shard_bytes / MB:,.1f} MiB, is "
           f"{'within' if fits else 'over'} half of its {budget_bytes / MB:,.0f} MiB budget ({budget_from})")
    return "memory" if fits else "stream", why


def memory_budget(scaling: ScalingConfig) -> tuple[float, str]:
    """(bytes, where that figure comes from) a worker on this node may use."""
    if scaling.memory_per_worker_mb is not None:
        return scaling.memory_per_worker_mb * MB, "scaling.memory_per_worker_mb"
    node_id = ray.get_runtime_context().get_node_id()
    resources = next(n["Resources"] for n in ray.nodes() if n["NodeID"] == node_id)
    per_cpu = resources.get("memory", 0.0) / max(1.0, resources.get("CPU", 1.0))
    return per_cpu * scaling.cpus_per_worker, "the node's memory per CPU x scaling.cpus_per_worker"


# ---------------------------------------------------------------- on a worker: memory


def read_all(handle: ShardHandle) -> dict[str, np.ndarray]:
    """The whole part in this process's memory, one array per column. Filled block by block,
    so that loading takes the part's size plus one block, not twice the part."""
    out: dict[str, np.ndarray] = {}
    at = 0
    for block in handle.blocks():
        n = len(block["y"])
        for c in COLUMNS:
            if c not in out:
                out[c] = np.empty((handle.rows, *block[c].shape[1:]), dtype=block[c].dtype)
            out[c][at:at + n] = block[c]
        at += n
    if at != handle.rows:
        raise RuntimeError(f"shard holds {at} rows, {handle.rows} expected")
    return out


# ---------------------------------------------------------------- on a worker: stream


def buffer_rows(handle: ShardHandle, budget_bytes: float) -> int:
    """Rows of a streaming worker's shuffle buffer: `BUFFER_SHARE` of its budget, at most
    `BUFFER_MAX_BYTES`."""
    row_bytes = max(1.0, handle.size_bytes / max(1, handle.rows))
    return int(min(BUFFER_SHARE * budget_bytes, BUFFER_MAX_BYTES) / row_bytes)


def batch_sizes(rows: int, steps: int) -> list[int]:
    """The sizes of `steps` near-equal batches of `rows` rows, larger ones first (as
    `torch.tensor_split` cuts them in memory mode)."""
    small, extra = divmod(rows, steps)
    return [small + 1] * extra + [small] * (steps - extra)


class RowStream:
    """The rows of a stream of blocks, taken in any counts wherever the blocks end."""

    def __init__(self, blocks: Iterable[dict[str, np.ndarray]]):
        self._blocks = iter(blocks)
        self._block: dict[str, np.ndarray] | None = None
        self._at = 0

    def take(self, n: int) -> dict[str, np.ndarray]:
        """The next `n` rows, copied out of the blocks; fewer (maybe none: an empty dict) only
        where the stream ends."""
        pieces = []
        while n > 0:
            if self._block is None or self._at == len(self._block["y"]):
                self._block, self._at = next(self._blocks, None), 0
                if self._block is None:
                    break
                continue
            k = min(n, len(self._block["y"]) - self._at)
            pieces.append({c: self._block[c][self._at:self._at + k] for c in COLUMNS})
            self._at += k
            n -= k
        if not pieces:
            return {}
        return {c: np.concatenate([p[c] for p in pieces]) for c in COLUMNS}


FILL_ROWS = 65_536  # rows copied into a shuffle buffer at a time while it fills


def fill(stream: RowStream, rows: int) -> tuple[dict[str, np.ndarray], int]:
    """(Arrays of `rows` rows of their own, writable, holding the stream's first rows; how many
    it had, up to `rows`). Filled FILL_ROWS at a time: the blocks read meanwhile are let go
    as it fills, so that filling takes the buffer and a few blocks, not the buffer twice."""
    chunk = stream.take(min(rows, FILL_ROWS))
    if not chunk:
        return {}, 0
    out = {c: np.empty((rows, *chunk[c].shape[1:]), dtype=chunk[c].dtype) for c in COLUMNS}  # untouched: not resident
    at = 0
    while chunk:
        n = len(chunk["y"])
        for c in COLUMNS:
            out[c][at:at + n] = chunk[c]
        at += n
        chunk = stream.take(min(rows - at, FILL_ROWS)) if at < rows else {}
    return out, at


def shuffled_batches(blocks: Iterable[dict[str, np.ndarray]], sizes: list[int], capacity: int,
                     seed: int) -> Iterator[dict[str, np.ndarray]]:
    """Batches of exactly `sizes` rows from a stream of blocks, in a seeded local-shuffle
    order, holding `capacity` rows (at least two batches) at a time.

    The buffer starts with the first `capacity` rows. Each batch draws its rows at random
    from the buffer, and the stream's next rows take their places; once the stream runs
    out, the buffer's last rows fill the places instead and it shrinks. The order depends
    only on the order of the rows in the stream and on `seed`, not on where the blocks end.
    Nothing the size of the buffer is allocated after it is filled (a permutation of the
    rest, say), so that memory stays flat from epoch to epoch."""
    rng = np.random.default_rng(seed)
    stream = RowStream(blocks)
    buffer, filled = fill(stream, max(capacity, 2 * max(sizes, default=0)))
    for size in sizes:
        picks = rng.choice(filled, size, replace=False)
        yield {c: buffer[c][picks] for c in COLUMNS}
        incoming = stream.take(size)
        got = len(incoming["y"]) if incoming else 0
        for c in incoming:
            buffer[c][picks[:got]] = incoming[c]
        empty = picks[got:]  # places left empty: the stream has run out
        if len(empty):
            filled -= len(empty)
            holes = empty[empty < filled]
            movers = np.setdiff1d(np.arange(filled, filled + len(empty)), empty)
            for c in COLUMNS:
                buffer[c][holes] = buffer[c][movers]
