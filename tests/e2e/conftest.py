"""Fixtures that outlive one end-to-end test: the environment of `python -m app` in a
subprocess, and the quickstart run that several tests check."""

from __future__ import annotations

import os

import pytest

from tests.conftest import REPO
from tests.e2e.test_cli import QUICKSTART, run_cli


@pytest.fixture(scope="session")
def shared_cli_env() -> dict[str, str]:
    """`cli_env` for module- and session-scoped fixtures, which a function-scoped one cannot serve."""
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"PYTHONPATH": str(REPO)}


@pytest.fixture(scope="session")
def quickstart(tmp_path_factory, shared_cli_env):
    """The shipped config as is, for 3 epochs: 2 workers x 1 CPU on an embedded Ray of this
    2-core machine. Trained once per session: (its arguments, the finished process, its run
    folder). tests/e2e/test_cli.py checks the run; tests/e2e/test_driver_failure.py checks
    that a run killed and resumed ends exactly where this one did."""
    storage = tmp_path_factory.mktemp("quickstart") / "runs"
    args = ["train", "--config", str(QUICKSTART), "--set", "train.epochs=3", "--set", f"run.storage={storage}"]
    return args, run_cli(args, shared_cli_env), storage / "quickstart"
