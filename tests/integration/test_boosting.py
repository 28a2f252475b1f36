"""`model.kind: xgboost` and `ensemble` on the shared local Ray. xgboost: Ray Train's
XGBoostTrainer over the same shards and preprocessing as the networks; a worker killed
mid-run, and a driver killed mid-run (a `python -m app train` process on this Ray, killed
with SIGKILL, then the same run again), each end exactly where an uninterrupted run ends:
the same trees, the same metrics. ensemble: a TabM and xgboost weighted on validation, one
checkpoint; a driver killed in its second member resumes it without training the first again.
(Every command on an xgboost checkpoint: tests/integration/test_inference.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import app
from app.config import from_dict
from app.predictor import Predictor
from tests.conftest import PENGUINS, REPO, penguins_tree
from tests.drills import hung_pid, registered_epoch, run_export, train_in_background, wait_for

pytestmark = pytest.mark.slow  # fault drills: scripts/test.sh --quick leaves them out

ROUNDS, EVERY = 60, 20


def boost_tree(tmp_path: Path, name: str) -> dict:
    """Penguins on xgboost, 2 workers, a checkpoint every 20 rounds, row and column
    sampling on (so that a resumed run has random draws to get right)."""
    tree = penguins_tree(tmp_path, name=name, model__kind="xgboost", report__importance=False,
                         report__baselines=False, run__max_failures=2)
    tree["model"]["xgboost"] = {"rounds": ROUNDS, "checkpoint_every": EVERY, "early_stopping_rounds": None,
                                "subsample": 0.7, "colsample_bytree": 0.7}
    return tree


def ensemble_tree(tmp_path: Path, name: str) -> dict:
    """The same trees as the ensemble's second member, beside a TabM (3 epochs)."""
    tree = boost_tree(tmp_path, name)
    tree["model"]["kind"] = "ensemble"
    tree["model"]["ensemble"] = {"members": ["tabm", "xgboost"]}  # the default members
    return tree


@pytest.fixture(scope="module")
def ensemble_run(ray_session, tmp_path_factory):
    """An uninterrupted ensemble run: where each run cut short below must end, bit for bit.
    Its xgboost member is a plain xgboost run of `boost_tree` (the same seed, data and
    parameters), in its own folder under the ensemble's."""
    tmp = tmp_path_factory.mktemp("ensemble")
    metrics = app.train(from_dict(ensemble_tree(tmp, "ens"), "test")).metrics
    return metrics, tmp / "runs" / "ens"


def trees_of(metrics: dict) -> dict:
    """What an xgboost run ended with: its checkpoints' rounds, the trees' fingerprints on each
    rank, its validation metrics (from metrics.json, or an ensemble member's checkpoint)."""
    from app.checkpoint import load_train_state

    best = Path(metrics["best_checkpoint"])
    latest = sorted(best.parent.glob("checkpoint_epoch_*"))[-1]
    final = load_train_state(latest)
    return {"rounds": [r["epoch"] for r in final["progress"]["history"]],
            "fingerprints": final["param_fingerprints"], "best": best.name}


def test_trees_train_on_every_worker_and_the_ensemble_weights_them_with_a_tabm(ensemble_run):
    from app.data.transform import transform
    from app.ensemble import mixture

    metrics, run = ensemble_run
    ensemble = metrics["ensemble"]
    trees = trees_of(ensemble["members"]["xgboost"])
    assert trees["rounds"] == [20, 40, 60]
    assert len(trees["fingerprints"]) == 2 and len(set(trees["fingerprints"])) == 1  # the ranks grew the same trees
    majority = pd.read_csv(PENGUINS)["species"].value_counts(normalize=True).max()
    for member in ensemble["members"].values():
        assert member["test"]["accuracy"] > majority + 0.2
    assert metrics["test"]["accuracy"] > majority + 0.2
    assert sum(ensemble["weights"].values()) == pytest.approx(1.0)
    best_member = min(m["valid"]["valid_loss"] for m in ensemble["members"].values())
    assert metrics["valid"]["valid_loss"] <= best_member + 1e-12  # never worse than its best member

    # one checkpoint: the members' copies and the weights; it predicts their weighted mixture
    checkpoint = Path(metrics["best_checkpoint"])
    assert checkpoint == run / "checkpoint_ensemble" and (checkpoint / "members" / "tabm" / "model.pt").exists()
    rows = pd.read_csv(PENGUINS).head(30)
    model = Predictor.from_checkpoint(checkpoint)
    members = {k: Predictor.from_checkpoint(m["best_checkpoint"]) for k, m in ensemble["members"].items()}
    assert 1 <= members["xgboost"].model.rounds <= members["xgboost"].epoch  # the best round so far predicts
    arrays = transform(rows, model.state, with_label=False)
    raw = {k: p.forward(arrays["x_num"], arrays["x_cat"], None, calibrated=False) for k, p in members.items()}
    np.testing.assert_allclose(model.forward(arrays["x_num"], arrays["x_cat"], None, calibrated=False),
                               mixture(raw, ensemble["weights"], model.state), rtol=1e-5, atol=1e-6)
    proba = model.predict(rows).filter(like="proba_").to_numpy()
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-9)


