"""Config -> `TorchTrainer`, and the driver's side of a training run.

    python -m app train --config configs/quickstart.yaml --set scaling.num_workers=2

`run_training` reads only like the story of a run: check inputs, prepare data, fit, score
the best checkpoint on the test split, write `metrics.json`. It returns the metrics,
so tests call it directly on a shrunken config.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Any

import ray.train
from ray.train.torch import TorchTrainer

from app import cluster, runs, storage, tracking
from app.config import Config, flatten
from app.data.prepare import Prepared, inspect_sources, prepare
from app.data.sources import Inputs, read_step
from app.data.transform import PreprocessState
from app.errors import UserError
from app.metrics import json_safe
from app.predictor import evaluate_dataset
from app.training import faults
from app.training.checkpoint import load_preprocess_state, load_train_state, local_copy, verify
from app.training.loop import train_loop_per_worker

# Keys of an epoch record that describe the run, not the model: left out of "valid".
EPOCH_STATS = ("time", "lr", "epoch_time_s", "rows_per_s", "batch_wait_frac", "worker_peak_rss_mb")


def preflight(cfg: Config) -> Inputs:
    """Everything that can be checked without Ray: config, sources, storage."""
    faults.from_env()  # a malformed $APP_FAULT fails here, not in a worker
    inputs = inspect_sources(cfg)
    storage.check_writable(storage.absolute(cfg.run.storage), "run.storage")
    return inputs


def run_training(cfg: Config, inputs: Inputs | None = None, ray_start_s: float | None = None) -> dict[str, Any]:
    """Train per `cfg` on the connected Ray cluster; return what metrics.json holds.

    `ray_start_s`: how long connecting to Ray took, for the timings in metrics.json."""
    inputs = inputs or preflight(cfg)
    out_dir = runs.run_dir(cfg)
    finished = finished_metrics(cfg)
    if finished is not None:
        return finished
    cluster.check_resources(cfg.scaling)
    cluster.check_shared_storage(storage.absolute(cfg.run.storage))

    started = time.time()
    restart_from = set_aside_cut_snapshot(out_dir)
    resume = resume_point(cfg, out_dir, inputs, restart_from)
    if resume is not None:
        print(f"resuming from {resume.checkpoint} (epoch {resume.epoch} done); --fresh starts over")
    data = prepare(cfg, inputs, fitted=resume.state if resume else None)
    cfg = cfg.resolved(data.counts["train"])
    print(f"data: {data.counts['train']} train / {data.counts['valid']} valid rows, task {data.state.task}, "
          f"{len(data.state.numeric)} numeric + {len(data.state.categorical)} categorical features; "
          f"model {cfg.model.kind}, {cfg.train.epochs} epochs at most, batch {cfg.train.batch_size}")
    storage.write_text(storage.join(out_dir, runs.CONFIG), cfg.to_yaml())

    spec = tracking.start(cfg, out_dir)
    fit_started = time.time()
    build_trainer(cfg, data, tracking_spec=spec, resume_from=restart_from).fit()
    fit_ended = time.time()
    metrics = summarize(cfg, out_dir, data, inputs.test or inputs.train)
    metrics["wall_time_s"] = time.time() - started
    metrics["timings"] = timings(metrics, ray_start_s, started, fit_started, fit_ended)
    print("timings: " + ", ".join(f"{k.removesuffix('_s').replace('_', ' ')} {v:.1f}s"
                                  for k, v in metrics["timings"].items() if v is not None))
    storage.write_json(storage.join(out_dir, runs.METRICS), json_safe(metrics))
    tracking.finish(spec, metrics)
    print("test: " + "  ".join(f"{k} {v:.4f}" for k, v in metrics["test"].items() if k != "loss"))
    if cfg.report.baselines:
        from app.baselines import comparison_table, run_baselines

        print(comparison_table(metrics["test"], run_baselines(cfg, data), cfg.model.kind))
    print(f"run folder: {out_dir}")
    return metrics


def timings(metrics: dict[str, Any], ray_start_s: float | None, started: float, fit_started: float,
            fit_ended: float) -> dict[str, float | None]:
    """Where the wall time of this invocation went, in seconds: Ray start, data read and
    preprocessing, worker-group start (until its first attempt here began), shard ingest,
    training (epochs with validation and checkpoints), scoring the test split."""
    ours = [a for a in metrics.get("attempts", []) if a["started"] >= fit_started]
    first = ours[0] if ours else None
    epochs = [r for r in metrics["history"] if r["time"] >= fit_started]
    return {
        "ray_start_s": ray_start_s,
        "data_s": fit_started - started,
        "worker_start_s": first["started"] - fit_started if first else None,
        "ingest_s": first["ingest_s"] if first else None,
        "train_s": fit_ended - first["ready"] if first else None,
        "train_steps_s": sum(r["epoch_time_s"] for r in epochs),
        "test_s": started + metrics["wall_time_s"] - fit_ended,
    }


def summarize(cfg: Config, out_dir: str, data: Prepared, test_source) -> dict[str, Any]:
    """metrics.json of a finished training run, from what it left in storage: the best and
    the latest registered checkpoints; the best one scores the test split."""
    snapshot = storage.read_json(storage.join(out_dir, runs.RAY_CHECKPOINTS)) or {}
    registered = [r for r in snapshot.get("checkpoint_results", []) if r.get("checkpoint_dir_name")]
    if not registered:
        raise RuntimeError(f"run {cfg.name!r} registered no checkpoint")
    best = best_result(registered, cfg.run.checkpoint.metric, cfg.run.checkpoint.mode)
    best_uri = storage.join(out_dir, best["checkpoint_dir_name"])
    with local_copy(storage.join(out_dir, snapshot["latest_checkpoint_result"]["checkpoint_dir_name"])) as latest:
        final = load_train_state(latest)
    test = read_step(lambda: evaluate_dataset(best_uri, data.test_raw, data.state, details=True), test_source)
    return {
        "task": data.state.task,
        "valid": {k: v for k, v in best["metrics"].items() if k not in EPOCH_STATS},
        "test": test.pop("metrics"),
        "test_details": test,
        "best_checkpoint": best_uri,
        "best_epoch": best["metrics"]["epoch"],
        "epochs_completed": final["epoch"],
        "history": final["progress"]["history"],
        "attempts": final["progress"].get("attempts", []),
        "rows": data.counts,
        "num_workers": final["world_size"],
        "param_fingerprints": final["param_fingerprints"],
    }


def best_result(results: list[dict[str, Any]], metric: str, mode: str) -> dict[str, Any]:
    """The registered checkpoint with the best metric (NaN never wins; ties: the earliest)."""
    def key(r: dict[str, Any]) -> tuple[bool, float, int]:
        value = r["metrics"].get(metric)
        missing = value is None or value != value
        return missing, (0.0 if missing else value if mode == "min" else -value), r["metrics"]["epoch"]

    return min(results, key=key)


@dataclass
class ResumePoint:
    checkpoint: str
    epoch: int
    state: PreprocessState  # never refitted on resume


def latest_checkpoint(out_dir: str) -> str | None:
    """The checkpoint Ray Train will resume this run from, if any (its registered latest)."""
    snapshot = storage.read_json(storage.join(out_dir, runs.RAY_CHECKPOINTS)) or {}
    name = (snapshot.get("latest_checkpoint_result") or {}).get("checkpoint_dir_name")
    return storage.join(out_dir, name) if name else None


def set_aside_cut_snapshot(out_dir: str) -> str | None:
    """Ray Train rewrites its record of the run's checkpoints in place; on a local disk, a
    driver killed in the middle leaves it empty or cut short, and Ray could not resume from
    it. Such a record is moved aside; the newest intact checkpoint folder, returned here,
    is then where training resumes (None: there is none, or the record is fine)."""
    path = storage.join(out_dir, runs.RAY_CHECKPOINTS)
    try:
        storage.read_json(path)
        return None
    except UserError:
        pass
    fs, fs_path = storage.filesystem(path)
    fs.move(fs_path, f"{fs_path}.cut-short-{int(time.time())}")
    folders = sorted((e.name for e in storage.listdir(out_dir)
                      if e.is_dir and e.name.startswith(runs.CHECKPOINT_PREFIX)), reverse=True)
    for name in folders:
        uri = storage.join(out_dir, name)
        try:
            with local_copy(uri) as directory:
                verify(directory, uri)
        except UserError:
            continue  # cut short too: an older one then
        print(f"warning: {path} was cut short (the driver died while Ray Train wrote it); set aside, resuming "
              f"from the newest intact checkpoint", file=sys.stderr)
        return uri
    return None


def resume_point(cfg: Config, out_dir: str, inputs: Inputs, uri: str | None = None) -> ResumePoint | None:
    """Check the checkpoint an interrupted run would resume from (`uri`, else Ray Train's
    latest registered one): intact, and made by this config."""
    uri = uri or latest_checkpoint(out_dir)
    if uri is None:
        return None
    hint = "; pass --fresh to start over"
    try:
        with local_copy(uri) as directory:
            manifest = verify(directory, uri)
            saved_tree = load_train_state(directory)["config"]
            # A run from before model kinds and quantile scaling: an mlp on standard scaling.
            saved_tree["model"] = {"kind": "mlp"} | saved_tree.get("model", {})
            saved_tree["preprocess"] = {"numeric_scaling": "standard"} | saved_tree.get("preprocess", {})
            saved = Config.model_validate(saved_tree)
            state = load_preprocess_state(directory)
    except UserError as e:
        raise UserError(f"{e}{hint}") from None
    except (ValueError, KeyError, OSError) as e:
        raise UserError(f"checkpoint {uri}: unreadable ({e}){hint}") from None
    # train, scaling and run may change between attempts (more epochs, other workers).
    for section in ("data", "preprocess", "model"):
        before = flatten(getattr(saved, section).model_dump(mode="json"), section)
        now = flatten(getattr(cfg, section).model_dump(mode="json"), section)
        for key in sorted(set(before) | set(now)):
            if before.get(key) != now.get(key):
                raise UserError(f"checkpoint {uri} does not fit this run: {key} is {before.get(key)!r} there "
                                f"and {now.get(key)!r} here{hint}")
    if inputs.input_types != state.input_types:
        changed = sorted(set(inputs.input_types.items()) ^ set(state.input_types.items()))
        raise UserError(f"checkpoint {uri} does not fit this run: the input columns differ "
                        f"({', '.join(f'{n}: {t}' for n, t in changed)}){hint}")
    return ResumePoint(uri, manifest["epoch"], state)


def finished_metrics(cfg: Config) -> dict[str, Any] | None:
    """metrics.json of a run of this name that already finished, announced; else None."""
    path = storage.join(runs.run_dir(cfg), runs.METRICS)
    finished = storage.read_json(path)
    if finished is not None:
        print(f"run {cfg.name!r} already finished: {path} (pass --fresh to train it again)")
    return finished


def build_trainer(cfg: Config, data: Prepared, callbacks: list | None = None,
                  tracking_spec: dict[str, Any] | None = None, resume_from: str | None = None) -> TorchTrainer:
    """The TorchTrainer of a run: `train` fits it directly, each `tune` trial inside Tune.
    `resume_from`: a checkpoint to start from when Ray Train has no record of the run's own."""
    cfg = cfg.resolved(data.counts["train"])
    s, r = cfg.scaling, cfg.run
    num_workers = s.num_workers if isinstance(s.num_workers, int) else tuple(s.num_workers)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": cfg.to_dict(), "preprocess": data.state.to_json(),
                           "fault": os.environ.get(faults.ENV_VAR), "tracking": tracking_spec,
                           "resume_from": resume_from},
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
        datasets={"train": data.train, "valid": data.valid},
        dataset_config=data.shards,
    )
