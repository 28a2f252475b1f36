"""The Python API: what each command does, as functions that return objects.

    import app
    result = app.train("configs/quickstart.yaml", overrides)  # or a dict, or an app.Config
    result.metrics["test"], result.metrics_dataframe, result.checkpoint, result.path
    model = app.load_model(result.checkpoint)                 # or a path/URI, or a run folder
    model.predict(df), model.predict_proba(df), model.evaluate(df)

Each function is the sequence of its command: config, the checks that need no Ray, the run
folder's lease, connecting to Ray, the work. `python -m app` (app/cli.py) only parses its
arguments, calls these and prints.

Ray: a Ray the caller started (`ray.init()`), or the cluster at `address` /
$RAY_ADDRESS, is used and left running. Without one, the first call starts a local Ray
that stays up for the rest of the Python session, so later calls do not pay its start
again (as Ray Data and Ray Train do). Bad input raises `UserError`, whose message names the config key, or the
command-line flag of the same name as the parameter (`--checkpoint`, `--input`); the library logs
through the `app` logger (app/logs.py) and never prints or exits.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

from app.config import Config, is_in_memory, is_staged
from app.errors import UserError

if TYPE_CHECKING:
    import pandas as pd
    import ray.data
    import ray.train

    from app.predictor import Predictor

log = logging.getLogger(__name__)

__all__ = ["Config", "Model", "RunResult", "SweepResult", "UserError", "baseline", "evaluate", "init_config",
           "load_config", "load_model", "predict", "train", "tune"]


# ---------------------------------------------------------------- config


def load_config(config: str | os.PathLike | Mapping[str, Any] | Config,
                overrides: Mapping[str, Any] | None = None) -> Config:
    """A validated `Config` from a YAML file, a dict of config sections, or a `Config`, with
    `overrides` applied: dotted keys as `--set` takes them (`{"train.epochs": 5}`), values
    as Python objects. Refused with the same messages as the command line."""
    from app import config as configs

    if isinstance(config, Config) and not overrides:
        return config
    if isinstance(config, Config):
        tree, source = config.model_dump(), f"config {config.name!r}"
    elif isinstance(config, Mapping):
        tree, source = _copy_tree(config), "config"
    elif isinstance(config, (str, os.PathLike)):
        tree, source = configs.read_tree(config), str(config)
    else:
        raise UserError(f"config: expected a path to a YAML file, a dict or an app.Config, "
                        f"got {type(config).__name__}")
    for key, value in (overrides or {}).items():
        if not isinstance(key, str) or not key:
            raise UserError(f"overrides: expected dotted config keys such as 'train.epochs', got {key!r}")
        configs.apply_override(tree, key, value)
    return configs.from_dict(tree, source, frozenset(overrides or ()))


def _copy_tree(tree: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the dicts and lists of a config tree; its leaves (a DataFrame too) shared."""
    def copy(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: copy(v) for k, v in value.items()}
        if isinstance(value, list):
            return [copy(v) for v in value]
        return value

    return copy(tree)


# ---------------------------------------------------------------- results


@dataclass(frozen=True)
class RunResult:
    """A finished training run, named as `ray.train.Result` names its parts."""

    path: str
    """The run folder (a local path or a URI)."""
    metrics: dict[str, Any] = field(repr=False)
    """What the run's metrics.json holds: `task`, `valid`, `test`, `history`, `best_checkpoint`, ..."""

    @classmethod
    def from_folder(cls, path: str | os.PathLike) -> RunResult:
        """The result of the finished run (or sweep) in the folder `path`."""
        from app import runs, storage

        folder = storage.absolute(str(path))
        metrics = storage.read_json(storage.join(folder, runs.METRICS))
        if not isinstance(metrics, dict):
            raise UserError(f"{folder}: not a finished run (no {runs.METRICS})")
        return cls(folder, metrics)

    @property
    def metrics_dataframe(self) -> pd.DataFrame:
        """One row per completed epoch: epoch, time, losses and validation metrics."""
        import pandas as pd

        return pd.DataFrame(self.metrics.get("history", []))

    @property
    def checkpoint(self) -> ray.train.Checkpoint:
        """The best checkpoint (by `run.checkpoint.metric`)."""
        import ray.train

        return ray.train.Checkpoint(self.metrics["best_checkpoint"])

    @property
    def config(self) -> Config:
        """The resolved config that ran (the folder's config.yaml)."""
        from app import runs, storage

        return load_config_text(storage.join(self.path, runs.CONFIG))


