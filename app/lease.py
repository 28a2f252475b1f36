"""One live driver per run folder: a lease file that names its owner and is kept fresh.

    with lease.held(run_folder, what="run"):
        ...train...

The lease (`runs.LEASE` in the folder) records the owner's host, process id and the
process's start time, and a heartbeat that a background thread rewrites every
`HEARTBEAT_S` seconds. A second driver that finds a live lease is refused (exit 2, naming
the owner). A lease is stale, and taken over with a warning, when its owner's process is
gone (same host) or its heartbeat is older than `STALE_S` (any host: the owner's machine
may be gone too). It works the same on a local disk and on an object store: the new owner
writes its lease, waits `SETTLE_S`, and reads it back; of two drivers that raced, only the
one whose lease is still there goes on.
"""

from __future__ import annotations

import _thread
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from app import runs, storage
from app.errors import UserError

log = logging.getLogger(__name__)

HEARTBEAT_S = 10.0
STALE_S = 60.0
SETTLE_S = 1.0


def _process_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (tells a reused pid from the owner); None if gone,
    or dead and not yet reaped by its parent (a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state, *fields = f.read().rpartition(")")[2].split()
        return None if state in ("Z", "X") else fields[18]
    except (OSError, IndexError):
        return None


def _me(token: str) -> dict[str, Any]:
    pid = os.getpid()
    return {"token": token, "host": socket.gethostname(), "pid": pid, "process_start": _process_start(pid),
            "since": time.time(), "heartbeat": time.time()}


def describe(owner: dict[str, Any]) -> str:
    return f"pid {owner.get('pid')} on {owner.get('host')}"


def stale_reason(owner: dict[str, Any], now: float | None = None) -> str | None:
    """Why `owner` no longer holds its lease, or None when it may still be running."""
    age = (now or time.time()) - float(owner.get("heartbeat", 0))
    if owner.get("host") == socket.gethostname() and os.path.isdir("/proc"):
        start = _process_start(int(owner.get("pid", -1)))
        if start is None or start != owner.get("process_start"):
            return f"{describe(owner)} is no longer running"
    if age > STALE_S:
        return f"{describe(owner)} has not renewed it for {age:.0f}s"
    return None


class Lease:
    def __init__(self, folder: str):
        self.folder = folder
        self.location = storage.join(folder, runs.LEASE)
        self.token = uuid.uuid4().hex
        self.owner = _me(self.token)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self, *, what: str) -> None:
        current = self._read()
        if current is None and storage.exists(self.location):  # cut short, or empty: no owner to ask
            log.warning(f"taking over the lease of {self.folder}: its lease file is unreadable")
            current = {}
        elif current is not None:
            reason = stale_reason(current)
            if reason is None:
                raise UserError(f"{what} folder {self.folder} is in use by another driver ({describe(current)}, "
                                f"running since {time.ctime(float(current.get('since', 0)))}); wait for it to "
                                f"finish or stop it (a driver that stops renewing its lease is taken over after "
                                f"{STALE_S:.0f}s)")
            log.warning(f"taking over the lease of {self.folder}: {reason}")
        if current is None and self._create_local():
            pass  # created only where there was none, atomically: no other driver holds it
        else:
            storage.write_json(self.location, self.owner)
            time.sleep(SETTLE_S)  # a driver racing for the same folder writes within this window
        after = self._read()
        if after is None or after.get("token") != self.token:
            raise UserError(f"{what} folder {self.folder} was just taken by another driver "
                            f"({describe(after or {})}); run one driver per run name")
        self._thread = threading.Thread(target=self._renew, name="lease-heartbeat", daemon=True)
        self._thread.start()

    def _create_local(self) -> bool:
        """On a local disk, create the lease file, whole, only if there is none (a hard link
        of a written temporary file). False on an object store, which has no such operation."""
        fs, path = storage.filesystem(self.location)
        if not storage.is_local(fs):
            return False
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{self.token}"
        with open(tmp, "w") as f:
            json.dump(self.owner, f)
        try:
            os.link(tmp, path)  # appears whole, and only where there was none
        except FileExistsError:  # another driver was faster
            raise UserError(f"{self.folder} was just taken by another driver ({describe(self._read() or {})}); "
                            f"run one driver per run name") from None
        finally:
            os.unlink(tmp)
        return True

    def _read(self) -> dict[str, Any] | None:
        try:
            found = storage.read_json(self.location)
        except UserError:  # cut short by a crash mid-write on a store without renames
            return None
        return found if isinstance(found, dict) else None

    def _renew(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                current = self._read()
                if current is not None and current.get("token") != self.token:
                    log.error(f"{describe(current)} took over the lease of {self.folder} (this driver did not "
                              f"renew it for {STALE_S:.0f}s); stopping this driver")
                    _thread.interrupt_main()  # two drivers must not write one run folder
                    return
                storage.write_json(self.location, dict(self.owner, heartbeat=time.time()))
            except Exception as e:  # noqa: BLE001 - a missed heartbeat must not kill the run
                log.warning(f"could not renew the lease of {self.folder}: {e}")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        current = self._read()
        if current is not None and current.get("token") == self.token:
            storage.remove(self.location)


@contextmanager
def held(folder: str, *, what: str) -> Iterator[Lease]:
    """Hold the lease of `folder` for the duration of the block."""
    lease = Lease(folder)
    lease.acquire(what=what)
    try:
        yield lease
    finally:
        lease.release()


@contextmanager
def run_folder(folder: str, *, fresh: bool, what: str) -> Iterator[Lease]:
    """Hold a run (or sweep) folder for this driver: refuse a folder the app did not write,
    take the lease, then, with `fresh`, delete what the folder holds (its marker and the
    lease stay), and mark it as the app's."""
    if fresh or not _earlier_run(folder):
        storage.check_replaceable(folder, f"the {what} folder (run.storage/name)")
    try:
        with held(folder, what=what) as lease:
            if fresh:
                storage.clear(folder, keep={runs.LEASE, storage.OWNED})
            storage.mark_owned(folder, what)
            yield lease
    finally:
        if [e.name for e in storage.listdir(folder)] == [storage.OWNED]:
            storage.remove(folder)  # a run refused before it wrote anything leaves nothing behind


def _earlier_run(folder: str) -> bool:
    """A run or sweep folder of a version of the app that left no marker: resumed (and then
    marked), never deleted by --fresh."""
    if storage.exists(storage.join(folder, storage.OWNED)):
        return False
    if storage.exists(storage.join(folder, runs.RAY_CHECKPOINTS)):
        return True
    import yaml

    try:
        saved = yaml.safe_load(storage.read_text(storage.join(folder, runs.CONFIG)) or "")
    except yaml.YAMLError:
        return False
    return isinstance(saved, dict) and {"name", "data", "model"} <= set(saved)
