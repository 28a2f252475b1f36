"""How time and memory grow with the data: the app's commands on 1M, 4M and 16M synthetic rows.

    flock /tmp/ray.lock .venv/bin/python scripts/scale.py [--rows 1000000,4000000,16000000]
        [--work /tmp/app-scale] [--keep] [--out docs/scaling.md] [--num-cpus 4]
        [--object-store-mb 2048] [--timeout 3600] [--no-cache-key] [--kind mlp|xgboost]

For each size, every command runs as its own `python -m app` process that joins one local
cluster (`--address`), which this script starts with `ray start --head` (its own temp dir,
ports and CPUs) and stops at the end by ending the processes it started, never `ray stop`:

1. `train` for one epoch with `--set data.cache=memory`, then with `--set data.cache=stream`
   (`--no-cache-key`: once, without the key, for a version of the app that lacks it);
   with `--kind xgboost`, once (mode `quantized`: each worker streams its shard into XGBoost's
   quantised bins, whatever `data.cache` says) for a fixed XGBOOST_ROUNDS rounds;
2. `evaluate` of the first train run's best checkpoint on every row;
3. `predict` of that checkpoint on every row, into a folder of Parquet parts (deleted after);
4. `baseline` on the same config.

A command that fails is marked failed in the table and left out of the growth figures; the
others still run, and the script exits 1. Its output is in `<work>/logs/`.
The default sizes take roughly 30-45 minutes on the 2-core development machine (the 1M point
alone 3-4 minutes; 4M and 16M extrapolated linearly from 250k and 1M, more if 16M spills);
try it small first: `--rows 20000,80000` takes about 4 minutes.

Measured for each command:

- its wall time, and for `train` the phase `timings` of its metrics.json;
- the peak resident memory (VmHWM in /proc/<pid>/status) of the driver, i.e. the command's
  own process (also its ru_maxrss when it exits, whichever is larger), and of each Ray Train
  worker: the cluster's processes are polled every POLL_S seconds, and one whose title names
  RayTrainWorker is a training worker. If Ray had used that process for other tasks before
  (an idle worker taken for the actor), its peak is reset when it becomes a training worker,
  so that earlier tasks do not count. The workers' own ru_maxrss, which the app records in
  metrics.json, is printed beside it as a check;
- the object store's spilling during the command: `ray memory --stats-only` before and after.

Choices, to keep a 16M-row run practical on a 2-core machine while measuring what grows:

- `model.kind: mlp`, one epoch, global batch 1024 (configs/synthetic.yaml: the mlp trains
  about ten times faster per row than tabm on CPU; one epoch shows the per-row cost).
  `--kind xgboost`: XGBOOST_ROUNDS rounds, early stopping off, so that every size does the
  same work per row (early stopping would end each size after a different number of rounds).
- 2 workers x 1 CPU on a cluster of `--num-cpus 4` logical CPUs: two for the workers and two
  for Ray Data, which in stream mode reads and transforms while the workers train.
- `report.baseline_max_rows: 50000`: baselines fit on a fixed-size sample at every size (the
  fit does not grow with the data; scoring the full splits does), and a random forest on the
  default 200k rows would take minutes on 2 cores at every size alike.
- tracking off (MLflow, TensorBoard): per-run fixed costs that say nothing about scale.
- the object store fixed at `--object-store-mb 2048`, the same on any machine and about the
  size of the 16M-row dataset in Arrow (1.7 GB), so spilling shows where a step holds the
  whole dataset in the store.
- data from scripts/make_data.py (classification, seed 0) in Parquet parts of 250k rows, so
  the number of files and read tasks grows with the rows; generated once into
  `<work>/data/` and reused by later invocations while it is there (`--keep` keeps it).

Writes `--out` (docs/scaling.md) and a PNG beside it, and prints as its last line

    driver_rss_growth=<x.xx> worker_rss_growth_stream=<x.xx> seconds_per_row_growth=<x.xx>

the largest size against the smallest (16M against 1M by default); see `growth`. Before it,

    worker_private_bytes_per_row=<n>

a training worker's private memory per row of its shard (the train split over the workers),
from the largest worker's train run: between the smallest and the largest size (the marginal
cost of a row, fixed costs left out) when there are two sizes, else at the one size (an upper
bound, fixed costs included); see `worker_bytes_per_row`.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
RAY = str(Path(sys.executable).with_name("ray"))
MAKE_DATA = ROOT / "scripts" / "make_data.py"

DEFAULT_ROWS = "1000000,4000000,16000000"
ROWS_PER_PART = 250_000  # synthetic Parquet parts: files (and read tasks) grow with the rows
MODES = ("memory", "stream")  # data.cache of the two train runs
KINDS = ("mlp", "xgboost")  # --kind: the model trained
XGBOOST_MODE = "quantized"  # the one train run of --kind xgboost: its shards become QuantileDMatrix bins
STREAMING_MODES = ("stream", XGBOOST_MODE)  # the train run whose worker memory and time growth are reported
XGBOOST_ROUNDS = 100  # --kind xgboost: fixed rounds, early stopping off: the same work per row at every size
POLL_S = 0.1  # how often the cluster's processes and the driver are read
SCAN_EVERY = 10  # polls between full scans of /proc for new processes of the cluster
TRAIN_WORKER = "RayTrainWorker"  # in the process title of each Ray Train worker actor
DRIVER_COMMANDS = ("train", "evaluate", "predict", "baseline")
# Phases of `train` whose cost depends on the rows (metrics.json "timings"); the others
# (connecting to Ray, starting the worker group) and the imports before them are fixed costs.
ROW_PHASES = ("data_s", "ingest_s", "train_s", "test_s")
GROWTH_PHASES = ("data_s", "ingest_s", "train_s", "train_steps_s", "test_s")  # train_steps_s: the steps in train_s

# The run's config; `data.train`, `name`, `run.storage` and `data.cache` are set per run.
BASE_CONFIG = {
    "data": {"label": "target", "task": "classification", "split": {"valid": 0.15, "test": 0.15, "seed": 0}},
    "model": {"kind": "mlp"},  # ~10x faster per row than tabm on CPU
    "train": {"epochs": 1, "batch_size": 1024, "seed": 0},
    "scaling": {"num_workers": 2, "cpus_per_worker": 1},
    "tracking": {"mlflow": False, "tensorboard": False},  # fixed per-run costs, not scale
    "report": {"baselines": False, "baseline_max_rows": 50_000},  # a fixed-size fit at every size
}


# --kind xgboost: this model section replaces BASE_CONFIG's (its train keys are the networks').
XGBOOST_MODEL = {"kind": "xgboost", "xgboost": {"rounds": XGBOOST_ROUNDS, "early_stopping_rounds": None}}


WORKERS = BASE_CONFIG["scaling"]["num_workers"]


class CommandFailed(Exception):
    """A step of the measurement itself failed (`ray start`, `ray memory`): nothing to go on with."""


@dataclasses.dataclass
class Measurement:
    """One command on one size."""

    rows: int
    command: str
    mode: str  # data.cache of a train run; "-" for the other commands
    wall_s: float
    driver_mb: float
    worker_mb: list[float] = dataclasses.field(default_factory=list)  # peak of each Ray Train worker
    spilled_mb: float = 0.0
    timings: dict[str, float | None] | None = None  # train: metrics.json "timings"
    error: str | None = None  # how the command failed ("exit 1", ...); None when it succeeded
    # The same peaks of private memory only (RssAnon: not the object-store pages a process maps)
    driver_private_mb: float | None = None
    worker_private_mb: list[float] = dataclasses.field(default_factory=list)

    def memory(self, kind: str) -> tuple[float | None, list[float]]:
        """(driver, workers) peaks: `peak` RSS, or `private` memory."""
        return (self.driver_mb, self.worker_mb) if kind == "peak" else (self.driver_private_mb, self.worker_private_mb)

    @property
    def row_time_s(self) -> float:
        """Seconds that depend on the rows: train's ROW_PHASES, else the wall time."""
        if self.timings is None:
            return self.wall_s
        return sum(self.timings.get(k) or 0.0 for k in ROW_PHASES)