def load_config_text(uri: str) -> Config:
    from app import config as configs
    from app import storage

    text = storage.read_text(uri)
    if text is None:
        raise UserError(f"{uri} does not exist")
    return configs.from_dict(configs.parse_yaml(text), uri)


@dataclass(frozen=True)
class SweepResult:
    """A finished sweep: its leaderboard, the best trial's config and that trial's result."""

    path: str
    """The sweep folder."""

    @cached_property
    def metrics(self) -> dict[str, Any]:
        """What the sweep's metrics.json holds: the best trial's metrics, `best_trial`,
        `best_overrides`, `trials`, ..."""
        return RunResult.from_folder(self.path).metrics

    @cached_property
    def leaderboard(self) -> pd.DataFrame:
        """One row per trial, best first: trial id, status, epochs, each searched key, the metric."""
        import io

        import pandas as pd

        from app import runs, storage

        return pd.read_csv(io.StringIO(storage.read_text(storage.join(self.path, runs.LEADERBOARD)) or ""))

    @cached_property
    def best_config(self) -> Config:
        """The best trial's config, named `<sweep>-best`: `app.train(sweep.best_config)` trains it again."""
        from app import runs, storage

        return load_config_text(storage.join(self.path, runs.BEST_CONFIG))

    @cached_property
    def best(self) -> RunResult:
        """The best trial: its folder, and the metrics of its best checkpoint."""
        from app import storage

        return RunResult(storage.parent(self.metrics["best_checkpoint"]), self.metrics)


# ---------------------------------------------------------------- train and tune


def train(config: str | os.PathLike | Mapping[str, Any] | Config, *, fresh: bool = False,
          address: str | None = None) -> RunResult:
    """Train as `config` says (a path, a dict or a `Config`; `data.train`/`data.test` may be
    a path or URI, a pandas DataFrame or a ray.data.Dataset) and return the run's result.

    The run folder is `<run.storage>/<name>`. A run of that name that finished is returned
    as it is; one that was interrupted resumes from its newest intact checkpoint; `fresh`
    deletes the folder (only if this app wrote it) and starts over. One driver at a time
    holds a run folder (its lease); a second is refused."""
    from app import cluster, lease, runs
    from app.runner import finished_metrics, import_in_background, preflight, run_training, wants_dashboard

    cfg = load_config(config)
    folder = runs.run_dir(cfg)
    with _process_settings():
        if _in_memory(cfg):
            return _train_in_memory(cfg, folder, fresh=fresh, address=address)
        if not fresh and finished_metrics(cfg) is not None:
            return RunResult.from_folder(folder)
        inputs = preflight(cfg)  # no Ray yet: bad input fails in a second, before `fresh` deletes anything
        import_in_background()  # torch loads while the lease settles and Ray starts
        with lease.run_folder(folder, fresh=fresh, what="run"), _run_log(folder):
            ray_start_s = cluster.connect(address, dashboard=wants_dashboard(cfg, inputs)) or None  # None: Ray was up
            run_training(cfg, inputs, ray_start_s=ray_start_s)
    return RunResult.from_folder(folder)


def _train_in_memory(cfg: Config, folder: str, *, fresh: bool, address: str | None) -> RunResult:
    """`train` with a DataFrame, a Dataset or a SQL source: saved into the run folder first (under its
    lease), then read from there like any file (app/data/in_memory.py)."""
    from app import cluster, lease, storage
    from app.data import in_memory
    from app.runner import finished_metrics, preflight, run_training

    storage.check_writable(storage.absolute(cfg.run.storage), "run.storage")
    ray_start_s = cluster.connect(address, dashboard=cfg.run.dashboard is True) or None
    with lease.run_folder(folder, fresh=fresh, what="run"), _run_log(folder):
        cfg = in_memory.stage(cfg, folder)  # refuses data other than what an earlier attempt saved
        if finished_metrics(cfg) is None:
            run_training(cfg, preflight(cfg), ray_start_s=ray_start_s)
    return RunResult.from_folder(folder)


def _in_memory(cfg: Config) -> bool:
    """Whether the run's data must be saved into its folder first (a DataFrame, a Dataset,
    a SQL source)."""
    return is_staged(cfg.data.train) or is_staged(cfg.data.test)


