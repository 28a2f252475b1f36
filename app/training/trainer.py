"""Config -> `TorchTrainer`, and the driver's side of a training run.

    python -m app train --config configs/quickstart.yaml --set scaling.num_workers=2

`run_training` reads only like the story of a run: check inputs, prepare data, fit, score
the best checkpoint on the test split, write `metrics.json`. It returns the metrics,
so tests call it directly on a shrunken config.

The modules built on torch (`TORCH_BOUND`) are imported where they are used, not here:
`train` checks its inputs with this module loaded, then starts Ray while they load in the
background (`import_in_background`).
"""

from __future__ import annotations

import importlib
import math
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import ray.train

from app import cluster, runs, storage, tracking
from app.config import Config, flatten
from app.data.prepare import SMALL_INPUT_BYTES, Prepared, inspect_sources, prepare
from app.data.shards import HeldShards
from app.data.sources import Inputs, Source, read_step
from app.data.transform import PreprocessState
from app.errors import UserError
from app.metrics import json_safe
from app.redact import redact_tree
from app.training import faults

if TYPE_CHECKING:
    from ray.train.torch import TorchTrainer

    from app.training.checkpoint import Intact

# What a run imports only once Ray is up: torch (2-4 s of the import on 2 cores) and ours on it.
TORCH_BOUND = ("torch", "ray.train.torch", "app.training.checkpoint", "app.predictor", "app.training.loop")

# Keys of an epoch record that describe the run, not the model: left out of "valid".
EPOCH_STATS = ("time", "lr", "epoch_time_s", "rows_per_s", "batch_wait_frac", "worker_peak_rss_mb")


def preflight(cfg: Config) -> Inputs:
    """Everything that can be checked without Ray: config, sources, storage."""
    faults.from_env()  # a malformed $APP_FAULT fails here, not in a worker
    inputs = inspect_sources(cfg)
    storage.check_writable(storage.absolute(cfg.run.storage), "run.storage")
    return inputs


def wants_dashboard(cfg: Config, inputs: Inputs) -> bool:
    """`run.dashboard`: whether a Ray that `train` starts for itself runs the dashboard."""
    auto = cfg.run.dashboard == "auto"
    return inputs.train.total_bytes > SMALL_INPUT_BYTES if auto else cfg.run.dashboard


def import_in_background() -> None:
    """Import `TORCH_BOUND` on a daemon thread, to overlap with what the caller does next
    (starting Ray: mostly waiting on its processes). A module that fails to import here is
    imported again where it is used, which raises."""
    def load() -> None:
        for name in TORCH_BOUND:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - see the docstring
                return

    threading.Thread(target=load, name="app-imports", daemon=True).start()


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
    resume = resume_point(cfg, out_dir, inputs)
    if resume is not None:
        print(f"resuming from {resume.checkpoint} (epoch {resume.epoch} done); --fresh starts over")
    spec = tracking.start_in_actor(cfg, out_dir)  # MLflow gets ready beside the data step
    try:
        data = prepare(cfg, inputs, fitted=resume.state if resume else None)
        cfg = cfg.resolved(data.counts["train"])
        print(f"data: {data.counts['train']} train / {data.counts['valid']} valid rows, task {data.state.task}, "
              f"{len(data.state.numeric)} numeric + {len(data.state.categorical)} categorical features; "
              f"model {cfg.model.kind}, {cfg.train.epochs} epochs at most, batch {cfg.train.batch_size}")
        storage.mark_owned(out_dir, "run")  # (the command line marked it already; run_training alone has not)
        storage.write_text(storage.join(out_dir, runs.CONFIG), cfg.to_yaml())

        tracking.open_run(spec, cfg)
        fit_started = time.time()
        build_trainer(cfg, data, tracking_spec=spec, resume_from=resume.resume_from if resume else None).fit()
        fit_ended = time.time()
        metrics = summarize(cfg, out_dir, data, inputs.test or inputs.train)
        metrics["wall_time_s"] = time.time() - started
        metrics["timings"] = timings(metrics, ray_start_s, started, fit_started, fit_ended)
        print("timings: " + ", ".join(f"{k.removesuffix('_s').replace('_', ' ')} {v:.1f}s"
                                      for k, v in metrics["timings"].items() if v is not None))
        storage.write_json(storage.join(out_dir, runs.METRICS), json_safe(redact_tree(metrics)))  # no credentials
        tracking.finish(spec, metrics)
    finally:
        tracking.release(spec)
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


