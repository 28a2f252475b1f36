"""Kill the driver of `python -m app train` with SIGKILL; the same command resumes from the
checkpoints it left on object storage (a real S3 server, moto, on loopback) and ends with
the metrics of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.fs as pafs
import pytest
import yaml

from app import runs
from tests.conftest import NO_TRACKING, REPO, make_synthetic

pytestmark = pytest.mark.slow


def config(tmp_path, data, name, storage=None):
    tree = {
        "name": name,
        "data": {"train": str(data), "label": "target", "split": {"valid": 0.1, "test": 0.1}},
        "model": {"kind": "mlp", "hidden": [256, 256]},
        "train": {"epochs": 5, "batch_size": 512, "early_stopping_patience": None},
        "scaling": {"num_workers": 2, "cpus_per_worker": 1},
        "run": {"storage": storage or str(tmp_path / "runs")},
        "tracking": NO_TRACKING,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def train(path, env, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "app", "train", "--config", str(path)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def wait_until_session_gone(sid: int, timeout: float = 60) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        ps = subprocess.run(["ps", "-eo", "sid=,stat="], capture_output=True, text=True).stdout.split("\n")
        if not any(line.split()[:1] == [str(sid)] and not line.split()[1].startswith("Z") for line in ps if line.strip()):
            return True
        time.sleep(0.2)
    return False


def test_driver_killed_mid_run_resumes_on_rerun(tmp_path, cli_env, s3):
    data = make_synthetic(tmp_path / "data", 120000)
    storage = f"{s3}/driver-kill/runs"
    fs, bucket_path = pafs.FileSystem.from_uri(storage)
    run = f"{bucket_path}/resumed"

    def read_json(name):
        with fs.open_input_stream(f"{run}/{name}") as f:
            return json.loads(f.read())

    def exists(name):
        return fs.get_file_info(f"{run}/{name}").type != pafs.FileType.NotFound

    path = config(tmp_path, data, "resumed", storage)
    first = train(path, cli_env, start_new_session=True)  # its own process group: driver + embedded Ray
    deadline = time.time() + 300
    while not exists("checkpoint_epoch_0002/manifest.json"):
        assert first.poll() is None and time.time() < deadline, first.communicate()[1][-3000:]
        time.sleep(0.05)
    time.sleep(0.3)
    os.killpg(first.pid, signal.SIGKILL)
    killed_at = time.time()
    first.communicate()
    assert first.returncode == -signal.SIGKILL
    # Ray's worker processes have their own process groups; they notice the dead raylet
    # within seconds. Only then is the run folder final.
    assert wait_until_session_gone(first.pid)
    assert not exists("metrics.json")
    snapshot = read_json("checkpoint_manager_snapshot.json")
    resumed_from = snapshot["latest_checkpoint_result"]["checkpoint_dir_name"]
    kept = read_json(f"{resumed_from}/train_state.json")["progress"]["history"]
    assert [r["epoch"] for r in kept] == list(range(1, len(kept) + 1)) and len(kept) >= 2

    second = train(path, cli_env)
    out, err = second.communicate(timeout=600)
    assert second.returncode == 0, err[-3000:]
    assert f"resuming from {storage}/resumed/{resumed_from}" in out
    assert "taking over the lease" in err and "is no longer running" in err  # the killed driver's
    metrics = read_json("metrics.json")
    assert [r["epoch"] for r in metrics["history"]] == [1, 2, 3, 4, 5]
    assert metrics["history"][:len(kept)] == kept  # records from before the kill, unchanged
    assert metrics["best_checkpoint"].startswith(f"{storage}/resumed/")
    assert not exists(runs.LEASE)  # released at the end
    first_new = metrics["history"][len(kept)]
    print(f"\ndriver kill: resumed from epoch {len(kept)}; kill -> epoch {first_new['epoch']} reported in "
          f"{first_new['time'] - killed_at:.1f}s (includes starting the command again)")

    reference = train(config(tmp_path, data, "uninterrupted"), cli_env)  # on local disk
    _, err = reference.communicate(timeout=600)
    assert reference.returncode == 0, err[-3000:]
    expected = json.loads((tmp_path / "runs" / "uninterrupted" / "metrics.json").read_text())
    assert metrics["valid"] == expected["valid"] and metrics["test"] == expected["test"]

    again = train(path, cli_env, start_new_session=True)
    out, _ = again.communicate(timeout=120)
    assert again.returncode == 0 and "already finished" in out