# ---------------------------------------------------------------- pure parts (unit-tested)


def status_kb(text: str, name: str) -> int | None:
    """A `kB` field of /proc/<pid>/status (`VmHWM`, `VmRSS`); None when absent (a zombie)."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key == name:
            return int(value.split()[0])
    return None


def stat_ppid(text: str) -> int:
    """The parent pid from /proc/<pid>/stat. The command name in parentheses may hold
    spaces and parentheses itself, so the fields are counted from its last `)`."""
    return int(text.rpartition(")")[2].split()[1])


def spilled_mib(stats: str) -> float:
    """MiB spilled so far, from `ray memory --stats-only` (the line is absent until the
    first spill). Ray counts it per node since the node started."""
    for line in stats.splitlines():
        if line.startswith("Spilled "):
            return float(line.split()[1])
    return 0.0


def part_count(rows: int) -> int:
    return max(2, math.ceil(rows / ROWS_PER_PART))


def rows_label(rows: int) -> str:
    for unit, size in (("M", 1_000_000), ("k", 1_000)):
        if rows >= size and rows % (size // 100) == 0:
            return f"{rows / size:g}{unit}"
    return str(rows)


def ratios(results: list[Measurement], memory: str = "peak") -> list[tuple[str, str, float, float, float]]:
    """(command, mode, driver, worker, seconds-per-row ratio) of the largest size against the
    smallest, for each command/mode that succeeded at both; NaN where a figure is missing.
    `memory`: `peak` RSS or `private` memory (Measurement.memory)."""
    results = [r for r in results if r.error is None]
    if not results:
        return []
    small, large = min(r.rows for r in results), max(r.rows for r in results)
    out = []
    for a in (r for r in results if r.rows == small):
        b = next((r for r in results if r.rows == large and (r.command, r.mode) == (a.command, a.mode)), None)
        if b is None or small == large:
            continue
        (driver_a, workers_a), (driver_b, workers_b) = a.memory(memory), b.memory(memory)
        worker = max(workers_b) / max(workers_a) if workers_a and workers_b else math.nan
        driver = driver_b / driver_a if driver_a and driver_b else math.nan
        per_row = (b.row_time_s / b.rows) / (a.row_time_s / a.rows)
        out.append((a.command, a.mode, driver, worker, per_row))
    return out


def growth(results: list[Measurement], memory: str = "peak") -> dict[str, float]:
    """The three figures of the last line (largest size against smallest):

    - driver_rss_growth: the largest driver peak ratio over train (both modes), evaluate,
      predict and baseline;
    - worker_rss_growth_stream: the ratio of the largest Ray Train worker peak in stream mode
      (xgboost: its one `quantized` train run);
    - seconds_per_row_growth: the ratio of train's row-dependent seconds (ROW_PHASES of its
      timings) per row in stream mode, the mode meant for data that outgrows memory (xgboost:
      its `quantized` run; the other train run when neither was run).
    NaN when a figure was not measured at both sizes. `memory`: as for `ratios`."""
    table = ratios(results, memory)
    driver = [d for command, _, d, _, _ in table if command in DRIVER_COMMANDS]
    trains = {mode: (w, s) for command, mode, _, w, s in table if command == "train"}
    streaming = next((mode for mode in STREAMING_MODES if mode in trains), None)
    worker = trains[streaming][0] if streaming else math.nan
    per_row_mode = streaming or next(iter(trains), None)
    per_row = trains[per_row_mode][1] if per_row_mode else math.nan
    return {"driver_rss_growth": max(driver, default=math.nan), "worker_rss_growth_stream": worker,
            "seconds_per_row_growth": per_row}


def worker_bytes_per_row(results: list[Measurement], workers: int) -> float:
    """A training worker's private memory per row of its shard (the train split's rows over
    `workers`), from the largest worker of the streaming train run (see `growth`, else any
    train run): the slope between the smallest and the largest size, or, with one size, its
    peak over its rows (fixed costs included). NaN when it was not measured."""
    trains = [r for r in results if r.error is None and r.command == "train" and r.worker_private_mb]
    mode = next((m for m in STREAMING_MODES if any(r.mode == m for r in trains)), None)
    trains = sorted((r for r in trains if mode is None or r.mode == mode), key=lambda r: r.rows)
    if not trains:
        return math.nan
    split = 1 - BASE_CONFIG["data"]["split"]["valid"] - BASE_CONFIG["data"]["split"]["test"]
    small, large = trains[0], trains[-1]

    def shard(r: Measurement) -> float:
        return r.rows * split / workers

    if large.rows == small.rows:
        return max(large.worker_private_mb) * 2**20 / shard(large)
    return (max(large.worker_private_mb) - max(small.worker_private_mb)) * 2**20 / (shard(large) - shard(small))


def growth_line(figures: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.2f}" for k, v in figures.items())


def _mb(value: float) -> str:
    return f"{value:,.0f}"


def results_table(results: list[Measurement]) -> str:
    lines = ["| rows | command | mode | wall s | s/row | driver peak RSS MB | worker peak RSS MB "
             "| driver private MB | worker private MB | spilled MB |",
             "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        workers = " / ".join(_mb(w) for w in sorted(r.worker_mb, reverse=True)) or "-"
        private = " / ".join(_mb(w) for w in sorted(r.worker_private_mb, reverse=True)) or "-"
        driver_private = "-" if r.driver_private_mb is None else _mb(r.driver_private_mb)
        wall = f"{r.wall_s:.1f}" if r.error is None else f"failed ({r.error}) after {r.wall_s:.1f}"
        per_row = f"{r.wall_s / r.rows:.2e}" if r.error is None else "-"
        lines.append(f"| {rows_label(r.rows)} | {r.command} | {r.mode} | {wall} | {per_row} "
                     f"| {_mb(r.driver_mb)} | {workers} | {driver_private} | {private} | {_mb(r.spilled_mb)} |")
    return "\n".join(lines)


def phases_table(results: list[Measurement]) -> str:
    trains = [r for r in results if r.timings is not None]
    keys = list(dict.fromkeys(k for r in trains for k in r.timings))
    lines = ["| rows | mode | wall s | " + " | ".join(k.removesuffix("_s") + " s" for k in keys)
             + " | row-dependent s | row-dependent s/row |",
             "|---:|---|---:|" + "---:|" * (len(keys) + 2)]
    for r in trains:
        cells = ["-" if r.timings.get(k) is None else f"{r.timings[k]:.1f}" for k in keys]
        lines.append(f"| {rows_label(r.rows)} | {r.mode} | {r.wall_s:.1f} | " + " | ".join(cells)
                     + f" | {r.row_time_s:.1f} | {r.row_time_s / r.rows:.2e} |")
    return "\n".join(lines)


def ratios_table(results: list[Measurement]) -> str:
    lines = ["| command | mode | driver peak RSS | worker peak RSS | driver private | worker private | s/row |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for (command, mode, driver, worker, per_row), (_, _, own, own_worker, _) in zip(ratios(results),
                                                                                   ratios(results, "private")):
        cells = ["-" if math.isnan(v) else f"{v:.2f}" for v in (driver, worker, own, own_worker, per_row)]
        lines.append(f"| {command} | {mode} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def phase_growth_table(results: list[Measurement]) -> str:
    """Each train phase's seconds per row, largest size against smallest: which phase grows."""
    ok = [r for r in results if r.error is None and r.timings is not None]
    if not ok:
        return ""
    small, large = min(r.rows for r in ok), max(r.rows for r in ok)
    keys = [k for k in GROWTH_PHASES if any(k in r.timings for r in ok)]
    lines = ["| mode | " + " | ".join(k.removesuffix("_s") for k in keys) + " | row-dependent |",
             "|---|" + "---:|" * (len(keys) + 1)]
    for a in (r for r in ok if r.rows == small and small != large):
        b = next((r for r in ok if r.rows == large and r.mode == a.mode), None)
        if b is None:
            continue
        cells = [f"{(b.timings[k] / b.rows) / (a.timings[k] / a.rows):.2f}" if a.timings.get(k) and b.timings.get(k)
                 else "-" for k in keys]
        lines.append(f"| {a.mode} | " + " | ".join(cells)
                     + f" | {(b.row_time_s / b.rows) / (a.row_time_s / a.rows):.2f} |")
    return "\n".join(lines)


