"""Shared fixtures: the repo's paths, small configs, one local Ray per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PENGUINS = REPO / "data" / "penguins.csv"


def make_synthetic(out: Path, rows: int) -> Path:
    """A synthetic classification dataset (scripts/make_data.py) of `rows` rows in 4 parts."""
    import subprocess
    import sys

    subprocess.run([sys.executable, str(REPO / "scripts" / "make_data.py"), "--rows", str(rows), "--parts", "4",
                    "--out", str(out)], check=True, capture_output=True)
    return out


def penguins_tree(tmp_path: Path, **sections) -> dict:
    """The quickstart config, shrunk for tests, storage under tmp_path."""
    tree = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())
    tree["data"]["train"] = str(PENGUINS)
    tree["run"]["storage"] = str(tmp_path / "runs")
    tree["train"]["epochs"] = 3
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

    from app.cluster import forget_dead_local_cluster, quiet_logs

    quiet_logs()
    forget_dead_local_cluster()
    ray.init(num_cpus=4, include_dashboard=True, dashboard_host="127.0.0.1", logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture
def cli_env():
    """Environment for running `python -m app` in a subprocess from the repo root."""
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env["PYTHONPATH"] = str(REPO)
    return env
