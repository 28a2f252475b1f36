"""Lose a node that hosts a training worker, on a real multi-node Ray (one raylet per node)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PENGUINS, REPO, make_synthetic

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("data"), 60000)


@pytest.mark.parametrize("mode, workers_at_end", [("fixed", 2), ("elastic", 1)])
def test_run_finishes_after_losing_a_worker_node(tmp_path, data, cli_env, mode, workers_at_end):
    # the fixed cluster first runs a short PACK run (one cluster start for both checks)
    pack = [str(PENGUINS)] if mode == "fixed" else []
    result = subprocess.run([sys.executable, str(REPO / "tests" / "scenarios" / "node_failure.py"), str(tmp_path),
                             str(data), mode, *pack], cwd=REPO, env=cli_env, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["workers_before"] == 2 and outcome["nodes_hosting_workers"] == 2  # SPREAD
    assert outcome["victim_hosted_a_worker"]
    assert outcome["finished"] and outcome["epochs"] == [1, 2, 3, 4, 5]
    # fixed: a spare node replaces the lost one; elastic: no spare, goes on with fewer workers
    assert outcome["num_workers_at_end"] == workers_at_end
    after = [t for t in outcome["history_times"] if t > outcome["removed_at"]]
    print(f"\nnode loss ({mode}): next epoch reported {after[0] - outcome['removed_at']:.1f}s after the node was "
          f"removed; {len(after)} epoch(s) trained after it, {workers_at_end} worker(s) at the end")
    if mode == "fixed":
        packed = outcome["packed"]
        # Either worker node could host both workers; PACK puts them on one, SPREAD (above) on two.
        assert packed["workers"] == 2 and packed["nodes_hosting_workers"] == 1
        assert packed["hosts_are_worker_nodes"]
        assert packed["epochs"] == [1, 2]
        assert (Path(packed["best_checkpoint"]) / "manifest.json").exists()
