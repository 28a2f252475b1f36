"""Typed config tree: YAML file -> `--set` overrides -> validation.

    python -m app train --config configs/quickstart.yaml --set train.epochs=3

Precedence, stated once: `--set` > config file > the defaults below. Unknown keys,
wrong types and impossible values are refused with the dotted key and the file name.
Every field's docstring is its documentation (the README's config reference mirrors it).
"""

from __future__ import annotations

import math
import re
import reprlib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from app.errors import UserError
from app.redact import redact_tree

# The metric registry: what training reports per task (beside the losses), and which way
# each metric is better. Checkpoint ranking, early stopping, Tune and the report use it.
TASK_METRICS = {"classification": ("accuracy", "f1_macro", "roc_auc", "log_loss"),
                "regression": ("rmse", "mae", "r2")}
LOSSES = ("valid_loss", "train_loss")
HIGHER_IS_BETTER = frozenset({"accuracy", "f1_macro", "roc_auc", "r2"})  # the rest: lower is better


def reported_metrics(task: str) -> tuple[str, ...]:
    """Every metric name that training reports for `task`."""
    return LOSSES + TASK_METRICS[task]


def metric_mode(metric: str) -> Literal["min", "max"]:
    """The direction in which `metric` gets better."""
    return "max" if metric in HIGHER_IS_BETTER else "min"


def is_known_metric(metric: str) -> bool:
    return any(metric in reported_metrics(task) for task in TASK_METRICS)


def check_metric(metric: str, task: str, *, key: str) -> None:
    """Refuse a metric (given as config key `key`) that training never reports for `task`."""
    if metric not in reported_metrics(task):
        raise UserError(f"{key}: {excerpt(metric)} is never reported for {task}; "
                        f"choose one of {', '.join(reported_metrics(task))}")


# train.epochs: auto aims at this many training rows seen (the default TabM trains 4k-6k
# rows/s on 2 CPU cores, so a 50k-row table trains in about 5 minutes), within these bounds.
AUTO_ROWS_SEEN = 1_000_000
AUTO_MIN_EPOCHS, AUTO_MAX_EPOCHS = 10, 200


class _Loader(yaml.SafeLoader):
    """YAML 1.2 numbers: PyYAML (YAML 1.1) reads 1e-3 as a string, 1.0e-3 as a float. No
    anchors or aliases: a few lines of nested aliases expand to gigabytes."""

    def compose_node(self, parent, index):
        event = self.peek_event()
        if getattr(event, "anchor", None) is not None:  # an anchor (&a) or an alias (*a)
            raise _AliasRefused(f"YAML anchors and aliases (&/*) are not supported "
                                f"(line {event.start_mark.line + 1})")
        return super().compose_node(parent, index)


class _AliasRefused(yaml.YAMLError):
    pass


