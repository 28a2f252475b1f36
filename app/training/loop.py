"""The per-worker training loop: plain PyTorch plus `ray.train` calls.

    python -m app train --config configs/quickstart.yaml    # runs this on every worker

Each worker (a DDP rank) either pulls its shard of the preprocessed training and
validation splits into memory once, or streams it from Ray's object store every epoch
(`data.cache`), then per epoch: trains on its shard in a (seed, epoch, rank) order,
validates, and reports metrics with a checkpoint. All ranks take the same number of steps
and call `report` the same number of times; only rank 0 writes the checkpoint.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch import nn

from app import logs, ray_compat, runs, storage
from app import progress as bars
from app.cluster import quiet_logs
from app.config import Config
from app.data import shards
from app.data.shards import COLUMNS, HeldShards, ShardHandle
from app.data.transform import PreprocessState
from app.metrics import MetricSums
from app.model import build_model, member_loss
from app.redact import redact_tree
from app.tracking import EpochLogger
from app import checkpoint as ckpt
from app.training import faults

log = logging.getLogger(__name__)  # rank 0's lines reach the driver's terminal as Ray forwards its stdout

EVAL_BATCH = 8192  # rows per forward pass when scoring
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # x_num, x_cat, y


@dataclass
class Shard:
    """This worker's rows of one split, held in memory as model-ready tensors."""

    x_num: torch.Tensor
    x_cat: torch.Tensor
    y: torch.Tensor

    @classmethod
    def of(cls, arrays: dict[str, np.ndarray], device: torch.device) -> Shard:
        return cls(*(torch.from_numpy(arrays[c]).to(device) for c in COLUMNS))

    def __len__(self) -> int:
        return len(self.y)

    @property
    def device(self) -> torch.device:
        return self.y.device

    def epoch(self, steps: int, *, seed: int, epoch: int, rank: int) -> Iterator[Batch]:
        """`steps` local batches, gathered by index in a (seed, epoch, rank) order."""
        for idx in epoch_batches(len(self), steps, seed, epoch, rank):
            idx = idx.to(self.device)
            yield self.x_num[idx], self.x_cat[idx], self.y[idx]

    def scoring_batches(self) -> Iterator[Batch]:
        yield self.x_num, self.x_cat, self.y


@dataclass
class StreamedShard:
    """This worker's rows of one split, left in Ray's object store and read anew each epoch."""

    handle: ShardHandle
    device: torch.device
    buffer_rows: int  # of the shuffle buffer

    def __len__(self) -> int:
        return self.handle.rows

    def epoch(self, steps: int, *, seed: int, epoch: int, rank: int) -> Iterator[Batch]:
        """`steps` local batches of the sizes memory mode would take, through a shuffle buffer
        seeded from (seed, epoch, rank)."""
        sizes = shards.batch_sizes(len(self), steps)
        seed = derive_seed(seed, epoch, rank)
        for batch in shards.shuffled_batches(self.handle.blocks(), sizes, self.buffer_rows, seed):
            yield to_tensors(batch, self.device)

    def scoring_batches(self) -> Iterator[Batch]:
        for batch in self.handle.batches(EVAL_BATCH):
            yield to_tensors(batch, self.device)


@dataclass(frozen=True)
class Worker:
    """What every step of one training worker needs to know: the run's config and fitted
    preprocessing, its rank, where the run folder is, and the fault to inject (tests)."""

    cfg: Config
    state: PreprocessState
    rank: int
    filesystem: storage.FileSystem
    run_path: str  # the run folder, on `filesystem`
    fault: faults.Fault | None = None

    @classmethod
    def from_context(cls, loop_config: dict[str, Any]) -> Worker:
        filesystem, run_path = ray_compat.run_storage()
        return cls(cfg=Config.model_validate(loop_config["config"]),
                   state=PreprocessState.from_json(loop_config["preprocess"]),
                   rank=ray.train.get_context().get_world_rank(), filesystem=filesystem,
                   run_path=run_path, fault=faults.parse(loop_config.get("fault")))

    def die(self, *, epoch: int, step: int = 0, at: str = "step") -> None:
        """Kill this process here if the injected fault says so."""
        faults.maybe_die(self.fault, self.filesystem, self.run_path, rank=self.rank, epoch=epoch, step=step, at=at)


