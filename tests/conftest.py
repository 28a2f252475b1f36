"""Shared fixtures: the repo's paths, small configs, one local Ray per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PENGUINS = REPO / "data" / "penguins.csv"
BUCKET = "app-test"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Object storage in tests is a real S3 server (moto) on loopback. Its address goes into the
# environment now, before any Ray starts, so that Ray workers (which inherit it) and pyarrow
# find it; real AWS credentials of the machine are never used.
os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{_free_port()}", AWS_ACCESS_KEY_ID="testing",
                  AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")
for _name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
    os.environ.pop(_name, None)


def make_synthetic(out: Path, rows: int) -> Path:
    """A synthetic classification dataset (scripts/make_data.py) of `rows` rows in 4 parts."""
    import subprocess
    import sys

    subprocess.run([sys.executable, str(REPO / "scripts" / "make_data.py"), "--rows", str(rows), "--parts", "4",
                    "--out", str(out)], check=True, capture_output=True)
    return out


# Tracking costs every run seconds of imports (MLflow, TensorBoard) on each process that
# logs: off in the test configs, except where a test is about it (test_inference.py,
# test_object_storage.py) and in the end-to-end runs of the shipped configs.
NO_TRACKING = {"mlflow": False, "tensorboard": False}


def penguins_tree(tmp_path: Path, **sections) -> dict:
    """The quickstart config, shrunk for tests, storage under tmp_path, tracking and
    baselines off."""
    tree = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())
    tree["data"]["train"] = str(PENGUINS)
    tree["run"]["storage"] = str(tmp_path / "runs")
    tree["train"]["epochs"] = 3
    tree["tracking"] = dict(NO_TRACKING)
    tree["report"] = {"baselines": False}  # `auto` would fit them after every small run: seconds each
    for key, value in sections.items():
        node = tree
        *parents, leaf = key.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for all integration tests: 4 logical CPUs so that two 1-CPU
    training workers and Ray Data tasks fit beside each other on a 2-core machine."""
    import ray

    from app.cluster import EMBEDDED_RAY_CONFIG, local_cluster_running, quiet_logs

    quiet_logs()
    local_cluster_running()  # forgets a dead `ray start` of this machine that ray.init would wait for
    ray.init(num_cpus=4, include_dashboard=True, dashboard_host="127.0.0.1", logging_level="WARNING",
             _system_config=EMBEDDED_RAY_CONFIG)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3():
    """A moto S3 server on 127.0.0.1 (at $AWS_ENDPOINT_URL) with an empty bucket; its s3:// root."""
    import logging
    from urllib.parse import urlparse

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
    endpoint = urlparse(os.environ["AWS_ENDPOINT_URL"])
    server = ThreadedMotoServer(ip_address=endpoint.hostname, port=endpoint.port, verbose=False)
    server.start()
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    yield f"s3://{BUCKET}"
    server.stop()


@pytest.fixture
def cli_env():
    """Environment for running `python -m app` in a subprocess from the repo root."""
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env["PYTHONPATH"] = str(REPO)
    return env


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server (Debian's, on the machine) on 127.0.0.1, run by the `postgres`
    system user (it refuses root), with trust authentication; its SQLAlchemy URL. Its folder
    is outside pytest's temporary folders, which only root may enter."""
    import shutil
    import subprocess
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="app-test-postgres-"))
    data, port = folder / "data", _free_port()
    shutil.chown(folder, "postgres")

    def as_postgres(*argv: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *argv], check=True, capture_output=True, timeout=120)

    as_postgres("initdb", "-D", str(data), "-A", "trust", "-U", "postgres")
    as_postgres("pg_ctl", "-D", str(data), "-l", str(folder / "log"), "-w", "-o",
                f"-p {port} -k {folder} -c listen_addresses=127.0.0.1", "start")
    yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    as_postgres("pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop")
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def ray_must_not_start(monkeypatch):
    """The test's work must be done, or refused, without starting Ray; one that starts it
    fails here. (A selection that ran the integration tests' shared Ray first cannot tell.)"""
    import ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    already = ray.is_initialized()
    yield
    assert already or not ray.is_initialized(), "Ray was started"