class _Dumper(yaml.SafeDumper):
    """Writes a value that appears twice in full, not as an alias that `parse_yaml` refuses."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def _yaml_problem(e: yaml.YAMLError) -> str:
    return str(e) if isinstance(e, _AliasRefused) else f"malformed YAML: {_first_line(e)}"


EXCERPT_CHARS = 200  # of a bad value quoted in a message
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxlong, _REPR.maxother = 4, EXCERPT_CHARS, EXCERPT_CHARS, EXCERPT_CHARS
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 10


def clip(text: str, limit: int = EXCERPT_CHARS) -> str:
    """`text`, cut to at most `limit` characters (ending in ...)."""
    return text if len(text) <= limit else text[:limit - 3] + "..."


def excerpt(value: Any) -> str:
    """A bounded repr of `value` for messages (at most EXCERPT_CHARS characters), built
    without the repr of the whole value."""
    return clip(_REPR.repr(value))


class Section(BaseModel):
    # strict: YAML already types values, so "5" for an int is a mistake, not a number.
    model_config = ConfigDict(extra="forbid", strict=True, use_attribute_docstrings=True)


class SplitConfig(Section):
    valid: float = Field(0.15, gt=0, lt=1)
    """Fraction of rows held out for validation (early stopping, checkpoint ranking).
    Between 0 and 1, exclusive."""
    test: float = Field(0.15, ge=0, lt=1)
    """Fraction of rows held out for the final test. 0 is allowed. Ignored when `data.test`
    is set."""
    seed: int = 0
    """Seed of the row-hash split. The same data and seed give the same split on any
    cluster."""

    @model_validator(mode="after")
    def _fractions_leave_training_rows(self) -> SplitConfig:
        if self.valid + self.test >= 1:
            raise ValueError(f"valid + test must be below 1 (got {self.valid} + {self.test})")
        return self


def is_in_memory(value: Any) -> bool:
    """Whether a data location is a pandas DataFrame or a Ray Dataset (by type, without
    importing either)."""
    kind = type(value)
    return (kind.__module__.startswith("pandas") and kind.__name__ == "DataFrame") or any(
        k.__module__.startswith("ray.data") and k.__name__ in ("Dataset", "MaterializedDataset")
        for k in kind.__mro__)


def is_staged(value: Any) -> bool:
    """Whether a data location is one that a run saves into its folder before reading it:
    a DataFrame, a Dataset or a SQL source (app/data/in_memory.py)."""
    return is_in_memory(value) or isinstance(value, SqlSource)


class SqlSource(Section):
    sql: str
    """A SQLAlchemy database URL (`sqlite:///data.db`, `postgresql://user@host/db`; a
    password in it is never written to files or logs)."""
    query: str | None = None
    """The SELECT that gives the rows."""
    table: str | None = None
    """Or a table, read whole."""

    @model_validator(mode="after")
    def _one_of_query_or_table(self) -> SqlSource:
        if (self.query is None) == (self.table is None):
            raise ValueError("give one of `query` or `table` beside `sql`")
        if self.table is not None and not re.fullmatch(r"[A-Za-z_][\w.]*", self.table):
            raise ValueError(f"table: expected a table name, got {excerpt(self.table)}; use `query` for anything else")
        return self

    def select(self) -> str:
        return self.query if self.query is not None else f"SELECT * FROM {self.table}"


class InMemoryInput(Section):
    kind: Literal["DataFrame", "Dataset", "SQL"]
    """What the caller passed."""
    rows: int
    """Its rows."""
    columns: dict[str, str]
    """Its columns and their Arrow types, in order."""
    fingerprint: str
    """A hash of every row (order-independent), to recognise the same data on resume."""
    source: str | None = None
    """SQL: the database URL (credentials redacted) and the query."""


class DataConfig(Section):
    train: Any
    """CSV or Parquet: a file, a folder of them, or a glob. A local path or a pyarrow URI
    (`s3://...`). Or a database: `{sql: URL, query: SELECT ...}` or `{sql: URL, table: NAME}`,
    read in parallel with Ray Data (see [Data](data.md)). From Python (`app.train`), also a
    `pandas.DataFrame` or a `ray.data.Dataset`. A database or in-memory input is saved in the
    run folder as Parquet (`inputs/`) and read from there, so a resumed run sees the same rows."""
    test: Any = None
    """Optional held-out data in the same format. If not set, the test split comes from
    `train`."""
    label: str
    """Name of the column to predict."""
    task: Literal["auto", "classification", "regression"] = "auto"
    """`auto` | `classification` | `regression`. `auto` means classification if the label is
    text or boolean, or integer with at most 20 distinct values, and regression otherwise."""
    features: list[str] | None = None
    """Columns to use as inputs. Default: every column except the label and `drop`."""
    categorical: list[str] = []
    """Columns to treat as categorical even though they hold numbers (codes, years)."""
    drop: list[str] = []
    """Columns to ignore (ids, leaks) when `features` is not set."""
    max_categories: int = Field(10_000, ge=1)
    """Most categories a categorical column keeps: the most frequent in training. The rest go to
    the unknown bucket, with a warning naming the column. Bounds the memory of the statistics
    pass and the size of the model's embeddings."""
    cache: Literal["auto", "memory", "stream"] = "auto"
    """`auto` | `memory` | `stream`: how each training worker reads its shard of the training
    and validation splits. `memory` pulls it into the worker's memory once (the fastest
    epochs); `stream` reads it from Ray's object store every epoch through a seeded shuffle
    buffer, in bounded memory, for shards larger than a worker's memory; `auto` streams when
    the shard would take more than half of `scaling.memory_per_worker_mb`. See
    [Scale out](scale-out.md)."""
    split: SplitConfig = SplitConfig()
    """`valid + test` must be below 1"""
    in_memory: dict[str, InMemoryInput] = {}
    """Written by the Python API, not by hand: for `train`/`test` given as a DataFrame or a
    Dataset, what it held (columns and types, rows, fingerprint). The data itself was saved
    in the run folder, where `train`/`test` then point; resuming with other data is refused."""

    @field_validator("train", "test")
    @classmethod
    def _data_location(cls, value: Any, info) -> Any:
        if value is None and info.field_name == "test":
            return None
        if isinstance(value, str) and value or is_in_memory(value) or isinstance(value, SqlSource):
            return value
        if isinstance(value, dict) and "sql" in value:
            return SqlSource.model_validate(value)
        raise ValueError(f"expected a path or URI, a SQL source ({{sql: URL, query: ...}}), a pandas DataFrame "
                         f"or a ray.data.Dataset (got {excerpt(value)})")


