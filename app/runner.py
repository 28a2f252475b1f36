"""The driver's side of a training run, from checked inputs to `metrics.json`.

    python -m app train --config configs/quickstart.yaml --set scaling.num_workers=2

`run_training` reads only like the story of a run: check inputs, prepare data, fit, score
the best checkpoint on the test split, write `metrics.json`. It returns the metrics,
so tests call it directly on a shrunken config. Where it resumes from is
app/training/resume.py; the `TorchTrainer` it fits comes from app/training/trainer.py; the
test split is scored by app/predictor.py, the one scoring path.

The modules built on torch (`TORCH_BOUND`) are imported where they are used, not here:
`train` checks its inputs with this module loaded, then starts Ray while they load in the
background (`import_in_background`).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from app import cluster, runs, storage, tracking
from app.config import Config
from app.data.prepare import SMALL_INPUT_BYTES, Prepared, inspect_sources, prepare
from app.data.sources import Inputs, Source, read_step
from app.metrics import json_safe
from app.redact import redact_tree
from app.training import faults
from app.training.resume import resume_point
from app.training.trainer import build_trainer

log = logging.getLogger(__name__)

# What a run imports only once Ray is up: torch (2-4 s of the import on 2 cores) and ours on it.
TORCH_BOUND = ("torch", "ray.train.torch", "app.checkpoint", "app.predictor", "app.training.loop")

# Keys of an epoch record that describe the run, not the model: left out of "valid".
EPOCH_STATS = ("time", "lr", "epoch_time_s", "rows_per_s", "batch_wait_frac", "worker_peak_rss_mb", "best_round")


def preflight(cfg: Config) -> Inputs:
    """Everything that can be checked without Ray: config, sources, storage."""
    faults.from_env()  # a malformed $APP_FAULT fails here, not in a worker
    kinds = set(cfg.model.ensemble.members) if cfg.model.kind == "ensemble" else {cfg.model.kind}
    if "xgboost" in kinds:
        from app.extras import require

        require("xgboost", "xgboost", what=f"model.kind: {cfg.model.kind}")
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
        log.info(f"resuming from {resume.checkpoint} (epoch {resume.epoch} done); --fresh starts over")
    fitted = resume.state if resume else members_fitted(cfg, out_dir, inputs)
    spec = tracking.start_in_actor(cfg, out_dir)  # MLflow gets ready beside the data step
    try:
        data = prepare(cfg, inputs, fitted=fitted)
        cfg = cfg.resolved(data.counts["train"])  # auto epochs and batch size: from here on, concrete
        log.info(f"data: {data.counts['train']} train / {data.counts['valid']} valid rows, task {data.state.task}, "
                 f"{len(data.state.numeric)} numeric + {len(data.state.categorical)} categorical features; "
                 f"model {cfg.model.kind}, " + (f"{cfg.model.xgboost.rounds} rounds at most" if cfg.model.kind == "xgboost"
                                            else f"{cfg.train.epochs} epochs at most, batch {cfg.train.batch_size}"))
        storage.mark_owned(out_dir, "run")  # (the command line marked it already; run_training alone has not)
        storage.write_text(storage.join(out_dir, runs.CONFIG), cfg.to_yaml())

        tracking.open_run(spec, cfg)
        fit_started = time.time()
        if cfg.model.kind == "ensemble":
            members = train_members(cfg, out_dir, data, inputs)
            fit_ended = time.time()
            metrics = summarize_ensemble(cfg, out_dir, data, inputs.test or inputs.train, members)
        else:
            with ray_train_sigint():
                build_trainer(cfg, data, tracking_spec=spec, resume_from=resume.resume_from if resume else None).fit()
            fit_ended = time.time()
            metrics = summarize(cfg, out_dir, data, inputs.test or inputs.train)
        metrics["wall_time_s"] = time.time() - started
        metrics["timings"] = timings(metrics, ray_start_s, started, fit_started, fit_ended)
        log.info("timings: " + ", ".join(f"{k.removesuffix('_s').replace('_', ' ')} {v:.1f}s"
                                         for k, v in metrics["timings"].items() if v is not None))
        storage.write_json(storage.join(out_dir, runs.METRICS), json_safe(redact_tree(metrics)))  # no credentials
        tracking.finish(spec, metrics)
    finally:
        tracking.release(spec)
    log.info("test: " + "  ".join(f"{k} {v:.4f}" for k, v in metrics["test"].items() if k != "loss"))
    if cfg.report.wants_baselines(data.counts["train"]):  # `auto`: small runs only
        from app.baselines import comparison_table, run_baselines

        log.info(comparison_table(metrics["test"], run_baselines(cfg, data), cfg.model.kind))
    log.info(f"run folder: {out_dir}")
    return metrics


@contextmanager
def ray_train_sigint() -> Iterator[None]:
    """Around `TorchTrainer.fit()`. In the main thread fit() installs Ray Train's own SIGINT
    handler, which on Ctrl-C aborts the run (its controller stops the workers) and then calls
    `sys.exit`: fit() ends in SystemExit (code 0, or 1 where it interrupted a `ray.get`). That
    is a Ctrl-C, and leaves here as KeyboardInterrupt, as any other Ctrl-C does. Ray leaves
    its handler installed; the previous one is put back, so that a Ctrl-C after fit() does
    not abort a controller that is gone. (Checked: Ray 2.60, ray/train/v2/api/
    data_parallel_trainer.py, `_register_sigint_handler`.)"""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if main else None
    try:
        yield
    except SystemExit:
        raise KeyboardInterrupt from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def finished_metrics(cfg: Config) -> dict[str, Any] | None:
    """metrics.json of a run of this name that already finished, announced; else None."""
    path = storage.join(runs.run_dir(cfg), runs.METRICS)
    finished = storage.read_json(path)
    if finished is not None:
        log.info(f"run {cfg.name!r} already finished: {path} (pass --fresh to train it again)")
    return finished


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
    the latest registered checkpoints. The best one is calibrated on the validation split
    (app/calibration.py; recorded in it), then scores the test split with its calibration,
    in this process when its source is small (as the data step does), else on the cluster."""
    from app.calibration import calibrate
    from app.checkpoint import load_train_state, local_copy
    from app.predictor import evaluate_dataset

    snapshot = storage.read_json(storage.join(out_dir, runs.RAY_CHECKPOINTS)) or {}
    registered = [r for r in snapshot.get("checkpoint_results", []) if r.get("checkpoint_dir_name")]
    if not registered:
        raise RuntimeError(f"run {cfg.name!r} registered no checkpoint")
    best = best_result(registered, cfg.run.checkpoint.metric, cfg.run.checkpoint.mode)
    best_uri = storage.join(out_dir, best["checkpoint_dir_name"])
    with local_copy(storage.join(out_dir, snapshot["latest_checkpoint_result"]["checkpoint_dir_name"])) as latest:
        final = load_train_state(latest)
    calibrated = calibrate(cfg.train, data, best_uri)
    here = test_source.total_bytes <= SMALL_INPUT_BYTES
    rows = data.test_tables if here and data.test_tables is not None else data.test_raw
    test = read_step(lambda: evaluate_dataset(best_uri, rows, data.state, details=True, here=here,
                                              calibration="calibration" in calibrated), test_source)
    if "calibration" in calibrated:
        calibrated["calibration"]["test"] = test.pop("calibration")
    if cfg.report.importance:
        calibrated |= read_step(lambda: test_importance(cfg, best_uri, rows, here), test_source)
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
        # xgboost: the training and validation loss of every round (its boosting curves)
        **({"boosting_curves": final["progress"]["curves"]} if "curves" in final["progress"] else {}),
        **calibrated,
    }


