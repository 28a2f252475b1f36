"""Experiment tracking: every epoch's metrics to MLflow and TensorBoard.

    mlflow ui --backend-store-uri sqlite:///runs/mlflow.db      # needs `pip install mlflow`
    tensorboard --logdir runs/                                  # every run's <run>/tensorboard

One MLflow run per training run or sweep trial, with the resolved config as parameters,
each epoch as rank 0 of the worker group reports it, and the test metrics at the end. A
training run also logs its best checkpoint as an MLflow `pyfunc` model named `model`
(app/mlflow_model.py: `mlflow.pyfunc.load_model("runs:/<id>/model").predict(df)` is the
app's `predict`) and its config.yaml; `report` adds report.html. A new experiment keeps its
artifacts beside its store (`artifact_location`), not in `./mlruns` of whatever folder the
process runs in. A
sweep trial opens it in the trial and rank 0 logs to it directly (`start`). `train` hands
it to a small Ray actor beside the driver (`start_in_actor`), which opens the run while the
driver prepares the data and starts the workers: MLflow's import and its store (seconds;
more for a new SQLite store) are then off the run's critical path, and neither the driver
nor rank 0 imports MLflow. A run that resumes from its checkpoints reopens its MLflow run;
a run folder without checkpoints (a first run, or `--fresh`) gets a new one. A tracking
backend that fails never fails training: it warns once and goes quiet.
An HTTP tracking server that does not answer is found out within seconds (a probe, short
timeouts, few retries), not after MLflow's minutes of retries. Parameters and tags carry
URIs with their credentials redacted.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from app import runs, storage
from app.config import Config, flatten
from app.redact import redact, redact_tree

log = logging.getLogger(__name__)

RUN_DIR_TAG = "app.run_dir"  # finds the MLflow run of a run folder again on resume
SKIPPED_KEYS = ("epoch", "time")  # epoch is the step; time is the timestamp
PROBE_TIMEOUT_S = 5.0  # an HTTP tracking server must answer within this, or tracking is off
# MLflow's own defaults wait 120 s per request and retry 7 times with growing pauses: minutes
# before a dead server is noticed. These apply unless the environment sets them.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "5", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
MODEL_NAME = "model"  # the logged model: runs:/<MLflow run id>/model
MODEL_CODE = Path(__file__).with_name("mlflow_model.py")  # the pyfunc's code, copied into the model
DATABASES = ("sqlite", "postgresql", "mysql", "mssql")  # tracking URI schemes of database stores
PROGRESS_BAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


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


def require_installed(cfg: Config) -> None:
    """A UserError naming `raytab[tracking]` when the config turns on a tracking backend whose
    package is not installed (the core install has neither MLflow nor TensorBoard)."""
    from app.extras import require

    off = " (or set tracking.mlflow: false and tracking.tensorboard: false)"
    uri = mlflow_uri(cfg)
    if uri is not None:
        database = _scheme(uri) in DATABASES
        require("tracking", "mlflow", *(["alembic"] if database else []), what="tracking.mlflow", hint=off)
    if cfg.tracking.tensorboard:
        require("tracking", "tensorboard", what="tracking.tensorboard", hint=off)


def _scheme(uri: str) -> str:
    return uri.split(":", 1)[0].split("+", 1)[0] if ":" in uri else ""


def artifact_location(uri: str, storage_root: str | None = None) -> str | None:
    """Where a new experiment of the store at `uri` keeps its runs' artifacts: a folder beside
    a SQLite file; for another database, `<storage_root>/mlflow-artifacts` (the run storage).
    None where the store decides (a tracking server, a file store, Databricks): MLflow's own
    default for a database is `./mlruns` of the working directory, a different folder for
    each process (a Ray actor's is Ray's session folder)."""
    scheme = _scheme(uri)
    if scheme == "sqlite":
        database = uri.split(":///", 1)[1] if ":///" in uri else ""
        if database and database != ":memory:":
            return (Path(database).expanduser().resolve().parent / runs.MLFLOW_ARTIFACTS).as_uri()
        return None
    if scheme in DATABASES and storage_root:
        root = storage.absolute(storage_root)
        return storage.join(root, runs.MLFLOW_ARTIFACTS) if storage.is_uri(root) else \
            (Path(root) / runs.MLFLOW_ARTIFACTS).as_uri()
    return None


def quiet() -> None:
    """MLflow's log lines down to warnings, and its HTTP waits short (see HTTP_DEFAULTS)."""
    import mlflow  # noqa: F401 - its import sets its loggers to INFO: imported first, then turned down

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)