def tune(config: str | os.PathLike | Mapping[str, Any] | Config, *, resume: bool = False, fresh: bool = False,
         address: str | None = None) -> SweepResult:
    """Sweep the config's `tune.space` with Ray Tune over the same trainer as `train`.

    A sweep of this name that finished is returned as it is, unless `resume` (continue its
    failed or interrupted trials) or `fresh` (delete it and start over); one that was
    interrupted is refused without either."""
    from app import cluster, lease, runs, storage
    from app.data import in_memory
    from app.runner import finished_metrics, preflight
    from app.tuning import run_tune, search_space

    if resume and fresh:
        raise UserError("resume and fresh: choose one")
    cfg = load_config(config)
    folder = runs.run_dir(cfg)
    search_space(cfg)  # a bad space fails before Ray starts
    with _process_settings():
        if not (fresh or resume) and finished_metrics(cfg) is not None:
            return SweepResult(folder)  # (with `resume`, a sweep whose trials failed continues them)
        staged = _in_memory(cfg)
        inputs = None if staged else preflight(cfg)
        if not (resume or fresh) and storage.exists(folder):
            raise UserError(f"{folder} holds an unfinished sweep; pass --resume to continue it "
                            f"or --fresh to start over")
        if staged:
            storage.check_writable(storage.absolute(cfg.run.storage), "run.storage")
        with lease.run_folder(folder, fresh=fresh, what="sweep"), _run_log(folder):
            cluster.connect(address)
            if staged:
                cfg = in_memory.stage(cfg, folder)
                inputs = preflight(cfg)
            run_tune(cfg, inputs, resume=resume)
    return SweepResult(folder)


@contextmanager
def _run_log(folder: str) -> Iterator[None]:
    """While inside, what this process prints also goes to the folder's train.log (app/logs.py
    `run_log`), appended to an earlier attempt's. A run that fails before writing anything
    else does not keep it: a refused run leaves no folder (app/lease.py)."""
    from app import logs, runs, storage

    uri = storage.join(folder, runs.TRAIN_LOG)
    try:
        with logs.run_log(uri):
            yield
    except BaseException:
        with suppress(OSError):  # (the run's own error is the one to see)
            if {e.name for e in storage.listdir(folder)} <= {runs.TRAIN_LOG, runs.LEASE, storage.OWNED}:
                storage.remove(uri)
        raise


def baseline(config: str | os.PathLike | Mapping[str, Any] | Config, *, address: str | None = None
             ) -> dict[str, Any]:
    """scikit-learn baselines (RandomForest, HistGradientBoosting) fitted on the config's
    train split and scored on its valid and test splits; also written to the run folder's
    baselines.json. {model name: {"valid": metrics, "test": metrics, ...}}."""
    from app import cluster
    from app.baselines import run_baselines
    from app.data.prepare import prepare
    from app.runner import preflight

    cfg = load_config(config)
    if _in_memory(cfg):
        raise UserError("baseline: data.train must be a path or URI here; train with app.train first and pass "
                        "the run's config (RunResult.config), whose data the run saved")
    with _process_settings():
        inputs = preflight(cfg)
        cluster.connect(address)
        return run_baselines(cfg, prepare(cfg, inputs))