# ---------------------------------------------------------------- model.kind: ensemble (app/ensemble.py)


def members_fitted(cfg: Config, out_dir: str, inputs: Inputs):
    """An ensemble resumed: the preprocessing its members were trained with (never refitted),
    from the first member with an intact checkpoint of this config; else None."""
    if cfg.model.kind != "ensemble":
        return None
    from app.ensemble import member_config

    for kind in cfg.model.ensemble.members:
        mcfg = member_config(cfg, kind, out_dir)
        found = resume_point(mcfg, runs.run_dir(mcfg), inputs)
        if found is not None:
            return found.state
    return None


def train_members(cfg: Config, out_dir: str, data: Prepared, inputs: Inputs) -> dict[str, dict[str, Any]]:
    """Train each member in turn, in its own run folder (members/<kind>/), resuming one that
    was cut short; a member that finished (its member.json written) is not trained again.
    Returns each member's summary: its best checkpoint, validation metrics and history."""
    from app.ensemble import member_config

    done = {}
    for kind in cfg.model.ensemble.members:
        mcfg = member_config(cfg, kind, out_dir)
        mdir = runs.run_dir(mcfg)
        summary = storage.read_json(storage.join(mdir, runs.MEMBER_SUMMARY))
        if summary is not None:
            log.info(f"ensemble member {kind}: finished before ({summary['best_checkpoint']}), not trained again")
        else:
            resume = resume_point(mcfg, mdir, inputs)
            log.info(f"ensemble member {kind}: " + (f"resuming from {resume.checkpoint}" if resume else "training"))
            with ray_train_sigint():
                build_trainer(mcfg, data, resume_from=resume.resume_from if resume else None).fit()
            summary = member_summary(mcfg, mdir)
            storage.write_json(storage.join(mdir, runs.MEMBER_SUMMARY), json_safe(redact_tree(summary)))
        done[kind] = summary
    return done