class PreprocessConfig(Section):
    missing_indicators: bool = True
    """Add a 0/1 column for each numeric column that had missing values in training."""
    min_category_count: int = Field(1, ge=1)
    """Categories seen fewer times than this in training go to the unknown bucket."""
    numeric_scaling: Literal["quantile", "standard"] = "quantile"
    """`quantile`: map each numeric column through its training quantiles onto a standard
    normal (robust to skew and outliers). `standard`: subtract the mean, divide by the
    standard deviation."""
    sample_rows: int = Field(100_000, ge=100, le=10_000_000)
    """Quantiles and embedding bins are fitted on a seeded sample of at most this many
    training rows, the same on any cluster and block layout."""
    embedding_bins: int = Field(48, ge=2, le=256)
    """Bins per numeric column for `model.num_embeddings: piecewise_linear`."""


class XGBoostConfig(Section):
    """`model.xgboost`: the gradient-boosted trees of `model.kind: xgboost`, trained by
    Ray Train's XGBoostTrainer on the same shards and preprocessing as the networks."""

    rounds: int = Field(2000, ge=1)
    """Boosting rounds at most; early stopping usually ends sooner."""
    learning_rate: float = Field(0.05, gt=0, le=1)
    """Shrinkage of each tree (`eta`)."""
    max_depth: int = Field(6, ge=0)
    """Depth of each tree; 0: no limit (then bound `max_leaves`)."""
    max_leaves: int = Field(0, ge=0)
    """Leaves of each tree; 0: no limit."""
    min_child_weight: float = Field(1.0, ge=0)
    """Least hessian weight in a leaf."""
    reg_lambda: float = Field(1.0, ge=0)
    """L2 regularisation of the leaf weights."""
    reg_alpha: float = Field(0.0, ge=0)
    """L1 regularisation of the leaf weights."""
    subsample: float = Field(0.8, gt=0, le=1)
    """Share of the training rows each tree samples."""
    colsample_bytree: float = Field(0.8, gt=0, le=1)
    """Share of the features each tree samples."""
    max_bin: int = Field(256, ge=2)
    """Histogram bins per numeric feature."""
    early_stopping_rounds: int | None = Field(100, ge=1)
    """Stop after this many rounds without a better validation loss; `null`: never."""
    checkpoint_every: int = Field(50, ge=1)
    """Rounds between checkpoints (and reports to Ray Train and Tune): a worker or driver
    failure loses at most this many rounds."""


class EnsembleConfig(Section):
    """`model.ensemble`: the members of `model.kind: ensemble` and how they are weighted."""

    members: list[Literal["tabm", "mlp", "xgboost"]] = ["tabm", "xgboost"]
    """The kinds trained (each of `tabm`, `mlp`, `xgboost` at most once), one after another,
    each with this config's keys for its kind."""
    selection_rounds: int = Field(25, ge=1, le=1000)
    """Rounds of greedy ensemble selection with replacement on the validation split: each
    adds the member that most lowers the validation loss of the average; the weights are
    how often each was added."""

    @field_validator("members")
    @classmethod
    def _distinct(cls, members: list[str]) -> list[str]:
        if not members or len(set(members)) != len(members):
            raise ValueError(f"must be a non-empty list of distinct kinds (got {excerpt(members)})")
        return members