@dataclass
class Progress:
    """What the loop needs to carry across a restart besides weights and optimizer."""

    epoch: int = 0  # last completed epoch
    best_metric: float | None = None
    best_epoch: int = 0
    epochs_without_improvement: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    # One record per start of the worker group (the first, and each restart after a
    # failure): when it started, how long pulling the shards took, when training began.
    attempts: list[dict[str, Any]] = field(default_factory=list)

    def update(self, record: dict[str, Any], metric: str, mode: str) -> None:
        value, best = record[metric], self.best_metric
        improved = not math.isnan(value) and (best is None or (value < best if mode == "min" else value > best))
        if improved:
            self.best_metric, self.best_epoch = value, record["epoch"]
            self.epochs_without_improvement = 0
        else:
            self.epochs_without_improvement += 1
        self.epoch = record["epoch"]
        self.history.append(record)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    quiet_logs()
    if loop_config.get("trial"):  # a sweep's trials print side by side: each line says whose it is
        logs.prefix_lines(f"[{loop_config['trial']}] ")
    worker = Worker.from_context(loop_config)
    cfg, state, rank = worker.cfg, worker.state, worker.rank
    ctx = ray.train.get_context()
    torch.set_num_threads(max(1, int(cfg.scaling.cpus_per_worker)))
    device = ray.train.torch.get_device()

    attempt_started = time.time()
    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
    model = ray.train.torch.prepare_model(build_model(cfg.model, state))
    optimizer, scheduler = make_optimizer(model, cfg)
    memory = PrivateMemory()  # from here on, growth is what the data costs (and optimizer state)
    ingest_started = time.time()
    train, valid, cache = load_shards(cfg, device, loop_config.get("held"))
    ingest_s = max(gather(time.time() - ingest_started))
    if rank == 0:
        log.info(f"data cache: {cache['data_cache']} ({cache['data_cache_reason']})")
    # Ray Train's latest checkpoint of this run; else one the driver chose (its record of
    # the run's checkpoints was cut short); else none.
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None and loop_config.get("resume_from"):
        filesystem, path = storage.filesystem(loop_config["resume_from"])
        checkpoint = ray.train.Checkpoint(path, filesystem=filesystem)
    progress = restore(checkpoint, model, optimizer, scheduler)
    loss_fn = nn.CrossEntropyLoss() if state.task == "classification" else nn.MSELoss()
    steps, total_rows = plan_epoch(len(train), cfg.train.batch_size)

    metric, mode = cfg.run.checkpoint.metric, cfg.run.checkpoint.mode
    patience = cfg.train.early_stopping_patience
    if patience is not None and progress.epochs_without_improvement >= patience:
        memory.stop()
        return  # restored from the checkpoint where early stopping had already fired
    tracker = EpochLogger(loop_config.get("tracking"), worker.filesystem, worker.run_path) if rank == 0 else None
    clock = EpochClock(progress.epoch, cfg.train.epochs)
    attempt = {"started": attempt_started, "ingest_s": ingest_s, "ingest_rows": total_rows + sum(gather(len(valid))),
               "ready": time.time(), "world_size": ctx.get_world_size(), "from_epoch": progress.epoch, **cache}
    progress.attempts.append(attempt)
    # where the driver's output is a terminal: rank 0's steps, drawn by the driver (app/progress.py)
    bar = bars.worker_bar(rank == 0 and bool(loop_config.get("progress_bar")))
    for epoch in range(progress.epoch + 1, cfg.train.epochs + 1):
        seed_everything(cfg.train.seed, epoch, rank)
        bar.epoch(f"epoch {epoch}/{cfg.train.epochs}", steps)
        started = time.perf_counter()
        train_loss, batch_wait = train_epoch(worker, model, train, optimizer, loss_fn, steps=steps, epoch=epoch,
                                             bar=bar)
        epoch_time = time.perf_counter() - started
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        scores = evaluate(unwrap(model), valid, state)
        usage = gather((peak_rss_mb(), memory.growth_mb()))
        # The most any rank's private memory grew since before it read its shard (data.cache).
        attempt["worker_private_growth_mb"] = max((g for _, g in usage if g is not None), default=None)

        record = {"epoch": epoch, "time": time.time(), "train_loss": train_loss,
                  "valid_loss": scores.pop("loss"), **scores, "lr": lr,
                  "epoch_time_s": epoch_time, "rows_per_s": total_rows / epoch_time,
                  "batch_wait_frac": batch_wait / epoch_time, "worker_peak_rss_mb": max(p for p, _ in usage)}
        progress.update(record, metric, mode)
        stop = patience is not None and progress.epochs_without_improvement >= patience
        save_and_report(worker, record, progress, model=model, optimizer=optimizer, scheduler=scheduler,
                        param_fingerprints=gather(fingerprint(unwrap(model))))
        if rank == 0:
            tracker.log(record)
            log.info(format_epoch(record, cfg.train.epochs, metric) + clock.tick(epoch))
        if stop:
            if rank == 0:
                best = "none" if progress.best_metric is None else f"{progress.best_metric:.4g}"
                log.info(f"early stop: no {metric} improvement for {progress.epochs_without_improvement} "
                         f"epochs (best {best} at epoch {progress.best_epoch})")
            break
    bar.close()
    memory.stop()
    if tracker is not None:
        tracker.close()


