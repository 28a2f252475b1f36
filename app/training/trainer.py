"""Config -> `TorchTrainer` (or, for `model.kind: xgboost`, Ray Train's `XGBoostTrainer`):
the one builder that `train` and every `tune` trial fit.

    python -m app train --config configs/quickstart.yaml --set scaling.num_workers=2

The driver's run around it (data, fit, test scoring, metrics.json) is app/runner.py; where
a run resumes from, app/training/resume.py; what each worker runs, app/training/loop.py (app/training/boost_loop.py for xgboost).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import ray.train

from app import cluster, ray_compat, storage
from app.config import Config
from app.data.prepare import Prepared
from app.data.shards import HeldShards
from app.training import faults

if TYPE_CHECKING:
    from ray.train.torch import TorchTrainer


def build_trainer(cfg: Config, data: Prepared, callbacks: list | None = None,
                  tracking_spec: dict[str, Any] | None = None, resume_from: str | None = None,
                  fault: str | None = None, trial: str | None = None) -> TorchTrainer:
    """The TorchTrainer of a run: `train` fits it directly, each `tune` trial inside Tune.
    `cfg`: resolved (`cfg.resolved(train rows)`), once, where the run first knows its rows.
    `resume_from`: a checkpoint to start from when Ray Train has no record of the run's own.
    `fault`: the $APP_FAULT to inject (default: this process's; a sweep passes its driver's
    to the trials, whose processes need not have it). `trial`: the Tune trial it runs in, whose
    id starts each line of its workers; rank 0 draws a bar of each epoch's steps only outside
    a sweep, where this process's output is a terminal (app/progress.py)."""
    from app import progress

    if cfg.model.kind == "xgboost":
        from ray.train.xgboost import XGBoostTrainer as trainer_class

        from app.training.boost_loop import boost_loop_per_worker as loop
    else:
        from ray.train.torch import TorchTrainer as trainer_class

        from app.training.loop import train_loop_per_worker as loop

    if "auto" in (cfg.train.epochs, cfg.train.batch_size):
        raise ValueError("build_trainer: resolve the config first (cfg.resolved(train rows))")
    s, r = cfg.scaling, cfg.run
    num_workers = s.num_workers if isinstance(s.num_workers, int) else tuple(s.num_workers)
    held = isinstance(data.shards, HeldShards)
    # Ray Train's callbacks that have nothing to do here (see `ray_compat.without_default_callbacks`):
    # its data callback when no Ray Dataset goes to the workers, its placement-group cleaner
    # without a state API.
    unused = {"DatasetsCallback"} if held else set()
    if not cluster.has_state_api():
        unused.add("PlacementGroupCleanerCallback")
    return ray_compat.without_default_callbacks(trainer_class, unused)(
        loop,
        train_loop_config={"config": cfg.to_dict(), "preprocess": data.state.to_json(),
                           "fault": fault or os.environ.get(faults.ENV_VAR), "tracking": tracking_spec,
                           "resume_from": resume_from, "held": data.shards if held else None,
                           "trial": trial, "progress_bar": trial is None and progress.shown()},
        scaling_config=ray.train.ScalingConfig(
            num_workers=num_workers, use_gpu=s.use_gpu, resources_per_worker=cluster.worker_bundle(s),
            placement_strategy=s.placement_strategy),
        run_config=ray.train.RunConfig(
            name=cfg.name,
            storage_path=storage.absolute(r.storage),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=r.checkpoint.keep, checkpoint_score_attribute=r.checkpoint.metric,
                checkpoint_score_order=r.checkpoint.mode),
            failure_config=ray.train.FailureConfig(max_failures=r.max_failures),
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
            callbacks=callbacks,
        ),
        datasets=None if held else {"train": data.train, "valid": data.valid},
        dataset_config=None if held else data.shards,
    )