@pytest.fixture(scope="module")
def killed(ray_session, tmp_path_factory, ensemble_run):
    """A plain xgboost run of the ensemble's member config whose rank 1 stops before round
    30, with round 20's checkpoint registered, and is killed there from outside (as the
    kernel's OOM killer would); the run goes on. Its folder serves the commands' tests too."""
    from ray.util.state import list_actors

    tmp = tmp_path_factory.mktemp("killed")
    hang = "rank=1,epoch=30,then=hang"
    os.environ["APP_FAULT"] = hang
    try:
        run = str(tmp / "runs" / "killed")
        thread, outcome = train_in_background(from_dict(boost_tree(tmp, "killed"), "test"))
        assert wait_for(lambda: (hung_pid(run, hang) and registered_epoch(run) == 20) or not thread.is_alive())
        assert thread.is_alive(), outcome.get("error")
        victim = hung_pid(run, hang)
        workers = list_actors(address=ray_session.get_runtime_context().gcs_address,
                              filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
        assert victim in {w["pid"] for w in workers}
        os.kill(victim, signal.SIGKILL)
        thread.join(timeout=600)
    finally:
        del os.environ["APP_FAULT"]
    assert "error" not in outcome, outcome.get("error")
    return outcome["metrics"], Path(run)


def test_worker_killed_mid_run_resumes_to_the_same_trees(killed, ensemble_run):
    metrics, _ = killed
    assert [a["from_epoch"] for a in metrics["attempts"]] == [0, 20]  # restarted from round 20's checkpoint
    assert [r["epoch"] for r in metrics["history"]] == [20, 40, 60]
    reference = ensemble_run[0]["ensemble"]["members"]["xgboost"]
    assert trees_of(metrics) == trees_of(reference)  # the same trees, byte for byte
    assert metrics["valid"] == reference["valid"]


def test_evaluate_report_and_export_of_the_trees(killed, tmp_path):
    """`evaluate` reproduces the run's test metrics; the report draws boosting curves; the
    export (XGBoost's own file, the calibration applied by predict.py) predicts as the
    checkpoint does, without Ray, torch or this package."""
    from app.cli import main
    from app.export import export
    from app.report import write_report

    metrics, run = killed
    rows = pd.read_csv(PENGUINS)
    assert main(["evaluate", "--checkpoint", metrics["best_checkpoint"], "--data", str(PENGUINS), "--output",
                 str(tmp_path / "eval.json")]) == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["rows"] == len(rows) and result["metrics"]["accuracy"] > 0.9

    page = Path(write_report(str(run))).read_text()
    assert "Boosting curves" in page and "rounds completed" in page and "Learning curves" not in page

    folder = export(metrics["best_checkpoint"], str(tmp_path / "exported"))
    assert (folder / "model.ubj").exists() and not (folder / "model.onnx").exists()
    rows.drop(columns=["species"]).to_csv(tmp_path / "in.csv", index=False)
    done = run_export(folder, tmp_path / "in.csv", tmp_path / "out.csv", tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    got = pd.read_csv(tmp_path / "out.csv")
    expected = Predictor.from_checkpoint(metrics["best_checkpoint"]).predict(pd.read_csv(tmp_path / "in.csv"))
    assert got["prediction"].tolist() == expected["prediction"].tolist()
    columns = [c for c in expected.columns if c.startswith("proba_")]
    np.testing.assert_allclose(got[columns].to_numpy(), expected[columns].to_numpy(), atol=1e-6)


def test_ensemble_driver_killed_in_its_second_member_resumes_it_and_keeps_the_first(
        ray_session, tmp_path, ensemble_run):
    # The driver: `python -m app train` of the ensemble on this Ray, stopped in the xgboost
    # member (rank 0 hangs before round 30, round 20's checkpoint registered, the tabm member
    # finished) and killed with its whole process group.
    import yaml

    tree = ensemble_tree(tmp_path, "ens")
    config = tmp_path / "ens.yaml"
    config.write_text(yaml.safe_dump(tree))
    hang = "rank=0,epoch=30,then=hang"
    driver = subprocess.Popen([sys.executable, "-m", "app", "train", "--config", str(config), "--address",
                               ray_session.get_runtime_context().gcs_address], cwd=REPO,
                              env=dict(os.environ, APP_FAULT=hang), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    members = tmp_path / "runs" / "ens" / "members"
    trees = str(members / "xgboost")
    deadline = time.time() + 300
    while not (hung_pid(trees, hang) and registered_epoch(trees) == 20):
        assert driver.poll() is None and time.time() < deadline, driver.communicate()[1][-3000:]
        time.sleep(0.05)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.communicate()
    assert driver.returncode == -signal.SIGKILL
    # The driver's Train controller and workers die with it; the hung worker too, then.
    assert wait_for(lambda: not _alive(hung_pid(trees, hang)), timeout=120)
    finished = (members / "tabm" / "member.json").read_text()
    assert not (members / "xgboost" / "member.json").exists()
    assert not (tmp_path / "runs" / "ens" / "metrics.json").exists()

    metrics = app.train(from_dict(tree, "test")).metrics  # the same run again: resumes
    assert (members / "tabm" / "member.json").read_text() == finished  # not trained again
    resumed = metrics["ensemble"]["members"]["xgboost"]
    assert [a["from_epoch"] for a in metrics["attempts"] if a.get("data_cache") == "quantized"] == [0, 20]
    expected = ensemble_run[0]
    assert trees_of(resumed) == trees_of(expected["ensemble"]["members"]["xgboost"])
    assert metrics["ensemble"]["weights"] == expected["ensemble"]["weights"]
    assert metrics["valid"] == expected["valid"] and metrics["test"] == expected["test"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True