def init_config(data: str, label: str, *, output: str | os.PathLike | None = None, name: str | None = None,
                task: str = "auto", force: bool = False) -> str:
    """Write a commented starter config for the table at `data` (any source `data.train`
    takes) predicting column `label`, which `train` runs as it is; return the path written.
    `output`: a local file, default `<name>.yaml` in the current folder; `name`: the run
    name, default the data file's stem. Only the first file's header and first rows are
    read, without Ray. An existing `output` is refused unless `force`."""
    import tempfile

    from app.starter import default_name, starter_config

    data = os.fspath(data) if isinstance(data, os.PathLike) else data
    if not isinstance(data, str) or not data:
        raise UserError(f"data: expected a path or URI of CSV/Parquet files, got {type(data).__name__}")
    path = os.fspath(output) if output is not None else f"{name or default_name(data)}.yaml"
    if os.path.isdir(path):
        raise UserError(f"--output: {path} is a folder; give a file name such as {name or default_name(data)}.yaml")
    if os.path.lexists(path) and not force:
        raise UserError(f"--output: {path} exists; pass --force to replace it")
    text = starter_config(data, label, name=name, task=task, config_path=path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UserError(f"--output: no folder {folder} to write {path} in")
    tmp = None
    try:  # written whole under a hidden name beside it, then moved into place
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.tmp-", dir=folder)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # not mkstemp's 0600
        os.replace(tmp, path)
    except OSError as e:
        raise UserError(f"--output: cannot write {path} ({e.strerror or e})") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return path


# ---------------------------------------------------------------- models and scoring


class Model:
    """A trained model and its preprocessing, from a checkpoint alone; scores pandas
    DataFrames in this process (for many rows, `app.predict` scores on the cluster)."""

    def __init__(self, predictor: Predictor, checkpoint: str):
        self._predictor = predictor
        self.checkpoint = checkpoint
        """Where the model was loaded from (a local path or a URI)."""

    @property
    def task(self) -> str:
        return self._predictor.state.task

    @property
    def classes(self) -> list[Any] | None:
        """Classification: the classes, in the order of `predict_proba`'s columns."""
        return list(self._predictor.state.classes) if self.task == "classification" else None

    @property
    def features(self) -> list[str]:
        """The columns the model reads."""
        return list(self._predictor.state.features)

    def schema(self) -> dict[str, Any]:
        """What a caller must send: feature columns and types, the task, the classes (as `serve`'s /schema)."""
        return self._predictor.schema()

    def predict(self, df: pd.DataFrame) -> pd.Series:
        """The prediction for each row of `df` (a class, or a number), indexed as `df`."""
        import pandas as pd

        with bad_values_as_user_errors("input"):
            columns = self._predictor.prediction_columns(self._frame(df))
        return pd.Series(columns["prediction"], index=df.index, name="prediction")

    def predict_proba(self, df: pd.DataFrame) -> pd.DataFrame:
        """Classification: each class's probability for each row of `df`, one column per class."""
        import pandas as pd

        if self.task != "classification":
            raise UserError("predict_proba: this model does regression; use predict")
        with bad_values_as_user_errors("input"):
            columns = self._predictor.prediction_columns(self._frame(df))
        return pd.DataFrame({c: columns[f"proba_{c}"] for c in self.classes}, index=df.index)

    def evaluate(self, df: pd.DataFrame) -> dict[str, float]:
        """The metrics on the labelled rows of `df`, as the `evaluate` command computes them."""
        import pyarrow as pa

        from app.predictor import score_tables

        df = self._frame(df)
        if self._predictor.state.label not in df.columns:
            raise UserError(f"evaluate: no label column {self._predictor.state.label!r} to evaluate against")
        with bad_values_as_user_errors("input"):
            return score_tables(self._predictor, [pa.Table.from_pandas(df, preserve_index=False)]).metrics(
                self._predictor.state)

    def feature_importance(self, df: pd.DataFrame, repeats: int = 5, seed: int = 0,
                           max_rows: int = 10_000) -> pd.DataFrame:
        """Permutation importance of each feature on the labelled rows of `df` (a seeded
        sample of at most `max_rows`), as `evaluate --importance` computes it: columns
        feature, importance (mean increase in log_loss, or rmse, over `repeats` shuffles of
        the feature), stddev; most important first. In this process, without Ray."""
        import pandas as pd

        from app.importance import check_options, permutation_importance, sample_rows

        check_options(repeats=repeats, max_rows=max_rows)
        df = self._frame(df)
        if self._predictor.state.label not in df.columns:
            raise UserError(f"feature_importance: no label column {self._predictor.state.label!r} to score against")
        with bad_values_as_user_errors("input"):
            sample = sample_rows(df, self._predictor.state, max_rows, seed)
            ranking = permutation_importance(self._predictor, sample, repeats=repeats, seed=seed)
        return pd.DataFrame(ranking, columns=["feature", "importance", "stddev"])

    def _frame(self, df: Any) -> pd.DataFrame:
        import pandas as pd

        if not isinstance(df, pd.DataFrame):
            raise UserError(f"expected a pandas DataFrame, got {type(df).__name__}")
        self._predictor.check_columns(df)
        return df

    def __repr__(self) -> str:
        return f"Model({self.task}, {len(self.features)} features, checkpoint={self.checkpoint!r})"


@contextmanager
def bad_values_as_user_errors(where: str) -> Iterator[None]:
    """A value the model cannot read (transform.BadValue: a word in a numeric feature) as
    the UserError that bad input is, naming where it came from."""
    from app.data.transform import BadValue

    try:
        yield
    except BadValue as e:
        raise UserError(f"{where}: {e}") from None


def load_model(checkpoint: Any) -> Model:
    """The model of a checkpoint: a `ray.train.Checkpoint`, a checkpoint folder (path or
    URI), or a run or sweep folder (meaning its best checkpoint)."""
    from app.predictor import load_predictor

    uri = checkpoint_uri(checkpoint)
    return Model(load_predictor(uri, "--checkpoint"), uri)


def checkpoint_uri(checkpoint: Any) -> str:
    """The location of a checkpoint given as a `ray.train.Checkpoint`, a `RunResult`, a
    path or URI of a checkpoint, or of a run or sweep folder (its best checkpoint)."""
    from app import checkpoint as ckpt
    from app import runs, storage

    if isinstance(checkpoint, RunResult):
        return checkpoint.metrics["best_checkpoint"]
    if type(checkpoint).__name__ == "Checkpoint" and type(checkpoint).__module__.startswith("ray.train"):
        fs = checkpoint.filesystem
        kind = "local" if fs is None else fs.type_name
        if kind == "local":
            return checkpoint.path
        if kind in ("s3", "gcs"):  # (options given in the URI's query, an endpoint say, are not kept)
            return f"{'gs' if kind == 'gcs' else 's3'}://{checkpoint.path}"
        raise UserError(f"checkpoint: a ray.train.Checkpoint on a {kind!r} filesystem; pass its URI instead")
    if not isinstance(checkpoint, (str, os.PathLike)):
        raise UserError(f"checkpoint: expected a ray.train.Checkpoint, a path or a URI, got {type(checkpoint).__name__}")
    location = storage.absolute(str(checkpoint))
    if storage.exists(storage.join(location, ckpt.MANIFEST)):
        return location
    finished = storage.read_json(storage.join(location, runs.METRICS))
    if isinstance(finished, dict) and finished.get("best_checkpoint"):
        return finished["best_checkpoint"]
    return location  # load_predictor names what is wrong with it


def evaluate(checkpoint: Any, data: Any, *, output: str | None = None, address: str | None = None,
             importance: bool = False, repeats: int = 5, max_rows: int = 10_000, seed: int = 0) -> dict[str, Any]:
    """The checkpoint scored on labelled `data` (a path or URI, a DataFrame or a Dataset):
    {"metrics", "rows", "task", "epoch", and a confusion matrix or a residual summary}.
    `importance`: also each feature's permutation importance on a seeded sample of at most
    `max_rows` labelled rows, `repeats` shuffles each (`feature_importance`, most important
    first, and `importance`: metric, rows, repeats, seed; app/importance.py).
    `output`: also written there as JSON (whole or not at all: written beside it, then
    renamed); a folder there is refused before any scoring."""
    from app import cluster, storage
    from app.evaluating import check_scored, run_evaluate
    from app.importance import check_options
    from app.importance import importance as feature_importance
    from app.metrics import json_safe
    from app.predictor import check_input, evaluate_dataset, load_predictor
    from app.redact import redact_tree

    uri = checkpoint_uri(checkpoint)
    predictor = load_predictor(uri, "--checkpoint")
    options = None
    if importance:
        check_options(**{"--repeats": repeats, "--max-rows": max_rows})
        options = {"repeats": repeats, "max_rows": max_rows, "seed": seed}
    if output:
        _check_json_output(output)
    with _process_settings():
        if is_in_memory(data):
            import pyarrow as pa

            if predictor.state.label not in _columns_of(data):
                raise UserError(f"--data: no label column {predictor.state.label!r} to evaluate against")
            here = not _is_dataset(data)
            rows = [pa.Table.from_pandas(data, preserve_index=False)] if here else data
            if not here:
                cluster.connect(address)
            with bad_values_as_user_errors("--data"):
                scored = evaluate_dataset(uri, rows, predictor.state, details=True, here=here)
            check_scored(scored, predictor.state, f"--data ({type(data).__name__})")
            result = {"checkpoint": uri, "data": type(data).__name__, "task": predictor.state.task,
                      "epoch": predictor.epoch, **scored}
            if options:
                with bad_values_as_user_errors("--data"):
                    result.update(feature_importance(uri, predictor, data, **options))
        else:
            source = check_input(predictor, str(data), "--data", need_label=True)
            cluster.connect(address)
            result = run_evaluate(uri, predictor, source, options)
    if output:
        try:
            storage.write_json(output, json_safe(redact_tree(result)))  # atomic: a temporary name, then renamed
        except OSError as e:  # a folder that appeared there meanwhile, a disk that filled up
            raise UserError(f"--output: cannot write {output} ({' '.join(str(e).split())[:400]})") from None
    return result


def _check_json_output(output: str) -> None:
    """`evaluate`'s --output: a file (new or replaced) in a folder this process can write."""
    from app import storage

    if storage.is_dir(output):
        raise UserError(f"--output {output} is a folder; give the JSON file to write, e.g. "
                        f"{storage.join(output, 'evaluation.json')}")
    storage.check_writable(storage.parent(output), "--output")


def predict(checkpoint: Any, input: Any, output: str | None = None, *, overwrite: bool = False,
            batch_size: int = 4096, concurrency: int | None = None, address: str | None = None) -> Any:
    """Predictions for every row of `input` (a path or URI, a DataFrame or a Dataset): the
    input columns plus `prediction` (and `proba_<class>` for classification), in input order.

    With `output` (a .csv or .parquet file, or else a folder of Parquet parts), they are
    written there (an existing output only with `overwrite`, and only one this app wrote)
    and the number of rows is returned. The output is claimed for the call: another call
    writing it meanwhile is refused, and what appears there meanwhile is never replaced
    (app/predicting.py). Without: a DataFrame for a DataFrame input, a lazy
    Dataset for a Dataset input (in input order only where that Dataset's DataContext sets
    `execution_options.preserve_order`, as for any Ray Data pipeline)."""
    from contextlib import nullcontext

    from app import cluster
    from app.data.preprocess import check_columns
    from app.predicting import claimed_output, run_predict, write_rows
    from app.predictor import check_input, check_names, load_predictor, predict_dataset

    uri = checkpoint_uri(checkpoint)
    predictor = load_predictor(uri, "--checkpoint")
    if output is None and not is_in_memory(input):
        raise UserError("--output is required when the input is a path or URI")
    with _process_settings(), (nullcontext() if output is None else claimed_output(output, overwrite)) as target:
        if not is_in_memory(input):
            source = check_input(predictor, str(input), "--input", need_label=False)
            cluster.connect(address)
            return run_predict(uri, predictor, source, target, batch_size=batch_size, concurrency=concurrency)
        check_columns(_columns_of(input), predictor.state.features, "--input", reads=predictor.state.features)
        check_names(predictor, _columns_of(input), "--input", predicting=True)
        if not _is_dataset(input):
            with bad_values_as_user_errors("--input"):
                scored = predictor.predict(input)
            if output is None:
                return scored
            import pyarrow as pa

            return write_rows([pa.Table.from_pandas(scored, preserve_index=False)], target)
        cluster.connect(address)
        from app.predicting import default_concurrency

        scored = predict_dataset(uri, input, concurrency=concurrency or default_concurrency(), batch_size=batch_size)
        if output is None:
            return scored  # lazy: in the order the input Dataset's own DataContext keeps
        # Written in input order; the setting is the input Dataset's own (its derived Datasets
        # share it), so it is put back once the rows are written.
        options = scored.context.execution_options
        saved_order, options.preserve_order = options.preserve_order, True
        try:
            return write_rows(scored.iter_batches(batch_size=None, batch_format="pyarrow"), target)
        finally:
            options.preserve_order = saved_order


def _is_dataset(data: Any) -> bool:
    import pandas as pd

    return not isinstance(data, pd.DataFrame)


def _columns_of(data: Any) -> list[str]:
    import pandas as pd

    if isinstance(data, pd.DataFrame):
        return [str(c) for c in data.columns]
    schema = data.schema(fetch_if_missing=True)
    return list(schema.names) if schema is not None else []


# ---------------------------------------------------------------- process-wide settings


@contextmanager
def _process_settings() -> Iterator[None]:
    """Put back, after a call, the process-wide settings that the work changes for itself:
    Ray Data's `preserve_order` (predict sets it) and the environment variables that
    app/cluster.py sets for Ray's processes (`cluster.PROCESS_ENV`). What stays changed is
    documented in docs/api.md: the log levels of Ray's loggers, and Ray Data's start-of-run
    line (`print_on_execution_start`), which the app turns off while Ray is up."""
    from app.cluster import PROCESS_ENV

    saved_env = {name: os.environ.get(name) for name in PROCESS_ENV}
    context = _data_context()
    saved_order = context.execution_options.preserve_order if context is not None else None
    try:
        yield
    finally:
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        context = _data_context()
        if context is not None:
            if saved_order is None:  # Ray Data was loaded during the call: its default
                from ray.data import ExecutionOptions

                saved_order = ExecutionOptions().preserve_order
            context.execution_options.preserve_order = saved_order


def _data_context():
    import sys

    if "ray.data" not in sys.modules:  # nothing to restore in a process that never loaded it
        return None
    from ray.data import DataContext

    return DataContext.get_current()