def summarize(cfg: Config, out_dir: str, data: Prepared, test_source: Source) -> dict[str, Any]:
    """metrics.json of a finished training run, from what it left in storage: the best and
    the latest registered checkpoints; the best one scores the test split, in this process
    when its source is small (as the data step does), else on the cluster."""
    from app.predictor import evaluate_dataset
    from app.training.checkpoint import load_train_state, local_copy

    snapshot = storage.read_json(storage.join(out_dir, runs.RAY_CHECKPOINTS)) or {}
    registered = [r for r in snapshot.get("checkpoint_results", []) if r.get("checkpoint_dir_name")]
    if not registered:
        raise RuntimeError(f"run {cfg.name!r} registered no checkpoint")
    best = best_result(registered, cfg.run.checkpoint.metric, cfg.run.checkpoint.mode)
    best_uri = storage.join(out_dir, best["checkpoint_dir_name"])
    with local_copy(storage.join(out_dir, snapshot["latest_checkpoint_result"]["checkpoint_dir_name"])) as latest:
        final = load_train_state(latest)
    here = test_source.total_bytes <= SMALL_INPUT_BYTES
    rows = data.test_tables if here and data.test_tables is not None else data.test_raw
    test = read_step(lambda: evaluate_dataset(best_uri, rows, data.state, details=True, here=here), test_source)
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
        missing = value is None or math.isnan(value)
        return missing, (0.0 if missing else value if mode == "min" else -value), r["metrics"]["epoch"]

    return min(results, key=key)


@dataclass
class ResumePoint:
    checkpoint: str
    epoch: int
    state: PreprocessState  # never refitted on resume
    registered: bool = True  # Ray Train's record names it as the latest; else the loop config must

    @property
    def resume_from(self) -> str | None:
        """For `build_trainer`: the checkpoint when Ray Train would not hand it to the workers."""
        return None if self.registered else self.checkpoint


RESUME_HINT = "; pass --fresh to start over"


def latest_checkpoint(out_dir: str) -> str | None:
    """The checkpoint Ray Train registered last in this run, if any."""
    snapshot = storage.read_json(storage.join(out_dir, runs.RAY_CHECKPOINTS)) or {}
    name = (snapshot.get("latest_checkpoint_result") or {}).get("checkpoint_dir_name")
    return storage.join(out_dir, name) if name else None


def read_snapshot(out_dir: str) -> dict[str, Any] | None:
    """Ray Train's record of the run's checkpoints; None when there is none.

    Ray Train rewrites that record in place; on a local disk, a driver killed in the middle
    leaves it empty or cut short, and Ray could not resume from it. Such a record is moved
    aside (`.cut-short-<time>`, kept) and None returned: the checkpoint folders are then all
    there is to resume from."""
    path = storage.join(out_dir, runs.RAY_CHECKPOINTS)
    try:
        snapshot = storage.read_json(path)
        if snapshot is None or isinstance(snapshot, dict):
            return snapshot
    except UserError:
        pass  # not JSON: cut short
    fs, fs_path = storage.filesystem(path)
    aside = f"{fs_path}.cut-short-{int(time.time())}"
    fs.move(fs_path, aside)
    print(f"warning: {path} was cut short (the driver died while Ray Train wrote it); set aside as {aside}, "
          f"resuming from the newest intact checkpoint folder", file=sys.stderr)
    return None


def registered_newest_first(snapshot: dict[str, Any]) -> list[str]:
    """The folder names of the checkpoints Ray Train registered: its latest, then the rest by epoch."""
    latest = (snapshot.get("latest_checkpoint_result") or {}).get("checkpoint_dir_name")
    results = sorted(snapshot.get("checkpoint_results") or [], key=lambda r: r.get("metrics", {}).get("epoch", 0),
                     reverse=True)
    names = [latest] if latest else []
    return names + [r["checkpoint_dir_name"] for r in results if r["checkpoint_dir_name"] not in names]


