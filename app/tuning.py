"""Hyperparameter sweeps with Ray Tune over the very trainer that `train` uses.

    python -m app tune --config configs/tune.yaml [--resume | --fresh]

Each trial is a Tune function trainable that builds the same `TorchTrainer` as `train`
(`build_trainer`), as a run named after the trial id under `<storage>/<name>/trials/`,
with `TuneReportCallback` handing every epoch's report to Tune; schedulers (ASHA) see
exactly the metrics that `train` records, and each trial keeps its own checkpoints.
Data is read and preprocessed once per sweep, unless the space searches `data.*` or
`preprocess.*` keys, in which case each trial prepares its own.

A sweep saves its config and fitted preprocessing when it starts (`config.yaml`,
`sweep_preprocess.json`). `--resume` checks the config against them as `train` checks a
checkpoint, and reuses them; a resumed trial continues from its newest intact checkpoint
with the preprocessing stored there, never refitted.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pandas as pd

from app import cluster, logs, ray_compat, runs, storage, tracking
from app.checkpoint import load_preprocess_state, load_train_state, local_copy
from app.config import NAME_MAX, Config, check_metric, check_space, from_dict, metric_mode, parse_yaml
from app.data.prepare import Prepared, prepare
from app.data.sources import Inputs
from app.data.transform import PreprocessState
from app.errors import UserError
from app.metrics import json_safe
from app.redact import redact_tree
from app.runner import summarize
from app.training import faults
from app.training.resume import check_same_inputs, check_same_setup, latest_checkpoint, resume_point
from app.training.trainer import build_trainer

log = logging.getLogger(__name__)

# ---------------------------------------------------------------- the search space


def search_space(cfg: Config) -> dict[str, Any]:
    """`tune.space` as Ray Tune domains, after checking the tune section: every key and
    distribution (`check_space`, which every command runs), that there is one, and that the
    scheduler is supported."""
    from ray import tune

    if cfg.tune.scheduler.name == "pbt":
        raise UserError("tune.scheduler.name: pbt is not supported yet; use asha or fifo")
    space = cfg.tune.space
    if not space:
        raise UserError("tune.space: empty; name at least one config key to search, "
                        "e.g. train.lr: {loguniform: [1.0e-4, 1.0e-2]}")
    check_space(cfg)
    kinds = next(iter(space["model.kind"].values())) if "model.kind" in space else [cfg.model.kind]
    if "ensemble" in kinds:
        raise UserError("model.kind: ensemble trains its members one after another in one run; a sweep "
                        "searches one model per trial: sweep its members' kinds (tabm, mlp, xgboost) instead")
    if cfg.tune.search == "grid":
        return {k: tune.grid_search(space[k][next(iter(space[k]))]) for k in space}
    return {key: _domain(tune, *next(iter(spec.items()))) for key, spec in space.items()}


def _domain(tune, kind: str, args: Any):
    if kind == "choice":
        return tune.choice(args)
    if kind == "grid":
        return tune.grid_search(args)
    return getattr(tune, kind)(*args)


def _set(tree: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    for part in parents:
        tree = tree[part]
    tree[leaf] = value


def trial_config(base: dict[str, Any], overrides: dict[str, Any], trial_id: str, trials_dir: str) -> Config:
    """The complete config a trial trains with: its own run folder under the sweep's."""
    tree = copy.deepcopy(base)
    for key, value in overrides.items():
        _set(tree, key, value.item() if hasattr(value, "item") else value)  # numpy scalars from samplers
    tree["name"] = trial_id
    tree["run"]["storage"] = trials_dir
    return from_dict(tree, f"trial {trial_id}")


# ---------------------------------------------------------------- the trainable