def render_doc(results: list[Measurement], *, command: str, machine: list[str], plot_name: str | None,
               kind: str = "mlp") -> str:
    small, large = rows_label(min(r.rows for r in results)), rows_label(max(r.rows for r in results))
    figures = growth(results, "private")
    failed = ", ".join(f"{r.command}{'' if r.mode == '-' else f' ({r.mode})'} at {rows_label(r.rows)}"
                       for r in results if r.error)
    parts = [
        "# Scaling: time and memory against rows",
        "",
        "Written by",
        "",
        f"    {command}",
        "",
        *[f"- {line}" for line in machine],
        "",
        ("Each command is its own `python -m app` process joining one local `ray start` cluster; "
         "how the script measures, and why this config, is explained at the top of `scripts/scale.py`. "
         "One run per size: on a shared machine, repeat it and compare before trusting a few percent."),
        "",
        (f"Model: `model.kind: {kind}`"
         + (f", {XGBOOST_ROUNDS} rounds, early stopping off (train mode `{XGBOOST_MODE}`: each worker "
            "streams its shard into XGBoost's quantised bins)." if kind == "xgboost" else ", one epoch.")),
        "",
        "## Per command",
        "",
        ("s/row: wall time / rows of the dataset (all splits). Driver: the command's own process. "
         "Worker: each Ray Train worker (train only). Spilled: what the object store spilled to disk "
         "during the command."),
        "",
        results_table(results),
        "",
        "## Phases of `train` (metrics.json `timings`)",
        "",
        "Row-dependent seconds: " + " + ".join(k.removesuffix("_s") for k in ROW_PHASES)
        + ", i.e. the wall time without the fixed costs of imports, connecting to Ray and starting "
        "the worker group. `seconds_per_row_growth` uses these.",
        "",
        phases_table(results),
        "",
        f"## Growth, {large} against {small}",
        "",
        ratios_table(results),
        "",
        "    " + growth_line(figures),
        "",
        "The same figures from the peak RSS, which also counts the object store's pages that a process maps "
        "while it reads objects (shared memory, bounded by the store's size, counted once in the store):",
        "",
        "    " + growth_line(growth(results, "peak")),
        "",
        (f"A training worker's private memory per row of its shard: {worker_bytes_per_row(results, WORKERS):,.0f} "
         "bytes (" + ("the slope between the sizes, fixed costs left out" if len({r.rows for r in results}) > 1
                      else "its peak over its rows at the one size, fixed costs included") + ")."),
        "",
        *([f"Left out, as they failed: {failed} (see the table above).", ""] if failed else []),
        ("driver_rss_growth: the largest driver ratio of private memory above; worker_rss_growth_stream: the "
         "train worker's in stream mode; seconds_per_row_growth: train's row-dependent s/row in stream mode "
         "(the other train run when stream was not run). Private memory is the resident memory a process "
         "holds itself (RssAnon in /proc/<pid>/status, polled every 0.1 s): what grows when a process "
         "gathers rows."),
        "",
        ("Seconds per row of each `train` phase, the same sizes. Linear cost gives 1.00; the "
         "phases still hold fixed costs (Ray Data's start, loading the best checkpoint to score "
         "the test split), which give less than 1 until the rows dwarf them."),
        "",
        phase_growth_table(results),
    ]
    if plot_name:
        parts += ["", f"![time and memory against rows]({plot_name})"]
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------- the cluster's processes