def roll_back(snapshot: dict[str, Any], *, dropped: set[str], latest: str) -> dict[str, Any]:
    """Ray Train's record of the run's checkpoints without the `dropped` ones and with `latest`
    as the latest: Ray Train hands its latest checkpoint to the workers, so this is how a run
    resumes from an older one. Report indices only grow, so the ones kept stay valid."""
    def kept(entry: dict[str, Any]) -> bool:
        return entry["checkpoint_dir_name"] not in dropped

    out = dict(snapshot)
    pairs = [p for p in zip(snapshot["checkpoint_results"], snapshot["checkpoint_report_indices"]) if kept(p[0])]
    out["checkpoint_results"] = [result for result, _ in pairs]
    out["checkpoint_report_indices"] = [index for _, index in pairs]
    pending = [p for p in zip(snapshot.get("pending_training_results", []), snapshot.get("pending_validation_specs", []))
               if kept(p[0])]
    if "pending_training_results" in snapshot:
        out["pending_training_results"] = [result for result, _ in pending]
        out["pending_validation_specs"] = [spec for _, spec in pending]
    for key in ("validated_checkpoint_dir_names", "timed_out_validation_checkpoint_dir_names",
                "failed_validation_checkpoint_dir_names"):
        if key in snapshot:
            out[key] = [name for name in snapshot[key] if name not in dropped]
    out["latest_checkpoint_result"] = next(r for r in out["checkpoint_results"] if r["checkpoint_dir_name"] == latest)
    return out


def choose_checkpoint(out_dir: str) -> tuple[Intact, bool] | None:
    """The newest intact checkpoint of an interrupted run, and whether Ray Train's record
    names it as its latest; None: nothing to resume from.

    Candidates, newest first: the checkpoints Ray Train registered when its record is
    readable, otherwise the checkpoint folders. One warning names each candidate skipped
    (corrupt, incomplete, missing) and why; skipped folders stay as they are, and a redone
    epoch writes its checkpoint over them. When the record's latest is skipped, the record
    is rolled back to the chosen one (the original kept beside it as `.rolled-back-<time>`).
    Registered checkpoints none of which is intact are a UserError: starting over silently
    would throw the run's progress away."""
    from app.training.checkpoint import newest_intact

    snapshot = read_snapshot(out_dir)
    if snapshot is None:
        names = sorted((e.name for e in storage.listdir(out_dir)
                        if e.is_dir and e.name.startswith(runs.CHECKPOINT_PREFIX)), reverse=True)
    else:
        names = registered_newest_first(snapshot)
    found, skipped = newest_intact(storage.join(out_dir, name) for name in names)
    if found is None and skipped and snapshot is not None:
        raise UserError(f"{out_dir}: no intact checkpoint to resume from ({'; '.join(skipped)}){RESUME_HINT}")
    if skipped:
        outcome = f"resuming from {found.uri}" if found else "starting over"
        print(f"warning: {len(skipped)} checkpoint(s) skipped, {outcome}:\n  " + "\n  ".join(skipped),
              file=sys.stderr)
    if found is None:
        return None
    if snapshot is not None and skipped:
        path = storage.join(out_dir, runs.RAY_CHECKPOINTS)
        storage.write_json(f"{path}.rolled-back-{int(time.time())}", snapshot)
        storage.write_json(path, roll_back(snapshot, dropped=set(names[:len(skipped)]),
                                           latest=storage.name(found.uri)))
    return found, snapshot is not None


def saved_config(train_state: dict[str, Any]) -> Config:
    """The config a checkpoint was made with."""
    tree = train_state["config"]
    # A run from before model kinds and quantile scaling: an mlp on standard scaling.
    tree["model"] = {"kind": "mlp"} | tree.get("model", {})
    tree["preprocess"] = {"numeric_scaling": "standard"} | tree.get("preprocess", {})
    return Config.model_validate(tree)


def check_same_setup(saved: Config, cfg: Config, what: str, *, ignore: frozenset[str] = frozenset()) -> None:
    """Refuse to continue `what` (made with `saved`) under `cfg` if its data, preprocess or model
    section differs: the fitted preprocessing and the weights would not fit. The `train`,
    `scaling` and `run` sections may change between attempts (more epochs, other workers).
    `ignore`: keys that do not matter here (a sweep's searched keys)."""
    for section in ("data", "preprocess", "model"):
        # Checkpoints hold the config with URI credentials redacted (app/redact.py): compared so.
        before = flatten(redact_tree(getattr(saved, section).model_dump(mode="json")), section)
        now = flatten(redact_tree(getattr(cfg, section).model_dump(mode="json")), section)
        for key in sorted((set(before) | set(now)) - ignore):
            if before.get(key) != now.get(key):
                raise UserError(f"{what} does not fit this run: {key} is {before.get(key)!r} there "
                                f"and {now.get(key)!r} here{RESUME_HINT}")


