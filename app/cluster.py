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

from app import storage
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

_started_without_dashboard = False  # set by `connect`: see `has_state_api`


def connect(address: str | None = None, *, dashboard: bool = True) -> float:
    """Join `address` (or $RAY_ADDRESS); without either, start an embedded local Ray, with
    Ray's dashboard on 127.0.0.1 if `dashboard`. Returns the seconds it took (0 when already
    connected)."""
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
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        ray.init(logging_level="WARNING", include_dashboard=dashboard, dashboard_host="127.0.0.1",
                 _system_config=EMBEDDED_RAY_CONFIG)
        _started_without_dashboard = not dashboard
    return time.perf_counter() - started


def has_state_api() -> bool:
    """Whether Ray's state API answers here: not under a Ray this process started without its
    dashboard, which serves that API."""
    return not _started_without_dashboard


def local_cluster_running() -> bool:
    """Whether a `ray start` cluster of this machine answers. Ray's record of the last one
    is deleted if that cluster is gone.

    `ray start` (and a test Cluster) write its address to <ray temp dir>/ray_current_cluster;
    a cluster killed without `ray stop` leaves it behind. ray.init() would then wait on the
    dead address for minutes, and Ray Train's state queries inside the cluster would follow
    it too.
    """
    import socket

    from ray._private.utils import get_ray_address_file, read_ray_address

    address = read_ray_address()
    if not address:
        return False
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
        return True
    except (OSError, ValueError):
        try:
            os.remove(get_ray_address_file(None))
        except OSError:
            pass
        return False


def quiet_logs() -> None:
    """Our own one line per step and per epoch instead of Ray's INFO chatter.

    Called on the driver, before Ray starts, and in every training worker.
    """
    import logging

    import ray.train.v2._internal.execution.context as train_context
    from ray.data import DataContext

    # Ray Train would echo every print of a worker twice (log record and stdout).
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    # A report blocks until the controller polls (2 s by default): short epochs would
    # spend most of their time waiting.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    # ... and its one-time notice that a dataset runs without progress bars (the shards).
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    # Ray Train logs each report (all metrics) at INFO under a logger named after its file.
    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)
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
    if scaling.placement_strategy == "STRICT_PACK":
        capacity = max(fits, default=0)
    elif scaling.placement_strategy == "STRICT_SPREAD":
        capacity = sum(1 for f in fits if f > 0)
    else:
        capacity = sum(fits)
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


def _fits_per_node(bundle: dict[str, float]) -> tuple[list[int], dict[str, float], int]:
    """(how many `bundle`s each live node holds, the cluster's total of each resource, nodes)."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    # Rounded: 1.0 // 0.1 is 9.0 in floating point; Ray counts resources in 1/10000 units.
    fits = [min(int(round(node.get(r, 0) / need, 4) // 1) for r, need in bundle.items()) for node in nodes]
    return fits, {r: sum(node.get(r, 0) for node in nodes) for r in bundle}, len(nodes)


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
