"""`python -m app tune` in subprocesses: resume after the driver is killed, an unfinished sweep
refused (a bad search space: tests/unit/test_cli_errors.py)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import yaml

from tests.conftest import REPO, penguins_tree
from tests.e2e.test_cli import assert_bad_input, run_cli
from tests.e2e.test_driver_failure import wait_until_session_gone

pytestmark = pytest.mark.slow
EPOCHS, TRIALS = 3, 2


def sweep_file(tmp_path, **tune):
    # the cheaper kind: this is about resuming a sweep (tests/integration/test_tuning.py sweeps both kinds)
    tree = penguins_tree(tmp_path, name="sweep", train__epochs=EPOCHS, train__early_stopping_patience=None,
                         scaling__num_workers=1, scaling__cpus_per_worker=0.5, model__kind="mlp")
    # one trial at a time: the first is finished and the second under way when the driver is killed
    tree["tune"] = {"num_samples": TRIALS, "max_concurrent_trials": 1, "scheduler": {"name": "fifo"},
                    "space": {"train.lr": {"loguniform": [1.0e-3, 3.0e-2]}}, **tune}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def finished_trials(trials_dir, epochs):
    done = {}
    for snapshot in trials_dir.glob("*/checkpoint_manager_snapshot.json"):
        try:
            latest = json.loads(snapshot.read_text()).get("latest_checkpoint_result") or {}
        except ValueError:  # Ray Train rewrites the file in place: caught mid-write
            continue
        if latest.get("metrics", {}).get("epoch") == epochs:
            done[snapshot.parent.name] = snapshot.stat().st_mtime_ns
    return done


def trial_span(trial_dir):
    """(when its first attempt started, when its last epoch ended), from its last checkpoint."""
    last = max(trial_dir.glob("checkpoint_epoch_*"))
    progress = json.loads((last / "train_state.json").read_text())["progress"]
    return progress["attempts"][0]["started"], progress["history"][-1]["time"]


def test_resume_after_driver_kill_does_not_rerun_finished_trials(tmp_path, cli_env):
    path = sweep_file(tmp_path)
    trials = tmp_path / "runs" / "sweep" / "trials"
    first = subprocess.Popen([sys.executable, "-m", "app", "tune", "--config", str(path)], cwd=REPO, env=cli_env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 400
    while not finished_trials(trials, EPOCHS):
        assert first.poll() is None and time.time() < deadline, first.communicate()[1][-3000:]
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)
    _, stderr = first.communicate()
    assert "will be ignored" not in stderr  # Tune honours tune.max_concurrent_trials (checked below)
    assert wait_until_session_gone(first.pid)
    done_before = finished_trials(trials, EPOCHS)
    assert len(done_before) == 1
    assert not (tmp_path / "runs" / "sweep" / "leaderboard.csv").exists()

    unfinished = run_cli(["tune", "--config", str(path)], cli_env)  # neither --resume nor --fresh
    assert_bad_input(unfinished, "holds an unfinished sweep", "--resume")

    resumed = run_cli(["tune", "--config", str(path), "--resume"], cli_env, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for trial, mtime in done_before.items():  # finished trials were not trained again
        assert (trials / trial / "checkpoint_manager_snapshot.json").stat().st_mtime_ns == mtime
    board = pd.read_csv(tmp_path / "runs" / "sweep" / "leaderboard.csv")
    assert len(board) == TRIALS and (board.status == "completed").all()
    # Tune's trial table, and each worker line of a trial starting with its id
    assert "Trial status:" in resumed.stdout
    (retrained,) = set(board.trial_id) - set(done_before)
    assert re.search(rf"\[{retrained}\] epoch {EPOCHS}/{EPOCHS} ", resumed.stdout)
    # the sweep folder's train.log: the killed driver's lines, then the resumed one's
    logged = (tmp_path / "runs" / "sweep" / "train.log").read_text()
    assert logged.count("sweep: 2 sample(s)") == 2 and f"[{retrained}] epoch {EPOCHS}/{EPOCHS} " in logged
    # one trial at a time: each started training after the one before it had finished
    spans = sorted(trial_span(trials / trial) for trial in board.trial_id)
    assert all(later[0] > earlier[1] for earlier, later in zip(spans, spans[1:])), spans
    print(f"\ntune resume: {len(done_before)} trials finished before the kill were kept, "
          f"{TRIALS - len(done_before)} trained after --resume")