class ModelConfig(Section):
    kind: Literal["tabm", "mlp", "xgboost", "ensemble"] = "tabm"
    """`tabm` | `mlp` | `xgboost` | `ensemble`; see [Models](models.md). The keys below say
    which kind reads them."""
    dropout: float = Field(0.1, ge=0, lt=1)
    """tabm and mlp: dropout after each hidden layer, in [0, 1)."""
    hidden: list[int] = [128, 64]
    """mlp: widths of the hidden layers (non-empty, positive)."""
    embedding_dim: int | None = Field(None, ge=1)
    """mlp: width of each categorical embedding. `null` means
    min(16, 1.6 · cardinality^0.56), rounded, at least 2."""
    activation: Literal["relu", "gelu", "silu"] = "relu"
    """mlp: activation of the hidden layers: `relu` | `gelu` | `silu`."""
    k: int = Field(16, ge=1)
    """tabm: ensemble members. The cost per row grows about linearly with `k`."""
    d_block: int = Field(256, ge=1)
    """tabm: width of each hidden layer."""
    n_blocks: int = Field(2, ge=1)
    """tabm: number of hidden layers."""
    arch: Literal["tabm-mini", "tabm"] = "tabm-mini"
    """tabm: `tabm-mini` adapts only each member's input; `tabm` adapts every layer (more
    parameters, a little slower)."""
    num_embeddings: Literal["piecewise_linear", "none"] = "piecewise_linear"
    """tabm: `piecewise_linear` embeds each numeric input with the bins fitted in
    preprocessing; `none` feeds the scaled values."""
    d_embedding: int = Field(16, ge=1)
    """tabm: width of each numeric column's embedding, and of each large categorical's."""
    one_hot_max: int = Field(32, ge=1)
    """tabm: categorical columns with at most this many categories (the unknown bucket
    included) are one-hot; larger ones get a learned embedding of width `d_embedding`."""

    xgboost: XGBoostConfig = XGBoostConfig()
    """xgboost: the trees' parameters (`model.xgboost.*`)."""
    ensemble: EnsembleConfig = EnsembleConfig()
    """ensemble: its members and their weighting (`model.ensemble.*`)."""

    @field_validator("hidden")
    @classmethod
    def _positive_widths(cls, hidden: list[int]) -> list[int]:
        if not hidden or any(h < 1 for h in hidden):
            raise ValueError(f"must be a non-empty list of positive layer widths (got {excerpt(hidden)})")
        return hidden


class TrainConfig(Section):
    epochs: int | Literal["auto"] = "auto"
    """Maximum number of passes over the training split. `auto`: enough passes to see about
    1M training rows, at least 10 and at most 200."""
    batch_size: int | Literal["auto"] = "auto"
    """**Global** batch: rows per optimizer step, summed over all workers. Each worker takes
    about `batch_size / num_workers` rows per step, so a config trains the same way at any
    worker count. `auto`: 256 up to 50k training rows, 512 up to 200k, 1024 above."""
    lr: float = Field(2.0e-3, gt=0)
    """Peak learning rate of AdamW."""
    weight_decay: float = Field(3.0e-4, ge=0)
    """AdamW decoupled weight decay."""
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    """Per-epoch schedule after warm-up: `constant`, or `cosine` decay to 1% of `lr` at
    `epochs`."""
    warmup_epochs: int = Field(0, ge=0)
    """Epochs of linear warm-up from `lr / (warmup_epochs + 1)` to `lr`."""
    early_stopping_patience: int | None = Field(16, ge=1)
    """Stop after this many epochs without improvement of `run.checkpoint.metric`. `null`
    means never stop early."""
    grad_clip: float | None = Field(None, gt=0)
    """Clip the gradient norm to this value. `null` means no clipping."""
    seed: int = 0
    """Seeds the weights, dropout and the data order (which derives from seed and epoch)."""
    calibration: Literal["temperature", "none"] = "temperature"
    """Classification: after training, `temperature` fits one scalar T > 0 on the validation
    split (minimising the log loss of softmax(logits / T)) and stores it in the best
    checkpoint, so `predict`, `evaluate`, `serve`, `export`, the API and the test metrics all
    use the calibrated probabilities; metrics.json reports log loss, Brier score and ECE
    before and after. `none`: the network's probabilities as they are."""
    threshold_metric: Literal["accuracy", "f1", "balanced_accuracy"] = "accuracy"
    """Binary classification: the metric whose best decision threshold is picked on the
    validation split's (calibrated) probabilities of the second class, stored in the best
    checkpoint and applied to `prediction` (not to the probabilities): `f1` (of the second
    class) or `balanced_accuracy`. `accuracy`: cut at 0.5 (the most probable class),
    nothing stored. Other tasks ignore it."""

    @field_validator("epochs", "batch_size", mode="before")
    @classmethod
    def _positive_or_auto(cls, value: Any) -> Any:
        if value != "auto" and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ValueError(f"must be a positive integer or auto (got {excerpt(value)})")
        return value

    def resolved(self, train_rows: int) -> TrainConfig:
        """A copy with `auto` epochs and batch size derived from the training rows."""
        batch = self.batch_size
        if batch == "auto":
            batch = 256 if train_rows <= 50_000 else 512 if train_rows <= 200_000 else 1024
        epochs = self.epochs
        if epochs == "auto":
            epochs = min(AUTO_MAX_EPOCHS, max(AUTO_MIN_EPOCHS, math.ceil(AUTO_ROWS_SEEN / max(1, train_rows))))
        return self.model_copy(update={"epochs": epochs, "batch_size": batch})