# ---------------------------------------------------------------- data


def shard_handle(name: str, held: HeldShards | None = None) -> ShardHandle:
    """This worker's part of a split: from `held` (small inputs), else from the trainer's datasets."""
    if held is not None:
        ctx = ray.train.get_context()
        handle = held.handle(name, ctx.get_world_rank(), ctx.get_world_size())
    else:
        handle = ray.train.get_dataset_shard(name)
    if handle.rows == 0:
        raise RuntimeError(f"worker got no rows of the {name} split")
    return handle


def load_shard(handle: ShardHandle, device: torch.device) -> Shard:
    """Pull this worker's shard into memory once; epochs then reshuffle it locally."""
    return Shard.of(shards.read_all(handle), device)


def load_shards(cfg: Config, device: torch.device, held: HeldShards | None = None
                ) -> tuple[Shard | StreamedShard, Shard | StreamedShard, dict[str, Any]]:
    """This worker's train and valid shards, held in memory or streamed (`data.cache`), and
    that choice for the attempt's record: the mode, why, and the shard's size. Every rank
    chooses alike: the rank whose shard weighs most against its memory budget decides."""
    handles = [shard_handle(name, held) for name in ("train", "valid")]
    budget, budget_from = shards.memory_budget(cfg.scaling)
    mine = sum(h.size_bytes for h in handles)
    _, shard_bytes, worst_budget, worst_from = max(gather((mine / max(budget, 1.0), mine, budget, budget_from)))
    cache, why = shards.choose_cache(cfg.data.cache, shard_bytes=shard_bytes, budget_bytes=worst_budget,
                                     budget_from=worst_from)
    record = {"data_cache": cache, "data_cache_reason": why, "data_shard_mb": shard_bytes / shards.MB,
              "data_shards": "held" if held is not None else "ray_data"}
    if cache == "memory":
        return load_shard(handles[0], device), load_shard(handles[1], device), record
    rows = shards.buffer_rows(handles[0], budget)
    return StreamedShard(handles[0], device, rows), StreamedShard(handles[1], device, rows), record


def to_tensors(batch: dict[str, np.ndarray], device: torch.device) -> Batch:
    # Blocks read from the object store are read-only views: torch wants writable memory.
    return tuple(torch.from_numpy(np.require(batch[c], requirements="W")).to(device) for c in COLUMNS)


def plan_epoch(local_rows: int, global_batch: int) -> tuple[int, int]:
    """(optimizer steps per epoch, training rows over all ranks); the same on every rank.

    DDP needs every rank to take the same number of steps. Shard sizes differ by at most
    one row, so each rank splits its shard into `steps` near-equal local batches of about
    global_batch / world_size rows.
    """
    sizes = gather(local_rows)
    return max(1, min(math.ceil(sum(sizes) / global_batch), min(sizes))), sum(sizes)


def epoch_batches(n: int, steps: int, seed: int, epoch: int, rank: int) -> list[torch.Tensor]:
    """Row indices of each local batch: a permutation derived from (seed, epoch, rank)."""
    g = torch.Generator().manual_seed(derive_seed(seed, epoch, rank))
    return list(torch.tensor_split(torch.randperm(n, generator=g), steps))


# ---------------------------------------------------------------- steps