def check_same_inputs(inputs: Inputs, state: PreprocessState, what: str) -> None:
    """Refuse fitted preprocessing made for other input columns or types."""
    if inputs.input_types != state.input_types:
        changed = sorted(set(inputs.input_types.items()) ^ set(state.input_types.items()))
        raise UserError(f"{what} does not fit this run: the input columns differ "
                        f"({', '.join(f'{n}: {t}' for n, t in changed)}){RESUME_HINT}")


def resume_point(cfg: Config, out_dir: str, inputs: Inputs) -> ResumePoint | None:
    """Where an interrupted run continues: its newest intact checkpoint (`choose_checkpoint`),
    made by this config."""
    chosen = choose_checkpoint(out_dir)
    if chosen is None:
        return None
    found, registered = chosen
    what = f"checkpoint {found.uri}"
    try:
        saved = saved_config(found.train_state)
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{what}: unreadable ({e}){RESUME_HINT}") from None
    check_same_setup(saved, cfg, what)
    check_same_inputs(inputs, found.state, what)
    return ResumePoint(found.uri, found.manifest["epoch"], found.state, registered)


def finished_metrics(cfg: Config) -> dict[str, Any] | None:
    """metrics.json of a run of this name that already finished, announced; else None."""
    path = storage.join(runs.run_dir(cfg), runs.METRICS)
    finished = storage.read_json(path)
    if finished is not None:
        print(f"run {cfg.name!r} already finished: {path} (pass --fresh to train it again)")
    return finished


def build_trainer(cfg: Config, data: Prepared, callbacks: list | None = None,
                  tracking_spec: dict[str, Any] | None = None, resume_from: str | None = None,
                  fault: str | None = None) -> TorchTrainer:
    """The TorchTrainer of a run: `train` fits it directly, each `tune` trial inside Tune.
    `resume_from`: a checkpoint to start from when Ray Train has no record of the run's own.
    `fault`: the $APP_FAULT to inject (default: this process's; a sweep passes its driver's
    to the trials, whose processes need not have it)."""
    from ray.train.torch import TorchTrainer

    from app.training.loop import train_loop_per_worker

    cfg = cfg.resolved(data.counts["train"])
    s, r = cfg.scaling, cfg.run
    num_workers = s.num_workers if isinstance(s.num_workers, int) else tuple(s.num_workers)
    held = isinstance(data.shards, HeldShards)
    # Ray Train's callbacks that have nothing to do here (see `_without`): its data callback
    # when no Ray Dataset goes to the workers, its placement-group cleaner without a state API.
    unused = {"DatasetsCallback"} if held else set()
    if not cluster.has_state_api():
        unused.add("PlacementGroupCleanerCallback")
    return _without(TorchTrainer, unused)(
        train_loop_per_worker,
        train_loop_config={"config": cfg.to_dict(), "preprocess": data.state.to_json(),
                           "fault": fault or os.environ.get(faults.ENV_VAR), "tracking": tracking_spec,
                           "resume_from": resume_from, "held": data.shards if held else None},
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


def _without(trainer: type[TorchTrainer], unused: set[str]) -> type[TorchTrainer]:
    """`trainer` without the default callbacks of Ray Train named in `unused`. Each of them
    starts an actor process (about 1.5 s of CPU to start on 2 cores) for nothing here:
    - `DatasetsCallback` starts a DatasetManager that hands out Ray Dataset shards, when the
      workers read `HeldShards` instead;
    - `PlacementGroupCleanerCallback` starts an actor that asks Ray's state API every second
      whether the Train controller lives, to free the workers' placement group if it died
      while the cluster lives on. Under a Ray this process started without its dashboard
      there is no state API to ask (it would log a warning each second), and the cluster
      ends with this process anyway.
    A name Ray Train no longer uses leaves its callbacks as they are."""
    if not unused:
        return trainer

    class Trainer(trainer):
        def _create_default_callbacks(self):
            return [c for c in super()._create_default_callbacks() if type(c).__name__ not in unused]

    return Trainer
