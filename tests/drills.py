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


# A finder that refuses ray, torch and this package: importing them fails as if they were not
# installed (sys.modules entries set to None would trip libraries that look them up).
_WITHOUT_RAY_TORCH_APP = (
    "import sys\nclass Blocked:\n    def find_spec(self, name, path=None, target=None):\n"
    "        if name.split('.')[0] in ('ray', 'torch', 'app'): raise ImportError(name)\n"
    "sys.meta_path.insert(0, Blocked()); import runpy; sys.argv = sys.argv[1:]; "
    "runpy.run_path(sys.argv[0], run_name='__main__')")


def run_export(folder, source, target, cwd):
    """`python FOLDER/predict.py SOURCE TARGET` of an export, with ray, torch and `app`
    unimportable: the CompletedProcess."""
    import os
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", _WITHOUT_RAY_TORCH_APP, str(folder / "predict.py"), str(source),
                           str(target)], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