def warn_off(uri: str, error: BaseException) -> None:
    """The one warning that MLflow logging is off, with no credential of `uri` in it."""
    log.warning(off_warning(uri, error))


def off_warning(uri: str, error: BaseException) -> str:
    return f"MLflow logging is off: {redact(uri)}: {_describe(error)}"


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
            log.info("note: MLflow logging is off: run.storage is remote and tracking.mlflow_uri is not set")
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


def ensure_experiment(uri: str, name: str, storage_root: str | None = None) -> str | None:
    """The experiment's id, created if new (`artifact_location`); None (with a warning) if
    the store fails."""
    try:
        check_reachable(uri)
        return _experiment(uri, name, artifact_location(uri, storage_root))
    except Exception as e:  # noqa: BLE001
        warn_off(uri, e)
        return None


def _experiment(uri: str, name: str, artifacts: str | None = None) -> str:
    """The id of experiment `name`, created with its artifacts at `artifacts` if new (an
    existing experiment keeps the location it was created with)."""
    quiet()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    return experiment.experiment_id if experiment else client.create_experiment(name, artifact_location=artifacts)


def _open_run(uri: str, cfg: Config, out_dir: str, *, resume: bool) -> str:
    """The newest MLflow run of this run folder when resuming, else a new one."""
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    experiment_id = _experiment(uri, cfg.tracking.experiment or cfg.name, artifact_location(uri, cfg.run.storage))
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


def finish(spec: dict[str, Any], metrics: dict[str, Any], out_dir: str | None = None) -> None:
    """Add the test metrics and the best checkpoint to the MLflow run and close it; with the
    run folder `out_dir` (`train`), also its model, config.yaml and report (`log_outputs`)."""
    if spec.get("mlflow_actor") is not None:
        _finish_in_actor(spec, metrics)
        return
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
        if out_dir is not None:
            log_outputs(client, spec["mlflow_run_id"], out_dir, metrics.get("best_checkpoint"))
        client.set_terminated(spec["mlflow_run_id"], "FINISHED")
    except Exception as e:  # noqa: BLE001
        log.warning(f"MLflow: could not close the run: {_describe(e)}")


# ---------------------------------------------------------------- artifacts: model, config, report


def log_outputs(client, run_id: str, out_dir: str, checkpoint: str | None) -> None:
    """Log the run folder's config.yaml and report.html (those that exist) as artifacts of the
    MLflow run, and the best checkpoint as its `pyfunc` model. Each that fails warns, and the
    others are still logged."""
    with tempfile.TemporaryDirectory(prefix="app-mlflow-") as tmp:
        for name in (runs.CONFIG, runs.REPORT):
            try:
                text = storage.read_text(storage.join(out_dir, name))
                if text is not None:
                    (Path(tmp) / name).write_text(text)
                    client.log_artifact(run_id, str(Path(tmp) / name))
            except Exception as e:  # noqa: BLE001 - tracking never fails the run
                log.warning(f"MLflow: could not log {name}: {_describe(e)}")
    if checkpoint:
        try:
            log_model(client, run_id, checkpoint)
        except Exception as e:  # noqa: BLE001
            log.warning(f"MLflow: could not log the model: {_describe(e)}")


def log_model(client, run_id: str, checkpoint: str) -> str:
    """Log `checkpoint` as the MLflow run's model `MODEL_NAME`: a `pyfunc` model from code
    (app/mlflow_model.py) with the checkpoint folder as its one artifact. Through the client,
    so no process-wide MLflow setting (tracking URI, active run) is touched. Its id."""
    import mlflow.pyfunc

    with tempfile.TemporaryDirectory(prefix="app-mlflow-model-") as tmp:
        folder = checkpoint
        if storage.is_uri(checkpoint):  # a checkpoint in object storage: a local copy to log
            folder = str(Path(tmp) / "checkpoint")
            storage.download(checkpoint, folder)
        model = str(Path(tmp) / MODEL_NAME)
        pyfunc = logging.getLogger("mlflow.pyfunc")
        level, bar = pyfunc.level, os.environ.get(PROGRESS_BAR)
        pyfunc.setLevel(logging.ERROR)  # "cannot infer a signature": there is none to give, by design
        os.environ[PROGRESS_BAR] = "false"  # no bar for copying the checkpoint into the model
        try:
            mlflow.pyfunc.save_model(model, python_model=str(MODEL_CODE), artifacts={"checkpoint": folder},
                                     pip_requirements=requirements())
        finally:
            pyfunc.setLevel(level)
            if bar is None:
                os.environ.pop(PROGRESS_BAR, None)
            else:
                os.environ[PROGRESS_BAR] = bar
        experiment_id = client.get_run(run_id).info.experiment_id
        logged = client.create_logged_model(experiment_id, name=MODEL_NAME, source_run_id=run_id)
        try:
            client.log_model_artifacts(logged.model_id, model)
        except Exception:
            client.finalize_logged_model(logged.model_id, "FAILED")
            raise
        client.finalize_logged_model(logged.model_id, "READY")
        return logged.model_id


