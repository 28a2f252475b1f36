"""Letting go of the object store's pages that a worker has read.

A Ray worker reads an object from the object store without copying it: the store is one
region of shared memory (a file in /dev/shm) that every worker maps, and the arrays of a
block it reads are views into that region. Every page a process touches stays mapped into
it, and counted in its resident memory (RSS), until the process unmaps it, which Ray's
client never does. A worker that streams its shard every epoch through a store that
recycles its memory therefore ends up mapping most of the store, however little it holds at
once; a worker that ran Ray Data tasks before it became a training worker starts out
mapping the pages those tasks wrote. The pages belong to the store, which counts them once,
against its own limit (`object_store_memory`), but the worker's RSS grows with the data.

`StorePages.release` drops this process's mappings of the store's pages
(`madvise(MADV_DONTNEED)`) once a block has been read. On a shared mapping this never
changes what the memory holds: the store keeps the data, and a page touched again is mapped
again by the next access, from the same memory. It is therefore safe whatever still points
into the store (a block half read, the blocks prefetched); the cost is a page fault at the
next touch. Private mappings, the process's own memory, are never passed to `madvise`,
where it would discard their contents. Off Linux this does nothing.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Iterable
from typing import Any

import numpy as np

MADV_DONTNEED = 4  # Linux, every architecture


def _madvise() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def shared_mappings() -> list[tuple[int, int]]:
    """[start, end) of each shared mapping of a file in memory or on disk (the object store's
    kind) in this process (/proc/self/maps), in address order; none where /proc is missing.
    Devices' mappings (a GPU driver's, say) are left out: unmapping their pages is for their
    driver to decide."""
    try:
        with open("/proc/self/maps") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    ranges = []
    for line in lines:
        span, perms, _offset, _device, _inode, *path = line.split(maxsplit=5)
        name = path[0] if path else ""
        shared = perms[3:4] == "s"  # rw-s: shared; rw-p: private
        if shared and name.startswith("/") and (name.startswith("/dev/shm/") or not name.startswith("/dev/")):
            start, end = span.split("-")
            ranges.append((int(start, 16), int(end, 16)))
    return ranges


class StorePages:
    """Unmaps, from this process, the shared mappings that hold given arrays (see the module)."""

    def __init__(self):
        self._madvise = _madvise()
        self._ranges: list[tuple[int, int]] = []  # shared mappings as last read; re-read on a miss

    def _mapping(self, address: int) -> tuple[int, int] | None:
        for fresh in (False, True):
            if fresh:
                self._ranges = shared_mappings()
            hit = next(((lo, hi) for lo, hi in self._ranges if lo <= address < hi), None)
            if hit is not None:
                return hit
        return None

    def release(self, arrays: Iterable[np.ndarray]) -> int:
        """Drops this process's page mappings of every shared mapping that holds one of
        `arrays` (the store's region, for a block read from it); arrays in private memory are
        left alone. Returns the bytes of address space released (0 when none, or off Linux)."""
        if self._madvise is None:
            return 0
        mappings = set()
        for a in arrays:
            if a.size:
                mapping = self._mapping(a.__array_interface__["data"][0])
                if mapping is not None:
                    mappings.add(mapping)
        released = 0
        for lo, hi in mappings:
            if self._madvise(lo, hi - lo, MADV_DONTNEED) == 0:
                released += hi - lo
        return released