def _read(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:
        return None


def _title(pid: int) -> str | None:
    raw = _read(f"/proc/{pid}/cmdline")
    return None if raw is None else raw.replace("\0", " ").strip()


def _hwm_mb(pid: int) -> float | None:
    return _status_mb(pid, "VmHWM")


def _private_mb(pid: int) -> float | None:
    """Resident anonymous memory now: what the process holds itself, without the file and
    shared-memory pages (the object store's) that it maps."""
    return _status_mb(pid, "RssAnon")


def _status_mb(pid: int, field: str) -> float | None:
    text = _read(f"/proc/{pid}/status")
    kb = status_kb(text, field) if text else None
    return None if kb is None else kb / 1024


class ClusterProcesses:
    """The processes of the cluster started with `--temp-dir=temp`: those whose command line
    names the temp dir (GCS, raylet, dashboard, ...) and their descendants (Ray's workers,
    whose titles no longer name it)."""

    def __init__(self, temp: str):
        self.temp = temp
        self.titles: dict[int, str] = {}  # pid -> the last title seen
        self.workers: dict[int, float] = {}  # Ray Train worker pid -> peak MB, since the last take_workers
        self.private: dict[int, float] = {}  # the same, private memory (polled)
        self.reused = 0  # training workers that began in a process seen before under another title
        self.polls = 0

    def scan(self) -> set[int]:
        """Every pid of the cluster now, from one pass over /proc. Only live descendants of
        processes naming the temp dir count, never a pid remembered from before: a pid that
        ended may have been reused by an unrelated process."""
        parents: dict[int, int] = {}
        roots = set()
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) == os.getpid():
                continue
            pid, stat = int(name), _read(f"/proc/{name}/stat")
            if stat is None:
                continue
            parents[pid] = stat_ppid(stat)
            if self.temp in (_title(pid) or ""):
                roots.add(pid)
        members = set(roots)
        frontier = list(members)
        while frontier:
            pid = frontier.pop()
            children = [c for c, parent in parents.items() if parent == pid and c not in members]
            members.update(children)
            frontier += children
        return members

    def poll(self) -> None:
        """Read every known process's title, and each training worker's peak."""
        if self.polls % SCAN_EVERY == 0:
            for pid in self.scan() - self.titles.keys():
                self.titles[pid] = ""  # new: not yet seen under another title
        self.polls += 1
        for pid, before in list(self.titles.items()):
            title = _title(pid)
            if title is None:
                del self.titles[pid]
                continue
            self.titles[pid] = title
            if TRAIN_WORKER not in title:
                continue
            if pid not in self.workers and before and TRAIN_WORKER not in before:
                self._reset_peak(pid)  # an idle worker that ran other tasks became this actor
                self.reused += 1
            peak, private = _hwm_mb(pid), _private_mb(pid)
            if peak is not None:
                self.workers[pid] = max(peak, self.workers.get(pid, 0.0))
            if private is not None:
                self.private[pid] = max(private, self.private.get(pid, 0.0))

    @staticmethod
    def _reset_peak(pid: int) -> None:
        try:
            with open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("5")  # 5: reset the peak RSS (VmHWM) to the current RSS
        except OSError as e:
            print(f"warning: cannot reset the peak RSS of worker {pid} ({e}); it may include earlier tasks",
                  file=sys.stderr)

    def take_workers(self) -> list[float]:
        """The training workers' peaks since the last call; later polls start afresh, and a
        worker seen again keeps counting from its peak so far."""
        peaks, self.workers = list(self.workers.values()), {}
        return peaks

    def take_private(self) -> list[float]:
        """`take_workers` for private memory."""
        peaks, self.private = list(self.private.values()), {}
        return peaks

    def stop(self) -> None:
        """End every process of the cluster: SIGTERM, then SIGKILL after a grace period."""
        doomed = self.scan()
        for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
            for pid in doomed:
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
            deadline = time.time() + grace
            while time.time() < deadline and any(_alive(pid) for pid in doomed):
                time.sleep(0.2)