def requirements() -> list[str]:
    """The model's pip requirements, pinned to what is installed here (MLflow's inference of
    them would load the model in a subprocess: seconds)."""
    from importlib.metadata import PackageNotFoundError, version

    pinned = []
    for name in ("raytab", "torch", "pandas", "pyarrow", "numpy"):
        try:
            pinned.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            pass
    return pinned


def log_report(config_text: str, run_dir: str, page: str) -> None:
    """Add a training run's report (just written by `report`) to its MLflow run, found by
    the run folder's tag, when the run's config logs to MLflow and MLflow is installed;
    nothing otherwise. A store that fails warns once."""
    import importlib.util

    from app.config import from_dict, parse_yaml

    try:
        cfg = from_dict(parse_yaml(config_text), runs.CONFIG)
    except Exception:  # noqa: BLE001 - an old or edited config.yaml: no MLflow run to find by it
        return
    uri = mlflow_uri(cfg)
    if uri is None or importlib.util.find_spec("mlflow") is None:
        return
    if _scheme(uri) == "sqlite" and not Path(uri.split(":///", 1)[-1]).expanduser().is_file():
        return  # no store: the run did not log to MLflow (opening it would create one)
    try:
        check_reachable(uri)
        quiet()
        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name(cfg.tracking.experiment or cfg.name)
        if experiment is None:
            return
        tags = {redact(storage.absolute(run_dir)), redact(runs.run_dir(cfg))}
        found = [r for tag in sorted(tags) for r in
                 client.search_runs([experiment.experiment_id], filter_string=f"tags.`{RUN_DIR_TAG}` = '{tag}'",
                                    max_results=1, order_by=["attributes.start_time DESC"])]
        if not found:
            return
        newest = max(found, key=lambda r: r.info.start_time)
        with tempfile.TemporaryDirectory(prefix="app-mlflow-") as tmp:
            (Path(tmp) / runs.REPORT).write_text(page)
            client.log_artifact(newest.info.run_id, str(Path(tmp) / runs.REPORT))
    except Exception as e:  # noqa: BLE001 - the report is written; MLflow is an extra
        log.warning(f"MLflow: could not log the report: {_describe(e)}")


def _epoch_metrics(record: dict[str, Any]) -> list:
    """An epoch record as MLflow metrics: every number but the step and the timestamp."""
    from mlflow.entities import Metric

    step, ts = int(record["epoch"]), int(record.get("time", time.time()) * 1000)
    return [Metric(k, v, ts, step) for k, v in _epoch_values(record).items()]


def _epoch_values(record: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in record.items()
            if k not in SKIPPED_KEYS and isinstance(v, (int, float)) and not math.isnan(v)}


# ---------------------------------------------------------------- `train`: MLflow in an actor


def start_in_actor(cfg: Config, out_dir: str) -> dict[str, Any]:
    """`start` for `train`, in two steps that do not wait: this one starts an `MlflowRun`
    actor on this node (a SQLite store is a file here), which imports MLflow and opens the
    store while the caller prepares the data; `open_run` then has it open the MLflow run
    with the resolved config. Rank 0 logs epochs to the actor; `finish` closes the run and
    ends the actor, `release` just ends it."""
    require_installed(cfg)
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    spec: dict[str, Any] = {"tensorboard": cfg.tracking.tensorboard, "mlflow_uri": None, "mlflow_run_id": None,
                            "mlflow_actor": None}
    uri = mlflow_uri(cfg)
    if uri is None:
        if cfg.tracking.mlflow:
            log.info("note: MLflow logging is off: run.storage is remote and tracking.mlflow_uri is not set")
        return spec
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    spec["mlflow_uri"] = uri
    spec["mlflow_actor"] = ray.remote(num_cpus=0)(MlflowRun).options(scheduling_strategy=here).remote(
        uri, cfg.tracking.experiment or cfg.name, out_dir, resume=has_checkpoints(out_dir),
        artifacts=artifact_location(uri, cfg.run.storage))
    return spec


def open_run(spec: dict[str, Any], cfg: Config) -> None:
    """Have the actor of `start_in_actor` open the MLflow run with `cfg` (resolved) as its
    parameters. A thread prints the warning, if MLflow logging is off, as soon as it is
    known."""
    actor = spec.get("mlflow_actor")
    if actor is not None:
        _ANNOUNCERS[actor] = threading.Thread(target=_announce, args=(actor, actor.open.remote(cfg), spec["mlflow_uri"]),
                                              name="app-mlflow-open", daemon=True)
        _ANNOUNCERS[actor].start()