class ScalingConfig(Section):
    num_workers: int | list[int] = 2
    """Training workers (DDP ranks). `[min, max]` enables elastic training."""
    use_gpu: bool = False
    """One GPU per worker with the NCCL backend. Otherwise CPU with gloo."""
    cpus_per_worker: float = Field(1.0, gt=0)
    """Logical CPUs reserved per worker. Also the number of torch threads per worker
    (rounded down, at least 1)."""
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    """How workers are placed on nodes (Ray placement group strategy): `PACK` | `SPREAD` |
    `STRICT_PACK` | `STRICT_SPREAD`."""
    resources_per_worker: dict[str, float] = {}
    """Extra Ray resources each worker needs, e.g. `{worker_node: 1}` to keep workers on
    nodes that advertise that resource (and off the head)."""
    memory_per_worker_mb: int | None = Field(None, ge=1)
    """Memory budget of each training worker, in MiB: requested from Ray as the worker's
    `memory` resource, and what `data.cache: auto` weighs the worker's shard against. `null`
    requests nothing, and `auto` takes the node's memory per CPU (Ray's `memory` resource over
    its CPUs) times `cpus_per_worker`."""

    @field_validator("num_workers")
    @classmethod
    def _valid_worker_count(cls, n: int | list[int]) -> int | list[int]:
        if isinstance(n, int):
            if n < 1:
                raise ValueError(f"must be at least 1 (got {n})")
        elif len(n) != 2 or not 1 <= n[0] <= n[1]:
            raise ValueError(f"must be an integer or [min, max] with 1 <= min <= max (got {excerpt(n)})")
        return n

    @property
    def min_workers(self) -> int:
        return self.num_workers if isinstance(self.num_workers, int) else self.num_workers[0]

    @property
    def max_workers(self) -> int:
        return self.num_workers if isinstance(self.num_workers, int) else self.num_workers[1]


class CheckpointConfig(Section):
    keep: int = Field(2, ge=1)
    """Checkpoints kept: the best `keep` by `metric`, plus always the latest."""
    metric: str = "valid_loss"
    """Ranks checkpoints and drives early stopping. One of `valid_loss`, `train_loss`, or a
    validation metric of the task: `accuracy`, `f1_macro`, `roc_auc`, `log_loss`
    (classification) or `rmse`, `mae`, `r2` (regression)."""
    mode: Literal["min", "max"] | None = None
    """`min` or `max`: whether a lower or a higher `metric` is better. `null` takes the
    metric's own direction (`max` for accuracy, f1_macro, roc_auc, r2). A mode against the
    metric's direction is refused."""

    @model_validator(mode="after")
    def _mode_follows_metric(self) -> CheckpointConfig:
        natural = metric_mode(self.metric)
        if self.mode is None:
            self.mode = natural
        elif self.mode != natural and is_known_metric(self.metric):
            raise ValueError(f"mode {self.mode!r} would keep the worst checkpoints: {self.metric} is "
                             f"better when {'higher' if natural == 'max' else 'lower'}")
        return self


class RunConfig(Section):
    storage: str = "runs"
    """Where runs live: a local folder, a shared filesystem, or an `s3://` / `gs://` URI."""
    max_failures: int = Field(2, ge=-1)
    """Worker-group restarts from the latest checkpoint before the run fails. `-1` means
    unlimited."""
    checkpoint: CheckpointConfig = CheckpointConfig()
    """which checkpoints a run keeps; see [What a run leaves](runs.md)"""
    dashboard: Literal["auto"] | bool = "auto"
    """`true` | `false` | `auto`: whether the Ray that `train` starts for itself (no
    `--address`, no `ray start` on this machine) runs Ray's dashboard, on 127.0.0.1. `auto`:
    only when the training data is over 32 MiB; on 2 cores the dashboard's processes cost a
    small run about 3 s. A cluster that `train` joins keeps its own setting."""


