"""Experiment tracking: every epoch's metrics to MLflow and TensorBoard.

    mlflow ui --backend-store-uri sqlite:///runs/mlflow.db      # needs `pip install mlflow`
    tensorboard --logdir runs/                                  # every run's <run>/tensorboard

The driver opens one MLflow run per training run or sweep trial and logs the resolved
config as parameters; rank 0 of the worker group logs each epoch as it is reported; the
driver adds the test metrics and closes the run. A run that resumes from its checkpoints
reopens its MLflow run; a run folder without checkpoints (a first run, or `--fresh`) gets a
new one. A tracking backend that fails never fails training: it warns once and goes quiet.
An HTTP tracking server that does not answer is found out within seconds (a probe, short
timeouts, few retries), not after MLflow's minutes of retries. Parameters and tags carry
URIs with their credentials redacted.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import tempfile
import threading
import time
from typing import Any
from urllib.parse import urlsplit

from app import runs, storage
from app.config import Config, flatten
from app.redact import redact, redact_tree

RUN_DIR_TAG = "app.run_dir"  # finds the MLflow run of a run folder again on resume
SKIPPED_KEYS = ("epoch", "time")  # epoch is the step; time is the timestamp
PROBE_TIMEOUT_S = 5.0  # an HTTP tracking server must answer within this, or tracking is off
# MLflow's own defaults wait 120 s per request and retry 7 times with growing pauses: minutes
# before a dead server is noticed. These apply unless the environment sets them.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "5", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


def mlflow_uri(cfg: Config) -> str | None:
    """The configured tracking URI, else a SQLite store beside the runs on local storage."""
    if not cfg.tracking.mlflow:
        return None
    if cfg.tracking.mlflow_uri:
        return cfg.tracking.mlflow_uri
    root = storage.absolute(cfg.run.storage)
    if storage.is_uri(root) and not root.startswith("file://"):
        return None
    return f"sqlite:///{root.removeprefix('file://')}/{runs.MLFLOW_DB}"


def quiet() -> None:
    """MLflow's log lines down to warnings, and its HTTP waits short (see HTTP_DEFAULTS)."""
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)


def warn_off(uri: str, error: BaseException) -> None:
    """The one warning that MLflow logging is off, with no credential of `uri` in it."""
    print(f"warning: MLflow logging is off: {redact(uri)}: {_describe(error)}", file=sys.stderr, flush=True)


def _describe(error: BaseException) -> str:
    return redact(" ".join(str(error).split())[:300]) or type(error).__name__