def _alive(pid: int) -> bool:
    stat = _read(f"/proc/{pid}/stat")
    return stat is not None and stat.rpartition(")")[2].split()[0] != "Z"


# ---------------------------------------------------------------- running things


@dataclasses.dataclass
class Cluster:
    temp: str
    address: str  # GCS host:port, for `--address` and `ray memory`
    env: dict[str, str]  # for every command: no RAY_* of the caller, token auth on
    processes: ClusterProcesses


def start_cluster(num_cpus: int, object_store_mb: int) -> Cluster:
    """`ray start --head` on 127.0.0.1 with its own temp dir and free ports, and the system
    config the app gives a Ray it starts for itself (app/cluster.py), so that the figures
    match what `python -m app` alone gets."""
    from app.cluster import EMBEDDED_RAY_CONFIG

    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    gcs, dashboard, client = _free_port(), _free_port(), _free_port()
    processes = ClusterProcesses(temp)
    try:
        started = subprocess.run(
            [RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}", f"--num-cpus={num_cpus}",
             f"--object-store-memory={object_store_mb * 2**20}", "--dashboard-host=127.0.0.1",
             f"--dashboard-port={dashboard}", f"--ray-client-server-port={client}", "--disable-usage-stats",
             f"--temp-dir={temp}", f"--system-config={json.dumps(EMBEDDED_RAY_CONFIG)}"],
            check=False, env=env, capture_output=True, text=True, timeout=180)
    except BaseException:
        processes.stop()
        raise
    if started.returncode != 0:
        processes.stop()
        raise CommandFailed(f"ray start failed:\n{started.stderr[-3000:]}")
    env["RAY_AUTH_MODE"] = "token"  # `ray start --head` turned token authentication on
    return Cluster(temp=temp, address=f"127.0.0.1:{gcs}", env=env, processes=processes)