class SchedulerConfig(Section):
    name: Literal["fifo", "asha", "pbt"] = "asha"
    """`fifo` | `asha`. (`pbt` is accepted by the schema but refused by `tune` for now.)"""
    grace_period: int = Field(1, ge=1)
    """ASHA: epochs every trial runs before it can be stopped."""
    reduction_factor: float = Field(2, gt=1)
    """ASHA: keep 1 / reduction_factor of the trials at each rung."""


class TuneConfig(Section):
    num_samples: int = Field(8, ge=1)
    """Trials to sample from `space` (with grid axes: samples per grid point)."""
    metric: str | None = None
    """Metric that ranks trials; default: `run.checkpoint.metric`. Must be one that
    training reports."""
    mode: Literal["min", "max"] | None = None
    """`min` or `max`. Default: the metric's own direction."""
    scheduler: SchedulerConfig = SchedulerConfig()
    """stops unpromising trials early; see [Sweeps](sweeps.md)"""
    search: Literal["random", "grid", "optuna"] = "random"
    """`random` | `grid` | `optuna`."""
    max_concurrent_trials: int = Field(2, ge=1)
    """Trials running at the same time, at most; fewer when the cluster cannot hold that
    many worker groups."""
    space: dict[str, dict[str, Any]] = {}
    """Dotted config key -> one distribution: `choice: [v, ...]`, `grid: [v, ...]`,
    `uniform: [low, high]`, `loguniform: [low, high]`, `randint: [low, high)`,
    `quniform: [low, high, q]`, `qloguniform: [low, high, q]`. Any key of `data`,
    `preprocess`, `model` or `train`; not `name`, `run`, `scaling` or `tune`. Checked by every
    command that reads the config, `train` too."""


class TrackingConfig(Section):
    mlflow: bool = True
    """Log the config and every epoch's metrics to MLflow: one MLflow run per training run
    or sweep trial."""
    mlflow_uri: str | None = None
    """MLflow tracking URI (`http://host:5000`, `sqlite:///path.db`, `databricks`, ...).
    `null` means a SQLite store at `<run.storage>/mlflow.db` when `run.storage` is local;
    with remote storage and no URI, MLflow logging is off."""
    experiment: str | None = None
    """MLflow experiment. `null` means the run name (for a sweep, the sweep name)."""
    tensorboard: bool = True
    """Write TensorBoard event files to `<run folder>/tensorboard`."""


class ReportConfig(Section):
    baselines: bool | Literal["auto"] = "auto"
    """After `train`, also fit the scikit-learn baselines on the same split (as `baseline`
    does), for the report to compare against: `true` | `false` | `auto` (when the training
    split has at most `baselines_auto_rows` rows)."""
    baselines_auto_rows: int = Field(100_000, ge=0)
    """`baselines: auto` fits them up to this many training rows (beyond, they take minutes:
    run `baseline` or set `baselines: true`)."""
    baseline_max_rows: int = Field(200_000, ge=100)
    """Baselines fit on at most this many training rows (a seeded sample); they score all
    validation and test rows."""
    importance: bool = True
    """After `train`, the permutation feature importance of the best checkpoint on the test
    split (as `evaluate --importance` computes it), in metrics.json and the report."""
    importance_rows: int = Field(10_000, ge=10)
    """Feature importance uses a seeded sample of at most this many test rows."""

    def wants_baselines(self, train_rows: int) -> bool:
        """Whether `train` fits the baselines after a run of `train_rows` training rows."""
        return self.baselines is True or (self.baselines == "auto" and train_rows <= self.baselines_auto_rows)


NAME_MAX = 100  # characters of `name`, a folder name (file systems allow 255 bytes)


