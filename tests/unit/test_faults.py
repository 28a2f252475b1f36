"""$APP_FAULT without Ray: a process that kills itself or hangs at the chosen point, once per
run folder (the runs with faults: tests/integration/test_fault_tolerance.py, tests/e2e)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from app.errors import UserError
from app.training import faults
from tests.conftest import REPO


def test_then_says_what_happens_at_the_point_and_defaults_to_kill():
    assert faults.parse("rank=1,epoch=3,step=5,then=hang") == faults.Fault(rank=1, epoch=3, step=5, then="hang")
    assert faults.parse("rank=1,epoch=3,step=5").then == "kill"
    with pytest.raises(UserError, match=r"APP_FAULT='epoch=2,then=explode'.*then \(kill\|hang\)"):
        faults.parse("epoch=2,then=explode")


def at_the_point(run, spec: str) -> subprocess.Popen:
    """A process that reaches the fault's point (rank 1, epoch 3, step 5) in run folder `run`."""
    code = ("import sys, pyarrow.fs as fs\n"
            "from app.training import faults\n"
            "faults.maybe_die(faults.parse(sys.argv[1]), fs.LocalFileSystem(), sys.argv[2], rank=1, epoch=3, step=5)\n"
            "print('went on')\n")
    return subprocess.Popen([sys.executable, "-c", code, spec, str(run)], cwd=REPO, stdout=subprocess.PIPE, text=True)


def test_a_kill_fires_once_per_run_folder(tmp_path):
    spec = "rank=1,epoch=3,step=5"
    first = at_the_point(tmp_path, spec)
    assert "dies at epoch 3 (step 5)" in first.communicate(timeout=60)[0] and first.returncode == -signal.SIGKILL
    again = at_the_point(tmp_path, spec)  # the restarted worker passes the point
    assert again.communicate(timeout=60)[0].strip() == "went on" and again.returncode == 0
    elsewhere = at_the_point(tmp_path, "rank=0,epoch=3,step=5")  # another rank's fault: not this process
    assert elsewhere.communicate(timeout=60)[0].strip() == "went on"


def test_a_hang_names_its_pid_and_waits_to_be_killed(tmp_path):
    spec = "rank=1,epoch=3,step=5,then=hang"
    marker = tmp_path / faults.parse(spec).marker_name
    hung = at_the_point(tmp_path, spec)
    try:
        deadline = time.monotonic() + 60
        while not (marker.exists() and marker.read_text().endswith("}")):  # written whole
            assert hung.poll() is None and time.monotonic() < deadline, hung.communicate()
            time.sleep(0.05)
        assert json.loads(marker.read_text())["pid"] == hung.pid
        assert hung.poll() is None  # still there, at the point
    finally:
        hung.kill()
    assert "hangs at epoch 3 (step 5) until killed" in hung.communicate(timeout=60)[0]
    again = at_the_point(tmp_path, spec)
    assert again.communicate(timeout=60)[0].strip() == "went on"
