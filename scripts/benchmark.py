#!/usr/bin/env python
"""Training throughput of the app (Ray Train, 1 and 2 workers) against a plain PyTorch loop.

    .venv/bin/python scripts/benchmark.py [--rows 200000] [--epochs 4] [--batch-size 1024]
        [--data DIR] [--out docs/benchmarks.md]

1. Writes a synthetic dataset with scripts/make_data.py into a temp folder (or reuses --data).
2. Trains it with `run_training` on a local Ray started with every CPU of the machine:
   1 worker x 2 CPUs (torch threads), then 2 DDP workers x 1 CPU each.
3. Trains the same model on the same in-memory training rows with a plain PyTorch loop in
   this process, Ray shut down, torch.set_num_threads(2).

What is timed, in both: only the training pass of an epoch. The app's `rows_per_s` is
training rows over all ranks / the time of `train_epoch` on rank 0 (see
app/training/loop.py): the batch permutation, forward, loss, zero_grad, backward, step
and loss accumulation, plus the final all-reduce of the loss; validation, the lr
scheduler, checkpointing and `ray.train.report` fall outside. The plain loop times the
same steps. Throughput is the median rows/s over epochs 2..E (epoch 1 is warm-up).

Prints a markdown table, writes it to --out, and ends with the line
`train_ratio_1worker=<x.xx> train_ratio_2workers=<x.xx>` (app rows/s / plain rows/s).
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import ray
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# Ray workers must import `app` too: they inherit the environment of the local Ray we start.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))

from app import cluster  # noqa: E402
from app.config import Config, from_dict  # noqa: E402
from app.data.preprocess import PreprocessState, transform_batch  # noqa: E402
from app.data.split import SPLIT_COLUMN, TRAIN, assign_split  # noqa: E402
from app.model import build_model  # noqa: E402
from app.training.checkpoint import load_preprocess_state, local_copy  # noqa: E402
from app.training.trainer import run_training  # noqa: E402

SETUPS = [(1, 2), (2, 1)]  # (scaling.num_workers, scaling.cpus_per_worker)
PLAIN_THREADS = 2


def make_config(data: str, storage: str, workers: int, cpus: int, args: argparse.Namespace) -> Config:
    tree = {
        "name": f"bench-{workers}w-{uuid.uuid4().hex[:8]}",
        "data": {"train": data, "label": "target", "split": {"valid": 0.1, "test": 0.1, "seed": 0}},
        "model": {"hidden": [256, 256], "dropout": 0.0},
        "train": {"epochs": args.epochs, "batch_size": args.batch_size, "lr": 1e-3,
                  "early_stopping_patience": None, "lr_schedule": "constant"},
        "scaling": {"num_workers": workers, "cpus_per_worker": cpus},
        "run": {"storage": storage},
    }
    return from_dict(tree, "benchmark")


def steady(rates: list[float]) -> float:
    """Median rows/s without the warm-up epoch."""
    return statistics.median(rates[1:])


def training_rows(data: str, cfg: Config, state: PreprocessState) -> dict[str, np.ndarray]:
    """The training split as model-ready arrays, through the app's own split and transform."""
    df = pq.read_table(data).to_pandas()
    s = cfg.data.split
    df[SPLIT_COLUMN] = assign_split(df, s.valid, s.test, s.seed)
    return transform_batch(df, state.to_json(), TRAIN)


