"""MLflow tracking without Ray: a dead server is given up on quickly and once, `--fresh`
opens a new MLflow run, and no credential reaches the tracking store."""

from __future__ import annotations

import socket
import time
import uuid
from pathlib import Path

import pytest

from app import runs, storage, tracking
from app.config import Config
from tests.conftest import _free_port, penguins_tree

SECRET = f"pw-{uuid.uuid4().hex}"


def config(tmp_path: Path, **tracking_keys) -> Config:
    tree = penguins_tree(tmp_path, tracking__mlflow=True, **{f"tracking__{k}": v for k, v in tracking_keys.items()})
    tree["data"]["test"] = f"s3://AKIAEXAMPLE:{SECRET}@bucket/penguins-test.csv"  # a URI with its secret
    return Config.model_validate(tree)


@pytest.fixture
def silent_server():
    """A TCP port that accepts connections and never answers: a hung tracking server."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield s.getsockname()[1]


@pytest.mark.parametrize("server", ["closed port", "silent server"])
def test_an_unreachable_server_is_given_up_within_10s_with_one_warning(tmp_path, capsys, request, server):
    port = _free_port() if server == "closed port" else request.getfixturevalue("silent_server")
    cfg = config(tmp_path, mlflow_uri=f"http://app:{SECRET}@127.0.0.1:{port}")
    out_dir = runs.run_dir(cfg)
    storage.write_text(storage.join(out_dir, runs.CONFIG), cfg.to_yaml())

    started = time.perf_counter()
    spec = tracking.start(cfg, out_dir)
    elapsed = time.perf_counter() - started
    assert elapsed <= 10, f"{server}: MLflow was given up on only after {elapsed:.1f} s"
    assert spec["mlflow_run_id"] is None

    # The rest of the run then goes on without MLflow, and says nothing more about it.
    logger = tracking.EpochLogger(spec, None, out_dir)
    logger.log({"epoch": 1, "time": time.time(), "train_loss": 0.5, "valid_loss": 0.6})
    logger.close()
    tracking.finish(spec, {"test": {"accuracy": 0.9}, "best_checkpoint": str(out_dir)})
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, err
    assert warnings[0].startswith(f"warning: MLflow logging is off: http://app:***@127.0.0.1:{port}: ")
    assert SECRET not in err


def test_the_server_gets_the_real_credentials_and_messages_show_them_redacted(tmp_path, capsys):
    """A server that refuses every request (401) but notes the credentials it was sent."""
    import base64
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen = []

    class Refuse(BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.headers.get("Authorization"))
            self.send_response(401)
            self.end_headers()

        do_POST = do_GET

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        uri = f"http://app:{SECRET}@127.0.0.1:{server.server_port}"
        cfg = config(tmp_path, mlflow_uri=uri)
        spec = tracking.start(cfg, runs.run_dir(cfg))
    finally:
        server.shutdown()
    assert spec["mlflow_run_id"] is None
    assert f"Basic {base64.b64encode(f'app:{SECRET}'.encode()).decode()}" in seen  # the process used the real URI
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "401" in err, err
    assert err.startswith(f"warning: MLflow logging is off: http://app:***@127.0.0.1:{server.server_port}: ")
    assert SECRET not in err


@pytest.fixture(scope="module")
def store_root(tmp_path_factory) -> Path:
    """One SQLite store for the tests below (creating one takes seconds)."""
    return tmp_path_factory.mktemp("tracking")


def test_fresh_opens_a_new_mlflow_run_and_resume_reopens_the_newest(store_root):
    from mlflow.tracking import MlflowClient

    tmp_path = store_root
    cfg = config(tmp_path)  # the default store: runs/mlflow.db beside the run folders
    out_dir = runs.run_dir(cfg)
    checkpoint = Path(out_dir) / runs.checkpoint_name(1)

    def attempt(epochs: range) -> str:
        """What run_training does with tracking: open, log epochs, close."""
        spec = tracking.start(cfg, out_dir)
        logger = tracking.EpochLogger(spec, None, out_dir)
        for epoch in epochs:
            logger.log({"epoch": epoch, "time": time.time(), "valid_loss": 1.0 / epoch})
        logger.close()
        tracking.finish(spec, {"test": {"accuracy": 0.5}, "epochs_completed": epochs[-1],
                               "best_checkpoint": f"s3://AKIAEXAMPLE:{SECRET}@bucket/runs/x/checkpoint_epoch_0001"})
        return spec["mlflow_run_id"]

    Path(out_dir).mkdir(parents=True)
    first = attempt(range(1, 3))
    checkpoint.mkdir()  # interrupted after a checkpoint: the next attempt resumes
    assert attempt(range(2, 4)) == first  # from the checkpoint of epoch 1

    storage.remove(out_dir)  # --fresh: the run folder loses its checkpoints before training starts over
    Path(out_dir).mkdir(parents=True)
    fresh = attempt(range(1, 2))
    assert fresh != first
    checkpoint.mkdir()  # the fresh run, interrupted and resumed, goes on in its own MLflow run
    assert attempt(range(2, 3)) == fresh

    client = MlflowClient(tracking.mlflow_uri(cfg))
    assert [m.step for m in client.get_metric_history(first, "valid_loss")] == [1, 2, 2, 3]
    assert [m.step for m in client.get_metric_history(fresh, "valid_loss")] == [1, 2]
    for run_id in (first, fresh):
        run = client.get_run(run_id)
        assert run.data.tags[tracking.RUN_DIR_TAG] == out_dir
        assert run.data.params["data.test"] == "s3://AKIAEXAMPLE:***@bucket/penguins-test.csv"
        assert run.data.tags["best_checkpoint"] == "s3://AKIAEXAMPLE:***@bucket/runs/x/checkpoint_epoch_0001"
    assert SECRET.encode() not in (tmp_path / "runs" / runs.MLFLOW_DB).read_bytes()


def small_checkpoint(folder: Path) -> Path:
    """A classification checkpoint of an untrained network on two columns (no data step)."""
    import torch

    from app import checkpoint as ckpt
    from app.config import ModelConfig
    from app.data.transform import CategoricalColumn, NumericColumn, PreprocessState
    from app.model import build_model

    state = PreprocessState(label="y", task="classification", numeric=[NumericColumn("x", 1.0, 2.0, True)],
                            categorical=[CategoricalColumn("c", ["a", "b"])], classes=["p", "q", "r"],
                            input_types={"x": "double", "c": "string"}, train_rows=100)
    torch.manual_seed(0)
    model_cfg = ModelConfig(kind="mlp", hidden=[8], num_embeddings="none")
    net = build_model(model_cfg, state)
    opt = torch.optim.AdamW(net.parameters())
    return ckpt.write_checkpoint(folder, model=net, optimizer=opt, state=state, model_cfg=model_cfg,
                                 scheduler=torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1.0),
                                 train_state={"epoch": 1, "progress": {}})


def test_a_finished_run_logs_its_model_config_and_report_beside_the_store(store_root, monkeypatch):
    """What `train` logs when it finishes, and `report` after it: the pyfunc model predicts
    as the checkpoint's Predictor, from its own copy of the checkpoint; every artifact lies
    under the store's folder, none in ./mlruns of the working directory."""
    import shutil

    import mlflow.pyfunc
    import numpy as np
    import pandas as pd
    from mlflow.tracking import MlflowClient

    from app.predictor import Predictor

    (store_root / "cwd").mkdir()
    monkeypatch.chdir(store_root / "cwd")  # MLflow's default artifact root would be ./mlruns here
    cfg = config(store_root).model_copy(update={"name": "logged"})  # the default store: runs/mlflow.db
    out_dir = runs.run_dir(cfg)
    checkpoint = small_checkpoint(store_root / "checkpoint")
    rng = np.random.default_rng(0)
    rows = pd.DataFrame({"x": rng.normal(size=40), "c": rng.choice(["a", "b", "z", None], 40), "note": "kept"})
    rows.loc[3, "x"] = np.nan
    expected = Predictor.from_checkpoint(checkpoint).predict(rows)
    storage.write_text(storage.join(out_dir, runs.CONFIG), cfg.to_yaml())

    spec = tracking.start(cfg, out_dir)
    tracking.finish(spec, {"test": {"accuracy": 0.5}, "epochs_completed": 1, "best_checkpoint": str(checkpoint)},
                    out_dir)
    tracking.log_report(cfg.to_yaml(), out_dir, "<!doctype html><title>report</title>")
    shutil.rmtree(checkpoint)  # the model carries its own copy

    uri, run_id = tracking.mlflow_uri(cfg), spec["mlflow_run_id"]
    client = MlflowClient(uri)
    store = (store_root / "runs" / runs.MLFLOW_ARTIFACTS).as_uri()
    run = client.get_run(run_id)
    assert run.info.artifact_uri.startswith(store + "/")
    assert {a.path for a in client.list_artifacts(run_id)} == {runs.CONFIG, runs.REPORT}
    logged_config = Path(run.info.artifact_uri.removeprefix("file://")) / runs.CONFIG
    assert "AKIAEXAMPLE:***@bucket" in logged_config.read_text()  # the config as the run folder has it
    (model,) = client.search_logged_models([run.info.experiment_id])
    assert model.name == tracking.MODEL_NAME and model.source_run_id == run_id
    assert model.artifact_location.startswith(store + "/")
    assert not (store_root / "cwd" / "mlruns").exists()

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # for runs:/ URIs; the app itself never sets it
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    predicted = mlflow.pyfunc.load_model(f"runs:/{run_id}/{tracking.MODEL_NAME}").predict(rows)
    pd.testing.assert_frame_equal(predicted, expected)
    assert SECRET.encode() not in (store_root / "runs" / runs.MLFLOW_DB).read_bytes()


@pytest.mark.parametrize("uri, where", [
    ("sqlite:////data/runs/mlflow.db", "file:///data/runs/mlflow-artifacts"),
    ("postgresql://u@db:5432/mlflow", "file:///srv/runs/mlflow-artifacts"),
    ("http://127.0.0.1:5000", None),  # a server keeps its own artifact store
    ("file:///data/mlruns", None),  # a file store keeps them inside itself
])
def test_a_new_experiment_keeps_its_artifacts_beside_its_store(uri, where):
    assert tracking.artifact_location(uri, "/srv/runs") == where
