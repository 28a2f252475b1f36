"""Run in its own process (it owns a multi-node Ray): train with scaling.placement_strategy
PACK on two worker nodes that could each host both workers, and print where the workers ran
as JSON on the last line.

    python tests/scenarios/placement.py WORKDIR DATA_FILE
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


def main(workdir: Path, data: Path) -> None:
    quiet_logs()
    # A head whose one CPU is kept for Ray Data, and two 2-CPU nodes that alone host
    # training workers (resource `worker_node`). The run folder is on local disk, which all
    # these nodes share.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    nodes = [cluster.add_node(num_cpus=2, resources={"worker_node": 2}) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="WARNING")

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
        alive = list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
        workers, hosts = len(alive), {a["node_id"] for a in alive}
        time.sleep(0.2)
    thread.join(timeout=600)

    metrics = outcome.get("metrics") or {}
    print(json.dumps({
        "workers": workers, "nodes_hosting_workers": len(hosts),
        "hosts_are_worker_nodes": hosts <= {n.node_id for n in nodes},
        "epochs": [r["epoch"] for r in metrics.get("history", [])],
        "best_checkpoint": metrics.get("best_checkpoint"),
    }), flush=True)
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
    os._exit(0)
