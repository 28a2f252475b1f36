"""Failures on one shared local Ray: a worker killed from outside, a checkpoint upload cut
short, a corrupt or foreign checkpoint. The worker-kill run must end exactly where an
uninterrupted run of the same config ends."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

from app.config import from_dict
from app.errors import UserError
from app.predictor import Predictor
from app.training.trainer import preflight, run_training
from tests.conftest import NO_TRACKING, make_synthetic

pytestmark = pytest.mark.slow  # fault drills: scripts/test.sh --quick leaves them out


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("synth"), 120000)


def synthetic_config(data: Path, storage: Path, name: str, **train):
    tree = {
        "name": name,
        "data": {"train": str(data), "label": "target", "split": {"valid": 0.1, "test": 0.1}},
        "model": {"kind": "mlp", "hidden": [256, 256], "dropout": 0.1},  # the penguins tests below run tabm
        "train": {"epochs": 5, "batch_size": 512, "lr": 2.0e-3, "early_stopping_patience": None, **train},
        "scaling": {"num_workers": 2, "cpus_per_worker": 1},
        "run": {"storage": str(storage), "max_failures": 2},
        "tracking": NO_TRACKING,
    }
    return from_dict(tree, "test")


@pytest.fixture(scope="module")
def uninterrupted(ray_session, synthetic, tmp_path_factory):
    storage = tmp_path_factory.mktemp("clean")
    return run_training(synthetic_config(synthetic, storage, "clean"))


def wait_for(predicate, timeout=120.0, every=0.02):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return False


def train_in_background(cfg):
    outcome = {}

    def target():
        try:
            outcome["metrics"] = run_training(cfg)
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            outcome["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


def test_worker_killed_mid_epoch_recovers_and_ends_like_an_uninterrupted_run(
        ray_session, synthetic, tmp_path, uninterrupted):
    from ray.util.state import list_actors

    cfg = synthetic_config(synthetic, tmp_path, "killed")
    run = tmp_path / "killed"
    thread, outcome = train_in_background(cfg)
    assert wait_for(lambda: (run / "checkpoint_epoch_0002" / "manifest.json").exists())
    time.sleep(0.3)  # into epoch 3
    workers = list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
    assert len(workers) == 2
    assert not (run / "checkpoint_epoch_0005").exists()  # the kill lands before the run ends
    victim = workers[-1]["pid"]
    os.kill(victim, signal.SIGKILL)
    killed_at = time.time()
    thread.join(timeout=600)
    assert "error" not in outcome, outcome.get("error")
    dead = list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "DEAD")], limit=1000)
    assert victim in {a["pid"] for a in dead}  # the group really lost a worker and started over

    metrics = outcome["metrics"]
    assert [r["epoch"] for r in metrics["history"]] == [1, 2, 3, 4, 5]  # each epoch once
    assert metrics["valid"] == uninterrupted["valid"]  # bit-identical on CPU
    assert metrics["test"] == uninterrupted["test"]
    assert metrics["param_fingerprints"] == uninterrupted["param_fingerprints"]
    replayed = next(r for r in metrics["history"] if r["time"] > killed_at)
    print(f"\nworker kill: recovered in {replayed['time'] - killed_at:.1f}s "
          f"(kill -> epoch {replayed['epoch']} reported)")


def test_upload_cut_short_is_never_loaded_and_the_rerun_finishes(ray_session, synthetic, tmp_path, uninterrupted,
                                                                   monkeypatch):
    monkeypatch.setenv("APP_FAULT", "rank=0,epoch=3,at=upload")
    cfg = synthetic_config(synthetic, tmp_path, "cut")
    cfg.run.max_failures = 0
    cfg.run.checkpoint.keep = 10  # so that the redone epoch 3 stays to be looked at
    with pytest.raises(ray_session.train.TrainingFailedError):
        run_training(cfg)
    partial = tmp_path / "cut" / "checkpoint_epoch_0003"
    assert (partial / "model.pt").exists() and not (partial / "manifest.json").exists()
    with pytest.raises(UserError, match="checkpoint_epoch_0003: no manifest.json"):
        Predictor.from_checkpoint(partial)
    assert not (tmp_path / "cut" / "metrics.json").exists()

    monkeypatch.delenv("APP_FAULT")
    metrics = run_training(cfg)  # resumes from epoch 2, redoes epoch 3 in the same folder
    assert [r["epoch"] for r in metrics["history"]] == [1, 2, 3, 4, 5]
    assert Predictor.from_checkpoint(partial).epoch == 3
    assert metrics["valid"] == uninterrupted["valid"]


@pytest.fixture(scope="module")
def finished_run(ray_session, tmp_path_factory):
    """A finished two-epoch penguins run (trained once for the tests below)."""
    from tests.conftest import penguins_tree

    tmp = tmp_path_factory.mktemp("resumable")
    # a constant lr: two epochs continued for two more then train exactly like four at once
    cfg = from_dict(penguins_tree(tmp, name="resumable", train__epochs=2, train__lr_schedule="constant"), "test")
    run_training(cfg)
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
    other.model.k = 8
    with pytest.raises(UserError, match=r"does not fit this run: model.k is 16 there and 8 here"):
        run_training(other, preflight(other))

    for epoch in (2, 1):  # every checkpoint damaged: nothing to resume from
        model = run / f"checkpoint_epoch_000{epoch}" / "model.pt"
        model.write_bytes(model.read_bytes()[:-100])
    with pytest.raises(UserError, match=r"no intact checkpoint to resume from \(checkpoint .*checkpoint_epoch_0002: "
                                        r"model.pt is corrupt.*checkpoint_epoch_0001: model.pt is corrupt.*--fresh"):
        run_training(cfg, preflight(cfg))


def test_corrupt_latest_checkpoint_resumes_from_the_previous_intact_one(finished_run, interrupted_run, capfd):
    cfg, run = interrupted_run
    before = json.loads((run / "checkpoint_epoch_0001" / "train_state.json").read_text())["progress"]["history"]
    model = run / "checkpoint_epoch_0002" / "model.pt"
    model.write_bytes(model.read_bytes()[:-100])  # a disk or a copy cut it short after its manifest was written
    metrics = run_training(cfg, preflight(cfg))
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
def test_resume_keeps_history_and_does_not_refit(interrupted_run, record, capfd):
    cfg, run = interrupted_run
    if record == "cut short":  # Ray Train's checkpoint record, as a driver killed while writing it leaves it
        (run / "checkpoint_manager_snapshot.json").write_text("")
    before = json.loads((run / "checkpoint_epoch_0002" / "train_state.json").read_text())["progress"]["history"]
    state_before = (run / "checkpoint_epoch_0002" / "preprocess.json").read_text()
    cfg.train.epochs = 4  # continue the interrupted run for two more epochs
    metrics = run_training(cfg, preflight(cfg))
    assert [r["epoch"] for r in metrics["history"]] == [1, 2, 3, 4]
    assert metrics["history"][:2] == before  # earlier records kept as they were
    assert (run / "checkpoint_epoch_0004" / "preprocess.json").read_text() == state_before
    assert f"resuming from {run / 'checkpoint_epoch_0002'} (epoch 2 done)" in capfd.readouterr().out
    if record == "intact":  # the default kind (tabm) resumes bit-identically
        straight = cfg.model_copy(update={"name": "straight"}, deep=True)
        assert cfg.model.kind == "tabm"
        uninterrupted = run_training(straight, preflight(straight))
        assert uninterrupted["param_fingerprints"] == metrics["param_fingerprints"]
        assert uninterrupted["valid"] == metrics["valid"]
