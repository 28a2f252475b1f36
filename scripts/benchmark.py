#!/usr/bin/env python
"""Every performance figure of the app, each measured beside its plain counterpart on this machine.

    .venv/bin/python scripts/benchmark.py [--rows 1000000] [--epochs 4] [--batch-size 1024]
        [--data DIR] [--out docs/benchmarks.md]

One run measures, in this order:

1. Startup: `python -m app train` in a subprocess on the bundled penguins data for one
   epoch; its wall time, split with the `timings` of its metrics.json.
2. Training throughput on --rows synthetic rows (scripts/make_data.py): `app.train`
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
3. Data step: the app's `prepare` (read, split, fit and apply preprocessing, on Ray tasks
   over pieces of the files), inside each `train` run and alone, three times in a row on
   the warm Ray; against the single-process path, pyarrow reading the same Parquet files
   plus the same transform in pandas (median of three), as rows/s and rows/s per core. And
   the workers pulling their shards into memory.
4. Batch predict: `run_predict` (what `python -m app predict` runs), Parquet files in,
   one Parquet file out, against `Predictor.predict` called directly in this process on
   the same rows already in memory, with every core as torch threads. Warm-up is excluded
   on both sides: the direct side loads the model and scores one batch first; the app's
   figure is its second call in the same Ray session (the first, cold one is shown too).
5. Peak memory (RSS) of the driver and of each training worker.

Prints markdown, writes it to --out, and ends with the line
`train_ratio_1worker=<x.xx> train_ratio_2workers=<x.xx> predict_ratio=<x.xx> data_ratio_per_core=<x.xx>`.

    .venv/bin/python scripts/benchmark.py --only data [--out FILE]

measures 1 (the small run) and 3 only (minutes, not the half hour of the whole), prints
them and ends with `data_ratio_per_core=<x.xx>`.
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

import app  # noqa: E402
from app import cluster  # noqa: E402
from app.config import Config, from_dict  # noqa: E402
from app.data.prepare import prepare, transform_batch  # noqa: E402
from app.data.split import SPLIT_COLUMN, TRAIN, assign_split  # noqa: E402
from app.data.transform import PreprocessState  # noqa: E402
from app.model import build_model  # noqa: E402
from app.predicting import check_output, default_concurrency, run_predict  # noqa: E402
from app.predictor import Predictor, check_input  # noqa: E402
from app.checkpoint import load_preprocess_state, local_copy  # noqa: E402
from app.training.loop import make_optimizer, peak_rss_mb  # noqa: E402
from app.runner import preflight  # noqa: E402

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
              ("resource and storage checks, data read, split and preprocessing (a small input: in the driver)", t["data_s"]),
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


# ---------------------------------------------------------------- 3. data step

DATA_REPEATS = 5  # data step runs, each side: the first warms Ray up, and warm runs vary by 10-30%


def data_step_app(data: str, storage: str, args: argparse.Namespace) -> tuple[list[float], PreprocessState]:
    """Seconds of `prepare` (what `train` runs before it starts the worker group) on the
    connected Ray with the 2-worker setup, DATA_REPEATS times in a row; the state it fits."""
    cfg = make_config(data, storage, *SETUPS[-1], args)
    inputs = preflight(cfg)
    times = []
    for _ in range(DATA_REPEATS):
        started = time.perf_counter()
        prepared = prepare(cfg, inputs)
        times.append(time.perf_counter() - started)
    return times, prepared.state


def data_step_plain(data: str, state: PreprocessState) -> tuple[float, float]:
    """Median seconds of pyarrow's read_table alone, and of read + to pandas + the app's
    transform (the single-process path), in this process."""
    reads, totals = [], []
    for _ in range(DATA_REPEATS):
        started = time.perf_counter()
        table = pq.read_table(data)
        reads.append(time.perf_counter() - started)
        transform_batch(table.to_pandas(), state.to_json(), None)
        totals.append(time.perf_counter() - started)
    return statistics.median(reads), statistics.median(totals)


def data_table(total_rows: int, plain: tuple[float, float], alone: list[float], runs: dict[int, dict]
               ) -> tuple[list[str], float]:
    """The data step's table, and the ratio per core of the warm `prepare` (median of the
    runs after the first) to the single-process path."""
    read_s, single_s = plain
    single = total_rows / single_s

    def row(path: str, rows: int, seconds: float, cores: int) -> str:
        rate = rows / seconds
        return (f"| {path} | {rows:,} | {seconds:.2f} | {rate:,.0f} | {cores} | {rate / cores:,.0f} "
                f"| {rate / cores / single:.2f} |")

    warm = statistics.median(alone[1:])
    rows = [row("pyarrow `read_table` of the Parquet files, 1 process", total_rows, read_s, 1),
            row("**single-process path**: pyarrow read + to pandas + the app's transform, 1 process",
                total_rows, single_s, 1),
            row(f"**app, `prepare`** alone, warm (median of runs 2..{DATA_REPEATS}; runs: "
                + ", ".join(f"{t:.2f}" for t in alone) + " s)", total_rows, warm, CORES)]
    for workers, m in runs.items():
        if "error" not in m:
            rows.append(row(f"app, inside `train` with {workers} worker(s)", total_rows, m["timings"]["data_s"], CORES))
    for workers, m in runs.items():
        if "error" not in m:
            attempt = m["attempts"][0]
            rows.append(f"| app, {workers} worker(s): shards from the object store into worker memory (train + "
                        f"valid) | {attempt['ingest_rows']:,} | {attempt['ingest_s']:.2f} "
                        f"| {attempt['ingest_rows'] / attempt['ingest_s']:,.0f} | - | - | - |")
    return (["| path | rows | seconds | rows/s | cores | rows/s per core | per core, to the single-process path |",
             "|---|---:|---:|---:|---:|---:|---:|", *rows], total_rows / warm / CORES / single)


DATA_NOTE = ("`prepare` reads each file, or each piece of a big one, in a Ray task that splits its rows and "
             "sums up its training rows; the driver merges the summaries and fits; a second task per piece "
             "makes the model-ready blocks. Its time also covers cutting the shards for the workers. Inside "
             "`train` it also covers checking the run folder; the 1-worker run goes first and pays for "
             "starting Ray's worker processes.")


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
    p.add_argument("--only", choices=["data"], help="only the small run and the data step (printed; written "
                   "to --out if given)")
    p.add_argument("--out", help="markdown file to write (default: docs/benchmarks.md, except with --only)")
    args = p.parse_args()
    if args.epochs < 2:
        p.error("--epochs must be at least 2 (epoch 1 is dropped as warm-up)")
    out = args.out or (None if args.only else "docs/benchmarks.md")
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
        m = measure(args, data, tmp) if not args.only else measure_data(args, data, tmp)

    lines, data_ratio = data_table(total_rows, m["single"], m["alone"], m.get("runs", {}))
    data_section = ["## Data step", "", DATA_NOTE, "", *lines, ""]
    header = header_lines(load_before, total_rows)
    startup_section = ["## Startup: a small `train` end to end", "",
                       ("`python -m app train --config configs/quickstart.yaml --set train.epochs=1` (344 rows), in a "
                        "fresh process; phases from the run's `metrics.json` `timings`."), "",
                       *startup_table(m["startup"]), ""]
    if args.only:
        text = "\n".join([*header, *startup_section, *data_section])
        last = f"data_ratio_per_core={data_ratio:.2f}"
    else:
        text = "\n".join([*header, *startup_section, *full_sections(args, m, data_section)])
        last = (f"train_ratio_1worker={m['ratios'].get(1, math.nan):.2f} "
                f"train_ratio_2workers={m['ratios'].get(2, math.nan):.2f} "
                f"predict_ratio={m['predict_ratio']:.2f} data_ratio_per_core={data_ratio:.2f}")
    print("\n" + text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text)
        print(f"written to {out}")
    print(last)
    return 1 if any("error" in r for r in m.get("runs", {}).values()) else 0


def start_ray() -> None:
    """The Ray that `python -m app train` starts for itself."""
    cluster.quiet_logs()  # before ray.init, so its environment reaches the Ray processes
    ray.init(num_cpus=CORES, logging_level="WARNING", dashboard_host="127.0.0.1",
             _system_config=cluster.EMBEDDED_RAY_CONFIG)


def measure_data(args: argparse.Namespace, data: str, tmp: str) -> dict:
    """`--only data`: the small run, then the data step on both sides."""
    print("== startup", flush=True)
    m = {"startup": startup(tmp)}
    start_ray()
    print("== data step with the app", flush=True)
    m["alone"], state = data_step_app(data, os.path.join(tmp, "runs"), args)
    ray.shutdown()
    wait_for_ray_exit()
    m["single"] = data_step_plain(data, state)
    return m


def measure(args: argparse.Namespace, data: str, tmp: str) -> dict:
    """Everything: the small run, training, the data step, predict, and the plain sides."""
    print("== startup", flush=True)
    m: dict = {"startup": startup(tmp)}
    print("== training with the app", flush=True)
    start_ray()
    runs: dict[int, dict] = {}
    for workers, cpus in SETUPS:
        cfg = make_config(data, os.path.join(tmp, "runs"), workers, cpus, args)
        try:
            runs[workers] = app.train(cfg).metrics
        except Exception as e:  # measure the other setups anyway; the table says what failed
            runs[workers] = {"error": f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"}
            print(f"error: {workers} worker(s) failed: {runs[workers]['error']}", file=sys.stderr)
    done = [r for r in runs.values() if "error" not in r]
    if not done:
        raise SystemExit("benchmark: every app run failed; nothing to compare")
    checkpoint = done[0]["best_checkpoint"]

    print("== data step with the app", flush=True)
    m["alone"], _ = data_step_app(data, os.path.join(tmp, "runs"), args)

    print("== batch predict with the app", flush=True)
    app_rows, (cold_s, app_s), tasks = predict_app(checkpoint, data, tmp)
    m["driver_rss"] = peak_rss_mb()

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
    m["single"] = data_step_plain(data, state)
    m.update(runs=runs, plain=plain, ddp=ddp, batch_size=cfg.train.batch_size, training_rows=len(arrays["y"]),
             predict={"direct": (direct_rows, direct_s), "script_s": script_s, "app": (app_rows, app_s, cold_s),
                      "tasks": tasks},
             ratios={w: steady([r["rows_per_s"] for r in run["history"]]) / steady(plain["plain"])
                     if "error" not in run else math.nan for w, run in runs.items()})
    m["predict_ratio"] = (app_rows / app_s) / (direct_rows / direct_s)
    return m


def header_lines(load_before: float, total_rows: int) -> list[str]:
    return [
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
    ]


def full_sections(args: argparse.Namespace, m: dict, data_section: list[str]) -> list[str]:
    runs, plain, ddp, batch = m["runs"], m["plain"], m["ddp"], m["batch_size"]
    (direct_rows, direct_s), script_s = m["predict"]["direct"], m["predict"]["script_s"]
    (app_rows, app_s, cold_s), tasks = m["predict"]["app"], m["predict"]["tasks"]
    app_rate, direct_rate = app_rows / app_s, direct_rows / direct_s
    worker_rss = {w: max(r["worker_peak_rss_mb"] for r in run["history"]) for w, run in runs.items()
                  if "error" not in run}
    return [
        "## Training throughput",
        "",
        f"{m['training_rows']:,} training rows, MLP [256, 256] with categorical embeddings, batch {args.batch_size} "
        f"(global), fused AdamW (the app's optimizer, on both sides), {args.epochs} epochs. rows/s: median over "
        f"epochs 2..{args.epochs} of training rows / time of the training pass (epoch 1 is warm-up on both "
        "sides); validation and checkpoints untimed on both sides. Waiting for batches: share of the training "
        "pass spent gathering the next batch.",
        "",
        *training_table(runs, plain),
        "",
        "Per-epoch rows/s: plain " + ", ".join(f"{r:,.0f}" for r in plain["plain"]) + "; "
        + "; ".join(f"app {w} worker(s) " + ", ".join(f"{r['rows_per_s']:,.0f}" for r in run["history"])
                    for w, run in runs.items() if "error" not in run),
        *[f"\nFailed: {w} worker(s): `{run['error']}`" for w, run in runs.items() if "error" in run],
        "",
        f"Where DDP's time goes (plain, no Ray): one gloo all-reduce of the model's gradients "
        f"({ddp['grad_bytes'] / 1024:,.0f} KiB) between the 2 processes takes {ddp['allreduce_ms']:.2f} ms on its own; "
        f"the step with it takes {1e3 * batch / steady(plain['ddp']):.2f} ms, without it "
        f"{1e3 * batch / steady(plain['ddp_no_sync']):.2f} ms, against "
        f"{1e3 * batch / steady(plain['plain']):.2f} ms for one process with {CORES} threads.",
        "",
        *data_section,
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
        f"| driver (data steps, `app.train` x {len(SETUPS)}, `predict`) | {m['driver_rss']:,.0f} |",
        *[f"| training worker, {w} worker(s) (largest rank) | {mb:,.0f} |" for w, mb in worker_rss.items()],
        "",
    ]


if __name__ == "__main__":
    sys.exit(main())
