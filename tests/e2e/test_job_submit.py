"""`python -m app submit` (through scripts/submit.sh) against a real head started with
`ray start --head` on 127.0.0.1."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, _free_port
from tests.e2e.test_cli import QUICKSTART, majority_rate

pytestmark = pytest.mark.slow
RAY = str(Path(sys.executable).with_name("ray"))


@pytest.fixture(scope="module")
def head():
    """A one-node Ray cluster of our venv, as `ray start --head` makes it; stopped afterwards
    by killing its own processes (`ray stop` would stop every Ray on the machine)."""
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PYTHONPATH"] = str(REPO)
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"  # `python` in the job: this venv's
    dashboard, gcs = _free_port(), _free_port()
    started = subprocess.run(
        [RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}", "--num-cpus=4",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--disable-usage-stats",
         f"--temp-dir={temp}"], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert started.returncode == 0, started.stderr[-3000:]
    env["RAY_ADDRESS"] = f"http://127.0.0.1:{dashboard}"
    env["TEST_GCS_ADDRESS"] = f"127.0.0.1:{gcs}"
    env["RAY_AUTH_MODE"] = "token"  # `ray start --head` turned token authentication on
    try:
        # The job API, and then the node's agent that runs jobs, come up a while after `ray
        # start` returns: until a no-op job is accepted, submissions fail.
        deadline = time.time() + 90
        while subprocess.run([RAY, "job", "submit", "--no-wait", "--", "true"], env=env, capture_output=True,
                             timeout=60, check=False).returncode != 0:
            assert time.time() < deadline, "the head's job API did not come up"
            time.sleep(1)
        yield env
    finally:
        stop_ray_of(temp)
        shutil.rmtree(temp, ignore_errors=True)  # with the record of the head that `ray start` wrote there


def submit(env, *args, pip="0", timeout=600):
    job_env = dict(env, APP_SUBMIT_PIP=pip)
    started = time.time()
    done = subprocess.run(["bash", "scripts/submit.sh", *args], cwd=REPO, env=job_env, capture_output=True,
                          text=True, timeout=timeout, check=False)
    return done, started


def test_train_and_tune_run_as_ray_jobs(quickstart, head, tmp_path):
    local_args, _, local_run = quickstart  # the same command, run on this machine (tests/e2e/conftest.py)
    storage = tmp_path / "runs"  # absolute: the job runs in a temporary copy of the working dir
    # An argument full of shell syntax reaches the job verbatim: the head's shell runs none of it.
    marker = Path(tempfile.gettempdir()) / f"app-injected-{uuid.uuid4().hex}"
    hostile = f"x'; touch {marker}-1; echo $(touch {marker}-2) `touch {marker}-3` && \"q\" | cat"
    # The two jobs side by side, as users' jobs share a cluster: the head has CPUs for both (the
    # training's 2 workers, the sweep's 1). (predict, evaluate and the rest run the same way:
    # one `python -m app` entrypoint per job)
    with ThreadPoolExecutor(2) as pool:
        training = pool.submit(submit, head, *local_args, "--set", f"run.storage={storage}",  # (later --set win)
                               "--set", f"tracking.experiment={hostile}", pip="1")
        sweeping = pool.submit(submit, head, "tune", "--config", "configs/tune.yaml", "--set", "train.epochs=2",
                               "--set", "tune.num_samples=1", "--set", "tracking.mlflow=false",  # MLflow: the training
                               "--set", f"run.storage={storage}")
        (trained, submitted), (swept, _) = training.result(), sweeping.result()

    assert trained.returncode == 0, (trained.stdout + trained.stderr)[-3000:]
    assert re.search(r"Job 'app-train-[\d-]+' succeeded", trained.stdout + trained.stderr)
    assert not list(marker.parent.glob(f"{marker.name}-*")), "a shell ran part of an argument"
    written = yaml.safe_load((storage / "quickstart" / "config.yaml").read_text())
    assert written["tracking"]["experiment"] == hostile
    metrics = json.loads((storage / "quickstart" / "metrics.json").read_text())
    assert metrics["epochs_completed"] == 3
    assert majority_rate(QUICKSTART, "test") + 0.15 < metrics["test"]["accuracy"]  # beats a constant model
    local = json.loads((local_run / "metrics.json").read_text())  # and trains exactly what runs here
    assert metrics["param_fingerprints"] == local["param_fingerprints"] and metrics["test"] == local["test"]
    first_epoch = metrics["history"][0]["time"]
    print(f"\njob submit -> epoch 1 reported: {first_epoch - submitted:.1f}s (with the pip runtime env, beside "
          f"the sweep's job)")

    assert swept.returncode == 0, (swept.stdout + swept.stderr)[-3000:]
    sweep = storage / "quickstart-sweep"
    assert (sweep / "best_config.yaml").exists()
    assert len((sweep / "leaderboard.csv").read_text().strip().splitlines()) == 2  # header + 1 trial


def test_a_failing_job_fails_the_submission(head, tmp_path):
    failed, _ = submit(head, "train", "--config", "configs/quickstart.yaml", "--set", "train.epochs=0",
                       "--set", f"run.storage={tmp_path / 'runs'}", timeout=300)
    assert failed.returncode == 1
    assert "train.epochs (from --set)" in failed.stdout + failed.stderr
    assert re.search(r"Job 'app-train-[\d-]+' failed", failed.stderr)


def test_bad_usage_exits_2_before_submitting():
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    for args, says in (([], "required: COMMAND"), (["bogus"], "invalid choice: 'bogus'"),
                       (["train", "--config", "x.yaml"], "error: RAY_ADDRESS http://127.0.0.1:")):
        done = subprocess.run(["bash", "scripts/submit.sh", *args], cwd=REPO, capture_output=True, text=True,
                              timeout=60, check=False, env=dict(env, RAY_ADDRESS=f"http://127.0.0.1:{_free_port()}")
                              if args[:1] == ["train"] else env)
        assert done.returncode == 2, done.stderr[-2000:]
        assert says in done.stderr and "Traceback" not in done.stderr


def stop_ray_of(temp: str) -> None:
    """Stop the Ray processes started with --temp-dir=`temp`, and the workers they spawned."""
    import signal

    parents: dict[int, int] = {}
    roots = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parents[int(entry.name)] = int(stat.rpartition(")")[2].split()[1])
        if temp in cmdline:
            roots.add(int(entry.name))
    doomed, frontier = set(roots), list(roots)
    while frontier:
        pid = frontier.pop()
        children = [c for c, parent in parents.items() if parent == pid and c not in doomed]
        doomed.update(children)
        frontier += children
    for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        for pid in doomed:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.time() + grace
        while any(Path(f"/proc/{pid}").exists() and "Z" != _state(pid) for pid in doomed) and time.time() < deadline:
            time.sleep(0.2)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return "Z"


def alive_nodes(env) -> int:
    count = "import ray; ray.init(); print(sum(n['Alive'] for n in ray.nodes()))"
    done = subprocess.run([sys.executable, "-c", count], env=dict(env, RAY_ADDRESS=env["TEST_GCS_ADDRESS"]),
                          capture_output=True, text=True, timeout=120, check=False)
    return int(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else 0


def test_local_storage_that_another_node_cannot_see_is_refused(head, tmp_path):
    """Last in this module: it adds a node to the head's cluster (stopped with the head)."""
    storage = Path(tempfile.mkdtemp(prefix="app-local-", dir="/tmp"))
    # A second node in its own mount namespace, where `storage` is an empty tmpfs of its own:
    # the situation of node-local disks on a real cluster.
    node = subprocess.Popen(
        ["unshare", "--mount", "sh", "-c", (f"mount -t tmpfs none {storage} && exec {RAY} start "
                                            f"--address={head['TEST_GCS_ADDRESS']} --num-cpus=1 --block "
                                            "--disable-usage-stats")],
        env=head, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 90
        while alive_nodes(head) < 2:
            assert node.poll() is None and time.time() < deadline, "the second node did not join"
        env = dict(head)
        env.pop("RAY_ADDRESS")
        refused = subprocess.run(
            [sys.executable, "-m", "app", "train", "--config", "configs/quickstart.yaml", "--address",
             head["TEST_GCS_ADDRESS"], "--set", f"run.storage={storage}"], cwd=REPO, env=env,
            capture_output=True, text=True, timeout=300, check=False)
        assert refused.returncode == 2, refused.stderr[-3000:]
        assert "run.storage" in refused.stderr and "cannot see it" in refused.stderr
        assert "Traceback" not in refused.stderr
        assert not list(storage.iterdir())  # the probe is gone, nothing else was written
    finally:
        node.terminate()
        shutil.rmtree(storage, ignore_errors=True)