def run_trial(overrides: dict[str, Any], *, base: dict[str, Any], trials_dir: str, inputs: Inputs,
              shared: Prepared | None, fault: str | None = None) -> None:
    """One trial: the `train` path (prepare if needed, build_trainer, fit), reporting to Tune.
    A trial run again (retried after a failure, or by `--resume`) continues from its newest
    intact checkpoint, with the preprocessing fitted for it."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    cfg = trial_config(base, overrides, ray.tune.get_context().get_trial_id(), trials_dir)
    logs.prefix_lines(f"[{cfg.name}] ")  # as its workers' lines (app/training/loop.py)
    trial_dir = runs.run_dir(cfg)
    storage.write_text(storage.join(trial_dir, runs.OVERRIDES), _canonical(overrides))
    resume = resume_point(cfg, trial_dir, inputs)
    if resume is not None:
        log.info(f"resuming from {resume.checkpoint} (epoch {resume.epoch} done)")
    data = trial_data(cfg, inputs, shared, resume.state if resume else None)
    spec = tracking.start(cfg, trial_dir)
    build_trainer(cfg, data, callbacks=[TuneReportCallback()], tracking_spec=spec,
                  resume_from=resume.resume_from if resume else None, fault=fault, trial=cfg.name).fit()
    tracking.finish(spec, {})


def trial_data(cfg: Config, inputs: Inputs, shared: Prepared | None, fitted: PreprocessState | None) -> Prepared:
    """A trial's model-ready data: the sweep's shared preparation, unless the trial's own
    fitted preprocessing (from its checkpoint) differs from it; then data transformed by
    that, never refitted, so that restored weights meet the scaling and category indices
    they were trained on."""
    if fitted is None:
        return shared if shared is not None else prepare(cfg, inputs)
    if shared is not None and shared.state.to_json() == fitted.to_json():
        return shared
    return prepare(cfg, inputs, fitted=fitted)


# ---------------------------------------------------------------- the sweep


def trial_base(cfg: Config) -> dict[str, Any]:
    """The config every trial starts from: the sweep's, with its tracking target resolved so
    that all trials log into one MLflow experiment named after the sweep (created here, once,
    rather than raced by the first trials)."""
    tracking.require_installed(cfg)  # here, on the driver, before any trial starts
    base = cfg.to_dict()
    uri = tracking.mlflow_uri(cfg)
    base["tracking"].update(mlflow=uri is not None, mlflow_uri=uri, experiment=cfg.tracking.experiment or cfg.name)
    if uri is not None:  # a store that fails warns here, once, and the trials do not try it again
        base["tracking"]["mlflow"] = tracking.ensure_experiment(uri, base["tracking"]["experiment"]) is not None
    return base


def trial_concurrency(cfg: Config) -> int:
    """Trials that really run side by side: each holds its worker group (of its most
    workers), placed as `train` places one; refuse a sweep in which not even one trial fits."""
    s = cfg.scaling
    fits, total, _ = cluster.worker_groups(s, s.max_workers)
    if fits < 1:
        need = s.min_workers * s.cpus_per_worker
        raise UserError(f"scaling: one trial needs {s.max_workers} worker(s) x "
                        f"{s.cpus_per_worker:g} CPU ({need:g}+ CPUs) and the cluster has {total['CPU']:g} "
                        f"(placement {s.placement_strategy}); lower scaling.num_workers or "
                        f"scaling.cpus_per_worker (fractions work)")
    return min(cfg.tune.max_concurrent_trials, fits)


def metric_and_mode(cfg: Config) -> tuple[str, str]:
    """tune.metric/mode, defaulting to the checkpoint metric and the metric's own direction."""
    metric = cfg.tune.metric or cfg.run.checkpoint.metric
    return metric, cfg.tune.mode or metric_mode(metric)


