"""Sweeps on one shared local Ray: ASHA stops weak trials, the best config reproduces, Optuna runs,
a resumed sweep keeps its fitted preprocessing and refuses a changed config."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
import yaml

import app
from app.config import from_dict, load_config
from app.data.prepare import prepare
from app.errors import UserError
from app.runner import preflight
from tests.conftest import PENGUINS, penguins_tree

# Both network kinds, and a key of each: trials of either kind share the prepared data.
SPACE = {"train.lr": {"loguniform": [1.0e-4, 3.0e-2]}, "model.kind": {"choice": ["mlp", "tabm"]},
         "model.hidden": {"choice": [[16], [64, 32]]}, "model.k": {"choice": [4, 8]}}
SAMPLES = 4


def sweep_config(tmp_path, name, **tune):
    # 4 trials (each costs far more to start than its 8 epochs of penguins): the seeded search
    # samples both kinds, and with ASHA's rungs at epochs 1, 2 and 4 some trial is stopped in
    # (nearly) any order the trials reach them
    tree = penguins_tree(tmp_path, name=name, train__epochs=8, train__early_stopping_patience=None,
                         scaling__num_workers=1, scaling__cpus_per_worker=1)
    # xgboost reports every 20 rounds: 2 reports, as many as test_optuna_search_runs' epochs
    tree["model"]["xgboost"] = {"rounds": 40, "checkpoint_every": 20}
    tree["tune"] = {"num_samples": SAMPLES, "max_concurrent_trials": 4, "space": SPACE,
                    "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 2}, **tune}
    return from_dict(tree, "test")


@pytest.fixture(scope="module")
def asha_sweep(ray_session, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("asha")
    cfg = sweep_config(tmp, "sweep")
    return app.tune(cfg).metrics, tmp / "runs" / "sweep"


@pytest.mark.slow
def test_asha_stops_weak_trials_early(asha_sweep):
    _, sweep = asha_sweep
    board = pd.read_csv(sweep / "leaderboard.csv")
    assert len(board) == SAMPLES and list(board.columns[:3]) == ["trial_id", "status", "epochs"]
    assert {"train.lr", "model.kind", "model.hidden", "model.k", "valid_loss"} <= set(board.columns)
    assert set(board["model.kind"]) == {"mlp", "tabm"}
    stopped = board[board.status == "stopped early (asha)"]
    assert len(stopped) >= 1 and (stopped.epochs < 8).all()
    assert (board[board.status == "completed"].epochs == 8).all()
    assert board.valid_loss.is_monotonic_increasing  # sorted best first
    png = (sweep / "curves.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


@pytest.mark.slow
def test_best_trial_metrics_and_config(asha_sweep):
    _, sweep = asha_sweep
    board = pd.read_csv(sweep / "leaderboard.csv")
    on_disk = json.loads((sweep / "metrics.json").read_text())
    assert on_disk["best_trial"] == board.trial_id[0]
    assert on_disk["valid"]["valid_loss"] == pytest.approx(board.valid_loss[0], rel=1e-9)
    assert set(on_disk["test"]) >= {"accuracy", "f1_macro", "roc_auc", "log_loss"}
    assert on_disk["trial_epochs"] == board.epochs.sum() < SAMPLES * 8  # ASHA saved work
    best = yaml.safe_load((sweep / "best_config.yaml").read_text())
    assert best["train"]["lr"] == pytest.approx(on_disk["best_overrides"]["train.lr"])
    assert best["model"]["hidden"] == on_disk["best_overrides"]["model.hidden"]
    assert best["model"]["kind"] == on_disk["best_overrides"]["model.kind"]


@pytest.mark.slow
def test_best_config_trains_to_the_same_metric(asha_sweep, tmp_path):
    metrics, sweep = asha_sweep
    again = load_config(sweep / "best_config.yaml", [f"run.storage={tmp_path}"])
    retrained = app.train(again).metrics
    # same config, seed, data and worker count: the trial's training, replayed
    assert retrained["valid"]["valid_loss"] == pytest.approx(metrics["valid"]["valid_loss"], rel=1e-6)


@pytest.mark.slow
def test_optuna_search_runs(ray_session, tmp_path):
    from mlflow.tracking import MlflowClient

    # a network and the trees: model.kind searched by Optuna, the trees' reports counted in rounds
    space = {"train.lr": SPACE["train.lr"], "model.kind": {"choice": ["mlp", "xgboost"]}}
    cfg = sweep_config(tmp_path, "optuna", num_samples=2, search="optuna", scheduler={"name": "fifo"}, space=space)
    cfg.train.epochs = 2
    cfg.tracking.mlflow = True  # the trials log into one MLflow experiment named after the sweep
    metrics = app.tune(cfg).metrics
    board = pd.read_csv(tmp_path / "runs" / "optuna" / "leaderboard.csv")
    assert len(board) == 2 and (board.status == "completed").all() and (board.epochs == 2).all()
    assert board["train.lr"].nunique() == 2 and set(board["model.kind"]) == {"mlp", "xgboost"}
    assert metrics["valid"]["valid_loss"] == pytest.approx(board.valid_loss.min())
    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    trials = client.search_runs([client.get_experiment_by_name("optuna").experiment_id])
    assert sorted(r.info.run_name for r in trials) == sorted(map(str, board.trial_id))
    assert {r.info.status for r in trials} == {"FINISHED"}
    assert all(len(client.get_metric_history(r.info.run_id, "valid_loss")) == 2 for r in trials)


def test_metric_that_training_never_reports(ray_session, tmp_path):
    cfg = sweep_config(tmp_path, "badmetric", metric="rmse")
    with pytest.raises(UserError, match="tune.metric: 'rmse' is never reported for classification"):
        app.tune(cfg).metrics


def test_trial_that_cannot_fit_the_cluster(ray_session, tmp_path):
    cfg = sweep_config(tmp_path, "toobig")
    cfg.scaling.num_workers = 8
    with pytest.raises(UserError, match="one trial needs 8 worker"):
        app.tune(cfg).metrics


@pytest.mark.slow
def test_resumed_trial_keeps_its_fitted_preprocessing_and_a_changed_config_is_refused(ray_session, tmp_path,
                                                                                      monkeypatch):
    data = tmp_path / "penguins.csv"
    shutil.copy(PENGUINS, data)
    cfg = sweep_config(tmp_path, "resumed", num_samples=1, max_concurrent_trials=1, scheduler={"name": "fifo"},
                       space={"train.lr": {"choice": [3.0e-3]}})
    cfg.data.train, cfg.train.epochs, cfg.model.kind, cfg.model.hidden = str(data), 3, "mlp", [16]
    cfg.run.max_failures = 0  # the trial fails for good below, and is left for --resume
    # Its worker dies as epoch 3 starts. Ray Train takes a worker's reports one at a time, so
    # epoch 1 is registered by then, and epoch 2 may be.
    monkeypatch.setenv("APP_FAULT", "rank=0,epoch=3")
    app.tune(cfg).metrics
    sweep = tmp_path / "runs" / "resumed"
    [trial] = [p for p in (sweep / "trials").iterdir() if p.is_dir()]
    done = json.loads((trial / "checkpoint_manager_snapshot.json").read_text())["latest_checkpoint_result"]
    done = done["metrics"]["epoch"]
    assert pd.read_csv(sweep / "leaderboard.csv").status.tolist() == ["error"]
    assert done in (1, 2) and not (trial / "checkpoint_epoch_0003").exists()
    fitted = (trial / f"checkpoint_epoch_000{done}" / "preprocess.json").read_text()
    assert (sweep / "sweep_preprocess.json").read_text() == fitted

    changed = cfg.model_copy(deep=True)
    changed.model.hidden = [32]
    with pytest.raises(UserError, match=r"sweep .*resumed does not fit this run: model.hidden is \[16\] there "
                                        r"and \[32\] here; pass --fresh"):
        app.tune(changed, resume=True).metrics

    lines = data.read_text().splitlines(keepends=True)  # the data changes (columns and types stay):
    data.write_text("".join(lines[:1] + [line for i, line in enumerate(lines[1:]) if i % 3]))
    refitted = prepare(cfg, preflight(cfg)).state.to_json()
    assert refitted != fitted  # refitting would now scale and index differently
    monkeypatch.delenv("APP_FAULT")
    app.tune(cfg, resume=True).metrics
    board = pd.read_csv(sweep / "leaderboard.csv")
    assert board.status.tolist() == ["completed"] and board.epochs.tolist() == [3]
    assert (trial / "checkpoint_epoch_0003" / "preprocess.json").read_text() == fitted
    progress = json.loads((trial / "checkpoint_epoch_0003" / "train_state.json").read_text())["progress"]
    assert [a["from_epoch"] for a in progress["attempts"]] == [0, done]  # resumed, not trained again
    assert [r["epoch"] for r in progress["history"]] == [1, 2, 3]


@pytest.mark.slow
def test_an_interrupted_sweep_is_not_written_as_finished_and_ctrl_c_is_the_callers_again(ray_session, tmp_path):
    """Ray Tune's own handler ends fit() normally on its stop signal (SIGINT, and SIGUSR1,
    sent here: pytest's process must not get a SIGINT): `app.tune` raises KeyboardInterrupt
    and writes no leaderboard, and afterwards the caller's SIGINT handler is in place."""
    import os
    import signal
    import threading
    import time

    cfg = sweep_config(tmp_path, "stopped", num_samples=2, max_concurrent_trials=1, scheduler={"name": "fifo"})
    cfg.model.kind = "mlp"
    trials = tmp_path / "runs" / "stopped" / "trials"

    def stop_once_a_trial_checkpointed():
        deadline = time.time() + 300
        while not any(trials.glob("*/checkpoint_epoch_*")) and time.time() < deadline:
            time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGUSR1)

    before = signal.getsignal(signal.SIGINT)
    threading.Thread(target=stop_once_a_trial_checkpointed, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        app.tune(cfg)
    assert signal.getsignal(signal.SIGINT) is before
    assert not (tmp_path / "runs" / "stopped" / "leaderboard.csv").exists()
    assert not (tmp_path / "runs" / "stopped" / "metrics.json").exists()