def member_summary(cfg: Config, out_dir: str) -> dict[str, Any]:
    """A finished member: its best registered checkpoint and what its latest one recorded."""
    from app.checkpoint import load_train_state, local_copy

    snapshot = storage.read_json(storage.join(out_dir, runs.RAY_CHECKPOINTS)) or {}
    registered = [r for r in snapshot.get("checkpoint_results", []) if r.get("checkpoint_dir_name")]
    if not registered:
        raise RuntimeError(f"ensemble member {cfg.name!r} registered no checkpoint")
    best = best_result(registered, cfg.run.checkpoint.metric, cfg.run.checkpoint.mode)
    with local_copy(storage.join(out_dir, snapshot["latest_checkpoint_result"]["checkpoint_dir_name"])) as latest:
        final = load_train_state(latest)
    return {"kind": cfg.model.kind, "best_checkpoint": storage.join(out_dir, best["checkpoint_dir_name"]),
            "best_epoch": best["metrics"]["epoch"], "epochs_completed": final["epoch"],
            "valid": {k: v for k, v in best["metrics"].items() if k not in EPOCH_STATS},
            "history": final["progress"]["history"], "attempts": final["progress"].get("attempts", []),
            "num_workers": final["world_size"]}


def summarize_ensemble(cfg: Config, out_dir: str, data: Prepared, test_source: Source,
                       members: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Weights by greedy selection on the members' validation outputs, the ensemble's
    checkpoint (written manifest-last, as training writes its own), then as `summarize`:
    calibration, the test split (the ensemble's and each member's), feature importance."""
    import tempfile

    from app import checkpoint as ckpt
    from app.calibration import calibrate, valid_outputs
    from app.ensemble import mixture, select
    from app.metrics import MetricSums
    from app.predictor import Predictor, evaluate_dataset

    state = data.state
    outputs, y = {}, None
    for kind, member in members.items():
        outputs[kind], y = valid_outputs(Predictor.from_checkpoint(member["best_checkpoint"]), data)
    weights, path = select(outputs, y, state, cfg.model.ensemble.selection_rounds)
    valid = MetricSums.of(mixture(outputs, weights, state), y, state).metrics(state)
    valid = {"valid_loss": valid.pop("loss"), **valid}
    log.info("ensemble weights (greedy selection on validation): "
             + ", ".join(f"{k} {w:.2f}" for k, w in weights.items())
             + f"; validation loss {path[0]:.4f} (best member) -> {path[-1]:.4f}")
    uri = storage.join(out_dir, runs.ENSEMBLE_CHECKPOINT)
    with tempfile.TemporaryDirectory(prefix="app-ensemble-") as tmp, contextlib.ExitStack() as stack:
        local = {k: stack.enter_context(ckpt.local_copy(m["best_checkpoint"])) for k, m in members.items()}
        train_state = {"epoch": 0, "progress": {"history": [], "attempts": []},
                       "config": redact_tree(cfg.to_dict()), "world_size": cfg.scaling.num_workers,
                       "param_fingerprints": [], "weights": weights, "selection_loss": path}
        folder = ckpt.write_ensemble_checkpoint(f"{tmp}/ensemble", members=local, weights=weights, state=state,
                                                model_cfg=cfg.model, train_state=train_state)
        fs, path_in_fs = storage.filesystem(uri)
        ckpt.upload(folder, fs, path_in_fs)
    calibrated = calibrate(cfg.train, data, uri)
    here = test_source.total_bytes <= SMALL_INPUT_BYTES
    rows = data.test_tables if here and data.test_tables is not None else data.test_raw
    test = read_step(lambda: evaluate_dataset(uri, rows, state, details=True, here=here,
                                              calibration="calibration" in calibrated), test_source)
    if "calibration" in calibrated:
        calibrated["calibration"]["test"] = test.pop("calibration")
    for kind, member in members.items():
        member["test"] = read_step(lambda m=member: evaluate_dataset(m["best_checkpoint"], rows, state, here=here),
                                   test_source)
        log.info(f"ensemble member {kind}: weight {weights[kind]:.2f}, validation loss "
                 f"{member['valid']['valid_loss']:.4f}, test " + "  ".join(
                     f"{k} {v:.4f}" for k, v in member["test"].items() if k != "loss"))
    if cfg.report.importance:
        calibrated |= read_step(lambda: test_importance(cfg, uri, rows, here), test_source)
    return {
        "task": state.task,
        "valid": valid,
        "test": test.pop("metrics"),
        "test_details": test,
        "best_checkpoint": uri,
        "best_epoch": 0,  # (no epochs of its own: its members' are under "ensemble")
        "epochs_completed": 0,
        "history": [],
        "attempts": [a for m in members.values() for a in m["attempts"]],
        "rows": data.counts,
        "num_workers": cfg.scaling.num_workers,
        "param_fingerprints": [],
        "ensemble": {"weights": weights, "selection_loss": path,
                     "members": {k: {key: m[key] for key in ("best_checkpoint", "best_epoch", "epochs_completed",
                                                            "valid", "test")} for k, m in members.items()}},
        **calibrated,
    }


def test_importance(cfg: Config, checkpoint: str, rows: Any, here: bool) -> dict[str, Any]:
    """`feature_importance` (and how it was computed) of the best checkpoint on the test
    split, as `evaluate --importance` gives it: in this process for a small split (Arrow
    tables here, or a small file), else sampled and shuffled on the cluster."""
    import pandas as pd
    import pyarrow as pa

    from app.importance import importance
    from app.predictor import Predictor

    if isinstance(rows, list):
        rows = pa.concat_tables(rows).to_pandas() if rows else None
    elif here:
        rows = rows.to_pandas()
    if rows is None or (isinstance(rows, pd.DataFrame) and len(rows) == 0):
        return {}  # (a large split's Dataset is never empty: the data step checked the rows)
    return importance(checkpoint, Predictor.from_checkpoint(checkpoint), rows, seed=cfg.train.seed,
                      max_rows=cfg.report.importance_rows)


def best_result(results: list[dict[str, Any]], metric: str, mode: str) -> dict[str, Any]:
    """The registered checkpoint with the best metric (NaN never wins; ties: the earliest)."""
    def key(r: dict[str, Any]) -> tuple[bool, float, int]:
        value = r["metrics"].get(metric)
        missing = value is None or math.isnan(value)
        return missing, (0.0 if missing else value if mode == "min" else -value), r["metrics"]["epoch"]

    return min(results, key=key)
