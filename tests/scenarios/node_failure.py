"""Run in its own process (it owns a multi-node Ray): remove a node that hosts training
workers in mid-training, in two runs on one cluster, and print the outcomes as JSON on the
last line.

    python tests/scenarios/node_failure.py WORKDIR DATA_DIR

The cluster: a head (never lost) and three worker nodes, `big` ones of 2 CPUs and a `small`
one of 1, in this order of runs:
- `fixed`: 2 workers placed with PACK, which puts both on one big node (the small one could
  not hold both). That node is removed; the other big node, a spare, takes both workers.
- `elastic`: 1 to 2 workers placed with SPREAD on the two nodes left, one on each although
  the big one could hold both. The big one is removed: with room for one worker left, the
  run goes on with one.
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
from app.runner import run_training

BIG, SMALL = 2, 1  # CPUs (and `worker_node` slots) of the worker nodes


def running_workers() -> list[dict]:
    return list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])


def run_losing_a_node(cluster: Cluster, nodes: dict, workdir: Path, data: Path, name: str, *,
                      num_workers: int | list[int], placement: str) -> dict:
    """Train; once epoch 2 is checkpointed, remove the biggest node that hosts a worker (and
    drop it from `nodes`, {node id: (node, CPUs)})."""
    cfg = from_dict({
        "name": name,
        "data": {"train": str(data), "label": "target", "split": {"valid": 0.1, "test": 0.1}},
        "model": {"kind": "mlp", "hidden": [128, 128]},
        "train": {"epochs": 5, "batch_size": 512, "early_stopping_patience": None},
        "scaling": {"num_workers": num_workers, "cpus_per_worker": 1, "placement_strategy": placement,
                    "resources_per_worker": {"worker_node": 1}},
        "run": {"storage": str(workdir / "runs"), "max_failures": 3},
        "tracking": {"mlflow": False, "tensorboard": False},
    }, "scenario")
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(metrics=run_training(cfg)), daemon=True)
    thread.start()

    run = workdir / "runs" / name
    while not (run / "checkpoint_epoch_0002" / "manifest.json").exists():
        assert thread.is_alive(), f"{name}: training ended before epoch 2"
        time.sleep(0.05)
    alive = running_workers()
    hosts = {a["node_id"] for a in alive}
    on_worker_nodes = hosts <= set(nodes)
    victim, _ = max((nodes[n] for n in hosts if n in nodes), key=lambda node_cpus: node_cpus[1])
    cluster.remove_node(victim)
    del nodes[victim.node_id]
    removed_at = time.time()
    thread.join(timeout=900)

    metrics = outcome.get("metrics") or {}
    return {
        "workers_before": len(alive), "nodes_hosting_workers": len(hosts),
        "hosts_are_worker_nodes": on_worker_nodes,
        "removed_at": removed_at, "finished": bool(metrics),
        "epochs": [r["epoch"] for r in metrics.get("history", [])],
        "history_times": [r["time"] for r in metrics.get("history", [])],
        "num_workers_at_end": metrics.get("num_workers"),
        "best_checkpoint": metrics.get("best_checkpoint"),
    }


def main(workdir: Path, data: Path) -> None:
    quiet_logs()
    # Give up on a worker group that cannot start sooner than Ray's default 60 s, so that
    # the elastic run shrinks quickly once no node replaces the lost one.
    os.environ["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = "10"
    # A head (never lost) whose one CPU is kept for Ray Data, which must recompute the
    # blocks lost with a node, and worker nodes that alone host training workers (the
    # `worker_node` resource). The run folders are on local disk, which all nodes share.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    nodes = {}
    for cpus in (BIG, BIG, SMALL):
        node = cluster.add_node(num_cpus=cpus, resources={"worker_node": cpus})
        nodes[node.node_id] = (node, cpus)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="WARNING")
    outcome = {"fixed": run_losing_a_node(cluster, nodes, workdir, data, "fixed", num_workers=2, placement="PACK")}
    outcome["elastic"] = run_losing_a_node(cluster, nodes, workdir, data, "elastic", num_workers=[1, 2],
                                           placement="SPREAD")
    print(json.dumps(outcome), flush=True)
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
    # Interpreter teardown with a removed node's objects still referenced can fail or hang;
    # the outcome is printed and the cluster is down, so leave now.
    os._exit(0)
