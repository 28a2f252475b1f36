"""Connect to Ray (a cluster, or an embedded local instance) and check, before any work
starts, that the run can ever be scheduled and that its storage is writable.

    python -m app train --config c.yaml                   # embedded local Ray
    python -m app train --config c.yaml --address auto    # join a running cluster
    ray job submit -- python -m app train --config c.yaml # RAY_ADDRESS is set for us

Ray's own behaviour for a request that no node can satisfy is to wait forever; here it
is an immediate exit 2 with the numbers.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from app import ray_compat, storage
from app.config import ScalingConfig
from app.errors import UserError

# Settings of the Ray this command starts for itself (not of a cluster it joins): fewer
# background wake-ups beside training, which on a small machine shares the cores with
# Ray's own processes. Measured in docs/benchmarks.md.
EMBEDDED_RAY_CONFIG = {
    # Ray runs its workers at nice 15 so that its daemons win on a shared cluster; here the
    # training worker would then yield to every daemon wake-up. A plain script runs at 0.
    "worker_niceness": 0,
    # Nothing scrapes the metrics of a Ray that lives as long as one command.
    "enable_metrics_collection": False,
    # Task events feed the dashboard's task table: every 5 s instead of every second.
    "task_events_report_interval_ms": 5000,
}

# Ray Train's settings under an embedded Ray (the environment, if it sets them, wins).
EMBEDDED_TRAIN_ENV = {
    # A report waits until the controller takes the previous one, which it does once per
    # health check: at 0.25 s an epoch of penguins (0.04 s of steps) took 0.26 s, at 0.1 s
    # 0.105 s, at 0.05 s 0.06 s, with the steps as fast. A few workers on one node make
    # polling them this often cheap.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.05",
    # The preemption watcher (one more actor process, ~2 s of CPU to start) restarts
    # training when the autoscaler drains a node; nothing drains the node of a Ray that
    # lives and dies with this process.
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    # Ray Train's metrics go to the metrics agent, which this Ray does not run (above).
    "RAY_TRAIN_METRICS_ENABLED": "0",
}

# Every environment variable that `connect` and `quiet_logs` may set in this process (for
# the Ray processes it starts, which inherit them). The Python API puts them back as they
# were after each call (app/api.py), so a caller's environment is left as it was.
PROCESS_ENV = (*EMBEDDED_TRAIN_ENV, "RAY_TRAIN_ENABLE_PRINT_PATCH", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S",
               "RAY_SERVE_LOG_TO_STDERR")

_started_without_dashboard = False  # set by `connect`: see `has_state_api`


def connect(address: str | None = None, *, dashboard: bool = True) -> float:
    """Join `address` (or $RAY_ADDRESS); without either, start an embedded local Ray, with
    Ray's dashboard on 127.0.0.1 if `dashboard`. Returns the seconds it took (0 when already
    connected).

    What a call changes in this process, besides `quiet_logs` (always called, see there):
    - Already connected (the caller's own `ray.init()`): nothing else; that Ray is used as is.
    - Otherwise this process is connected to Ray (`ray.init`, whose `logging_level="WARNING"`
      sets the `ray` logger's level; the SIGTERM handler that ray.init replaces is put back:
      `callers_sigterm`) and stays connected after the call: the Ray it started lives until
      `ray.shutdown()` or the exit hook Ray registers on import.
    - Starting an embedded Ray (no address, no `ray start` of this machine) also sets, unless
      the environment has them, the `EMBEDDED_TRAIN_ENV` variables in `os.environ` before Ray
      starts, since Ray's processes take their settings from the environment they inherit;
      and turns the logger `ray_compat.AUTH_TOKEN_LOGGER` down to ERROR (Ray's notice that a
      new local Ray has token authentication on). A Ray joined at an address gets neither:
      its settings are its own.
    - The module's record of whether the Ray it started has a dashboard (`has_state_api`).
    Every variable either function may set is listed in `PROCESS_ENV`."""
    global _started_without_dashboard
    import time

    import ray

    if ray.is_initialized():
        quiet_logs()
        return 0.0
    started = time.perf_counter()
    _started_without_dashboard = False
    address = address or os.environ.get("RAY_ADDRESS")
    # A `ray start` on this machine is joined, as ray.init() does; else Ray starts here.
    embedded = not address and not local_cluster_running()
    if embedded:
        for name, value in EMBEDDED_TRAIN_ENV.items():  # before Ray starts: its processes inherit them
            os.environ.setdefault(name, value)
    quiet_logs()
    with callers_sigterm():
        if address:
            try:
                ray.init(address=address, logging_level="WARNING")
            except ConnectionError as e:
                raise UserError(f"--address {address}: cannot connect to a Ray cluster there ({e})") from None
        elif not embedded:
            ray.init(logging_level="WARNING")
        else:
            import logging

            # Its notice that a new local Ray turns token authentication on by default.
            logging.getLogger(ray_compat.AUTH_TOKEN_LOGGER).setLevel(logging.ERROR)
            ray.init(logging_level="WARNING", include_dashboard=dashboard, dashboard_host="127.0.0.1",
                     _system_config=EMBEDDED_RAY_CONFIG)
            _started_without_dashboard = not dashboard
    return time.perf_counter() - started


@contextmanager
def callers_sigterm() -> Iterator[None]:
    """Around `ray.init`, which (in the main thread) replaces the SIGTERM handler with its
    own, which exits the process after printing a crash report: the caller's handler is put
    back (the CLI's stops the command as Ctrl-C does; a notebook's is its own). The Ray that
    this process started stops with it either way: Ray's processes share the fate of the
    driver that started them."""
    import signal
    import threading

    main = threading.current_thread() is threading.main_thread()
    saved = signal.getsignal(signal.SIGTERM) if main else None
    try:
        yield
    finally:
        if saved is not None:
            signal.signal(signal.SIGTERM, saved)


def has_state_api() -> bool:
    """Whether Ray's state API answers here: not under a Ray this process started without its
    dashboard, which serves that API. A Ray the caller started (`ray.init()` in a notebook,
    perhaps with `include_dashboard=False`) is asked once: without the state API, Ray
    Train's placement-group cleaner would log a failed query every second of the run."""
    if _started_without_dashboard:
        return False
    import ray

    address = ray.get_runtime_context().gcs_address
    if address not in _state_api_answers:
        from ray.util.state import list_nodes

        try:
            # The state API of a Ray without a dashboard may be looked for at the default
            # port, where another Ray's may answer: it must know this cluster's nodes.
            answered = list_nodes(address=address, limit=1, timeout=5, raise_on_missing_output=False)
            ours = {node["NodeID"] for node in ray.nodes()}
            _state_api_answers[address] = bool(answered) and answered[0].node_id in ours
        except Exception:  # noqa: BLE001 - any failure means no usable state API
            _state_api_answers[address] = False
    return _state_api_answers[address]


_state_api_answers: dict[str, bool] = {}  # per cluster (GCS address): whether its state API answered


def local_cluster_running() -> bool:
    """Whether a `ray start` cluster of this machine answers. Ray's record of the last one
    is deleted if that cluster is gone.

    `ray start` (and a test Cluster) write its address to <ray temp dir>/ray_current_cluster;
    a cluster killed without `ray stop` leaves it behind. ray.init() would then wait on the
    dead address for minutes, and Ray Train's state queries inside the cluster would follow
    it too.
    """
    import socket

    address = ray_compat.local_cluster_address()
    if not address:
        return False
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
        return True
    except (OSError, ValueError):
        try:
            os.remove(ray_compat.ray_address_file())
        except OSError:
            pass
        return False


def quiet_logs() -> None:
    """Our own one line per step and per epoch instead of Ray's INFO chatter.

    Called on the driver, before Ray starts, and in every training worker. What it changes in
    the calling process (each time; idempotent):
    - `os.environ`, unless already set there, for the Ray processes started from here, which
      inherit it: RAY_TRAIN_ENABLE_PRINT_PATCH=0 (a worker's line printed once, not twice),
      RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=0.25 (a report waits less for the controller's poll),
      RAY_SERVE_LOG_TO_STDERR=0 (Serve's processes log to their files only).
    - Logger levels: `ray.data` to WARNING, `ray_compat.DATA_PROGRESS_LOGGER` to ERROR, and
      Ray Train's report logger (`ray_compat.train_report_logger()`) to WARNING.
    - `ray.data.DataContext.get_current().print_on_execution_start = False`: this process's
      current Ray Data context, so no Dataset executed here after the call announces its
      execution plan.
    """
    import logging

    from ray.data import DataContext

    # Ray Train would echo every print of a worker twice (log record and stdout).
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    # A report blocks until the controller polls (2 s by default): short epochs would
    # spend most of their time waiting.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    # ... and its one-time notice that a dataset runs without progress bars (the shards).
    logging.getLogger(ray_compat.DATA_PROGRESS_LOGGER).setLevel(logging.ERROR)
    # Ray Train logs each report (all metrics) at INFO under a logger named after its file.
    logging.getLogger(ray_compat.train_report_logger()).setLevel(logging.WARNING)
    DataContext.get_current().print_on_execution_start = False
    # Serve's controller, proxy and replicas log to their files under the session's
    # logs/serve/ only, not also to this terminal (one access-log line per request). An
    # embedded Ray's processes inherit this; `serve` hands it to replicas anywhere.
    os.environ.setdefault("RAY_SERVE_LOG_TO_STDERR", "0")


def worker_bundle(scaling: ScalingConfig) -> dict[str, float]:
    bundle = {"CPU": scaling.cpus_per_worker, **scaling.resources_per_worker}
    if scaling.use_gpu:
        bundle["GPU"] = 1.0
    if scaling.memory_per_worker_mb is not None:
        bundle["memory"] = scaling.memory_per_worker_mb * 2**20  # Ray's `memory` resource is in bytes
    return bundle


def check_resources(scaling: ScalingConfig) -> None:
    """Refuse a worker group that the cluster as it stands can never host.

    Data is read and preprocessed before the workers start and is handed to them
    already materialized, so Ray Data needs no CPU of its own while they train.
    """
    bundle = worker_bundle(scaling)
    fits, total, nodes = _fits_per_node(bundle)
    capacity = worker_capacity(fits, scaling.placement_strategy)
    wanted = scaling.min_workers
    if capacity >= wanted:
        return
    have = ", ".join(_amount(r, total[r]) for r in bundle)
    per = " and ".join(_amount(k, v) for k, v in bundle.items())
    raise UserError(
        f"scaling.num_workers: {wanted} worker(s) with {per} each can never be scheduled: the cluster "
        f"has {have} on {nodes} node(s), room for {capacity} such worker(s) "
        f"(placement {scaling.placement_strategy}); lower scaling.num_workers or "
        f"scaling.cpus_per_worker, or add nodes"
    )


def _amount(resource: str, value: float) -> str:
    return f"{value / 2**20:,.0f} MiB memory" if resource == "memory" else f"{value:g} {resource}"


def room_for(bundle: dict[str, float]) -> tuple[int, dict[str, float], int]:
    """How many actors of `bundle` the cluster's live nodes can host at once, spread as
    needed: (that number, the cluster's total of each resource, the number of nodes)."""
    fits, total, nodes = _fits_per_node(bundle)
    return sum(fits), total, nodes


def worker_groups(scaling: ScalingConfig, size: int) -> tuple[int, dict[str, float], int]:
    """How many groups of `size` workers of `scaling` (a sweep's trials, each its own worker
    group) the cluster's live nodes host side by side, placed per `scaling.placement_strategy`:
    (that number, the cluster's total of each resource, the number of nodes)."""
    fits, total, nodes = _fits_per_node(worker_bundle(scaling))
    return groups_that_fit(fits, size, scaling.placement_strategy), total, nodes


def _fits_per_node(bundle: dict[str, float]) -> tuple[list[int], dict[str, float], int]:
    """(how many `bundle`s each live node holds, the cluster's total of each resource, nodes)."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    return fits_per_node(nodes, bundle), {r: sum(node.get(r, 0) for node in nodes) for r in bundle}, len(nodes)


def fits_per_node(nodes: list[dict[str, float]], bundle: dict[str, float]) -> list[int]:
    """How many `bundle`s each node (its resources, as `ray.nodes()` lists them) holds."""
    # Rounded: 1.0 // 0.1 is 9.0 in floating point; Ray counts resources in 1/10000 units.
    return [min(int(round(node.get(r, 0) / need, 4) // 1) for r, need in bundle.items()) for node in nodes]


def worker_capacity(fits: list[int], strategy: str) -> int:
    """The most workers of one group that nodes holding `fits` workers each can host, placed
    per `strategy`: STRICT_PACK all on one node, STRICT_SPREAD each on a node of its own."""
    if strategy == "STRICT_PACK":
        return max(fits, default=0)
    if strategy == "STRICT_SPREAD":
        return sum(1 for f in fits if f > 0)
    return sum(fits)


def groups_that_fit(fits: list[int], size: int, strategy: str) -> int:
    """How many groups of `size` workers nodes holding `fits` workers each host at once, each
    group placed per `strategy` (one group: exactly when `worker_capacity` >= `size`)."""
    if strategy == "STRICT_PACK":
        return sum(f // size for f in fits)
    if strategy == "STRICT_SPREAD":  # g groups fit when each node takes at most one worker of each
        return max((g for g in range(sum(fits) // size + 1) if sum(min(f, g) for f in fits) >= g * size), default=0)
    return sum(fits) // size


def check_shared_storage(location: str) -> None:
    """On a cluster of several nodes, a local `run.storage` must be one filesystem that every
    node sees (an NFS mount, say): workers on other nodes write checkpoints there, and a
    restarted run reads them back."""
    blind, nodes = blind_nodes(location)
    if blind:
        raise UserError(
            f"run.storage: {location} is local to this machine: {', '.join(blind)} cannot see it; on a "
            f"cluster of {nodes} nodes it must be storage every node reaches (s3://, gs://, or a "
            f"shared mount such as NFS)")


def blind_nodes(location: str) -> tuple[list[str], int]:
    """(the live nodes that cannot see the local folder `location`, how many nodes are live):
    a probe file written here is looked for on every node. None blind for a URI, or on one node."""
    if storage.is_uri(location):
        return [], 1
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) < 2:
        return [], len(nodes)
    probe = os.path.join(location, f".shared-probe-{uuid.uuid4().hex}")
    with open(probe, "w") as f:
        f.write("ok")
    try:
        sees = ray.remote(num_cpus=0)(os.path.exists)
        pending = {f"{n['NodeManagerAddress']} (node {n['NodeID'][:8]})": sees.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(probe)
            for n in nodes}
        blind = []
        for name, ref in pending.items():
            try:
                if not ray.get(ref, timeout=60):
                    blind.append(name)
            except ray.exceptions.GetTimeoutError:
                blind.append(f"{name}, which did not answer")
    finally:
        os.remove(probe)
    return blind, len(nodes)
