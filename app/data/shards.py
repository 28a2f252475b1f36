"""Deterministic per-worker shards of materialized datasets, cut on the driver.

Ray Train's default `DataConfig` streams each dataset to the workers through
`streaming_split`, which assigns blocks in whatever order they finish: fine for
throughput, but a restarted worker group would see different shards and could not
replay an epoch exactly. Here the driver cuts each preprocessed split into contiguous
row ranges that differ in size by at most one row, once per possible worker count,
before training starts. Cutting runs Ray tasks, so doing it up front also means the
workers never wait for CPUs that the training workers themselves are holding.
"""

from __future__ import annotations

from typing import Any

import ray.train


def cut(ds, world_size: int) -> list:
    """`world_size` contiguous, near-equal, disjoint parts that cover every row once."""
    if world_size == 1:
        return [ds]
    n = ds.count()
    if world_size > n:
        raise ValueError(f"cannot cut {n} rows into {world_size} non-empty shards")
    return ds.split_at_indices([n * i // world_size for i in range(1, world_size)])


class PresplitShards(ray.train.DataConfig):
    """Hands rank r the r-th pre-cut part of each dataset for the current world size."""

    def __init__(self, datasets: dict[str, Any], world_sizes: range):
        super().__init__()
        self._parts = {size: {name: cut(ds, size) for name, ds in datasets.items()} for size in world_sizes}

    def configure(self, datasets, world_size, worker_handles=None, worker_node_ids=None, **kwargs):
        if world_size not in self._parts:  # not planned for: cut now (needs a free CPU)
            self._parts[world_size] = {name: cut(ds, world_size) for name, ds in datasets.items()}
        parts = self._parts[world_size]
        for ds in (p for by_name in parts.values() for p in by_name):
            # A worker pulls its part once, as a small Ray Data job; progress bars of that
            # would reach the driver's terminal as noise between the per-epoch lines.
            ds.context.enable_progress_bars = False
        return [{name: parts[name][rank].iterator() for name in datasets} for rank in range(world_size)]
