#!/usr/bin/env python
"""Every performance figure of the app, each measured beside its plain counterpart on this machine.

    .venv/bin/python scripts/benchmark.py [--rows 1000000] [--epochs 4] [--batch-size 1024]
        [--data DIR] [--out docs/benchmarks.md]

One run measures, in this order:

1. Startup: `python -m app train` in a subprocess on the bundled penguins data for one
   epoch; its wall time, split with the `timings` of its metrics.json.
2. Training throughput on --rows synthetic rows (scripts/make_data.py): `run_training`
   on a local Ray with every CPU of the machine, 1 worker x all cores, then 2 DDP workers
   x half the cores each; against a plain PyTorch loop in this process over the same training
   rows already in memory as tensors, same model, batch size, steps, optimizer and total
   threads, Ray shut down. Timed on both sides: only the training pass of an epoch
   (shuffle, batch gather, forward, loss, backward, step); validation, checkpointing and
   reporting are not. Throughput is the median rows/s over epochs 2..E (epoch 1 is
   warm-up, on both sides). Also the share of the training pass spent getting batches
   ready (the app's `batch_wait_frac`); the plain loop with torch's default (unfused)
   AdamW; and, for DDP, the plain DDP step without its gradient all-reduce and the
   all-reduce alone.
3. Ingest: the app's data step (read, split, preprocess with Ray Data) and the workers
   pulling their shards into memory, against pyarrow reading the same Parquet files, and
   pyarrow + the same transform in pandas in one process.
4. Batch predict: `run_predict` (what `python -m app predict` runs), Parquet files in,
   one Parquet file out, against `Predictor.predict` called directly in this process on
   the same rows already in memory, with every core as torch threads. Warm-up is excluded
   on both sides: the direct side loads the model and scores one batch first; the app's
   figure is its second call in the same Ray session (the first, cold one is shown too).
5. Peak memory (RSS) of the driver and of each training worker.

Prints markdown, writes it to --out, and ends with the line
`train_ratio_1worker=<x.xx> train_ratio_2workers=<x.xx> predict_ratio=<x.xx>`.
"""

from __future__ import annotations

import argparse
import datetime
import json
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
from app.data.prepare import transform_batch  # noqa: E402
from app.data.split import SPLIT_COLUMN, TRAIN, assign_split  # noqa: E402
from app.data.transform import PreprocessState  # noqa: E402
from app.model import build_model  # noqa: E402
from app.predict import check_output, default_concurrency, run_predict  # noqa: E402
from app.predictor import Predictor, check_input  # noqa: E402
from app.training.checkpoint import load_preprocess_state, local_copy  # noqa: E402
from app.training.loop import make_optimizer, peak_rss_mb  # noqa: E402
from app.training.trainer import run_training  # noqa: E402

