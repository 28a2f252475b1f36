"""Lose a node that hosts training workers, on a real multi-node Ray (one raylet per node):
a fixed-size run and an elastic one, on one cluster (tests/scenarios/node_failure.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, make_synthetic

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def outcome(tmp_path_factory, shared_cli_env):
    work = tmp_path_factory.mktemp("nodes")
    data = make_synthetic(work / "data", 60000)
    result = subprocess.run([sys.executable, str(REPO / "tests" / "scenarios" / "node_failure.py"), str(work),
                             str(data)], cwd=REPO, env=shared_cli_env, capture_output=True, text=True,
                            timeout=1200, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


# fixed: PACK puts both workers on one node, where either big node had room; a spare big node
# replaces it. elastic: SPREAD puts them on two nodes, where the big one had room for both; no
# spare is left, so the run goes on with fewer workers.
@pytest.mark.parametrize("mode, nodes_hosting_workers, workers_at_end", [("fixed", 1, 2), ("elastic", 2, 1)])
def test_run_finishes_after_losing_a_worker_node(outcome, mode, nodes_hosting_workers, workers_at_end):
    run = outcome[mode]
    assert run["workers_before"] == 2 and run["nodes_hosting_workers"] == nodes_hosting_workers
    assert run["hosts_are_worker_nodes"]  # never the head, whose CPU is kept for Ray Data
    assert run["finished"] and run["epochs"] == [1, 2, 3, 4, 5]
    assert (Path(run["best_checkpoint"]) / "manifest.json").exists()
    assert run["num_workers_at_end"] == workers_at_end
    after = [t for t in run["history_times"] if t > run["removed_at"]]
    print(f"\nnode loss ({mode}): next epoch reported {after[0] - run['removed_at']:.1f}s after the node was "
          f"removed; {len(after)} epoch(s) trained after it, {workers_at_end} worker(s) at the end")