def plain_torch(arrays: dict[str, np.ndarray], state: PreprocessState, cfg: Config) -> list[float]:
    """rows/s per epoch of a plain loop doing one app worker's work per step."""
    torch.set_num_threads(PLAIN_THREADS)
    x_num, x_cat, y = (torch.from_numpy(np.ascontiguousarray(arrays[k])) for k in ("x_num", "x_cat", "y"))
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, state.numeric_width, state.cardinalities, state.output_dim)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    loss_fn = nn.CrossEntropyLoss() if state.task == "classification" else nn.MSELoss()
    n = len(y)
    steps = max(1, math.ceil(n / cfg.train.batch_size))  # app.training.loop.plan_epoch, one rank
    rates = []
    for epoch in range(1, cfg.train.epochs + 1):
        started = time.perf_counter()
        model.train()
        loss_sum = torch.zeros((), dtype=torch.float64)
        g = torch.Generator().manual_seed(epoch)
        for idx in torch.tensor_split(torch.randperm(n, generator=g), steps):  # like epoch_batches
            out = model(x_num[idx], x_cat[idx])
            loss = loss_fn(out, y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach().double() * len(idx)
        train_loss = float(loss_sum / n)
        elapsed = time.perf_counter() - started
        rates.append(n / elapsed)
        print(f"plain epoch {epoch}/{cfg.train.epochs}  train_loss {train_loss:.4f}  "
              f"{elapsed:.1f}s  {n / elapsed:,.0f} rows/s", flush=True)
    return rates


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def report(rows: list[tuple[str, int, int, list[float]]], plain: float, args, train_rows: int,
           failures: dict[int, str]) -> str:
    table = ["| setup | workers | threads per worker | rows/s | ratio to plain |",
             "|---|---:|---:|---:|---:|"]
    for setup, workers, threads, rates in rows:
        cells = f"{steady(rates):,.0f} | {steady(rates) / plain:.2f}" if rates else "failed | -"
        table.append(f"| {setup} | {workers} | {threads} | {cells} |")
    per_epoch = [f"- {setup}, {workers} worker(s): " + (", ".join(f"{r:,.0f}" for r in rates) or "failed")
                 for setup, workers, _, rates in rows]
    return "\n".join([
        "# Training throughput: app (Ray Train) vs plain PyTorch",
        "",
        f"Command: `{' '.join([Path(sys.executable).name, *sys.argv])}`  ",
        f"Date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}  ",
        f"Machine: nproc {len(os.sched_getaffinity(0))}, {cpu_model()}; load average at start "
        f"{args.load_before:.2f}, at end {os.getloadavg()[0]:.2f} (other processes skew 2-thread runs most)  ",
        f"Versions: torch {torch.__version__}, ray {ray.__version__}, Python {platform.python_version()}  ",
        f"Workload: {train_rows:,} training rows (of {args.rows:,}), batch {args.batch_size} (global), "
        f"{args.epochs} epochs, MLP [256, 256], AdamW lr 1e-3",
        "",
        *table,
        "",
        "rows/s: median over epochs 2..E of training rows / time of the training pass (epoch 1 is warm-up);",
        "validation, checkpointing and reporting are not timed, in the app as in the plain loop.",
        "Ratio: rows/s of the setup / rows/s of plain PyTorch.",
        "",
        "Per-epoch rows/s:",
        "",
        *per_epoch,
        *([""] + [f"Failed: {w} worker(s): `{why}`" for w, why in failures.items()] if failures else []),
        "",
    ])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--data", help="dataset folder to reuse (generated there if it holds no Parquet)")
    p.add_argument("--out", default="docs/benchmarks.md")
    args = p.parse_args()
    if args.epochs < 2:
        p.error("--epochs must be at least 2 (epoch 1 is dropped as warm-up)")
    args.load_before = os.getloadavg()[0]
    if args.load_before > 0.5 * len(os.sched_getaffinity(0)):
        print(f"warning: load average {args.load_before:.2f}: other work on this machine will skew the numbers",
              file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="app-bench-") as tmp:
        data = args.data or os.path.join(tmp, "data")
        if not list(Path(data).glob("*.parquet")):
            subprocess.run([sys.executable, str(ROOT / "scripts" / "make_data.py"), "--rows", str(args.rows),
                            "--out", data], check=True)
        args.rows = pq.ParquetDataset(data).read(columns=["target"]).num_rows

        cluster.quiet_logs()  # before ray.init, so its environment reaches the Ray processes
        ray.init(num_cpus=os.cpu_count(), logging_level="WARNING", dashboard_host="127.0.0.1")
        cluster.connect()
        results, metrics, failures = [], {}, {}
        for workers, cpus in SETUPS:
            cfg = make_config(data, os.path.join(tmp, "runs"), workers, cpus, args)
            setup = "app (Ray Train" + (", DDP)" if workers > 1 else ")")
            try:
                metrics[workers] = run_training(cfg)
            except Exception as e:  # measure the other setups anyway; the table says what failed
                failures[workers] = f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"
                print(f"error: {setup} with {workers} worker(s) failed: {failures[workers]}", file=sys.stderr)
                results.append((setup, workers, cpus, []))
                continue
            results.append((setup, workers, cpus, [r["rows_per_s"] for r in metrics[workers]["history"]]))
        ray.shutdown()
        if not metrics:
            raise SystemExit("benchmark: every app run failed; nothing to compare")

        done = metrics[min(metrics)]
        with local_copy(done["best_checkpoint"]) as best:
            state = load_preprocess_state(best)
        arrays = training_rows(data, cfg, state)  # cfg: the last run's; data, split, model, train are shared
        app_rows = done["rows"]["train"]
        if len(arrays["y"]) != app_rows:
            print(f"warning: plain loop has {len(arrays['y'])} training rows, the app {app_rows}", file=sys.stderr)
        plain_rates = plain_torch(arrays, state, cfg)

    plain = steady(plain_rates)
    rows = [("plain PyTorch (no Ray)", 1, PLAIN_THREADS, plain_rates), *results]
    text = report(rows, plain, args, len(arrays["y"]), failures)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print("\n" + text)
    print(f"written to {out}")
    ratios = {w: steady(rates) / plain if rates else math.nan for _, w, _, rates in results}
    print(f"train_ratio_1worker={ratios[1]:.2f} train_ratio_2workers={ratios[2]:.2f}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
