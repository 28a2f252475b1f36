"""A process lets go of the object store's pages it has read, on a real local Ray: its resident
shared memory falls, what it reads is unchanged, and its own memory is never touched. A
worker streaming a part much larger than a few blocks maps a few blocks of the store at a
time (app/data/store_pages.py)."""

from __future__ import annotations

import mmap
import sys

import numpy as np
import pytest
import ray

from app.data.shards import MAX_BLOCK_BYTES, PREFETCH_BLOCKS, ShardHandle
from app.data.store_pages import StorePages

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and uses madvise (Linux)")

MB = 2**20


def shared_mb() -> float:
    """Resident shared memory of this process (RssShmem: the object store's pages it maps)."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("RssShmem:"))
    return int(line.split()[1]) / 1024


def test_released_store_pages_leave_the_process_and_keep_their_contents(ray_session):
    ref = ray.put(np.arange(16 * MB, dtype=np.float32))  # 64 MiB, in the store
    view = ray.get(ref)  # read-only, no copy: a view into the store's shared memory
    assert not view.flags.writeable
    total = float(view.sum(dtype=np.float64))  # touches every page
    touched = shared_mb()
    assert touched > 60, touched

    assert StorePages().release([view]) >= 64 * MB
    assert touched - shared_mb() > 60, (touched, shared_mb())
    # The data stays in the store: read again, every page comes back as it was.
    assert float(view.sum(dtype=np.float64)) == total
    assert view[12345] == 12345 and view[-1] == 16 * MB - 1


def test_private_memory_is_never_released():
    own = np.arange(8 * MB, dtype=np.int64)  # 64 MiB of this process's own memory
    assert StorePages().release([own]) == 0
    # madvise(MADV_DONTNEED) on private memory would have zeroed it.
    assert own[-1] == 8 * MB - 1 and int(own[1:].min()) == 1


def test_only_files_mapped_shared_are_released(tmp_path):
    path = tmp_path / "mapped.bin"
    np.arange(MB, dtype=np.int64).tofile(path)
    on_disk = np.memmap(path, dtype=np.int64, mode="r")  # a file mapped shared, as the store is
    assert int(on_disk.sum()) == MB * (MB - 1) // 2
    assert StorePages().release([on_disk]) >= 8 * MB
    assert int(on_disk.sum()) == MB * (MB - 1) // 2  # read again from the file
    # Shared anonymous memory (/dev/zero) is a device's mapping: left alone.
    anonymous = mmap.mmap(-1, 8 * MB)
    view = np.frombuffer(anonymous, dtype=np.uint8)
    view[::4096] = 7
    assert StorePages().release([view]) == 0
    del view
    anonymous.close()


@ray.remote(num_cpus=1)
def peak_shared_while_reading(handle: ShardHandle, let_go: bool) -> tuple[float, int]:
    """(The most shared memory this worker maps while it reads its part, block by block; the
    rows read). `let_go=False` reads the same blocks without releasing their pages."""
    blocks = handle.blocks() if let_go else handle.iterator.iter_batches(batch_size=None, batch_format="numpy")
    peak, rows = 0.0, 0
    for block in blocks:
        rows += len(block["y"])
        for column in block.values():
            column.sum()  # touch every page
        peak = max(peak, shared_mb())
    return peak, rows


def test_a_worker_streaming_its_part_maps_a_few_blocks_of_the_store(ray_session):
    rows = 6_000_000  # 192 MiB: 24 blocks of 8 MiB
    ds = ray.data.range(rows, override_num_blocks=24).map_batches(
        lambda b: {"x_num": np.ones((len(b["id"]), 6), np.float32), "x_cat": np.zeros((len(b["id"]), 1), np.int32),
                   "y": b["id"].astype(np.float32)}).materialize()
    size_mb = rows * (6 * 4 + 4 + 4) / MB  # what the arrays hold
    handle = ShardHandle(ds.iterator(), rows, ds.size_bytes())
    released, read = ray.get(peak_shared_while_reading.remote(handle, True))
    kept, read_again = ray.get(peak_shared_while_reading.remote(handle, False))
    print(f"\npeak shared memory of a worker reading a {size_mb:.0f} MiB part: {kept:.1f} MiB, "
          f"{released:.1f} MiB letting go")
    assert read == read_again == rows
    # Without letting go, a reader maps every page it has read: about the part.
    assert kept > 0.8 * size_mb, (kept, size_mb)
    # Letting go, about the block being read (and the few pages that the ones prefetched and
    # the store's bookkeeping take).
    assert released < (PREFETCH_BLOCKS + 1) * MAX_BLOCK_BYTES / MB, (released, size_mb)
