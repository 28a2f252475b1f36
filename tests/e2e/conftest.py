"""Fixtures that outlive one end-to-end test: the environment of `python -m app` in a
subprocess, and the quickstart run that several tests check."""

from __future__ import annotations

import os

import pytest

from tests.conftest import REPO
from tests.e2e.test_cli import QUICKSTART, run_in_terminal


@pytest.fixture(scope="session")
def shared_cli_env() -> dict[str, str]:
    """`cli_env` for module- and session-scoped fixtures, which a function-scoped one cannot serve."""
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"PYTHONPATH": str(REPO)}


@pytest.fixture(scope="session")
def quickstart(tmp_path_factory, shared_cli_env):
    """The shipped config as is, for 3 epochs: 2 workers x 1 CPU on an embedded Ray of this
    2-core machine, in a terminal. Trained once per session: (its arguments, the finished
    process, whose `stdout` is all the terminal showed, its run folder). tests/e2e/test_cli.py checks the run; tests/e2e/test_driver_failure.py checks
    that a run killed and resumed ends exactly where this one did."""
    storage = tmp_path_factory.mktemp("quickstart") / "runs"
    args = ["train", "--config", str(QUICKSTART), "--set", "train.epochs=3", "--set", f"run.storage={storage}"]
    # in a terminal, as a user runs it (not as CI: $CI turns progress bars off)
    env = {k: v for k, v in shared_cli_env.items() if k != "CI"}
    return args, run_in_terminal(args, env), storage / "quickstart"
