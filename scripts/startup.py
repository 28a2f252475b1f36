#!/usr/bin/env python
"""How long a small `train` takes end to end, and where the time goes.

    flock /tmp/ray.lock .venv/bin/python scripts/startup.py [--runs 3] [--config configs/quickstart.yaml]
        [--storage DIR] [--set KEY=VALUE ...]

Runs `python -m app train --config CONFIG --set name=startup-<id>` --runs times, one after
another, each a new run in its own process from the repository root, as a user types it:
an embedded local Ray, the config as shipped (tracking included) but for `run.storage`,
which is a new temporary folder unless --storage names one. The first run there creates
the MLflow store (`mlflow.db`); the others reuse it, as runs in `runs/` do.

Prints one row per run and then the median of each column:

- `wall`: the whole command, from starting the process to its exit;
- `start`: Python's start, imports and the checks before the run's clock starts (the
  config, the sources, the run folder's lease), less Ray's start;
- the phases of the run's metrics.json `timings`: Ray's start, the data step, the worker
  group's start, training (its optimizer steps in brackets), scoring the test split;
- `setup`: the rest of the run's own clock (the workers pulling their shards, building
  the model, the first epoch's set-up);
- `exit`: from metrics.json being written to the process's end (tracking closed, Ray shut
  down, the interpreter's exit).

The machine is shared with whatever else runs on it; the load average before and after is
printed so that a slow row can be told apart. Run it under the lock that keeps two Rays
from starting at once on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COLUMNS = ("wall", "start", "ray_start_s", "data_s", "worker_start_s", "train_s", "train_steps_s", "test_s",
           "setup", "exit")
HEADERS = ("wall", "start", "ray", "data", "workers", "train", "(steps)", "test", "setup", "exit")


def one_run(config: str, storage: str, overrides: list[str]) -> dict[str, float]:
    """The columns of one `train` in its own process (see the module docstring)."""
    name = f"startup-{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # an embedded Ray, as a user gets
    args = [sys.executable, "-m", "app", "train", "--config", config, "--set", f"name={name}",
            "--set", f"run.storage={storage}", *(a for o in overrides for a in ("--set", o))]
    started = time.time()
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    ended = time.time()
    if done.returncode != 0:
        raise SystemExit(f"startup: the run failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    path = Path(storage, name, "metrics.json")
    metrics = json.loads(path.read_text())
    t = metrics["timings"]
    written = path.stat().st_mtime
    phases = sum(t[k] or 0.0 for k in ("data_s", "worker_start_s", "train_s", "test_s"))
    return {"wall": ended - started, "start": written - started - metrics["wall_time_s"] - (t["ray_start_s"] or 0.0),
            **{k: t[k] for k in COLUMNS if k in t}, "setup": metrics["wall_time_s"] - phases,
            "exit": ended - written}


def row(label: str, values: dict[str, float | None]) -> str:
    cells = ["-" if values.get(k) is None else f"{values[k]:.1f}" for k in COLUMNS]
    return f"| {label} | " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs to make (default 3)")
    parser.add_argument("--config", default="configs/quickstart.yaml", help="config file (default: the quickstart)")
    parser.add_argument("--storage", help="run.storage for every run (default: a new temporary folder)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="another config override for every run")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="app-startup-") as tmp:
        storage = args.storage or tmp
        print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
              f"{len(os.sched_getaffinity(0))} CPUs; run.storage {storage}")
        print("| run | " + " | ".join(HEADERS) + " |")
        print("|---|" + "---:|" * len(HEADERS))
        results = []
        for i in range(args.runs):
            results.append(one_run(args.config, storage, args.overrides))
            print(row(str(i + 1), results[-1]), flush=True)
        medians = {k: statistics.median(r[k] for r in results) for k in COLUMNS if all(r.get(k) is not None
                                                                                         for r in results)}
        print(row("median", medians))
        print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print(f"median_wall_s={medians['wall']:.1f}")


if __name__ == "__main__":
    main()
