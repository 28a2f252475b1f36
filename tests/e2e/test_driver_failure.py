"""Kill the driver of `python -m app train` with SIGKILL; the same command resumes from the
checkpoints it left on object storage (a real S3 server, moto, on loopback) and ends with
the metrics of an uninterrupted run of the same config (tests/e2e/test_cli.py's quickstart)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.fs as pafs
import pytest

from app import runs
from tests.conftest import REPO
from tests.drills import hung_pid, registered_epoch

pytestmark = pytest.mark.slow
HANG = "rank=0,epoch=2,step=1,then=hang"  # where the driver is killed: in epoch 2, with epoch 1 registered


def train(args, env, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "app", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def wait_until_session_gone(sid: int, timeout: float = 60) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        ps = subprocess.run(["ps", "-eo", "sid=,stat="], capture_output=True, text=True, check=False).stdout.split("\n")
        if not any(line.split()[:1] == [str(sid)] and not line.split()[1].startswith("Z") for line in ps if line.strip()):
            return True
        time.sleep(0.2)
    return False


def test_driver_killed_mid_run_resumes_on_rerun(quickstart, cli_env, s3):
    reference_args, reference, reference_run = quickstart  # uninterrupted, on local disk (tests/e2e/conftest.py)
    assert reference.returncode == 0, reference.stderr[-3000:]
    storage = f"{s3}/driver-kill/runs"
    # the reference's command, with the run folder on S3 (later --set win) and tracking off
    args = [*reference_args, "--set", f"run.storage={storage}", "--set", "tracking.mlflow=false",
            "--set", "tracking.tensorboard=false"]
    location = f"{storage}/quickstart"
    fs, run = pafs.FileSystem.from_uri(location)

    def read_json(name):
        with fs.open_input_stream(f"{run}/{name}") as f:
            return json.loads(f.read())

    def exists(name):
        return fs.get_file_info(f"{run}/{name}").type != pafs.FileType.NotFound

    # Rank 0 stops at a step of epoch 2 and says so in a marker; the driver is killed there,
    # once Ray Train has registered epoch 1's checkpoint.
    first = train(args, dict(cli_env, APP_FAULT=HANG), start_new_session=True)  # its own process group
    deadline = time.time() + 300
    while not (hung_pid(location, HANG) and registered_epoch(location) == 1):
        assert first.poll() is None and time.time() < deadline, first.communicate()[1][-3000:]
        time.sleep(0.05)
    assert not exists("checkpoint_epoch_0002")
    os.killpg(first.pid, signal.SIGKILL)
    killed_at = time.time()
    first.communicate()
    assert first.returncode == -signal.SIGKILL
    # Ray's worker processes have their own process groups; they notice the dead raylet
    # within seconds. Only then is the run folder final.
    assert wait_until_session_gone(first.pid)
    assert not exists("metrics.json")
    resumed_from = read_json(runs.RAY_CHECKPOINTS)["latest_checkpoint_result"]["checkpoint_dir_name"]
    assert resumed_from == "checkpoint_epoch_0001"
    kept = read_json(f"{resumed_from}/train_state.json")["progress"]["history"]
    assert [r["epoch"] for r in kept] == [1]

    second = train(args, cli_env)  # the same command, without the fault
    out, err = second.communicate(timeout=600)
    assert second.returncode == 0, err[-3000:]
    assert f"resuming from {location}/{resumed_from}" in out
    assert "taking over the lease" in err and "is no longer running" in err  # the killed driver's
    assert "\r" not in out + err  # piped, as in CI: no progress bars (in a terminal: tests/e2e/test_cli.py)
    metrics = read_json("metrics.json")
    assert [r["epoch"] for r in metrics["history"]] == [1, 2, 3]
    assert metrics["history"][:1] == kept  # the record from before the kill, unchanged
    assert metrics["best_checkpoint"].startswith(f"{location}/")
    assert not exists(runs.LEASE)  # released at the end
    with fs.open_input_stream(f"{run}/{runs.TRAIN_LOG}") as f:  # both drivers' lines, the second's appended
        logged = f.read().decode()
    assert logged.count("\ndata: ") + logged.startswith("data: ") == 2 and logged.endswith(f"run folder: {location}\n")
    first_new = metrics["history"][1]
    print(f"\ndriver kill: resumed from epoch 1; kill -> epoch {first_new['epoch']} reported in "
          f"{first_new['time'] - killed_at:.1f}s (includes starting the command again)")

    expected = json.loads((reference_run / runs.METRICS).read_text())
    assert metrics["valid"] == expected["valid"] and metrics["test"] == expected["test"]
    assert metrics["param_fingerprints"] == expected["param_fingerprints"]

    again = train(args, cli_env, start_new_session=True)
    out, _ = again.communicate(timeout=120)
    assert again.returncode == 0 and "already finished" in out
