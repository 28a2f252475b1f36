"""Letting go of the object store's pages that a worker has read.

A Ray worker reads an object from the object store without copying it: the store is memory
shared by every worker on a node, a file in /dev/shm (on disk when /dev/shm is too small, and
in fallback files on disk when the store is full) that each worker maps, and the arrays of a
block it reads are views into that mapping. Every page a process touches stays mapped into
it, and counted in its resident memory (RSS), until the process unmaps it; Ray's client keeps
the store's main region mapped for as long as the process lives. A worker that streams its
shard every epoch through a store that recycles its memory therefore ends up mapping most of
the store, however little it holds at once, and a worker that ran Ray Data tasks before it
became a training worker starts out mapping the pages those tasks wrote. The pages belong to
the store, which counts them once, against its own limit (`object_store_memory`), but the
worker's RSS grows with the data.

`StorePages.release` drops this process's mappings of the pages of the shared file mappings
that hold given arrays (`madvise(MADV_DONTNEED)`), as a worker moves from one block to the
next. On a shared mapping this never changes what the memory holds: the store keeps the data,
and a page touched again is mapped again by the next access, from the same memory. It is
therefore safe whatever still points into the store (a block half read, the blocks
prefetched); the cost is a page fault at the next touch. On a private mapping, the process's
own memory, `madvise` would discard the contents: only mappings marked shared in
/proc/self/maps, read afresh on every call, and holding one of the arrays passed (alive, so
mapped), are released. Among shared mappings, only files are (not a device's, whose pages
are their driver's business; the kernel refuses most of those anyway). Off Linux this does
nothing.
"""

from __future__ import annotations

import ctypes
import mmap
import sys
from collections.abc import Iterable
from typing import Any

import numpy as np

MADV_DONTNEED = getattr(mmap, "MADV_DONTNEED", 4)


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


def shared_file_mappings() -> list[tuple[int, int]]:
    """[start, end) of each mapping of this process that is shared and maps a file (in memory,
    /dev/shm, or on disk), from /proc/self/maps now; none where /proc is missing."""
    try:
        with open("/proc/self/maps") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    ranges = []
    for line in lines:
        fields = line.split(maxsplit=5)  # span perms offset device inode [path, spaces and all]
        if len(fields) < 6 or fields[1][3:4] != "s":  # rw-s: shared; rw-p: private
            continue
        path = fields[5]
        if path.startswith("/") and (path.startswith("/dev/shm/") or not path.startswith("/dev/")):
            try:
                start, end = (int(x, 16) for x in fields[0].split("-"))
            except ValueError:
                continue
            ranges.append((start, end))
    return ranges


class StorePages:
    """Unmaps, from this process, the shared file mappings that hold given arrays (see the
    module)."""

    def __init__(self):
        self._madvise = _madvise()

    def release(self, arrays: Iterable[np.ndarray]) -> int:
        """Drops this process's page mappings of each shared file mapping that holds one of
        `arrays` (the store's, for a block read from it); arrays in private memory are left
        alone. Returns the bytes of address space released (0 when none, or off Linux)."""
        if self._madvise is None:
            return 0
        addresses = [a.__array_interface__["data"][0] for a in arrays if a.size]
        if not addresses:
            return 0
        # Read now, while the arrays are alive: a mapping seen earlier may since have been
        # unmapped, and its addresses given to private memory.
        holding = {(lo, hi) for lo, hi in shared_file_mappings() if any(lo <= at < hi for at in addresses)}
        released = 0
        for lo, hi in holding:
            if self._madvise(lo, hi - lo, MADV_DONTNEED) == 0:
                released += hi - lo
        return released