def check_reachable(uri: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Raise ConnectionError unless an http(s) tracking server answers within `timeout_s`
    (any HTTP status counts: it is there). Other stores (SQLite, files, databricks) pass.

    The request runs on a daemon thread that is given up on after `timeout_s`, since no
    timeout of `requests` bounds a name lookup that hangs."""
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https"):
        return
    outcome: list[BaseException | None] = []

    def probe() -> None:
        import requests

        try:
            requests.get(uri, timeout=timeout_s / 2, allow_redirects=False)
            outcome.append(None)
        except requests.RequestException as e:
            outcome.append(e)

    thread = threading.Thread(target=probe, name="app-mlflow-probe", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if not outcome:
        raise ConnectionError(f"no answer within {timeout_s:.0f} s")
    if outcome[0] is not None:
        import requests

        e = outcome[0]
        what = (f"no answer within {timeout_s:.0f} s" if isinstance(e, requests.Timeout) else
                f"cannot connect to {parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}")
        raise ConnectionError(f"{what} ({type(e).__name__})")


def start(cfg: Config, out_dir: str) -> dict[str, Any]:
    """Open the run's MLflow run (the same one again when resuming); the spec rank 0 logs with."""
    spec: dict[str, Any] = {"tensorboard": cfg.tracking.tensorboard, "mlflow_uri": None, "mlflow_run_id": None}
    uri = mlflow_uri(cfg)
    if uri is None:
        if cfg.tracking.mlflow:
            print("note: MLflow logging is off: run.storage is remote and tracking.mlflow_uri is not set")
        return spec
    try:
        check_reachable(uri)
        spec["mlflow_run_id"] = _open_run(uri, cfg, out_dir, resume=has_checkpoints(out_dir))
        spec["mlflow_uri"] = uri
    except Exception as e:  # noqa: BLE001 - tracking is an extra; training goes on
        warn_off(uri, e)
    return spec


def has_checkpoints(out_dir: str) -> bool:
    """Whether the run folder holds checkpoints, so that training resumes rather than starts."""
    return any(e.is_dir and e.name.startswith(runs.CHECKPOINT_PREFIX) for e in storage.listdir(out_dir))


def ensure_experiment(uri: str, name: str) -> str | None:
    """The experiment's id, created if new; None (with a warning) if the store fails."""
    try:
        check_reachable(uri)
        return _experiment(uri, name)
    except Exception as e:  # noqa: BLE001
        warn_off(uri, e)
        return None


def _experiment(uri: str, name: str) -> str:
    quiet()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    return experiment.experiment_id if experiment else client.create_experiment(name)


def _open_run(uri: str, cfg: Config, out_dir: str, *, resume: bool) -> str:
    """The newest MLflow run of this run folder when resuming, else a new one."""
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    experiment_id = _experiment(uri, cfg.tracking.experiment or cfg.name)
    client = MlflowClient(uri)
    tag = redact(out_dir)
    if resume:
        found = client.search_runs([experiment_id], filter_string=f"tags.`{RUN_DIR_TAG}` = '{tag}'",
                                   max_results=1, order_by=["attributes.start_time DESC"])
        if found:
            client.update_run(found[0].info.run_id, status="RUNNING")
            return found[0].info.run_id
    run = client.create_run(experiment_id, run_name=cfg.name, tags={RUN_DIR_TAG: tag})
    params = redact_tree(flatten({k: v for k, v in cfg.to_dict().items() if k not in ("tune", "tracking")}))
    client.log_batch(run.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
    return run.info.run_id


def finish(spec: dict[str, Any], metrics: dict[str, Any]) -> None:
    """Add the test metrics and the best checkpoint to the MLflow run and close it."""
    if not spec.get("mlflow_run_id"):
        return
    try:
        quiet()
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        client = MlflowClient(spec["mlflow_uri"])
        now = int(time.time() * 1000)
        values = [Metric(f"test_{k}", float(v), now, metrics.get("epochs_completed", 0))
                  for k, v in metrics.get("test", {}).items() if isinstance(v, (int, float))]
        client.log_batch(spec["mlflow_run_id"], metrics=values)
        client.set_tag(spec["mlflow_run_id"], "best_checkpoint", redact(metrics.get("best_checkpoint", "")))
        client.set_terminated(spec["mlflow_run_id"], "FINISHED")
    except Exception as e:  # noqa: BLE001
        print(f"warning: MLflow: could not close the run: {_describe(e)}", file=sys.stderr)


class EpochLogger:
    """Rank 0's sinks for each reported epoch record, written by a background thread so
    that a slow tracking store never holds up the other ranks."""

    def __init__(self, spec: dict[str, Any] | None, filesystem, run_path: str):
        from concurrent.futures import ThreadPoolExecutor

        spec = spec or {}
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="app-tracking")
        self.client, self.run_id = None, spec.get("mlflow_run_id")
        self.writer, self.sync = None, None
        # Opening imports MLflow and TensorBoard (about a second each): off the training thread too.
        if self.run_id:
            self.pool.submit(self._guard, "MLflow", self._open_mlflow, spec["mlflow_uri"])
        if spec.get("tensorboard"):
            self.pool.submit(self._guard, "TensorBoard", self._open_tensorboard, filesystem,
                             f"{run_path}/{runs.TENSORBOARD}")

    def _open_mlflow(self, uri: str) -> None:
        quiet()
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(uri)

    def _open_tensorboard(self, filesystem, path: str) -> None:
        from torch.utils.tensorboard import SummaryWriter

        if storage.is_local(filesystem):
            self.writer = SummaryWriter(log_dir=path)
        else:  # written locally, copied to the run folder after each epoch
            local = tempfile.mkdtemp(prefix="app-tensorboard-")
            self.writer = SummaryWriter(log_dir=local)
            self.sync = lambda: storage.upload_dir(local, filesystem, path)

    def log(self, record: dict[str, Any]) -> None:
        self.pool.submit(self._log, dict(record))

    def _log(self, record: dict[str, Any]) -> None:
        step = int(record["epoch"])
        values = {k: float(v) for k, v in record.items()
                  if k not in SKIPPED_KEYS and isinstance(v, (int, float)) and not math.isnan(v)}
        if self.client is not None:
            from mlflow.entities import Metric

            ts = int(record.get("time", time.time()) * 1000)
            self._guard("MLflow", self.client.log_batch, self.run_id,
                        metrics=[Metric(k, v, ts, step) for k, v in values.items()])
        if self.writer is not None:
            def write() -> None:
                for k, v in values.items():
                    self.writer.add_scalar(k, v, step)
                self.writer.flush()
                if self.sync:
                    self.sync()
            self._guard("TensorBoard", write)

    def close(self) -> None:
        self.pool.shutdown(wait=True)  # every epoch logged before the run reports its end
        if self.writer is not None:
            self._guard("TensorBoard", self.writer.close)

    def _guard(self, what: str, fn, *args, **kwargs) -> None:
        try:
            fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - tracking never stops training
            print(f"warning: {what} logging is off: {_describe(e)}", file=sys.stderr, flush=True)
            if what == "MLflow":
                self.client = None
            else:
                self.writer = None

