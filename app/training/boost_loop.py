"""The per-worker loop of `model.kind: xgboost`: `xgboost.train` under Ray Train's
XGBoostTrainer, whose backend joins the workers into one distributed XGBoost (histograms
summed over the ranks, so every rank grows the same trees from its own shard).

    python -m app train --config configs/quickstart.yaml --set model.kind=xgboost

Each worker streams its shard of the prepared training and validation splits, block by
block, into a `QuantileDMatrix` (`ShardBlocks`, an `xgboost.DataIter`): the shard is held
only as XGBoost's quantised bins, never as a copy of its rows. Training goes in chunks of
`model.xgboost.checkpoint_every` rounds, one `xgboost.train` call each from the booster so
far, and after each chunk rank 0 writes a checkpoint (the networks' format: manifest and
checksums, app/checkpoint.py) that every rank reports to Ray Train. A chunk's random
row and column samples depend only on (seed, rounds before it): a run resumed from a
checkpoint after a worker or driver failure grows the very trees an uninterrupted run grows.

Early stopping watches the task's loss on the validation split every round; a checkpoint
predicts with its rounds up to the best so far (`best_round`), and the metrics reported
with it are that model's, from the same sums as the networks' (app/metrics.py).
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import ray.train

from app import boosting
from app import checkpoint as ckpt
from app.cluster import quiet_logs
from app.data.shards import ShardHandle
from app.data.transform import PreprocessState, tree_inputs
from app.metrics import MetricSums
from app.tracking import EpochLogger
from app.training.loop import Worker, derive_seed, peak_rss_mb, report_checkpoint, shard_handle

log = logging.getLogger(__name__)


@dataclass
class Rounds:
    """What a restarted worker group needs besides the booster."""

    epoch: int = 0  # rounds done (the checkpoint's "epoch")
    best_round: int = 0  # rounds of the model that predicts: the best validation loss so far
    best_value: float | None = None
    curves: dict[str, list[float]] = field(default_factory=lambda: {"train": [], "valid": []})  # per round
    history: list[dict[str, Any]] = field(default_factory=list)  # per checkpoint
    attempts: list[dict[str, Any]] = field(default_factory=list)

    def done(self, rounds: int, patience: int | None) -> bool:
        return self.epoch >= rounds or (patience is not None and self.epoch - self.best_round >= patience)


class ShardBlocks:
    """A shard as an `xgboost.DataIter` over its blocks (made in `data_iter`, where xgboost
    is imported); keeps the labels of the first pass when asked (the validation split's, for
    the metrics)."""

    def __init__(self, handle: ShardHandle, state: PreprocessState, keep_labels: bool = False):
        self.handle, self.state, self.keep_labels = handle, state, keep_labels
        self.types = boosting.feature_types(state)
        self.labels: list[np.ndarray] = []
        self._blocks = None

    def next(self, input_data) -> bool:
        if self._blocks is None:
            self._blocks = self.handle.blocks()
        block = next(self._blocks, None)
        if block is None:
            self.keep_labels = False  # one whole pass holds every label
            return False
        input_data(data=tree_inputs(block["x_num"], block["x_cat"], self.state), label=block["y"],
                    feature_types=self.types)
        if self.keep_labels:
            self.labels.append(np.array(block["y"]))
        return True

    def reset(self) -> None:
        if self.keep_labels:
            self.labels = []  # a pass cut short: the next one starts over
        self._blocks = None


def data_iter(blocks: ShardBlocks):
    import xgboost

    class Iter(xgboost.DataIter):
        def __init__(self):
            super().__init__(release_data=True)

        def next(self, input_data) -> bool:
            return blocks.next(input_data)

        def reset(self) -> None:
            blocks.reset()

    return Iter()


def boost_loop_per_worker(loop_config: dict[str, Any]) -> None:
    import xgboost

    quiet_logs()
    worker = Worker.from_context(loop_config)
    cfg, state, rank = worker.cfg, worker.state, worker.rank
    x = cfg.model.xgboost
    held = loop_config.get("held")
    attempt_started = time.time()

    train_blocks = ShardBlocks(shard_handle("train", held), state)
    valid_blocks = ShardBlocks(shard_handle("valid", held), state, keep_labels=True)
    dtrain = xgboost.QuantileDMatrix(data_iter(train_blocks), max_bin=x.max_bin, enable_categorical=True,
                                     nthread=boosting.threads(cfg))
    dvalid = xgboost.QuantileDMatrix(data_iter(valid_blocks), ref=dtrain, enable_categorical=True,
                                     nthread=boosting.threads(cfg))
    y_valid = np.concatenate(valid_blocks.labels)
    ingest_s = max(gather(time.time() - attempt_started))

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None and loop_config.get("resume_from"):
        from app import storage

        filesystem, path = storage.filesystem(loop_config["resume_from"])
        checkpoint = ray.train.Checkpoint(path, filesystem=filesystem)
    booster, progress = restore(checkpoint)
    if progress.done(x.rounds, x.early_stopping_rounds):
        return  # restored from the checkpoint where training had already ended

    base = boosting.params(cfg, state)
    metric = base["eval_metric"]
    total_rows = sum(gather(dtrain.num_row()))
    attempt = {"started": attempt_started, "ingest_s": ingest_s, "ingest_rows": total_rows + sum(gather(len(y_valid))),
               "ready": time.time(), "world_size": ray.train.get_context().get_world_size(),
               "from_epoch": progress.epoch, "data_cache": "quantized",
               "data_cache_reason": "xgboost holds each shard as its QuantileDMatrix bins"}
    progress.attempts.append(attempt)
    tracker = EpochLogger(loop_config.get("tracking"), worker.filesystem, worker.run_path) if rank == 0 else None
    scored: tuple[int, dict[str, float]] | None = None  # (best_round, its validation metrics)
    while not progress.done(x.rounds, x.early_stopping_rounds):
        chunk = min(x.checkpoint_every - progress.epoch % x.checkpoint_every, x.rounds - progress.epoch)
        started, before = time.perf_counter(), progress.epoch
        seed = derive_seed(cfg.train.seed, progress.epoch) % 2**31  # see the module's docstring
        booster = xgboost.train(dict(base, seed=seed), dtrain, num_boost_round=chunk, xgb_model=booster,
                                evals=[(dtrain, "train"), (dvalid, "valid")], verbose_eval=False,
                                callbacks=[Watch(worker, progress, metric, x.early_stopping_rounds)])
        elapsed = time.perf_counter() - started
        if scored is None or scored[0] != progress.best_round:
            scored = progress.best_round, validation_metrics(booster, dvalid, y_valid, state, progress.best_round)
        train_loss = progress.curves["train"][progress.best_round - 1]
        record = {"epoch": progress.epoch, "time": time.time(),
                  "train_loss": train_loss ** 2 if state.task != "classification" else train_loss,
                  **scored[1], "lr": x.learning_rate, "best_round": progress.best_round,
                  "epoch_time_s": elapsed, "rows_per_s": total_rows * (progress.epoch - before) / elapsed,
                  "batch_wait_frac": 0.0, "worker_peak_rss_mb": max(gather(peak_rss_mb()))}
        progress.history.append(record)
        save_and_report(worker, record, progress, booster, gather(fingerprint(booster)))
        if rank == 0:
            tracker.log(record)
            log.info(f"round {progress.epoch}/{x.rounds}  train_loss {record['train_loss']:.4f}  "
                     f"valid_loss {record['valid_loss']:.4f}  best round {progress.best_round}  "
                     f"{elapsed:.1f}s  {record['rows_per_s']:,.0f} row-rounds/s")
    if rank == 0:
        if progress.epoch < x.rounds:
            log.info(f"early stop: no validation {metric} improvement for {progress.epoch - progress.best_round} "
                     f"rounds (best {progress.best_value:.4g} at round {progress.best_round})")
        tracker.close()


def Watch(worker: Worker, progress: Rounds, metric: str, patience: int | None):  # noqa: N802 - a class factory
    """The callback of one chunk: records each round's training and validation loss, moves
    `best_round`, stops when `patience` rounds passed without a better validation loss,
    and injects the test fault (APP_FAULT's epoch counts rounds here)."""
    import xgboost

    class _Watch(xgboost.callback.TrainingCallback):
        def before_iteration(self, model, epoch: int, evals_log) -> bool:
            worker.die(epoch=model.num_boosted_rounds() + 1)
            return False

        def after_iteration(self, model, epoch: int, evals_log) -> bool:
            train, valid = evals_log["train"][metric][-1], evals_log["valid"][metric][-1]
            progress.epoch = model.num_boosted_rounds()
            progress.curves["train"].append(float(train))
            progress.curves["valid"].append(float(valid))
            if not math.isnan(valid) and (progress.best_value is None or valid < progress.best_value):
                progress.best_value, progress.best_round = float(valid), progress.epoch
            return patience is not None and progress.epoch - progress.best_round >= patience

    return _Watch()


def validation_metrics(booster, dvalid, y: np.ndarray, state: PreprocessState, rounds: int) -> dict[str, float]:
    """`valid_loss` and the task's metrics of the booster's first `rounds` rounds over the
    whole validation split: each rank's sums, merged (as the networks' loop does)."""
    margins = booster.predict(dvalid, output_margin=True, iteration_range=(0, rounds))
    total = MetricSums.empty(state)
    for part in gather(MetricSums.of(boosting.logits(margins, state), y, state)):
        total = total.merge(part)
    scores = total.metrics(state)
    return {"valid_loss": scores.pop("loss"), **scores}


def restore(checkpoint: ray.train.Checkpoint | None) -> tuple[Any, Rounds]:
    """The booster and progress of the checkpoint Ray hands us (after a failure or a
    rerun); (None, a fresh start) without one."""
    if checkpoint is None:
        return None, Rounds()
    with checkpoint.as_directory() as d:
        ckpt.verify(d)
        booster = boosting.load_booster(f"{d}/{ckpt.BOOSTER_FILE}")
        saved = ckpt.load_train_state(d)["progress"]
    return booster, Rounds(**saved)


def save_and_report(worker: Worker, record: dict[str, Any], progress: Rounds, booster,
                    fingerprints: list[str]) -> None:
    """Rank 0 writes a checkpoint of the booster and uploads it; every rank reports
    (`loop.report_checkpoint`, as the networks' loop does)."""
    def write(directory: str, train_state: dict[str, Any], after_first_file) -> None:
        ckpt.write_booster_checkpoint(directory, booster=booster, state=worker.state, model_cfg=worker.cfg.model,
                                      train_state=train_state, after_first_file=after_first_file)

    report_checkpoint(worker, record, asdict(progress), fingerprints, write)


def fingerprint(booster) -> str:
    return hashlib.sha256(bytes(booster.save_raw(raw_format="ubj"))).hexdigest()[:16]


def gather(obj: Any) -> list[Any]:
    """The object from every rank, in rank order, over XGBoost's own collective (the
    workers have no torch process group); just [obj] on one worker."""
    from xgboost import collective

    if not collective.is_distributed():
        return [obj]
    return [collective.broadcast(obj, root) for root in range(collective.get_world_size())]