def run_tune(cfg: Config, inputs: Inputs, *, resume: bool = False) -> dict[str, Any]:
    """Run (or resume) the sweep; write the leaderboard, the best config and its metrics."""
    import ray.tune
    from ray import tune

    space = search_space(cfg)
    metric, mode = metric_and_mode(cfg)
    sweep_dir = runs.run_dir(cfg)
    trials_dir = storage.join(sweep_dir, runs.TRIALS)
    concurrency = trial_concurrency(cfg)
    cluster.check_shared_storage(storage.absolute(cfg.run.storage))
    if resume and not ray.tune.Tuner.can_restore(sweep_dir):
        raise UserError(f"--resume: no sweep to resume at {sweep_dir}")
    started = time.time()

    # Prepared once for all trials, unless trials differ in their data or preprocessing;
    # then this run only finds the task, and each trial prepares its own. A resumed sweep
    # reuses the preprocessing fitted when it started.
    prepared = prepare(cfg, inputs, fitted=saved_setup(cfg, inputs) if resume else None, bins=True)  # any model
    cfg = cfg.resolved(prepared.counts["train"])  # auto epochs and batch size, the same for every trial
    shared = None if any(k.startswith(("data.", "preprocess.")) for k in space) else prepared
    check_metric(metric, prepared.state.task, key="tune.metric")
    if resume:
        check_trials(cfg, trials_dir, inputs)
    else:
        storage.write_text(storage.join(sweep_dir, runs.CONFIG), cfg.to_yaml())
        storage.write_text(storage.join(sweep_dir, runs.SWEEP_PREPROCESS), prepared.state.to_json())
    log.info(f"sweep: {cfg.tune.num_samples} sample(s) of {len(space)} key(s), {concurrency} trial(s) at a time, "
             f"{cfg.tune.scheduler.name} scheduler, {cfg.tune.search} search, {metric} ({mode})")

    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=trial_base(cfg), trials_dir=trials_dir, inputs=inputs, shared=shared,
                             fault=os.environ.get(faults.ENV_VAR)),
        # The trial's driver only waits on its TorchTrainer, whose workers hold the CPUs; Tune
        # wants a non-empty request, so it asks for one byte of memory instead of a CPU.
        {"CPU": 0, "memory": 1})
    if resume:
        tuner = ray.tune.Tuner.restore(sweep_dir, trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = ray.tune.Tuner(
            trainable,
            param_space=space,
            tune_config=ray.tune.TuneConfig(
                metric=metric, mode=mode, num_samples=cfg.tune.num_samples,
                scheduler=scheduler(cfg), search_alg=search_algorithm(cfg, metric, mode, concurrency)),
            run_config=ray.tune.RunConfig(
                name=cfg.name, storage_path=storage.absolute(cfg.run.storage),
                # a trial whose TorchTrainer gave up after run.max_failures restarts is retried
                # as a whole (resuming from its checkpoints) up to run.max_failures times
                failure_config=ray.tune.FailureConfig(max_failures=cfg.run.max_failures),
                # Tune's trial table: at the start, every 30 s and at the end (printed as
                # text, so it suits a log as well as a terminal)
                verbose=1),
        )
    with tune_signals(), ray_compat.tune_stop_seen() as stopped:
        grid = tuner.fit()
    if stopped():
        # Ray Tune's own Ctrl-C handler ends fit() normally, the experiment state saved; the
        # sweep did not finish, so nothing is written as if it had.
        raise KeyboardInterrupt
    return write_outputs(cfg, grid, space=space, metric=metric, mode=mode, trials_dir=trials_dir, inputs=inputs,
                         shared=shared, started=started)


@contextmanager
def tune_signals() -> Iterator[None]:
    """Around `Tuner.fit()`, which installs Ray Tune's stop handler for SIGINT and SIGUSR1
    (in the main thread) and leaves it installed: the caller's handlers are put back, so
    that a later Ctrl-C is not swallowed by the handler of a sweep that is over."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    names = [n for n in ("SIGINT", "SIGUSR1") if hasattr(signal, n)]
    saved = {n: signal.getsignal(getattr(signal, n)) for n in names}
    try:
        yield
    finally:
        for n, handler in saved.items():
            if handler is not None:
                signal.signal(getattr(signal, n), handler)


def saved_setup(cfg: Config, inputs: Inputs) -> PreprocessState | None:
    """For `--resume`: the preprocessing the sweep fitted when it started, after checking
    that this config and these inputs fit the sweep as `train` checks a checkpoint (the
    `data`, `preprocess` and `model` sections, bar searched keys; input columns and types).
    None for a sweep started before these were saved."""
    sweep_dir = runs.run_dir(cfg)
    config_uri = storage.join(sweep_dir, runs.CONFIG)
    text = storage.read_text(config_uri)
    if text is not None:
        check_same_setup(from_dict(parse_yaml(text), config_uri), cfg, f"sweep {sweep_dir}",
                         ignore=frozenset(cfg.tune.space))
    text = storage.read_text(storage.join(sweep_dir, runs.SWEEP_PREPROCESS))
    if text is None:
        return None
    state = PreprocessState.from_json(text)
    check_same_inputs(inputs, state, f"sweep {sweep_dir}")
    return state


def check_trials(cfg: Config, trials_dir: str, inputs: Inputs) -> None:
    """For `--resume`: each trial's newest intact checkpoint, the one it continues from, must
    be made by this config, checked as `train` checks; before any trial starts, so that a
    changed config exits 2 rather than failing trials."""
    base = cfg.to_dict()
    for entry in storage.listdir(trials_dir):
        trial_dir = storage.join(trials_dir, entry.name)
        overrides = storage.read_json(storage.join(trial_dir, runs.OVERRIDES)) if entry.is_dir else None
        if overrides is not None:
            resume_point(trial_config(base, overrides, entry.name, trials_dir), trial_dir, inputs)


def scheduler(cfg: Config):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    s = cfg.tune.scheduler
    if s.name == "fifo":
        return FIFOScheduler()
    longest = max_reports(cfg)
    return ASHAScheduler(time_attr="training_iteration", max_t=longest,
                         grace_period=min(s.grace_period, longest), reduction_factor=s.reduction_factor)


def max_reports(cfg: Config) -> int:
    """The most reports a trial makes: an epoch each for a network, a checkpoint every
    `model.xgboost.checkpoint_every` rounds for xgboost (ASHA's rungs count reports, so a
    sweep over boosting stops weak trials at checkpoints, in rounds)."""
    kinds = set(cfg.tune.space.get("model.kind", {}).get("choice") or cfg.tune.space.get("model.kind", {}).get("grid")
                or [cfg.model.kind])
    x = cfg.model.xgboost
    boosting = math.ceil(x.rounds / x.checkpoint_every) if "xgboost" in kinds else 0
    return max(boosting, cfg.train.epochs if kinds - {"xgboost"} else 0)


def search_algorithm(cfg: Config, metric: str, mode: str, concurrency: int):
    """Seeded by train.seed, so a sweep samples the same configurations every time.

    Each holds the limit on trials at a time itself: Tune's `max_concurrent_trials` is
    ignored (with a warning) for the random search's generator."""
    if cfg.tune.search == "optuna":
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        return ConcurrencyLimiter(OptunaSearch(metric=metric, mode=mode, seed=cfg.train.seed),
                                  max_concurrent=concurrency)
    from ray.tune.search import BasicVariantGenerator  # random sampling; grid axes expanded

    return BasicVariantGenerator(random_state=cfg.train.seed, max_concurrent=concurrency)


# ---------------------------------------------------------------- outputs


def trial_runs(trials_dir: str) -> dict[str, dict[str, Any]]:
    """{canonical overrides: {"trial_id", "history"}} from the trials' own run folders.

    Read from our checkpoints rather than from Tune's results: a trial that finished just
    before the sweep's driver died keeps its history here even if Tune had not yet saved it.
    """
    found = {}
    for entry in storage.listdir(trials_dir):
        if not entry.is_dir:
            continue
        trial_dir = storage.join(trials_dir, entry.name)
        overrides = storage.read_json(storage.join(trial_dir, runs.OVERRIDES))
        if overrides is None:
            continue
        latest = latest_checkpoint(trial_dir)
        history = []
        if latest is not None:
            with local_copy(latest) as directory:
                history = load_train_state(directory)["progress"]["history"]
        found[_canonical(overrides)] = {"trial_id": entry.name, "history": history}
    return found


def _canonical(overrides: dict[str, Any]) -> str:
    return json.dumps(json_safe({k: _plain(v) for k, v in overrides.items()}), sort_keys=True)


def leaderboard(grid, cfg: Config, *, space: dict[str, Any], metric: str, mode: str,
                trials: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """One row per trial: id, status, epochs, each searched key, its best metric."""
    rows = []
    for result in grid:
        overrides = {key: _plain(result.config.get(key)) for key in space}
        run = trials.get(_canonical(overrides), {"trial_id": None, "history": []})
        values = [r[metric] for r in run["history"] if r.get(metric) is not None and r[metric] == r[metric]]
        epochs = len(run["history"])
        rows.append({
            "trial_id": run["trial_id"] or result.metrics.get("trial_id"),
            "status": trial_status(result, values, epochs, mode, cfg, overrides, run["history"]),
            "epochs": epochs,
            **overrides,
            metric: (min(values) if mode == "min" else max(values)) if values else math.nan,
        })
    table = pd.DataFrame(rows)
    return table.sort_values(metric, ascending=(mode == "min"), na_position="last").reset_index(drop=True)


def trial_status(result, values: list[float], epochs: int, mode: str, cfg: Config,
                 overrides: dict[str, Any] | None = None, history: list[dict[str, Any]] | None = None) -> str:
    if result.error is not None:
        return "error"
    if (overrides or {}).get("model.kind", cfg.model.kind) == "xgboost" and history:
        trial = trial_config(cfg.to_dict(), overrides, "status", cfg.run.storage) if overrides else cfg
        x, last = trial.model.xgboost, history[-1]
        if last["epoch"] >= x.rounds:
            return "completed"
        if x.early_stopping_rounds is not None and last["epoch"] - last["best_round"] >= x.early_stopping_rounds:
            return "early stop (patience)"
        return f"stopped early ({cfg.tune.scheduler.name})"
    if epochs >= cfg.train.epochs:
        return "completed"
    patience = cfg.train.early_stopping_patience
    if patience is not None and values:
        best_at = (values.index(min(values)) if mode == "min" else values.index(max(values))) + 1
        if epochs - best_at >= patience:
            return "early stop (patience)"
    return f"stopped early ({cfg.tune.scheduler.name})"


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def write_outputs(cfg: Config, grid, *, space: dict[str, Any], metric: str, mode: str, trials_dir: str,
                  inputs: Inputs, shared: Prepared | None, started: float) -> dict[str, Any]:
    """The sweep's leaderboard, best config, metrics (of the best trial) and curves."""
    sweep_dir = runs.run_dir(cfg)
    trials = trial_runs(trials_dir)
    table = leaderboard(grid, cfg, space=space, metric=metric, mode=mode, trials=trials)
    if table.empty or table[metric].isna().all():
        raise RuntimeError(f"sweep {cfg.name!r}: no trial reported {metric}")
    storage.write_text(storage.join(sweep_dir, runs.LEADERBOARD), table.to_csv(index=False))
    log.info(table.to_string(index=False))

    best_row = table.iloc[0]
    overrides = {key: best_row[key] for key in space}
    best_cfg = trial_config(cfg.to_dict(), overrides, str(best_row["trial_id"]), trials_dir)
    reproducible = copy.deepcopy(cfg.to_dict())
    for key, value in overrides.items():
        _set(reproducible, key, _plain(value))
    reproducible["name"] = f"{cfg.name[:NAME_MAX - 5]}-best"
    storage.write_text(storage.join(sweep_dir, runs.BEST_CONFIG), Config.model_validate(reproducible).to_yaml())

    latest = latest_checkpoint(runs.run_dir(best_cfg))
    fitted = None
    if latest is not None:
        with local_copy(latest) as directory:
            fitted = load_preprocess_state(directory)
    data = trial_data(best_cfg, inputs, shared, fitted)
    metrics = summarize(best_cfg, runs.run_dir(best_cfg), data, inputs.test or inputs.train)
    metrics.update(best_trial=str(best_row["trial_id"]), best_overrides=json_safe(
        {k: _plain(v) for k, v in overrides.items()}), trials=len(table),
        trial_epochs=int(table["epochs"].sum()), wall_time_s=time.time() - started)
    storage.write_json(storage.join(sweep_dir, runs.METRICS), json_safe(redact_tree(metrics)))
    plot_curves(trials, metric, storage.join(sweep_dir, runs.CURVES))
    log.info(f"best trial {best_row['trial_id']}: {metric} {best_row[metric]:.4f}; "
             f"train it again with: python -m app train --config {storage.join(sweep_dir, runs.BEST_CONFIG)}")
    return metrics


def plot_curves(trials: dict[str, dict[str, Any]], metric: str, uri: str) -> None:
    """PNG of the validation metric against the epoch, one line per trial (skipped, with a
    warning, without matplotlib: the `report` extra)."""
    from app.extras import missing

    if missing("matplotlib"):
        log.warning(f"sweep: no {uri.rsplit('/', 1)[-1]} (its plot needs matplotlib: pip install 'raytab[report]')")
        return
    from app.report import png, pyplot

    fig, ax = pyplot().subplots(figsize=(7, 4.5), dpi=110)
    for run in sorted(trials.values(), key=lambda r: r["trial_id"]):
        points = [(r["epoch"], r[metric]) for r in run["history"] if r.get(metric) is not None]
        if points:
            ax.plot(*zip(*points), marker="o", markersize=3, linewidth=1, label=run["trial_id"])
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per trial")
    ax.grid(alpha=0.3)
    if len(ax.lines) <= 16:
        ax.legend(fontsize=6, ncol=2)
    storage.write_bytes(uri, png(fig))
