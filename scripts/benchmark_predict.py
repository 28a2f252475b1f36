#!/usr/bin/env python
"""Batch-predict throughput: `predict` (Ray Data actor pool) against calling the model directly.

    .venv/bin/python scripts/benchmark_predict.py [--rows 1000000] [--batch-size 4096] [--data DIR]

1. Writes a synthetic dataset with scripts/make_data.py (or reuses --data) and trains the
   benchmark model (scripts/benchmark.py's config) for one epoch on a local Ray, to get a
   checkpoint.
2. app: `run_predict` (what `python -m app predict` runs) from the Parquet files to one
   output Parquet file: read, preprocess, forward pass, ordered write, all timed.
3. direct: the same checkpoint's `Predictor.predict` over the same rows already in memory
   as one pandas DataFrame, in batches of --batch-size, in this process with as many
   torch threads as the machine has cores; Ray shut down. File reading is not timed here.

Prints a markdown table and ends with `predict_ratio=<x.xx>` (app rows/s / direct rows/s).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import ray
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))

from benchmark import make_config  # noqa: E402

from app import cluster  # noqa: E402
from app.batch import check_input, check_output, default_actors, run_predict  # noqa: E402
from app.predict import Predictor  # noqa: E402
from app.training.trainer import run_training  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--data", help="dataset folder to reuse (generated there if it holds no Parquet)")
    args = p.parse_args()
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory(prefix="app-bench-predict-") as tmp:
        data = args.data or os.path.join(tmp, "data")
        if not list(Path(data).glob("*.parquet")):
            subprocess.run([sys.executable, str(ROOT / "scripts" / "make_data.py"), "--rows", str(args.rows),
                            "--out", data], check=True)
        cluster.quiet_logs()
        ray.init(num_cpus=cores, logging_level="WARNING", dashboard_host="127.0.0.1")
        train_args = argparse.Namespace(epochs=1, batch_size=1024)
        cfg = make_config(data, os.path.join(tmp, "runs"), 1, cores, train_args)
        cfg.tracking.mlflow = cfg.tracking.tensorboard = False
        checkpoint = run_training(cfg)["best_checkpoint"]

        predictor = Predictor.from_checkpoint(checkpoint)
        source = check_input(predictor, data, "--input", need_label=False)
        started = time.perf_counter()
        rows = run_predict(checkpoint, predictor, source, check_output(os.path.join(tmp, "out.parquet"), False),
                           batch_size=args.batch_size, actors=None)
        app_s = time.perf_counter() - started
        actors = default_actors()
        ray.shutdown()

        df = pq.read_table(data).to_pandas()
        torch.set_num_threads(cores)
        predictor.predict(df.iloc[: args.batch_size])  # warm-up, as the actors' first batch
        started = time.perf_counter()
        for i in range(0, len(df), args.batch_size):
            predictor.predict(df.iloc[i:i + args.batch_size])
        direct_s = time.perf_counter() - started

    app, direct = rows / app_s, len(df) / direct_s
    print(f"\n| path | rows | seconds | rows/s |\n|---|---:|---:|---:|\n"
          f"| direct: Predictor.predict on an in-memory DataFrame, 1 process, {cores} threads | {len(df):,} | "
          f"{direct_s:.1f} | {direct:,.0f} |\n"
          f"| app: predict, Parquet files -> Parquet file, {actors} actor(s) x 1 thread | {rows:,} | "
          f"{app_s:.1f} | {app:,.0f} |\n")
    print(f"predict_ratio={app / direct:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