def stop_cluster(cluster: Cluster) -> None:
    cluster.processes.stop()
    shutil.rmtree(cluster.temp, ignore_errors=True)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spilled_so_far(cluster: Cluster) -> float:
    done = subprocess.run([RAY, "memory", "--address", cluster.address, "--stats-only"], check=False,
                          env=cluster.env, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise CommandFailed(f"ray memory --stats-only failed:\n{done.stderr[-2000:]}")
    return spilled_mib(done.stdout) * 2**20 / 1e6


def run_app(cluster: Cluster, args: list[str], *, log: Path, timeout: float) -> Measurement:
    """`python -m app ARGS --address <cluster>`, measured (`rows` left 0 for the caller). Its
    output goes to `log`; on failure, `error` says how it ended and the log's tail is printed."""
    cluster.processes.take_workers()
    cluster.processes.take_private()
    argv = [sys.executable, "-m", "app", *args, "--address", cluster.address]
    started = time.perf_counter()
    with open(log, "w") as out:
        out.write(shlex.join(argv) + "\n")
        out.flush()
        proc = subprocess.Popen(argv, cwd=ROOT, env=cluster.env, stdout=out, stderr=subprocess.STDOUT)
    driver, private, error = 0.0, 0.0, None
    try:
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            driver = max(driver, _hwm_mb(proc.pid) or 0.0)
            private = max(private, _private_mb(proc.pid) or 0.0)
            cluster.processes.poll()
            if time.perf_counter() - started > timeout:
                error = f"ran past --timeout {timeout:g} s"
                proc.kill()
            time.sleep(POLL_S)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    wall = time.perf_counter() - started
    cluster.processes.poll()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        error = error or f"exit {code}"
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        print(f"error: `python -m app {shlex.join(args)}` failed ({error}); the end of {log}:\n{tail}",
              file=sys.stderr, flush=True)
    return Measurement(rows=0, command=args[0], mode="-", wall_s=wall, driver_mb=max(driver, usage.ru_maxrss / 1024),
                       worker_mb=cluster.processes.take_workers(), error=error, driver_private_mb=private or None,
                       worker_private_mb=cluster.processes.take_private())


def data_folder(rows: int, work: Path) -> Path:
    return work / "data" / f"synthetic-{rows}x{part_count(rows)}"


def ensure_data(folder: Path, rows: int) -> bool:
    """Generate the synthetic dataset of `rows` rows into `folder` unless it is there; returns
    whether it did. A folder appears whole (renamed into place), so one that exists is complete."""
    if folder.is_dir():
        return False
    parts = part_count(rows)
    staging = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    started = time.perf_counter()
    subprocess.run([sys.executable, str(MAKE_DATA), "--rows", str(rows), "--parts", str(parts), "--out",
                    str(staging)], check=True, capture_output=True, text=True)
    staging.rename(folder)
    print(f"generated {rows_label(rows)} rows in {parts} parts in {time.perf_counter() - started:.0f} s: {folder}")
    return True


def config_tree(kind: str) -> dict:
    """BASE_CONFIG, with XGBOOST_MODEL as its model for `--kind xgboost`."""
    tree = copy.deepcopy(BASE_CONFIG)
    if kind == "xgboost":
        tree["model"] = copy.deepcopy(XGBOOST_MODEL)
    return tree


def write_config(rows: int, data: Path, work: Path, kind: str = "mlp") -> Path:
    tree = config_tree(kind)
    tree["name"] = f"scale-{rows}"
    tree["data"]["train"] = str(data)
    tree["run"] = {"storage": str(work / "runs")}
    path = work / "configs" / f"scale-{rows}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def check_cache_key(config: Path, modes: tuple[str, ...]) -> None:
    """Refuse, before Ray starts, a `data.cache` that this version of the app does not know."""
    from app.config import load_config
    from app.errors import UserError

    for mode in modes:
        try:
            load_config(config, [f"data.cache={mode}"])
        except UserError as e:
            print(f"error: this app refuses data.cache={mode} ({e}); pass --no-cache-key to measure "
                  f"only the default path, without the data.cache key", file=sys.stderr)
            sys.exit(2)


def measure_size(rows: int, data: Path, config: Path, cluster: Cluster, *, work: Path, modes: tuple[str, ...],
                 timeout: float) -> list[Measurement]:
    """Train in each mode, then evaluate, predict and baseline, on one size."""
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    results = []
    spilled = spilled_so_far(cluster)

    def measured(command: str, mode: str, args: list[str]) -> Measurement:
        nonlocal spilled
        print(f"{rows_label(rows)} rows: {command} {'' if mode == '-' else mode} ...", flush=True)
        result = run_app(cluster, [command, *args], log=logs / f"{rows}-{command}-{mode}.log", timeout=timeout)
        now = spilled_so_far(cluster)
        result.rows, result.mode, result.spilled_mb, spilled = rows, mode, now - spilled, now
        print(f"  {result.error or 'ok'}: {result.wall_s:.1f} s, driver {result.driver_mb:,.0f} MB "
              f"(private {result.driver_private_mb or 0:,.0f}), workers {[round(w) for w in result.worker_mb]} MB "
              f"(private {[round(w) for w in result.worker_private_mb]}), spilled {result.spilled_mb:,.0f} MB",
              flush=True)
        results.append(result)
        return result

    checkpoint = None
    for mode in modes:
        name = f"scale-{rows}-{mode}"
        sets = ["--set", f"name={name}"] + (["--set", f"data.cache={mode}"] if mode in MODES else [])
        trained = measured("train", mode, ["--config", str(config), *sets, "--fresh"])
        if trained.error:
            continue
        metrics = json.loads((work / "runs" / name / "metrics.json").read_text())
        trained.timings = metrics["timings"]
        own = max((h.get("worker_peak_rss_mb") or 0 for h in metrics["history"]), default=0)
        print(f"  (the workers' own ru_maxrss in metrics.json: {own:,.0f} MB; workers so far that began in an "
              f"existing Ray worker process, their peak reset then: {cluster.processes.reused})", flush=True)
        checkpoint = checkpoint or metrics["best_checkpoint"]
    if checkpoint:
        measured("evaluate", "-", ["--checkpoint", checkpoint, "--data", str(data)])
        predictions = work / "predictions"
        measured("predict", "-", ["--checkpoint", checkpoint, "--input", str(data), "--output", str(predictions),
                                  "--overwrite"])
        shutil.rmtree(predictions, ignore_errors=True)  # as large as the input: 16M rows is over 1 GB
    measured("baseline", "-", ["--config", str(config), "--set", f"name=scale-{rows}-baseline"])
    return results


# ---------------------------------------------------------------- report


def code_version() -> str:
    """The commit measured, taken before the run (the run itself rewrites the doc and plot)."""
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], check=False,
                            capture_output=True, text=True).stdout.strip() or "unknown"
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                           check=False, capture_output=True, text=True).stdout.strip()
    return f"commit {commit}{' with uncommitted changes' if dirty else ''}"


