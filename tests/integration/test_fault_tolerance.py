"""Failures on one shared local Ray: a worker killed from outside, a checkpoint upload cut
short, a corrupt or foreign checkpoint, a run resumed for more epochs. Each run that is cut
short and resumed must end exactly where an uninterrupted run of the same config ends (the
mlp here; tests/e2e/test_driver_failure.py checks the same of tabm)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

import app
from app.config import from_dict
from app.errors import UserError
from app.predictor import Predictor
from tests.conftest import penguins_tree
from tests.drills import hung_pid, registered_epoch, train_in_background, wait_for

pytestmark = pytest.mark.slow  # fault drills: scripts/test.sh --quick leaves them out


def penguins_config(tmp_path: Path, name: str, epochs: int = 4):
    """Penguins on the mlp, 2 workers, epochs of 4 steps. Where a run is cut is set by a fault,
    not by timing, so the data can be small. A constant lr: two epochs continued for two more
    then train exactly like four at once."""
    return from_dict(penguins_tree(tmp_path, name=name, model__kind="mlp", train__epochs=epochs,
                                   train__lr_schedule="constant", train__early_stopping_patience=None,
                                   run__max_failures=2), "test")


@pytest.fixture(scope="module")
def uninterrupted(ray_session, tmp_path_factory):
    """Four epochs that nothing interrupts: where each run below that is cut short and
    resumed must end, bit for bit."""
    return app.train(penguins_config(tmp_path_factory.mktemp("clean"), "clean")).metrics


def test_worker_killed_mid_epoch_recovers_and_ends_like_an_uninterrupted_run(
        ray_session, tmp_path, uninterrupted, monkeypatch):
    from ray.util.state import list_actors

    # Rank 1 stops at step 2 of epoch 3, with epoch 2's checkpoint registered, and is killed
    # there from outside (as the kernel's OOM killer would).
    hang = "rank=1,epoch=3,step=2,then=hang"
    monkeypatch.setenv("APP_FAULT", hang)
    cfg = penguins_config(tmp_path, "killed")
    run = str(tmp_path / "runs" / "killed")
    thread, outcome = train_in_background(cfg)
    assert wait_for(lambda: (hung_pid(run, hang) and registered_epoch(run) == 2) or not thread.is_alive())
    assert thread.is_alive(), outcome.get("error")
    workers = list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
    victim = hung_pid(run, hang)
    assert len(workers) == 2 and victim in {w["pid"] for w in workers}
    assert not os.path.exists(f"{run}/checkpoint_epoch_0003")
    os.kill(victim, signal.SIGKILL)
    killed_at = time.time()
    thread.join(timeout=600)
    assert "error" not in outcome, outcome.get("error")
    dead = list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "DEAD")], limit=1000)
    assert victim in {a["pid"] for a in dead}  # the group really lost a worker and started over

    metrics = outcome["metrics"]
    assert [a["from_epoch"] for a in metrics["attempts"]] == [0, 2]  # restarted from epoch 2's checkpoint
    assert [r["epoch"] for r in metrics["history"]] == [1, 2, 3, 4]  # each epoch once
    assert metrics["valid"] == uninterrupted["valid"]  # bit-identical on CPU
    assert metrics["test"] == uninterrupted["test"]
    assert metrics["param_fingerprints"] == uninterrupted["param_fingerprints"]
    replayed = next(r for r in metrics["history"] if r["time"] > killed_at)
    print(f"\nworker kill: recovered in {replayed['time'] - killed_at:.1f}s "
          f"(kill -> epoch {replayed['epoch']} reported)")


def test_upload_cut_short_is_never_loaded_and_the_rerun_finishes(ray_session, tmp_path, uninterrupted, monkeypatch):
    monkeypatch.setenv("APP_FAULT", "rank=0,epoch=3,at=upload")
    cfg = penguins_config(tmp_path, "cut")
    cfg.run.max_failures = 0
    cfg.run.checkpoint.keep = 10  # so that the redone epoch 3 stays to be looked at
    with pytest.raises(ray_session.train.TrainingFailedError):
        app.train(cfg).metrics
    run = tmp_path / "runs" / "cut"
    partial = run / "checkpoint_epoch_0003"
    assert (partial / "model.pt").exists() and not (partial / "manifest.json").exists()
    with pytest.raises(UserError, match="checkpoint_epoch_0003: no manifest.json"):
        Predictor.from_checkpoint(partial)
    assert not (run / "metrics.json").exists()

    monkeypatch.delenv("APP_FAULT")
    metrics = app.train(cfg).metrics  # resumes from epoch 2, redoes epoch 3 in the same folder
    assert [r["epoch"] for r in metrics["history"]] == [1, 2, 3, 4]
    assert Predictor.from_checkpoint(partial).epoch == 3
    assert metrics["valid"] == uninterrupted["valid"]


@pytest.fixture(scope="module")
def finished_run(ray_session, tmp_path_factory):
    """A finished two-epoch run of that config (trained once for the tests below)."""
    tmp = tmp_path_factory.mktemp("resumable")
    cfg = penguins_config(tmp, "resumable", epochs=2)
    app.train(cfg).metrics
    return cfg, tmp / "runs" / "resumable"


@pytest.fixture
def interrupted_run(finished_run, tmp_path):
    """A copy of that run with metrics.json removed: as if the driver died at the end."""
    cfg, finished = finished_run
    run = tmp_path / "runs" / "resumable"
    shutil.copytree(finished, run)
    (run / "metrics.json").unlink()
    cfg = cfg.model_copy(deep=True)
    cfg.run.storage = str(tmp_path / "runs")
    return cfg, run


def test_checkpoint_of_another_config_or_corrupt_is_refused_by_name(interrupted_run):
    cfg, run = interrupted_run
    other = cfg.model_copy(deep=True)
    other.model.hidden = [8]
    with pytest.raises(UserError, match=r"does not fit this run: model.hidden is \[128, 64\] there and \[8\] here"):
        app.train(other).metrics

    for epoch in (2, 1):  # every checkpoint damaged: nothing to resume from
        model = run / f"checkpoint_epoch_000{epoch}" / "model.pt"
        model.write_bytes(model.read_bytes()[:-100])
    with pytest.raises(UserError, match=r"no intact checkpoint to resume from \(checkpoint .*checkpoint_epoch_0002: "
                                        r"model.pt is corrupt.*checkpoint_epoch_0001: model.pt is corrupt.*--fresh"):
        app.train(cfg).metrics


def test_corrupt_latest_checkpoint_resumes_from_the_previous_intact_one(finished_run, interrupted_run, capfd):
    cfg, run = interrupted_run
    before = json.loads((run / "checkpoint_epoch_0001" / "train_state.json").read_text())["progress"]["history"]
    model = run / "checkpoint_epoch_0002" / "model.pt"
    model.write_bytes(model.read_bytes()[:-100])  # a disk or a copy cut it short after its manifest was written
    metrics = app.train(cfg).metrics
    out = capfd.readouterr()
    assert f"checkpoint {run / 'checkpoint_epoch_0002'}: model.pt is corrupt (checksum mismatch)" in out.err
    assert f"resuming from {run / 'checkpoint_epoch_0001'} (epoch 1 done)" in out.out
    assert [r["epoch"] for r in metrics["history"]] == [1, 2]
    assert metrics["history"][:1] == before
    assert metrics["attempts"][-1]["from_epoch"] == 1  # Ray Train handed the workers epoch 1, not epoch 2
    # epoch 2 redone from epoch 1 ends exactly where the uninterrupted run did, its checkpoint rewritten whole
    finished = json.loads((finished_run[1] / "metrics.json").read_text())
    assert metrics["param_fingerprints"] == finished["param_fingerprints"]
    assert metrics["valid"] == finished["valid"]
    assert Predictor.from_checkpoint(run / "checkpoint_epoch_0002").epoch == 2


@pytest.mark.parametrize("record", ["intact", "cut short"])
def test_resume_keeps_history_and_does_not_refit(interrupted_run, uninterrupted, record, capfd):
    cfg, run = interrupted_run
    if record == "cut short":  # Ray Train's checkpoint record, as a driver killed while writing it leaves it
        (run / "checkpoint_manager_snapshot.json").write_text("")
    before = json.loads((run / "checkpoint_epoch_0002" / "train_state.json").read_text())["progress"]["history"]
    state_before = (run / "checkpoint_epoch_0002" / "preprocess.json").read_text()
    cfg.train.epochs = 4  # continue the interrupted run for two more epochs
    metrics = app.train(cfg).metrics
    assert [r["epoch"] for r in metrics["history"]] == [1, 2, 3, 4]
    assert metrics["history"][:2] == before  # earlier records kept as they were
    assert (run / "checkpoint_epoch_0004" / "preprocess.json").read_text() == state_before
    assert f"resuming from {run / 'checkpoint_epoch_0002'} (epoch 2 done)" in capfd.readouterr().out
    assert metrics["param_fingerprints"] == uninterrupted["param_fingerprints"]  # bit-identical on CPU
    assert metrics["valid"] == uninterrupted["valid"]