CORES = len(os.sched_getaffinity(0))
SETUPS = [(1, CORES), (2, max(1, CORES // 2))]  # (scaling.num_workers, scaling.cpus_per_worker)
PREDICT_BATCH = 4096  # rows per model call, both sides (the CLI's default)


def make_config(data: str, storage: str, workers: int, cpus: int, args: argparse.Namespace) -> Config:
    tree = {
        "name": f"bench-{workers}w-{uuid.uuid4().hex[:8]}",
        "data": {"train": data, "label": "target", "split": {"valid": 0.1, "test": 0.1, "seed": 0}},
        "model": {"kind": "mlp", "hidden": [256, 256], "dropout": 0.0},
        "train": {"epochs": args.epochs, "batch_size": args.batch_size, "lr": 1e-3,
                  "early_stopping_patience": None, "lr_schedule": "constant"},
        "scaling": {"num_workers": workers, "cpus_per_worker": cpus},
        "run": {"storage": storage},
        "tracking": {"mlflow": False, "tensorboard": False},
    }
    return from_dict(tree, "benchmark")


def steady(values: list[float]) -> float:
    """Median without the warm-up epoch."""
    return statistics.median(values[1:])


def wait_for_ray_exit(timeout: float = 30.0) -> None:
    """After ray.shutdown(): until Ray's processes have exited, so that the plain runs that
    follow have the machine to themselves."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        alive = False
        for entry in Path("/proc").iterdir():
            try:
                cmdline = (entry / "cmdline").read_bytes() if entry.name.isdigit() else b""
            except OSError:
                continue
            if cmdline.startswith(b"ray::") or b"/raylet" in cmdline or b"gcs_server" in cmdline:
                alive = True
                break
        if not alive:
            break
        time.sleep(0.5)
    time.sleep(2)


# ---------------------------------------------------------------- 1. startup


def startup(tmp: str) -> dict:
    """Wall time of a small `train` in its own process, and its metrics.json timings."""
    storage = os.path.join(tmp, "startup")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "app", "train", "--config", "configs/quickstart.yaml",
                           "--set", "train.epochs=1", "--set", f"run.storage={storage}"],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"benchmark: the startup run failed:\n{done.stderr[-3000:]}")
    metrics = json.loads(Path(storage, "quickstart", "metrics.json").read_text())
    return {"wall": wall, **metrics["timings"]}


def startup_table(t: dict) -> list[str]:
    phases = [("Ray start (embedded local Ray)", t["ray_start_s"]),
              ("resource and storage checks, data read, split and preprocessing (Ray Data)", t["data_s"]),
              ("worker-group start (placement group, worker processes, torch.distributed)", t["worker_start_s"]),
              ("shard ingest into the workers", t["ingest_s"]),
              ("training: 1 epoch with validation and checkpoint, worker-group shutdown", t["train_s"]),
              ("test scoring and metrics.json", t["test_s"])]
    rest = t["wall"] - sum(s for _, s in phases)
    rows = [f"| {name} | {s:.1f} |" for name, s in phases]
    return ["| phase | seconds |", "|---|---:|", *rows,
            f"| the rest: Python imports, config and input file checks, Ray shutdown | {rest:.1f} |",
            f"| **end to end** | **{t['wall']:.1f}** |"]


# ---------------------------------------------------------------- 2. training


def training_rows(data: str, cfg: Config, state: PreprocessState) -> dict[str, np.ndarray]:
    """The training split as model-ready arrays, through the app's own split and transform."""
    df = pq.read_table(data).to_pandas()
    s = cfg.data.split
    df[SPLIT_COLUMN] = assign_split(df, s.valid, s.test, s.seed)
    return transform_batch(df, state.to_json(), TRAIN)


def plain_torch(arrays: dict[str, np.ndarray], state: PreprocessState, cfg: Config, threads: int,
                rank: int = 0, world: int = 1, label: str = "plain", app_optimizer: bool = True,
                sync: bool = True) -> list[float]:
    """rows/s per epoch (over all ranks) of a plain loop doing the app's work per step.

    With world > 1 it runs as rank `rank` of an initialised torch.distributed group: DDP,
    and this rank's contiguous part of the rows, as the app's shards. The optimizer is the
    app's (`make_optimizer`), or with app_optimizer=False torch's AdamW with its defaults.
    sync=False skips DDP's gradient all-reduce (`no_sync`): not training, but the compute
    alone, to show what the all-reduce costs."""
    import contextlib

    import torch.distributed as dist

    torch.set_num_threads(threads)
    n_all = len(arrays["y"])
    lo, hi = n_all * rank // world, n_all * (rank + 1) // world
    x_num, x_cat, y = (torch.from_numpy(np.ascontiguousarray(arrays[k][lo:hi])) for k in ("x_num", "x_cat", "y"))
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, state)
    if world > 1:
        model = nn.parallel.DistributedDataParallel(model)
    optimizer = (make_optimizer(model, cfg)[0] if app_optimizer else
                 torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay))
    loss_fn = nn.CrossEntropyLoss() if state.task == "classification" else nn.MSELoss()
    n = len(y)
    steps = max(1, min(math.ceil(n_all / cfg.train.batch_size), n_all // world))  # app.training.loop.plan_epoch
    rates = []
    for epoch in range(1, cfg.train.epochs + 1):
        started = time.perf_counter()
        model.train()
        loss_sum = torch.zeros((), dtype=torch.float64)
        g = torch.Generator().manual_seed(epoch * world + rank)
        for idx in torch.tensor_split(torch.randperm(n, generator=g), steps):  # like epoch_batches
            with contextlib.nullcontext() if sync else model.no_sync():
                out = model(x_num[idx], x_cat[idx])
                loss = loss_fn(out, y[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
            optimizer.step()
            loss_sum += loss.detach().double() * len(idx)
        if world > 1:
            dist.all_reduce(loss_sum)
        elapsed = time.perf_counter() - started
        rates.append(n_all / elapsed)
        if rank == 0:
            print(f"{label} epoch {epoch}/{cfg.train.epochs}  train_loss {float(loss_sum) / n_all:.4f}  "
                  f"{elapsed:.1f}s  {n_all / elapsed:,.0f} rows/s", flush=True)
    return rates


def plain_in_ray_task(arrays, state, cfg) -> list[float]:
    """The plain loop as a Ray task holding every CPU: Ray's own processes run beside it."""
    task = ray.remote(num_cpus=CORES)(plain_torch)
    return ray.get(task.remote(arrays, state, cfg, CORES, label="plain in a Ray task"))


def plain_in_train_worker(arrays, state, cfg, tmp: str) -> list[float]:
    """The plain loop as the training function of a 1-worker TorchTrainer holding every CPU."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    out = Path(tmp, "plain_in_train.json")
    refs = ray.put(arrays)

    def loop(_):
        rates = plain_torch(ray.get(refs), state, cfg, CORES, label="plain in a Ray Train worker")
        out.write_text(json.dumps(rates))

    TorchTrainer(loop, scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": CORES}),
                 run_config=RunConfig(name=f"plain-{uuid.uuid4().hex[:8]}", storage_path=os.path.join(tmp, "runs"))
                 ).fit()
    return json.loads(out.read_text())


def _ddp_rank(rank: int, world: int, port: int, arrays, state, cfg, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    threads = max(1, CORES // world)
    rates = plain_torch(arrays, state, cfg, threads, rank, world, label=f"plain DDP x{world}")
    compute = plain_torch(arrays, state, cfg, threads, rank, world, label=f"plain DDP x{world}, no all-reduce",
                          sync=False)
    # One all-reduce of a buffer the size of the model's gradients, as DDP does once a step.
    model = build_model(cfg.model, state)
    grads = torch.zeros(sum(p.numel() for p in model.parameters()))
    for _ in range(20):
        dist.all_reduce(grads)
    dist.barrier()
    started = time.perf_counter()
    for _ in range(200):
        dist.all_reduce(grads)
    allreduce_ms = (time.perf_counter() - started) / 200 * 1e3
    if rank == 0:
        Path(out).write_text(json.dumps({"rates": rates, "no_sync": compute, "allreduce_ms": allreduce_ms,
                                         "grad_bytes": grads.numel() * 4}))
    dist.destroy_process_group()


def plain_ddp(arrays, state, cfg, tmp: str, world: int = 2) -> dict:
    """Plain PyTorch DDP (gloo) in `world` processes of CORES / world threads, no Ray; then
    the same without the gradient all-reduce, and the all-reduce alone."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = os.path.join(tmp, "plain_ddp.json")
    mp.spawn(_ddp_rank, args=(world, port, arrays, state, cfg, out), nprocs=world)
    return json.loads(Path(out).read_text())


def training_table(runs: dict[int, dict], plain: dict[str, list[float]]) -> list[str]:
    base = steady(plain["plain"])
    rows = [f"| plain PyTorch loop, 1 process, no Ray (**the yardstick**) | 1 | {CORES} | {base:,.0f} | 1.00 | - |"]
    for key, setup in (("task", "plain loop inside a Ray task (Ray's processes idle beside it)"),
                       ("train", "plain loop inside a Ray Train worker (TorchTrainer, 1 worker)")):
        if plain.get(key):
            rows.append(f"| {setup} | 1 | {CORES} | {steady(plain[key]):,.0f} | {steady(plain[key]) / base:.2f} | - |")
    for workers, m in runs.items():
        threads = CORES // workers
        if "error" in m:
            rows.append(f"| app, Ray Train | {workers} | {threads} | failed | - | - |")
            continue
        rates = [r["rows_per_s"] for r in m["history"]]
        wait = steady([r["batch_wait_frac"] for r in m["history"]])
        setup = "**app**, Ray Train" + (" DDP" if workers > 1 else "")
        rows.append(f"| {setup} | {workers} | {threads} | {steady(rates):,.0f} | {steady(rates) / base:.2f} "
                    f"| {wait:.1%} |")
    if plain.get("default_adamw"):
        rate = steady(plain["default_adamw"])
        rows.append(f"| the yardstick with `torch.optim.AdamW` as constructed by default, not fused like the app's "
                    f"| 1 | {CORES} | {rate:,.0f} | {rate / base:.2f} | - |")
    if plain.get("ddp"):
        rows.append(f"| plain PyTorch DDP (gloo), 2 processes, no Ray | 2 | {max(1, CORES // 2)} "
                    f"| {steady(plain['ddp']):,.0f} | {steady(plain['ddp']) / base:.2f} | - |")
    if plain.get("ddp_no_sync"):
        rate = steady(plain["ddp_no_sync"])
        rows.append(f"| the same without the gradient all-reduce (`no_sync`: the compute alone, not a valid "
                    f"training) | 2 | {max(1, CORES // 2)} | {rate:,.0f} | {rate / base:.2f} | - |")
    return ["| setup | workers | torch threads each | rows/s | ratio to plain | waiting for batches |",
            "|---|---:|---:|---:|---:|---:|", *rows]


# ---------------------------------------------------------------- 3. ingest


def ingest_table(data: str, state: PreprocessState, runs: dict[int, dict], total_rows: int) -> list[str]:
    started = time.perf_counter()
    table = pq.read_table(data)
    read_s = time.perf_counter() - started
    started = time.perf_counter()
    transform_batch(table.to_pandas(), state.to_json(), None)
    transform_s = time.perf_counter() - started
    rows = [f"| pyarrow `read_table` of the Parquet files, 1 process | {total_rows:,} | {read_s:.2f} "
            f"| {total_rows / read_s:,.0f} |",
            f"| pyarrow read + to pandas + the app's transform, 1 process | {total_rows:,} "
            f"| {read_s + transform_s:.2f} | {total_rows / (read_s + transform_s):,.0f} |"]
    for workers, m in runs.items():
        if "error" in m:
            continue
        t, attempt = m["timings"], m["attempts"][0]
        rows.append(f"| app, {workers} worker(s): read, split, fit and apply preprocessing (Ray Data, "
                    f"materialized) | {total_rows:,} | {t['data_s']:.2f} | {total_rows / t['data_s']:,.0f} |")
        rows.append(f"| app, {workers} worker(s): shards from the object store into worker memory "
                    f"(train + valid) | {attempt['ingest_rows']:,} | {attempt['ingest_s']:.2f} "
                    f"| {attempt['ingest_rows'] / attempt['ingest_s']:,.0f} |")
    return ["| path | rows | seconds | rows/s |", "|---|---:|---:|---:|", *rows]


# ---------------------------------------------------------------- 4. predict


def predict_app(checkpoint: str, data: str, tmp: str) -> tuple[int, list[float], int]:
    """Rows and seconds of two `run_predict` calls in a row: the first (cold) starts Ray Data's
    worker processes, which import torch and load the model; the second (warm) reuses them,
    as the direct side reuses its loaded, warmed-up model."""
    predictor = Predictor.from_checkpoint(checkpoint)
    source = check_input(predictor, data, "--input", need_label=False)
    times = []
    for _ in range(2):
        output = check_output(os.path.join(tmp, "predictions.parquet"), True)
        started = time.perf_counter()
        rows = run_predict(checkpoint, predictor, source, output, batch_size=PREDICT_BATCH, concurrency=None)
        times.append(time.perf_counter() - started)
    return rows, times, default_concurrency()


def predict_direct(checkpoint: str, data: str) -> tuple[int, float]:
    predictor = Predictor.from_checkpoint(checkpoint)
    df = pq.read_table(data).to_pandas()
    torch.set_num_threads(CORES)
    predictor.predict(df.iloc[:PREDICT_BATCH])  # warm-up, as each actor's first batch
    started = time.perf_counter()
    for i in range(0, len(df), PREDICT_BATCH):
        predictor.predict(df.iloc[i:i + PREDICT_BATCH])
    return len(df), time.perf_counter() - started


def predict_script(checkpoint: str, data: str, tmp: str) -> float:
    """Seconds of a plain script doing `predict`'s whole job in one process: read the Parquet
    files with pyarrow, `Predictor.predict` in batches, write one Parquet file."""
    import pyarrow as pa

    predictor = Predictor.from_checkpoint(checkpoint)
    torch.set_num_threads(CORES)
    predictor.predict(pq.read_table(data).slice(0, PREDICT_BATCH).to_pandas())  # warm-up
    started = time.perf_counter()
    table = pq.read_table(data)
    writer = None
    for i in range(0, table.num_rows, PREDICT_BATCH):
        out = pa.Table.from_pandas(predictor.predict(table.slice(i, PREDICT_BATCH).to_pandas()), preserve_index=False)
        writer = writer or pq.ParquetWriter(os.path.join(tmp, "script.parquet"), out.schema)
        writer.write_table(out)
    writer.close()
    return time.perf_counter() - started


# ---------------------------------------------------------------- report


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--data", help="dataset folder to reuse (generated there if it holds no Parquet)")
    p.add_argument("--out", default="docs/benchmarks.md")
    args = p.parse_args()
    if args.epochs < 2:
        p.error("--epochs must be at least 2 (epoch 1 is dropped as warm-up)")
    load_before = os.getloadavg()[0]
    if load_before > 0.5 * CORES:
        print(f"warning: load average {load_before:.2f}: other work on this machine will skew the numbers",
              file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="app-bench-") as tmp:
        data = args.data or os.path.join(tmp, "data")
        if not list(Path(data).glob("*.parquet")):
            subprocess.run([sys.executable, str(ROOT / "scripts" / "make_data.py"), "--rows", str(args.rows),
                            "--out", data], check=True)
        total_rows = pq.ParquetDataset(data).read(columns=["target"]).num_rows

        print("== startup", flush=True)
        started_up = startup(tmp)

        print("== training with the app", flush=True)
        cluster.quiet_logs()  # before ray.init, so its environment reaches the Ray processes
        # The Ray that `python -m app train` starts for itself.
        ray.init(num_cpus=CORES, logging_level="WARNING", dashboard_host="127.0.0.1",
                 _system_config=cluster.EMBEDDED_RAY_CONFIG)
        runs: dict[int, dict] = {}
        for workers, cpus in SETUPS:
            cfg = make_config(data, os.path.join(tmp, "runs"), workers, cpus, args)
            try:
                runs[workers] = run_training(cfg)
            except Exception as e:  # measure the other setups anyway; the table says what failed
                runs[workers] = {"error": f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"}
                print(f"error: {workers} worker(s) failed: {runs[workers]['error']}", file=sys.stderr)
        done = [m for m in runs.values() if "error" not in m]
        if not done:
            raise SystemExit("benchmark: every app run failed; nothing to compare")
        checkpoint = done[0]["best_checkpoint"]

        print("== batch predict with the app", flush=True)
        app_rows, (cold_s, app_s), tasks = predict_app(checkpoint, data, tmp)
        driver_rss = peak_rss_mb()

        print("== plain counterparts", flush=True)
        with local_copy(checkpoint) as best:
            state = load_preprocess_state(best)
        arrays = training_rows(data, cfg, state)  # cfg: the last run's; data, split, model, train are shared
        if len(arrays["y"]) != done[0]["rows"]["train"]:
            print(f"warning: plain loop has {len(arrays['y'])} training rows, the app {done[0]['rows']['train']}",
                  file=sys.stderr)
        plain = {"task": plain_in_ray_task(arrays, state, cfg), "train": plain_in_train_worker(arrays, state, cfg, tmp)}
        ray.shutdown()
        wait_for_ray_exit()
        plain["plain"] = plain_torch(arrays, state, cfg, CORES)
        plain["default_adamw"] = plain_torch(arrays, state, cfg, CORES, label="plain, default AdamW",
                                             app_optimizer=False)
        ddp = plain_ddp(arrays, state, cfg, tmp)
        plain["ddp"], plain["ddp_no_sync"] = ddp["rates"], ddp["no_sync"]
        direct_rows, direct_s = predict_direct(checkpoint, data)
        script_s = predict_script(checkpoint, data, tmp)
        ingest = ingest_table(data, state, runs, total_rows)

    app_rate, direct_rate = app_rows / app_s, direct_rows / direct_s
    ratios = {w: steady([r["rows_per_s"] for r in m["history"]]) / steady(plain["plain"]) if "error" not in m
              else math.nan
              for w, m in runs.items()}
    worker_rss = {w: max(r["worker_peak_rss_mb"] for r in m["history"]) for w, m in runs.items() if "error" not in m}
    text = "\n".join([
        "# Benchmarks: the app against plain PyTorch and pyarrow on the same machine",
        "",
        f"Command: `{' '.join([Path(sys.executable).name, *sys.argv])}`  ",
        f"Date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}  ",
        f"Machine: {CORES} cores ({cpu_model()}), {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f}"
        f" GiB RAM; load average {load_before:.2f} at start, {os.getloadavg()[0]:.2f} at end  ",
        f"Versions: torch {torch.__version__}, ray {ray.__version__}, Python {platform.python_version()}  ",
        f"Data: {total_rows:,} synthetic rows (scripts/make_data.py: 10 numeric, 3 categorical columns, 3 classes), "
        f"split 80/10/10",
        "",
        "## Startup: a small `train` end to end",
        "",
        "`python -m app train --config configs/quickstart.yaml --set train.epochs=1` (344 rows), in a fresh "
        "process; phases from the run's `metrics.json` `timings`.",
        "",
        *startup_table(started_up),
        "",
        "## Training throughput",
        "",
        f"{len(arrays['y']):,} training rows, MLP [256, 256] with categorical embeddings, batch {args.batch_size} "
        f"(global), fused AdamW (the app's optimizer, on both sides), {args.epochs} epochs. rows/s: median over "
        f"epochs 2..{args.epochs} of training rows / time of the training pass (epoch 1 is warm-up on both "
        "sides); validation and checkpoints untimed on both sides. Waiting for batches: share of the training "
        "pass spent gathering the next batch.",
        "",
        *training_table(runs, plain),
        "",
        "Per-epoch rows/s: plain " + ", ".join(f"{r:,.0f}" for r in plain["plain"]) + "; "
        + "; ".join(f"app {w} worker(s) " + ", ".join(f"{r['rows_per_s']:,.0f}" for r in m["history"])
                    for w, m in runs.items() if "error" not in m),
        *[f"\nFailed: {w} worker(s): `{m['error']}`" for w, m in runs.items() if "error" in m],
        "",
        f"Where DDP's time goes (plain, no Ray): one gloo all-reduce of the model's gradients "
        f"({ddp['grad_bytes'] / 1024:,.0f} KiB) between the 2 processes takes {ddp['allreduce_ms']:.2f} ms on its own; "
        f"the step with it takes {1e3 * cfg.train.batch_size / steady(plain['ddp']):.2f} ms, without it "
        f"{1e3 * cfg.train.batch_size / steady(plain['ddp_no_sync']):.2f} ms, against "
        f"{1e3 * cfg.train.batch_size / steady(plain['plain']):.2f} ms for one process with {CORES} threads.",
        "",
        "## Ingest",
        "",
        *ingest,
        "",
        "The app's data step also cuts the shards and counts the splits. The 1-worker run goes first and "
        "pays for starting Ray Data's worker processes; the 2-worker run finds them warm.",
        "",
        "## Batch predict",
        "",
        "| path | rows | seconds | rows/s | ratio to direct |",
        "|---|---:|---:|---:|---:|",
        f"| direct: `Predictor.predict` on the rows in memory (pandas), batches of {PREDICT_BATCH}, "
        f"1 process, {CORES} torch threads | {direct_rows:,} | {direct_s:.1f} | {direct_rate:,.0f} | 1.00 |",
        f"| plain script, the same job as `predict`: pyarrow read, `Predictor.predict` in batches of "
        f"{PREDICT_BATCH}, write one Parquet file; 1 process, {CORES} torch threads | {direct_rows:,} | "
        f"{script_s:.1f} | {direct_rows / script_s:,.0f} | {direct_s / script_s:.2f} |",
        f"| app: `predict`, Parquet files in, one Parquet file out, at most {tasks} scoring tasks at once | "
        f"{app_rows:,} | {app_s:.1f} | {app_rate:,.0f} | {app_rate / direct_rate:.2f} |",
        f"| the same, first call (worker processes warm from training, may hold the model from its test scoring) | "
        f"{app_rows:,} | {cold_s:.1f} | {app_rows / cold_s:,.0f} | {app_rows / cold_s / direct_rate:.2f} |",
        "",
        "## Peak memory (RSS)",
        "",
        "| process | MiB |",
        "|---|---:|",
        f"| driver (Ray Data pipeline, `run_training` x {len(SETUPS)}, `predict`) | {driver_rss:,.0f} |",
        *[f"| training worker, {w} worker(s) (largest rank) | {mb:,.0f} |" for w, mb in worker_rss.items()],
        "",
    ])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print("\n" + text)
    print(f"written to {out}")
    print(f"train_ratio_1worker={ratios.get(1, math.nan):.2f} train_ratio_2workers={ratios.get(2, math.nan):.2f} "
          f"predict_ratio={app_rate / direct_rate:.2f}")
    return 1 if any("error" in m for m in runs.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
