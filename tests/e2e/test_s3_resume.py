"""Kill the driver of a run whose checkpoints live on S3 (moto on loopback); the rerun
resumes from the checkpoint on S3."""

from __future__ import annotations

import json
import os
import signal
import time

import pyarrow.fs as pafs
import pytest
import yaml

from tests.conftest import PENGUINS, penguins_tree
from tests.e2e.test_driver_failure import train, wait_until_session_gone

pytestmark = pytest.mark.slow


def test_driver_killed_resumes_from_s3(s3, tmp_path, cli_env):
    fs, _ = pafs.FileSystem.from_uri(s3)
    bucket = s3.removeprefix("s3://")
    with fs.open_output_stream(f"{bucket}/resume/penguins.csv") as f:
        f.write(PENGUINS.read_bytes())
    tree = penguins_tree(tmp_path, name="s3resume", data__train=f"{s3}/resume/penguins.csv",
                         run__storage=f"{s3}/resume/runs", train__epochs=12, train__early_stopping_patience=None,
                         scaling__num_workers=1, model__kind="mlp")
    path = tmp_path / "s3.yaml"
    path.write_text(yaml.safe_dump(tree))
    run = f"{bucket}/resume/runs/s3resume"

    first = train(path, cli_env, start_new_session=True)
    deadline = time.time() + 300
    while fs.get_file_info(f"{run}/checkpoint_epoch_0002/manifest.json").type != pafs.FileType.File:
        assert first.poll() is None and time.time() < deadline, first.communicate()[1][-3000:]
        time.sleep(0.1)
    os.killpg(first.pid, signal.SIGKILL)
    first.communicate()
    assert wait_until_session_gone(first.pid)
    assert fs.get_file_info(f"{run}/metrics.json").type == pafs.FileType.NotFound

    second = train(path, cli_env)
    out, err = second.communicate(timeout=600)
    assert second.returncode == 0, err[-3000:]
    assert f"resuming from {s3}/resume/runs/s3resume/checkpoint_epoch_" in out
    with fs.open_input_stream(f"{run}/metrics.json") as f:
        metrics = json.loads(f.read())
    assert [r["epoch"] for r in metrics["history"]] == list(range(1, 13))
    assert metrics["best_checkpoint"].startswith(f"{s3}/resume/runs/s3resume/")