def train_epoch(worker: Worker, model: nn.Module, data: Shard | StreamedShard, optimizer: torch.optim.Optimizer,
                loss_fn: nn.Module, *, steps: int, epoch: int, bar: Any = bars.NO_BAR) -> tuple[float, float]:
    """One pass over the local shard: (mean training loss over all ranks, seconds this
    rank spent getting batches ready, i.e. not in the model, loss or optimizer). `bar`
    counts the steps (app/progress.py; it sends its state at most twice a second)."""
    cfg = worker.cfg
    model.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=data.device)
    rows, wait = 0, 0.0
    batches = data.epoch(steps, seed=cfg.train.seed, epoch=epoch, rank=worker.rank)
    for step in range(steps):
        worker.die(epoch=epoch, step=step)
        t0 = time.perf_counter()
        x_num, x_cat, y = next(batches)
        wait += time.perf_counter() - t0
        out = model(x_num, x_cat)
        loss = member_loss(loss_fn, out, y, unwrap(model).members)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.train.grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        optimizer.step()
        loss_sum += loss.detach().double() * len(y)
        rows += len(y)
        bar.update()
    totals = torch.stack([loss_sum, torch.tensor(float(rows), dtype=torch.float64, device=loss_sum.device)])
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(totals)
    return float(totals[0] / totals[1]), wait


@torch.no_grad()
def predict_outputs(model: nn.Module, x_num: torch.Tensor, x_cat: torch.Tensor) -> torch.Tensor:
    model.eval()
    chunks = [model(x_num[i:i + EVAL_BATCH], x_cat[i:i + EVAL_BATCH]) for i in range(0, len(x_num), EVAL_BATCH)]
    return torch.cat(chunks) if chunks else torch.empty(0)


def evaluate(model: nn.Module, data: Shard | StreamedShard, state: PreprocessState) -> dict[str, float]:
    """Metrics over the whole validation split: each rank scores its shard batch by batch
    into fixed-size metric sums, and the ranks exchange only those, never the scored rows."""
    local = None
    for x_num, x_cat, y in data.scoring_batches():
        part = MetricSums.of(predict_outputs(model, x_num, x_cat).cpu().numpy(), y.cpu().numpy(), state)
        local = part if local is None else local.merge(part)
    total = MetricSums.empty(state)
    for part in gather(local):
        total = total.merge(part)
    return total.metrics(state)


# ---------------------------------------------------------------- state


def make_optimizer(model: nn.Module, cfg: Config) -> tuple[torch.optim.Optimizer, Any]:
    t = cfg.train
    # fused: one kernel over all parameters instead of a dozen small ops per tensor. For an
    # MLP of ~80k parameters that is 0.3 ms instead of 0.9 ms per step on 2 CPU cores, about
    # a sixth of the whole step; DDP ranks each pay it (docs/benchmarks.md).
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay, fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(t.lr_schedule, t.warmup_epochs, t.epochs))
    return optimizer, scheduler


def lr_factor(schedule: str, warmup: int, epochs: int):
    """Multiplier of the peak lr for 0-based epoch e (stepped once per epoch)."""

    def factor(e: int) -> float:
        if e < warmup:
            return (e + 1) / (warmup + 1)
        if schedule == "constant":
            return 1.0
        span = max(1, epochs - warmup)
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, (e - warmup) / span)))

    return factor


def restore(checkpoint: ray.train.Checkpoint | None, model: nn.Module, optimizer: torch.optim.Optimizer,
            scheduler: Any) -> Progress:
    """Continue from the latest checkpoint if Ray hands us one (after a failure or a rerun)."""
    if checkpoint is None:
        return Progress()
    with checkpoint.as_directory() as d:
        ckpt.verify(d)
        unwrap(model).load_state_dict(ckpt.load_model_weights(d))
        opt_state = ckpt.load_optimizer_state(d)
        optimizer.load_state_dict(opt_state["optimizer"])
        scheduler.load_state_dict(opt_state["scheduler"])
        saved = ckpt.load_train_state(d)["progress"]
    return Progress(**saved)


def save_and_report(worker: Worker, record: dict[str, Any], progress: Progress, *, model: nn.Module, optimizer,
                    scheduler, param_fingerprints: list[str]) -> None:
    """Rank 0 writes a checkpoint to a local temp folder and uploads it; every rank reports."""
    def write(directory: str, train_state: dict[str, Any], after_first_file) -> None:
        ckpt.write_checkpoint(directory, model=unwrap(model), optimizer=optimizer, scheduler=scheduler,
                              state=worker.state, model_cfg=worker.cfg.model, train_state=train_state,
                              after_first_file=after_first_file)

    report_checkpoint(worker, record, asdict(progress), param_fingerprints, write)


