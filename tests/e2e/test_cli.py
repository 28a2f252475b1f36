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

from tests.conftest import REPO, penguins_tree

pytestmark = pytest.mark.slow
QUICKSTART = Path("configs/quickstart.yaml")


def run_cli(args, env, timeout=300):
    return subprocess.run([sys.executable, "-m", "app", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


def run_in_terminal(args, env, timeout=300) -> subprocess.CompletedProcess:
    """`run_cli` with stdout and stderr on a pseudo-terminal (80 x 120, newlines written as
    they are), as in an interactive shell: the terminal's whole output is `stdout`."""
    import fcntl
    import os
    import pty
    import select
    import struct
    import termios
    import time

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    attrs = termios.tcgetattr(slave)
    attrs[1] &= ~termios.OPOST  # "\n" stays "\n": a "\r" is then a progress bar's
    termios.tcsetattr(slave, termios.TCSANOW, attrs)
    process = subprocess.Popen([sys.executable, "-m", "app", *args], cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                               stdout=slave, stderr=slave)
    os.close(slave)
    chunks, deadline = [], time.time() + timeout
    try:
        while time.time() < deadline:
            if select.select([master], [], [], 0.5)[0]:
                try:
                    data = os.read(master, 1 << 16)
                except OSError:  # EIO: every process holding the terminal has ended
                    break
                if not data:
                    break
                chunks.append(data)
        else:
            process.kill()
    finally:
        process.wait()
        os.close(master)
    return subprocess.CompletedProcess(process.args, process.returncode, b"".join(chunks).decode(errors="replace"), "")


def printed_lines(output: str) -> list[str]:
    """The lines of a terminal's output without colours and progress bars: what follows a line's
    last `\r` is a line only if it is not a bar's frame (tqdm's `NN%|` or `[mm:ss<` / `[mm:ss,`)."""
    lines = []
    for line in output.split("\n"):
        if "\r" in line:
            line = line.rsplit("\r", 1)[1]
            if "\x1b[A" in line or re.search(r"\d%\||\[\d+:\d\d[<,]", line):
                continue
        line = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", line)
        if line.strip():
            lines.append(line)
    return lines


def write_config(tmp_path: Path, tree: dict) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def majority_rate(config: Path, split: str) -> float:
    """What a constant model scores on one split of the config's data: its largest class's
    share. The split is recomputed from the file, as a pure function of each row and the
    seed (app/data/split.py), so the check does not rest on the counts the run reports."""
    from app.data.split import TEST, VALID, assign_split

    tree = yaml.safe_load((REPO / config).read_text())
    data, fractions = pd.read_csv(REPO / tree["data"]["train"]), tree["data"]["split"]
    codes = assign_split(data, fractions["valid"], fractions["test"], fractions["seed"])
    labels = data[tree["data"]["label"]][codes == {"valid": VALID, "test": TEST}[split]]
    return labels.value_counts(normalize=True).max()


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


def test_train_quickstart_end_to_end(quickstart, cli_env):
    args, first, run = quickstart  # (tests/e2e/conftest.py: in a terminal)
    assert first.returncode == 0, first.stdout[-3000:]
    # In a terminal: bars of the data step's passes, and of rank 0's steps in each epoch, drawn
    # by the driver with the worker's pid (app/progress.py; piped, there are none:
    # tests/e2e/test_driver_failure.py).
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", first.stdout)  # (without colours)
    assert re.search(r"\rdata pass 1/2 \(read, split\): +\d+%", shown)
    assert re.search(r"\r\(pid=\d+\) epoch 1/3: +\d+%\|.*step/s", shown)
    printed = printed_lines(first.stdout)
    assert "epoch 3/30" not in first.stdout and any("epoch 3/3 " in line for line in printed)
    assert any(re.search(r"epoch 2/3 .* elapsed \d+:\d\d  eta \d+:\d\d", line) for line in printed)
    # Our own lines only: no Ray Data progress bars from the workers' shard pulls, no notices,
    # no warnings of Ray Train's placement-group cleaner about an embedded Ray's missing
    # dashboard (a small run starts none: run.dashboard).
    for noise in ("Running Dataset", "Progress bars disabled", "Token authentication", "State API"):
        assert not [line for line in printed if noise in line]
    # train.log: the lines printed (the app's, the workers'), none of the bars
    logged = (run / "train.log").read_text().splitlines()
    assert set(logged) <= set(printed) and not [line for line in logged if "%|" in line or "\r" in line]
    ours = re.compile(r"^(data: |test: |run folder: |\(RayTrainWorker pid=\d+\) epoch \d/3 )")
    assert [line for line in logged if ours.match(line)] == [line for line in printed if ours.match(line)]
    assert len([line for line in logged if ours.match(line)]) == 6
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["task"] == "classification" and metrics["epochs_completed"] == 3
    assert len(metrics["history"]) == 3
    for split in ("valid", "test"):  # a constant model scores 0.52 and 0.46 there
        assert majority_rate(QUICKSTART, split) + 0.15 < metrics[split]["accuracy"] <= 1.0
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
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "nice 0 0" in done.stdout