_ANNOUNCERS: dict[Any, threading.Thread] = {}  # MlflowRun actor -> the thread that reports how opening went


def _announce(actor, opened, uri: str) -> None:
    import ray

    try:
        problem = ray.get(opened)
    except Exception as e:  # noqa: BLE001 - the actor died: the run goes on without MLflow
        problem = off_warning(uri, e)
    if problem and actor in _ANNOUNCERS:  # not when `release` ended the actor first
        log.warning(problem)


def _finish_in_actor(spec: dict[str, Any], metrics: dict[str, Any]) -> None:
    import ray

    actor = spec["mlflow_actor"]
    if actor in _ANNOUNCERS:
        _ANNOUNCERS[actor].join()  # a warning about opening the run comes first, and once
    try:
        ray.get(actor.finish.remote(metrics))
    except Exception as e:  # noqa: BLE001
        log.warning(f"MLflow: could not close the run: {_describe(e)}")
    release(spec)


def release(spec: dict[str, Any]) -> None:
    """End the actor of `start_in_actor`, if it is still there: after `finish`, or when the
    run failed (its MLflow run, if opened, stays as it was: a resumed run reopens it)."""
    actor = spec.pop("mlflow_actor", None)
    if actor is not None:
        import ray

        _ANNOUNCERS.pop(actor, None)
        ray.kill(actor, no_restart=True)


class MlflowRun:
    """The MLflow run of one `train`, held by a Ray actor (`start_in_actor`). Its methods
    never raise: a store that fails switches MLflow off for the run, with one warning."""

    def __init__(self, uri: str, experiment: str, out_dir: str, resume: bool, artifacts: str | None = None):
        quiet()
        self.uri, self.out_dir, self.resume = uri, out_dir, resume
        self.client, self.run_id, self.problem = None, None, None
        try:
            check_reachable(uri)
            _experiment(uri, experiment, artifacts)  # imports MLflow and opens the store (creating it): the slow part
        except Exception as e:  # noqa: BLE001 - tracking is an extra; training goes on
            self.problem = off_warning(uri, e)

    def open(self, cfg: Config) -> str | None:
        """Open the MLflow run; None, or the warning that MLflow logging is off (the driver
        prints it, without this actor's prefix)."""
        if self.problem is None:
            try:
                from mlflow.tracking import MlflowClient

                self.run_id = _open_run(self.uri, cfg, self.out_dir, resume=self.resume)
                self.client = MlflowClient(self.uri)
            except Exception as e:  # noqa: BLE001
                self.problem = off_warning(self.uri, e)
        return self.problem

    def log(self, record: dict[str, Any]) -> None:
        if self.client is not None:
            try:
                self.client.log_batch(self.run_id, metrics=_epoch_metrics(record))
            except Exception as e:  # noqa: BLE001 - tracking never stops training
                log.warning(off_warning(self.uri, e))
                self.client = None

    def finish(self, metrics: dict[str, Any]) -> None:
        if self.client is not None:
            finish({"mlflow_uri": self.uri, "mlflow_run_id": self.run_id}, metrics, self.out_dir)


# ---------------------------------------------------------------- rank 0


class EpochLogger:
    """Rank 0's sinks for each reported epoch record, written by a background thread so
    that a slow tracking store never holds up the other ranks."""

    def __init__(self, spec: dict[str, Any] | None, filesystem, run_path: str):
        from concurrent.futures import ThreadPoolExecutor

        spec = spec or {}
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="app-tracking")
        self.client, self.run_id = None, spec.get("mlflow_run_id")
        self.actor, self.logged = spec.get("mlflow_actor"), None  # `train`: epochs go to its MlflowRun actor
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
        step, values = int(record["epoch"]), _epoch_values(record)
        if self.actor is not None:
            self.logged = self.actor.log.remote(record)
        if self.client is not None:
            self._guard("MLflow", self.client.log_batch, self.run_id, metrics=_epoch_metrics(record))
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
        if self.logged is not None:  # ... by the actor too (it warns itself if MLflow fails)
            import ray

            self._guard("MLflow", ray.get, self.logged)
        if self.writer is not None:
            self._guard("TensorBoard", self.writer.close)

    def _guard(self, what: str, fn, *args, **kwargs) -> None:
        try:
            fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - tracking never stops training
            log.warning(f"{what} logging is off: {_describe(e)}")
            if what == "MLflow":
                self.client = None
            else:
                self.writer = None

