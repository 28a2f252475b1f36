"""A process lets go of the object store's pages it has read, on a real local Ray: the pages
leave its resident memory, what it reads is unchanged, and its own memory is never touched. A
worker streaming a part much larger than a block maps about a block of the store at a time
(app/data/store_pages.py)."""

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


def resident_mb(array: np.ndarray) -> float:
    """Resident memory of this process in the mapping that holds `array` (/proc/self/smaps):
    for a block read from the store, the store's pages this process maps, wherever the store
    lives (/dev/shm or disk)."""
    at = array.__array_interface__["data"][0]
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split(maxsplit=1)[0]
            if "-" in head and not head.endswith(":"):  # a mapping's first line: start-end perms ...
                lo, hi = (int(x, 16) for x in head.split("-"))
                inside = lo <= at < hi
            elif inside and head == "Rss:":
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no mapping holds address {at:#x}")


def test_released_store_pages_leave_the_process_and_keep_their_contents(ray_session):
    ref = ray.put(np.arange(16 * MB, dtype=np.float32))  # 64 MiB, in the store
    view = ray.get(ref)  # read-only, no copy: a view into the store's shared memory
    assert not view.flags.writeable
    total = float(view.sum(dtype=np.float64))  # touches every page
    touched = resident_mb(view)
    assert touched > 60, touched

    assert StorePages().release([view]) >= 64 * MB
    assert touched - resident_mb(view) > 60, (touched, resident_mb(view))
    # The data stays in the store: read again, every page comes back as it was.
    assert float(view.sum(dtype=np.float64)) == total
    assert view[12345] == 12345 and view[-1] == 16 * MB - 1


def test_private_memory_is_never_released(tmp_path):
    own = np.arange(8 * MB, dtype=np.int64)  # 64 MiB of this process's own memory
    assert StorePages().release([own]) == 0
    # madvise(MADV_DONTNEED) on private memory would have zeroed it ...
    assert own[-1] == 8 * MB - 1 and int(own[1:].min()) == 1
    # ... and, on a file mapped private (copy on write), thrown away what was written.
    path = tmp_path / "copy-on-write.bin"
    np.zeros(MB, dtype=np.int64).tofile(path)
    copied = np.memmap(path, dtype=np.int64, mode="c")
    copied[:] = 5
    assert StorePages().release([copied]) == 0
    assert int(copied.min()) == 5


def test_files_mapped_shared_are_released_and_read_back(tmp_path):
    path = tmp_path / "mapped.bin"
    np.arange(MB, dtype=np.int64).tofile(path)
    on_disk = np.memmap(path, dtype=np.int64, mode="r")  # a file mapped shared, as the store is
    assert int(on_disk.sum()) == MB * (MB - 1) // 2
    assert StorePages().release([on_disk]) >= 8 * MB
    assert resident_mb(on_disk) < 1
    assert int(on_disk.sum()) == MB * (MB - 1) // 2  # read again from the file
    # Memory shared without a file (/dev/zero) is no store's: left alone.
    anonymous = mmap.mmap(-1, 8 * MB)
    view = np.frombuffer(anonymous, dtype=np.uint8)
    view[::4096] = 7
    assert StorePages().release([view]) == 0
    del view
    anonymous.close()


@ray.remote(num_cpus=1)
def read_part(handle: ShardHandle, let_go: bool) -> tuple[float, int, float]:
    """(The most memory this worker maps in the store while it reads its part, block by block;
    the rows read; the sum of their labels). `let_go=False` reads the same blocks without
    releasing their pages."""
    blocks = handle.blocks() if let_go else handle.iterator.iter_batches(batch_size=None, batch_format="numpy")
    peak, rows, total = 0.0, 0, 0.0
    for block in blocks:
        rows += len(block["y"])
        total += float(block["y"].sum(dtype=np.float64))
        for column in block.values():
            column.sum()  # touch every page
        peak = max(peak, resident_mb(block["y"]))
    return peak, rows, total


def test_a_worker_streaming_its_part_maps_about_a_block_of_the_store(ray_session):
    rows = 6_000_000  # 183 MiB in 24 blocks of about 7.6 MiB
    ds = ray.data.range(rows, override_num_blocks=24).map_batches(
        lambda b: {"x_num": np.ones((len(b["id"]), 6), np.float32), "x_cat": np.zeros((len(b["id"]), 1), np.int32),
                   "y": b["id"].astype(np.float32)}).materialize()
    size_mb = rows * (6 * 4 + 4 + 4) / MB  # what the arrays hold
    handle = ShardHandle(ds.iterator(), rows, ds.size_bytes())
    released, read, total = ray.get(read_part.remote(handle, True))
    kept, read_again, total_again = ray.get(read_part.remote(handle, False))
    print(f"\nthe store's pages mapped by a worker reading a {size_mb:.0f} MiB part: {kept:.1f} MiB, "
          f"{released:.1f} MiB letting go")
    assert read == read_again == rows
    assert total == total_again == float(np.arange(rows, dtype=np.float32).sum(dtype=np.float64))
    # Without letting go, a reader maps every page it has read: about the part.
    assert kept > 0.8 * size_mb, (kept, size_mb)
    # Letting go, about the block being read (and the few pages that the ones prefetched and
    # the store's bookkeeping take).
    assert released < (PREFETCH_BLOCKS + 1) * MAX_BLOCK_BYTES / MB, (released, size_mb)