class Config(Section):
    name: str
    """Run name, and also the folder under `run.storage`. Letters, digits, `.`, `_`, `-`,
    starting with a letter or digit; at most 100 characters."""
    data: DataConfig
    """see [Data](data.md)"""
    preprocess: PreprocessConfig = PreprocessConfig()
    """fitted on the training split only; see [Data](data.md)"""
    model: ModelConfig = ModelConfig()
    """see [Models](models.md)"""
    train: TrainConfig = TrainConfig()
    """see [Training details](training.md)"""
    scaling: ScalingConfig = ScalingConfig()
    """see [Training details](training.md) and [Scale out](scale-out.md)"""
    run: RunConfig = RunConfig()
    """see [What a run leaves](runs.md) and [Fault tolerance](fault-tolerance.md)"""
    tune: TuneConfig = TuneConfig()
    """used by `raytab tune` and `app.tune`; see [Sweeps](sweeps.md)"""
    tracking: TrackingConfig = TrackingConfig()
    """see [Tracking and progress](training.md#tracking-and-progress)"""
    report: ReportConfig = ReportConfig()
    """scikit-learn baselines beside the network; see [`baseline`](commands.md#baseline)"""

    @field_validator("name")
    @classmethod
    def _safe_folder_name(cls, name: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
            raise ValueError(f"must be letters, digits, '.', '_' or '-' (got {excerpt(name)})")
        if len(name) > NAME_MAX:  # it names a folder, and file systems refuse long names
            raise ValueError(f"must be at most {NAME_MAX} characters (got {len(name)})")
        return name

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def resolved(self, train_rows: int) -> Config:
        """This config with every `auto` value that depends on the data made concrete."""
        return self.model_copy(update={"train": self.train.resolved(train_rows)})

    def to_yaml(self) -> str:
        """The config as YAML for files (config.yaml, best_config.yaml), with the credentials
        of any URI in it replaced by *** (see app/redact.py)."""
        return yaml.dump(redact_tree(self.to_dict()), Dumper=_Dumper, sort_keys=False)


# ---------------------------------------------------------------- tune.space
# Checked by every command that reads a config (`from_dict`), not only by `tune`; app/tuning.py
# turns a checked space into Ray Tune domains.

DISTRIBUTIONS = ("choice", "grid", "uniform", "loguniform", "randint", "quniform", "qloguniform")
UNSEARCHABLE = ("name", "run.", "tune.", "scaling.")  # where trials run, not what they learn


def check_space(cfg: Config) -> None:
    """Refuse a `tune.space` that no sweep could run: a key that is not a searchable config
    key, a malformed distribution, a value that makes an invalid config, or axes that
    `tune.search` cannot use. An empty space passes (`tune` refuses it)."""
    space = cfg.tune.space
    if not space:
        return
    base = cfg.model_dump()  # leaves (a DataFrame too) shared, not copied
    for key, spec in space.items():
        where = f"tune.space.{clip(key)}"
        if key.startswith(UNSEARCHABLE) or not _has_key(base, key):
            reason = "cannot be searched" if _has_key(base, key) else "is not a config key"
            raise UserError(f"{where}: {clip(key)} {reason}")
        if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
            raise UserError(f"{where}: expected one distribution, one of {', '.join(DISTRIBUTIONS)} "
                            f"(e.g. {{loguniform: [1.0e-4, 1.0e-2]}}), got {excerpt(spec)}")
        kind, args = next(iter(spec.items()))
        for value in _check_args(where, kind, args):  # the values a trial could get must make a valid config
            try:
                Config.model_validate(_with(base, key, value))
            except ValidationError as e:
                raise UserError(f"{where}: {excerpt(value)} is not a valid {key} ({_problem(e)[1]})") from None
    if cfg.tune.search == "grid":
        bad = [k for k, s in space.items() if next(iter(s)) not in ("grid", "choice")]
        if bad:
            raise UserError(f"tune.search: grid search needs grid or choice axes; {clip(', '.join(bad))} "
                            f"are continuous")
    if cfg.tune.search == "optuna" and any(next(iter(s)) == "grid" for s in space.values()):
        raise UserError("tune.search: optuna cannot search grid axes; use choice")


def _check_args(where: str, kind: str, args: Any) -> list[Any]:
    """Validate a distribution's parameters; return the values to try against the config."""
    if kind in ("choice", "grid"):
        if not isinstance(args, list) or not args:
            raise UserError(f"{where}: {kind} takes a non-empty list of values, got {excerpt(args)}")
        return args
    sizes = {"uniform": 2, "loguniform": 2, "randint": 2, "quniform": 3, "qloguniform": 3}
    if (not isinstance(args, list) or len(args) != sizes[kind]
            or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args)):
        shape = "[low, high]" if sizes[kind] == 2 else "[low, high, q]"
        raise UserError(f"{where}: {kind} takes {shape} as numbers, got {excerpt(args)}")
    low, high = args[0], args[1]
    if not low < high:
        raise UserError(f"{where}: {kind} needs low < high, got {excerpt(args)}")
    if kind.endswith("loguniform") and low <= 0:
        raise UserError(f"{where}: {kind} needs low > 0, got {excerpt(args)}")
    if kind == "randint" and not all(isinstance(a, int) for a in args):
        raise UserError(f"{where}: randint takes integers [low, high) , got {excerpt(args)}")
    if len(args) == 3 and not args[2] > 0:
        raise UserError(f"{where}: {kind} needs q > 0, got {excerpt(args)}")
    return [low, high - 1] if kind == "randint" else [low, high]


