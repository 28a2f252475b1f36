"""Ctrl-C (SIGINT) and SIGTERM sent to `python -m app train` mid-run: exit 130 and 143 with one
line saying what stopped and how to go on, the run folder's lease given back, and the same
command then resumes from the last checkpoint. The driver is signalled once the
run has registered a checkpoint and rank 0 hangs at a `then=hang` fault (app/training/faults.py),
not after a guessed delay."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
import yaml

from app import runs
from tests.conftest import REPO, penguins_tree
from tests.drills import hung_pid, registered_epoch

pytestmark = pytest.mark.slow
RESUME = "interrupted: train of run 'interrupt' stopped; run the same command again to resume from its last checkpoint"


def interrupted_at(args, env, run, epoch: int, signum: int) -> subprocess.CompletedProcess:
    """The command, stopped by `signum` while rank 0 hangs in epoch `epoch` + 1."""
    fault = f"rank=0,epoch={epoch + 1},step=0,then=hang"
    proc = subprocess.Popen([sys.executable, "-m", "app", *args], cwd=REPO, env=dict(env, APP_FAULT=fault),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not (hung_pid(str(run), fault) and registered_epoch(str(run)) == epoch):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def assert_interrupted(result, code: int) -> None:
    assert result.returncode == code, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert [line for line in lines if line.startswith("interrupted")] == [RESUME]
    assert lines[-1] == RESUME and "Traceback" not in result.stderr
    assert "SIGTERM received" not in result.stderr  # not Ray's crash report: its handler is not left in place


def test_sigint_and_sigterm_stop_train_and_the_same_command_resumes(tmp_path, cli_env):
    tree = penguins_tree(tmp_path, name="interrupt", scaling__num_workers=1, train__epochs=4,
                         train__early_stopping_patience=10)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(tree))
    args = ["train", "--config", str(tmp_path / "config.yaml")]
    run = tmp_path / "runs" / "interrupt"

    assert_interrupted(interrupted_at(args, cli_env, run, 1, signal.SIGINT), 130)
    assert not (run / runs.LEASE).exists() and not (run / runs.METRICS).exists()

    # resumed from epoch 1 (its history so far intact), stopped in epoch 3; how a resumed run
    # then finishes bit-identical to an uninterrupted one: tests/integration/test_fault_tolerance.py
    second = interrupted_at(args, cli_env, run, 2, signal.SIGTERM)
    assert_interrupted(second, 143)
    assert "(epoch 1 done)" in second.stdout + second.stderr
    assert not (run / runs.LEASE).exists() and not (run / runs.METRICS).exists()