def machine_lines(load_before: float, code: str) -> list[str]:
    from importlib.metadata import version

    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or "unknown")
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return [(f"Machine: {len(os.sched_getaffinity(0))} cores ({model}), {memory:.0f} GiB memory, no GPU used, "
             f"{platform.system()} {platform.release()}"),
            f"Versions: Python {platform.python_version()}, ray {version('ray')}, torch {version('torch')}; {code}",
            f"Load average (1 min): {load_before:.2f} before, {os.getloadavg()[0]:.2f} after"]


def plot(results: list[Measurement], path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = [r for r in results if r.error is None]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    series = list(dict.fromkeys((r.command, r.mode) for r in results))
    for i, (command, mode) in enumerate(series):
        points = sorted((r for r in results if (r.command, r.mode) == (command, mode)), key=lambda r: r.rows)
        label, color = command if mode == "-" else f"{command} ({mode})", f"C{i}"
        rows = [r.rows for r in points]
        left.plot(rows, [r.wall_s for r in points], marker="o", color=color, label=label)
        right.plot(rows, [r.driver_mb for r in points], marker="o", color=color, label=f"driver: {label}")
        if all(r.driver_private_mb for r in points):
            right.plot(rows, [r.driver_private_mb for r in points], marker="o", linestyle=":", color=color,
                       label=f"driver private: {label}")
        if all(r.worker_mb for r in points):
            right.plot(rows, [max(r.worker_mb) for r in points], marker="s", linestyle="--", color=color,
                       label=f"worker: {label}")
    sizes = sorted({r.rows for r in results})
    for ax, title, unit in ((left, "wall time", "seconds"), (right, "peak RSS (dotted: private)", "MB")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(sizes, [rows_label(n) for n in sizes])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.yaxis.set_major_formatter(matplotlib.ticker.StrMethodFormatter("{x:,.0f}"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.StrMethodFormatter("{x:,.0f}"))
        ax.set_xlabel("rows")
        ax.set_ylabel(unit)
        ax.set_title(f"{title} (log-log)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", default=DEFAULT_ROWS, help=f"comma-separated sizes (default {DEFAULT_ROWS})")
    p.add_argument("--work", type=Path, default=Path("/tmp/app-scale"),
                   help="folder for data, runs and logs (default /tmp/app-scale)")
    p.add_argument("--keep", action="store_true",
                   help="keep the generated data and the runs in --work (later invocations reuse the data)")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "scaling.md",
                   help="markdown to write; the plot goes beside it as .png (default docs/scaling.md)")
    p.add_argument("--num-cpus", type=int, default=4, help="logical CPUs of the cluster (default 4)")
    p.add_argument("--object-store-mb", type=int, default=2048, help="object store size (default 2048)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds one command may take (default 3600)")
    p.add_argument("--no-cache-key", action="store_true",
                   help="one train per size without --set data.cache (for an app without the key)")
    p.add_argument("--kind", choices=KINDS, default="mlp",
                   help=f"model.kind to train (default mlp); xgboost: one train run of {XGBOOST_ROUNDS} rounds")
    args = p.parse_args(argv)
    try:
        args.rows = sorted({int(n) for n in args.rows.split(",")})
    except ValueError:
        p.error(f"--rows: expected comma-separated integers, got {args.rows!r}")
    if args.rows[0] < 1000:
        p.error("--rows: each size must be at least 1000 rows")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join(["python", "scripts/scale.py", *(sys.argv[1:] if argv is None else argv)])
    sys.path.insert(0, str(ROOT))
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    modes = (XGBOOST_MODE,) if args.kind == "xgboost" else ("default",) if args.no_cache_key else MODES
    load_before, code = os.getloadavg()[0], code_version()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that `finally` stops the cluster

    datasets = {rows: data_folder(rows, work) for rows in args.rows}
    configs = {rows: write_config(rows, data, work, args.kind) for rows, data in datasets.items()}
    if set(modes) & set(MODES):
        check_cache_key(configs[args.rows[0]], modes)
    generated = []
    results: list[Measurement] = []
    started = time.perf_counter()
    try:
        for rows, data in datasets.items():
            if ensure_data(data, rows):
                generated.append(data)
        cluster = start_cluster(args.num_cpus, args.object_store_mb)
        try:
            for rows, data in datasets.items():
                results += measure_size(rows, data, configs[rows], cluster, work=work, modes=modes,
                                        timeout=args.timeout)
        finally:
            stop_cluster(cluster)
    except CommandFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        if not args.keep:
            for data in generated:
                shutil.rmtree(data, ignore_errors=True)
            shutil.rmtree(work / "runs", ignore_errors=True)
    print(f"measured in {time.perf_counter() - started:.0f} s")

    (work / "results.json").write_text(json.dumps([dataclasses.asdict(r) for r in results], indent=1))
    png = args.out.with_suffix(".png")
    plot(results, png)
    args.out.write_text(render_doc(results, command=command, machine=machine_lines(load_before, code),
                                   plot_name=os.path.relpath(png, args.out.parent), kind=args.kind))
    print(results_table(results))
    print(f"wrote {args.out} and {png}")
    failed = sum(r.error is not None for r in results)
    if failed:
        print(f"error: {failed} command(s) failed; their logs are in {work / 'logs'}", file=sys.stderr)
    print("peak RSS, object-store pages included: " + growth_line(growth(results, "peak")))
    print(f"worker_private_bytes_per_row={worker_bytes_per_row(results, WORKERS):.0f}")
    print(growth_line(growth(results, "private")))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