def _has_key(tree: dict[str, Any], key: str) -> bool:
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return not isinstance(node, dict)


def _with(tree: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """A copy of `tree` with dotted `key` set to `value`; the other branches shared."""
    head, _, rest = key.partition(".")
    return {**tree, head: _with(tree[head], rest, value) if rest else value}


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    out = {}
    for key, value in tree.items():
        dotted = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict) and value:
            out.update(flatten(value, dotted))
        else:
            out[dotted] = value
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """`a.b=value` -> ("a.b", value parsed as YAML)."""
    key, sep, raw = text.partition("=")
    if not sep or not key or not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w.]*)*", key):
        raise UserError(f"--set {excerpt(text)}: expected KEY=VALUE with a dotted key, e.g. train.epochs=3")
    try:
        return key, parse_yaml(raw) if raw.strip() else None
    except _AliasRefused as e:
        raise UserError(f"--set {key}: {e}") from None
    except yaml.YAMLError as e:
        raise UserError(f"--set {key}: value {excerpt(raw)} is not valid YAML ({_first_line(e)})") from None


def apply_override(tree: dict[str, Any], key: str, value: Any) -> None:
    node = tree
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserError(f"--set {key}: {'.'.join(parts[: i + 1])} is not a section")
        node = child
    node[parts[-1]] = value


def from_dict(tree: Any, source: str, override_keys: frozenset[str] = frozenset()) -> Config:
    """Validate a raw config tree, `tune.space` included; errors name the dotted key and
    where it came from."""
    if not isinstance(tree, dict):
        raise UserError(f"{source}: expected a mapping of config sections, got {type(tree).__name__}")
    try:
        cfg = Config.model_validate(tree)
    except ValidationError as e:
        raise UserError(_describe(e, source, override_keys)) from None
    try:
        check_space(cfg)
    except UserError as e:
        raise UserError(f"{source}: {e}") from None
    return cfg


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config, apply `--set KEY=VALUE` overrides, validate."""
    tree = read_tree(path)
    keys = []
    for text_ in overrides:
        key, value = parse_override(text_)
        apply_override(tree, key, value)
        keys.append(key)
    return from_dict(tree, str(path), frozenset(keys))


def read_tree(path: str | Path) -> dict[str, Any]:
    """The raw config tree of a YAML file (not validated yet)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise UserError(f"--config {path}: cannot read ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise UserError(f"--config {path}: not a UTF-8 text file") from None
    try:
        tree = parse_yaml(text)
    except yaml.YAMLError as e:
        raise UserError(f"{path}: {_yaml_problem(e)}") from None
    if tree is None:
        tree = {}
    if not isinstance(tree, dict):
        raise UserError(f"{path}: expected a mapping of config sections, got {type(tree).__name__}")
    return tree


def _describe(error: ValidationError, source: str, override_keys: frozenset[str]) -> str:
    key, message = _problem(error)
    origin = " (from --set)" if key in override_keys else ""
    more = f" (and {error.error_count() - 1} more problem(s))" if error.error_count() > 1 else ""
    return f"{source}: {clip(key)}{origin}: {message}{more}"


def _problem(error: ValidationError) -> tuple[str, str]:
    """The dotted key and the message of a validation error's first problem."""
    first = error.errors()[0]
    loc = [str(p) for p in first["loc"] if not str(p).startswith(("function-", "tagged-union"))]
    # Union members show up in loc as type names ("int", "list[int]"); they mean nothing to users.
    loc = [p for p in loc if not _TYPE_TAG.fullmatch(p)]
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    elif first["type"] == "missing":
        message = "required key is missing"
    else:
        message = first["msg"].removeprefix("Value error, ")
        if "input" in first and first["type"] != "value_error":
            message += f" (got {excerpt(first['input'])})"
    return ".".join(loc) or "(top level)", message


def _first_line(e: Exception) -> str:
    return " ".join(str(e).split())


_TYPE_TAG = re.compile(r"(int|float|str|bool|none|(list|dict|tuple|literal)\[.*\])")
