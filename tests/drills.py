"""What fault drills share: waiting for a condition, where a run stands in storage, the pid
of a process stopped at a `then=hang` fault (app/training/faults.py), a run in a thread."""

from __future__ import annotations

import threading
import time

import app
from app import runs, storage
from app.errors import UserError
from app.training import faults


def wait_for(predicate, timeout: float = 120.0, every: float = 0.02) -> bool:
    """Until `predicate()` holds (True) or `timeout` seconds pass (False)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return False


def registered_epoch(run: str) -> int | None:
    """The epoch of the newest checkpoint Ray Train has registered for the run folder at
    `run` (a path or URI): the one a restarted worker group resumes from."""
    try:
        snapshot = storage.read_json(storage.join(run, runs.RAY_CHECKPOINTS)) or {}
    except UserError:  # Ray Train rewrites the file in place: caught mid-write
        return None
    return ((snapshot.get("latest_checkpoint_result") or {}).get("metrics") or {}).get("epoch")


def hung_pid(run: str, fault: str) -> int | None:
    """The pid of the process that hangs at the `then=hang` fault `fault`, once it is there."""
    try:
        found = storage.read_json(storage.join(run, faults.parse(fault).marker_name))
    except UserError:  # caught while the marker is being written
        return None
    return found and found["pid"]


def train_in_background(cfg):
    """`app.train(cfg)` on a thread: (the thread, a dict that gets "metrics" or "error")."""
    outcome = {}

    def target():
        try:
            outcome["metrics"] = app.train(cfg).metrics
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            outcome["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome
