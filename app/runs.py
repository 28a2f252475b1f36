"""A run folder's layout: `<run.storage>/<name>/`, and every file name in it, once.

    runs/quickstart/
      config.yaml                        the resolved config that ran
      metrics.json                       validation and test metrics, history, timings
      baselines.json                     scikit-learn baselines (`baseline`, report.baselines)
      report.html                        `python -m app report runs/quickstart`
      train.log                          what the run printed (app/logs.py `run_log`), appended on resume
      checkpoint_epoch_0012/             checkpoints (app/checkpoint.py)
      checkpoint_manager_snapshot.json   Ray Train's record of the registered checkpoints
      tensorboard/                       event files (tracking.tensorboard)
      inputs/                            a DataFrame or Dataset given to app.train, as Parquet (app/data/in_memory.py)
      members/<kind>/  checkpoint_ensemble/   model.kind ensemble: each member's run folder; the ensemble's checkpoint
      .app-owned  .lease.json            the app's marker (storage.OWNED); the live driver's lease
    runs/quickstart-sweep/               a sweep (`tune`)
      leaderboard.csv  best_config.yaml  metrics.json  curves.png
      config.yaml  sweep_preprocess.json the sweep's config and preprocessing, saved as it starts
      trials/<trial id>/                 each trial a run folder as above, plus overrides.json
"""

from __future__ import annotations

from app import storage
from app.config import Config

CONFIG = "config.yaml"
METRICS = "metrics.json"
BASELINES = "baselines.json"
REPORT = "report.html"
TRAIN_LOG = "train.log"  # what the driver printed, redacted, without progress bars (a sweep's too)
RAY_CHECKPOINTS = "checkpoint_manager_snapshot.json"  # written by Ray Train
TENSORBOARD = "tensorboard"
CHECKPOINT_PREFIX = "checkpoint_epoch_"
LEASE = ".lease.json"  # the live driver's lease (app/lease.py)
MLFLOW_DB = "mlflow.db"  # beside the run folders, in run.storage itself (local storage only)
MLFLOW_ARTIFACTS = "mlflow-artifacts"  # beside the SQLite store: its runs' artifacts (a model, config.yaml, report)

LEADERBOARD = "leaderboard.csv"
BEST_CONFIG = "best_config.yaml"
CURVES = "curves.png"
TRIALS = "trials"
SWEEP_PREPROCESS = "sweep_preprocess.json"  # the preprocessing a sweep fitted as it started; --resume reuses it
INPUTS = "inputs"  # data handed over in memory (app.train with a DataFrame or Dataset), saved as Parquet
OVERRIDES = "overrides.json"  # in each trial's run folder: the values the trial searched
MEMBERS = "members"  # model.kind ensemble: members/<kind>/ is each member's own run folder
MEMBER_SUMMARY = "member.json"  # in a member's folder once it finished: its best checkpoint and metrics
ENSEMBLE_CHECKPOINT = "checkpoint_ensemble"  # the ensemble's checkpoint: the members' best and the weights


def run_dir(cfg: Config) -> str:
    """The run's folder: an absolute local path or a URI."""
    return storage.join(storage.absolute(cfg.run.storage), cfg.name)


def checkpoint_name(epoch: int) -> str:
    return f"{CHECKPOINT_PREFIX}{epoch:04d}"