def report_checkpoint(worker: Worker, record: dict[str, Any], progress: dict[str, Any], fingerprints: list[str],
                      write) -> None:
    """What every kind's loop does after an epoch (or a chunk of boosting rounds): rank 0
    writes its checkpoint with `write(folder, train_state, after_first_file)` into a local
    temp folder, which Ray Train's upload hook copies to the run folder manifest-last;
    every rank reports `record`. The test faults fire after the first file of each."""
    import tempfile

    epoch = record["epoch"]
    with tempfile.TemporaryDirectory(prefix="app-ckpt-") as tmp:
        checkpoint = None
        if worker.rank == 0:
            train_state = {"epoch": epoch, "progress": progress, "config": redact_tree(worker.cfg.to_dict()),
                           "world_size": len(fingerprints), "param_fingerprints": fingerprints}
            write(tmp, train_state, functools.partial(worker.die, epoch=epoch, at="save"))
            checkpoint = ray.train.Checkpoint.from_directory(tmp)

        def upload(local: ray.train.Checkpoint, dir_name: str) -> ray.train.Checkpoint:
            destination = f"{worker.run_path}/{dir_name}"
            ckpt.upload(local.path, worker.filesystem, destination,
                        after_first_file=functools.partial(worker.die, epoch=epoch, at="upload"))
            return ray.train.Checkpoint(destination, filesystem=worker.filesystem)

        ray.train.report(dict(record), checkpoint=checkpoint, checkpoint_dir_name=runs.checkpoint_name(epoch),
                         checkpoint_upload_fn=upload)


# ---------------------------------------------------------------- helpers


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def gather(obj: Any) -> list[Any]:
    """The object from every rank, in rank order (just [obj] without a process group)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def fingerprint(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def private_bytes() -> int | None:
    """Resident memory of this process less its shared pages (/proc/self/statm): what it
    holds itself, without the object-store blocks it maps while reading. None off Linux."""
    try:
        with open("/proc/self/statm") as f:
            _, resident, shared, *_ = f.read().split()
    except OSError:
        return None
    return (int(resident) - int(shared)) * os.sysconf("SC_PAGE_SIZE")


class PrivateMemory:
    """The peak of `private_bytes` since this was made, sampled every 10 ms on a thread:
    whatever the loop is doing, memory it holds for longer (a shard pulled into memory, a
    shuffle buffer) shows."""

    def __init__(self):
        self.baseline = self.peak = private_bytes()
        self._stop = threading.Event()
        if self.baseline is not None:
            threading.Thread(target=self._sample, name="private-memory", daemon=True).start()

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, private_bytes())

    def growth_mb(self) -> float | None:
        return None if self.baseline is None else (self.peak - self.baseline) / 2**20

    def stop(self) -> None:
        self._stop.set()


def derive_seed(*parts: int) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") & (2**63 - 1)


def seed_everything(seed: int, epoch: int, rank: int) -> None:
    """Reseed every RNG from (seed, epoch, rank): a resumed epoch replays exactly."""
    s = derive_seed(seed, epoch, rank, 1)
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)


class EpochClock:
    """Elapsed time of this attempt, and the ETA of the remaining epochs at its pace so far."""

    def __init__(self, done: int, epochs: int):
        self.started, self.first, self.epochs = time.perf_counter(), done, epochs

    def tick(self, epoch: int) -> str:
        elapsed = time.perf_counter() - self.started
        eta = elapsed / max(1, epoch - self.first) * (self.epochs - epoch)
        return f"  elapsed {_clock(elapsed)}  eta {_clock(eta)}"


def _clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


def format_epoch(record: dict[str, Any], epochs: int, metric: str) -> str:
    shown = ["train_loss", "valid_loss"] + ([metric] if metric not in ("train_loss", "valid_loss") else [])
    values = "  ".join(f"{k} {record[k]:.4f}" for k in shown)
    return (f"epoch {record['epoch']}/{epochs}  {values}  "
            f"{record['epoch_time_s']:.1f}s  {record['rows_per_s']:,.0f} rows/s")
