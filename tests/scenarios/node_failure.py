"""Run in its own process (it owns a multi-node Ray): remove the node that hosts a training
worker in mid-training and print the run's outcome as JSON on the last line.

    python tests/scenarios/node_failure.py WORKDIR DATA_DIR fixed [PACK_DATA]  # 3 nodes, 2 workers
    python tests/scenarios/node_failure.py WORKDIR DATA_DIR elastic            # 2 nodes, [1, 2] workers

With PACK_DATA (fixed only), a short run with scaling.placement_strategy PACK goes first on
the same cluster, whose 2-CPU worker nodes could each host both workers; where its workers
ran is part of the outcome.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

import ray
from ray.cluster_utils import Cluster
from ray.util.state import list_actors

from app.cluster import quiet_logs
from app.config import from_dict
from app.training.trainer import run_training


def running_workers() -> list[dict]:
    return list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])


def packed_run(workdir: Path, data: Path, worker_nodes: set[str]) -> dict:
    """Train 2 workers with PACK where every worker node has room for both."""
    cfg = from_dict({
        "name": "packed",
        "data": {"train": str(data), "label": "species"},
        "model": {"kind": "mlp", "hidden": [16]},
        "train": {"epochs": 2, "batch_size": 64},
        "scaling": {"num_workers": 2, "cpus_per_worker": 1, "placement_strategy": "PACK",
                    "resources_per_worker": {"worker_node": 1}},
        "run": {"storage": str(workdir / "runs")},
        "tracking": {"mlflow": False, "tensorboard": False},
    }, "scenario")
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(metrics=run_training(cfg)), daemon=True)
    thread.start()
    hosts: set[str] = set()
    workers = 0
    while thread.is_alive() and workers < 2:
        alive = running_workers()
        workers, hosts = len(alive), {a["node_id"] for a in alive}
        time.sleep(0.2)
    thread.join(timeout=600)
    metrics = outcome.get("metrics") or {}
    return {"workers": workers, "nodes_hosting_workers": len(hosts), "hosts_are_worker_nodes": hosts <= worker_nodes,
            "epochs": [r["epoch"] for r in metrics.get("history", [])],
            "best_checkpoint": metrics.get("best_checkpoint")}


def main(workdir: Path, data: Path, mode: str, pack_data: Path | None = None) -> None:
    quiet_logs()
    # Give up on a worker group that cannot start sooner than Ray's default 60 s, so that
    # the elastic run shrinks quickly once no node replaces the lost one.
    os.environ["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = "10"
    # A head (never lost) whose one CPU is kept for Ray Data, which must recompute the
    # blocks lost with a node, and worker nodes that alone host training workers (2 CPUs
    # each where the PACK run needs room for both workers on one). The run folder is on
    # local disk, which all these nodes share.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    per_node = 2 if pack_data else 1
    workers = [cluster.add_node(num_cpus=per_node, resources={"worker_node": per_node})
               for _ in range(3 if mode == "fixed" else 2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="WARNING")
    packed = packed_run(workdir, pack_data, {n.node_id for n in workers}) if pack_data else None

    cfg = from_dict({
        "name": "nodes",
        "data": {"train": str(data), "label": "target", "split": {"valid": 0.1, "test": 0.1}},
        "model": {"kind": "mlp", "hidden": [128, 128]},
        "train": {"epochs": 5, "batch_size": 512, "early_stopping_patience": None},
        "scaling": {"num_workers": 2 if mode == "fixed" else [1, 2], "cpus_per_worker": 1,
                    "placement_strategy": "SPREAD", "resources_per_worker": {"worker_node": 1}},
        "run": {"storage": str(workdir / "runs"), "max_failures": 3},
        "tracking": {"mlflow": False, "tensorboard": False},
    }, "scenario")
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(metrics=run_training(cfg)), daemon=True)
    thread.start()

    run = workdir / "runs" / "nodes"
    while not (run / "checkpoint_epoch_0002" / "manifest.json").exists():
        assert thread.is_alive(), "training ended before epoch 2"
        time.sleep(0.05)
    alive = running_workers()
    node_ids = {a["node_id"] for a in alive}
    victim = next(n for n in workers if n.node_id in node_ids)
    cluster.remove_node(victim)
    removed_at = time.time()
    thread.join(timeout=900)

    metrics = outcome.get("metrics") or {}
    print(json.dumps({
        "workers_before": len(alive), "nodes_hosting_workers": len(node_ids),
        "victim_hosted_a_worker": victim.node_id in node_ids,
        "removed_at": removed_at, "finished": bool(metrics),
        "epochs": [r["epoch"] for r in metrics.get("history", [])],
        "history_times": [r["time"] for r in metrics.get("history", [])],
        "num_workers_at_end": metrics.get("num_workers"),
        "valid": metrics.get("valid"),
        "packed": packed,
    }), flush=True)
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4]) if len(sys.argv) > 4 else None)
    # Interpreter teardown with a removed node's objects still referenced can fail or hang;
    # the outcome is printed and the cluster is down, so leave now.
    os._exit(0)
