"""The real CLI in subprocesses: a training run of the shipped config, one bad input refused
before Ray starts (the rest run in-process: tests/unit/test_cli_errors.py before Ray,
tests/integration/test_cli_on_ray.py for what only Ray finds), the embedded Ray's settings."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import PENGUINS, REPO, penguins_tree

pytestmark = pytest.mark.slow


def run_cli(args, env, timeout=300):
    return subprocess.run([sys.executable, "-m", "app", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def write_config(tmp_path: Path, tree: dict) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def assert_bad_input(result, *fragments, run_dir: Path | None = None):
    """Exit 2, one line on stderr naming the problem, no traceback, nothing that looks finished."""
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    assert "Traceback" not in result.stderr
    if run_dir is not None:
        assert not (run_dir / "metrics.json").exists()


def test_train_quickstart_end_to_end(tmp_path, cli_env):
    # The shipped config as is: 2 workers x 1 CPU on an embedded Ray of this 2-core machine.
    storage = tmp_path / "runs"
    args = ["train", "--config", "configs/quickstart.yaml", "--set", "train.epochs=3",
            "--set", f"run.storage={storage}"]
    first = run_cli(args, cli_env)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "epoch 3/30" not in first.stdout and "epoch 3/3 " in first.stdout + first.stderr
    assert re.search(r"epoch 2/3 .* elapsed \d+:\d\d  eta \d+:\d\d", first.stdout + first.stderr)
    # Our own lines only: no Ray Data progress bars from the workers' shard pulls, no notices.
    for noise in ("Running Dataset", "Progress bars disabled", "Token authentication"):
        assert noise not in first.stdout + first.stderr
    run = storage / "quickstart"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["task"] == "classification" and metrics["epochs_completed"] == 3
    assert len(metrics["history"]) == 3
    species = pd.read_csv(PENGUINS)["species"]
    majority = species.value_counts(normalize=True).max()  # what a constant model scores (0.44)
    for split in ("valid", "test"):
        assert majority + 0.15 < metrics[split]["accuracy"] <= 1.0
        assert 0.5 < metrics[split]["roc_auc"] <= 1.0
    assert Path(metrics["best_checkpoint"]).is_dir()
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == 3

    again = run_cli(args, cli_env)  # finished: says so, does not retrain
    assert again.returncode == 0 and "already finished" in again.stdout
    assert json.loads((run / "metrics.json").read_text())["wall_time_s"] == metrics["wall_time_s"]

    # (predict and evaluate from this checkpoint through the same `app.cli.main`, in-process
    # on the shared Ray: tests/integration/test_inference.py)
    report = run_cli(["report", str(run)], cli_env)
    assert report.returncode == 0 and (run / "report.html").stat().st_size > 10_000


def test_missing_file(tmp_path, cli_env):
    cfg = write_config(tmp_path, penguins_tree(tmp_path, data__train=str(tmp_path / "nope.csv")))
    assert_bad_input(run_cli(["train", "--config", str(cfg)], cli_env), "data.train", "nope.csv does not exist",
                     run_dir=tmp_path / "runs" / "quickstart")


def test_embedded_ray_runs_workers_at_normal_priority(cli_env):
    """Ray nices its workers to 15 unless told otherwise; the Ray the app starts for itself
    runs them at 0, like a plain script, so training does not yield to Ray's daemons."""
    probe = ("import os, ray\n"
             "from app import cluster\n"
             "cluster.connect()\n"
             "print('nice', ray.get(ray.remote(lambda: os.nice(0)).remote()), os.nice(0))\n")
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=cli_env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "nice 0 0" in done.stdout
